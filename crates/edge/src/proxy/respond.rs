//! Phase: respond. Builds client responses from stored objects (full, 304, 206, 416) and
//! applies the finishing touches every response gets (`Cache-Status`, `Via`, `Date`, header
//! rules, removal of hop-by-hop and CDN-targeted fields).

use super::RequestCtx;
use crate::body::EdgeBody;
use crate::body::OriginBody;
use crate::http::conditional::{not_modified, not_modified_response};
use crate::http::freshness::{CDN_CACHE_CONTROL, SURROGATE_CONTROL};
use crate::http::headers::{append_via, strip_hop_by_hop, via_value, CACHE_STATUS};
use crate::http::range::{self, RangeDecision};
use crate::http::request_fields::Field;
use crate::store::{HitFields, ObjectBody, StoredObject};
use crate::telemetry::{self, CacheResult};
use firebreak_config::HeaderOp;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;
use std::time::SystemTime;

/// This cache's entry in `Cache-Status` (RFC 9211).
#[derive(Debug, Clone, Default)]
pub struct CacheStatus {
    /// `Some(reason)` when forwarded (`fwd=`), `None` for a hit.
    fwd: Option<&'static str>,
    fwd_status: Option<StatusCode>,
    ttl: Option<i64>,
    stored: bool,
    collapsed: bool,
    detail: Option<&'static str>,
}

impl CacheStatus {
    /// Served from cache.
    pub fn hit() -> Self {
        Self::default()
    }
    /// Forwarded, with RFC 9211 reason (`bypass`, `method`, `uri-miss`, `vary-miss`, `miss`,
    /// `request`, `stale`).
    pub fn fwd(reason: &'static str) -> Self {
        Self {
            fwd: Some(reason),
            ..Self::default()
        }
    }
    /// Records the origin's status.
    pub fn with_fwd_status(mut self, s: StatusCode) -> Self {
        if self.fwd.is_some() {
            self.fwd_status = Some(s);
        }
        self
    }
    /// Records remaining freshness.
    pub fn with_ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// The response was stored.
    pub fn stored(mut self) -> Self {
        self.stored = true;
        self
    }
    /// This request waited for another request's fetch.
    pub fn collapsed(mut self, yes: bool) -> Self {
        self.collapsed = yes;
        self
    }
    /// Implementation-specific detail.
    pub fn detail(mut self, d: &'static str) -> Self {
        self.detail = Some(d);
        self
    }

    /// The metric/log category of this outcome.
    pub fn result(&self) -> CacheResult {
        let stale_detail = matches!(
            self.detail,
            Some("stale-while-revalidate" | "stale-if-error" | "origin-failure-safety-net")
        );
        match self.fwd {
            None if stale_detail => CacheResult::Stale,
            None => CacheResult::Hit,
            Some(_) if stale_detail => CacheResult::Stale,
            Some("stale") if self.fwd_status == Some(StatusCode::NOT_MODIFIED) => {
                CacheResult::Revalidated
            }
            Some("miss" | "vary-miss" | "stale") => CacheResult::Miss,
            Some(_) => CacheResult::Pass,
        }
    }

    fn render(&self) -> Option<HeaderValue> {
        // Written byte by byte (no `fmt`): this runs for every response.
        let mut s = bytes::BytesMut::with_capacity(64);
        let mut num = itoa::Buffer::new();
        s.extend_from_slice(b"firebreak");
        match self.fwd {
            None => s.extend_from_slice(b"; hit"),
            Some(r) => {
                s.extend_from_slice(b"; fwd=");
                s.extend_from_slice(r.as_bytes());
                if let Some(st) = self.fwd_status {
                    s.extend_from_slice(b"; fwd-status=");
                    s.extend_from_slice(num.format(st.as_u16()).as_bytes());
                }
            }
        }
        if self.stored {
            s.extend_from_slice(b"; stored");
        }
        if self.collapsed {
            s.extend_from_slice(b"; collapsed");
        }
        if let Some(t) = self.ttl {
            s.extend_from_slice(b"; ttl=");
            s.extend_from_slice(num.format(t).as_bytes());
        }
        if let Some(d) = self.detail {
            s.extend_from_slice(b"; detail=");
            s.extend_from_slice(d.as_bytes());
        }
        HeaderValue::from_maybe_shared(s.freeze()).ok()
    }
}

/// A response for `ctx` from a stored object: 304 if the client's conditionals match, 206/416
/// for a range of a stored 200, else the full object (headers only for HEAD).
pub(crate) fn from_object(
    ctx: &RequestCtx,
    obj: &StoredObject,
    status: CacheStatus,
    now: SystemTime,
) -> Response<EdgeBody> {
    let status = status.with_ttl(obj.freshness.ttl_secs(now));
    let age = HeaderValue::from(obj.freshness.age(now).as_secs());
    let head = ctx.method == Method::HEAD;
    // A hit from the disk tier was promoted just now and may well be evicted before it is
    // asked again: it parses, and its next hit (from memory) makes the ready map.
    let (stored, slots) = match status.detail {
        Some("disk") => (obj.headers.to_map(), HitFields::default()),
        _ => obj.headers.for_response(ctx.advertise),
    };
    let ok = obj.status() == StatusCode::OK;
    let mut resp = if ok
        && ctx.fields.has(Field::Conditional)
        && not_modified(&ctx.headers, &stored)
    {
        not_modified_response(&stored, EdgeBody::Empty)
    } else {
        let decision = if ok && !head && ctx.fields.has(Field::Range) {
            range::decide(&ctx.headers, &stored, obj.body_len())
        } else {
            RangeDecision::Full
        };
        let mut r = Response::new(EdgeBody::Empty);
        *r.headers_mut() = stored;
        match decision {
            RangeDecision::Full => {
                *r.status_mut() = obj.status();
                if !head {
                    ctx.svc.counters.cache_bytes.increment(obj.body_len());
                    *r.body_mut() = object_body(obj, 0, obj.body_len());
                }
            }
            RangeDecision::Partial { start, end } => {
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = r.headers_mut();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
                if let Ok(v) =
                    HeaderValue::from_str(&format!("bytes {start}-{}/{}", end - 1, obj.body_len()))
                {
                    h.insert(header::CONTENT_RANGE, v);
                }
                ctx.svc.counters.cache_bytes.increment(end - start);
                *r.body_mut() = object_body(obj, start, end);
            }
            RangeDecision::Unsatisfiable => {
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                let h = r.headers_mut();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", obj.body_len())) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
        }
        r
    };
    resp.headers_mut().insert(header::AGE, age);
    finish_hit(ctx, resp, status, slots)
}

/// Body bytes `start..end` of a stored object: shared chunks from memory (no copy), or a
/// reader of its file in the disk tier.
pub(crate) fn object_body(obj: &StoredObject, start: u64, end: u64) -> EdgeBody {
    match &obj.body {
        ObjectBody::Memory(chunks) if start == 0 && end >= obj.body_len() => {
            EdgeBody::chunks(chunks.iter().cloned())
        }
        ObjectBody::Memory(_) => EdgeBody::chunks(obj.body_range(start, end)),
        ObjectBody::Disk(file) => EdgeBody::disk(file.clone(), start, end),
    }
}

/// Finishing touches for every response leaving the edge. Hop-by-hop fields must already be
/// gone: stored objects are stripped when stored, origin responses by [`forwarded`].
pub(crate) fn finish(
    ctx: &RequestCtx,
    resp: Response<EdgeBody>,
    status: CacheStatus,
) -> Response<EdgeBody> {
    finish_hit(ctx, resp, status, HitFields::default())
}

/// [`finish`] for a map whose `Via` and `Cache-Status` may be slots made for a hit
/// ([`HitFields`]): a slot is set, the origin's field appended to.
fn finish_hit(
    ctx: &RequestCtx,
    mut resp: Response<EdgeBody>,
    status: CacheStatus,
    slots: HitFields,
) -> Response<EdgeBody> {
    let h = resp.headers_mut();
    // Surrogate-Control is meant for this cache only; CDN-Cache-Control also targets any CDN
    // downstream (RFC 9213 §3), so it is forwarded unless the service strips it.
    if !slots.no_surrogate_control {
        static SURROGATE: HeaderName = HeaderName::from_static(SURROGATE_CONTROL);
        h.remove(&SURROGATE);
    }
    if ctx.svc.strip_cdn_cache_control {
        static CDN: HeaderName = HeaderName::from_static(CDN_CACHE_CONTROL);
        h.remove(&CDN);
    }
    // `Date` is added by hyper when missing (cached once a second).
    if slots.via {
        h.insert(header::VIA, via_value(ctx.version));
    } else {
        append_via(h, ctx.version);
    }
    match status.render() {
        Some(v) if slots.cache_status => {
            h.insert(&CACHE_STATUS, v);
        }
        Some(v) => {
            h.append(&CACHE_STATUS, v);
        }
        None if slots.cache_status => {
            h.remove(&CACHE_STATUS);
        }
        None => {}
    }
    let result = status.result();
    if result == CacheResult::Stale {
        telemetry::stale_served(&ctx.svc.name, status.detail.unwrap_or("stale"));
    }
    for rule in &ctx.svc.header_rules {
        match (rule.op, &rule.value) {
            (HeaderOp::Set, Some(v)) => {
                h.insert(rule.name.clone(), v.clone());
            }
            (HeaderOp::Add, Some(v)) => {
                h.append(rule.name.clone(), v.clone());
            }
            (HeaderOp::Remove, _) => {
                h.remove(&rule.name);
            }
            _ => {}
        }
    }
    ctx.trace.set_result(result);
    resp
}

/// Adds `Date` when the origin sent none (RFC 9110 §6.6.1: an origin with a clock must; a
/// proxy adds one when it is missing).
pub(crate) fn ensure_date(h: &mut HeaderMap) {
    if !h.contains_key(header::DATE) {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
            h.insert(header::DATE, v);
        }
    }
}

/// An origin response passed through to the client (not from the cache): hop-by-hop fields
/// removed, body streamed with the pool's idle timeout, finishing touches applied.
pub(crate) fn forwarded(
    ctx: &RequestCtx,
    resp: Response<Incoming>,
    status: CacheStatus,
) -> Response<EdgeBody> {
    let idle = ctx.svc.pool.idle_timeout();
    let sent = telemetry::origin_bytes(&ctx.svc.name);
    let mut resp = resp.map(|b| EdgeBody::Origin(OriginBody::new(b, idle, sent)));
    strip_hop_by_hop(resp.headers_mut());
    finish(ctx, resp, status)
}
