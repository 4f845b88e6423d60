//! The control plane's API: validation exactly as the edge loads, versions, diff, target and
//! rollback, auth, OpenAPI — against the embedded store and against a real etcd.

use crate::harness::*;
use http::{Method, StatusCode};
use serde_json::json;

fn push_body(doc: &str) -> serde_json::Value {
    json!({"file": "fleet.toml", "document": doc, "message": "m"})
}

/// Every refused document: status 422, the first error's field and a phrase of its message.
async fn refused_documents_store_nothing(c: &Control) {
    let origin: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let good = fleet_doc(origin, "v1");
    let padded = format!(
        "{good}\n#{}\n",
        "x".repeat(firebreak_config::MAX_CONFIG_BYTES as usize)
    );
    let cases: Vec<(String, &str, &str)> = vec![
        (padded, "", "the limit is"),
        (good.replace("hosts =", "hostz ="), "service[0].hostz", "unknown field `hostz`"),
        (good.replace("max_bytes = 67108864", "max_bytes = \"big\""), "cache.max_bytes", "invalid type"),
        (
            good.replacen("[service.origin]", "[service.cache]\nrules = [{ path_regex = \"^/(?!admin)\", bypass = true }]\n[service.origin]", 1),
            "service[0].cache.rules[0].path_regex",
            "linear-time regex engine",
        ),
        (good.replace("hosts = [\"b.test\"]", "hosts = [\"a.test\"]"), "service[1].hosts[0]", "a.test"),
        (good.replacen(&format!("servers = [{{ addr = \"{origin}\" }}]"), "servers = []", 1), "service[0].origin.servers", "at least 1"),
        (good.replacen(&format!("addr = \"{origin}\""), "addr = \"\"", 1), "service[0].origin.servers[0].addr", ""),
        (format!("[[listener]]\naddr = \"127.0.0.1:1\"\n{good}"), "listener", "set per edge"),
    ];
    for (doc, field, says) in cases {
        let (status, body) = c
            .call(Method::POST, "/v1/versions", Some(push_body(&doc)))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("nothing was stored"),
            "{body}"
        );
        let first = &body["errors"][0];
        assert_eq!(first["file"], "fleet.toml", "{body}");
        assert_eq!(first["field"], field, "{body}");
        assert!(
            first["message"].as_str().unwrap().contains(says),
            "{field}: {body}"
        );
        if !field.is_empty() {
            assert!(
                first["line"].as_u64().unwrap() > 0,
                "{field} has no line: {body}"
            );
        }
    }
    let (_, list) = c.call(Method::GET, "/v1/versions", None).await;
    assert_eq!(list, json!([]), "a refused push stored something");
}

async fn versions_diff_target_rollback(c: &Control) {
    let origin: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (status, v1) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(push_body(&fleet_doc(origin, "v1"))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v1}");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["services"].as_array().unwrap().len(), 2);
    let (_, v2) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(push_body(&fleet_doc(origin, "v2"))),
        )
        .await;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["parent"], 1);
    // Only the changed services' hashes differ; here both services changed their header.
    assert_eq!(v1["fleet_sha256"], v2["fleet_sha256"]);
    let (status, diff) = c.call(Method::GET, "/v1/diff?from=1&to=2", None).await;
    assert_eq!(status, StatusCode::OK);
    let diff = diff.as_str().unwrap().to_owned();
    assert!(
        diff.contains("-value = \"v1\"") && diff.contains("+value = \"v2\""),
        "{diff}"
    );
    let (_, shown) = c.call(Method::GET, "/v1/versions/1", None).await;
    assert!(
        shown["document"]
            .as_str()
            .unwrap()
            .contains("value = \"v1\""),
        "{shown}"
    );
    assert_eq!(
        c.call(Method::GET, "/v1/versions/9", None).await.0,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        c.call(Method::GET, "/v1/target", None).await.0,
        StatusCode::NOT_FOUND
    );
    // Setting the target at once is gone: versions travel by rollout.
    let (status, e) = c
        .call(Method::PUT, "/v1/target", Some(json!({"version": 2})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert!(e["error"].as_str().unwrap().contains("rollout"), "{e}");
    for v in [1, 2] {
        let (status, r) = c
            .call(
                Method::POST,
                "/v1/rollouts",
                Some(json!({"version": v, "message": "t"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        c.wait_rollout(v, "complete").await;
    }
    let (_, t) = c.call(Method::GET, "/v1/target", None).await;
    assert_eq!(t["version"].as_u64(), Some(2), "{t}");
    // Going back: only with rollback, only to a version the fleet ran.
    let (status, e) = c
        .call(Method::PUT, "/v1/target", Some(json!({"version": 1})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    let (status, t) = c
        .call(
            Method::PUT,
            "/v1/target",
            Some(json!({"version": 1, "rollback": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["version"].as_u64(), Some(1), "{t}");
    assert_eq!(
        c.call(
            Method::PUT,
            "/v1/target",
            Some(json!({"version": 7, "rollback": true}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // Deploying an older version than the fleet's is refused (that is a rollback).
    let (status, e) = c
        .call(Method::POST, "/v1/rollouts", Some(json!({"version": 1})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    // The audit log has every step.
    let (_, log) = c.call(Method::GET, "/v1/audit", None).await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"deploy")
            && actions.contains(&"complete")
            && actions.contains(&"rollback"),
        "{actions:?}"
    );
}

async fn auth_and_openapi(c: &Control) {
    let (s, _) = http(
        Method::GET,
        &format!("{}/v1/versions", c.url),
        "wrong-token-xxxxxxxx",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = http(
        Method::POST,
        &format!("{}/v1/versions", c.url),
        EDGE,
        Some("{}".into()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the join token must not push");
    let (s, _) = http(
        Method::GET,
        &format!("{}/v1/versions/1/bundle", c.url),
        EDGE,
        None,
    )
    .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "the join token only joins; edges download bundles with their own credential"
    );
    let (s, b) = http(
        Method::POST,
        &format!("{}/v1/versions", c.url),
        OPERATOR,
        Some("{not json".into()),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b:?}");
    // Malformed paths and queries get JSON errors too.
    for path in [
        "/v1/versions/abc",
        "/v1/diff?from=1",
        "/v1/versions?limit=-1",
    ] {
        let (s, body) = c.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let (s, doc) = http(Method::GET, &format!("{}/v1/openapi.json", c.url), "", None).await;
    assert_eq!(s, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    for path in [
        "/v1/versions",
        "/v1/versions/{n}",
        "/v1/versions/{n}/bundle",
        "/v1/diff",
        "/v1/target",
        "/v1/edges/{id}/target",
        "/v1/edges/{id}",
        "/v1/fleet",
        "/v1/pops",
        "/v1/purge",
        "/v1/edges/{id}/health",
        "/v1/edges/{id}/join",
        "/v1/rollouts",
        "/v1/rollout",
        "/v1/rollout/{action}",
        "/v1/rollback",
        "/v1/switches/{name}",
        "/v1/audit",
        "/v1/incidents",
        "/v1/incidents/{id}/updates",
        "/status",
        "/status/feed.atom",
        "/status/incidents.json",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} is not in the OpenAPI document"
        );
    }
}

async fn scenario(spec: &str, dir: &std::path::Path) {
    let mut c = Control::start(spec, dir).await;
    refused_documents_store_nothing(&c).await;
    versions_diff_target_rollback(&c).await;
    auth_and_openapi(&c).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_the_embedded_store() {
    let dir = temp_dir("api-redb");
    scenario(
        &format!("redb:{}", dir.join("control.redb").display()),
        &dir,
    )
    .await;
    // The store survives a restart of the control plane with everything in it.
    let c = Control::start(
        &format!("redb:{}", dir.join("control.redb").display()),
        &dir,
    )
    .await;
    let (_, list) = c.call(Method::GET, "/v1/versions", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(c.plane.target().unwrap().version, 1, "the rollback is kept");
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_etcd_and_two_replicas_share_one_fleet() {
    let etcd = Etcd::start();
    let dir = temp_dir("api-etcd");
    scenario(&etcd.endpoint, &dir).await;
    // A second replica with the same key sees the versions and follows target changes made
    // through the first, through etcd's watch.
    let a = Control::start(&etcd.endpoint, &dir).await;
    let b = Control::start(&etcd.endpoint, &dir).await;
    let (_, list) = b.call(Method::GET, "/v1/versions", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let seq = b.plane.target().unwrap().seq;
    let waiter = {
        let plane = b.plane.clone();
        tokio::spawn(async move {
            plane
                .wait_target("x", "c1", (None, seq), std::time::Duration::from_secs(10))
                .await
        })
    };
    let (status, _) = a
        .call(
            Method::PUT,
            "/v1/target",
            Some(json!({"version": 2, "rollback": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let seen = waiter
        .await
        .unwrap()
        .expect("replica b never saw the new target");
    assert_eq!(seen.seq, seq + 1);
    // Concurrent pushes through both replicas get distinct, contiguous version numbers.
    let doc = fleet_doc("127.0.0.1:9".parse().unwrap(), "race");
    let body = || Some(json!({"file": "f", "document": doc, "message": "race"}));
    let (ra, rb) = tokio::join!(
        a.call(Method::POST, "/v1/versions", body()),
        b.call(Method::POST, "/v1/versions", body())
    );
    let mut got = vec![
        ra.1["version"].as_u64().unwrap(),
        rb.1["version"].as_u64().unwrap(),
    ];
    got.sort();
    assert_eq!(got, vec![3, 4]);
    // Incidents opened through both replicas at once land in one log, with distinct ids.
    let incident = |title: &str| Some(json!({"title": title, "components": ["api"]}));
    let (ra, rb) = tokio::join!(
        a.call(Method::POST, "/v1/incidents", incident("via a")),
        b.call(Method::POST, "/v1/incidents", incident("via b"))
    );
    assert_eq!((ra.0, rb.0), (StatusCode::CREATED, StatusCode::CREATED));
    let (_, book) = b.call(Method::GET, "/v1/incidents", None).await;
    let mut ids: Vec<u64> = book["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2], "{book:#}");
    std::fs::remove_dir_all(&dir).ok();
}
