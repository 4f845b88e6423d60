//! Attacker-made variants: a client that mints values of a header the origin varies on must
//! not push the copy everyone reads out of the cache, and `Accept-Encoding` spellings must not
//! multiply the variants of a URL.

use crate::common::*;
use firebreak_edge::store::CacheKey;
use std::time::{Duration, Instant};

/// Waits until the URL's variant set has `n` variants (the tee stores just after the client
/// has the last byte); fails the test after 10 s.
async fn until_variants(edge: &Edge, path: &str, n: usize) {
    let key = CacheKey::new("test", "localhost", path);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let have = edge
            .handle
            .state()
            .store
            .get(&key)
            .map_or(0, |v| v.objects().len());
        if have >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{have} variants of {path}, wanted {n}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn minted_vary_values_do_not_evict_the_popular_variant() {
    let origin = TestOrigin::start(|r| {
        Reply::ok(r.header("x-v").unwrap_or("none").to_owned())
            .cc("max-age=600")
            .header("vary", "x-v")
    })
    .await;
    let edge = edge_for(&origin).await;
    let popular = [("x-v", "popular")];
    edge.get_with("/page", &popular).await;
    until_variants(&edge, "/page", 1).await;
    assert!(edge
        .get_with("/page", &popular)
        .await
        .cache_status()
        .contains("hit"));
    // The attacker mints 100 values, four times the variant bound.
    for i in 0..100 {
        let v = format!("junk{i}");
        let r = edge.get_with("/page", &[("x-v", &v)]).await;
        assert_eq!(r.text(), v);
        if i < 31 {
            until_variants(&edge, "/page", i + 2).await;
        }
    }
    let r = edge.get_with("/page", &popular).await;
    assert_eq!(r.text(), "popular");
    assert!(
        r.cache_status().contains("hit"),
        "the popular variant was evicted by minted ones: {}",
        r.cache_status()
    );
    let popular_fetches = origin
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.header("x-v") == Some("popular"))
        .count();
    assert_eq!(popular_fetches, 1);
}

#[tokio::test]
async fn accept_encoding_spellings_cannot_multiply_variants() {
    let origin = TestOrigin::start(|r| {
        Reply::ok(format!("ae={}", r.header("accept-encoding").unwrap_or("-")))
            .cc("max-age=600")
            .header("vary", "Accept-Encoding")
    })
    .await;
    let edge = edge_for(&origin).await;
    let browser = [("accept-encoding", "gzip, deflate, br")];
    let first = edge.get_with("/app.js", &browser).await;
    assert_eq!(
        first.text(),
        "ae=br, gzip",
        "the origin sees the canonical class"
    );
    until_variants(&edge, "/app.js", 1).await;
    for i in 0..60 {
        let spelling = format!("gzip;q=0.{:03}, x-junk-{i}, br", i + 1);
        let r = edge
            .get_with("/app.js", &[("accept-encoding", &spelling)])
            .await;
        assert_eq!(r.text(), "ae=br, gzip");
    }
    for other in ["gzip", "identity", "br", "*", "zstd, br, gzip, deflate"] {
        edge.get_with("/app.js", &[("accept-encoding", other)])
            .await;
    }
    let r = edge.get_with("/app.js", &browser).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    let seen: std::collections::HashSet<Option<String>> = origin
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.header("accept-encoding").map(str::to_owned))
        .collect();
    assert!(
        seen.len() <= 8,
        "origin saw {} spellings: {seen:?}",
        seen.len()
    );
    assert!(
        origin.count() <= 8,
        "{} origin fetches for one URL",
        origin.count()
    );
}
