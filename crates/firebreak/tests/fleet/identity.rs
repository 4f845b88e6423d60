//! Who may do what on the control plane: an edge credential is not an operator, the join token
//! only joins, an edge speaks only for itself, purges go only to declared addresses in the
//! allowed networks, the registry is bounded and pruned, operators have names and roles, and
//! bundles carry no operator secret. Real API server, real stores, real edges.

use crate::harness::*;
use firebreak_control::auth::{Access, Operator, Role};
use firebreak_control::registry::EdgeSettings;
use http::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn redb(dir: &std::path::Path) -> String {
    format!("redb:{}", dir.join("control.redb").display())
}

fn report_body(admin_url: Option<&str>) -> String {
    json!({"pop": "p", "cell": "c", "admin_url": admin_url, "listen": [], "applied_version": null, "applied_seq": 0, "error": null})
        .to_string()
}

async fn status_of(method: Method, url: String, token: &str, body: Option<String>) -> StatusCode {
    http(method, &url, token, body).await.0
}

/// A fleet with one version rolled out to one real edge `e1`; returns the scratch directory
/// (first, so that it is dropped last), the control plane, the edge and its data dir.
async fn one_edge(
    name: &str,
) -> (
    TempDir,
    Control,
    firebreak_edge::agent::Agent,
    std::path::PathBuf,
) {
    let dir = temp_dir(name);
    let c = Control::start(&redb(&dir), &dir).await;
    let origin = origin().await;
    let data = dir.join("e1");
    let v = c.release(&fleet_doc(origin, "v1")).await;
    let e1 = edge(&c, &data, "e1").await;
    wait_applied(&e1, v).await;
    (dir, c, e1, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_token_cannot_push_or_read_versions() {
    let (_dir, c, _e1, data) = one_edge("edge-token-versions").await;
    let credential = kept_credential(&data);
    for token in [EDGE, credential.as_str()] {
        let push = json!({"file": "f.toml", "document": "x", "message": "m"}).to_string();
        assert_eq!(
            status_of(
                Method::POST,
                format!("{}/v1/versions", c.url),
                token,
                Some(push)
            )
            .await,
            StatusCode::FORBIDDEN,
            "{token} pushed"
        );
        for path in [
            "/v1/versions",
            "/v1/versions/1",
            "/v1/diff?from=1&to=1",
            "/v1/audit",
            "/v1/fleet",
        ] {
            assert_eq!(
                status_of(Method::GET, format!("{}{path}", c.url), token, None).await,
                StatusCode::FORBIDDEN,
                "{token} read {path}"
            );
        }
    }
    // The join token cannot download bundles either; the edge's own credential can.
    assert_eq!(
        status_of(
            Method::GET,
            format!("{}/v1/versions/1/bundle", c.url),
            EDGE,
            None
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status_of(
            Method::GET,
            format!("{}/v1/versions/1/bundle", c.url),
            &credential,
            None
        )
        .await,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_can_only_join() {
    let dir = temp_dir("join-only");
    let c = Control::start(&redb(&dir), &dir).await;
    let id = "j1";
    let cases = [
        (
            Method::GET,
            format!("/v1/edges/{id}/target?wait_ms=1"),
            None,
        ),
        (
            Method::PUT,
            format!("/v1/edges/{id}"),
            Some(report_body(None)),
        ),
        (
            Method::POST,
            format!("/v1/edges/{id}/health"),
            Some(json!({"version": 1, "since_ms": 0, "total": {}, "services": {}}).to_string()),
        ),
        (Method::GET, "/v1/target".to_owned(), None),
        (Method::GET, "/v1/rollout".to_owned(), None),
        (
            Method::POST,
            "/v1/purge".to_owned(),
            Some(json!({"all": true, "service": "a"}).to_string()),
        ),
        (Method::DELETE, format!("/v1/edges/{id}"), None),
    ];
    for (method, path, body) in &cases {
        let (s, b) = http(
            method.clone(),
            &format!("{}{path}", c.url),
            EDGE,
            body.clone(),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "join token on {method} {path}: {b:?}"
        );
    }
    // Nothing was registered by those attempts.
    assert!(c.store.edges().await.unwrap().is_empty());
    let (s, answer) = join(&c, id, EDGE, None).await;
    assert_eq!(s, StatusCode::CREATED, "{answer}");
    let credential = answer["credential"].as_str().unwrap().to_owned();
    assert!(credential.starts_with("edge:j1:"), "{credential}");
    // The store keeps only the credential's hash.
    let kept = c.store.identity(id).await.unwrap().unwrap();
    assert_ne!(kept.credential_sha256, credential);
    assert!(!serde_json::to_string(&kept).unwrap().contains(&credential));
    // With its credential the edge reports.
    let (s, b) = http(
        Method::PUT,
        &format!("{}/v1/edges/{id}", c.url),
        &credential,
        Some(report_body(None)),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cannot_report_for_another_edge() {
    let dir = temp_dir("speak-for-itself");
    let c = Control::start(&redb(&dir), &dir).await;
    let origin = origin().await;
    let (d1, d2) = (dir.join("e1"), dir.join("e2"));
    let v = c.release(&fleet_doc(origin, "v1")).await;
    let e1 = edge(&c, &d1, "e1").await;
    let e2 = edge(&c, &d2, "e2").await;
    wait_applied(&e1, v).await;
    wait_applied(&e2, v).await;
    eventually("e2 reports the version it applied", 20, || async {
        let fleet = c.plane.fleet().await.unwrap();
        fleet
            .iter()
            .any(|e| e.id == "e2" && e.report.applied_version == Some(v))
            .then_some(())
    })
    .await;
    let stolen = kept_credential(&d1);
    let forged = json!({"pop": "p", "cell": "c", "admin_url": null, "listen": [], "applied_version": 999, "applied_seq": 0, "error": "forged"}).to_string();
    for (method, path, body) in [
        (Method::PUT, "/v1/edges/e2", Some(forged.clone())),
        (Method::GET, "/v1/edges/e2/target?wait_ms=1", None),
        (
            Method::POST,
            "/v1/edges/e2/health",
            Some(json!({"version": 1, "since_ms": 0, "total": {}, "services": {}}).to_string()),
        ),
        (
            Method::POST,
            "/v1/edges/e2/join",
            Some(json!({"pop": "p", "cell": "c"}).to_string()),
        ),
    ] {
        let (s, b) = http(method.clone(), &format!("{}{path}", c.url), &stolen, body).await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "e1's credential on {method} {path}: {b:?}"
        );
        assert!(
            String::from_utf8_lossy(&b).contains("only speak for itself"),
            "{b:?}"
        );
    }
    let fleet = c.plane.fleet().await.unwrap();
    let e2_status = fleet.iter().find(|e| e.id == "e2").unwrap();
    assert_ne!(
        e2_status.report.error.as_deref(),
        Some("forged"),
        "e2's report was overwritten"
    );
    assert_ne!(e2_status.report.applied_version, Some(999));
    // A made-up credential of the right shape for e2 is not e2's.
    let fake = format!("edge:e2:{}", "0".repeat(64));
    assert_eq!(
        status_of(
            Method::PUT,
            format!("{}/v1/edges/e2", c.url),
            &fake,
            Some(forged)
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cannot_point_purges_elsewhere() {
    let dir = temp_dir("purge-elsewhere");
    let c = Control::start(&redb(&dir), &dir).await;
    for bad in [
        "http://192.0.2.1:9080",
        "http://attacker.example:9080",
        "http://127.0.0.1:9080/evil",
        "ftp://127.0.0.1:21",
    ] {
        let (s, b) = join(&c, "p1", EDGE, Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        assert!(b["error"].as_str().unwrap().contains("admin_url"), "{b}");
    }
    assert!(c.store.identity("p1").await.unwrap().is_none());
    let (s, answer) = join(&c, "p1", EDGE, Some("http://127.0.0.1:9080")).await;
    assert_eq!(s, StatusCode::CREATED, "{answer}");
    let credential = answer["credential"].as_str().unwrap().to_owned();
    // A report naming another admin address does not move purges there.
    let (s, b) = http(
        Method::PUT,
        &format!("{}/v1/edges/p1", c.url),
        &credential,
        Some(report_body(Some("http://192.0.2.1:9080"))),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b:?}");
    let fleet = c.plane.fleet().await.unwrap();
    assert_eq!(
        fleet[0].report.admin_url.as_deref(),
        Some("http://127.0.0.1:9080")
    );
    // A re-join with the edge's own credential is checked like a join.
    let (s, b) = join(&c, "p1", &credential, Some("http://192.0.2.1:9080")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = join(&c, "p1", &credential, Some("http://127.0.0.1:9081")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["credential"], serde_json::Value::Null);
    let kept = c.store.identity("p1").await.unwrap().unwrap();
    assert_eq!(kept.admin_url.as_deref(), Some("http://127.0.0.1:9081"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_edges_are_bounded_and_pruned() {
    let dir = temp_dir("bounded");
    let access = Access::new(
        vec![Operator::with_token("operator", Role::Admin, OPERATOR).unwrap()],
        EDGE,
    )
    .unwrap();
    let settings = EdgeSettings {
        max_edges: 20,
        prune_after: Duration::from_secs(2),
        ..EdgeSettings::default()
    };
    let c = control_with(&redb(&dir), &dir, access, settings).await;
    let mut joined = 0;
    let mut refused = 0;
    for i in 0..50 {
        let (s, b) = join(&c, &format!("fake-{i}"), EDGE, None).await;
        match s {
            StatusCode::CREATED => joined += 1,
            StatusCode::CONFLICT => {
                assert!(b["error"].as_str().unwrap().contains("full"), "{b}");
                refused += 1;
            }
            s => panic!("unexpected {s}: {b}"),
        }
    }
    assert_eq!((joined, refused), (20, 30));
    assert_eq!(c.store.identities().await.unwrap().len(), 20);
    // Nobody reports for them: they are pruned with their credentials, and audited. Each
    // audit entry is appended just after its edge is removed, so wait for both.
    eventually("the fake edges are pruned", 30, || async {
        c.store.identities().await.unwrap().is_empty().then_some(())
    })
    .await;
    let pruned_entries = || async {
        let (_, audit) = c.call(Method::GET, "/v1/audit?limit=100", None).await;
        let pruned = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "edge-pruned")
            .count();
        (pruned, audit)
    };
    eventually("every prune is audited", 30, || async {
        (pruned_entries().await.0 >= 20).then_some(())
    })
    .await;
    let (pruned, audit) = pruned_entries().await;
    assert_eq!(pruned, 20, "{audit:#}");
    let (s, b) = join(&c, "fake-50", EDGE, None).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_remove_forgets_an_edge_and_its_credential() {
    let dir = temp_dir("fleet-remove");
    let c = Control::start(&redb(&dir), &dir).await;
    let (s, answer) = join(&c, "r1", EDGE, Some("http://127.0.0.1:9080")).await;
    assert_eq!(s, StatusCode::CREATED, "{answer}");
    let credential = answer["credential"].as_str().unwrap().to_owned();
    let (s, b) = http(
        Method::PUT,
        &format!("{}/v1/edges/r1", c.url),
        &credential,
        Some(report_body(None)),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b:?}");
    // Someone else cannot take the id over with the join token.
    let (s, b) = join(&c, "r1", EDGE, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("firebreak fleet remove r1"),
        "{b}"
    );
    let (s, b) = c
        .call(Method::DELETE, "/v1/edges/r1?message=decommissioned", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert!(c.plane.fleet().await.unwrap().is_empty());
    assert!(c.store.identity("r1").await.unwrap().is_none());
    assert_eq!(
        status_of(
            Method::GET,
            format!("{}/v1/edges/r1/target?wait_ms=1", c.url),
            &credential,
            None
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "the removed credential still works"
    );
    let (s, _) = c.call(Method::DELETE, "/v1/edges/r1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, audit) = c.call(Method::GET, "/v1/audit", None).await;
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "edge-removed")
        .unwrap_or_else(|| panic!("no audit entry: {audit:#}"));
    assert_eq!(entry["who"], "operator");
    assert!(entry["message"]
        .as_str()
        .unwrap()
        .contains("decommissioned"));
    // The id is free again.
    let (s, b) = join(&c, "r1", EDGE, None).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_carry_no_admin_token() {
    let dir = temp_dir("no-admin-token");
    let c = Control::start(&redb(&dir), &dir).await;
    let origin = origin().await;
    let admin_token = "admin-secret-0123456789";
    let plain = format!(
        "{}\n[admin]\ntoken = \"{admin_token}\"\n",
        fleet_doc(origin, "v1")
    );
    let (s, b) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(json!({"file": "fleet.toml", "document": plain, "message": "m"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let e = &b["errors"][0];
    assert_eq!(e["field"], "admin.token", "{b}");
    assert!(
        e["message"].as_str().unwrap().contains("token_sha256"),
        "{b}"
    );
    assert!(e["line"].as_u64().unwrap() > 1, "{b}");
    let (_, list) = c.call(Method::GET, "/v1/versions", None).await;
    assert!(list.as_array().unwrap().is_empty(), "{list}");

    let hashed = format!(
        "{}\n[admin]\ntoken_sha256 = \"{}\"\n",
        fleet_doc(origin, "v1"),
        firebreak_control::auth::token_sha256(admin_token)
    );
    let data = dir.join("e1");
    let v = c.release(&hashed).await;
    let e1 = edge(&c, &data, "e1").await;
    wait_applied(&e1, v).await;
    let (s, bundle) = http(
        Method::GET,
        &format!("{}/v1/versions/{v}/bundle", c.url),
        &kept_credential(&data),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !String::from_utf8_lossy(&bundle).contains(admin_token),
        "the bundle carries the admin token"
    );
    // The edge's admin API takes the token whose hash it was given.
    let admin = e1.member.admin_addr().unwrap();
    let metrics = format!("http://{admin}/metrics");
    assert_eq!(
        status_of(Method::GET, metrics.clone(), admin_token, None).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(Method::GET, metrics, "admin-secret-0123456780", None).await,
        StatusCode::UNAUTHORIZED
    );
}

/// Operators alice (admin), dana (deployer), rob (read-only); with the control plane's
/// scratch directory (first, so that it is dropped last).
async fn named_operators(name: &str) -> (TempDir, Control) {
    let dir = temp_dir(name);
    let access = Access::new(
        vec![
            Operator::with_token("alice", Role::Admin, "alice-token-0123456789").unwrap(),
            Operator::with_token("dana", Role::Deployer, "dana-token-0123456789a").unwrap(),
            Operator::with_token("rob", Role::ReadOnly, "rob-token-0123456789ab").unwrap(),
        ],
        EDGE,
    )
    .unwrap();
    let c = control_with(&redb(&dir), &dir, access, EdgeSettings::default()).await;
    (dir, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_operator_cannot_deploy() {
    let (_dir, c) = named_operators("read-only").await;
    let rob = "rob-token-0123456789ab";
    let doc = fleet_doc("127.0.0.1:9".parse().unwrap(), "v1");
    let push = json!({"file": "f.toml", "document": doc, "message": "m"}).to_string();
    let (s, b) = http(
        Method::POST,
        &format!("{}/v1/versions", c.url),
        rob,
        Some(push.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b:?}");
    assert!(
        String::from_utf8_lossy(&b).contains("rob is read-only"),
        "{b:?}"
    );
    let (s, _) = http(
        Method::POST,
        &format!("{}/v1/versions", c.url),
        "dana-token-0123456789a",
        Some(push),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/rollouts",
            Some(json!({"version": 1}).to_string()),
        ),
        (Method::POST, "/v1/rollout/pause", None),
        (Method::POST, "/v1/rollback", None),
        (
            Method::POST,
            "/v1/switches/x",
            Some(json!({"on": true}).to_string()),
        ),
        (
            Method::POST,
            "/v1/purge",
            Some(json!({"all": true, "service": "a"}).to_string()),
        ),
        (
            Method::PUT,
            "/v1/target",
            Some(json!({"version": 1, "rollback": true}).to_string()),
        ),
        (Method::DELETE, "/v1/edges/x", None),
    ] {
        let (s, b) = http(method.clone(), &format!("{}{path}", c.url), rob, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "rob on {method} {path}: {b:?}");
    }
    for path in [
        "/v1/versions",
        "/v1/versions/1",
        "/v1/fleet",
        "/v1/audit",
        "/v1/rollout",
    ] {
        let (s, b) = http(Method::GET, &format!("{}{path}", c.url), rob, None).await;
        assert_eq!(s, StatusCode::OK, "rob reads {path}: {b:?}");
    }
    // A deployer cannot remove edges; an admin can.
    let (s, _) = join(&c, "x", EDGE, None).await;
    assert_eq!(s, StatusCode::CREATED);
    let remove = format!("{}/v1/edges/x", c.url);
    assert_eq!(
        status_of(
            Method::DELETE,
            remove.clone(),
            "dana-token-0123456789a",
            None
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status_of(Method::DELETE, remove, "alice-token-0123456789", None).await,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_names_the_operator() {
    let (_dir, c) = named_operators("audit-names").await;
    let dana = "dana-token-0123456789a";
    let doc = fleet_doc("127.0.0.1:9".parse().unwrap(), "v1");
    let push = json!({"file": "f.toml", "document": doc, "message": "m"}).to_string();
    let (s, b) = http(
        Method::POST,
        &format!("{}/v1/versions", c.url),
        dana,
        Some(push),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b:?}");
    let (s, b) = http(
        Method::POST,
        &format!("{}/v1/rollouts", c.url),
        dana,
        Some(json!({"version": 1, "message": "first"}).to_string()),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b:?}");
    let (s, _) = join(&c, "gone-1", EDGE, None).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        status_of(
            Method::DELETE,
            format!("{}/v1/edges/gone-1", c.url),
            "alice-token-0123456789",
            None
        )
        .await,
        StatusCode::NO_CONTENT
    );
    let (s, audit) = http(
        Method::GET,
        &format!("{}/v1/audit", c.url),
        "rob-token-0123456789ab",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let audit: serde_json::Value = serde_json::from_slice(&audit).unwrap();
    let who = |action: &str| {
        audit
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == action)
            .map(|e| e["who"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no {action} entry: {audit:#}"))
    };
    assert_eq!(who("deploy"), "dana");
    assert_eq!(who("edge-removed"), "alice");
    let (_, v) = http(Method::GET, &format!("{}/v1/versions/1", c.url), dana, None).await;
    let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
    assert_eq!(v["author"], "dana", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_body_is_refused_before_it_is_read() {
    let dir = temp_dir("anonymous-body");
    let c = Control::start(&redb(&dir), &dir).await;
    let addr = c.url.trim_start_matches("http://").to_owned();
    for (token, path) in [
        ("", "/v1/versions"),
        ("wrong-token-0123456789", "/v1/purge"),
        (EDGE, "/v1/versions"),
    ] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("authorization: Bearer {token}\r\n")
        };
        // A large declared body, never sent.
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: control\r\n{auth}content-type: application/json\r\ncontent-length: 1000000\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(
            answered.is_ok(),
            "no answer to {path} with token {token:?}: the server waits for the body"
        );
        let text = String::from_utf8_lossy(&got);
        let want = if token == EDGE { "403" } else { "401" };
        assert!(
            text.starts_with(&format!("HTTP/1.1 {want}")),
            "{token:?} {path}: {text}"
        );
    }
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_edges_are_bounded_and_removable_over_etcd() {
    let etcd = Etcd::start();
    let dir = temp_dir("identity-etcd");
    let access = Access::new(
        vec![Operator::with_token("operator", Role::Admin, OPERATOR).unwrap()],
        EDGE,
    )
    .unwrap();
    let settings = EdgeSettings {
        max_edges: 3,
        ..EdgeSettings::default()
    };
    let c = control_with(&etcd.endpoint, &dir, access, settings).await;
    let mut credentials = Vec::new();
    for i in 0..3 {
        let (s, b) = join(&c, &format!("x{i}"), EDGE, None).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        credentials.push(b["credential"].as_str().unwrap().to_owned());
    }
    let (s, b) = join(&c, "x3", EDGE, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let (s, b) = join(&c, "x0", EDGE, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("fleet remove x0"),
        "{b}"
    );
    let (s, _) = c.call(Method::DELETE, "/v1/edges/x0", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        status_of(
            Method::PUT,
            format!("{}/v1/edges/x0", c.url),
            &credentials[0],
            Some(report_body(None))
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    let (s, b) = join(&c, "x3", EDGE, None).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    std::fs::remove_dir_all(&dir).ok();
}
