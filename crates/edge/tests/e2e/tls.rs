//! HTTPS on the client listeners: ALPN (HTTP/1.1, h2), SNI picks the service's certificate
//! (exact and wildcard hosts, a default certificate or a clean handshake failure), 421 when
//! Host and SNI select different services, rotation by reload, TLS versions, resumption and
//! expired certificates. Certificates come from a CA generated per test (rcgen, ECDSA P-256);
//! clients are tokio-rustls with that CA as their only root.

use crate::common::*;
use crate::test_ca::{Ca, Pair};
use bytes::Bytes;
use firebreak_config::tls::{check_validity, inspect_der, CertInfo, Severity};
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const WAIT: Duration = Duration::from_secs(10);

/// Client configurations for these tests, over the shared test CA.
impl Ca {
    /// A client trusting this CA only, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut config = firebreak_protocol::tls::client_config(self.roots.clone()).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A client speaking only `version`, HTTP/1.1.
    fn client_only(&self, version: &'static rustls::SupportedProtocolVersion) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(firebreak_protocol::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// One `[[service]]` with a certificate; responses carry `x-service: NAME`.
fn service(name: &str, hosts: &[&str], origin: SocketAddr, pair: &Pair, tls_extra: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        r#"
[[service]]
name = "{name}"
hosts = [{hosts}]

[service.origin]
connect_timeout_ms = 1000
response_timeout_ms = 2000
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
{tls_extra}
"#,
        hosts = hosts.join(", "),
        cert = pair.cert,
        key = pair.key,
    )
}

/// An edge with one TLS listener and `services`.
fn tls_edge_config(services: &[String]) -> String {
    format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = true\n\n[cache]\nmax_bytes = 67108864\nmax_object_bytes = 16777216\n{}",
        services.concat()
    )
}

/// An edge with one TLS service, `a` (host and certificate `a.example`), in front of `origin`.
async fn edge_for_a(ca: &Ca, origin: SocketAddr) -> Edge {
    let a = ca.leaf(&["a.example"]);
    start_edge(&tls_edge_config(&[service(
        "a",
        &["a.example"],
        origin,
        &a,
        "",
    )]))
    .await
}

async fn cacheable_origin() -> TestOrigin {
    TestOrigin::start(|r| Reply::ok(format!("body of {}", r.uri.path())).cc("max-age=60")).await
}

async fn handshake(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .expect("the handshake did not end within 10 s")
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// An HTTPS connection to the edge and what its handshake negotiated.
struct Conn {
    sender: Sender,
    peer: CertInfo,
    alpn: Option<Vec<u8>>,
    kind: Option<HandshakeKind>,
    version: Option<ProtocolVersion>,
}

impl Conn {
    async fn open(addr: SocketAddr, config: &Arc<ClientConfig>, sni: &str) -> Self {
        let name = ServerName::try_from(sni.to_string()).unwrap();
        Self::open_as(addr, config, name).await
    }

    async fn open_as(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Self {
        let stream = handshake(addr, config, name)
            .await
            .expect("handshake failed");
        Self::over(stream).await
    }

    async fn over(stream: TlsStream<TcpStream>) -> Self {
        let session = stream.get_ref().1;
        let peer = inspect_der(&session.peer_certificates().unwrap()[0]).unwrap();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let kind = session.handshake_kind();
        let version = session.protocol_version();
        let io = TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(send)
        };
        Self {
            sender,
            peer,
            alpn,
            kind,
            version,
        }
    }

    async fn get(&mut self, host: &str, path: &str) -> Resp {
        let exchange = async {
            let resp = match &mut self.sender {
                Sender::H1(send) => {
                    send.ready().await.unwrap();
                    let req = Request::get(path)
                        .header("host", host)
                        .body(Empty::new())
                        .unwrap();
                    send.send_request(req).await.unwrap()
                }
                Sender::H2(send) => {
                    send.ready().await.unwrap();
                    let req = Request::get(format!("https://{host}{path}"))
                        .body(Empty::new())
                        .unwrap();
                    send.send_request(req).await.unwrap()
                }
            };
            let (parts, body) = resp.into_parts();
            let mut headers: HeaderMap = parts.headers;
            headers.insert(
                "x-test-version",
                format!("{:?}", parts.version).parse().unwrap(),
            );
            Resp {
                status: parts.status,
                headers,
                body: body.collect().await.unwrap().to_bytes(),
            }
        };
        tokio::time::timeout(WAIT, exchange)
            .await
            .expect("the edge did not answer within 10 s")
    }

    /// GETs until the answer is a cache hit (the fill may store just after the client has
    /// the last byte), for at most 10 s.
    async fn get_until_hit(&mut self, host: &str, path: &str) -> Resp {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            let r = self.get(host, path).await;
            if r.cache_status().contains("hit") {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never became a hit: {}",
                r.cache_status()
            );
        }
    }
}

#[tokio::test]
async fn https_over_http1_and_h2_serves_a_miss_then_a_hit() {
    let ca = Ca::new();
    let origin = cacheable_origin().await;
    let edge = edge_for_a(&ca, origin.addr).await;
    for (alpn, version, path) in [
        (b"http/1.1".as_slice(), Version::HTTP_11, "/over-h1"),
        (b"h2".as_slice(), Version::HTTP_2, "/over-h2"),
    ] {
        let mut conn = Conn::open(edge.addr, &ca.client(&[alpn]), "a.example").await;
        assert_eq!(conn.alpn.as_deref(), Some(alpn));
        let miss = conn.get("a.example", path).await;
        assert_eq!(miss.status, StatusCode::OK);
        assert_eq!(miss.text(), format!("body of {path}"));
        assert!(
            miss.cache_status().contains("fwd=miss"),
            "{}",
            miss.cache_status()
        );
        assert_eq!(
            miss.header("x-test-version"),
            Some(format!("{version:?}").as_str())
        );
        let hit = conn.get_until_hit("a.example", path).await;
        assert_eq!(hit.text(), format!("body of {path}"));
        assert_eq!(hit.header("x-service"), Some("a"));
    }
    assert_eq!(origin.count(), 2, "one origin request per path");
}

#[tokio::test]
async fn many_h2_streams_at_once_over_tls_each_get_their_own_bytes() {
    let ca = Ca::new();
    let origin = sized_origin().await;
    let edge = edge_for_a(&ca, origin.addr).await;
    let conn = Conn::open(edge.addr, &ca.client(&[b"h2"]), "a.example").await;
    let Sender::H2(send) = conn.sender else {
        panic!("h2 was not negotiated");
    };
    many_streams_get_their_own_bytes(send, "https://a.example").await;
}

#[tokio::test]
async fn sni_selects_the_certificate_of_the_service_whose_host_matches() {
    let ca = Ca::new();
    let origin = cacheable_origin().await;
    let a = ca.leaf(&["a.example"]);
    let b = ca.leaf(&["b.example", "*.w.example"]);
    let edge = start_edge(&tls_edge_config(&[
        service("a", &["a.example"], origin.addr, &a, ""),
        service("b", &["b.example", "*.w.example"], origin.addr, &b, ""),
    ]))
    .await;
    let client = ca.client(&[b"h2", b"http/1.1"]);
    let mut to_a = Conn::open(edge.addr, &client, "a.example").await;
    assert_eq!(to_a.peer.sans, ["a.example"]);
    assert_eq!(
        to_a.get("a.example", "/").await.header("x-service"),
        Some("a")
    );
    let mut to_b = Conn::open(edge.addr, &client, "B.Example").await;
    assert_eq!(to_b.peer.sans, ["b.example", "*.w.example"]);
    assert_eq!(
        to_b.get("b.example", "/").await.header("x-service"),
        Some("b")
    );
}

#[tokio::test]
async fn a_wildcard_host_routes_and_gets_the_wildcard_certificate() {
    let ca = Ca::new();
    let origin = cacheable_origin().await;
    let a = ca.leaf(&["a.example"]);
    let b = ca.leaf(&["b.example", "*.w.example"]);
    let edge = start_edge(&tls_edge_config(&[
        service(
            "a",
            &["a.example", "exact.w.example"],
            origin.addr,
            &ca.leaf(&["a.example", "exact.w.example"]),
            "",
        ),
        service("b", &["*.w.example"], origin.addr, &b, ""),
    ]))
    .await;
    drop(a);
    let client = ca.client(&[b"http/1.1"]);
    let mut conn = Conn::open(edge.addr, &client, "shop.w.example").await;
    assert_eq!(conn.peer.sans, ["b.example", "*.w.example"]);
    let r = conn.get("shop.w.example", "/w").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-service"), Some("b"));
    // An exact host wins over the wildcard.
    let mut exact = Conn::open(edge.addr, &client, "exact.w.example").await;
    assert_eq!(exact.peer.sans, ["a.example", "exact.w.example"]);
    assert_eq!(
        exact.get("exact.w.example", "/e").await.header("x-service"),
        Some("a")
    );
    // One label only: `deep.shop.w.example` matches no service and there is no default.
    assert!(handshake(
        edge.addr,
        &client,
        ServerName::try_from("deep.shop.w.example").unwrap()
    )
    .await
    .is_err());
}

#[tokio::test]
async fn unknown_sni_gets_the_default_certificate_or_a_clean_handshake_failure() {
    let ca = Ca::new();
    let origin = cacheable_origin().await;
    // The default certificate also names `fallback.example`, a name no service has, so a
    // client asking for it can verify what it gets.
    let a = ca.leaf(&["a.example", "fallback.example"]);
    let b = ca.leaf(&["b.example"]);
    let client = ca.client(&[b"http/1.1"]);

    let with_default = start_edge(&tls_edge_config(&[
        service("a", &["a.example"], origin.addr, &a, "default = true"),
        service("b", &["b.example"], origin.addr, &b, ""),
    ]))
    .await;
    let conn = Conn::open(with_default.addr, &client, "fallback.example").await;
    assert_eq!(conn.peer.sans, ["a.example", "fallback.example"]);

    let without = start_edge(&tls_edge_config(&[
        service("a", &["a.example"], origin.addr, &a, ""),
        service("b", &["b.example"], origin.addr, &b, ""),
    ]))
    .await;
    let failed = handshake(
        without.addr,
        &client,
        ServerName::try_from("fallback.example").unwrap(),
    )
    .await;
    let err = failed
        .err()
        .unwrap_or_else(|| panic!("a handshake for an unknown name succeeded"));
    assert!(
        err.to_string().contains("alert") || err.to_string().contains("Alert"),
        "{err}"
    );
    // The edge keeps serving.
    let mut conn = Conn::open(without.addr, &client, "b.example").await;
    assert_eq!(conn.get("b.example", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_host_that_selects_another_service_than_the_sni_is_misdirected() {
    let ca = Ca::new();
    let origin = cacheable_origin().await;
    let a = ca.leaf(&["a.example", "b.example", "127.0.0.1"]);
    let b = ca.leaf(&["b.example"]);
    let edge = start_edge(&tls_edge_config(&[
        service("a", &["a.example"], origin.addr, &a, "default = true"),
        service("b", &["b.example"], origin.addr, &b, ""),
    ]))
    .await;
    for alpn in [b"http/1.1".as_slice(), b"h2".as_slice()] {
        let mut conn = Conn::open(edge.addr, &ca.client(&[alpn]), "a.example").await;
        // `a`'s certificate also names b.example, so a client may reuse the connection for
        // it (h2 connection coalescing): the edge sends it to open its own.
        let wrong = conn.get("b.example", "/").await;
        assert_eq!(wrong.status, StatusCode::MISDIRECTED_REQUEST);
        assert!(
            wrong.cache_status().contains("misdirected"),
            "{}",
            wrong.cache_status()
        );
        let right = conn.get("a.example", "/").await;
        assert_eq!(right.status, StatusCode::OK);
        assert_eq!(right.header("x-service"), Some("a"));
    }
    // Without SNI (a client connecting to an IP address), nothing to compare: Host routes.
    let ip = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let mut conn = Conn::open_as(edge.addr, &ca.client(&[b"http/1.1"]), ip).await;
    assert_eq!(conn.peer.sans[0], "a.example", "the default certificate");
    let r = conn.get("b.example", "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-service"), Some("b"));
}

#[tokio::test]
async fn a_reload_rotates_the_certificate_for_new_handshakes_and_keeps_established_connections() {
    let ca = Ca::new();
    let origin = cacheable_origin().await;
    let v1 = ca.leaf(&["a.example", "v1.a.example"]);
    let v2 = ca.leaf(&["a.example", "v2.a.example"]);
    let config =
        |pair: &Pair| tls_edge_config(&[service("a", &["a.example"], origin.addr, pair, "")]);
    let edge = start_edge(&config(&v1)).await;
    // A fresh client configuration per connection: a resumed session would skip the
    // certificate altogether.
    let mut old = Conn::open(edge.addr, &ca.client(&[b"http/1.1"]), "a.example").await;
    assert_eq!(old.peer.sans, ["a.example", "v1.a.example"]);
    assert_eq!(old.get("a.example", "/before").await.status, StatusCode::OK);

    let next = firebreak_config::parse_str("v2.toml", &config(&v2)).unwrap();
    edge.handle.reload(next).unwrap();

    let mut new = Conn::open(edge.addr, &ca.client(&[b"http/1.1"]), "a.example").await;
    assert_eq!(new.peer.sans, ["a.example", "v2.a.example"]);
    assert_eq!(new.get("a.example", "/after").await.status, StatusCode::OK);
    // The connection opened before the reload still works, on its own session.
    let r = old.get("a.example", "/after-on-old").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "body of /after-on-old");
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_served_and_tls_1_1_is_refused() {
    let ca = Ca::new();
    let origin = cacheable_origin().await;
    let edge = edge_for_a(&ca, origin.addr).await;
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let mut conn = Conn::open(edge.addr, &ca.client_only(version), "a.example").await;
        assert_eq!(conn.version, Some(expected));
        assert_eq!(conn.get("a.example", "/v").await.status, StatusCode::OK);
    }
    // rustls cannot speak TLS 1.1: a hand-made TLS 1.1 ClientHello (no supported_versions
    // extension) is answered with a fatal protocol_version alert and nothing else.
    let mut hello = vec![0x03, 0x02];
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two TLS 1.1-era suites
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
                                            // server_name `a.example` and signature_algorithms (rustls wants both before it looks
                                            // at the version: without them the alert is a handshake_failure, a refusal as well).
    let name = b"a.example";
    let mut extensions = vec![0x00, 0x00, 0x00, name.len() as u8 + 5];
    extensions.extend_from_slice(&[0x00, name.len() as u8 + 3, 0x00, 0x00, name.len() as u8]);
    extensions.extend_from_slice(name);
    extensions.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01]);
    hello.extend_from_slice(&[0x00, extensions.len() as u8]);
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    let mut tcp = TcpStream::connect(edge.addr).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the connection was not closed")
        .ok();
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "an alert record: {answer:02x?}"
    );
    assert_eq!(answer.get(5), Some(&2), "fatal: {answer:02x?}");
    assert_eq!(answer.get(6), Some(&70), "protocol_version: {answer:02x?}");
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_resumes_its_session() {
    let ca = Ca::new();
    let origin = cacheable_origin().await;
    let edge = edge_for_a(&ca, origin.addr).await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = ca.client_only(version);
        let mut first = Conn::open(edge.addr, &client, "a.example").await;
        assert_eq!(first.kind, Some(HandshakeKind::Full));
        // TLS 1.3 tickets arrive after the handshake: a request makes sure they were read.
        assert_eq!(first.get("a.example", "/r").await.status, StatusCode::OK);
        let mut second = Conn::open(edge.addr, &client, "a.example").await;
        assert_eq!(second.kind, Some(HandshakeKind::Resumed), "{version:?}");
        assert_eq!(second.get("a.example", "/r").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn an_expired_certificate_still_loads_warns_and_is_counted() {
    let ca = Ca::new();
    let origin = cacheable_origin().await;
    let expired = ca.leaf_with(&["expired.example"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let text = tls_edge_config(&[service(
        "tls-expired",
        &["expired.example"],
        origin.addr,
        &expired,
        "",
    )]);
    let valid = firebreak_config::parse_str("expired.toml", &text).unwrap();
    let problems = check_validity(&valid, std::time::SystemTime::now());
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].severity,
        Severity::Error,
        "config validate refuses it"
    );
    let edge = start_edge(&text).await;
    let metrics = firebreak_edge::telemetry::prometheus().unwrap().render();
    assert!(
        metrics
            .contains("firebreak_tls_expired_certificates_loaded_total{service=\"tls-expired\"} 1"),
        "{metrics}"
    );
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("firebreak_tls_cert_expiry_seconds{service=\"tls-expired\"}"))
        .expect("expiry gauge");
    let seconds: f64 = gauge.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(seconds < -86_400.0 * 365.0, "{gauge}");
    // The edge serves it; the client refuses it.
    let err = handshake(
        edge.addr,
        &ca.client(&[b"http/1.1"]),
        ServerName::try_from("expired.example").unwrap(),
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("an expired certificate was accepted"));
    assert!(err.to_string().contains("xpired"), "{err}");
}
