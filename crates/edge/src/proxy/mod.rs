//! The request path, one module per phase:
//! route ([`route`]) → cache lookup and coalescing ([`lookup`]) → fetch, tee and store
//! ([`fetch`]) → respond ([`respond`]) → log (here, in [`handle`]). Every request, failed or
//! not, passes through [`handle`], and every error becomes a response in one place
//! ([`crate::error::ProxyError::to_response`]).

mod fetch;
mod invalidate;
mod lookup;
mod respond;
pub(crate) mod route;
pub(crate) mod slice;
mod tier;

use crate::body::EdgeBody;
use crate::client_body::ClientBody;
use crate::coalesce::Coalescer;
use crate::error::ProxyError;
use crate::health::Source;
use crate::http::headers::{add_forwarded, append_via};
use crate::runtime::{RuleAction, Runtime, Service};
use crate::store::Storage;
use crate::telemetry::{self, AccessLog, AccessRecord, CacheResult};
use crate::upstream::UpstreamRequest;
use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use respond::CacheStatus;

/// Shared state of one edge process: the current runtime configuration, the cache and the
/// table of in-flight fetches.
pub struct EdgeState {
    /// Current configuration; each request loads it once and keeps that version to the end.
    pub runtime: ArcSwap<Runtime>,
    /// The cache.
    pub store: Arc<dyn Storage>,
    /// In-flight fetches, for request coalescing.
    pub coalescer: Coalescer,
    /// Structured access log, when configured.
    pub access_log: Option<AccessLog>,
    /// The control plane's public key, when this edge is run by a control plane: admin
    /// requests signed with it (purge fan-out) are accepted without the bearer token.
    pub control_key: std::sync::OnceLock<firebreak_protocol::keys::PublicKey>,
    /// The control plane's keys as this edge trusts them (rotation, revocation): when set,
    /// admin requests are verified with these instead of `control_key`.
    pub control_keys:
        std::sync::OnceLock<Arc<dyn firebreak_protocol::keyring::Verify + Send + Sync>>,
    /// This edge as the control plane addresses it (id, nonces of signed requests seen,
    /// staleness), when run by a control plane.
    pub control_link: std::sync::OnceLock<std::sync::Arc<crate::signed_admin::ControlLink>>,
    /// Per-address rate limits and the bound on requests in flight.
    pub clients: crate::ratelimit::ClientGate,
    /// What this edge knows about tiers: its POP, the tier secret, the shield POPs' edges.
    pub tier: crate::tier::TierState,
    /// The client towards shield edges.
    pub(crate) shield_client: crate::upstream::shield::ShieldClient,
    next_id: AtomicU64,
    id_prefix: u32,
}

impl EdgeState {
    /// State for a runtime and a store.
    pub fn new(runtime: Runtime, store: Arc<dyn Storage>, access_log: Option<AccessLog>) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0)
            ^ std::process::id().rotate_left(16);
        Self {
            runtime: ArcSwap::from_pointee(runtime),
            store,
            coalescer: Coalescer::default(),
            access_log,
            control_key: std::sync::OnceLock::new(),
            control_keys: std::sync::OnceLock::new(),
            control_link: std::sync::OnceLock::new(),
            clients: Default::default(),
            tier: Default::default(),
            shield_client: Default::default(),
            next_id: AtomicU64::new(1),
            id_prefix: seed,
        }
    }

    pub(crate) fn request_id(&self) -> RequestId {
        RequestId {
            prefix: self.id_prefix,
            n: self.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Identifies one request in logs and error pages.
#[derive(Debug, Clone, Copy)]
pub struct RequestId {
    prefix: u32,
    n: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}-{:x}", self.prefix, self.n)
    }
}

/// Everything known about one request after routing; cloned only for background work.
#[derive(Clone)]
pub(crate) struct RequestCtx {
    pub state: Arc<EdgeState>,
    pub runtime: Arc<Runtime>,
    pub svc: Arc<Service>,
    pub id: RequestId,
    /// The normalised authority: lowercased host without port. The cache key and the `Host`
    /// sent upstream (unless the pool sets `host_header`) are both this.
    pub host: String,
    pub method: Method,
    pub version: Version,
    pub path_and_query: PathAndQuery,
    /// Request headers: hop-by-hop fields removed, and unless `trusted_proxy` the client's
    /// forwarding headers too.
    pub headers: HeaderMap,
    /// Which of the fields the edge acts on the client sent: a field not flagged is not in
    /// `headers` (one flagged may have been removed since, by routing), so a phase looks a
    /// precondition or `Range` up only when it is flagged.
    pub fields: crate::http::request_fields::RequestFields,
    pub client_ip: IpAddr,
    /// `client_ip` is in `forwarding.trusted_proxies`: its forwarding headers are kept.
    pub trusted_proxy: bool,
    /// How the request arrived: from a client, or from another tier (valid credential).
    pub tier: crate::tier::RequestTier,
    /// What the log phase learns about this request as it runs.
    pub trace: Arc<RequestTrace>,
    /// Whether the response will get `Alt-Svc` ([`handle`] sets it): a hit's map then has a
    /// slot for it.
    pub advertise: crate::store::Advertise,
}

/// Facts gathered along the request path for the log phase; one small allocation per
/// request, shared by the phases that fill it.
#[derive(Default)]
pub(crate) struct RequestTrace {
    /// Microseconds the origin took to answer (response heads, summed), 0 if not asked.
    pub origin_us: AtomicU64,
    /// The `CacheResult` of the response, as set by `respond::finish`.
    pub result: std::sync::atomic::AtomicU8,
    /// The service the request was routed to, set once routing succeeded: the log phase
    /// needs it even when the request's future panicked.
    service: std::sync::OnceLock<Arc<Service>>,
}

impl RequestTrace {
    pub(crate) fn new() -> Self {
        Self {
            origin_us: AtomicU64::new(0),
            result: std::sync::atomic::AtomicU8::new(CacheResult::Error as u8),
            service: std::sync::OnceLock::new(),
        }
    }

    pub fn set_result(&self, r: CacheResult) {
        self.result.store(r as u8, Ordering::Relaxed);
    }

    fn result(&self) -> CacheResult {
        CacheResult::from_u8(self.result.load(Ordering::Relaxed))
    }
}

impl RequestCtx {
    /// Sends a request to the service's origin pool, timing it for logs and metrics. The
    /// origin's framing is settled here for every path (fetch, pass, invalidate): a response
    /// with both `Transfer-Encoding` and `Content-Length` loses the latter (RFC 9112 §6.3: the
    /// body was read chunked; forwarding the length truncated it), and the response is an
    /// HTTP/1.1 message whatever version the origin spoke (the status line the client gets is
    /// the edge's).
    pub async fn send_upstream(
        &self,
        req: &UpstreamRequest,
        body: Option<crate::upstream::UpstreamBody>,
    ) -> Result<hyper::Response<Incoming>, ProxyError> {
        let started = Instant::now();
        let mut result = self.svc.pool.send(req, body).await;
        if let Ok(resp) = &mut result {
            if resp.headers().contains_key(http::header::TRANSFER_ENCODING) {
                resp.headers_mut().remove(http::header::CONTENT_LENGTH);
            }
            *resp.version_mut() = Version::HTTP_11;
        }
        let elapsed = started.elapsed();
        self.svc.health.origin(result.is_ok());
        self.trace
            .origin_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        telemetry::origin(
            &self.svc.name,
            result.as_ref().ok().map(|r| r.status()),
            elapsed,
        );
        result
    }

    /// The request as forwarded to an origin: forwarding headers and `Via` added, `Host` the
    /// normalised authority. Framing (`Content-Length`, `Transfer-Encoding`, `Expect`) is
    /// never copied from the client: `OriginPool` frames the request from the body it sends.
    pub fn upstream(&self) -> UpstreamRequest {
        let mut headers = self.headers.clone();
        headers.remove(http::header::CONTENT_LENGTH);
        headers.remove(http::header::EXPECT);
        add_forwarded(&mut headers, self.client_ip, &self.host, self.trusted_proxy);
        append_via(&mut headers, self.version);
        // The host passed `valid_host_name`, so it is a valid header value.
        let host = HeaderValue::from_str(&self.host)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        UpstreamRequest {
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            headers,
            host,
        }
    }
}

/// Serves one client request. Never fails: errors become error responses here. This is also
/// the log phase: every request is counted and, when configured, logged. `alt_svc` is the
/// listener's advertisement of HTTP/3, added to the response unless its service turns it off.
pub async fn handle<B: Into<ClientBody>>(
    state: Arc<EdgeState>,
    req: Request<B>,
    client_ip: IpAddr,
    alt_svc: Option<Arc<crate::http3::AltSvc>>,
) -> Response<EdgeBody> {
    let req = req.map(Into::into);
    let started = Instant::now();
    let runtime = state.runtime.load_full();
    let id = state.request_id();
    let log_parts = state.access_log.as_ref().map(|_| {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        (req.method().clone(), host, path, req.version())
    });
    let trace = Arc::new(RequestTrace::new());
    let advertise = if alt_svc.is_some() {
        crate::store::Advertise::AltSvc
    } else {
        crate::store::Advertise::Nothing
    };
    let serving = Box::pin(serve(
        state.clone(),
        runtime,
        req,
        client_ip,
        advertise,
        id,
        trace.clone(),
    ));
    // A panic anywhere in request handling (up to the response head) ends this request with
    // a 500, never the connection or the process.
    let result = match AssertUnwindSafe(serving).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(caught_panic(&trace, id, payload.as_ref())),
    };
    let (mut response, source) = match result {
        Ok(r) => (r, Source::Origin),
        Err(e) => {
            if e != ProxyError::Panic {
                tracing::warn!(request_id = %id, error = %e, "request failed");
            }
            trace.set_result(CacheResult::Error);
            (e.to_response(&id.to_string()), Source::Edge)
        }
    };
    let result = trace.result();
    let service = trace.service.get();
    if let (Some(alt_svc), Some(svc)) = (alt_svc, service) {
        if svc.alt_svc {
            response
                .headers_mut()
                .insert(http::header::ALT_SVC, alt_svc.0.clone());
        }
    }
    let hit = matches!(result, CacheResult::Hit | CacheResult::Stale);
    let head = started.elapsed();
    match service {
        Some(svc) => svc.health.response(response.status(), source, hit, head),
        // Refused before routing: counted by the version installed now (the request's own
        // unless a reload happened in these microseconds); keeps the hit path free of one
        // more reference count on the runtime.
        None => (state.runtime.load().unrouted).response(response.status(), source, hit, head),
    }
    static UNROUTED: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    let unrouted = UNROUTED.get_or_init(|| Arc::from("-"));
    let service_name = match service {
        Some(svc) if result == CacheResult::Hit && response.status() == http::StatusCode::OK => {
            svc.counters.hit_200.increment(1);
            &svc.name
        }
        Some(svc) => {
            telemetry::request(&svc.name, response.status(), result);
            &svc.name
        }
        None => {
            telemetry::request(unrouted, response.status(), result);
            unrouted
        }
    };
    if let (Some(log), Some((method, host, path, version))) = (&state.access_log, log_parts) {
        let origin = trace.origin_us.load(Ordering::Relaxed);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| (d.as_millis() as f64) / 1000.0)
            .unwrap_or(0.0);
        log.write(&AccessRecord {
            ts,
            id: id.to_string(),
            client: client_ip.to_string(),
            service: service_name,
            method: method.as_str(),
            host: &host,
            path: &path,
            version: version_label(version),
            status: response.status().as_u16(),
            cache: result.as_str(),
            cache_status: response
                .headers()
                .get_all("cache-status")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            bytes: http_body::Body::size_hint(response.body()).exact(),
            duration_us: started.elapsed().as_micros() as u64,
            origin_us: (origin > 0).then_some(origin),
        });
    }
    response
}

/// Counts and logs a panic caught in request handling; the request is answered with
/// [`ProxyError::Panic`].
fn caught_panic(
    trace: &RequestTrace,
    id: RequestId,
    payload: &(dyn std::any::Any + Send),
) -> ProxyError {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let service = trace.service.get();
    if let Some(svc) = service {
        svc.health.panic();
    }
    telemetry::panicked(service.map(|s| &s.name));
    tracing::error!(request_id = %id, panic = message, "request handling panicked; answered 500");
    ProxyError::Panic
}

fn version_label(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/1.1",
    }
}

async fn serve(
    state: Arc<EdgeState>,
    runtime: Arc<Runtime>,
    req: Request<ClientBody>,
    client_ip: IpAddr,
    advertise: crate::store::Advertise,
    id: RequestId,
    trace: Arc<RequestTrace>,
) -> Result<Response<EdgeBody>, ProxyError> {
    let (parts, body) = req.into_parts();
    let (mut ctx, rule) = route::route(state, runtime, parts, client_ip, id, trace)?;
    // The same condition as `handle`'s: the listener advertises and the service allows it.
    if ctx.svc.alt_svc {
        ctx.advertise = advertise;
    }
    let _ = ctx.trace.service.set(ctx.svc.clone());
    let _admitted = ctx
        .state
        .clients
        .admit(
            &ctx.svc.name,
            ctx.client_ip,
            ctx.tier == crate::tier::RequestTier::Tier,
        )
        .await?;
    if ctx.svc.switches.disabled_by.is_some() || !ctx.svc.faults.is_empty() {
        Box::pin(crate::drills::before_serving(
            &ctx.svc,
            ctx.path_and_query.path(),
        ))
        .await?;
    }
    dispatch(&ctx, rule, body).await
}

async fn dispatch(
    ctx: &RequestCtx,
    rule: Option<RuleAction>,
    body: ClientBody,
) -> Result<Response<EdgeBody>, ProxyError> {
    match ctx.method {
        Method::GET | Method::HEAD if ctx.svc.cache_enabled && rule != Some(RuleAction::Bypass) => {
            lookup::cached(ctx, rule).await
        }
        Method::GET | Method::HEAD => Box::pin(pass(ctx, None, CacheStatus::fwd("bypass"))).await,
        // OPTIONS: the only other safe method that reaches here (TRACE, CONNECT refused).
        _ if invalidate::is_safe(&ctx.method) => {
            let body = request_body(ctx, body)?;
            Box::pin(pass(ctx, body, CacheStatus::fwd("method"))).await
        }
        // Unsafe, or of unknown safety (extension methods): RFC 9111 §4.4.
        _ => Box::pin(invalidate::forward_unsafe(ctx, body)).await,
    }
}

/// The client's body for forwarding: refused up front when its declared length is over the
/// limit, cut off (413) when a chunked body grows past it.
pub(crate) fn request_body(
    ctx: &RequestCtx,
    body: ClientBody,
) -> Result<Option<crate::upstream::UpstreamBody>, ProxyError> {
    use http_body::Body;
    let limit = ctx.runtime.config.limits.max_request_body_bytes;
    if body.size_hint().lower() > limit {
        return Err(ProxyError::PayloadTooLarge);
    }
    let idle =
        std::time::Duration::from_millis(ctx.runtime.config.fetch.request_body_idle_timeout_ms);
    Ok((!body.is_end_stream()).then(|| crate::upstream::client_body(body, limit, idle)))
}

/// Forwards the request unchanged and streams the origin's answer back, storing nothing.
async fn pass(
    ctx: &RequestCtx,
    body: Option<crate::upstream::UpstreamBody>,
    status: CacheStatus,
) -> Result<Response<EdgeBody>, ProxyError> {
    let resp = ctx.send_upstream(&ctx.upstream(), body).await?;
    let fwd_status = resp.status();
    Ok(respond::forwarded(
        ctx,
        resp,
        status.with_fwd_status(fwd_status),
    ))
}
