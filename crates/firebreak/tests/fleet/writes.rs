//! Exactly-once writes: a push whose answer is lost and is retried stores one version (the
//! CLI sends an idempotency key and retries with it); the same key with another body is
//! refused; concurrent rollout starts are serialised by the store's compare-and-set.

use crate::harness::*;
use http::{Method, StatusCode};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to `upstream` that loses the answer of the first `lose` connections: the
/// request reaches the control plane (which acts on it), the first bytes of its answer are
/// read, and the client's connection is then closed without a byte, as a network fault or a
/// crashed load balancer would. Returns its address and the count of connections seen.
async fn answer_losing_proxy(upstream: SocketAddr, lose: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                if n < lose {
                    let (mut cr, _cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = [0u8; 1];
                    // The control plane answered: it acted. Drop everything unanswered.
                    let _ = tokio::time::timeout(Duration::from_secs(30), sr.read(&mut buf)).await;
                } else {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                        let _ = sw.shutdown().await;
                    });
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    up.abort();
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn retried_push_stores_one_version() {
    let dir = temp_dir("retried-push");
    let c = Control::start(&format!("redb:{}", dir.join("s.redb").display()), &dir).await;
    let origin = origin().await;
    let upstream: SocketAddr = c.url.trim_start_matches("http://").parse().unwrap();
    let (proxy, seen) = answer_losing_proxy(upstream, 1).await;
    let file = dir.join("fleet.toml");
    std::fs::write(&file, fleet_doc(origin, "v1")).unwrap();

    // The real CLI, through a network that loses the first answer.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_firebreak"));
    cmd.args(["config", "push", "-m", "once"]).arg(&file).args([
        "--control",
        &format!("http://{proxy}"),
        "--token",
        OPERATOR,
    ]);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("push did not end within 60 s")
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(seen.load(Ordering::SeqCst) >= 2, "the CLI never retried");
    assert!(
        stdout.contains("version 1 was already stored by an earlier attempt"),
        "{stdout}\n{stderr}"
    );
    let (_, list) = c.call(Method::GET, "/v1/versions", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // The API: the same key and body answer the stored version (200, already stored); the
    // same key with another body is refused; a malformed key is refused.
    let body = json!({"file": "fleet.toml", "document": fleet_doc(origin, "v2"), "message": "m"});
    let keyed = |key: &str, body: &serde_json::Value| {
        let (url, body, key) = (
            format!("{}/v1/versions", c.url),
            body.to_string(),
            key.to_owned(),
        );
        async move { http_with(Method::POST, &url, &[("idempotency-key", &key)], Some(body)).await }
    };
    let (status, first) = keyed("k-1", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["version"], 2, "{first}");
    assert_eq!(first["already_stored"], false, "{first}");
    let (status, again) = keyed("k-1", &body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["version"], 2, "{again}");
    assert_eq!(again["sha256"], first["sha256"], "{again}");
    assert_eq!(again["already_stored"], true, "{again}");
    let other = json!({"file": "fleet.toml", "document": fleet_doc(origin, "v3"), "message": "m"});
    let (status, refused) = keyed("k-1", &other).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("different request"),
        "{refused}"
    );
    let (status, _) = keyed(&"k".repeat(129), &other).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, list) = c.call(Method::GET, "/v1/versions", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test]
async fn concurrent_activations_are_serialised() {
    let dir = temp_dir("concurrent-activations");
    let c = Control::start(&format!("redb:{}", dir.join("s.redb").display()), &dir).await;
    let origin = origin().await;
    let v1 = c.release(&fleet_doc(origin, "v1")).await;
    let mut stored = Vec::new();
    for marker in ["v2", "v3", "v4"] {
        let (status, v) = c
            .call(
                Method::POST,
                "/v1/versions",
                Some(json!({"file": "f", "document": fleet_doc(origin, marker), "message": "m"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        stored.push(v["version"].as_u64().unwrap());
    }
    let before = c.plane.fleet_state().seq;

    // Three deploys and a rollback at once, through the API.
    let deploy = |version: u64| {
        c.call(
            Method::POST,
            "/v1/rollouts",
            Some(json!({"version": version, "message": "race"})),
        )
    };
    let rollback = c.call(
        Method::POST,
        "/v1/rollback",
        Some(json!({"version": v1, "message": "race"})),
    );
    let (a, b, d, r) = tokio::join!(
        deploy(stored[0]),
        deploy(stored[1]),
        deploy(stored[2]),
        rollback
    );
    assert!(
        r.0.is_success() || r.0 == StatusCode::CONFLICT,
        "rollback neither done nor refused with a conflict: {r:?}"
    );
    let started: Vec<_> = [&a, &b, &d]
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .map(|(_, v)| v["version"].as_u64().unwrap())
        .collect();
    for (s, v) in [&a, &b, &d] {
        assert!(
            *s == StatusCode::CREATED || *s == StatusCode::CONFLICT,
            "neither started nor refused with a conflict: {s} {v}"
        );
        if *s == StatusCode::CONFLICT {
            assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
        }
    }
    assert!(
        started.len() <= 1,
        "two rollouts started at once: {a:?} {b:?} {d:?}"
    );
    // Whatever won, the stored state is one whole decision: either a rollout of the one
    // started version (staging, its statement signed for it), or nothing new at all.
    let state = c.store.state().await.unwrap().unwrap();
    assert!(
        state.seq > before,
        "nothing was written: {a:?} {b:?} {d:?} {r:?}"
    );
    match state.rollout.as_ref().filter(|x| !x.phase.is_end()) {
        Some(running) => {
            assert_eq!(started, vec![running.version], "{state:?}");
            let target = state
                .default
                .as_ref()
                .unwrap()
                .signed
                .open::<firebreak_protocol::signed::Target>(&c.public())
                .unwrap();
            assert_eq!(
                target.stage.as_ref().map(|s| s.version),
                Some(running.version)
            );
            assert!(target.seq <= state.seq);
        }
        None => {
            // The rollback took the last word: every edge runs v1, no override remains.
            assert_eq!(state.default_version(), Some(v1), "{state:?}");
            assert!(
                state.cells.is_empty() && state.edges.is_empty(),
                "{state:?}"
            );
        }
    }

    // The store's compare-and-set itself (a store of its own, which no rollout driver
    // moves): many writers from the same sequence, exactly one wins.
    let store = firebreak_control::Store::open(&format!("redb:{}", dir.join("cas.redb").display()))
        .await
        .unwrap();
    let mut current = state.clone();
    current.seq = 7;
    assert!(store.set_state(0, &current).await.unwrap());
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = store.clone();
        let mut next = current.clone();
        next.seq = current.seq + 1;
        next.ran.push(1000 + i);
        writes.spawn(async move { store.set_state(current.seq, &next).await.unwrap() });
    }
    let won = writes.join_all().await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let after = store.state().await.unwrap().unwrap();
    assert_eq!(after.seq, current.seq + 1);
    assert_eq!(after.ran.len(), current.ran.len() + 1);
}

/// The same over etcd: the key is stored in the version's transaction (under a lease), a
/// retry answers the stored version, and a backup is one consistent range read.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn retried_push_stores_one_version_etcd() {
    let etcd = Etcd::start();
    let dir = temp_dir("retried-push-etcd");
    let c = Control::start(&etcd.endpoint, &dir).await;
    let origin = origin().await;
    let body =
        json!({"file": "f", "document": fleet_doc(origin, "v1"), "message": "m"}).to_string();
    let url = format!("{}/v1/versions", c.url);
    let (status, first) = http_with(
        Method::POST,
        &url,
        &[("idempotency-key", "e-1")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = http_with(
        Method::POST,
        &url,
        &[("idempotency-key", "e-1")],
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (again["version"].clone(), again["already_stored"].clone()),
        (json!(1), json!(true))
    );
    let taken = firebreak_control::backup::backup(&c.store).await.unwrap();
    assert_eq!(taken.versions.len(), 1);
    assert_eq!(
        taken.versions[0].info.sha256,
        first["sha256"].as_str().unwrap()
    );
}
