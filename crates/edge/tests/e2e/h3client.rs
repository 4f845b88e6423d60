//! Clients for the HTTP/3 tests: a test CA made at run time (rcgen, ECDSA P-256); one
//! [`Client`] speaking HTTPS over HTTP/1.1 or h2 (tokio-rustls + hyper) or HTTP/3 (quinn + h3)
//! with that CA as its only root; raw QUIC client Initial datagrams ([`InitialForge`], the
//! sans-IO `quinn-proto`) for floods that never complete a handshake; the edge's Prometheus
//! text; and the lock that keeps tests which read the process-wide HTTP/3 metrics apart.

use crate::common::Resp;
use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as LegacyClient};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Deadline of every exchange.
pub const WAIT: Duration = Duration::from_secs(10);

pub use crate::test_ca::{Ca, Pair};

/// The three ways a client reaches an HTTPS service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
    H3,
}

impl Proto {
    pub const ALL: [Proto; 3] = [Proto::H1, Proto::H2, Proto::H3];

    pub fn alpn(self) -> &'static [u8] {
        match self {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
            Proto::H3 => b"h3",
        }
    }

    pub fn version(self) -> Version {
        match self {
            Proto::H1 => Version::HTTP_11,
            Proto::H2 => Version::HTTP_2,
            Proto::H3 => Version::HTTP_3,
        }
    }
}

/// A TLS 1.3-only client configuration (ring) trusting `roots`, offering ALPN `h3`: what
/// QUIC needs.
pub fn h3_tls(roots: &RootCertStore) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(firebreak_protocol::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h3".to_vec()];
    config
}

/// A quinn client configuration trusting `roots`, whose connections give up after `idle`
/// without a packet from the server (so that a connection attempt to nothing fails fast).
pub fn quic_config(roots: &RootCertStore, idle: Duration) -> quinn::ClientConfig {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(h3_tls(roots)).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(idle).unwrap()));
    config.transport_config(Arc::new(transport));
    config
}

/// Opens a QUIC connection (handshake done) from a fresh endpoint on 127.0.0.1; the endpoint
/// must outlive the connection. Fails with the connection error, or `TimedOut` after `WAIT`.
pub async fn quic_connect(
    addr: SocketAddr,
    roots: &RootCertStore,
    sni: &str,
    idle: Duration,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(quic_config(roots, idle), addr, sni)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(WAIT, connecting).await {
        Ok(Ok(conn)) => Ok((endpoint, conn)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("TimedOut: no handshake within 10 s".into()),
    }
}

pub type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// An HTTP/3 connection: the QUIC endpoint and connection, the h3 request sender and the
/// task driving the h3 connection.
pub struct H3 {
    _endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: H3Send,
    driver: JoinHandle<()>,
}

impl H3 {
    pub async fn connect(addr: SocketAddr, roots: &RootCertStore, sni: &str) -> Result<H3, String> {
        let (endpoint, conn) = quic_connect(addr, roots, sni, WAIT).await?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(H3 {
            _endpoint: endpoint,
            conn,
            send,
            driver,
        })
    }
}

impl Drop for H3 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One HTTP/3 request on `send`: `https://{authority}{path}`, `body` sent then the stream
/// finished; the whole response.
pub async fn h3_request(
    send: &mut H3Send,
    method: Method,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("https://{authority}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).unwrap();
    let exchange = async {
        let mut stream = send.send_request(req).await.map_err(|e| e.to_string())?;
        if !body.is_empty() {
            stream.send_data(body).await.map_err(|e| e.to_string())?;
        }
        stream.finish().await.map_err(|e| e.to_string())?;
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                out.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        let (parts, ()) = resp.into_parts();
        let mut headers = parts.headers;
        headers.insert(
            "x-test-version",
            format!("{:?}", parts.version).parse().unwrap(),
        );
        Ok(Resp {
            status: parts.status,
            headers,
            body: Bytes::from(out),
        })
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .map_err(|_| "no HTTP/3 answer within 10 s".to_string())?
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H3(H3),
}

/// One connection to the edge over `Proto`, SNI `sni`.
pub struct Client {
    sender: Sender,
    /// What ALPN negotiated.
    pub alpn: Option<Vec<u8>>,
}

impl Client {
    pub async fn connect(proto: Proto, addr: SocketAddr, roots: &RootCertStore, sni: &str) -> Self {
        Self::try_connect(proto, addr, roots, sni)
            .await
            .unwrap_or_else(|e| panic!("{proto:?} connection to {addr} ({sni}) failed: {e}"))
    }

    pub async fn try_connect(
        proto: Proto,
        addr: SocketAddr,
        roots: &RootCertStore,
        sni: &str,
    ) -> Result<Self, String> {
        if proto == Proto::H3 {
            let h3 = H3::connect(addr, roots, sni).await?;
            let alpn = h3
                .conn
                .handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol);
            return Ok(Self {
                sender: Sender::H3(h3),
                alpn,
            });
        }
        let mut tls = firebreak_protocol::tls::client_config(roots.clone()).unwrap();
        tls.alpn_protocols = vec![proto.alpn().to_vec()];
        let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let stream = tokio::time::timeout(
            WAIT,
            tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp),
        )
        .await
        .map_err(|_| "no TLS handshake within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H1(send)
        };
        Ok(Self { sender, alpn })
    }

    /// The HTTP/3 connection, if this is one.
    pub fn h3(&self) -> Option<&H3> {
        match &self.sender {
            Sender::H3(h3) => Some(h3),
            _ => None,
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Resp {
        self.send(Method::GET, host, path, &[], Bytes::new()).await
    }

    pub async fn get_with(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(Method::GET, host, path, headers, Bytes::new())
            .await
    }

    /// One request: Host (h1) or :authority (h2, h3) `host`; the whole response, with the
    /// HTTP version it came in as `x-test-version`.
    pub async fn send(
        &mut self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Resp {
        if let Sender::H3(h3) = &mut self.sender {
            return h3_request(&mut h3.send, method, host, path, headers, body)
                .await
                .unwrap_or_else(|e| panic!("HTTP/3 {path}: {e}"));
        }
        let exchange = async {
            let mut req = Request::new(Full::new(body));
            *req.method_mut() = method;
            for (k, v) in headers {
                req.headers_mut().append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let resp = match &mut self.sender {
                Sender::H1(send) => {
                    *req.uri_mut() = path.parse().unwrap();
                    req.headers_mut()
                        .insert("host", HeaderValue::from_str(host).unwrap());
                    send.ready().await.unwrap();
                    send.send_request(req).await.unwrap()
                }
                Sender::H2(send) => {
                    *req.uri_mut() = format!("https://{host}{path}").parse().unwrap();
                    send.ready().await.unwrap();
                    send.send_request(req).await.unwrap()
                }
                Sender::H3(_) => unreachable!(),
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
    pub async fn get_until_hit(&mut self, host: &str, path: &str) -> Resp {
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

/// Makes real QUIC client Initial datagrams (a TLS ClientHello in a padded Initial packet,
/// QUIC v1) for fresh connection attempts, without sockets: each call starts a new
/// connection (new random connection IDs) in a sans-IO `quinn_proto::Endpoint` and takes
/// its first flight. Nothing that comes back is ever read: these attempts play spoofed
/// source addresses.
pub struct InitialForge {
    endpoint: quinn_proto::Endpoint,
    config: quinn_proto::ClientConfig,
}

impl InitialForge {
    pub fn new(roots: &RootCertStore) -> Self {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(h3_tls(roots)).unwrap();
        Self {
            endpoint: quinn_proto::Endpoint::new(
                Arc::new(quinn_proto::EndpointConfig::default()),
                None,
                false,
                None,
            ),
            config: quinn_proto::ClientConfig::new(Arc::new(crypto)),
        }
    }

    /// The first flight of a new connection attempt to `to` with SNI `sni`: one or more
    /// datagrams, each a long-header Initial of at least 1200 bytes.
    pub fn initial(&mut self, to: SocketAddr, sni: &str) -> Vec<Vec<u8>> {
        let now = Instant::now();
        let (_handle, mut conn) = self
            .endpoint
            .connect(now, self.config.clone(), to, sni)
            .unwrap();
        let mut datagrams = Vec::new();
        let mut buf = Vec::new();
        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            datagrams.push(buf[..t.size].to_vec());
            buf.clear();
        }
        for d in &datagrams {
            // Long header, fixed bit, type Initial (RFC 9000 §17.2.2); client Initials are
            // padded to 1200 bytes.
            assert_eq!(d[0] & 0xf0, 0xc0, "not an Initial: {:02x}", d[0]);
            assert!(d.len() >= 1200, "Initial of {} bytes", d.len());
        }
        assert!(!datagrams.is_empty(), "no Initial");
        datagrams
    }
}

/// The edge's Prometheus text from its admin listener (bearer `token`).
pub async fn metrics(admin: SocketAddr, token: &str) -> String {
    let client: LegacyClient<HttpConnector, Full<Bytes>> =
        LegacyClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::get(format!("http://{admin}/metrics"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("admin did not answer within 10 s")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of the sample `name` (with its labels, e.g. `a_total{x="y"}`) in a Prometheus
/// text; 0 when absent (a counter not yet incremented).
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The HTTP/3 metrics are process-wide (one Prometheus recorder for every edge of the test
/// binary): tests that count them or read the QUIC gauges hold this lock, so that no other
/// HTTP/3 traffic of this binary runs meanwhile.
pub async fn h3_metrics_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
