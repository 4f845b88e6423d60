//! The serve loop over TLS, with real sockets: ALPN picks HTTP/1.1 or h2, requests carry the
//! SNI, a non-TLS client is closed without harming the listener, and sessions resume.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use firebreak_protocol::serve::{
    accept_loop, AddressTable, ListenerConf, Protocol, Timeouts, TlsInfo,
};
use firebreak_protocol::tls;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

#[derive(Debug)]
struct One(Arc<CertifiedKey>);

impl ResolvesServerCert for One {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

struct Site {
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    _stop: watch::Sender<bool>,
}

async fn site() -> Site {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let chain = tls::certs_from_pem(cert.pem().as_bytes()).unwrap();
    let der_key = tls::key_from_pem(key.serialize_pem().as_bytes()).unwrap();
    let certified = CertifiedKey::from_der(chain, der_key, &tls::provider()).unwrap();
    let config = tls::server_config(Arc::new(One(Arc::new(certified)))).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();

    let t = Timeouts {
        first_bytes: Duration::from_secs(5),
        head: Duration::from_secs(5),
        keepalive: Duration::from_secs(5),
        h2_idle: Duration::from_secs(5),
        send: Duration::from_secs(5),
    };
    let p = Protocol {
        max_header_bytes: 16 * 1024,
        h2_keepalive_interval: Duration::from_secs(5),
        h2_keepalive_timeout: Duration::from_secs(5),
        send_queue_bytes: None,
    };
    let conf =
        ListenerConf::with("client", t, p, false, Arc::new(AddressTable::new(64))).with_tls(config);
    assert!(conf.is_tls());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(accept_loop(
        listener,
        Arc::new(conf),
        Arc::new(Semaphore::new(64)),
        stopped,
        |req: Request<hyper::body::Incoming>, _ip| async move {
            let name = req
                .extensions()
                .get::<TlsInfo>()
                .map(|i| i.server_name.as_deref().unwrap_or("(none)").to_string())
                .unwrap_or_else(|| "(not tls)".to_string());
            Response::new(Full::new(Bytes::from(name)))
        },
    ));
    Site {
        addr,
        roots,
        _stop: stop,
    }
}

fn client(site: &Site, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = tls::client_config(site.roots.clone()).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(
    site: &Site,
    config: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(site.addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .unwrap()
}

async fn get_h1(stream: tokio_rustls::client::TlsStream<TcpStream>) -> (Version, String) {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "a.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let version = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (version, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn alpn_chooses_http1_or_h2_and_requests_carry_the_sni() {
    let site = site().await;
    let h1 = client(&site, &[b"http/1.1"]);
    let stream = connect(&site, &h1, "A.test").await;
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(b"http/1.1".as_slice())
    );
    assert_eq!(
        get_h1(stream).await,
        (Version::HTTP_11, "a.test".to_string())
    );

    let h2 = client(&site, &[b"h2", b"http/1.1"]);
    let stream = connect(&site, &h2, "a.test").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://a.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"a.test");

    // No ALPN at all: HTTP/1.1.
    let none = client(&site, &[]);
    let stream = connect(&site, &none, "a.test").await;
    assert_eq!(get_h1(stream).await.0, Version::HTTP_11);
}

#[tokio::test]
async fn cleartext_client_is_closed_and_the_listener_keeps_serving() {
    let site = site().await;
    let mut tcp = TcpStream::connect(site.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server answers with a TLS alert at most, then closes: never an HTTP response.
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(
        !buf.starts_with(b"HTTP/"),
        "cleartext HTTP answered on a TLS listener"
    );

    let config = client(&site, &[b"http/1.1"]);
    let stream = connect(&site, &config, "a.test").await;
    assert_eq!(get_h1(stream).await.1, "a.test");
}

#[tokio::test]
async fn a_second_connection_resumes_the_session() {
    let site = site().await;
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[versions])
            .unwrap()
            .with_root_certificates(site.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let first = connect(&site, &config, "a.test").await;
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        // TLS 1.3 tickets arrive after the handshake: a request makes sure they were read.
        assert_eq!(get_h1(first).await.1, "a.test");
        let second = connect(&site, &config, "a.test").await;
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{versions:?}"
        );
    }
}
