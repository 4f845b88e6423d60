//! Cache poisoning and web cache deception: what reaches the origin and what keys the cache
//! are the same normalised request, and a client cannot steer the origin through headers
//! that are not in the key.

use crate::common::*;

fn private_bypass(origin: std::net::SocketAddr) -> String {
    config(
        origin,
        "[[service.cache.rules]]\npath_prefix = \"/private/\"\nbypass = true\n",
    )
}

#[tokio::test]
async fn host_port_does_not_poison() {
    // An origin that builds links and redirects from Host.
    let origin = TestOrigin::start(|r| {
        let host = r.header("host").unwrap_or("").to_owned();
        Reply::ok(format!("host={host}"))
            .cc("max-age=60")
            .header("content-location", format!("http://{host}/page"))
    })
    .await;
    let edge = edge_for(&origin).await;
    let attacker = edge.get_with("/page", &[("host", "LocalHost:1337")]).await;
    assert_eq!(attacker.text(), "host=localhost");
    assert_eq!(origin.last().header("host"), Some("localhost"));
    let victim = edge.get_until_hit("/page").await;
    assert!(victim.cache_status().contains("hit"));
    assert_eq!(victim.text(), "host=localhost");
    assert_eq!(
        victim.header("content-location"),
        Some("http://localhost/page")
    );
}

#[tokio::test]
async fn host_header_override_still_wins() {
    let origin = TestOrigin::start(|r| Reply::ok(r.header("host").unwrap_or("").to_owned())).await;
    let toml = config(origin.addr, "").replace(
        "response_timeout_ms = 2000",
        "response_timeout_ms = 2000\nhost_header = \"origin.internal:8080\"",
    );
    let edge = start_edge(&toml).await;
    let r = edge.get_with("/", &[("host", "localhost:1337")]).await;
    assert_eq!(r.text(), "origin.internal:8080");
}

#[tokio::test]
async fn web_cache_deception_paths_are_normalised() {
    let origin =
        TestOrigin::start(|r| Reply::ok(format!("secret for {}", r.uri.path())).cc("max-age=60"))
            .await;
    let edge = start_edge(&private_bypass(origin.addr)).await;
    for (path, upstream) in [
        ("/x/../private/me", "/private/me"),
        ("//private/me", "/private/me"),
        ("/%70rivate/me", "/private/me"),
        ("/./private/me", "/private/me"),
        ("/private%2Fme", "/private%2Fme"),
        ("/private%2fme", "/private%2Fme"),
        ("/%2e%2e/PRIVATE/../private/me", "/private/me"),
    ] {
        let before = origin.count();
        let first = edge.get(path).await;
        assert_eq!(first.status, 200, "{path}");
        assert_eq!(origin.last().uri.path(), upstream, "{path}");
        let second = edge.get(path).await;
        assert!(
            second.cache_status().contains("fwd=bypass"),
            "{path} was cached: {}",
            second.cache_status()
        );
        assert_eq!(
            origin.count(),
            before + 2,
            "{path}: both reached the origin"
        );
    }
    // One form for the key, too: a cacheable path requested in two spellings is one object.
    let a = edge.get("/public/a.css").await;
    assert!(a.cache_status().contains("fwd=miss"));
    edge.get_until_hit("/public/a.css").await;
    let b = edge.get("/public/./x/..//%61.css").await;
    assert!(b.cache_status().contains("hit"), "{}", b.cache_status());
    // A broken escape is refused, not forwarded.
    let bad = edge
        .raw(b"GET /%zz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
}

#[tokio::test]
async fn forwarded_host_from_client_does_not_poison() {
    // An origin that builds absolute links from X-Forwarded-Host (as many frameworks do).
    let origin = TestOrigin::start(|r| {
        let host = r
            .header("x-forwarded-host")
            .or(r.header("x-host"))
            .or(r.header("host"))
            .unwrap_or("")
            .to_owned();
        let url = r.header("x-original-url").unwrap_or("/home").to_owned();
        Reply::ok(format!("<a href=\"https://{host}{url}\">")).cc("max-age=60")
    })
    .await;
    let edge = edge_for(&origin).await;
    let attack = edge
        .get_with(
            "/home",
            &[
                ("x-forwarded-host", "evil.example"),
                ("x-host", "evil.example"),
                ("x-original-url", "/admin"),
                ("forwarded", "host=evil.example;proto=https"),
                ("x-forwarded-for", "1.2.3.4"),
            ],
        )
        .await;
    assert!(!attack.text().contains("evil"), "{}", attack.text());
    let seen = origin.last();
    assert_eq!(seen.header("x-forwarded-host"), Some("localhost"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-original-url"), None);
    assert_eq!(seen.header("x-host"), None);
    let fwd: Vec<_> = seen.headers.get_all("forwarded").iter().collect();
    assert_eq!(fwd.len(), 1, "{fwd:?}");
    assert!(!fwd[0].to_str().unwrap().contains("evil"));
    let victim = edge.get_until_hit("/home").await;
    assert_eq!(victim.text(), "<a href=\"https://localhost/home\">");
}

#[tokio::test]
async fn trusted_proxy_forwarding_headers_are_kept() {
    let origin = TestOrigin::start(|_| Reply::ok("x")).await;
    let toml = format!(
        "{}\n[forwarding]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        config(origin.addr, "")
    );
    let edge = start_edge(&toml).await;
    edge.get_with(
        "/",
        &[
            ("x-forwarded-host", "www.example"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let seen = origin.last();
    assert_eq!(seen.header("x-forwarded-host"), Some("www.example"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn service_strip_and_key_headers() {
    let origin = TestOrigin::start(|r| {
        Reply::ok(format!(
            "device={} override={}",
            r.header("x-device").unwrap_or("-"),
            r.header("x-app-override").unwrap_or("-")
        ))
        .cc("max-age=60")
    })
    .await;
    let toml = config(
        origin.addr,
        "\n[service.forwarding]\nstrip_request_headers = [\"x-app-override\"]\ncache_key_headers = [\"x-device\"]\n",
    );
    let edge = start_edge(&toml).await;
    let phone = edge
        .get_with("/k", &[("x-device", "phone"), ("x-app-override", "admin")])
        .await;
    assert_eq!(phone.text(), "device=phone override=-");
    let desk = edge.get_with("/k", &[("x-device", "desktop")]).await;
    assert_eq!(desk.text(), "device=desktop override=-");
    assert!(
        desk.cache_status().contains("fwd=vary-miss"),
        "{}",
        desk.cache_status()
    );
    let again = edge.get_with("/k", &[("x-device", "phone")]).await;
    assert_eq!(again.text(), "device=phone override=-");
}
