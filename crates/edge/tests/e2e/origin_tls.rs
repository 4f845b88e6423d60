//! TLS from the edge to origins: a real TLS origin (hyper behind tokio-rustls, with an rcgen
//! certificate signed by a test CA) behind pools with `tls = true`.

use crate::common::{start_edge, Reply, TestOrigin};
use crate::test_ca::Ca;
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The name on the test origin's certificate.
const ORIGIN_NAME: &str = "origin.test";

/// A certificate for `name` signed by `ca` (ECDSA P-256); expired in 2021 when asked.
fn origin_cert(
    ca: &Ca,
    name: &str,
    expired: bool,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let pair = ca.leaf_with(&[name], |params| {
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
    });
    (
        firebreak_protocol::tls::certs_from_pem(pair.cert.as_bytes()).unwrap(),
        firebreak_protocol::tls::key_from_pem(pair.key.as_bytes()).unwrap(),
    )
}

/// An HTTPS origin (offering ALPN h2 and http/1.1): counts TCP connections and the requests
/// that reached its handler, and keeps the SNI name and ALPN protocol of the last completed
/// handshake.
struct TlsOrigin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    sni: Arc<Mutex<Option<String>>>,
    alpn: Arc<Mutex<Option<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tls_origin(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> TlsOrigin {
    let mut config =
        rustls::ServerConfig::builder_with_provider(firebreak_protocol::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let sni = Arc::new(Mutex::new(None));
    let alpn = Arc::new(Mutex::new(None));
    let (c2, r2, s2, a2) = (
        connections.clone(),
        requests.clone(),
        sni.clone(),
        alpn.clone(),
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c2.fetch_add(1, Ordering::SeqCst);
            let (acceptor, requests, sni, alpn) =
                (acceptor.clone(), r2.clone(), s2.clone(), a2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                *sni.lock().unwrap() = tls.get_ref().1.server_name().map(str::to_owned);
                *alpn.lock().unwrap() = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let mut resp = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"hello over tls"),
                        ));
                        resp.headers_mut().insert(
                            "cache-control",
                            http::HeaderValue::from_static("max-age=60"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsOrigin {
        addr,
        connections,
        requests,
        sni,
        alpn,
        task,
    }
}

/// One default service `name` in front of `origin` over TLS, with extra `[service.origin]`
/// settings.
fn tls_config(name: &str, origin: SocketAddr, origin_extra: &str) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[[service]]
name = "{name}"
hosts = ["localhost"]
default = true

[service.origin]
connect_timeout_ms = 1000
response_timeout_ms = 2000
servers = [{{ addr = "{origin}" }}]
tls = true
{origin_extra}
"#
    )
}

fn with_ca(ca: &Ca, name: &str) -> String {
    format!(
        "tls_server_name = \"{name}\"\nca = \"\"\"\n{}\"\"\"",
        ca.pem
    )
}

/// The value of `firebreak_origin_tls_failures_total` for `service` and `reason`.
fn tls_failures(service: &str, reason: &str) -> u64 {
    let text = firebreak_edge::telemetry::prometheus()
        .expect("recorder")
        .render();
    let series = format!(
        "firebreak_origin_tls_failures_total{{service=\"{service}\",reason=\"{reason}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_tls_origin_signed_by_the_configured_ca_is_fetched_and_cached() {
    let ca = Ca::new();
    let (chain, key) = origin_cert(&ca, ORIGIN_NAME, false);
    let origin = tls_origin(chain, key).await;
    let edge = start_edge(&tls_config(
        "tls-ok",
        origin.addr,
        &with_ca(&ca, ORIGIN_NAME),
    ))
    .await;

    let first = edge.get("/page").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.text(), "hello over tls");
    assert_eq!(origin.sni.lock().unwrap().as_deref(), Some(ORIGIN_NAME));
    // The upstream stays HTTP/1.1: the edge offers only that.
    assert_eq!(
        origin.alpn.lock().unwrap().as_deref(),
        Some(&b"http/1.1"[..])
    );
    let hit = edge.get_until_hit("/page").await;
    assert_eq!(hit.text(), "hello over tls");
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_origin_certificate_from_an_unknown_ca_is_a_502_and_never_gets_a_request() {
    let ca = Ca::new();
    let (chain, key) = origin_cert(&ca, ORIGIN_NAME, false);
    let origin = tls_origin(chain, key).await;
    // Only webpki-roots: the test CA is not trusted.
    let edge = start_edge(&tls_config(
        "tls-unknown-issuer",
        origin.addr,
        &format!("tls_server_name = \"{ORIGIN_NAME}\""),
    ))
    .await;

    let r = edge.get("/page").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let id = r.header("x-request-id").unwrap_or_default().to_owned();
    assert!(!id.is_empty() && r.text().contains(&id), "{}", r.text());
    assert!(origin.connections.load(Ordering::SeqCst) >= 1);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 0);
    assert_eq!(tls_failures("tls-unknown-issuer", "unknown_issuer"), 1);
}

#[tokio::test]
async fn a_wrong_tls_server_name_is_a_502_name_mismatch() {
    let ca = Ca::new();
    let (chain, key) = origin_cert(&ca, ORIGIN_NAME, false);
    let origin = tls_origin(chain, key).await;
    let edge = start_edge(&tls_config(
        "tls-name-mismatch",
        origin.addr,
        &with_ca(&ca, "other.test"),
    ))
    .await;

    let r = edge.get("/page").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 0);
    assert_eq!(tls_failures("tls-name-mismatch", "name_mismatch"), 1);
}

#[tokio::test]
async fn an_expired_origin_certificate_is_a_502() {
    let ca = Ca::new();
    let (chain, key) = origin_cert(&ca, ORIGIN_NAME, true);
    let origin = tls_origin(chain, key).await;
    let edge = start_edge(&tls_config(
        "tls-expired",
        origin.addr,
        &with_ca(&ca, ORIGIN_NAME),
    ))
    .await;

    let r = edge.get("/page").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 0);
    assert_eq!(tls_failures("tls-expired", "expired"), 1);
}

#[tokio::test]
async fn a_cleartext_origin_on_a_tls_pool_is_a_502_and_never_gets_a_cleartext_request() {
    let ca = Ca::new();
    let origin = TestOrigin::start(|_| Reply::ok("cleartext").cc("max-age=60")).await;
    let edge = start_edge(&tls_config(
        "tls-cleartext-origin",
        origin.addr,
        &with_ca(&ca, ORIGIN_NAME),
    ))
    .await;

    let r = edge.get("/page").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(origin.connections.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        origin.count(),
        0,
        "a request reached the origin in cleartext"
    );
    assert_eq!(tls_failures("tls-cleartext-origin", "handshake"), 1);
}

#[tokio::test]
async fn a_reload_that_adds_the_ca_builds_a_new_tls_client() {
    let ca = Ca::new();
    let (chain, key) = origin_cert(&ca, ORIGIN_NAME, false);
    let origin = tls_origin(chain, key).await;
    let without = tls_config(
        "tls-reload",
        origin.addr,
        &format!("tls_server_name = \"{ORIGIN_NAME}\""),
    );
    let edge = start_edge(&without).await;
    assert_eq!(edge.get("/page").await.status, StatusCode::BAD_GATEWAY);

    let with = tls_config("tls-reload", origin.addr, &with_ca(&ca, ORIGIN_NAME));
    edge.handle
        .reload(firebreak_config::parse_str("with-ca.toml", &with).unwrap())
        .unwrap();
    let r = edge.get("/page").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
}
