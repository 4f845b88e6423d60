//! The control plane's DNS pieces: a push whose DNS data removes too many POPs at once is
//! refused unless forced (and a forced one is audited), and `GET /v1/pops` gives fleet members
//! each POP's health from its edges. Real API server, real store, real edges.

use crate::harness::*;
use firebreak_edge::agent::client::ControlClient;
use http::{Method, StatusCode};
use serde_json::json;

fn redb(dir: &std::path::Path) -> String {
    format!("redb:{}", dir.join("control.redb").display())
}

/// The test fleet document with `[dns]` data naming `pops` (one answer address each), all in
/// region `eu`.
fn dns_doc(pops: &[&str]) -> String {
    let mut doc = fleet_doc("127.0.0.1:9".parse().unwrap(), "v");
    doc.push_str(
        "\n[dns]\nzone = \"cdn.example\"\ndefault_region = \"eu\"\n[[dns.ns]]\nname = \"ns1.cdn.example\"\naddrs = [\"192.0.2.53\"]\n",
    );
    for (i, p) in pops.iter().enumerate() {
        doc.push_str(&format!(
            "[[dns.pop]]\nname = \"{p}\"\nanswers = [\"192.0.2.{}\"]\n",
            i + 1
        ));
    }
    let list: Vec<String> = pops.iter().map(|p| format!("\"{p}\"")).collect();
    doc.push_str(&format!(
        "[[dns.region]]\nname = \"eu\"\npops = [{}]\n",
        list.join(", ")
    ));
    doc
}

fn push_body(doc: &str, force: bool) -> serde_json::Value {
    json!({"file": "fleet.toml", "document": doc, "message": "fewer POPs", "force": force})
}

async fn version_numbers(c: &Control) -> Vec<u64> {
    let (_, list) = c.call(Method::GET, "/v1/versions", None).await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_removing_most_pops_is_refused_unless_forced() {
    let dir = temp_dir("dns-guard");
    let c = Control::start(&redb(&dir), &dir).await;
    let (status, v1) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(push_body(&dns_doc(&["ams", "fra", "sin"]), false)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v1}");
    // One of three removed: within the default share (0.5).
    let (status, v2) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(push_body(&dns_doc(&["ams", "fra"]), false)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v2}");
    let (status, v3) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(push_body(&dns_doc(&["ams", "fra", "sin"]), false)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v3}");

    // Two of three at once: refused with the reason and the way to force; nothing stored.
    let fewer = dns_doc(&["ams"]);
    let (status, e) = c
        .call(Method::POST, "/v1/versions", Some(push_body(&fewer, false)))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    let error = e["error"].as_str().unwrap();
    assert!(
        error.contains("compared with version 3")
            && error.contains("removes 2 of 3 POPs (fra, sin)")
            && error.contains("limit of 0.50 (dns.max_removed_share)"),
        "{error}"
    );
    assert!(
        error.contains("nothing was stored") && error.contains("--force"),
        "{error}"
    );
    // Dropping the whole [dns] table is refused too.
    let no_dns = fleet_doc("127.0.0.1:9".parse().unwrap(), "v");
    let (status, e) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(push_body(&no_dns, false)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("whole [dns] table"),
        "{e}"
    );
    assert_eq!(
        version_numbers(&c).await,
        [3, 2, 1],
        "a refused push stored a version"
    );

    // Forced: stored, and the audit log says it was forced and past what.
    let (status, v4) = c
        .call(Method::POST, "/v1/versions", Some(push_body(&fewer, true)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v4}");
    assert_eq!(v4["version"], 4);
    assert!(
        v4["forced_past"]
            .as_str()
            .unwrap()
            .contains("removes 2 of 3 POPs"),
        "{v4}"
    );
    assert_eq!(version_numbers(&c).await, [4, 3, 2, 1]);
    let (_, log) = c.call(Method::GET, "/v1/audit", None).await;
    let forced: Vec<&serde_json::Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "push-forced")
        .collect();
    assert_eq!(forced.len(), 1, "{log:#}");
    assert_eq!(forced[0]["version"], 4);
    assert_eq!(forced[0]["who"], "operator");
    let message = forced[0]["message"].as_str().unwrap();
    assert!(
        message.contains("removes 2 of 3 POPs (fra, sin)") && message.contains("fewer POPs"),
        "{message}"
    );
    // A push the guard lets through is not audited as forced, even with force.
    let (status, v5) = c
        .call(Method::POST, "/v1/versions", Some(push_body(&fewer, true)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v5}");
    assert!(v5.get("forced_past").is_none(), "{v5}");
    let (_, log) = c.call(Method::GET, "/v1/audit", None).await;
    let forced = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "push-forced")
        .count();
    assert_eq!(forced, 1, "{log:#}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_is_not_judged_against_a_newer_stored_version() {
    let dir = temp_dir("dns-guard-switch");
    let c = Control::start(&redb(&dir), &dir).await;
    let switch = "\n[[switch]]\nname = \"a-bypass\"\nservice = \"a\"\naction = \"bypass_cache\"\n";
    // The fleet runs one POP; three are stored, not deployed.
    let v1 = c.release(&format!("{}{switch}", dns_doc(&["ams"]))).await;
    let (status, v2) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(push_body(
                &format!("{}{switch}", dns_doc(&["ams", "fra", "sin"])),
                false,
            )),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v2}");
    // The switch's version is the running one's, one POP: it removes nothing the fleet runs,
    // so it goes through, though it has two POPs fewer than the latest stored version.
    let (status, r) = c
        .call(
            Method::POST,
            "/v1/switches/a-bypass",
            Some(json!({"on": true, "message": "incident"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!(version_numbers(&c).await, [3, 2, v1]);
    let (_, shown) = c.call(Method::GET, "/v1/versions/3", None).await;
    let doc = shown["document"].as_str().unwrap();
    assert!(
        doc.contains("name = \"ams\"") && !doc.contains("\"fra\""),
        "{doc}"
    );
    let (_, log) = c.call(Method::GET, "/v1/audit", None).await;
    assert!(
        !log.as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "push-forced"),
        "{log:#}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A report `id` sends with its credential.
async fn report(c: &Control, id: &str, credential: &str, body: serde_json::Value) {
    let (s, b) = http(
        Method::PUT,
        &format!("{}/v1/edges/{id}", c.url),
        credential,
        Some(body.to_string()),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{id}: {b:?}");
}

/// A member joined over HTTP that reports `report` once; returns its credential.
async fn member(c: &Control, id: &str, body: serde_json::Value) -> String {
    let (s, answer) = join(c, id, EDGE, None).await;
    assert_eq!(s, StatusCode::CREATED, "{answer}");
    let credential = answer["credential"].as_str().unwrap().to_owned();
    report(c, id, &credential, body).await;
    credential
}

fn pop_of<'a>(
    list: &'a firebreak_protocol::api::PopHealthList,
    pop: &str,
) -> Option<&'a firebreak_protocol::api::PopHealth> {
    list.pops.iter().find(|p| p.pop == pop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_pop_health_with_their_own_credential() {
    let dir = temp_dir("pop-health");
    let c = Control::start(&redb(&dir), &dir).await;
    let origin = origin().await;
    // edge_gone_s = 5 in the test rollout settings: the live window.
    let v = c.release(&fleet_doc(origin, "v1")).await;
    let ams = edge_in(&c, &dir.join("ams1"), "ams1", "ams", "c1").await;
    let fra = edge_in(&c, &dir.join("fra1"), "fra1", "fra", "c1").await;
    wait_applied(&ams, v).await;
    wait_applied(&fra, v).await;
    // A POP whose one edge has no fresh target but serves; one whose edge serves nothing
    // (both keep reporting while the list is read); a DNS server, which is no POP's edge.
    let sin_report = json!({"pop": "sin", "cell": "c1", "admin_url": null, "applied_version": v,
        "applied_seq": 1, "error": null, "stale": "control plane unreachable"});
    let nyc_report = json!({"pop": "nyc", "cell": "c1", "admin_url": null, "applied_version": null,
        "applied_seq": 0, "error": null});
    let sin_credential = member(&c, "sin1", sin_report.clone()).await;
    let nyc_credential = member(&c, "nyc1", nyc_report.clone()).await;
    member(
        &c,
        "dns1",
        json!({"pop": "lax", "cell": "dns", "admin_url": null, "applied_version": v, "applied_seq": 1,
               "error": null, "role": "dns"}),
    )
    .await;
    let ams_credential = kept_credential(&dir.join("ams1"));
    let client = ControlClient::new(&c.url, &ams_credential, "ams1");

    let list = eventually("both edges' POPs healthy", 20, || async {
        report(&c, "sin1", &sin_credential, sin_report.clone()).await;
        report(&c, "nyc1", &nyc_credential, nyc_report.clone()).await;
        let list = client.pop_health().await.unwrap();
        let up = |p: &str| pop_of(&list, p).is_some_and(|p| p.healthy);
        (up("ams") && up("fra")).then_some(list)
    })
    .await;
    assert_eq!(
        list.live_window_ms, 5_000,
        "the running version's edge_gone_s"
    );
    let names: Vec<&str> = list.pops.iter().map(|p| p.pop.as_str()).collect();
    assert_eq!(
        names,
        ["ams", "fra", "nyc", "sin"],
        "the DNS server is no POP's edge"
    );
    let sin = pop_of(&list, "sin").unwrap();
    assert!(sin.healthy && sin.stale == 1 && sin.live == 1, "{sin:?}");
    let nyc = pop_of(&list, "nyc").unwrap();
    assert!(
        !nyc.healthy && nyc.live == 1 && nyc.healthy_edges == 0,
        "{nyc:?}"
    );
    let ams_health = pop_of(&list, "ams").unwrap();
    assert_eq!(
        (ams_health.edges, ams_health.live, ams_health.healthy_edges),
        (1, 1, 1)
    );

    // fra's only edge stops: once it has been gone for the live window, fra is unhealthy while
    // ams stays healthy.
    fra.shutdown();
    let list = eventually("fra unhealthy once its edge is gone", 30, || async {
        let list = client.pop_health().await.unwrap();
        pop_of(&list, "fra")
            .is_some_and(|p| !p.healthy)
            .then_some(list)
    })
    .await;
    let fra_health = pop_of(&list, "fra").unwrap();
    assert_eq!(
        (fra_health.edges, fra_health.live),
        (1, 0),
        "{fra_health:?}"
    );
    assert!(pop_of(&list, "ams").unwrap().healthy, "{list:?}");

    // Any member's own credential reads it, and operators do; nobody else.
    let url = format!("{}/v1/pops", c.url);
    let (s, body) = http(Method::GET, &url, &sin_credential, None).await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    let (s, body) = http(Method::GET, &url, OPERATOR, None).await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    let listed: firebreak_protocol::api::PopHealthList = serde_json::from_slice(&body).unwrap();
    assert!(pop_of(&listed, "ams").is_some());
    assert_eq!(
        http(Method::GET, &url, "", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let forged = format!("edge:ams1:{}", "0".repeat(64));
    assert_eq!(
        http(Method::GET, &url, &forged, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http(Method::GET, &url, EDGE, None).await.0,
        StatusCode::FORBIDDEN,
        "the join token only joins"
    );
    let anonymous = ControlClient::new(&c.url, "", "ams1");
    let e = anonymous.pop_health().await.unwrap_err();
    assert!(e.contains("401"), "{e}");

    // The member credential still does nothing an operator does.
    for (method, path, body) in [
        (Method::GET, "/v1/fleet", None),
        (Method::GET, "/v1/versions", None),
        (Method::GET, "/v1/audit", None),
        (
            Method::POST,
            "/v1/versions",
            Some(push_body(&fleet_doc(origin, "x"), true).to_string()),
        ),
        (Method::POST, "/v1/rollback", Some("{}".to_owned())),
        (
            Method::POST,
            "/v1/purge",
            Some(json!({"all": true, "service": "a"}).to_string()),
        ),
        (Method::DELETE, "/v1/edges/fra1", None),
    ] {
        let (s, b) = http(
            method.clone(),
            &format!("{}{path}", c.url),
            &ams_credential,
            body,
        )
        .await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "member credential on {method} {path}: {b:?}"
        );
    }
    ams.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}
