//! The admin listener: purge, metrics, health; and the access log.

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;

const TOKEN: &str = "test-admin-token-0123";

fn with_admin(base: &str) -> String {
    format!("{base}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n")
}

async fn admin(
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path_and_query}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn setup() -> (TestOrigin, Edge, SocketAddr) {
    let origin = TestOrigin::start(|r| {
        let tags = match r.uri.path() {
            "/a" => "red blue",
            "/b" => "blue",
            _ => "green",
        };
        Reply::ok(format!("body {}", r.uri.path()))
            .cc("max-age=600, stale-if-error=600")
            .header("surrogate-key", tags)
            .header("etag", "\"v\"")
    })
    .await;
    let edge = start_edge(&with_admin(&config(origin.addr, ""))).await;
    let admin_addr = edge.handle.admin_addr().unwrap();
    (origin, edge, admin_addr)
}

async fn warm(edge: &Edge, paths: &[&str]) {
    for p in paths {
        edge.get(p).await;
        assert!(
            edge.get(p).await.cache_status().contains("hit"),
            "{p} not cached"
        );
    }
}

#[tokio::test]
async fn health_needs_no_token_everything_else_does() {
    let (_o, _edge, admin_addr) = setup().await;
    assert_eq!(
        admin(admin_addr, Method::GET, "/healthz", None).await,
        (StatusCode::OK, "ok\n".into())
    );
    assert_eq!(
        admin(admin_addr, Method::GET, "/metrics", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin(
            admin_addr,
            Method::GET,
            "/metrics",
            Some("wrong-token-wrong-token")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin(admin_addr, Method::POST, "/purge/all?service=test", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin(
            admin_addr,
            Method::GET,
            "/purge/all?service=test",
            Some(TOKEN)
        )
        .await
        .0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        admin(admin_addr, Method::GET, "/nope", Some(TOKEN)).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn purge_by_url_removes_every_variant_of_that_url_only() {
    let (origin, edge, admin_addr) = setup().await;
    warm(&edge, &["/a", "/b", "/a?x=1"]).await;
    let (status, body) = admin(
        admin_addr,
        Method::POST,
        "/purge/url?url=http%3A%2F%2Flocalhost%2Fa",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, r#"{"purged":1,"service":"test"}"#);
    let before = origin.count();
    assert!(edge.get("/a").await.cache_status().contains("fwd=miss"));
    assert!(edge.get("/b").await.cache_status().contains("hit"));
    assert!(edge.get("/a?x=1").await.cache_status().contains("hit"));
    assert_eq!(origin.count(), before + 1);
    let (status, _) = admin(
        admin_addr,
        Method::POST,
        "/purge/url?url=not%20a%20url",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn purge_by_surrogate_key_and_whole_service() {
    let (_origin, edge, admin_addr) = setup().await;
    warm(&edge, &["/a", "/b", "/c"]).await;
    let (_, body) = admin(
        admin_addr,
        Method::POST,
        "/purge/key?service=test&key=blue",
        Some(TOKEN),
    )
    .await;
    assert_eq!(body, r#"{"purged":2,"service":"test"}"#);
    assert!(edge.get("/c").await.cache_status().contains("hit"));
    assert!(edge.get("/a").await.cache_status().contains("fwd=miss"));
    let (_, body) = admin(
        admin_addr,
        Method::POST,
        "/purge/all?service=test",
        Some(TOKEN),
    )
    .await;
    assert!(body.starts_with(r#"{"purged":"#), "{body}");
    assert!(edge.get("/c").await.cache_status().contains("fwd=miss"));
    let (status, _) = admin(
        admin_addr,
        Method::POST,
        "/purge/all?service=nope",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn soft_purge_revalidates_and_still_serves_stale_if_the_origin_fails() {
    let (origin, edge, admin_addr) = setup().await;
    warm(&edge, &["/a", "/b"]).await;
    let (_, body) = admin(
        admin_addr,
        Method::POST,
        "/purge/key?service=test&key=blue&soft=true",
        Some(TOKEN),
    )
    .await;
    assert_eq!(body, r#"{"purged":2,"service":"test"}"#);
    // Revalidated with the stored validator, not refetched blind.
    let r = edge.get("/a").await;
    assert!(
        r.cache_status().contains("fwd=stale"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.last().header("if-none-match"), Some("\"v\""));
    // With the origin down, the soft-purged /b is still served (stale-if-error).
    origin.stop();
    let r = edge.get("/b").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body /b");
    assert!(
        r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn metrics_count_requests_origin_latency_store_and_purges() {
    let (_origin, edge, admin_addr) = setup().await;
    warm(&edge, &["/m"]).await;
    admin(
        admin_addr,
        Method::POST,
        "/purge/url?url=http://localhost/m&soft=true",
        Some(TOKEN),
    )
    .await;
    let (status, text) = admin(admin_addr, Method::GET, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    for needle in [
        "firebreak_requests_total{service=\"test\",status=\"200\",cache=\"hit\"}",
        "firebreak_requests_total{service=\"test\",status=\"200\",cache=\"miss\"}",
        "firebreak_origin_requests_total{service=\"test\",status=\"200\"}",
        "firebreak_origin_latency_seconds_bucket{service=\"test\",le=\"0.005\"}",
        "firebreak_body_bytes_total{service=\"test\",source=\"cache\"}",
        "firebreak_cache_objects",
        "firebreak_cache_bytes",
        "firebreak_cache_evictions_total",
        "firebreak_purges_total{kind=\"url\",mode=\"soft\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

/// A body kept in zero-copy pages shows in the pages' gauges.
#[tokio::test]
async fn metrics_show_zero_copy_pages() {
    let origin = TestOrigin::start(|_| Reply::ok(vec![7u8; 20_000]).cc("max-age=600")).await;
    let edge = start_edge(&with_admin(&config(origin.addr, ""))).await;
    let admin_addr = edge.handle.admin_addr().unwrap();
    edge.get_until_hit("/big").await;
    let (status, text) = admin(admin_addr, Method::GET, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    // Other tests of this process store bodies in the same pages: at least this one.
    assert!(value("firebreak_zero_copy_bodies") >= 1.0);
    assert!(value("firebreak_zero_copy_bytes") >= 20_480.0);
    assert_eq!(value("firebreak_zero_copy_leaked_pages"), 0.0);
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request() {
    let origin = TestOrigin::start(|_| Reply::ok("logged").cc("max-age=60")).await;
    let dir = std::env::temp_dir().join(format!("fb-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let cfg = format!(
        "{}\n[access_log]\npath = \"{}\"\n",
        config(origin.addr, ""),
        path.display()
    );
    let edge = start_edge(&cfg).await;
    edge.get("/l?q=1").await;
    edge.get("/l?q=1").await;
    edge.raw(b"GET / HTTP/1.1\r\nHost: bad host\r\nConnection: close\r\n\r\n")
        .await;
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["path"], "/l?q=1");
    assert_eq!(first["cache"], "miss");
    assert_eq!(first["service"], "test");
    assert_eq!(first["status"], 200);
    assert!(first["origin_us"].as_u64().is_some());
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["cache"], "hit");
    assert!(second["cache_status"]
        .as_str()
        .unwrap()
        .starts_with("firebreak; hit"));
    assert!(second["origin_us"].is_null());
    let third: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(
        (third["status"].as_u64(), third["service"].as_str()),
        (Some(400), Some("-"))
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn purge_by_url_reaches_the_normal_form_and_every_key_header_copy() {
    let origin = TestOrigin::start(|r| {
        Reply::ok(format!(
            "{} for {}",
            r.uri.path(),
            r.header("x-device").unwrap_or("-")
        ))
        .cc("max-age=600")
    })
    .await;
    let base = config(
        origin.addr,
        "\n[service.forwarding]\ncache_key_headers = [\"x-device\"]\n",
    );
    let edge = start_edge(&with_admin(&base)).await;
    let admin_addr = edge.handle.admin_addr().unwrap();
    for device in ["phone", "desktop"] {
        let h = [("x-device", device)];
        assert_eq!(
            edge.get_with("/priv/x", &h).await.text(),
            format!("/priv/x for {device}")
        );
        let again = edge.get_with("/priv/x", &h).await;
        assert!(
            again.cache_status().contains("hit"),
            "{}",
            again.cache_status()
        );
        assert_eq!(again.text(), format!("/priv/x for {device}"));
    }
    // The purge names the URL in another spelling of the same path.
    let (status, body) = admin(
        admin_addr,
        Method::POST,
        "/purge/url?url=http%3A%2F%2Flocalhost%2F%2570riv%2F.%2Fx",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, r#"{"purged":2,"service":"test"}"#);
    for device in ["phone", "desktop"] {
        let r = edge.get_with("/priv/x", &[("x-device", device)]).await;
        // The first is a plain miss, the second a miss among the first's variants.
        assert!(r.cache_status().contains("miss"), "{}", r.cache_status());
    }
}
