//! Origin pools: weighted selection, passive health (failed servers are ejected for a while),
//! failover to the next server and to backups, pooled HTTP/1.1 keep-alive connections.

use crate::body::BoxError;
use crate::error::ProxyError;
use bytes::Bytes;
use firebreak_config::OriginPoolConfig;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Body type of requests sent to origins.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// The client's request body failed: the client's fault, not the origin's. Client body
/// errors are wrapped in it so that `send` can tell them apart from origin failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// Malformed chunking, reset connection, ...
    #[error("client request body: {0}")]
    Malformed(hyper::Error),
    /// Longer than `limits.max_request_body_bytes`.
    #[error("client request body exceeds the limit")]
    TooLarge,
}

/// Wraps a client's streamed request body for forwarding, failing once it passes `limit`.
pub fn client_body(body: hyper::body::Incoming, limit: u64) -> UpstreamBody {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let body = body.map_err(|e| BoxError::from(ClientBodyError::Malformed(e)));
    http_body_util::Limited::new(body, limit)
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                BoxError::from(ClientBodyError::TooLarge)
            } else {
                e
            }
        })
        .boxed_unsync()
}

/// The client-side cause of a failed forward, if that is what it was.
fn client_body_error(e: &(dyn std::error::Error + 'static)) -> Option<ProxyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<ClientBodyError>() {
            Some(ClientBodyError::TooLarge) => return Some(ProxyError::PayloadTooLarge),
            Some(ClientBodyError::Malformed(_)) => {
                return Some(ProxyError::BadRequest("malformed request body"))
            }
            None => cur = err.source(),
        }
    }
    None
}

/// How long a server that failed to connect or answer is skipped.
const EJECT_FOR: Duration = Duration::from_secs(5);
/// Most servers one request tries (only requests without a body are retried).
const MAX_ATTEMPTS: usize = 3;

struct OriginServer {
    authority: Authority,
    weight: u32,
    backup: bool,
    /// Milliseconds since the pool's epoch until which this server is ejected.
    ejected_until_ms: AtomicU64,
}

/// A pool of origin servers for one service.
pub struct OriginPool {
    config: OriginPoolConfig,
    servers: Vec<OriginServer>,
    client: Client<HttpConnector, UpstreamBody>,
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
    /// Builds a pool from validated configuration. Fails only if an address that passed
    /// validation still cannot be used as a URI authority.
    pub fn new(config: &OriginPoolConfig) -> Result<Self, String> {
        let servers = config
            .servers
            .iter()
            .map(|s| {
                Ok(OriginServer {
                    authority: s
                        .addr
                        .parse::<Authority>()
                        .map_err(|e| format!("{}: {e}", s.addr))?,
                    weight: s.weight.max(1),
                    backup: s.backup,
                    ejected_until_ms: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_millis(config.idle_timeout_ms))
            .pool_max_idle_per_host(config.max_idle_per_server)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            config: config.clone(),
            servers,
            client,
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
        s.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    fn eject(&self, s: &OriginServer) {
        let until = self.now_ms() + EJECT_FOR.as_millis() as u64;
        s.ejected_until_ms.store(until, Ordering::Relaxed);
        tracing::warn!(origin = %s.authority, "origin ejected for {:?}", EJECT_FOR);
    }

    /// Servers to try, in order: one healthy primary picked by weight, the other healthy
    /// primaries, healthy backups, then (last resort) ejected servers.
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
        order.extend(
            (0..self.servers.len())
                .filter(|&i| self.servers.get(i).is_some_and(|s| !self.healthy(s))),
        );
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
        let mut last_err = ProxyError::OriginUnreachable("no origin servers".into());
        for (attempt, idx) in self.attempt_order().into_iter().enumerate() {
            if attempt >= MAX_ATTEMPTS || (attempt > 0 && !retryable) {
                break;
            }
            let Some(server) = self.servers.get(idx) else {
                continue;
            };
            let request = self.build(req, server, body.take())?;
            match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) if e.is_connect() => {
                    self.eject(server);
                    last_err = ProxyError::OriginUnreachable(format!("{}: {e}", server.authority));
                }
                Ok(Err(e)) if client_body_error(&e).is_some() => {
                    return Err(client_body_error(&e).unwrap_or(ProxyError::BadRequest("body")));
                }
                Ok(Err(e)) => {
                    let detail = std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.to_string());
                    // The request may have reached the origin: never replay it.
                    return Err(ProxyError::OriginBadResponse(format!(
                        "{}: {detail}",
                        server.authority
                    )));
                }
                Err(_) => {
                    self.eject(server);
                    last_err = ProxyError::OriginTimeout;
                    // A timed-out request may have had effects; only idempotent ones move on.
                    if !req.method.is_idempotent() {
                        break;
                    }
                }
            }
        }
        Err(last_err)
    }

    fn build(
        &self,
        req: &UpstreamRequest,
        server: &OriginServer,
        body: Option<UpstreamBody>,
    ) -> Result<Request<UpstreamBody>, ProxyError> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
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
        Ok(request)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use firebreak_config::OriginServerConfig;

    fn pool(servers: &[(&str, u32, bool)]) -> OriginPool {
        OriginPool::new(&OriginPoolConfig {
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
        })
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
}
