//! HTTP/3 on the TLS listener's port (UDP): the same request path as HTTPS over HTTP/1.1 and
//! h2 — miss, hit, range, purge — checked over all three with one table; Alt-Svc on HTTPS
//! answers (and its off switch); 421 when :authority and SNI select different services; a
//! request body reaching the origin; `[http3] enabled = false`; the bound on concurrent
//! request streams per connection. Clients: `h3client` (quinn + h3, tokio-rustls + hyper),
//! a CA generated per test.

use crate::common::*;
use crate::h3client::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

const TOKEN: &str = "test-admin-token-h3-0123";

/// One `[[service]]` with a certificate and `extra` top-level service keys; responses carry
/// `x-service: NAME`.
fn service(name: &str, hosts: &[&str], origin: SocketAddr, pair: &Pair, extra: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        r#"
[[service]]
name = "{name}"
hosts = [{hosts}]
{extra}

[service.origin]
connect_timeout_ms = 1000
response_timeout_ms = 5000
servers = [{{ addr = "{origin}" }}]

[[service.response_headers]]
name = "x-service"
op = "set"
value = "{name}"

[service.tls]
cert = '''
{cert}'''
key = '''
{key}'''
"#,
        hosts = hosts.join(", "),
        cert = pair.cert,
        key = pair.key,
    )
}

/// An edge with one TLS listener (HTTP/3 on the same port unless `http3` turns it off), an
/// admin listener, `[http3]` = `http3`, and `services`.
fn h3_edge_config(http3: &str, services: &[String]) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"
tls = true

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[cache]
max_bytes = 67108864
max_object_bytes = 16777216

[http3]
{http3}
{services}"#,
        services = services.concat()
    )
}

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz";

/// Answers `ALPHABET` then the path, cacheable for a minute (no-store under `/nostore`).
async fn origin() -> TestOrigin {
    TestOrigin::start(|r| {
        let cc = if r.uri.path().starts_with("/nostore") {
            "no-store"
        } else {
            "max-age=60"
        };
        Reply::ok(format!("{ALPHABET}{}", r.uri.path())).cc(cc)
    })
    .await
}

/// Requests the origin saw for `path`.
fn seen(origin: &TestOrigin, path: &str) -> usize {
    origin
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.uri.path() == path)
        .count()
}

async fn purge_url(edge: &Edge, url: &str) -> StatusCode {
    let admin = edge.handle.admin_addr().unwrap();
    let query: String = form_urlencoded::byte_serialize(url.as_bytes()).collect();
    admin_request(admin, &format!("/purge/url?url={query}"), TOKEN).await
}

#[tokio::test]
async fn miss_hit_range_and_purge_are_the_same_over_http1_h2_and_h3() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let origin = origin().await;
    let a = ca.leaf(&["a.example"]);
    let dir = std::env::temp_dir().join(format!("fb-h3-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let edge = start_edge(&format!(
        "[access_log]\npath = \"{}\"\n{}",
        log.display(),
        h3_edge_config("", &[service("a", &["a.example"], origin.addr, &a, "")])
    ))
    .await;
    assert_eq!(
        edge.handle.http3_addrs(),
        &[edge.addr],
        "HTTP/3 on the TLS listener's port"
    );
    for proto in Proto::ALL {
        let path = format!("/{proto:?}/object").to_ascii_lowercase();
        let body = format!("{ALPHABET}{path}");
        let mut conn = Client::connect(proto, edge.addr, &ca.roots, "a.example").await;
        assert_eq!(conn.alpn.as_deref(), Some(proto.alpn()), "{proto:?}");

        let miss = conn.get("a.example", &path).await;
        assert_eq!(miss.status, StatusCode::OK, "{proto:?}");
        assert_eq!(miss.text(), body, "{proto:?}");
        assert!(
            miss.cache_status().contains("fwd=miss"),
            "{proto:?}: {}",
            miss.cache_status()
        );
        assert_eq!(miss.header("x-service"), Some("a"), "{proto:?}");
        assert_eq!(
            miss.header("x-test-version"),
            Some(format!("{:?}", proto.version()).as_str())
        );
        assert_eq!(seen(&origin, &path), 1, "{proto:?}");
        // The origin gets the authority as Host, whatever the client spoke.
        assert_eq!(origin.last().header("host"), Some("a.example"), "{proto:?}");

        let hit = conn.get_until_hit("a.example", &path).await;
        assert_eq!(hit.text(), body, "{proto:?}");
        assert_eq!(seen(&origin, &path), 1, "{proto:?}: a hit asks no origin");

        let range = conn
            .get_with("a.example", &path, &[("range", "bytes=2-4")])
            .await;
        assert_eq!(range.status, StatusCode::PARTIAL_CONTENT, "{proto:?}");
        assert_eq!(range.text(), "cde", "{proto:?}");
        assert_eq!(
            range.header("content-range"),
            Some(format!("bytes 2-4/{}", body.len()).as_str()),
            "{proto:?}"
        );
        let suffix = conn
            .get_with("a.example", &path, &[("range", "bytes=-6")])
            .await;
        assert_eq!(suffix.status, StatusCode::PARTIAL_CONTENT, "{proto:?}");
        assert_eq!(suffix.text(), &body[body.len() - 6..], "{proto:?}");
        assert_eq!(seen(&origin, &path), 1, "{proto:?}: ranges from the cache");

        assert_eq!(
            purge_url(&edge, &format!("https://a.example{path}")).await,
            StatusCode::OK
        );
        let after = conn.get("a.example", &path).await;
        assert_eq!(after.status, StatusCode::OK, "{proto:?}");
        assert_eq!(after.text(), body, "{proto:?}");
        assert!(
            after.cache_status().contains("fwd=miss"),
            "{proto:?} after the purge: {}",
            after.cache_status()
        );
        assert_eq!(seen(&origin, &path), 2, "{proto:?}");
    }
    // The access log names each request's protocol.
    let versions = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["path"].as_str().is_some_and(|p| p.ends_with("/object")))
            .filter_map(|v| {
                Some(format!(
                    "{} {}",
                    v["path"].as_str()?,
                    v["version"].as_str()?
                ))
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let lines = loop {
        tick.tick().await;
        let lines = versions(&std::fs::read_to_string(&log).unwrap_or_default());
        if lines.iter().any(|l| l.starts_with("/h3/")) && lines.len() >= 15 {
            break lines;
        }
        assert!(tokio::time::Instant::now() < deadline, "{lines:?}");
    };
    for (proto, version) in [("h1", "HTTP/1.1"), ("h2", "HTTP/2"), ("h3", "HTTP/3")] {
        let prefix = format!("/{proto}/");
        let mine: Vec<_> = lines.iter().filter(|l| l.starts_with(&prefix)).collect();
        assert!(!mine.is_empty(), "{lines:?}");
        assert!(
            mine.iter().all(|l| l.ends_with(&format!(" {version}"))),
            "{mine:?}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn https_answers_advertise_h3_in_alt_svc_unless_the_service_turns_it_off() {
    let ca = Ca::new();
    let origin = origin().await;
    let on = ca.leaf(&["on.example"]);
    let off = ca.leaf(&["off.example"]);
    let edge = start_edge(&h3_edge_config(
        "alt_svc_max_age_s = 3600",
        &[
            service("on", &["on.example"], origin.addr, &on, ""),
            service(
                "off",
                &["off.example"],
                origin.addr,
                &off,
                "alt_svc = false",
            ),
        ],
    ))
    .await;
    let expected = format!("h3=\":{}\"; ma=3600", edge.addr.port());
    for proto in [Proto::H1, Proto::H2] {
        let mut conn = Client::connect(proto, edge.addr, &ca.roots, "on.example").await;
        let r = conn.get("on.example", "/nostore/alt").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("alt-svc"), Some(expected.as_str()), "{proto:?}");
        // Cached answers carry it too.
        conn.get("on.example", "/alt").await;
        let hit = conn.get_until_hit("on.example", "/alt").await;
        assert_eq!(hit.header("alt-svc"), Some(expected.as_str()), "{proto:?}");

        let mut conn = Client::connect(proto, edge.addr, &ca.roots, "off.example").await;
        let r = conn.get("off.example", "/nostore/alt").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-service"), Some("off"));
        assert_eq!(r.header("alt-svc"), None, "{proto:?}: alt_svc = false");
        // A hit of a service that does not advertise: none either, though the stored head
        // may be `on`'s (equal fields share one), whose advertising map has an Alt-Svc slot.
        conn.get("off.example", "/alt").await;
        let hit = conn.get_until_hit("off.example", "/alt").await;
        assert_eq!(hit.header("x-service"), Some("off"));
        assert_eq!(
            hit.header("alt-svc"),
            None,
            "{proto:?}: alt_svc = false, hit"
        );
    }
}

#[tokio::test]
async fn an_h3_authority_that_selects_another_service_than_the_sni_is_misdirected() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let origin = origin().await;
    // `a`'s certificate also names b.example, so a client may reuse the connection for it.
    let a = ca.leaf(&["a.example", "b.example"]);
    let b = ca.leaf(&["b.example"]);
    let edge = start_edge(&h3_edge_config(
        "",
        &[
            service("a", &["a.example"], origin.addr, &a, ""),
            service("b", &["b.example"], origin.addr, &b, ""),
        ],
    ))
    .await;
    let mut conn = Client::connect(Proto::H3, edge.addr, &ca.roots, "a.example").await;
    let wrong = conn.get("b.example", "/nostore/m").await;
    assert_eq!(wrong.status, StatusCode::MISDIRECTED_REQUEST);
    assert!(
        wrong.cache_status().contains("misdirected"),
        "{}",
        wrong.cache_status()
    );
    let right = conn.get("a.example", "/nostore/m").await;
    assert_eq!(right.status, StatusCode::OK);
    assert_eq!(right.header("x-service"), Some("a"));
    assert_eq!(
        origin.count(),
        1,
        "the misdirected request never left the edge"
    );
    // With its own connection, b is served.
    let mut to_b = Client::connect(Proto::H3, edge.addr, &ca.roots, "b.example").await;
    let r = to_b.get("b.example", "/nostore/m").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-service"), Some("b"));
}

#[tokio::test]
async fn an_h3_request_body_reaches_the_origin_intact() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let origin =
        TestOrigin::start(|r| Reply::ok(format!("got {} bytes", r.body.len())).cc("no-store"))
            .await;
    let a = ca.leaf(&["a.example"]);
    let edge = start_edge(&h3_edge_config(
        "",
        &[service("a", &["a.example"], origin.addr, &a, "")],
    ))
    .await;
    // Many QUIC packets and several DATA frames' worth, not a repeating pattern of one size.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut conn = Client::connect(Proto::H3, edge.addr, &ca.roots, "a.example").await;
    let r = conn
        .send(
            Method::POST,
            "a.example",
            "/upload?x=1",
            &[("content-type", "application/octet-stream")],
            Bytes::from(body.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "got 200000 bytes");
    let seen = origin.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/upload?x=1");
    assert_eq!(
        seen.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(seen.body == body.as_slice(), "the body changed on the way");
    // A second exchange on the same connection: the first stream ended cleanly.
    let r = conn.get("a.example", "/nostore/after").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn with_http3_disabled_there_is_no_udp_listener_and_https_still_works() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let origin = origin().await;
    let a = ca.leaf(&["a.example"]);
    let edge = start_edge(&h3_edge_config(
        "enabled = false",
        &[service("a", &["a.example"], origin.addr, &a, "")],
    ))
    .await;
    assert!(edge.handle.http3_addrs().is_empty());
    // Nothing answers on UDP: the attempt dies at its (short) idle timeout.
    let attempt = quic_connect(
        edge.addr,
        &ca.roots,
        "a.example",
        Duration::from_millis(500),
    )
    .await;
    assert!(attempt.is_err(), "a QUIC handshake succeeded");
    for proto in [Proto::H1, Proto::H2] {
        let mut conn = Client::connect(proto, edge.addr, &ca.roots, "a.example").await;
        let r = conn.get("a.example", "/nostore/https").await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}");
        assert_eq!(r.header("alt-svc"), None, "{proto:?}: no h3 to advertise");
    }
}

type Held = (String, mpsc::Sender<Result<Bytes, std::io::Error>>);

/// The next request to reach the holding origin (at most 10 s).
async fn arrive(held: &mut mpsc::UnboundedReceiver<Held>) -> Held {
    tokio::time::timeout(WAIT, held.recv())
        .await
        .expect("no request reached the origin")
        .unwrap()
}

#[tokio::test]
async fn max_streams_per_connection_bounds_requests_in_flight_on_one_connection() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    // Every request is answered at once with a head and a body that the test ends: the
    // request stays in flight until then. The origin hands the test each body's sender.
    let (held_tx, mut held) = mpsc::unbounded_channel();
    let origin = TestOrigin::start(move |r| {
        let (tx, rx) = mpsc::channel(1);
        let _ = held_tx.send((r.uri.path().to_owned(), tx));
        Reply::streamed(rx).cc("no-store")
    })
    .await;
    let a = ca.leaf(&["a.example"]);
    let edge = start_edge(&h3_edge_config(
        "max_streams_per_connection = 2",
        &[service("a", &["a.example"], origin.addr, &a, "")],
    ))
    .await;
    let conn = H3::connect(edge.addr, &ca.roots, "a.example")
        .await
        .unwrap();
    let requests: Vec<_> = (0..4)
        .map(|i| {
            let mut send = conn.send.clone();
            tokio::spawn(async move {
                h3_request(
                    &mut send,
                    Method::GET,
                    "a.example",
                    &format!("/held/{i}"),
                    &[],
                    Bytes::new(),
                )
                .await
            })
        })
        .collect();
    // How long the test looks for a request that must not come.
    let grace = Duration::from_millis(300);
    let (_, first) = arrive(&mut held).await;
    let (_, second) = arrive(&mut held).await;
    assert!(
        tokio::time::timeout(grace, held.recv()).await.is_err(),
        "a third request reached the origin while two were in flight"
    );
    let mut in_flight = vec![second];
    first.send(Ok(Bytes::from_static(b"done"))).await.unwrap();
    drop(first);
    // One stream done: one more may start, not two.
    let (_, third) = arrive(&mut held).await;
    in_flight.push(third);
    assert!(
        tokio::time::timeout(grace, held.recv()).await.is_err(),
        "a fourth request reached the origin while two were in flight"
    );
    let next = in_flight.remove(0);
    next.send(Ok(Bytes::from_static(b"done"))).await.unwrap();
    drop(next);
    let (_, fourth) = arrive(&mut held).await;
    in_flight.push(fourth);
    for tx in in_flight {
        tx.send(Ok(Bytes::from_static(b"done"))).await.unwrap();
    }
    for (i, r) in requests.into_iter().enumerate() {
        let r = r
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("/held/{i}: {e}"));
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "done");
    }
    assert_eq!(origin.count(), 4);
}
