//! Origin shield under the control plane: a version naming a shield POP reaches that POP's
//! edges in a last wave of their own, after every planned wave passed; edges learn the
//! shield's edges from `GET /v1/pops` and the tier secret from their own route, which DNS
//! members and operators never get.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

fn redb(dir: &Path) -> String {
    format!("redb:{}", dir.join("store.redb").display())
}

/// Two waves (the canary cell, then every cell), fast and without traffic evidence.
const TWO_WAVES: &str = "\n[rollout]\nedge_gone_s = 5\nstage_timeout_s = 15\n[[rollout.plan]]\nname = \"default\"\nwaves = [{ cells = 1 }, { percent = 100 }]\nbake_s = 1\ninterval_s = 1\nmin_requests = 0\nmax_wait_s = 15\nactivate_timeout_s = 15\n";

/// Service `a` (host a.test) answering `x-version: MARKER`, shielded by `shield` if given.
fn doc(origin: SocketAddr, marker: &str, shield: Option<&str>) -> String {
    let mut doc = String::from("[cache]\nmax_bytes = 67108864\nmax_object_bytes = 1048576\n");
    doc.push_str(TWO_WAVES);
    doc.push_str(&format!(
        "\n[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n[[service.response_headers]]\nname = \"x-version\"\nop = \"set\"\nvalue = \"{marker}\"\n"
    ));
    if let Some(pop) = shield {
        doc.push_str(&format!("[service.shield]\npop = \"{pop}\"\n"));
    }
    doc
}

async fn get(edge: SocketAddr, path: &str) -> (StatusCode, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{edge}{path}"))
        .header("host", "a.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let cs = resp
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = resp.into_body().collect().await.unwrap();
    (status, cs)
}

fn applied(agent: &firebreak_edge::agent::Agent) -> Option<u64> {
    agent.status().applied.map(|a| a.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_pop_takes_a_new_version_in_a_last_wave_after_every_planned_wave() {
    let dir = temp_dir("shield-last-wave");
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    let v1 = c.release(&doc(origin, "v1", None)).await;
    // The shield's edge sits in the canary cell: the plan alone would put it in wave 1.
    let outer = edge_in(&c, &dir.join("e1"), "e1", "ams", "c1").await;
    let shield = edge_in(&c, &dir.join("e2"), "e2", "pa", "c1").await;
    let other = edge_in(&c, &dir.join("e3"), "e3", "fra", "c2").await;
    for e in [&outer, &shield, &other] {
        wait_applied(e, v1).await;
    }

    let (status, v) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(serde_json::json!({"file": "fleet.toml", "document": doc(origin, "v2", Some("pa")), "message": "shield"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let v2 = v["version"].as_u64().unwrap();
    c.start_deploy(v2).await;
    // Until the last wave, the shield's edge stays on v1 whatever its cell does.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut saw_planned_waves_pass = false;
    loop {
        let (_, view) = c.call(Method::GET, "/v1/rollout", None).await;
        let r = &view["rollout"];
        if r["version"].as_u64() == Some(v2) {
            let phase = r["phase"].as_str().unwrap_or("");
            let wave = r["wave"].as_u64().unwrap_or(0);
            if phase == "wave" && wave < 2 {
                assert_eq!(r["shield_edges"], serde_json::json!(["e2"]), "{view:#}");
                assert_ne!(
                    applied(&shield),
                    Some(v2),
                    "the shield took the version in planned wave {}",
                    wave + 1
                );
            }
            if phase == "wave" && wave == 2 {
                saw_planned_waves_pass = true;
                assert_eq!(applied(&outer), Some(v2));
                assert_eq!(applied(&other), Some(v2));
            }
            if phase == "complete" {
                break;
            }
            assert!(
                !matches!(phase, "rolled_back" | "stage_failed" | "superseded"),
                "{view:#}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "rollout never completed: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_planned_waves_pass, "no third (shield) wave was seen");
    wait_applied(&shield, v2).await;
    let (_, audit) = c.call(Method::GET, "/v1/audit", None).await;
    let text = audit.to_string();
    assert!(
        text.contains("shield edges held for the last wave: [e2]") && text.contains("wave 3 of 3"),
        "{audit:#}"
    );

    // The outer edge learned the shield's edge and the tier secret: its miss fills the shield.
    let shield_addr = addr(&shield);
    let state = outer.member.state().clone();
    eventually("the outer edge knows the shield's edge", 20, || {
        let state = state.clone();
        async move {
            state
                .tier
                .members()
                .of("pa")
                .is_some_and(|m| m.contains(&shield_addr))
                .then_some(())
        }
    })
    .await;
    // Both edges fetch the secret on their own schedule: poll until the shield holds it.
    let mut n = 0;
    eventually("a miss at the outer edge fills the shield", 20, || {
        n += 1;
        let path = format!("/through-{n}");
        let (outer_addr, shield_addr) = (addr(&outer), shield_addr);
        async move {
            assert_eq!(get(outer_addr, &path).await.0, 200);
            let (_, cs) = get(shield_addr, &path).await;
            cs.contains("hit").then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_http_edges_get_the_tier_secret() {
    let dir = temp_dir("shield-secret");
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    let v1 = c.release(&doc(origin, "v1", None)).await;
    let e1 = edge_in(&c, &dir.join("e1"), "e1", "ams", "c1").await;
    wait_applied(&e1, v1).await;
    let url = |id: &str| format!("{}/v1/edges/{id}/tier", c.url);
    let cred = kept_credential(&dir.join("e1"));
    let (status, body) = http(Method::GET, &url("e1"), &cred, None).await;
    assert_eq!(status, StatusCode::OK);
    let secret: Value = serde_json::from_slice(&body).unwrap();
    let secret = secret["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    // One secret for the fleet: asked again, the same.
    let (_, again) = http(Method::GET, &url("e1"), &cred, None).await;
    assert!(String::from_utf8_lossy(&again).contains(&secret));

    // A DNS member (its own credential, reporting role dns) gets nothing.
    let (status, joined) = join(&c, "d1", EDGE, None).await;
    assert_eq!(status, StatusCode::CREATED, "{joined}");
    let dns_cred = joined["credential"].as_str().unwrap().to_owned();
    let report = serde_json::json!({
        "pop": "dns", "cell": "dns", "admin_url": null, "listen": [],
        "applied_version": null, "applied_seq": 0, "error": null, "role": "dns"
    });
    let (status, _) = http(
        Method::PUT,
        &format!("{}/v1/edges/d1", c.url),
        &dns_cred,
        Some(report.to_string()),
    )
    .await;
    assert!(status.is_success(), "{status}");
    let (status, body) = http(Method::GET, &url("d1"), &dns_cred, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!String::from_utf8_lossy(&body).contains(&secret));
    // Nobody else's credential, and no operator.
    let (status, _) = http(Method::GET, &url("e1"), &dns_cred, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = http(Method::GET, &url("e1"), OPERATOR, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!String::from_utf8_lossy(&body).contains(&secret));
    // Nor the join token.
    let (status, _) = http(Method::GET, &url("e1"), EDGE, None).await;
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
        "{status}"
    );
}
