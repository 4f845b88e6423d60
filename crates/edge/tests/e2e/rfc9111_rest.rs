//! The rest of RFC 9111, end to end: invalid `Age`, invalidation by any unsafe method,
//! lenient and invalid `Expires`, heuristic freshness by default.

use crate::common::*;

/// RFC 9111 §5.1 (`Age = delta-seconds`) and §1.2.2: an `Age` that is not a non-negative
/// integer is ignored; it neither makes the response unstorable nor stale.
#[tokio::test]
async fn invalid_age_is_ignored_and_the_response_still_hits() {
    let origin = TestOrigin::start(|r| {
        let age = match r.uri.path() {
            "/neg" => "-5",
            "/abc" => "abc",
            "/frac" => "1.5",
            _ => "10, 20",
        };
        Reply::ok("a").cc("max-age=600").header("age", age)
    })
    .await;
    let edge = edge_for(&origin).await;
    for (n, path) in ["/neg", "/abc", "/frac", "/two"].into_iter().enumerate() {
        let first = edge.get(path).await;
        assert!(
            first.cache_status().contains("stored"),
            "{path}: {}",
            first.cache_status()
        );
        let hit = edge.get_until_hit(path).await;
        assert!(hit.ttl() > 500, "{path}: {}", hit.cache_status());
        assert_eq!(origin.count(), n + 1, "{path}");
    }
}

/// RFC 9111 §4.4: "A cache MUST invalidate the target URI when it receives a non-error
/// status code in response to an unsafe request method (including methods whose safety is
/// unknown)", and the same-host `Location`/`Content-Location`. Extension methods still reach
/// the origin with their body.
#[tokio::test]
async fn extension_methods_invalidate_like_post() {
    use bytes::Bytes;
    use http::Method;
    let origin = TestOrigin::start(|r| match r.method.as_str() {
        "GET" => Reply::ok(format!("v{}", r.uri.path())).cc("max-age=600"),
        "PROPFIND" => Reply::ok("multi").status(207),
        "LINK" => Reply::ok("").status(204).header("content-location", "/b"),
        "OPTIONS" => Reply::ok("").status(204),
        _ => Reply::ok("")
            .status(200)
            .header("location", "http://localhost/c"),
    })
    .await;
    let edge = edge_for(&origin).await;
    for p in ["/a", "/b", "/c", "/d"] {
        edge.get(p).await;
        edge.get_until_hit(p).await;
    }
    let base = origin.count();
    assert_eq!(base, 4);
    let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
    let r = edge
        .send(m("PROPFIND"), "/a", &[], Bytes::from_static(b"<propfind/>"))
        .await;
    assert_eq!(r.status, 207);
    assert_eq!(origin.last().method.as_str(), "PROPFIND");
    assert_eq!(origin.last().body, Bytes::from_static(b"<propfind/>"));
    edge.send(m("LINK"), "/x", &[], Bytes::new()).await;
    edge.send(m("PURGEX"), "/y", &[], Bytes::new()).await;
    // A safe method invalidates nothing.
    edge.send(Method::OPTIONS, "/d", &[], Bytes::new()).await;
    let sent = origin.count();
    assert_eq!(sent, base + 4);
    for (p, refetched) in [("/a", true), ("/b", true), ("/c", true), ("/d", false)] {
        let r = edge.get(p).await;
        assert_eq!(
            r.cache_status().contains("hit"),
            !refetched,
            "{p}: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count(), sent + 3);
}

/// RFC 9111 §5.3: "A cache recipient MUST interpret invalid date formats, especially the
/// value "0", as representing a time in the past"; RFC 9110 §5.6.7 lets recipients be
/// lenient about the form of a valid date (here letter case and spacing).
#[tokio::test]
async fn expires_zero_is_never_fresh_and_odd_case_expires_is() {
    let future =
        httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(600))
            .to_lowercase()
            .replacen(' ', "   ", 2);
    let origin = TestOrigin::start(move |r| match r.uri.path() {
        "/zero" => Reply::ok("z")
            .header("expires", "0")
            .header("etag", "\"z\""),
        _ => Reply::ok("o").header("expires", future.clone()),
    })
    .await;
    let edge = edge_for(&origin).await;
    for _ in 0..3 {
        let r = edge.get("/zero").await;
        assert!(!r.cache_status().contains("hit;"), "{}", r.cache_status());
    }
    assert_eq!(origin.count(), 3);
    edge.get("/odd").await;
    let hit = edge.get_until_hit("/odd").await;
    assert!(hit.ttl() > 500, "{}", hit.cache_status());
    assert_eq!(origin.count(), 4);
}

/// RFC 9111 §4.2.2: with no explicit expiration, a heuristically cacheable response with
/// `Last-Modified` gets a heuristic lifetime ("no more than some fraction of the interval
/// since that time. A typical setting of this fraction might be 10%"); on by default,
/// off per service.
#[tokio::test]
async fn heuristic_freshness_by_default_and_off_per_service() {
    let lm = httpdate::fmt_http_date(
        std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86400),
    );
    let origin = TestOrigin::start(move |r| match r.uri.path() {
        "/gone" => Reply::ok("")
            .status(410)
            .header("last-modified", lm.clone()),
        "/found" => Reply::ok("")
            .status(302)
            .header("location", "/")
            .header("last-modified", lm.clone()),
        _ => Reply::ok("h").header("last-modified", lm.clone()),
    })
    .await;
    let on = edge_for(&origin).await;
    for (n, p) in ["/h", "/gone"].into_iter().enumerate() {
        on.get(p).await;
        let hit = on.get_until_hit(p).await;
        // 10% of 10 days: one day, the default cap.
        assert!(
            (86_000..=86_400).contains(&hit.ttl()),
            "{p}: {}",
            hit.cache_status()
        );
        on.get(p).await;
        assert_eq!(origin.count(), n + 1, "{p}");
    }
    // 302 is not heuristically cacheable (RFC 9110 §15.1).
    on.get("/found").await;
    on.get("/found").await;
    assert_eq!(origin.count(), 4);

    let capped = start_edge(&config(origin.addr, "heuristic_freshness_max_s = 600")).await;
    capped.get("/h").await;
    let hit = capped.get_until_hit("/h").await;
    assert!((500..=600).contains(&hit.ttl()), "{}", hit.cache_status());
    assert_eq!(origin.count(), 5);

    let off = start_edge(&config(origin.addr, "heuristic_freshness = false")).await;
    for _ in 0..3 {
        let r = off.get("/h").await;
        assert!(!r.cache_status().contains("hit"), "{}", r.cache_status());
    }
    assert_eq!(origin.count(), 8);
}
