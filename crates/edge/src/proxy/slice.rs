//! Phase (sliced services): cache lookup, fetch and respond for objects kept in slices, as
//! nginx's slice module and Fastly's segmented caching do.
//!
//! A service with `[service.cache] slice_bytes = S` asks its origin for slice n with
//! `Range: bytes=nS-(nS+S-1)` and stores the 206 under the URL's key plus `\0slice=n`, like any
//! object (same store, same fill, same purge generation, same `Coalescer`: concurrent
//! requests for one slice make one origin request). RFC 9111 §3.3 lets a cache store such
//! a partial response and §3.4 combine stored parts whose validators strongly match: every
//! slice is checked against the *head slice* of the response being built (the first slice
//! the request needs) for the same validator (a strong `ETag`, else `Last-Modified`) and
//! the same total length (`Content-Range: bytes a-b/TOTAL`).
//!
//! - The head slice decides like any response: freshness (revalidated with a conditional
//!   range request when stale), `Age`, `Cache-Status`, 304 to the client's conditionals, 416,
//!   `If-Range`. Other slices are used whatever their own age as long as they match it.
//! - A client's range request needs only the slices it covers; a full request is assembled
//!   from slice 0 on. The body ([`crate::slice_body::SliceBody`]) looks up or fetches slice
//!   n+1 only when slice n has been handed on, so no object is ever held whole.
//! - A slice that does not match the head (the object changed at the origin) purges every
//!   slice of the URL (they carry a surrogate key of their own, [`slices_tag`]); before the
//!   response head is sent the request starts over (at most [`MAX_RESTARTS`] times), after it
//!   the body ends with an error: a client never gets a mix of two versions.
//! - An origin that answers a slice request whole (200, or any other status) has its answer
//!   handled as an ordinary response under the URL's own key; a stored ordinary object is
//!   then served by the ordinary path ([`stored_whole`]). A 416 to slice 0 (an empty object)
//!   is fetched again without `Range` and stored as an ordinary object.
//! - A slice without validator is not stored and never combined: a request it alone covers
//!   is answered from it, any other is forwarded as it came.

use super::fetch::{
    answer_fetched, fetch, fill_body, is_origin_failure, revalidated, storage_plan,
    usable_on_error, ExchangeTimes, PendingObject, Revalidate,
};
use super::respond::{finish, CacheStatus};
use super::{lookup, pass, RequestCtx};
use crate::body::{BoxError, EdgeBody, OriginBody};
use crate::coalesce::{FetchOutcome, Join, Leader};
use crate::error::ProxyError;
use crate::http::cache_control::CacheControl;
use crate::http::conditional::{not_modified, not_modified_response};
use crate::http::freshness::{CachePolicy, Freshness};
use crate::http::headers::strip_hop_by_hop;
use crate::http::range::{self, RangeDecision};
use crate::runtime::RuleAction;
use crate::slice_body::SliceBody;
use crate::store::{CacheKey, PurgeMode, PurgeTarget, Storage, StoredObject};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Most slices of one object: with the smallest slices (64 KiB) 64 GiB, with the largest
/// (64 MiB) 64 TiB. A larger object is forwarded unsliced; the bound keeps the slice number
/// arithmetic and the count of cache entries per URL in reach.
const MAX_SLICES: u64 = 1 << 20;
/// How many times a request starts over when the object changed between its slices before
/// its response head was sent; then it fails (502) rather than loop with a flapping origin.
const MAX_RESTARTS: usize = 2;
/// How many times a slice is re-read from the cache after waiting for another request's
/// fetch of it, before this request fetches it itself.
const MAX_COALESCE_ROUNDS: usize = 3;
/// The response field the slices' own purge tag travels in (first, so the origin's tags
/// never push it past `MAX_SURROGATE_KEYS`); removed from every response.
const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// True when the URL is stored fresh as an ordinary object (its origin answered a slice
/// request whole): the ordinary lookup serves it. Once stale, the URL is asked in slices
/// again, so an object that grew past `cache.max_object_bytes` (or a stored 404 whose URL
/// now has a large object) does not stay on the unsliced path.
pub(crate) fn stored_whole(ctx: &RequestCtx) -> bool {
    let key = lookup::cache_key(ctx, ctx.path_and_query.as_str());
    let Some(variants) = ctx.state.store.get(&key) else {
        return false;
    };
    let now = SystemTime::now();
    variants
        .select(&ctx.headers)
        .is_some_and(|o| o.freshness.ttl(now).is_some())
}

/// The surrogate key every slice of a URL carries, so that one tag purge reaches all of
/// them (purge by URL, invalidation, a changed object). A stable hash (FNV-1a): the tag is
/// stored with the slices and must name the same URL in the next process.
pub(crate) fn slices_tag(host: &str, path_and_query: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes().chain([b'\n']).chain(path_and_query.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fb-slices-{h:016x}")
}

/// Purges every slice of a URL (hard or soft); returns how many were. For purge by URL and
/// invalidation, whether the service slices or not (a tag nobody carries costs a lookup).
pub(crate) fn purge_url(
    store: &dyn Storage,
    service: &str,
    host: &str,
    path_and_query: &str,
    mode: PurgeMode,
    now: SystemTime,
) -> u64 {
    let tag = slices_tag(host, path_and_query);
    store.purge(PurgeTarget::Tag { service, tag: &tag }, mode, now)
}

/// What every slice of one response must agree on (RFC 9111 §3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    total: u64,
    validator: Option<Validator>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Validator {
    ETag(HeaderValue),
    LastModified(HeaderValue),
}

fn validator(h: &HeaderMap) -> Option<Validator> {
    if let Some(etag) = h.get(header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            return Some(Validator::ETag(etag.clone()));
        }
    }
    h.get(header::LAST_MODIFIED)
        .map(|lm| Validator::LastModified(lm.clone()))
}

/// `Content-Range: bytes FIRST-LAST/TOTAL`, checked (`FIRST <= LAST < TOTAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    first: u64,
    last: u64,
    total: u64,
}

fn number(s: &str) -> Option<u64> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn content_range(h: &HeaderMap) -> Option<ContentRange> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let cr = ContentRange {
        first: number(first)?,
        last: number(last)?,
        total: number(total)?,
    };
    (cr.first <= cr.last && cr.last < cr.total).then_some(cr)
}

/// The total of a 416's `Content-Range: bytes */TOTAL`.
fn unsatisfied_total(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    number(v.trim().strip_prefix("bytes */")?)
}

/// The first byte a request asks for, when it says so directly (`bytes=N-...`): the slice
/// holding it is the response's head slice. Anything else starts at slice 0.
fn start_hint(h: &HeaderMap) -> u64 {
    let Some(spec) = h
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return 0;
    };
    if spec.contains(',') {
        return 0;
    }
    spec.split_once('-')
        .and_then(|(first, _)| number(first))
        .unwrap_or(0)
}

/// One request's view of its sliced object: a copy of the request as each slice is asked
/// (GET, no client range or conditionals), the slice size, the policy, the URL's tag.
struct SliceCtx {
    ctx: RequestCtx,
    size: u64,
    policy: CachePolicy,
    tag: String,
}

impl SliceCtx {
    fn new(ctx: &RequestCtx, rule: Option<RuleAction>, size: u64) -> Self {
        let mut inner = ctx.clone();
        inner.method = Method::GET;
        for h in [
            header::RANGE,
            header::IF_RANGE,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
        ] {
            inner.headers.remove(h);
        }
        let mut policy = ctx.svc.policy;
        if let Some(RuleAction::ForceTtl(ttl)) = rule {
            policy.forced_ttl = Some(ttl);
        }
        Self {
            tag: slices_tag(&ctx.host, ctx.path_and_query.as_str()),
            ctx: inner,
            size,
            policy,
        }
    }

    fn key(&self, n: u64) -> CacheKey {
        let pq = format!("{}\u{0}slice={n}", self.ctx.path_and_query);
        lookup::cache_key(&self.ctx, &pq)
    }

    /// Bytes of slice `n` of an object of `total` bytes.
    fn len(&self, n: u64, total: u64) -> u64 {
        total
            .saturating_sub(n.saturating_mul(self.size))
            .min(self.size)
    }

    /// The request for slice `n`, with the validators of a stale stored copy.
    fn request(&self, n: u64, stale: Option<&StoredObject>) -> crate::upstream::UpstreamRequest {
        let mut up = self.ctx.upstream();
        let first = n.saturating_mul(self.size);
        let last = first.saturating_add(self.size - 1);
        if let Ok(v) = HeaderValue::from_str(&format!("bytes={first}-{last}")) {
            up.headers.insert(header::RANGE, v);
        }
        if let Some(obj) = stale {
            if let Some(etag) = obj.headers.get(&header::ETAG) {
                up.headers.insert(header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = obj.headers.get(&header::LAST_MODIFIED) {
                up.headers.insert(header::IF_MODIFIED_SINCE, lm);
            }
        }
        up
    }

    fn stored(&self, key: &CacheKey) -> Option<Arc<StoredObject>> {
        let variants = self.ctx.state.store.get(key)?;
        variants.select(&self.ctx.headers).cloned()
    }

    /// Removes every slice of this URL: the object changed at the origin.
    fn purge(&self) {
        let n = purge_url(
            self.ctx.state.store.as_ref(),
            &self.ctx.svc.name,
            &self.ctx.host,
            self.ctx.path_and_query.as_str(),
            PurgeMode::Hard,
            SystemTime::now(),
        );
        tracing::info!(
            request_id = %self.ctx.id, slices = n,
            "object changed between slices; its slices were purged"
        );
    }

    /// The identity of a stored slice `n`, if it is one: a 206 of that slice holding all
    /// of its bytes (an origin whose body disagreed with its `Content-Range` left a slice
    /// that must not be served).
    fn identity_of(&self, n: u64, obj: &StoredObject) -> Option<Identity> {
        if obj.status() != StatusCode::PARTIAL_CONTENT {
            return None;
        }
        let headers = obj.headers.to_map();
        let cr = content_range(&headers)?;
        let id = Identity {
            total: cr.total,
            validator: validator(&headers),
        };
        let whole = obj.body_len() == self.len(n, cr.total);
        (whole && self.is_slice(n, cr)).then_some(id)
    }

    /// Whether `cr` is exactly slice `n`.
    fn is_slice(&self, n: u64, cr: ContentRange) -> bool {
        let first = n.saturating_mul(self.size);
        let len = self.len(n, cr.total);
        len > 0 && cr.first == first && cr.last == first + len - 1 && obj_count_ok(cr, self.size)
    }
}

fn obj_count_ok(cr: ContentRange, size: u64) -> bool {
    cr.total.div_ceil(size) <= MAX_SLICES
}

/// One slice, checked: its identity, the head fields it came with, and its bytes.
struct Slice {
    n: u64,
    id: Identity,
    headers: HeaderMap,
    freshness: Option<Freshness>,
    status: CacheStatus,
    bytes: SliceBytes,
}

enum SliceBytes {
    Stored(Arc<StoredObject>),
    /// Arriving from the origin (a fill being stored, or passed through unstored).
    Streaming(EdgeBody),
}

impl Slice {
    fn stored(n: u64, id: Identity, obj: Arc<StoredObject>, status: CacheStatus) -> Self {
        Slice {
            n,
            id,
            headers: obj.headers.to_map(),
            freshness: Some(obj.freshness),
            status,
            bytes: SliceBytes::Stored(obj),
        }
    }
}

/// What the origin (or the cache) had for a slice.
enum Got {
    Slice(Slice),
    /// The slice is of another version than the head slice.
    Changed,
    /// 416: the object has `Some(total)` bytes, fewer than the slice's first.
    Unsatisfiable(Option<u64>),
    /// The origin answered whole (a 200 ignoring `Range`, or another status).
    Whole(Whole),
}

struct Whole {
    resp: Response<Incoming>,
    times: ExchangeTimes,
    generation: u64,
    status: CacheStatus,
}

/// Serves a GET/HEAD of a sliced service.
pub(crate) async fn serve(
    ctx: &RequestCtx,
    rule: Option<RuleAction>,
    size: u64,
) -> Result<Response<EdgeBody>, ProxyError> {
    let sc = Arc::new(SliceCtx::new(ctx, rule, size));
    for _ in 0..=MAX_RESTARTS {
        match attempt(ctx, &sc).await? {
            Some(resp) => return Ok(resp),
            None => sc.purge(),
        }
    }
    Err(ProxyError::OriginBadResponse(
        "the object changed between its slices on every attempt".into(),
    ))
}

/// One try at answering: `None` when the object changed before the response head was sent.
async fn attempt(
    ctx: &RequestCtx,
    sc: &Arc<SliceCtx>,
) -> Result<Option<Response<EdgeBody>>, ProxyError> {
    let head_n = head_slice(sc, start_hint(&ctx.headers));
    let head = match resolve(sc, head_n, None).await? {
        Got::Slice(s) => s,
        Got::Changed => return Ok(None),
        Got::Whole(w) => return Ok(Some(answer_whole(ctx, sc.policy, w))),
        Got::Unsatisfiable(total) => return unsatisfiable(ctx, total).await.map(Some),
    };
    if !obj_count_ok(
        ContentRange {
            first: 0,
            last: 0,
            total: head.id.total,
        },
        sc.size,
    ) {
        return pass(
            ctx,
            None,
            CacheStatus::fwd("request").detail("too-many-slices"),
        )
        .await
        .map(Some);
    }
    let total = head.id.total;
    let decision = if ctx.method == Method::HEAD || not_modified(&ctx.headers, &head.headers) {
        RangeDecision::Full
    } else {
        range::decide(&ctx.headers, &head.headers, total)
    };
    let (start, end) = match decision {
        RangeDecision::Full => (0, total),
        RangeDecision::Partial { start, end } => (start, end),
        RangeDecision::Unsatisfiable => (0, 0),
    };
    let first = start / sc.size;
    let last = end.saturating_sub(1) / sc.size;
    let needs_body = ctx.method != Method::HEAD
        && decision != RangeDecision::Unsatisfiable
        && !not_modified(&ctx.headers, &head.headers);
    if needs_body && head.id.validator.is_none() && !(first == head.n && last == head.n) {
        // Parts without a validator cannot be combined (RFC 9111 §3.4).
        return pass(
            ctx,
            None,
            CacheStatus::fwd("request").detail("slice-no-validator"),
        )
        .await
        .map(Some);
    }
    let mut resp = response_head(ctx, sc, &head, decision);
    let status = match head.freshness {
        Some(f) => head.status.clone().with_ttl(f.ttl_secs(SystemTime::now())),
        None => head.status.clone(),
    };
    if !needs_body {
        return Ok(Some(finish(ctx, resp, status)));
    }
    // The first slice of the body is had before the head is sent: a change found now
    // starts the request over instead of cutting a response off.
    let id = head.id.clone();
    let first_slice = if head.n == first {
        head
    } else {
        match resolve(sc, first, Some(&id)).await? {
            Got::Slice(s) => s,
            _ => return Ok(None),
        }
    };
    let cursor = Cursor {
        sc: sc.clone(),
        current: Some(Part::of(sc, first_slice, start, end)),
        id,
        next: first + 1,
        last,
        start,
        end,
    };
    *resp.body_mut() = EdgeBody::Slices(SliceBody::new(cursor.stream(), end - start));
    Ok(Some(finish(ctx, resp, status)))
}

/// The slice holding byte `start`, unless a fresh stored slice 0 shows the object ends
/// before it: then slice 0, whose metadata answers the 416 without asking the origin.
fn head_slice(sc: &SliceCtx, start: u64) -> u64 {
    let n = start / sc.size;
    if n == 0 {
        return 0;
    }
    let slice0 = sc
        .stored(&sc.key(0))
        .filter(|o| o.freshness.ttl(SystemTime::now()).is_some());
    match slice0.and_then(|o| sc.identity_of(0, &o)) {
        Some(id) if start >= id.total => 0,
        _ => n,
    }
}

/// The client's response head, from the head slice: 304, 416, 206 or 200 (HEAD: 200).
fn response_head(
    ctx: &RequestCtx,
    sc: &SliceCtx,
    head: &Slice,
    decision: RangeDecision,
) -> Response<EdgeBody> {
    let mut h = head.headers.clone();
    untag(&mut h, &sc.tag);
    h.remove(header::CONTENT_RANGE);
    let total = head.id.total;
    let mut resp = if not_modified(&ctx.headers, &h) {
        not_modified_response(&h, EdgeBody::Empty)
    } else {
        let (status, len, range) = match decision {
            _ if ctx.method == Method::HEAD => (StatusCode::OK, total, None),
            RangeDecision::Full => (StatusCode::OK, total, None),
            RangeDecision::Partial { start, end } => (
                StatusCode::PARTIAL_CONTENT,
                end - start,
                Some(format!("bytes {start}-{}/{total}", end - 1)),
            ),
            RangeDecision::Unsatisfiable => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                0,
                Some(format!("bytes */{total}")),
            ),
        };
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(v) = range.and_then(|r| HeaderValue::from_str(&r).ok()) {
            h.insert(header::CONTENT_RANGE, v);
        }
        let mut r = Response::new(EdgeBody::Empty);
        *r.status_mut() = status;
        *r.headers_mut() = h;
        r
    };
    if let Some(f) = head.freshness {
        resp.headers_mut().insert(
            header::AGE,
            HeaderValue::from(f.age(SystemTime::now()).as_secs()),
        );
    }
    resp
}

/// The origin answered a slice request whole: an ordinary response for the URL's own key
/// (stored when storable; then [`stored_whole`] sends the next requests the ordinary way).
fn answer_whole(ctx: &RequestCtx, policy: CachePolicy, w: Whole) -> Response<EdgeBody> {
    let key = lookup::cache_key(ctx, ctx.path_and_query.as_str());
    let rv = Revalidate {
        stored: None,
        policy,
        background: false,
    };
    let detail = if w.resp.status() == StatusCode::OK {
        "range-ignored"
    } else {
        "not-sliced"
    };
    answer_fetched(
        ctx,
        (key, w.generation),
        w.resp,
        w.times,
        &rv,
        Leader::detached(),
        w.status.detail(detail),
    )
}

/// The origin answered 416 for the head slice. Past the end of an object: 416 to the client
/// when its own range is unsatisfiable too. Slice 0 of an empty object: fetched again without
/// `Range` and stored as an ordinary object.
async fn unsatisfiable(
    ctx: &RequestCtx,
    total: Option<u64>,
) -> Result<Response<EdgeBody>, ProxyError> {
    if let Some(total) = total {
        let none = HeaderMap::new();
        if ctx.method == Method::GET
            && range::decide(&ctx.headers, &none, total) == RangeDecision::Unsatisfiable
        {
            let mut r = Response::new(EdgeBody::Empty);
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            let status =
                CacheStatus::fwd("miss").with_fwd_status(StatusCode::RANGE_NOT_SATISFIABLE);
            return Ok(finish(ctx, r, status));
        }
    }
    let key = lookup::cache_key(ctx, ctx.path_and_query.as_str());
    let rv = Revalidate {
        stored: None,
        policy: ctx.svc.policy,
        background: false,
    };
    let status = CacheStatus::fwd("miss").detail("not-sliced");
    fetch(ctx, key, rv, Leader::detached(), status).await
}

/// Slice `n` from the cache, or from the origin through the `Coalescer`. `expect` is the
/// head slice's identity (`None`: this is the head slice, judged by its own freshness).
async fn resolve(sc: &SliceCtx, n: u64, expect: Option<&Identity>) -> Result<Got, ProxyError> {
    let key = sc.key(n);
    let wait = Duration::from_millis(sc.ctx.runtime.config.cache.coalesce_wait_ms);
    let mut waited_since: Option<SystemTime> = None;
    for _ in 0..MAX_COALESCE_ROUNDS {
        let now = SystemTime::now();
        let stale = match cached(sc, n, &key, expect, waited_since) {
            Cached::Usable(slice) => return Ok(Got::Slice(*slice)),
            Cached::Stale(obj) => Some(obj),
            Cached::Missing => None,
        };
        if expect.is_none()
            && stale.is_none()
            && CacheControl::parse_all(sc.ctx.headers.get_all(header::CACHE_CONTROL)).only_if_cached
        {
            return Err(ProxyError::NotCached);
        }
        let reason = if stale.is_some() { "stale" } else { "miss" };
        let leader = match sc.ctx.state.coalescer.join(&key) {
            Join::Leader(leader) => match cached(sc, n, &key, expect, waited_since) {
                // Stored by a fetch that ended between the lookup and the join.
                Cached::Usable(slice) => {
                    leader.finish(FetchOutcome::Stored);
                    return Ok(Got::Slice(*slice));
                }
                _ => leader,
            },
            Join::Pass => Leader::detached(),
            Join::Waiter(waiter) => {
                crate::telemetry::coalesced(&sc.ctx.svc.name);
                match waiter.wait(wait).await {
                    FetchOutcome::Stored => {
                        waited_since.get_or_insert(now);
                        continue;
                    }
                    _ => Leader::detached(),
                }
            }
        };
        let status = CacheStatus::fwd(reason);
        return fetch_slice(sc, n, key, stale, expect, leader, status).await;
    }
    let status = CacheStatus::fwd("miss");
    fetch_slice(sc, n, key, None, expect, Leader::detached(), status).await
}

/// What the cache holds for slice `n`.
enum Cached {
    /// Usable as it is: the fresh head slice, or a slice matching the head.
    Usable(Box<Slice>),
    /// The head slice, stale: to revalidate.
    Stale(Arc<StoredObject>),
    /// Nothing, or a slice of another version (fetched again over it).
    Missing,
}

fn cached(
    sc: &SliceCtx,
    n: u64,
    key: &CacheKey,
    expect: Option<&Identity>,
    waited_since: Option<SystemTime>,
) -> Cached {
    let Some(obj) = sc.stored(key) else {
        return Cached::Missing;
    };
    let Some(id) = sc.identity_of(n, &obj) else {
        return Cached::Missing;
    };
    let hit = CacheStatus::hit().collapsed(waited_since.is_some());
    match expect {
        None => {
            // A response fetched while this request waited is its own, even stale on arrival.
            let fetched_for_us = waited_since.is_some_and(|t| obj.freshness.response_time() >= t);
            if obj.freshness.ttl(SystemTime::now()).is_some() || fetched_for_us {
                Cached::Usable(Box::new(Slice::stored(n, id, obj, hit)))
            } else {
                Cached::Stale(obj)
            }
        }
        Some(e) if *e == id => Cached::Usable(Box::new(Slice::stored(n, id, obj, hit))),
        Some(_) => Cached::Missing,
    }
}

/// Asks the origin for slice `n` (conditionally when `stale` is the stored copy).
async fn fetch_slice(
    sc: &SliceCtx,
    n: u64,
    key: CacheKey,
    stale: Option<Arc<StoredObject>>,
    expect: Option<&Identity>,
    leader: Leader,
    status: CacheStatus,
) -> Result<Got, ProxyError> {
    let ctx = &sc.ctx;
    let generation = ctx.state.store.generation(&ctx.svc.name);
    let request_time = SystemTime::now();
    let result = ctx
        .send_upstream(&sc.request(n, stale.as_deref()), None)
        .await;
    let response_time = SystemTime::now();
    let rv = Revalidate {
        stored: stale,
        policy: sc.policy,
        background: false,
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            return match usable_on_error(ctx, &rv, response_time) {
                Some((obj, detail)) => {
                    stale_head(sc, n, obj, CacheStatus::fwd("stale").detail(detail))
                }
                None => Err(e),
            }
        }
    };
    let times = (request_time, response_time);
    let fwd_status = resp.status();
    let status = status.with_fwd_status(fwd_status);
    match fwd_status {
        StatusCode::PARTIAL_CONTENT => {
            partial(sc, n, key, resp, times, generation, expect, leader, status)
        }
        StatusCode::NOT_MODIFIED if rv.stored.is_some() => refreshed(
            sc,
            n,
            key,
            &rv,
            resp.headers(),
            times,
            generation,
            leader,
            status,
        ),
        StatusCode::RANGE_NOT_SATISFIABLE => {
            leader.finish(FetchOutcome::NotStored);
            Ok(Got::Unsatisfiable(unsatisfied_total(resp.headers())))
        }
        s => {
            if is_origin_failure(s) {
                if let Some((obj, detail)) = usable_on_error(ctx, &rv, response_time) {
                    return stale_head(sc, n, obj, status.detail(detail));
                }
            }
            leader.finish(FetchOutcome::NotStored);
            Ok(Got::Whole(Whole {
                resp,
                times,
                generation,
                status,
            }))
        }
    }
}

/// A stale head slice standing in for a failing origin (stale-if-error, safety net).
fn stale_head(
    sc: &SliceCtx,
    n: u64,
    obj: Arc<StoredObject>,
    status: CacheStatus,
) -> Result<Got, ProxyError> {
    match sc.identity_of(n, &obj) {
        Some(id) => Ok(Got::Slice(Slice::stored(n, id, obj, status))),
        None => Err(ProxyError::OriginBadResponse("no usable slice".into())),
    }
}

/// A 304 to the stored head slice's validators: the slice updated and stored again.
#[allow(clippy::too_many_arguments)]
fn refreshed(
    sc: &SliceCtx,
    n: u64,
    key: CacheKey,
    rv: &Revalidate,
    not_modified: &HeaderMap,
    times: ExchangeTimes,
    generation: u64,
    leader: Leader,
    status: CacheStatus,
) -> Result<Got, ProxyError> {
    let ctx = &sc.ctx;
    let Some(obj) = rv.stored.clone() else {
        return Err(ProxyError::OriginBadResponse(
            "304 without a stored slice".into(),
        ));
    };
    let obj = match revalidated(ctx, &obj, not_modified, times, &rv.policy) {
        Some(updated) => {
            let updated = Arc::new(updated);
            if ctx
                .state
                .store
                .put_if_generation(key, updated.clone(), generation)
            {
                leader.finish(FetchOutcome::Stored);
            }
            updated
        }
        // No longer storable: served this once.
        None => {
            ctx.state.store.remove(&key);
            obj
        }
    };
    match sc.identity_of(n, &obj) {
        Some(id) => Ok(Got::Slice(Slice::stored(n, id, obj, status.stored()))),
        None => Err(ProxyError::OriginBadResponse(
            "revalidated slice lost its range".into(),
        )),
    }
}

/// A 206 for slice `n`: checked against the slice asked for and the head's identity, then
/// stored through the fill (when storable and validated) while the caller reads it.
#[allow(clippy::too_many_arguments)]
fn partial(
    sc: &SliceCtx,
    n: u64,
    key: CacheKey,
    resp: Response<Incoming>,
    times: ExchangeTimes,
    generation: u64,
    expect: Option<&Identity>,
    leader: Leader,
    status: CacheStatus,
) -> Result<Got, ProxyError> {
    let ctx = &sc.ctx;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The slice asked for, with a body of its length (a chunked one is held to it by the
    // fill, which stores only what matches the declared length).
    let cr = content_range(&parts.headers)
        .filter(|cr| sc.is_slice(n, *cr))
        .filter(|cr| match parts.headers.get(header::CONTENT_LENGTH) {
            None => true,
            Some(cl) => cl.to_str().ok().and_then(number) == Some(sc.len(n, cr.total)),
        });
    if let Some(cr) = cr {
        let len = HeaderValue::from(sc.len(n, cr.total));
        parts.headers.insert(header::CONTENT_LENGTH, len);
    }
    let Some(cr) = cr else {
        leader.finish(FetchOutcome::NotStored);
        return if expect.is_some() {
            // Another range than asked, mid-object: treated as a change of the object.
            Ok(Got::Changed)
        } else {
            Err(ProxyError::OriginBadResponse(
                "the origin answered another range than the slice asked for".into(),
            ))
        };
    };
    let id = Identity {
        total: cr.total,
        validator: validator(&parts.headers),
    };
    if expect.is_some_and(|e| *e != id) {
        leader.finish(FetchOutcome::NotStored);
        return Ok(Got::Changed);
    }
    let headers = parts.headers.clone();
    // Judged as the whole response it is part of (RFC 9111 §3.3); stored as the 206 it is.
    parts.status = StatusCode::OK;
    let plan = storage_plan(ctx, &parts, times, &sc.policy);
    parts.status = StatusCode::PARTIAL_CONTENT;
    // The head slice is stored even if its reader goes (HEAD, 304, another first slice).
    let keep = expect.is_none();
    let (bytes, freshness, status) = match plan {
        Ok(plan) if id.validator.is_some() => {
            let freshness = plan.freshness;
            tag_first(&mut parts.headers, &sc.tag);
            let pending = PendingObject::new(ctx, key, &parts, plan, generation);
            let body = fill_body(ctx, body, pending, leader, keep);
            (body, Some(freshness), status.stored())
        }
        plan => {
            leader.finish(FetchOutcome::Uncacheable);
            let idle = ctx.svc.pool.idle_timeout();
            let sent = crate::telemetry::origin_bytes(&ctx.svc.name);
            let body = EdgeBody::Origin(OriginBody::new(body, idle, sent));
            let why = plan.err().unwrap_or("slice-no-validator");
            (body, None, status.detail(why))
        }
    };
    Ok(Got::Slice(Slice {
        n,
        id,
        headers,
        freshness,
        status,
        bytes: SliceBytes::Streaming(bytes),
    }))
}

/// Puts the slices' tag first among the surrogate keys (they are bounded in number).
fn tag_first(h: &mut HeaderMap, tag: &str) {
    let theirs: Vec<HeaderValue> = h.get_all(&SURROGATE_KEY).iter().cloned().collect();
    h.remove(&SURROGATE_KEY);
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.append(SURROGATE_KEY, v);
    }
    for v in theirs {
        h.append(SURROGATE_KEY, v);
    }
}

/// Removes the slices' tag from a response's fields.
fn untag(h: &mut HeaderMap, tag: &str) {
    if !h.contains_key(&SURROGATE_KEY) {
        return;
    }
    let theirs: Vec<HeaderValue> = h
        .get_all(&SURROGATE_KEY)
        .iter()
        .filter(|v| v.as_bytes() != tag.as_bytes())
        .cloned()
        .collect();
    h.remove(&SURROGATE_KEY);
    for v in theirs {
        h.append(SURROGATE_KEY, v);
    }
}

/// Bytes `start..end` of a stored slice, from memory or streamed from the disk tier. The
/// one place a stored body is read here.
fn slice_body(obj: &StoredObject, start: u64, end: u64) -> EdgeBody {
    super::respond::object_body(obj, start, end)
}

/// The part of one slice that goes into the response.
struct Part {
    body: EdgeBody,
    /// Bytes of `body` to drop before the part begins.
    skip: u64,
    /// Bytes of the part still to send.
    take: u64,
}

impl Part {
    /// The bytes of `s` within `start..end` of the object.
    fn of(sc: &SliceCtx, s: Slice, start: u64, end: u64) -> Part {
        let base = s.n.saturating_mul(sc.size);
        let len = sc.len(s.n, s.id.total);
        let lo = start.max(base) - base;
        let hi = end.min(base + len).saturating_sub(base).max(lo);
        match s.bytes {
            SliceBytes::Stored(obj) => Part {
                body: {
                    sc.ctx.svc.counters.cache_bytes.increment(hi - lo);
                    slice_body(&obj, lo, hi)
                },
                skip: 0,
                take: hi - lo,
            },
            SliceBytes::Streaming(body) => Part {
                body,
                skip: lo,
                take: hi - lo,
            },
        }
    }

    /// What of `data` belongs to the part.
    fn cut(&mut self, data: Bytes) -> Option<Bytes> {
        let n = data.len() as u64;
        if self.skip >= n {
            self.skip -= n;
            return None;
        }
        let from = self.skip;
        self.skip = 0;
        let to = from.saturating_add(self.take).min(n);
        self.take -= to - from;
        (to > from).then(|| data.slice(from as usize..to as usize))
    }
}

/// A slice did not belong with the others, or the origin stopped answering in slices.
#[derive(Debug, thiserror::Error)]
#[error("slice {0}: the object changed at the origin; response cut off, slices purged")]
struct ObjectChanged(u64);

/// A slice's body ended before its bytes did.
#[derive(Debug, thiserror::Error)]
#[error("slice {0} ended early")]
struct SliceShort(u64);

/// The body's position: the part being sent and the slices still to get.
struct Cursor {
    sc: Arc<SliceCtx>,
    id: Identity,
    current: Option<Part>,
    next: u64,
    last: u64,
    start: u64,
    end: u64,
}

impl Cursor {
    fn stream(self) -> futures_util::stream::BoxStream<'static, Result<Bytes, BoxError>> {
        futures_util::stream::unfold(Some(self), |state| async move {
            let mut cursor = state?;
            match cursor.next_chunk().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(cursor))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BoxError> {
        loop {
            if let Some(part) = &mut self.current {
                if part.take == 0 {
                    self.current = None;
                    continue;
                }
                match part.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(bytes) = frame.into_data().ok().and_then(|d| part.cut(d)) {
                            return Ok(Some(bytes));
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(Box::new(SliceShort(self.next.saturating_sub(1)))),
                }
                continue;
            }
            if self.next > self.last {
                return Ok(None);
            }
            let n = self.next;
            self.next += 1;
            match resolve(&self.sc, n, Some(&self.id)).await {
                Ok(Got::Slice(s)) => {
                    self.current = Some(Part::of(&self.sc, s, self.start, self.end))
                }
                Ok(_) => {
                    self.sc.purge();
                    return Err(Box::new(ObjectChanged(n)));
                }
                Err(e) => return Err(Box::new(e)),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testutil::headers as h;

    #[test]
    fn content_ranges_are_checked() {
        let cr = |v: &str| content_range(&h(&[("content-range", v)]));
        assert_eq!(
            cr("bytes 0-9/100"),
            Some(ContentRange {
                first: 0,
                last: 9,
                total: 100
            })
        );
        assert_eq!(cr("bytes 9-0/100"), None);
        assert_eq!(cr("bytes 0-100/100"), None);
        assert_eq!(cr("bytes */100"), None);
        assert_eq!(cr("items 0-9/100"), None);
        assert_eq!(cr("bytes 0-9/*"), None);
        assert_eq!(cr("bytes 0-99999999999999999999/100"), None);
        assert_eq!(
            unsatisfied_total(&h(&[("content-range", "bytes */100")])),
            Some(100)
        );
    }

    #[test]
    fn the_head_slice_holds_the_first_byte_asked_for() {
        let r = |v: &str| start_hint(&h(&[("range", v)]));
        assert_eq!(r("bytes=5000-6000"), 5000);
        assert_eq!(r("bytes=-500"), 0);
        assert_eq!(r("bytes=1-2,5-6"), 0);
        assert_eq!(r("lines=1-2"), 0);
        assert_eq!(start_hint(&h(&[])), 0);
    }

    #[test]
    fn validators_strong_etag_else_last_modified() {
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(matches!(
            validator(&h(&[("etag", "\"a\""), ("last-modified", lm)])),
            Some(Validator::ETag(_))
        ));
        assert!(matches!(
            validator(&h(&[("etag", "W/\"a\""), ("last-modified", lm)])),
            Some(Validator::LastModified(_))
        ));
        assert_eq!(validator(&h(&[("etag", "W/\"a\"")])), None);
    }

    #[test]
    fn the_tag_goes_first_and_never_out() {
        let mut m = h(&[("surrogate-key", "a b"), ("surrogate-key", "c")]);
        let tag = slices_tag("h", "/x?y");
        tag_first(&mut m, &tag);
        let keys = crate::store::surrogate_keys(&m);
        assert_eq!(&*keys[0], tag.as_str());
        untag(&mut m, &tag);
        let left: Vec<_> = m.get_all("surrogate-key").iter().collect();
        assert_eq!(left, ["a b", "c"]);
        assert_ne!(slices_tag("h", "/x"), slices_tag("h2", "/x"));
        assert_eq!(slices_tag("h", "/x"), slices_tag("h", "/x"));
    }

    #[test]
    fn a_part_cuts_its_bytes_out_of_the_chunks() {
        let mut p = Part {
            body: EdgeBody::Empty,
            skip: 3,
            take: 4,
        };
        assert_eq!(p.cut(Bytes::from_static(b"ab")), None);
        assert_eq!(p.cut(Bytes::from_static(b"cdef")).unwrap(), "def");
        assert_eq!(p.cut(Bytes::from_static(b"ghij")).unwrap(), "g");
        assert_eq!(p.take, 0);
    }
}
