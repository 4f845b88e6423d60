//! Origin pools: weighted selection, passive health (failed servers are ejected for a while),
//! a circuit breaker per server, failover to the next server and to backups, pooled HTTP/1.1
//! keep-alive connections.
//!
//! Only origin faults count against a server: connect refused or timed out, no response head
//! within `response_timeout_ms` of the request (body included) having been sent, a reset or
//! malformed response. A client that uploads slowly is bounded by its own idle timeout
//! (`fetch.request_body_idle_timeout_ms`, answered 408) and never blames the origin.
//!
//! Breaker: closed → open after `breaker.failures` consecutive faults → after `open_ms`
//! exactly one request probes (half-open) → success closes, a fault opens again. Open
//! servers are never tried; when every server is open the request fails at once
//! ([`ProxyError::OriginUnavailable`], 503 with `Retry-After`) and the fetch serves stale
//! where it may.
//!
//! Interim (1xx) responses are skipped by hyper, or queued for the client when its listener
//! can send them ([`interim`]); a `101` is a malformed answer (the edge never asks to upgrade).

pub mod interim;
pub mod shield;
mod tls;
mod upload;

use tls::{TlsFailure, UpstreamClient};
pub use upload::{client_body, ClientBodyError, UpstreamBody};
use upload::{client_body_error, watched, Upload};

use crate::error::ProxyError;
use firebreak_config::OriginPoolConfig;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a server that failed to connect or answer is skipped.
const EJECT_FOR: Duration = Duration::from_secs(5);
/// Most servers one request tries (only requests without a body are retried).
const MAX_ATTEMPTS: usize = 3;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The circuit breaker of one server.
struct Breaker {
    state: AtomicU8,
    /// Consecutive origin faults while closed.
    failures: AtomicU32,
    /// While open: ms since the pool's epoch when one probe may go.
    retry_at_ms: AtomicU64,
}

struct OriginServer {
    authority: Authority,
    /// The authority as a metric label.
    label: Arc<str>,
    weight: u32,
    backup: bool,
    /// Milliseconds since the pool's epoch until which this server is ejected.
    ejected_until_ms: AtomicU64,
    breaker: Breaker,
}

/// Whether a server may be asked now.
enum Admit<'a> {
    Yes,
    /// As the one probe of a half-open breaker.
    Probe(ProbeGuard<'a>),
    No,
}

/// The probe of a half-open breaker: if it ends without an origin verdict (cancelled, or the
/// client's fault), the breaker goes back to open with the probe allowed at once.
struct ProbeGuard<'a> {
    pool: &'a OriginPool,
    server: &'a OriginServer,
    armed: bool,
}

impl ProbeGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let b = &self.server.breaker;
            b.retry_at_ms.store(self.pool.now_ms(), Ordering::Release);
            let _ = b
                .state
                .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

/// How an exchange with one server failed.
enum Failure {
    /// The client's body failed: the client's fault.
    Client(ProxyError),
    /// No connection could be made (nothing was sent).
    Connect(String),
    /// No response head in time.
    Timeout,
    /// Reset or malformed response: the request may have reached the origin.
    Bad(String),
    /// The TLS handshake failed (nothing was sent): an origin fault, like `Connect`.
    Tls(TlsFailure),
}

/// A pool of origin servers for one service.
pub struct OriginPool {
    config: OriginPoolConfig,
    servers: Vec<OriginServer>,
    client: UpstreamClient,
    /// `https` for a TLS pool.
    scheme: Scheme,
    /// The service this pool serves, as a metric label.
    service: Arc<str>,
    response_timeout: Duration,
    host_header: Option<HeaderValue>,
    next: AtomicUsize,
    epoch: Instant,
}

/// A request to forward: everything but the body, so it can be re-sent on failover.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path_and_query: PathAndQuery,
    /// Headers (hop-by-hop fields already removed, forwarding fields added). Framing fields
    /// in it (`Content-Length`, `Transfer-Encoding`, `Expect`) are ignored: the pool frames
    /// the request from the body it sends.
    pub headers: HeaderMap,
    /// Host header to send unless the pool overrides it.
    pub host: HeaderValue,
}

impl OriginPool {
    /// Builds service `service`'s pool from validated configuration. Fails only if an
    /// address or TLS setting that passed validation still cannot be used.
    pub fn new(config: &OriginPoolConfig, service: &str) -> Result<Self, String> {
        let servers = config
            .servers
            .iter()
            .map(|s| {
                Ok(OriginServer {
                    authority: s
                        .addr
                        .parse::<Authority>()
                        .map_err(|e| format!("{}: {e}", s.addr))?,
                    label: Arc::from(s.addr.as_str()),
                    weight: s.weight.max(1),
                    backup: s.backup,
                    ejected_until_ms: AtomicU64::new(0),
                    breaker: Breaker {
                        state: AtomicU8::new(CLOSED),
                        failures: AtomicU32::new(0),
                        retry_at_ms: AtomicU64::new(0),
                    },
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_millis(config.idle_timeout_ms))
            .pool_max_idle_per_host(config.max_idle_per_server)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let (client, scheme) = if config.tls {
            // The TLS layer checks the scheme (https only); the TCP connector must let it by.
            connector.enforce_http(false);
            let https = tls::connector(connector, config)?;
            (UpstreamClient::Tls(builder.build(https)), Scheme::HTTPS)
        } else {
            connector.enforce_http(true);
            (
                UpstreamClient::Plain(builder.build(connector)),
                Scheme::HTTP,
            )
        };
        Ok(Self {
            config: config.clone(),
            servers,
            client,
            scheme,
            service: Arc::from(service),
            response_timeout: Duration::from_millis(config.response_timeout_ms),
            host_header: config
                .host_header
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        })
    }

    /// The configuration this pool was built from.
    pub fn config(&self) -> &OriginPoolConfig {
        &self.config
    }

    /// Longest silence allowed from an origin: before the response head and between body
    /// chunks.
    pub fn idle_timeout(&self) -> Duration {
        self.response_timeout
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn healthy(&self, s: &OriginServer) -> bool {
        s.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms() && self.may_probe_or_closed(s)
    }

    /// Closed, or open with its cool-down over (a probe may go).
    fn may_probe_or_closed(&self, s: &OriginServer) -> bool {
        match s.breaker.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => s.breaker.retry_at_ms.load(Ordering::Acquire) <= self.now_ms(),
            _ => false,
        }
    }

    fn eject(&self, s: &OriginServer) {
        let until = self.now_ms() + EJECT_FOR.as_millis() as u64;
        s.ejected_until_ms.store(until, Ordering::Relaxed);
        tracing::warn!(origin = %s.authority, "origin ejected for {:?}", EJECT_FOR);
    }

    /// Whether `s` may be asked now; takes the probe of an open breaker whose cool-down is
    /// over (one request wins it).
    fn admit<'a>(&'a self, s: &'a OriginServer) -> Admit<'a> {
        let b = &s.breaker;
        match b.state.load(Ordering::Acquire) {
            CLOSED => Admit::Yes,
            OPEN if b.retry_at_ms.load(Ordering::Acquire) <= self.now_ms() => {
                match b
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        crate::telemetry::breaker(&s.label, "half_open");
                        tracing::info!(origin = %s.authority, "origin breaker half-open: probing");
                        Admit::Probe(ProbeGuard {
                            pool: self,
                            server: s,
                            armed: true,
                        })
                    }
                    Err(_) => Admit::No,
                }
            }
            _ => Admit::No,
        }
    }

    /// An exchange with `s` succeeded: its breaker closes.
    fn succeeded(&self, s: &OriginServer) {
        let b = &s.breaker;
        b.failures.store(0, Ordering::Release);
        if b.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            crate::telemetry::breaker(&s.label, "closed");
            tracing::info!(origin = %s.authority, "origin breaker closed");
        }
    }

    /// An origin fault on `s`: ejected for a while, and its breaker opens after
    /// `breaker.failures` consecutive faults (at once when this was the probe).
    fn faulted(&self, s: &OriginServer, probe: bool) {
        self.eject(s);
        let b = &s.breaker;
        let failures = b.failures.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let open = if probe {
            b.state.swap(OPEN, Ordering::AcqRel) != OPEN
        } else {
            failures >= self.config.breaker.failures
                && b.state
                    .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        };
        if open || probe {
            b.retry_at_ms.store(
                self.now_ms() + self.config.breaker.open_ms,
                Ordering::Release,
            );
        }
        if open {
            crate::telemetry::breaker(&s.label, "open");
            tracing::warn!(
                origin = %s.authority,
                failures,
                "origin breaker open for {} ms",
                self.config.breaker.open_ms
            );
        }
    }

    /// The answer when no server may be asked: 503 with the seconds until the earliest
    /// probe.
    fn unavailable(&self) -> ProxyError {
        let now = self.now_ms();
        let wait_ms = self
            .servers
            .iter()
            .filter(|s| s.breaker.state.load(Ordering::Acquire) != CLOSED)
            .map(|s| {
                s.breaker
                    .retry_at_ms
                    .load(Ordering::Acquire)
                    .saturating_sub(now)
            })
            .min()
            .unwrap_or(0);
        ProxyError::OriginUnavailable {
            retry_after_s: wait_ms.div_ceil(1000).max(1),
        }
    }

    /// Servers to try, in order: one healthy primary picked by weight, the other healthy
    /// primaries, healthy backups, then (last resort) ejected servers whose breaker is closed
    /// (or due for its probe). Servers with an open breaker are never tried.
    fn attempt_order(&self) -> Vec<usize> {
        let healthy_primaries: Vec<usize> = (0..self.servers.len())
            .filter(|&i| {
                self.servers
                    .get(i)
                    .is_some_and(|s| !s.backup && self.healthy(s))
            })
            .collect();
        let mut order = Vec::with_capacity(self.servers.len());
        let total: u64 = healthy_primaries
            .iter()
            .filter_map(|&i| self.servers.get(i))
            .map(|s| u64::from(s.weight))
            .sum();
        if total > 0 {
            let mut pick = (self.next.fetch_add(1, Ordering::Relaxed) as u64) % total;
            let mut first = 0;
            for (pos, &i) in healthy_primaries.iter().enumerate() {
                let w = self.servers.get(i).map_or(1, |s| u64::from(s.weight));
                if pick < w {
                    first = pos;
                    break;
                }
                pick -= w;
            }
            order.extend(
                healthy_primaries
                    .iter()
                    .cycle()
                    .skip(first)
                    .take(healthy_primaries.len()),
            );
        }
        order.extend((0..self.servers.len()).filter(|&i| {
            self.servers
                .get(i)
                .is_some_and(|s| s.backup && self.healthy(s))
        }));
        order.extend((0..self.servers.len()).filter(|&i| {
            self.servers
                .get(i)
                .is_some_and(|s| !self.healthy(s) && self.may_probe_or_closed(s))
        }));
        order
    }

    /// Sends a request, failing over to other servers when a connection cannot be made or the
    /// origin times out. A request with a body is sent once: its body cannot be replayed.
    pub async fn send(
        &self,
        req: &UpstreamRequest,
        body: Option<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let retryable = body.is_none();
        let mut body = body;
        let mut last_err = None;
        let mut tried = 0;
        for idx in self.attempt_order() {
            if tried >= MAX_ATTEMPTS || (tried > 0 && !retryable) {
                break;
            }
            let Some(server) = self.servers.get(idx) else {
                continue;
            };
            let probe = match self.admit(server) {
                Admit::No => continue,
                Admit::Yes => None,
                Admit::Probe(guard) => Some(guard),
            };
            tried += 1;
            let (upload, progress) = match body.take() {
                Some(b) => {
                    let (b, p) = watched(b);
                    (Some(b), Some(p))
                }
                None => (None, None),
            };
            let request = self.build(req, server, upload)?;
            let is_probe = probe.is_some();
            match self.exchange(request, progress).await {
                Ok(resp) => {
                    self.succeeded(server);
                    if let Some(p) = probe {
                        p.disarm();
                    }
                    return Ok(resp);
                }
                // Not the origin's fault: the breaker learns nothing (a probe is re-armed).
                Err(Failure::Client(e)) => return Err(e),
                Err(Failure::Tls(f)) => {
                    // Nothing was sent: the next server may be tried. A server whose
                    // certificate fails fails every handshake: ejected, and its breaker
                    // spares the handshakes (and answers at once) like a refused connect.
                    self.faulted(server, is_probe);
                    crate::telemetry::origin_tls_failure(&self.service, f.reason);
                    tracing::warn!(
                        origin = %server.authority,
                        service = %self.service,
                        reason = f.reason,
                        "{}",
                        f.detail
                    );
                    last_err = Some(ProxyError::OriginUnreachable(format!(
                        "{}: {}",
                        server.authority, f.detail
                    )));
                }
                Err(Failure::Connect(e)) => {
                    self.faulted(server, is_probe);
                    last_err = Some(ProxyError::OriginUnreachable(format!(
                        "{}: {e}",
                        server.authority
                    )));
                }
                Err(Failure::Bad(detail)) => {
                    self.faulted(server, is_probe);
                    // The request may have reached the origin: never replay it.
                    return Err(ProxyError::OriginBadResponse(format!(
                        "{}: {detail}",
                        server.authority
                    )));
                }
                Err(Failure::Timeout) => {
                    self.faulted(server, is_probe);
                    last_err = Some(ProxyError::OriginTimeout);
                    // A timed-out request may have had effects; only idempotent ones move on.
                    if !req.method.is_idempotent() {
                        break;
                    }
                }
            }
            if let Some(p) = probe {
                p.disarm();
            }
        }
        Err(last_err.unwrap_or_else(|| self.unavailable()))
    }

    /// One exchange with one server. The response timeout starts once the request, body
    /// included, has been handed to the connection; while the client's body is still
    /// coming, only the origin not taking it (no frame taken for the response timeout while
    /// the client has more) counts against the origin.
    async fn exchange(
        &self,
        request: Request<UpstreamBody>,
        upload: Option<Arc<Upload>>,
    ) -> Result<Response<Incoming>, Failure> {
        let response = self.client.request(request);
        tokio::pin!(response);
        if let Some(upload) = upload {
            loop {
                if upload.done.load(Ordering::Acquire) {
                    break;
                }
                let deadline = if upload.waiting_on_client.load(Ordering::Acquire) {
                    // The client body's own idle timer bounds this wait.
                    Instant::now() + self.response_timeout
                } else {
                    upload.last_taken() + self.response_timeout
                };
                tokio::select! {
                    r = &mut response => return classify(r, self.config.tls),
                    () = upload.notify.notified() => {}
                    () = tokio::time::sleep_until(deadline) => {
                        let stuck = !upload.done.load(Ordering::Acquire)
                            && !upload.waiting_on_client.load(Ordering::Acquire)
                            && upload.last_taken() + self.response_timeout <= Instant::now();
                        if stuck {
                            return Err(Failure::Timeout);
                        }
                    }
                }
            }
        }
        match tokio::time::timeout(self.response_timeout, response).await {
            Ok(r) => classify(r, self.config.tls),
            Err(_) => Err(Failure::Timeout),
        }
    }

    fn build(
        &self,
        req: &UpstreamRequest,
        server: &OriginServer,
        body: Option<UpstreamBody>,
    ) -> Result<Request<UpstreamBody>, ProxyError> {
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(server.authority.clone())
            .path_and_query(req.path_and_query.clone())
            .build()
            .map_err(|_| ProxyError::BadRequest("request target"))?;
        // The request is framed by the edge alone (a client's Content-Length on a GET whose
        // body is not forwarded desynchronised pooled connections: CL.0): an exact body size
        // is sent as Content-Length, any other body chunked (by hyper, as no length is set),
        // no body as no length at all, except `Content-Length: 0` for methods whose requests
        // normally carry content (RFC 9110 §8.6). `Expect` is answered by the edge's own
        // server when it reads the client's body; it is never forwarded.
        let length = match &body {
            Some(b) => http_body::Body::size_hint(b).exact(),
            None if matches!(req.method, Method::POST | Method::PUT | Method::PATCH) => Some(0),
            None => None,
        };
        let body =
            body.unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed_unsync());
        let mut request = Request::new(body);
        *request.method_mut() = req.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        let mut headers = req.headers.clone();
        for name in [
            http::header::CONTENT_LENGTH,
            http::header::TRANSFER_ENCODING,
            http::header::EXPECT,
        ] {
            headers.remove(name);
        }
        if let Some(n) = length {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        *request.headers_mut() = headers;
        let host = self.host_header.clone().unwrap_or_else(|| req.host.clone());
        request.headers_mut().insert(http::header::HOST, host);
        interim::watch(&mut request);
        Ok(request)
    }
}

fn classify(
    r: Result<Response<Incoming>, hyper_util::client::legacy::Error>,
    tls: bool,
) -> Result<Response<Incoming>, Failure> {
    match r {
        // hyper skips every other 1xx but returns a 101 as an upgrade. The edge never
        // forwards `Upgrade` (hop-by-hop), so it answers nothing that was asked (RFC 9110
        // §15.2.2) and what follows it is another protocol: a malformed answer.
        Ok(resp) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => Err(Failure::Bad(
            "101 Switching Protocols to a request that asked for no upgrade".into(),
        )),
        Ok(resp) => Ok(resp),
        Err(e) => {
            if let Some(client) = client_body_error(&e) {
                return Err(Failure::Client(client));
            }
            if e.is_connect() {
                if let Some(f) = tls.then(|| tls::failure(&e)).flatten() {
                    return Err(Failure::Tls(f));
                }
                return Err(Failure::Connect(e.to_string()));
            }
            let detail = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            Err(Failure::Bad(detail))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use firebreak_config::OriginServerConfig;

    fn pool(servers: &[(&str, u32, bool)]) -> OriginPool {
        OriginPool::new(
            &OriginPoolConfig {
                servers: servers
                    .iter()
                    .map(|(a, w, b)| OriginServerConfig {
                        addr: a.to_string(),
                        weight: *w,
                        backup: *b,
                    })
                    .collect(),
                connect_timeout_ms: 100,
                response_timeout_ms: 100,
                idle_timeout_ms: 1000,
                max_idle_per_server: 4,
                host_header: None,
                breaker: firebreak_config::BreakerConfig {
                    failures: 2,
                    open_ms: 1000,
                },
                tls: false,
                tls_server_name: None,
                ca: None,
                ca_file: None,
                ca_file_pem: None,
            },
            "test",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn weights_share_traffic_and_backups_come_last() {
        let p = pool(&[("a:1", 3, false), ("b:1", 1, false), ("c:1", 1, true)]);
        let mut firsts = [0; 3];
        for _ in 0..400 {
            let order = p.attempt_order();
            assert_eq!(*order.last().unwrap(), 2, "backup last: {order:?}");
            firsts[order[0]] += 1;
        }
        assert_eq!(firsts, [300, 100, 0]);
    }

    #[tokio::test]
    async fn ejected_servers_move_behind_backups() {
        let p = pool(&[("a:1", 1, false), ("b:1", 1, false), ("c:1", 1, true)]);
        p.eject(&p.servers[0]);
        for _ in 0..4 {
            assert_eq!(p.attempt_order(), vec![1, 2, 0]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_consecutive_faults_and_lets_one_probe_through() {
        let p = pool(&[("a:1", 1, false)]);
        let a = &p.servers[0];
        p.faulted(a, false);
        assert!(matches!(p.admit(a), Admit::Yes), "one fault: still closed");
        p.faulted(a, false);
        assert!(matches!(p.admit(a), Admit::No), "open");
        assert!(
            p.attempt_order().is_empty(),
            "an open server is never tried"
        );
        assert_eq!(
            p.unavailable(),
            ProxyError::OriginUnavailable { retry_after_s: 1 }
        );
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(p.attempt_order(), vec![0], "due for its probe");
        let probe = p.admit(a);
        assert!(matches!(probe, Admit::Probe(_)));
        assert!(matches!(p.admit(a), Admit::No), "one probe at a time");
        // A failed probe opens it again for the whole cool-down.
        let Admit::Probe(g) = probe else {
            unreachable!()
        };
        p.faulted(a, true);
        g.disarm();
        assert!(matches!(p.admit(a), Admit::No));
        tokio::time::advance(Duration::from_millis(1001)).await;
        // A cancelled probe lets the next request probe at once.
        let Admit::Probe(g) = p.admit(a) else {
            unreachable!()
        };
        drop(g);
        let Admit::Probe(g) = p.admit(a) else {
            unreachable!()
        };
        p.succeeded(a);
        g.disarm();
        assert!(
            matches!(p.admit(a), Admit::Yes),
            "closed after a good probe"
        );
        p.faulted(a, false);
        assert!(matches!(p.admit(a), Admit::Yes), "the count restarted");
    }
}
