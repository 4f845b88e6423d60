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
use crate::store::{
    surrogate_keys, CacheKey, Chunks, DiskSpool, ObjectBody, Storage, StoredHeaders, StoredObject,
    VaryKey,
};
use crate::upstream::UpstreamRequest;
use bytes::Bytes;
use http::response::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A fill that is not stored (too large, over the fill budget) reads the origin ahead of its
/// client by at most this much: beyond it the origin waits for the client.
const PASS_WINDOW: u64 = 256 * 1024;
/// Bytes of a large object gathered before they are written to the disk tier in one go.
const SPOOL_BATCH: u64 = 1024 * 1024;

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
pub(super) type ExchangeTimes = (SystemTime, SystemTime);

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
    let result = ctx.send_fill(&origin_request(ctx, &rv)).await;
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
    let target = (key, generation);
    Ok(answer_fetched(
        ctx, target, resp, times, &rv, leader, status,
    ))
}

/// The origin's answer (not a 304 to our validators) stored when it may be, and the client
/// answered from it. Also the slice path's way in for an origin that answers a slice request
/// with a whole response (`proxy::slice`).
pub(super) fn answer_fetched(
    ctx: &RequestCtx,
    (key, generation): (CacheKey, u64),
    resp: Response<Incoming>,
    times: ExchangeTimes,
    rv: &Revalidate,
    leader: Leader,
    status: CacheStatus,
) -> Response<EdgeBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    match storage_plan(ctx, &parts, times, &rv.policy) {
        Err(why) => pass_through(ctx, parts, body, leader, status.detail(why)),
        Ok(plan) => {
            let pending = PendingObject::new(ctx, key, &parts, plan, generation);
            answer_with_fill(ctx, parts, body, pending, leader, status, rv.background)
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
pub(super) struct StoragePlan {
    pub(super) freshness: Freshness,
    strip_fields: Vec<String>,
    vary: VaryKey,
    declared_len: Option<u64>,
}

/// Whether the response may be stored, and how; the reason (a `Cache-Status` detail) if not.
pub(super) fn storage_plan(
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
    // Objects over the memory tier's bound can still go to the disk tier as they arrive.
    let max_object = ctx
        .runtime
        .config
        .cache
        .max_object_bytes
        .max(ctx.state.store.spool_max());
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
    let response_time = pending.freshness.response_time();
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
pub(super) fn is_origin_failure(s: StatusCode) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

/// The stored response, if it may stand in for a failed origin (never while the service's
/// `no_stale` switch is on).
pub(super) fn usable_on_error(
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
pub(super) fn revalidated(
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
            // A stored 206 is a slice (`proxy::slice`): judged as the response it is part of.
            status: if obj.status() == StatusCode::PARTIAL_CONTENT {
                StatusCode::OK
            } else {
                obj.status()
            },
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
                surrogate_keys: surrogate_keys(&headers),
                headers: StoredHeaders::from_map(obj.status(), &headers),
                body: obj.body.clone(),
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
pub(super) struct PendingObject {
    store: Arc<dyn Storage>,
    key: CacheKey,
    status: StatusCode,
    headers: HeaderMap,
    vary: VaryKey,
    freshness: Freshness,
    max_bytes: u64,
    /// Largest object the store takes by writing it to disk as it arrives.
    spool_max: u64,
    declared_len: Option<u64>,
    /// The service's purge generation when the fetch started.
    generation: u64,
}

impl PendingObject {
    pub(super) fn new(
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
            spool_max: ctx.state.store.spool_max(),
            declared_len: plan.declared_len,
            generation,
        }
    }

    /// The stored head of this response with a body of `len` bytes (and no body of its own).
    fn head(&self, len: u64) -> StoredObject {
        let mut headers = self.headers.clone();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        StoredObject {
            surrogate_keys: surrogate_keys(&headers),
            headers: StoredHeaders::from_map(self.status, &headers),
            body: Vec::new().into(),
            vary: self.vary.clone(),
            freshness: self.freshness,
        }
    }

    /// Completes a body written to the disk tier as it arrived; false if a purge since the
    /// fetch started forbids it or the disk failed.
    async fn store_spooled(self, spool: DiskSpool) -> bool {
        let head = self.head(spool.written());
        let (key, generation) = (self.key, self.generation);
        let done = tokio::task::spawn_blocking(move || spool.finish(key, &head, generation)).await;
        match done {
            Ok(Ok(stored)) => stored,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "disk tier: large object not stored");
                false
            }
            Err(_) => false,
        }
    }

    /// Stores the complete body; false if a purge since the fetch started forbids it.
    fn store(self, chunks: Vec<Bytes>, len: u64) -> bool {
        let body = Chunks::keep(chunks, len, self.store.zero_copy_min());
        let mut headers = self.headers;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let surrogate = surrogate_keys(&headers);
        let object = StoredObject {
            surrogate_keys: surrogate,
            headers: StoredHeaders::from_map(self.status, &headers),
            body: ObjectBody::Memory(body),
            vary: self.vary,
            freshness: self.freshness,
        };
        self.store
            .put_if_generation(self.key, Arc::new(object), self.generation)
    }
}

/// Starts the fill of a storable response whose one reader is the caller (a slice of
/// `proxy::slice`): the body the caller streams from, as the fill receives it. A
/// `background` fill is finished even if the caller drops the body (HEAD, 304).
pub(super) fn fill_body(
    ctx: &RequestCtx,
    body: Incoming,
    pending: PendingObject,
    leader: Leader,
    background: bool,
) -> EdgeBody {
    let fetch = &ctx.runtime.config.fetch;
    let limits = FillLimits {
        origin_idle: ctx.svc.pool.idle_timeout(),
        write_timeout: Duration::from_millis(fetch.client_write_timeout_ms),
        abandoned_bytes: fetch.abandoned_fill_bytes,
        background,
        service: ctx.svc.name.clone(),
    };
    let sent = crate::telemetry::origin_bytes(&ctx.svc.name);
    let (fill, reader) = Fill::new(true, sent);
    tokio::spawn(run_fill(body, fill, pending, leader, limits));
    reader.map_or(EdgeBody::Empty, EdgeBody::Fill)
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
/// when dropped: stored, given up, or the task unwound). An object over the memory tier's
/// bound goes to the disk tier as it arrives (`spool`), in batches: only the batch is held.
struct Kept {
    chunks: Vec<Bytes>,
    reserved: u64,
    store: Arc<dyn Storage>,
    spool: Option<DiskSpool>,
    spool_max: u64,
}

impl Kept {
    fn new(store: Arc<dyn Storage>, spool_max: u64) -> Self {
        Self {
            chunks: Vec::new(),
            reserved: 0,
            store,
            spool: None,
            spool_max,
        }
    }

    /// Keeps a chunk (`len` bytes received so far, this chunk included) if the object stays
    /// within `max_bytes` (or, on disk, `spool_max`) and the fill budget has room; else why
    /// the fill stops keeping. `Ok(true)`: what is kept should now go to disk ([`Kept::spill`]).
    fn keep(&mut self, data: &Bytes, len: u64, max_bytes: u64) -> Result<bool, FetchOutcome> {
        let n = data.len() as u64;
        let over_memory = len > max_bytes;
        if over_memory && len > self.spool_max {
            return Err(FetchOutcome::Uncacheable);
        }
        if !self.store.fills().try_reserve(n) {
            return Err(FetchOutcome::NotStored);
        }
        self.reserved += n;
        self.chunks.push(data.clone());
        Ok(over_memory && (self.spool.is_none() || self.reserved >= SPOOL_BATCH))
    }

    /// Writes what is kept to the disk tier (starting the object's file the first time) and
    /// gives its memory back. `Err` when the disk cannot take it: the fill stops keeping.
    async fn spill(&mut self) -> Result<(), FetchOutcome> {
        let chunks = std::mem::take(&mut self.chunks);
        let spool = self.spool.take();
        let store = self.store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut spool = match spool {
                Some(s) => s,
                None => store
                    .spool()
                    .ok_or_else(|| std::io::Error::other("disk tier takes no writes"))??,
            };
            spool.write(&chunks)?;
            Ok::<_, std::io::Error>(spool)
        })
        .await;
        match written {
            Ok(Ok(spool)) => {
                self.spool = Some(spool);
                self.store.fills().release(self.reserved);
                self.reserved = 0;
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "disk tier: large object not stored");
                Err(FetchOutcome::NotStored)
            }
            Err(_) => Err(FetchOutcome::NotStored),
        }
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
    let mut kept = Some(Kept::new(p.store.clone(), p.spool_max));
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
        let mut keeping = kept.as_mut().map(|k| k.keep(&data, len, p.max_bytes));
        if let (Some(Ok(true)), Some(k)) = (&keeping, kept.as_mut()) {
            keeping = Some(k.spill().await.map(|()| false));
        }
        if let Some(Err(outcome)) = keeping {
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
            let stored = match k.spool.is_some() {
                // Written to disk as it arrived: the rest, then the head.
                true => match (k.spill().await, k.spool.take()) {
                    (Ok(()), Some(spool)) => p.store_spooled(spool).await,
                    _ => false,
                },
                false => p.store(std::mem::take(&mut k.chunks), len),
            };
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
