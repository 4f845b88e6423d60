//! stale-while-revalidate, stale-if-error and the serve-stale safety net.

use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The first response is stale on arrival (Age > max-age), so the next request finds it stale.
fn first_stale(cc: &'static str, body: &'static str) -> Reply {
    Reply::ok(body).cc(cc).header("age", "20")
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_background() {
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    let origin = TestOrigin::start(move |_| {
        let i = n2.fetch_add(1, Ordering::SeqCst);
        if i == 0 {
            first_stale("max-age=10, stale-while-revalidate=60", "v1")
        } else {
            Reply::ok("v2").cc("max-age=60").delay(200)
        }
    })
    .await;
    let edge = edge_for(&origin).await;
    assert_eq!(edge.get("/swr").await.text(), "v1");
    // Several stale hits at once: all answered from cache, one background refresh.
    for _ in 0..5 {
        let r = edge.get("/swr").await;
        assert_eq!(r.text(), "v1");
        assert!(
            r.cache_status().contains("hit")
                && r.cache_status().contains("detail=stale-while-revalidate"),
            "{}",
            r.cache_status()
        );
    }
    let mut fresh = edge.get("/swr").await;
    for _ in 0..100 {
        if fresh.text() == "v2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        fresh = edge.get("/swr").await;
    }
    assert_eq!(fresh.text(), "v2");
    assert!(fresh.cache_status().contains("hit"));
    assert_eq!(origin.count(), 2, "exactly one background refresh");
}

#[tokio::test]
async fn stale_if_error_serves_stale_on_5xx_and_on_unreachable_origin() {
    let failing = Arc::new(AtomicBool::new(false));
    let f2 = failing.clone();
    let origin = TestOrigin::start(move |_| {
        if f2.load(Ordering::SeqCst) {
            Reply::ok("broken").status(503)
        } else {
            first_stale("max-age=10, stale-if-error=600", "good")
        }
    })
    .await;
    let cfg = config(origin.addr, "serve_stale_on_origin_failure = false");
    let edge = start_edge(&cfg).await;
    assert_eq!(edge.get("/sie").await.text(), "good");
    failing.store(true, Ordering::SeqCst);
    let r = edge.get("/sie").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "good");
    assert!(
        r.cache_status()
            .contains("fwd=stale; fwd-status=503; ttl=-")
            && r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
    origin.stop();
    let r = edge.get("/sie").await;
    assert_eq!(r.text(), "good");
    assert!(
        r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn safety_net_serves_stale_when_the_origin_fails() {
    let failing = Arc::new(AtomicBool::new(false));
    let f2 = failing.clone();
    let origin = TestOrigin::start(move |_| {
        if f2.load(Ordering::SeqCst) {
            Reply::ok("oops").status(500)
        } else {
            first_stale("max-age=10", "cached")
        }
    })
    .await;
    let edge = edge_for(&origin).await;
    let strict = start_edge(&config(
        origin.addr,
        "serve_stale_on_origin_failure = false",
    ))
    .await;
    edge.get("/net").await;
    strict.get("/net").await;
    failing.store(true, Ordering::SeqCst);
    let r = edge.get("/net").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "cached"));
    assert!(
        r.cache_status()
            .contains("detail=origin-failure-safety-net"),
        "{}",
        r.cache_status()
    );
    // Without the safety net the origin's error goes through.
    assert_eq!(strict.get("/net").await.status, 500);
    // And an unreachable origin with the safety net still serves.
    origin.stop();
    assert_eq!(edge.get("/net").await.text(), "cached");
}

#[tokio::test]
async fn safety_net_respects_its_maximum_age_and_must_revalidate() {
    let failing = Arc::new(AtomicBool::new(false));
    let f2 = failing.clone();
    let origin = TestOrigin::start(move |r| {
        if f2.load(Ordering::SeqCst) {
            return Reply::ok("down").status(503);
        }
        match r.uri.path() {
            "/strict" => first_stale("max-age=10, must-revalidate", "strict"),
            _ => Reply::ok("old").cc("max-age=10").header("age", "5000"),
        }
    })
    .await;
    let edge = start_edge(&config(origin.addr, "max_stale_on_failure_s = 3600")).await;
    edge.get("/strict").await;
    edge.get("/old").await;
    failing.store(true, Ordering::SeqCst);
    assert_eq!(
        edge.get("/strict").await.status,
        503,
        "must-revalidate forbids stale"
    );
    assert_eq!(
        edge.get("/old").await.status,
        503,
        "older than max_stale_on_failure_s"
    );
}
