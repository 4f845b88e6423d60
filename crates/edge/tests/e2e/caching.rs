//! RFC 9111 caching behaviour, end to end.

use crate::common::*;
use bytes::Bytes;
use http::{Method, StatusCode};

#[tokio::test]
async fn max_age_response_is_stored_and_served_as_hit() {
    let origin = TestOrigin::start(|_| Reply::ok("hello").cc("max-age=60")).await;
    let edge = edge_for(&origin).await;
    let first = edge.get("/a").await;
    assert_eq!(first.status, 200);
    assert!(
        first.cache_status().contains("fwd=miss"),
        "{}",
        first.cache_status()
    );
    assert!(first.cache_status().contains("stored"));
    let second = edge.get("/a").await;
    assert_eq!(second.text(), "hello");
    assert!(
        second.cache_status().starts_with("firebreak; hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(origin.count(), 1);
    // Query strings are part of the key.
    edge.get("/a?x=1").await;
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn s_maxage_overrides_max_age_for_the_shared_cache() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("max-age=0, s-maxage=60")).await;
    let edge = edge_for(&origin).await;
    edge.get("/s").await;
    let r = edge.get("/s").await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(origin.count(), 1);
}

async fn assert_not_stored(cc: Option<&'static str>, extra: Option<(&'static str, &'static str)>) {
    let origin = TestOrigin::start(move |_| {
        let mut r = Reply::ok("x");
        if let Some(cc) = cc {
            r = r.cc(cc);
        }
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r
    })
    .await;
    let edge = edge_for(&origin).await;
    let a = edge.get("/n").await;
    let b = edge.get("/n").await;
    assert_eq!(origin.count(), 2, "stored despite {cc:?} {extra:?}");
    assert!(!a.cache_status().contains("stored"), "{}", a.cache_status());
    assert!(b.cache_status().contains("fwd="), "{}", b.cache_status());
}

#[tokio::test]
async fn no_store_private_and_missing_freshness_are_not_stored() {
    assert_not_stored(Some("max-age=60, no-store"), None).await;
    assert_not_stored(Some("private, max-age=60"), None).await;
    assert_not_stored(None, None).await;
    // `Last-Modified` alone is heuristically fresh by default (rfc9111_rest.rs).
    assert_not_stored(Some("max-age=60"), Some(("set-cookie", "session=1"))).await;
    assert_not_stored(Some("max-age=60"), Some(("vary", "*"))).await;
    // An invalid Expires means already expired; without a validator there is nothing to keep.
    assert_not_stored(None, Some(("expires", "0"))).await;
}

#[tokio::test]
async fn expires_gives_freshness_when_there_is_no_max_age() {
    let origin = TestOrigin::start(|_| {
        let now = std::time::SystemTime::now();
        Reply::ok("e")
            .header("date", httpdate::fmt_http_date(now))
            .header(
                "expires",
                httpdate::fmt_http_date(now + std::time::Duration::from_secs(120)),
            )
    })
    .await;
    let edge = edge_for(&origin).await;
    edge.get("/e").await;
    let r = edge.get("/e").await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    let ttl = r.ttl();
    assert!((100..=120).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn operator_default_ttl_and_path_rules() {
    let origin = TestOrigin::start(|_| Reply::ok("plain")).await;
    let cfg = config(
        origin.addr,
        r#"default_ttl_s = 60
rules = [{ path_prefix = "/never/", bypass = true }, { path_prefix = "/forced/", ttl_s = 30 }]"#,
    );
    let edge = start_edge(&cfg).await;
    edge.get("/plain").await;
    assert!(edge.get("/plain").await.cache_status().contains("hit"));
    assert_eq!(origin.count(), 1);
    edge.get("/never/x").await;
    let r = edge.get("/never/x").await;
    assert!(
        r.cache_status().contains("fwd=bypass"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count(), 3);
    edge.get("/forced/x").await;
    let r = edge.get("/forced/x").await;
    assert!(
        r.cache_status().contains("hit; ttl=30") || r.cache_status().contains("hit; ttl=29"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn regex_rules_match_paths_in_order_with_prefix_rules() {
    let origin = TestOrigin::start(|_| Reply::ok("r")).await;
    let cfg = config(
        origin.addr,
        r#"rules = [{ path_regex = "^/api/v[0-9]+/live$", bypass = true }, { path_regex = "\\.(css|js)$", ttl_s = 90 }, { path_prefix = "/api/", ttl_s = 10 }]"#,
    );
    let edge = start_edge(&cfg).await;
    edge.get("/api/v2/live").await;
    assert!(edge
        .get("/api/v2/live")
        .await
        .cache_status()
        .contains("fwd=bypass"));
    edge.get("/app/site.css").await;
    let r = edge.get("/app/site.css").await;
    assert!(
        r.cache_status().contains("hit") && (89..=90).contains(&r.ttl()),
        "{}",
        r.cache_status()
    );
    edge.get("/api/v2/other").await;
    let r = edge.get("/api/v2/other").await;
    assert!(
        r.cache_status().contains("hit") && (9..=10).contains(&r.ttl()),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn forced_ttl_overrides_origin_max_age() {
    let origin = TestOrigin::start(|_| Reply::ok("f").cc("max-age=0")).await;
    let cfg = config(
        origin.addr,
        r#"rules = [{ path_prefix = "/", ttl_s = 300 }]"#,
    );
    let edge = start_edge(&cfg).await;
    edge.get("/f").await;
    assert!(edge.get("/f").await.cache_status().contains("hit"));
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn status_codes_cacheable_by_default_and_others_only_with_explicit_freshness() {
    let origin = TestOrigin::start(|r| match r.uri.path() {
        "/404" => Reply::ok("gone").status(404).cc("max-age=60"),
        "/302-plain" => Reply::ok("").status(302).header("location", "/x"),
        "/302-fresh" => Reply::ok("")
            .status(302)
            .header("location", "/x")
            .cc("max-age=60"),
        _ => Reply::ok("").status(500),
    })
    .await;
    let cfg = config(origin.addr, "default_ttl_s = 60");
    let edge = start_edge(&cfg).await;
    for p in ["/404", "/302-plain", "/302-fresh"] {
        edge.get(p).await;
        edge.get(p).await;
    }
    let counts = |p: &str| {
        origin
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.uri.path() == p)
            .count()
    };
    assert_eq!(counts("/404"), 1);
    // 302 is not cacheable by default, so the operator's default TTL does not apply to it.
    assert_eq!(counts("/302-plain"), 2);
    assert_eq!(counts("/302-fresh"), 1);
}

#[tokio::test]
async fn vary_keeps_several_variants_per_url() {
    let origin = TestOrigin::start(|r| {
        let lang = r.header("accept-language").unwrap_or("none").to_owned();
        Reply::ok(format!("lang={lang}"))
            .cc("max-age=60")
            .header("vary", "Accept-Language")
    })
    .await;
    let edge = edge_for(&origin).await;
    assert_eq!(
        edge.get_with("/v", &[("accept-language", "fr")])
            .await
            .text(),
        "lang=fr"
    );
    let en = edge.get_with("/v", &[("accept-language", "en")]).await;
    assert_eq!(en.text(), "lang=en");
    assert!(
        en.cache_status().contains("fwd=vary-miss"),
        "{}",
        en.cache_status()
    );
    assert_eq!(edge.get("/v").await.text(), "lang=none");
    assert_eq!(origin.count(), 3);
    let fr = edge.get_with("/v", &[("accept-language", "fr")]).await;
    assert_eq!(fr.text(), "lang=fr");
    assert!(fr.cache_status().contains("hit"));
    let en = edge.get_with("/v", &[("accept-language", "en")]).await;
    assert_eq!(en.text(), "lang=en");
    assert!(edge.get("/v").await.cache_status().contains("hit"));
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn authorization_requests_are_stored_only_when_the_response_allows_sharing() {
    let origin = TestOrigin::start(|r| match r.uri.path() {
        "/public" => Reply::ok("p").cc("public, max-age=60"),
        _ => Reply::ok("secret").cc("max-age=60"),
    })
    .await;
    let edge = edge_for(&origin).await;
    let auth = [("authorization", "Bearer abc")];
    edge.get_with("/secret", &auth).await;
    edge.get_with("/secret", &auth).await;
    assert_eq!(origin.count(), 2);
    edge.get_with("/public", &auth).await;
    assert!(edge
        .get_with("/public", &auth)
        .await
        .cache_status()
        .contains("hit"));
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn stale_response_is_revalidated_with_etag_and_304_updates_stored_headers() {
    let origin = TestOrigin::start(|r| {
        if r.header("if-none-match") == Some("\"v1\"") {
            Reply::ok("")
                .status(304)
                .cc("max-age=60")
                .header("x-version", "updated")
                .header("etag", "\"v1\"")
        } else {
            // Age makes the stored copy stale on arrival, so the next request revalidates.
            Reply::ok("body-v1")
                .cc("max-age=10")
                .header("age", "20")
                .header("etag", "\"v1\"")
                .header("x-version", "original")
        }
    })
    .await;
    let edge = edge_for(&origin).await;
    let first = edge.get("/r").await;
    assert_eq!(first.header("x-version"), Some("original"));
    let second = edge.get("/r").await;
    assert_eq!(origin.last().header("if-none-match"), Some("\"v1\""));
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "body-v1");
    assert_eq!(second.header("x-version"), Some("updated"));
    assert!(
        second
            .cache_status()
            .contains("fwd=stale; fwd-status=304; stored"),
        "{}",
        second.cache_status()
    );
    let third = edge.get("/r").await;
    // The stored Age (20) belonged to the first response; the 304 brought none, so the
    // refreshed copy is young again: ttl close to the 304's max-age=60, not 60 - 20.
    let ttl = third.ttl();
    assert!((55..=60).contains(&ttl), "{}", third.cache_status());
    assert!(
        third.cache_status().contains("hit"),
        "{}",
        third.cache_status()
    );
    assert_eq!(third.header("x-version"), Some("updated"));
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn revalidation_uses_last_modified_when_there_is_no_etag() {
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    let origin = TestOrigin::start(move |r| {
        if r.header("if-modified-since") == Some(lm) {
            Reply::ok("").status(304).cc("max-age=60")
        } else {
            Reply::ok("lm-body")
                .cc("no-cache")
                .header("last-modified", lm)
        }
    })
    .await;
    let edge = edge_for(&origin).await;
    edge.get("/lm").await;
    let r = edge.get("/lm").await;
    assert_eq!(r.text(), "lm-body");
    assert_eq!(origin.last().header("if-modified-since"), Some(lm));
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn no_cache_responses_are_revalidated_on_every_request() {
    let origin = TestOrigin::start(|r| {
        if r.header("if-none-match").is_some() {
            Reply::ok("").status(304).header("etag", "\"n\"")
        } else {
            Reply::ok("nc").cc("no-cache").header("etag", "\"n\"")
        }
    })
    .await;
    let edge = edge_for(&origin).await;
    for _ in 0..3 {
        assert_eq!(edge.get("/nc").await.text(), "nc");
    }
    assert_eq!(origin.count(), 3);
    let reqs = origin.requests.lock().unwrap().clone();
    assert!(reqs[1].header("if-none-match").is_some() && reqs[2].header("if-none-match").is_some());
}

#[tokio::test]
async fn client_conditionals_are_answered_from_cache() {
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    let origin = TestOrigin::start(move |_| {
        Reply::ok("c")
            .cc("max-age=60")
            .header("etag", "W/\"c1\"")
            .header("last-modified", lm)
    })
    .await;
    let edge = edge_for(&origin).await;
    // On a miss the client's conditional is answered too, while the full body is stored.
    let r = edge.get_with("/c", &[("if-none-match", "\"c1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(
        origin.last().header("if-none-match").is_none(),
        "client validators must not be forwarded on a fill"
    );
    let r = edge.get_with("/c", &[("if-none-match", "\"c1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some("W/\"c1\""));
    assert_eq!(
        edge.get_with("/c", &[("if-none-match", "\"other\"")])
            .await
            .status,
        200
    );
    assert_eq!(
        edge.get_with("/c", &[("if-modified-since", lm)])
            .await
            .status,
        304
    );
    assert_eq!(
        edge.get_with(
            "/c",
            &[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]
        )
        .await
        .status,
        200
    );
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn head_is_served_from_a_cached_get() {
    let origin = TestOrigin::start(|_| Reply::ok("0123456789").cc("max-age=60")).await;
    let edge = edge_for(&origin).await;
    edge.get("/h").await;
    let r = edge.send(Method::HEAD, "/h", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("10"));
    assert!(r.cache_status().contains("hit"));
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn unsafe_methods_invalidate_target_and_same_host_locations() {
    let origin = TestOrigin::start(|r| match (r.method.as_str(), r.uri.path()) {
        ("GET", p) => Reply::ok(format!("get {p}")).cc("max-age=60"),
        ("POST", "/fail") => Reply::ok("no").status(500),
        ("POST", _) => Reply::ok("created")
            .status(201)
            .header("location", "http://localhost/loc")
            .header("content-location", "/cl"),
        ("DELETE", _) => Reply::ok("")
            .status(204)
            .header("location", "http://elsewhere.example/other"),
        _ => Reply::ok("?"),
    })
    .await;
    let edge = edge_for(&origin).await;
    for p in ["/t", "/loc", "/cl", "/other", "/fail"] {
        edge.get(p).await;
    }
    assert_eq!(origin.count(), 5);
    let post = edge
        .send(Method::POST, "/t", &[], Bytes::from_static(b"payload"))
        .await;
    assert_eq!(post.status, 201);
    assert_eq!(origin.last().body, Bytes::from_static(b"payload"));
    edge.send(Method::DELETE, "/other", &[], Bytes::new()).await;
    edge.send(Method::POST, "/fail", &[], Bytes::new()).await;
    let before = origin.count();
    for (p, refetched) in [
        ("/t", true),
        ("/loc", true),
        ("/cl", true),
        ("/other", true),
        ("/fail", false),
    ] {
        let r = edge.get(p).await;
        assert_eq!(
            r.cache_status().contains("hit"),
            !refetched,
            "{p}: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count(), before + 4);
}

/// An origin answering every URL with the 26 letters, cacheable for a minute, ETag `"az"`.
async fn alphabet_origin() -> TestOrigin {
    TestOrigin::start(|_| {
        Reply::ok("abcdefghijklmnopqrstuvwxyz")
            .cc("max-age=60")
            .header("etag", "\"az\"")
    })
    .await
}

#[tokio::test]
async fn ranges_are_answered_from_a_cached_full_response() {
    let origin = alphabet_origin().await;
    let edge = edge_for(&origin).await;
    // A range miss is forwarded as it is and does not fill the cache.
    let r = edge.get_with("/az", &[("range", "bytes=0-1")]).await;
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    edge.get("/az").await;
    let r = edge.get_with("/az", &[("range", "bytes=2-4")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text(), "cde");
    assert_eq!(r.header("content-range"), Some("bytes 2-4/26"));
    let r = edge.get_with("/az", &[("range", "bytes=-3")]).await;
    assert_eq!(r.text(), "xyz");
    let r = edge.get_with("/az", &[("range", "bytes=100-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */26"));
    let r = edge
        .get_with("/az", &[("range", "bytes=0-1"), ("if-range", "\"old\"")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 26);
    assert_eq!(origin.count(), 2);
}

/// A field named in `Connection` is hop-by-hop (RFC 9110 §7.6.1): routing removes it, so a
/// hit neither answers its range nor its precondition, though the client sent them (and
/// routing's pass over the names saw them).
#[tokio::test]
async fn ranges_and_preconditions_named_in_connection_are_not_acted_on() {
    let origin = alphabet_origin().await;
    let edge = edge_for(&origin).await;
    edge.get("/az").await;
    let r = edge.get_with("/az", &[("range", "bytes=2-4")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    let r = edge
        .get_with("/az", &[("connection", "range"), ("range", "bytes=2-4")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 26);
    let r = edge.get_with("/az", &[("if-none-match", "\"az\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = edge
        .get_with(
            "/az",
            &[("connection", "if-none-match"), ("if-none-match", "\"az\"")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn age_and_date_are_generated() {
    let origin =
        TestOrigin::start(|_| Reply::ok("aged").cc("max-age=600").header("age", "100")).await;
    let edge = edge_for(&origin).await;
    let miss = edge.get("/age").await;
    assert!(miss.header("date").is_some());
    let age: u64 = miss.header("age").unwrap().parse().unwrap();
    assert!((100..110).contains(&age), "{age}");
    let hit = edge.get("/age").await;
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((100..110).contains(&age), "{age}");
    let ttl = hit.ttl();
    assert!((490..=500).contains(&ttl), "{}", hit.cache_status());
    assert!(httpdate::parse_http_date(hit.header("date").unwrap()).is_ok());
}

/// RFC 9213 §2.2: a cache on the target list "MUST select the first (in target list order)
/// field with a valid, non-empty value and use its value to determine the caching policy for
/// the response, and it MUST ignore the Cache-Control and Expires header fields in that
/// response". RFC 9213 §3: CDN-Cache-Control targets every CDN cache, so it is forwarded to a
/// CDN downstream; Surrogate-Control is for this cache only and never leaves it.
#[tokio::test]
async fn cdn_cache_control_takes_precedence_and_is_forwarded() {
    let origin = TestOrigin::start(|r| match r.uri.path() {
        "/cdn" => Reply::ok("c")
            .cc("no-store")
            .header("cdn-cache-control", "max-age=60"),
        _ => Reply::ok("s")
            .cc("max-age=60")
            .header("surrogate-control", "no-store"),
    })
    .await;
    let edge = edge_for(&origin).await;
    let first = edge.get("/cdn").await;
    assert_eq!(first.header("cdn-cache-control"), Some("max-age=60"));
    let r = edge.get("/cdn").await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "browsers still see Cache-Control"
    );
    assert_eq!(
        r.header("cdn-cache-control"),
        Some("max-age=60"),
        "a downstream CDN sees CDN-Cache-Control, also on a hit"
    );
    edge.get("/sur").await;
    let r = edge.get("/sur").await;
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    assert!(r.header("surrogate-control").is_none());
    assert_eq!(origin.count(), 3);

    let strip = start_edge(&config(origin.addr, "strip_cdn_cache_control = true")).await;
    let r = strip.get("/cdn").await;
    assert!(r.header("cdn-cache-control").is_none());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = strip.get("/sur").await;
    assert!(r.header("surrogate-control").is_none());
}

/// `Surrogate-Control` is for this cache only: it governs what is stored and never reaches a
/// client, on the miss that stored it or on the hits after.
#[tokio::test]
async fn surrogate_control_governs_the_cache_and_never_reaches_clients() {
    let origin = TestOrigin::start(|_| {
        Reply::ok("s")
            .cc("no-cache")
            .header("surrogate-control", "max-age=60")
    })
    .await;
    let edge = edge_for(&origin).await;
    let miss = edge.get("/sur").await;
    assert!(miss.header("surrogate-control").is_none());
    for _ in 0..2 {
        let hit = edge.get("/sur").await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
        assert!(hit.header("surrogate-control").is_none());
        assert_eq!(hit.header("cache-control"), Some("no-cache"));
    }
    assert_eq!(origin.count(), 1);
}

/// RFC 9213 §2.1: CDN-Cache-Control is a Dictionary Structured Field; "If a targeted field in
/// a given response is empty, or a parsing error is encountered, that field SHOULD be ignored
/// by the cache (i.e., it should behave as if the field were not present, likely falling back
/// to other cache-control mechanisms present)", and implementations "SHOULD NOT consume values
/// that violate these inferred constraints" (`max-age` is an Integer). Either way the whole
/// field is ignored here and Cache-Control governs.
#[tokio::test]
async fn invalid_cdn_cache_control_falls_back_to_cache_control() {
    let origin = TestOrigin::start(|r| match r.uri.path() {
        // A String, not an Integer: Cache-Control's max-age=0 governs.
        "/string" => Reply::ok("s")
            .cc("max-age=0")
            .header("cdn-cache-control", "max-age=\"60\""),
        // Does not parse: the field is ignored, Cache-Control's no-store governs.
        "/broken" => Reply::ok("b")
            .cc("no-store")
            .header("cdn-cache-control", "max-age=60,,"),
        // A wrong-typed directive spoils the valid one beside it.
        "/decimal" => Reply::ok("d")
            .cc("no-store")
            .header("cdn-cache-control", "max-age=60, stale-if-error=1.5"),
        // Split over two field lines, combined (RFC 8941 §4.2), still valid.
        _ => Reply::ok("m")
            .cc("no-store")
            .header("cdn-cache-control", "no-cache=?0")
            .header("cdn-cache-control", "max-age=60"),
    })
    .await;
    let edge = edge_for(&origin).await;
    for path in ["/string", "/broken", "/decimal"] {
        edge.get(path).await;
        let r = edge.get(path).await;
        assert!(
            !r.cache_status().contains("hit"),
            "{path}: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count(), 6, "the origin is asked again each time");
    edge.get("/multi").await;
    let r = edge.get("/multi").await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(origin.count(), 7);
}

#[tokio::test]
async fn cache_status_is_on_every_response() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let edge = edge_for(&origin).await;
    assert!(edge
        .get("/x")
        .await
        .cache_status()
        .starts_with("firebreak; fwd=miss; fwd-status=200"));
    let post = edge.send(Method::POST, "/x", &[], Bytes::new()).await;
    assert!(
        post.cache_status().starts_with("firebreak; fwd=method"),
        "{}",
        post.cache_status()
    );
    origin.stop();
    let err = edge.get("/down").await;
    assert_eq!(err.status, 502);
    assert!(
        err.cache_status().starts_with("firebreak"),
        "{:?}",
        err.headers
    );
}

#[tokio::test]
async fn disabled_cache_stores_nothing() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("max-age=60")).await;
    let edge = start_edge(&config(origin.addr, "enabled = false")).await;
    edge.get("/x").await;
    let r = edge.get("/x").await;
    assert!(r.cache_status().contains("fwd=bypass"));
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn heuristic_freshness_only_when_enabled_and_allowed() {
    let lm = httpdate::fmt_http_date(
        std::time::SystemTime::now() - std::time::Duration::from_secs(100 * 86400),
    );
    let lm2 = lm.clone();
    let origin = TestOrigin::start(move |r| match r.uri.path() {
        "/302" => Reply::ok("")
            .status(302)
            .header("location", "/x")
            .header("last-modified", lm2.clone()),
        _ => Reply::ok("h").header("last-modified", lm2.clone()),
    })
    .await;
    let off = start_edge(&config(origin.addr, "heuristic_freshness = false")).await;
    off.get("/h").await;
    assert!(!off.get("/h").await.cache_status().contains("hit"));
    let on = edge_for(&origin).await;
    on.get("/h").await;
    let r = on.get("/h").await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    // 10% of 100 days, capped at one day.
    let ttl = r.ttl();
    assert!((86_000..=86_400).contains(&ttl), "{ttl}");
    // Not for a status that is not heuristically cacheable.
    on.get("/302").await;
    assert!(!on.get("/302").await.cache_status().contains("hit"));
    let _ = lm;
}
