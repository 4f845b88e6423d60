//! Phase: fetch from the origin, then store. Handles revalidation (304), stale-if-error and
//! the operator's serve-stale safety net, and fills the cache while the client is answered.
//!
//! The steps, one function each: [`fetch`] asks the origin (through the pool: failover,
//! breaker), [`fallback`] turns a failed exchange into stale or an error, [`refresh`]
//! applies a 304, [`storage_plan`] decides whether the response may be stored, and
//! [`answer_with_fill`] starts the fill task ([`run_fill`]) and answers the client from it.
//!
//! The fill reads the origin at the origin's pace into the pending object; its client (if
//! any) is fed from what has arrived ([`Fill`]) and detached when it takes nothing for
//! `fetch.client_write_timeout_ms`, so a slow client never holds back the store or the
//! coalesced waiters. Bytes kept by fills count against the store's [`FillBudget`]
//! (`fetch.fill_budget_bytes`); a fill that cannot reserve streams through unstored. A fill
//! nobody waits for any more (no client, no waiter) is cut off if it is longer than
//! `fetch.abandoned_fill_bytes`. The purge generation read before the origin is asked is
//! checked at insert, so an object purged while it was being fetched never comes back.
//! Coalesced waiters do not stream from the fill in progress: they wait for it to be stored
//! (the fill no longer waits on any client, so that is the origin's pace).

use super::respond::{finish, from_object, CacheStatus};
use super::RequestCtx;
use crate::body::{EdgeBody, Fill, FillFailed, OriginBody};
use crate::coalesce::{FetchOutcome, Leader};
use crate::error::ProxyError;
use crate::http::conditional::{is_conditional, not_modified, not_modified_response};
use crate::http::freshness::{evaluate, CachePolicy, Exchange, Freshness, Storability};
use crate::http::headers::strip_hop_by_hop;
use crate::store::{surrogate_keys, CacheKey, Storage, StoredHeaders, StoredObject, VaryKey};
use crate::upstream::UpstreamRequest;
use bytes::{Bytes, BytesMut};
use http::response::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Bodies up to this size are compacted into one fresh buffer when stored, so that a small
/// object does not pin the larger network buffer its bytes arrived in.
const COMPACT_BELOW: u64 = 1024 * 1024;
/// A fill that is not stored (too large, over the fill budget) reads the origin ahead of its
/// client by at most this much: beyond it the origin waits for the client.
const PASS_WINDOW: u64 = 256 * 1024;

/// What the fetch may fall back on.
pub(crate) struct Revalidate {
    /// The stored (stale) variant, if any: source of validators and of stale fallbacks.
    pub stored: Option<Arc<StoredObject>>,
    /// Storability policy for this request.
    pub policy: CachePolicy,
    /// A background refresh (stale-while-revalidate): nobody reads the answer, the fill is
    /// wanted anyway.
    pub background: bool,
}

/// When the request was sent and when its answer's head arrived.
type ExchangeTimes = (SystemTime, SystemTime);

/// Fetches the object for a cacheable GET/HEAD and stores it when allowed.
pub(crate) async fn fetch(
    ctx: &RequestCtx,
    key: CacheKey,
    rv: Revalidate,
    leader: Leader,
    status: CacheStatus,
) -> Result<Response<EdgeBody>, ProxyError> {
    // Read before the origin is asked: a purge from now on cancels what this fetch stores.
    let generation = ctx.state.store.generation(&ctx.svc.name);
    let request_time = SystemTime::now();
    let result = ctx.send_upstream(&origin_request(ctx, &rv), None).await;
    let response_time = SystemTime::now();
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => return fallback(ctx, &rv, e, response_time),
    };
    let times = (request_time, response_time);
    let fwd_status = resp.status();
    let status = status.with_fwd_status(fwd_status);
    if fwd_status == StatusCode::NOT_MODIFIED {
        if let Some(obj) = &rv.stored {
            let target = (key, generation);
            return Ok(refresh(
                ctx,
                target,
                obj,
                resp.headers(),
                times,
                &rv.policy,
                leader,
                status,
            ));
        }
    }
    if is_origin_failure(fwd_status) {
        if let Some((obj, detail)) = usable_on_error(ctx, &rv, response_time) {
            return Ok(from_object(ctx, &obj, status.detail(detail), response_time));
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    match storage_plan(ctx, &parts, times, &rv.policy) {
        Err(why) => Ok(pass_through(ctx, parts, body, leader, status.detail(why))),
        Ok(plan) => {
            let pending = PendingObject::new(ctx, key, &parts, plan, generation);
            Ok(answer_with_fill(
                ctx,
                parts,
                body,
                pending,
                leader,
                status,
                rv.background,
            ))
        }
    }
}

/// The request sent to the origin: a GET of the whole representation with our own
/// validators, whatever the client asked.
fn origin_request(ctx: &RequestCtx, rv: &Revalidate) -> UpstreamRequest {
    let mut up = ctx.upstream();
    up.method = Method::GET;
    for h in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        up.headers.remove(h);
    }
    if let Some(obj) = &rv.stored {
        if let Some(etag) = obj.headers.get(&header::ETAG) {
            up.headers.insert(header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = obj.headers.get(&header::LAST_MODIFIED) {
            up.headers.insert(header::IF_MODIFIED_SINCE, lm);
        }
    }
    up
}

/// The origin could not be asked or did not answer (including an open breaker): stale if
/// allowed, else the error.
fn fallback(
    ctx: &RequestCtx,
    rv: &Revalidate,
    e: ProxyError,
    now: SystemTime,
) -> Result<Response<EdgeBody>, ProxyError> {
    match usable_on_error(ctx, rv, now) {
        Some((obj, detail)) => {
            tracing::info!(request_id = %ctx.id, error = %e, "origin failed; serving stale");
            let st = CacheStatus::fwd("stale").detail(detail);
            Ok(from_object(ctx, &obj, st, now))
        }
        None => Err(e),
    }
}

/// A 304 for our validators: the stored response, updated and stored again (unless a purge
/// happened since the fetch started).
#[allow(clippy::too_many_arguments)]
fn refresh(
    ctx: &RequestCtx,
    (key, generation): (CacheKey, u64),
    obj: &Arc<StoredObject>,
    not_modified: &HeaderMap,
    times: ExchangeTimes,
    policy: &CachePolicy,
    leader: Leader,
    status: CacheStatus,
) -> Response<EdgeBody> {
    let response_time = times.1;
    match revalidated(ctx, obj, not_modified, times, policy) {
        Some(updated) => {
            let updated = Arc::new(updated);
            let stored = ctx
                .state
                .store
                .put_if_generation(key, updated.clone(), generation);
            if stored {
                leader.finish(FetchOutcome::Stored);
            } else {
                crate::telemetry::fill_not_stored(&ctx.svc.name, "purged");
            }
            from_object(ctx, &updated, status.stored(), response_time)
        }
        // The 304 made the response unstorable: serve it this once, drop the copy.
        None => {
            ctx.state.store.remove(&key);
            from_object(ctx, obj, status, response_time)
        }
    }
}

/// How a storable response will be kept.
struct StoragePlan {
    freshness: Freshness,
    strip_fields: Vec<String>,
    vary: VaryKey,
    declared_len: Option<u64>,
}

/// Whether the response may be stored, and how; the reason (a `Cache-Status` detail) if not.
fn storage_plan(
    ctx: &RequestCtx,
    parts: &Parts,
    (request_time, response_time): ExchangeTimes,
    policy: &CachePolicy,
) -> Result<StoragePlan, &'static str> {
    let storability = evaluate(
        &Exchange {
            method: &Method::GET,
            request: &ctx.headers,
            status: parts.status,
            response: &parts.headers,
            request_time,
            response_time,
        },
        policy,
    );
    let max_object = ctx.runtime.config.cache.max_object_bytes;
    let declared_len = content_length(&parts.headers);
    match storability {
        Storability::NoStore(why) => Err(why),
        Storability::Store {
            freshness,
            strip_fields,
        } => {
            match VaryKey::from_exchange_with(&parts.headers, &ctx.headers, &ctx.svc.key_headers) {
                None => Err("vary"),
                Some(_) if declared_len.is_some_and(|l| l > max_object) => Err("too-large"),
                Some(vary) => Ok(StoragePlan {
                    freshness,
                    strip_fields,
                    vary,
                    declared_len,
                }),
            }
        }
    }
}

/// An unstorable response: the waiters are released and the body streams through.
fn pass_through(
    ctx: &RequestCtx,
    parts: Parts,
    body: Incoming,
    leader: Leader,
    status: CacheStatus,
) -> Response<EdgeBody> {
    // Release the waiters at once: they go to the origin in parallel, and so do the next
    // requests for a while — unless this is an origin error: a failing origin keeps the
    // protection of coalescing.
    let outcome = if parts.status.is_server_error() {
        FetchOutcome::NotStored
    } else {
        FetchOutcome::Uncacheable
    };
    leader.finish(outcome);
    let body = if ctx.method == Method::HEAD {
        EdgeBody::Empty
    } else {
        EdgeBody::Origin(OriginBody::new(
            body,
            ctx.svc.pool.idle_timeout(),
            crate::telemetry::origin_bytes(&ctx.svc.name),
        ))
    };
    finish(ctx, Response::from_parts(parts, body), status)
}

/// Starts the fill task and answers the client: from the fill, or a 304 when the client's
/// own validators match, or a head only (HEAD).
fn answer_with_fill(
    ctx: &RequestCtx,
    parts: Parts,
    body: Incoming,
    pending: PendingObject,
    leader: Leader,
    status: CacheStatus,
    background: bool,
) -> Response<EdgeBody> {
    let response_time = pending.freshness.response_time;
    let client_wants_body = ctx.method != Method::HEAD && !background;
    let conditional_hit = parts.status == StatusCode::OK
        && is_conditional(&ctx.headers)
        && not_modified(&ctx.headers, &pending.headers);
    let status = status
        .stored()
        .with_ttl(pending.freshness.ttl_secs(response_time));
    let age = HeaderValue::from(pending.freshness.age(response_time).as_secs());
    let fetch = &ctx.runtime.config.fetch;
    let limits = FillLimits {
        origin_idle: ctx.svc.pool.idle_timeout(),
        write_timeout: Duration::from_millis(fetch.client_write_timeout_ms),
        abandoned_bytes: fetch.abandoned_fill_bytes,
        // Nobody left a fill whose requester never wanted the body (a background refresh,
        // HEAD, a 304 to the client's own validators): it is bounded by the budget only.
        background: background || !client_wants_body || conditional_hit,
        service: ctx.svc.name.clone(),
    };
    let sent = crate::telemetry::origin_bytes(&ctx.svc.name);
    let (fill, reader) = Fill::new(client_wants_body && !conditional_hit, sent);
    tokio::spawn(run_fill(body, fill, pending, leader, limits));

    let mut resp = if conditional_hit {
        not_modified_response(&parts.headers, EdgeBody::Empty)
    } else {
        let body = reader.map_or(EdgeBody::Empty, EdgeBody::Fill);
        Response::from_parts(parts, body)
    };
    resp.headers_mut().insert(header::AGE, age);
    finish(ctx, resp, status)
}

/// 5xx answers that count as an origin failure for stale-if-error (RFC 5861 §4).
fn is_origin_failure(s: StatusCode) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

/// The stored response, if it may stand in for a failed origin (never while the service's
/// `no_stale` switch is on).
fn usable_on_error(
    ctx: &RequestCtx,
    rv: &Revalidate,
    now: SystemTime,
) -> Option<(Arc<StoredObject>, &'static str)> {
    if ctx.svc.switches.no_stale {
        return None;
    }
    let obj = rv.stored.as_ref()?;
    let f = &obj.freshness;
    if f.can_serve_on_error(now, None) {
        Some((obj.clone(), "stale-if-error"))
    } else if f.can_serve_on_error(now, ctx.svc.safety_net) {
        Some((obj.clone(), "origin-failure-safety-net"))
    } else {
        None
    }
}

/// The stored response updated by a 304 (RFC 9111 §4.3.4): header fields from the 304
/// replace the stored ones, freshness is recomputed; `None` if it may no longer be stored.
fn revalidated(
    ctx: &RequestCtx,
    obj: &StoredObject,
    not_modified: &HeaderMap,
    (request_time, response_time): (SystemTime, SystemTime),
    policy: &CachePolicy,
) -> Option<StoredObject> {
    let mut update = not_modified.clone();
    strip_hop_by_hop(&mut update);
    for h in [
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_ENCODING,
    ] {
        update.remove(h);
    }
    // Age and Date describe this 304, not the stored response: a missing one must not leave
    // the old value to age the refreshed response.
    if !update.contains_key(header::DATE) {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(response_time)) {
            update.insert(header::DATE, v);
        }
    }
    let mut headers = obj.headers.to_map();
    headers.remove(header::AGE);
    for name in update.keys() {
        headers.remove(name);
    }
    for (name, value) in update.iter() {
        headers.append(name.clone(), value.clone());
    }
    let storability = evaluate(
        &Exchange {
            method: &Method::GET,
            request: &ctx.headers,
            status: obj.status,
            response: &headers,
            request_time,
            response_time,
        },
        policy,
    );
    match storability {
        Storability::Store {
            freshness,
            strip_fields,
        } => {
            for f in &strip_fields {
                headers.remove(f.as_str());
            }
            Some(StoredObject {
                status: obj.status,
                surrogate_keys: surrogate_keys(&headers),
                headers: StoredHeaders::from_map(&headers),
                body: obj.body.clone(),
                body_len: obj.body_len,
                vary: obj.vary.clone(),
                freshness,
            })
        }
        Storability::NoStore(_) => None,
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A response being received: stored when its body has arrived complete.
struct PendingObject {
    store: Arc<dyn Storage>,
    key: CacheKey,
    status: StatusCode,
    headers: HeaderMap,
    vary: VaryKey,
    freshness: Freshness,
    max_bytes: u64,
    declared_len: Option<u64>,
    /// The service's purge generation when the fetch started.
    generation: u64,
}

impl PendingObject {
    fn new(
        ctx: &RequestCtx,
        key: CacheKey,
        parts: &Parts,
        plan: StoragePlan,
        generation: u64,
    ) -> Self {
        let mut headers = parts.headers.clone();
        for f in &plan.strip_fields {
            headers.remove(f.as_str());
        }
        // The age is kept in `Freshness`; every response from the copy gets a computed Age.
        headers.remove(header::AGE);
        super::respond::ensure_date(&mut headers);
        Self {
            store: ctx.state.store.clone(),
            key,
            status: parts.status,
            headers,
            vary: plan.vary,
            freshness: plan.freshness,
            max_bytes: ctx.runtime.config.cache.max_object_bytes,
            declared_len: plan.declared_len,
            generation,
        }
    }

    /// Stores the complete body; false if a purge since the fetch started forbids it.
    fn store(self, chunks: Vec<Bytes>, len: u64) -> bool {
        let body = if len <= COMPACT_BELOW && !chunks.is_empty() {
            let mut buf = BytesMut::with_capacity(len as usize);
            for c in &chunks {
                buf.extend_from_slice(c);
            }
            vec![buf.freeze()]
        } else {
            chunks
        };
        let mut headers = self.headers;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let surrogate = surrogate_keys(&headers);
        let object = StoredObject {
            status: self.status,
            surrogate_keys: surrogate,
            headers: StoredHeaders::from_map(&headers),
            body: body.into(),
            body_len: len,
            vary: self.vary,
            freshness: self.freshness,
        };
        self.store
            .put_if_generation(self.key, Arc::new(object), self.generation)
    }
}

/// Bounds of one fill.
struct FillLimits {
    /// Longest silence of the origin between body chunks.
    origin_idle: Duration,
    /// Longest time the client may take nothing while bytes wait for it.
    write_timeout: Duration,
    /// Longest fill finished once nobody waits for it.
    abandoned_bytes: u64,
    /// Nobody reads the body by design (background refresh, HEAD, 304 to the client):
    /// never abandoned.
    background: bool,
    service: Arc<str>,
}

/// What the fill keeps for the cache, and its reservation in the fill budget (given back
/// when dropped: stored, given up, or the task unwound).
struct Kept {
    chunks: Vec<Bytes>,
    reserved: u64,
    store: Arc<dyn Storage>,
}

impl Kept {
    /// Keeps a chunk (`len` bytes received so far, this chunk included) if the object stays
    /// within `max_bytes` and the fill budget has room; else why the fill stops keeping.
    fn keep(&mut self, data: &Bytes, len: u64, max_bytes: u64) -> Result<(), FetchOutcome> {
        let n = data.len() as u64;
        if len > max_bytes {
            return Err(FetchOutcome::Uncacheable);
        }
        if !self.store.fills().try_reserve(n) {
            return Err(FetchOutcome::NotStored);
        }
        self.reserved += n;
        self.chunks.push(data.clone());
        Ok(())
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.store.fills().release(self.reserved);
    }
}

/// Reads the origin body once, at the origin's pace: each chunk is kept for the cache
/// (within the object size limit and the fill budget) and queued for the client, if there
/// is one. The client going away does not stop the fill unless nobody else waits for it and
/// it is longer than the abandoned limit; a broken origin body stores nothing; an object
/// purged since the fetch started is not stored.
async fn run_fill(
    mut body: Incoming,
    fill: Arc<Fill>,
    p: PendingObject,
    leader: Leader,
    limits: FillLimits,
) {
    let mut leader = Some(leader);
    let mut kept = Some(Kept {
        chunks: Vec::new(),
        reserved: 0,
        store: p.store.clone(),
    });
    let mut len = 0u64;
    let mut origin_deadline = Instant::now() + limits.origin_idle;
    let mut paused = false;
    let mut last: Option<Bytes> = None;
    let ended: Result<(), FillFailed> = loop {
        // Nobody waits for this fill any more: finish it only if it is short.
        let wanted = limits.background
            || fill.has_reader()
            || leader.as_ref().is_some_and(|l| l.waiters() > 0);
        if !wanted {
            let size = p.declared_len.unwrap_or(0).max(len);
            if kept.is_none() || size > limits.abandoned_bytes {
                crate::telemetry::fill_not_stored(&limits.service, "abandoned");
                break Err(FillFailed::Cut);
            }
        }
        // Not storing: read ahead of the client by a window only.
        let wait_for_client = kept.is_none() && fill.unread_bytes() > PASS_WINDOW;
        if paused && !wait_for_client {
            origin_deadline = Instant::now() + limits.origin_idle;
        }
        paused = wait_for_client;
        let stuck_at = fill.stuck_at(limits.write_timeout);
        let frame = tokio::select! {
            () = fill.progressed() => continue,
            () = sleep_until_some(stuck_at) => {
                detach_if_stuck(&fill, &limits);
                continue;
            }
            frame = body.frame(), if !wait_for_client => frame,
            () = tokio::time::sleep_until(origin_deadline), if !wait_for_client => {
                tracing::warn!("origin body stalled; not stored");
                break Err(FillFailed::Stalled(limits.origin_idle));
            }
        };
        let frame = match frame {
            None => break Ok(()),
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "origin body failed; not stored");
                break Err(FillFailed::Origin(e.to_string()));
            }
        };
        origin_deadline = Instant::now() + limits.origin_idle;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len() as u64;
        if let Some(Err(outcome)) = kept.as_mut().map(|k| k.keep(&data, len, p.max_bytes)) {
            // Stop keeping: the response streams through to its client.
            if outcome == FetchOutcome::NotStored {
                crate::telemetry::fill_not_stored(&limits.service, "budget");
            }
            kept = None;
            if let Some(l) = leader.take() {
                l.finish(outcome);
            }
        }
        // The last byte of a complete object reaches the client only once the object is
        // stored, so a client that got the whole body finds it on its next request.
        if kept.is_some() && p.declared_len == Some(len) {
            last = Some(data);
        } else {
            fill.push(data);
        }
    };
    drop(body);
    let stored = match kept {
        Some(mut k) if ended.is_ok() && p.declared_len.is_none_or(|d| d == len) => {
            let service = limits.service.clone();
            let stored = p.store(std::mem::take(&mut k.chunks), len);
            // The bytes now count against the cache's own budget.
            drop(k);
            if !stored {
                crate::telemetry::fill_not_stored(&service, "purged");
            }
            stored
        }
        _ => false,
    };
    if let (true, Some(l)) = (stored, leader.take()) {
        l.finish(FetchOutcome::Stored);
    }
    drop(leader);
    if let Some(last) = last {
        fill.push(last);
    }
    // The client's body ends only after the object is stored.
    fill.finish(ended);
    // Keep watching the client until it has taken what is queued for it or is detached.
    while let Some(at) = fill.stuck_at(limits.write_timeout) {
        tokio::select! {
            () = fill.progressed() => {}
            () = tokio::time::sleep_until(at) => detach_if_stuck(&fill, &limits),
        }
    }
}

/// Detaches the fill's client if it has taken nothing for the write timeout.
fn detach_if_stuck(fill: &Fill, limits: &FillLimits) {
    if fill.detach_if_stuck(limits.write_timeout) {
        crate::telemetry::fill_client_detached(&limits.service);
        tracing::info!(
            "client took no bytes for {:?}; detached from the fill",
            limits.write_timeout
        );
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
