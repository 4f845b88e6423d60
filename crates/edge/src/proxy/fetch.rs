//! Phase: fetch from the origin, then store. Handles revalidation (304), stale-if-error and
//! the operator's serve-stale safety net, and tees storable bodies to client and cache at once.

use super::respond::{finish, from_object, CacheStatus};
use super::RequestCtx;
use crate::body::{BoxError, EdgeBody, OriginBody, OriginStalled};
use crate::coalesce::{FetchOutcome, Leader};
use crate::error::ProxyError;
use crate::http::conditional::{is_conditional, not_modified, NOT_MODIFIED_FIELDS};
use crate::http::freshness::{evaluate, CachePolicy, Exchange, Storability};
use crate::http::headers::strip_hop_by_hop;
use crate::store::{surrogate_keys, CacheKey, Storage, StoredHeaders, StoredObject, VaryKey};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;

/// Chunks buffered between the tee task and a slow client.
const TEE_CHANNEL_CHUNKS: usize = 16;
/// Bodies up to this size are compacted into one fresh buffer when stored, so that a small
/// object does not pin the larger network buffer its bytes arrived in.
const COMPACT_BELOW: u64 = 1024 * 1024;

/// What the fetch may fall back on.
pub(crate) struct Revalidate {
    /// The stored (stale) variant, if any: source of validators and of stale fallbacks.
    pub stored: Option<Arc<StoredObject>>,
    /// Storability policy for this request.
    pub policy: CachePolicy,
}

/// Fetches the object for a cacheable GET/HEAD and stores it when allowed.
pub(crate) async fn fetch(
    ctx: &RequestCtx,
    key: CacheKey,
    rv: Revalidate,
    leader: Leader,
    status: CacheStatus,
) -> Result<Response<EdgeBody>, ProxyError> {
    let mut up = ctx.upstream();
    // Fetch the whole representation, with our own validators, whatever the client asked.
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
    let request_time = SystemTime::now();
    let result = ctx.send_upstream(&up, None).await;
    let response_time = SystemTime::now();
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            return match usable_on_error(ctx, &rv, response_time) {
                Some((obj, detail)) => {
                    tracing::info!(request_id = %ctx.id, error = %e, "origin failed; serving stale");
                    let st = CacheStatus::fwd("stale").detail(detail);
                    Ok(from_object(ctx, &obj, st, response_time))
                }
                None => Err(e),
            };
        }
    };
    let fwd_status = resp.status();
    let status = status.with_fwd_status(fwd_status);

    if fwd_status == StatusCode::NOT_MODIFIED {
        if let Some(obj) = &rv.stored {
            let exchange = (request_time, response_time);
            let updated = revalidated(ctx, obj, resp.headers(), exchange, &rv.policy);
            return Ok(match updated {
                Some(updated) => {
                    let updated = Arc::new(updated);
                    ctx.state.store.put(key, updated.clone());
                    leader.finish(FetchOutcome::Stored);
                    from_object(ctx, &updated, status.stored(), response_time)
                }
                // The 304 made the response unstorable: serve it this once, drop the copy.
                None => {
                    ctx.state.store.remove(&key);
                    from_object(ctx, obj, status, response_time)
                }
            });
        }
    }
    if is_origin_failure(fwd_status) {
        if let Some((obj, detail)) = usable_on_error(ctx, &rv, response_time) {
            return Ok(from_object(ctx, &obj, status.detail(detail), response_time));
        }
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let storability = evaluate(
        &Exchange {
            method: &Method::GET,
            request: &ctx.headers,
            status: parts.status,
            response: &parts.headers,
            request_time,
            response_time,
        },
        &rv.policy,
    );
    let max_object = ctx.runtime.config.cache.max_object_bytes;
    let declared_len = content_length(&parts.headers);
    let plan = match storability {
        Storability::NoStore(why) => Err(why),
        Storability::Store {
            freshness,
            strip_fields,
        } => match VaryKey::from_exchange(&parts.headers, &ctx.headers) {
            None => Err("vary"),
            Some(_) if declared_len.is_some_and(|l| l > max_object) => Err("too-large"),
            Some(vary) => Ok((freshness, strip_fields, vary)),
        },
    };
    let (freshness, strip_fields, vary) = match plan {
        Err(why) => {
            // Release the waiters at once: they go to the origin in parallel, and so do the
            // next requests for a while — unless this is an origin error: a failing origin
            // keeps the protection of coalescing.
            let outcome = if parts.status.is_server_error() {
                FetchOutcome::NotStored
            } else {
                FetchOutcome::Uncacheable
            };
            leader.finish(outcome);
            let st = status.detail(why);
            let body = if ctx.method == Method::HEAD {
                EdgeBody::Empty
            } else {
                EdgeBody::Origin(OriginBody::new(
                    body,
                    ctx.svc.pool.idle_timeout(),
                    crate::telemetry::origin_bytes(&ctx.svc.name),
                ))
            };
            return Ok(finish(ctx, Response::from_parts(parts, body), st));
        }
        Ok(plan) => plan,
    };

    let mut stored_headers = parts.headers.clone();
    for f in &strip_fields {
        stored_headers.remove(f.as_str());
    }
    // The age is kept in `Freshness`; every response from the copy gets a computed Age.
    stored_headers.remove(header::AGE);
    super::respond::ensure_date(&mut stored_headers);
    let pending = PendingObject {
        store: ctx.state.store.clone(),
        key,
        status: parts.status,
        headers: stored_headers,
        vary,
        freshness,
        max_bytes: max_object,
        declared_len,
    };
    let (tx, rx) = mpsc::channel(TEE_CHANNEL_CHUNKS);
    let client_wants_body = ctx.method != Method::HEAD;
    let conditional_hit = parts.status == StatusCode::OK
        && is_conditional(&ctx.headers)
        && not_modified(&ctx.headers, &pending.headers);
    let status = status.stored().with_ttl(freshness.ttl_secs(response_time));
    let age = HeaderValue::from(freshness.age(response_time).as_secs());
    let idle = ctx.svc.pool.idle_timeout();
    let client = (client_wants_body && !conditional_hit)
        .then(|| (tx, crate::telemetry::origin_bytes(&ctx.svc.name)));
    tokio::spawn(tee(body, idle, client, pending, leader));

    let mut resp = if conditional_hit {
        let mut r = Response::new(EdgeBody::Empty);
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        for name in NOT_MODIFIED_FIELDS {
            for v in parts.headers.get_all(name) {
                r.headers_mut().append(name.clone(), v.clone());
            }
        }
        r
    } else {
        let body = if client_wants_body {
            EdgeBody::Tee(rx)
        } else {
            EdgeBody::Empty
        };
        Response::from_parts(parts, body)
    };
    resp.headers_mut().insert(header::AGE, age);
    Ok(finish(ctx, resp, status))
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
    freshness: crate::http::freshness::Freshness,
    max_bytes: u64,
    declared_len: Option<u64>,
}

/// Reads the origin body once, forwarding each chunk to the client (if any) and keeping it
/// for the cache. The client going away does not stop the fill; an object growing past the
/// size limit stops the fill but not the client; a broken origin body stores nothing.
async fn tee(
    mut body: Incoming,
    idle: std::time::Duration,
    client: Option<(mpsc::Sender<Result<Bytes, BoxError>>, metrics::Counter)>,
    p: PendingObject,
    leader: Leader,
) {
    let (mut client, sent) = match client {
        Some((tx, sent)) => (Some(tx), Some(sent)),
        None => (None, None),
    };
    let mut leader = Some(leader);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0u64;
    let mut storing = true;
    loop {
        let next = tokio::time::timeout(idle, body.frame()).await;
        let frame = match next {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "origin body failed; not stored");
                if let Some(tx) = client.take() {
                    let _ = tx.send(Err(Box::new(e))).await;
                }
                return;
            }
            Err(_) => {
                tracing::warn!("origin body stalled; not stored");
                if let Some(tx) = client.take() {
                    let _ = tx.send(Err(Box::new(OriginStalled(idle)))).await;
                }
                return;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if storing {
            len += data.len() as u64;
            if len > p.max_bytes {
                storing = false;
                chunks = Vec::new();
                if let Some(l) = leader.take() {
                    l.finish(FetchOutcome::Uncacheable);
                }
            } else {
                chunks.push(data.clone());
            }
        }
        if let Some(tx) = &client {
            let n = data.len() as u64;
            if tx.send(Ok(data)).await.is_err() {
                client = None;
            } else if let Some(sent) = &sent {
                sent.increment(n);
            }
        }
        if !storing && client.is_none() {
            return;
        }
    }
    // The client's body ends only after the object is stored (below, when `client` drops),
    // so a client that got the whole body finds the object on its next request.
    if !storing || p.declared_len.is_some_and(|d| d != len) {
        return;
    }
    let body = if len <= COMPACT_BELOW && !chunks.is_empty() {
        let mut buf = BytesMut::with_capacity(len as usize);
        for c in &chunks {
            buf.extend_from_slice(c);
        }
        vec![buf.freeze()]
    } else {
        chunks
    };
    let mut headers = p.headers;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let surrogate = surrogate_keys(&headers);
    let headers = StoredHeaders::from_map(&headers);
    let object = StoredObject {
        status: p.status,
        surrogate_keys: surrogate,
        headers,
        body,
        body_len: len,
        vary: p.vary,
        freshness: p.freshness,
    };
    p.store.put(p.key, Arc::new(object));
    if let Some(l) = leader.take() {
        l.finish(FetchOutcome::Stored);
    }
}
