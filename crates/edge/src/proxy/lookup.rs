//! Phase: cache lookup and coalescing for GET and HEAD.

use super::fetch::{fetch, Revalidate};
use super::respond::{from_object, CacheStatus};
use super::{pass, RequestCtx};
use crate::body::EdgeBody;
use crate::coalesce::{FetchOutcome, Join, Leader};
use crate::error::ProxyError;
use crate::http::cache_control::CacheControl;
use crate::http::request_fields::Field;
use crate::runtime::RuleAction;
use crate::store::CacheKey;
use http::{header, Method, Response};
use std::time::{Duration, SystemTime};

/// How many times a request re-reads the cache after waiting for another request's fetch
/// before it fetches on its own (the stored variant may not match it, or be evicted).
const MAX_COALESCE_ROUNDS: usize = 3;

/// Serves a cacheable GET/HEAD: fresh hit, stale-while-revalidate, or a (coalesced) fetch.
///
/// Every path but the memory hit awaits a boxed future: a future is as large as its largest
/// state and is copied whole each time it moves (into hyper's dispatcher, into
/// `catch_unwind`), so keeping the fetch, slice and disk states out of it keeps the hit
/// path's request future small (with the boxed serve phase: 0.75 KiB, from 5.5; ARCHITECTURE.md).
pub(crate) async fn cached(
    ctx: &RequestCtx,
    rule: Option<RuleAction>,
) -> Result<Response<EdgeBody>, ProxyError> {
    if let Some(size) = ctx
        .svc
        .slice_bytes
        .filter(|_| !super::slice::stored_whole(ctx))
    {
        return Box::pin(super::slice::serve(ctx, rule, size)).await;
    }
    let key = cache_key(ctx, ctx.path_and_query.as_str());
    let mut policy = ctx.svc.policy;
    if let Some(RuleAction::ForceTtl(ttl)) = rule {
        policy.forced_ttl = Some(ttl);
    }
    let coalesce_wait = Duration::from_millis(ctx.runtime.config.cache.coalesce_wait_ms);
    // Set while this request waits for another's fetch: a response obtained from the origin
    // after that moment is as good as one this request fetched itself, even if it is stale
    // on arrival (no-cache, Age past max-age), so waiters never queue up to revalidate it.
    let mut waited_since: Option<SystemTime> = None;
    for _ in 0..MAX_COALESCE_ROUNDS {
        let now = SystemTime::now();
        let variants = ctx.state.store.get(&key);
        let mut stored = variants
            .as_ref()
            .and_then(|v| v.select(&ctx.headers))
            .cloned();
        let mut from_disk = false;
        if let Some(obj) = stored.take_if(|o| o.body.file().is_some()) {
            // In the disk tier: a small body is read, checked and promoted now; an unreadable
            // one was dropped and this is a miss.
            from_disk = true;
            stored = Box::pin(ctx.state.store.load(&key, obj)).await;
        }
        if let Some(obj) = &stored {
            let fetched_for_us = waited_since.is_some_and(|t| obj.freshness.response_time() >= t);
            if obj.freshness.ttl(now).is_some() || fetched_for_us {
                let mut status = CacheStatus::hit().collapsed(waited_since.is_some());
                if from_disk {
                    status = status.detail("disk");
                }
                return Ok(from_object(ctx, obj, status, now));
            }
            if !obj.freshness.stale_while_revalidate().is_zero()
                && !ctx.svc.switches.no_stale
                && obj.freshness.can_serve_while_revalidating(now)
            {
                revalidate_in_background(ctx, &key, obj.clone(), policy);
                let status = CacheStatus::hit().detail("stale-while-revalidate");
                return Ok(from_object(ctx, obj, status, now));
            }
        }
        if CacheControl::parse_all(ctx.headers.get_all(header::CACHE_CONTROL)).only_if_cached {
            return Err(ProxyError::NotCached);
        }
        let reason = match (&stored, &variants) {
            (Some(_), _) => "stale",
            (None, Some(_)) => "vary-miss",
            (None, None) => "miss",
        };
        // A HEAD or a range request for something not stored is forwarded as it is: filling
        // the cache is left to the next full GET.
        if stored.is_none() && (ctx.method == Method::HEAD || ctx.fields.has(Field::Range)) {
            return Box::pin(pass(
                ctx,
                None,
                CacheStatus::fwd(reason).detail("not-filled"),
            ))
            .await;
        }
        let leader = match ctx.state.coalescer.join(&key) {
            Join::Leader(leader) => leader,
            Join::Pass => Leader::detached(),
            Join::Waiter(waiter) => {
                crate::telemetry::coalesced(&ctx.svc.name);
                let outcome = Box::pin(waiter.wait(coalesce_wait)).await;
                match outcome {
                    FetchOutcome::Stored => {
                        waited_since.get_or_insert(now);
                        continue;
                    }
                    // Uncacheable, failed or too slow: go to the origin at once, in parallel.
                    FetchOutcome::NotStored | FetchOutcome::Uncacheable | FetchOutcome::Pending => {
                        Leader::detached()
                    }
                }
            }
        };
        let revalidate = Revalidate {
            stored,
            policy,
            background: false,
        };
        return Box::pin(fetch(
            ctx,
            key,
            revalidate,
            leader,
            CacheStatus::fwd(reason),
        ))
        .await;
    }
    let revalidate = Revalidate {
        stored: None,
        policy,
        background: false,
    };
    Box::pin(fetch(
        ctx,
        key,
        revalidate,
        Leader::detached(),
        CacheStatus::fwd("miss"),
    ))
    .await
}

/// The cache key of `path_and_query` (normalised) on the request's host. A service's
/// `cache_key_headers` are not part of it: they select among the URL's variants, as if every
/// response named them in `Vary` (see `VaryKey::from_exchange_with`), so a purge by URL and
/// an invalidation reach every copy of the URL.
pub(crate) fn cache_key(ctx: &RequestCtx, path_and_query: &str) -> CacheKey {
    CacheKey::new(&ctx.svc.name, &ctx.host, path_and_query)
}

/// stale-while-revalidate: one background refresh per key; concurrent stale hits do not
/// start more (the coalescer already has a leader for the key).
fn revalidate_in_background(
    ctx: &RequestCtx,
    key: &CacheKey,
    stored: std::sync::Arc<crate::store::StoredObject>,
    policy: crate::http::freshness::CachePolicy,
) {
    let Join::Leader(leader) = ctx.state.coalescer.join(key) else {
        return;
    };
    let mut ctx = ctx.clone();
    ctx.method = Method::GET;
    // The background refresh reports to nobody's log line.
    ctx.trace = Default::default();
    let key = key.clone();
    tokio::spawn(async move {
        let revalidate = Revalidate {
            stored: Some(stored),
            policy,
            background: true,
        };
        // The response is dropped: the fetch stores what it gets on its own.
        let _ = fetch(&ctx, key, revalidate, leader, CacheStatus::fwd("stale")).await;
    });
}
