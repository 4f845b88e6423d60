//! HTTP/3: QUIC (quinn) on the UDP port of every TLS listener, requests decoded by the h3
//! crate and served by the one request path ([`crate::proxy::handle`]), like HTTP/1.1 and h2.
//!
//! Certificates come from the same [`SniResolver`] as the TCP listeners (TLS 1.3 only, ALPN
//! `h3`, 0-RTT off), so SNI selection, rotation and the 421 check behave the same.
//!
//! What a connection attempt costs is decided before any state exists for it
//! ([`quinn::Incoming`]):
//! - over `[http3] max_connections` QUIC connections, or no connection permit left in the
//!   edge's shared budget (`limits.max_connections`): refused (CONNECTION_REFUSED);
//! - with more than `validate_addresses_above` handshakes in progress, an Initial from an
//!   address that has not proved itself gets a Retry: a stateless token the real client
//!   echoes in a second Initial, which spoofed sources cannot do. A flood of spoofed Initials
//!   then costs one small packet each and no memory;
//! - otherwise the handshake starts and must finish within the first-bytes deadline.
//!
//! Once established, a connection counts against its address's connection limit, carries at
//! most `max_streams_per_connection` concurrent request streams (QUIC stream credit), and
//! closes after `idle_timeout_ms` without packets. A graceful stop sends GOAWAY and lets
//! requests in progress finish.
//!
//! Metrics: `firebreak_http3_connections` (gauge, established), `firebreak_http3_handshakes`
//! (gauge, in progress), `firebreak_http3_initials_total{action}` (`accept`, `retry`,
//! `refuse`), `firebreak_http3_handshake_failures_total`.

use crate::client_body::{ClientBody, H3Body};
use crate::conn::{stopped, AddressTable, TlsInfo};
use crate::proxy::{handle, EdgeState};
use crate::tls::SniResolver;
use crate::upstream::interim;
use bytes::Bytes;
use firebreak_config::{Http3Config, LimitsConfig};
use http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::BodyExt;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Gauge: established QUIC connections.
pub const CONNECTIONS: &str = "firebreak_http3_connections";
/// Gauge: QUIC handshakes in progress.
pub const HANDSHAKES: &str = "firebreak_http3_handshakes";
/// Counter: what the edge did with each connection attempt, by `action`.
pub const INITIALS: &str = "firebreak_http3_initials_total";
/// Counter: handshakes that failed or ran out of time.
pub const HANDSHAKE_FAILURES: &str = "firebreak_http3_handshake_failures_total";

/// Unidirectional streams a client may open: HTTP/3's control stream, the QPACK encoder
/// and decoder streams, and room for a few grease streams.
const MAX_UNI_STREAMS: u32 = 8;
/// Bytes buffered for one connection attempt before the edge accepts or refuses it.
const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
/// Bytes buffered for all pending connection attempts together.
const INCOMING_BUFFER_TOTAL_BYTES: u64 = 16 * 1024 * 1024;
/// H3_NO_ERROR, sent when the edge closes a connection on purpose.
const H3_NO_ERROR: u32 = 0x100;
/// H3_EXCESSIVE_LOAD: the client's address holds too many connections.
const H3_EXCESSIVE_LOAD: u32 = 0x107;

/// The `Alt-Svc` value advertising HTTP/3 on a TLS listener's port, handed with each of that
/// listener's HTTP/1.1 and h2 requests to [`crate::proxy::handle`].
#[derive(Clone, Debug)]
pub struct AltSvc(pub HeaderValue);

impl AltSvc {
    /// `h3=":PORT"; ma=MAX_AGE`.
    pub fn new(port: u16, max_age_s: u64) -> Option<Self> {
        HeaderValue::from_str(&format!("h3=\":{port}\"; ma={max_age_s}"))
            .ok()
            .map(Self)
    }
}

/// Why an HTTP/3 endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum Http3Error {
    /// The TLS configuration could not be built.
    #[error("TLS for QUIC: {0}")]
    Tls(String),
    /// A setting out of QUIC's range.
    #[error("{0}")]
    Setting(String),
    /// The UDP socket could not be used.
    #[error("UDP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The bounds of an edge's HTTP/3 endpoints, fixed when the edge starts, and the counts they
/// are checked against: one set for all of the edge's TLS listeners.
#[derive(Debug)]
pub struct Http3Settings {
    /// QUIC connections of the edge, from accepted attempt to the end of the connection.
    connections: Arc<AtomicUsize>,
    /// Handshakes in progress on all of the edge's endpoints.
    handshakes: Arc<AtomicUsize>,
    max_connections: usize,
    validate_addresses_above: usize,
    handshake_timeout: Duration,
    header_timeout: Duration,
    send_timeout: Duration,
    max_header_bytes: u64,
}

impl Http3Settings {
    /// From the configuration the edge started with.
    pub fn new(h3: &Http3Config, limits: &LimitsConfig) -> Self {
        Self {
            connections: Arc::default(),
            handshakes: Arc::default(),
            max_connections: h3.max_connections,
            validate_addresses_above: h3.validate_addresses_above,
            handshake_timeout: Duration::from_millis(limits.clients.first_bytes_timeout_ms),
            header_timeout: Duration::from_millis(limits.header_read_timeout_ms),
            send_timeout: Duration::from_millis(limits.clients.send_timeout_ms),
            max_header_bytes: limits.max_header_bytes as u64,
        }
    }
}

/// A QUIC endpoint on `socket` answering with the edge's certificates.
pub fn endpoint(
    socket: UdpSocket,
    state: Arc<EdgeState>,
    h3: &Http3Config,
) -> Result<quinn::Endpoint, Http3Error> {
    let tls = firebreak_protocol::tls::quic_server_config(Arc::new(SniResolver::new(state)))
        .map_err(|e| Http3Error::Tls(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Http3Error::Tls(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(h3.max_streams_per_connection.into());
    transport.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(h3.idle_timeout_ms))
        .map_err(|e| Http3Error::Setting(format!("http3.idle_timeout_ms: {e}")))?;
    transport.max_idle_timeout(Some(idle));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    server.max_incoming(h3.max_pending);
    // Datagrams buffered for attempts not yet accepted: a client's first flight is a few
    // kilobytes (no 0-RTT), so quinn's 10 MiB per attempt and 100 MiB in all are far more
    // than a real client needs and what a flood would fill.
    server.incoming_buffer_size(INCOMING_BUFFER_BYTES);
    server.incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Counts a gauge up while alive.
struct Gauge(&'static str);

impl Gauge {
    fn up(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// One unit of a shared count, given back when dropped.
struct Held(Arc<AtomicUsize>);

impl Held {
    fn take(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an accepted connection holds until it ends: its place in the edge's QUIC connection
/// count and one of the edge's connection permits.
struct Admitted {
    _slot: Held,
    _permit: OwnedSemaphorePermit,
}

/// A handshake in progress on one of the edge's endpoints (the gauge is process-wide).
struct InProgress {
    _count: Held,
    _gauge: Gauge,
}

impl InProgress {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        Self {
            _count: Held::take(count),
            _gauge: Gauge::up(HANDSHAKES),
        }
    }
}

fn initial(action: &'static str) {
    metrics::counter!(INITIALS, "action" => action).increment(1);
}

/// Accepts QUIC connections until `stop` turns true; each connection holds one of the edge's
/// connection `permits` until it closes.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    state: Arc<EdgeState>,
    settings: Arc<Http3Settings>,
    permits: Arc<Semaphore>,
    per_address: Arc<AddressTable>,
    stop: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = stopped(stop.clone()) => break,
        };
        let Some(incoming) = incoming else { break };
        if settings.connections.load(Ordering::Relaxed) >= settings.max_connections {
            initial("refuse");
            incoming.refuse();
            continue;
        }
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && settings.handshakes.load(Ordering::Relaxed) >= settings.validate_addresses_above
        {
            initial("retry");
            // Fails only for an Initial that already carried a token: nothing to keep.
            let _ = incoming.retry();
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            initial("refuse");
            incoming.refuse();
            continue;
        };
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "QUIC connection attempt dropped");
                metrics::counter!(HANDSHAKE_FAILURES).increment(1);
                continue;
            }
        };
        initial("accept");
        let admitted = Admitted {
            _slot: Held::take(&settings.connections),
            _permit: permit,
        };
        let in_progress = InProgress::start(&settings.handshakes);
        tokio::spawn(connection(
            connecting,
            admitted,
            in_progress,
            state.clone(),
            settings.clone(),
            per_address.clone(),
            stop.clone(),
        ));
    }
    // No new connections; established ones finish (GOAWAY) on their own.
    endpoint.set_server_config(None);
}

/// One QUIC connection: the handshake, then its requests until it closes or the edge stops.
async fn connection(
    connecting: quinn::Connecting,
    _admitted: Admitted,
    in_progress: InProgress,
    state: Arc<EdgeState>,
    settings: Arc<Http3Settings>,
    per_address: Arc<AddressTable>,
    stop: watch::Receiver<bool>,
) {
    let conn = match tokio::time::timeout(settings.handshake_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "QUIC handshake failed");
            metrics::counter!(HANDSHAKE_FAILURES).increment(1);
            return;
        }
        Err(_) => {
            tracing::debug!("QUIC handshake timed out");
            metrics::counter!(HANDSHAKE_FAILURES).increment(1);
            return;
        }
    };
    drop(in_progress);
    let client_ip = canonical(conn.remote_address().ip());
    let Some(_address) = per_address.try_acquire(client_ip) else {
        conn.close(
            H3_EXCESSIVE_LOAD.into(),
            b"too many connections from this address",
        );
        return;
    };
    let _open = Gauge::up(CONNECTIONS);
    let tls = TlsInfo {
        server_name: conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.server_name)
            .map(|n| Arc::from(n.to_ascii_lowercase())),
    };
    let mut h3 = match h3::server::builder()
        .max_field_section_size(settings.max_header_bytes)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };
    let mut requests = JoinSet::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    requests.spawn(request(
                        resolver,
                        state.clone(),
                        client_ip,
                        tls.clone(),
                        settings.clone(),
                    ));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP/3 connection ended");
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            _ = stopped(stop.clone()), if !stopping => {
                stopping = true;
                // GOAWAY: no new requests; those in progress finish below.
                let _ = h3.shutdown(0).await;
            }
        }
        if stopping && requests.is_empty() {
            break;
        }
    }
    while requests.join_next().await.is_some() {}
    conn.close(H3_NO_ERROR.into(), b"");
}

/// An IPv4 client seen through a dual-stack socket is the IPv4 client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;
type SendStream = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// One request stream: its head (within the header deadline), the request path, the answer.
async fn request(
    resolver: Resolver,
    state: Arc<EdgeState>,
    client_ip: IpAddr,
    tls: TlsInfo,
    settings: Arc<Http3Settings>,
) {
    let (req, stream) =
        match tokio::time::timeout(settings.header_timeout, resolver.resolve_request()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/3 request head refused");
                return;
            }
            Err(_) => return,
        };
    let (send, recv) = stream.split();
    let (mut parts, ()) = req.into_parts();
    parts.version = Version::HTTP_3;
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bodiless = length.is_none() && matches!(parts.method, Method::GET | Method::HEAD);
    parts.extensions.insert(tls);
    let body = ClientBody::H3(Box::new(H3Body::new(recv, length, bodiless)));
    let (interim_tx, mut interim) = interim::channel();
    let handling = interim::forwarding(
        interim_tx,
        handle(state, Request::from_parts(parts, body), client_ip, None),
    );
    tokio::pin!(handling);
    let mut send = send;
    // The origin's interim responses go out as they come, ahead of the final one.
    let response = loop {
        tokio::select! {
            biased;
            response = &mut handling => break response,
            Some(head) = interim.recv() => send_interim(&mut send, head, settings.send_timeout).await,
        }
    };
    // Those queued before the final head arrived still precede it.
    while let Ok(head) = interim.try_recv() {
        send_interim(&mut send, head, settings.send_timeout).await;
    }
    if let Err(e) = respond(send, response, settings.send_timeout).await {
        tracing::debug!(error = %e, "HTTP/3 response not completed");
    }
}

/// Sends one interim (1xx) response: a HEADERS frame ahead of the final one (RFC 9114 §4.1).
/// One that cannot go (too large for the client's field section limit, or the stream gone)
/// is skipped: hints are optional, and a stream that failed fails the final response too.
async fn send_interim(send: &mut SendStream, head: Response<()>, send_timeout: Duration) {
    let (mut parts, ()) = head.into_parts();
    for name in &CONNECTION_FIELDS {
        parts.headers.remove(name);
    }
    if let Err(e) = timed(
        send_timeout,
        send.send_response(Response::from_parts(parts, ())),
    )
    .await
    {
        tracing::debug!(error = %e, "HTTP/3 interim response not sent");
    }
}

/// Why a response did not reach the client whole.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("stream: {0}")]
    Stream(#[from] h3::error::StreamError),
    #[error("the client took no bytes for the send timeout")]
    Stalled,
    #[error("response body: {0}")]
    Body(String),
}

/// Connection-specific fields have no meaning in HTTP/3 (RFC 9114 §4.2).
const CONNECTION_FIELDS: [http::HeaderName; 5] = [
    http::header::CONNECTION,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
];

/// Sends the response head and body frames; a body that fails midway resets the stream so
/// that the client never mistakes a truncated body for a whole one.
async fn respond(
    mut send: SendStream,
    response: Response<crate::body::EdgeBody>,
    send_timeout: Duration,
) -> Result<(), SendError> {
    let (mut parts, mut body) = response.into_parts();
    for name in &CONNECTION_FIELDS {
        parts.headers.remove(name);
    }
    timed(
        send_timeout,
        send.send_response(Response::from_parts(parts, ())),
    )
    .await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Err(SendError::Body(e.to_string()));
            }
        };
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    timed(send_timeout, send.send_data(data)).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    timed(send_timeout, send.send_trailers(trailers)).await?;
                }
            }
        }
    }
    timed(send_timeout, send.finish()).await
}

async fn timed<F>(limit: Duration, send: F) -> Result<(), SendError>
where
    F: std::future::Future<Output = Result<(), h3::error::StreamError>>,
{
    match tokio::time::timeout(limit, send).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SendError::Stalled),
    }
}

/// Binds a TCP listener and a UDP socket on the same port. With port 0 the port is the one
/// the TCP listener got; if that port's UDP side is taken, another pair is tried.
pub async fn bind_pair(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, UdpSocket)> {
    const ATTEMPTS: usize = 16;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let tcp = tokio::net::TcpListener::bind(addr).await?;
        let bound = tcp.local_addr()?;
        match UdpSocket::bind(bound) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port pair")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::server::EdgeServer;
    use bytes::Buf;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An origin answering every request with a cacheable `hello` and counting requests.
    async fn origin() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
                        .await;
                });
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn a_request_over_http3_takes_the_one_request_path() {
        let (origin, count) = origin().await;
        let cert = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).unwrap();
        let text = format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = true\n\n[[service]]\nname = \"a\"\nhosts = [\"a.example\"]\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n[service.tls]\ncert = \"\"\"{}\"\"\"\nkey = \"\"\"{}\"\"\"\n",
            cert.cert.pem(),
            cert.signing_key.serialize_pem()
        );
        let config = firebreak_config::parse_str("edge.toml", &text).unwrap();
        let edge = EdgeServer::start(config).await.unwrap();
        let addr = edge.http3_addrs()[0];
        assert_eq!(addr, edge.local_addrs()[0], "HTTP/3 shares the TLS port");

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let mut tls =
            rustls::ClientConfig::builder_with_provider(firebreak_protocol::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = client.connect(addr, "a.example").unwrap().await.unwrap();
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });

        let mut statuses = Vec::new();
        for _ in 0..2 {
            let req = Request::get("https://a.example/x").body(()).unwrap();
            let mut stream = send.send_request(req).await.unwrap();
            stream.finish().await.unwrap();
            let resp = stream.recv_response().await.unwrap();
            let mut body = Vec::new();
            while let Some(chunk) = stream.recv_data().await.unwrap() {
                body.extend_from_slice(chunk.chunk());
            }
            assert_eq!(body, b"hello");
            assert!(
                resp.headers().get("alt-svc").is_none(),
                "not advertised over h3 itself"
            );
            statuses.push(
                resp.headers()
                    .get("cache-status")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
            );
        }
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "second request is a hit: {statuses:?}"
        );
        assert!(statuses[1].contains("hit"), "{statuses:?}");
        // A graceful stop closes the idle, still open HTTP/3 connection (GOAWAY) too.
        assert!(edge.drain(Duration::from_secs(10)).await, "drained");
        drop(send);
    }
}
