//! Edges under the control plane: propagation, purge fan-out, per-service isolation, refused
//! bundles and targets, static stability, versions kept on disk.

use crate::harness::*;
use firebreak_protocol::api::EdgeStatus;
use firebreak_protocol::bundle::Bundle;
use firebreak_protocol::document::split;
use firebreak_protocol::keys::ControlKey;
use http::{Method, StatusCode};
use serde_json::json;

fn redb(dir: &std::path::Path) -> String {
    format!("redb:{}", dir.join("control.redb").display())
}

/// Stores `doc` as version `n` the way the control plane would, except that `sealed` decides
/// the bytes stored (to tamper with them); returns nothing — `set_target` then points at it.
async fn store_version(
    c: &Control,
    n: u64,
    doc: &str,
    tamper: impl FnOnce(Vec<u8>) -> Vec<u8>,
    key: &ControlKey,
) {
    let docs = split(doc).unwrap();
    let bundle = Bundle {
        version: n,
        parent: Some(n - 1),
        created_at_ms: 1,
        author: "test".into(),
        message: "crafted".into(),
        fleet: docs.fleet,
        services: docs.services,
        geoip: None,
    };
    let sealed = bundle.seal(key).unwrap();
    let info = bundle.describe(&sealed);
    assert!(c
        .store
        .insert_version(&info, &tamper(sealed))
        .await
        .unwrap());
}

async fn fleet(c: &Control) -> Vec<EdgeStatus> {
    let (status, v) = c.call(Method::GET, "/v1/fleet", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_reaches_every_edge_and_purge_fans_out() {
    let dir = temp_dir("propagate");
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    assert_eq!(c.release(&fleet_doc(origin, "v1")).await, 1);
    let e1 = edge(&c, &dir.join("e1"), "e1").await;
    let e2 = edge(&c, &dir.join("e2"), "e2").await;
    for e in [&e1, &e2] {
        wait_applied(e, 1).await;
        assert_eq!(
            through(addr(e), "a.test", "/x").await,
            (200, "v1".into(), "origin says /x".into())
        );
        assert_eq!(through(addr(e), "b.test", "/y").await.1, "v1");
    }
    assert_eq!(c.release(&fleet_doc(origin, "v2")).await, 2);
    for e in [&e1, &e2] {
        wait_applied(e, 2).await;
        assert_eq!(through(addr(e), "a.test", "/x").await.1, "v2");
    }
    // The fleet view: both edges, their POP and cell, version 2, no error.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let f = fleet(&c).await;
        if f.len() == 2 && f.iter().all(|e| e.report.applied_version == Some(2)) {
            assert!(
                f.iter()
                    .all(|e| e.report.pop == "pop1" && e.report.error.is_none()),
                "{f:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fleet view never showed version 2: {f:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Purge fan-out: both edges acknowledge; each had the object.
    let (status, out) = c
        .call(
            Method::POST,
            "/v1/purge",
            Some(json!({"url": "http://a.test/x"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["acknowledged"], json!(["e1", "e2"]), "{out}");
    assert_eq!(out["purged"], 2, "{out}");
    let (_, out) = c
        .call(
            Method::POST,
            "/v1/purge",
            Some(json!({"all": true, "service": "b", "soft": true})),
        )
        .await;
    assert_eq!(out["purged"], 2, "{out}");
    // An edge that is down is named as a straggler; the others still purge.
    let e2_admin = e2.member.admin_addr().expect("e2 has an admin listener");
    e2.shutdown();
    e2.member.drain(std::time::Duration::from_secs(1)).await;
    drop(e2);
    // Down means its admin listener refuses connections.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(e2_admin).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "e2's admin listener still accepts after shutdown"
        );
        tokio::task::yield_now().await;
    }
    let (_, out) = c
        .call(
            Method::POST,
            "/v1/purge",
            Some(json!({"key": "k", "service": "a", "deadline_ms": 500})),
        )
        .await;
    assert_eq!(out["acknowledged"], json!(["e1"]), "{out}");
    assert_eq!(out["stragglers"][0]["id"], "e2", "{out}");
    let (status, _) = c
        .call(Method::POST, "/v1/purge", Some(json!({"key": "k"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "key without service");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_document_fails_keeps_its_version_and_the_others_update() {
    let dir = temp_dir("isolation");
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    c.release(&fleet_doc(origin, "v1")).await;
    let e = edge(&c, &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;
    // Version 2 as a newer control plane might produce it: service b uses a field this edge
    // does not know. Signed by the real key, so only the edge's own loading can refuse it.
    let doc = fleet_doc(origin, "v2").replace(
        "hosts = [\"b.test\"]",
        "hosts = [\"b.test\"]\nbrand_new_field = true",
    );
    store_version(&c, 2, &doc, |b| b, &c.key()).await;
    // Through a rollout it stops at stage: no edge serves a version one of them cannot load.
    c.start_deploy(2).await;
    let view = c.wait_rollout(2, "stage_failed").await;
    assert!(
        view["rollout"]["outcome"]
            .as_str()
            .unwrap()
            .contains("brand_new_field"),
        "{view:#}"
    );
    assert_eq!(through(addr(&e), "a.test", "/").await.1, "v1");
    // Should it reach the edge anyway (a target written behind the rollout's back), the edge
    // still applies it service by service.
    c.force_target(2, false).await;
    wait_applied(&e, 2).await;
    let s = e.status();
    assert_eq!(s.failed_services.len(), 1, "{s:?}");
    assert_eq!(s.failed_services[0].service, "b");
    assert_eq!(s.failed_services[0].kept_version, Some(1));
    assert!(
        s.failed_services[0].error.contains("brand_new_field"),
        "{s:?}"
    );
    assert_eq!(
        through(addr(&e), "a.test", "/").await.1,
        "v2",
        "service a updates"
    );
    assert_eq!(
        through(addr(&e), "b.test", "/").await.1,
        "v1",
        "service b keeps version 1"
    );
    // The control plane's fleet view names the failed service.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fleet(&c)
        .await
        .first()
        .is_none_or(|f| f.report.failed_services.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "fleet view never named service b"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // After a restart the edge rebuilds the same mix from disk.
    e.shutdown();
    drop(e);
    let mut c = c;
    c.stop().await;
    let again = edge_trusting("http://127.0.0.1:9", c.public(), &dir.join("e"), "e").await;
    assert_eq!(through(addr(&again), "a.test", "/").await.1, "v2");
    assert_eq!(through(addr(&again), "b.test", "/").await.1, "v1");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_and_truncated_download_are_refused_and_the_edge_keeps_serving() {
    let dir = temp_dir("refuse");
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    c.release(&fleet_doc(origin, "v1")).await;
    let e = edge(&c, &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;

    let stranger = ControlKey::generate().unwrap();
    store_version(&c, 2, &fleet_doc(origin, "evil"), |b| b, &stranger).await;
    c.start_deploy(2).await;
    let view = c.wait_rollout(2, "stage_failed").await;
    assert!(
        view["rollout"]["outcome"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{view:#}"
    );
    wait_for(&e, "bad signature reported", |s| {
        s.staged
            .as_ref()
            .and_then(|s| s.error.as_deref())
            .is_some_and(|m| m.contains("signature"))
    })
    .await;
    assert_eq!(through(addr(&e), "a.test", "/").await.1, "v1");
    assert_eq!(e.status().applied.unwrap().version, 1);

    store_version(
        &c,
        3,
        &fleet_doc(origin, "v3"),
        |mut b| {
            b.truncate(b.len() / 2);
            b
        },
        &c.key(),
    )
    .await;
    c.start_deploy(3).await;
    c.wait_rollout(3, "stage_failed").await;
    wait_for(&e, "truncation reported", |s| {
        s.staged
            .as_ref()
            .and_then(|s| s.error.as_deref())
            .is_some_and(|m| m.contains("hash"))
    })
    .await;
    assert_eq!(through(addr(&e), "a.test", "/").await.1, "v1");
    // Neither refused bundle reached the disk.
    let kept: Vec<_> = std::fs::read_dir(dir.join("e/bundles"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");

    // The next good version applies and clears the error.
    assert_eq!(c.release(&fleet_doc(origin, "v4")).await, 4);
    wait_applied(&e, 4).await;
    assert!(e.status().last_error.is_none());
    assert_eq!(through(addr(&e), "a.test", "/").await.1, "v4");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_down_the_edge_serves_and_restarts_from_disk() {
    let dir = temp_dir("static");
    let origin = origin().await;
    let mut c = Control::start(&redb(&dir), &dir).await;
    for i in 1..=5 {
        c.release(&fleet_doc(origin, &format!("v{i}"))).await;
    }
    let e = edge(&c, &dir.join("e"), "e").await;
    wait_applied(&e, 5).await;
    c.stop().await;
    wait_for(&e, "control plane error noted", |s| {
        s.control_error.is_some()
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            through(addr(&e), "a.test", "/").await,
            (200, "v5".into(), "origin says /".into())
        );
    }
    // A restart while the control plane is still down serves the last good version at once.
    e.shutdown();
    drop(e);
    let again = edge_trusting("http://127.0.0.1:9", c.public(), &dir.join("e"), "e").await;
    assert_eq!(through(addr(&again), "a.test", "/").await.1, "v5");
    assert_eq!(again.status().applied.unwrap().version, 5);
    // The edge kept only the newest versions (keep = 3 in the harness; it fetched just one).
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("e/applied.json")).unwrap()).unwrap();
    assert_eq!(record["version"], 5);
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_target_is_refused_by_the_edge() {
    // etcd lets the test write a target behind the API's back (the API refuses it), as a
    // buggy or compromised replica might; the edge is the last line of defence. Targets are
    // ordered by (epoch, seq), never by version: an old statement replayed is refused.
    let etcd = Etcd::start();
    let dir = temp_dir("downgrade");
    let origin = origin().await;
    let c = Control::start(&etcd.endpoint, &dir).await;
    c.release(&fleet_doc(origin, "v1")).await;
    c.release(&fleet_doc(origin, "v2")).await;
    let e = edge(&c, &dir.join("e"), "e").await;
    wait_applied(&e, 2).await;
    let mut state = c.store.state().await.unwrap().unwrap();
    let info = c.store.version(1).await.unwrap().unwrap();
    let target = firebreak_protocol::signed::Target {
        audience: "*".into(),
        stage: None,
        rollout: None,
        epoch: state.epoch,
        seq: 1,
        expires_at_ms: firebreak_protocol::now_ms() + 60_000,
        version: 1,
        bundle_sha256: info.sha256,
        rollback: false,
        set_at_ms: 1,
        set_by: "rogue".into(),
    };
    let signed = firebreak_protocol::signed::Signed::sign(&target, &c.key()).unwrap();
    let stored = firebreak_control::store::StoredTarget {
        seq: state.seq + 1,
        version: 1,
        signed,
    };
    let previous = state.seq;
    state.seq += 1;
    state.default = Some(stored);
    assert!(c.store.set_state(previous, &state).await.unwrap());
    wait_for(&e, "downgrade refused", |s| {
        s.last_error.as_deref().is_some_and(|m| m.contains("older"))
    })
    .await;
    assert_eq!(through(addr(&e), "a.test", "/").await.1, "v2");
    // An explicit rollback is applied.
    let (status, _) = c
        .call(
            Method::PUT,
            "/v1/target",
            Some(json!({"version": 1, "rollback": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    wait_applied(&e, 1).await;
    assert_eq!(through(addr(&e), "a.test", "/").await.1, "v1");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_with_nothing_registers_waits_and_serves_nothing_until_its_first_version() {
    let dir = temp_dir("first");
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    let (url, public, data) = (c.url.clone(), c.public(), dir.join("e"));
    let starting = tokio::spawn(async move { edge_trusting(&url, public, &data, "early").await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let f = fleet(&c).await;
        if let Some(e) = f.first() {
            assert_eq!(e.report.applied_version, None);
            assert_eq!(
                e.report.error.as_deref(),
                Some("waiting for the first version")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the waiting edge never registered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        !starting.is_finished(),
        "an edge without a version must not serve"
    );
    c.release(&fleet_doc(origin, "v1")).await;
    let e = starting.await.unwrap();
    wait_applied(&e, 1).await;
    assert_eq!(through(addr(&e), "a.test", "/").await.1, "v1");
    std::fs::remove_dir_all(&dir).ok();
}
