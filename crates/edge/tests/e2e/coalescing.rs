//! Request coalescing.

use crate::common::*;
use std::sync::Arc;
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_origin_request() {
    let origin = TestOrigin::start(|_| Reply::ok("shared").cc("max-age=60").delay(300)).await;
    let edge = Arc::new(edge_for(&origin).await);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let edge = edge.clone();
        tasks.push(tokio::spawn(async move { edge.get("/hot").await }));
    }
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "shared");
        if r.cache_status().contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(origin.count(), 1);
    assert!(collapsed >= 1, "waiters are marked collapsed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_responses_release_waiters_to_the_origin_in_parallel() {
    // The first request (the leader) is answered after a delay with an uncacheable response.
    // The origin then holds every other request until all N-1 have arrived: if the edge
    // released the waiters one at a time, the barrier would never fill and they would time out.
    const N: usize = 8;
    let barrier = Arc::new(Barrier::new(N - 1));
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let origin = TestOrigin::start(move |_| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::ok("private").cc("no-store").delay(300)
        } else {
            Reply::ok("private").cc("no-store").barrier(barrier.clone())
        }
    })
    .await;
    let edge = Arc::new(edge_for(&origin).await);
    let mut tasks = Vec::new();
    for _ in 0..N {
        let edge = edge.clone();
        tasks.push(tokio::spawn(async move { edge.get("/uncacheable").await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(origin.count(), N);
    // Now the key is known to be uncacheable ("hit-for-pass"): a new wave is not coalesced
    // at all. All N wait on the barrier, which fills only if none waits for another.
    let mut tasks = Vec::new();
    for _ in 0..(N - 1) {
        let edge = edge.clone();
        tasks.push(tokio::spawn(async move { edge.get("/uncacheable").await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(origin.count(), 2 * N - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_whose_variant_differs_fetch_their_own() {
    let origin = TestOrigin::start(|r| {
        let v = r.header("x-v").unwrap_or("-").to_owned();
        Reply::ok(v)
            .cc("max-age=60")
            .header("vary", "x-v")
            .delay(200)
    })
    .await;
    let edge = Arc::new(edge_for(&origin).await);
    let a = {
        let e = edge.clone();
        tokio::spawn(async move { e.get_with("/var", &[("x-v", "a")]).await })
    };
    // `a` is at the origin (the leader of its key) before `b` asks.
    origin.wait_for_requests(1).await;
    let b = edge.get_with("/var", &[("x-v", "b")]).await;
    assert_eq!(a.await.unwrap().text(), "a");
    assert_eq!(b.text(), "b");
    assert_eq!(origin.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_a_response_that_is_stale_on_arrival() {
    // no-cache: every *new* request must revalidate, but requests that waited for this very
    // fetch share its result instead of revalidating one after another.
    let origin = TestOrigin::start(|_| {
        Reply::ok("nc")
            .cc("no-cache")
            .header("etag", "\"e\"")
            .delay(300)
    })
    .await;
    let edge = Arc::new(edge_for(&origin).await);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let edge = edge.clone();
        tasks.push(tokio::spawn(async move { edge.get("/nc").await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().text(), "nc");
    }
    assert_eq!(origin.count(), 1);
    // A later request revalidates.
    edge.get("/nc").await;
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn origin_errors_do_not_turn_off_coalescing() {
    let origin = TestOrigin::start(|r| match r.uri.path() {
        "/down" => Reply::ok("down").status(503).cc("no-store"),
        _ => Reply::ok("private").cc("no-store"),
    })
    .await;
    let edge = edge_for(&origin).await;
    edge.get("/down").await;
    edge.get("/nostore").await;
    let key = |p: &str| firebreak_edge::store::CacheKey::new("test", "localhost", p);
    let coalescer = &edge.handle.state().coalescer;
    assert!(matches!(
        coalescer.join(&key("/nostore")),
        firebreak_edge::coalesce::Join::Pass
    ));
    assert!(matches!(
        coalescer.join(&key("/down")),
        firebreak_edge::coalesce::Join::Leader(_)
    ));
}
