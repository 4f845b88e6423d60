//! Unsafe methods: forward with the streamed body, then invalidate what they changed
//! (RFC 9111 §4.4): the target URI and same-host `Location` / `Content-Location`.
//!
//! "Unsafe" is every method not known to be safe (RFC 9110 §9.2.1: GET, HEAD, OPTIONS,
//! TRACE), so extension methods the edge does not recognise (`PROPFIND`, `LINK`, ...)
//! invalidate too: §4.4 covers "methods whose safety is unknown".

use super::respond::{forwarded, CacheStatus};
use super::RequestCtx;
use crate::body::EdgeBody;
use crate::client_body::ClientBody;
use crate::error::ProxyError;
use crate::store::PurgeMode;
use http::{header, Method, Response, Uri};

/// Safe methods (RFC 9110 §9.2.1). Every other method, including extension methods, is
/// treated as unsafe and invalidates on success (RFC 9111 §4.4).
pub(crate) fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

pub(crate) async fn forward_unsafe(
    ctx: &RequestCtx,
    body: ClientBody,
) -> Result<Response<EdgeBody>, ProxyError> {
    let body = super::request_body(ctx, body)?;
    let resp = ctx.send_upstream(&ctx.upstream(), body).await?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        let store = &ctx.state.store;
        store.remove(&super::lookup::cache_key(ctx, ctx.path_and_query.as_str()));
        let (pq, now) = (ctx.path_and_query.as_str(), std::time::SystemTime::now());
        super::slice::purge_url(
            store.as_ref(),
            &ctx.svc.name,
            &ctx.host,
            pq,
            PurgeMode::Hard,
            now,
        );
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(target) = resp
                .headers()
                .get(&name)
                .and_then(|v| same_host_target(ctx, v))
            {
                store.remove(&super::lookup::cache_key(ctx, &target));
                super::slice::purge_url(
                    store.as_ref(),
                    &ctx.svc.name,
                    &ctx.host,
                    &target,
                    PurgeMode::Hard,
                    now,
                );
            }
        }
    }
    Ok(forwarded(
        ctx,
        resp,
        CacheStatus::fwd("method").with_fwd_status(status),
    ))
}

/// The path-and-query of a `Location`-like value if it points at the request's host.
fn same_host_target(ctx: &RequestCtx, value: &http::HeaderValue) -> Option<String> {
    let uri: Uri = value.to_str().ok()?.trim().parse().ok()?;
    if let Some(authority) = uri.authority() {
        if !authority.host().eq_ignore_ascii_case(&ctx.host) {
            return None;
        }
    } else if !uri.path().starts_with('/') {
        return None;
    }
    let root = http::uri::PathAndQuery::from_static("/");
    let pq = uri.path_and_query().unwrap_or(&root);
    // Keys hold normalised paths (see `crate::http::path`).
    match crate::http::path::normalize(pq).ok()? {
        Some(normal) => Some(normal.as_str().to_owned()),
        None => Some(pq.as_str().to_owned()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 9111 §4.4: "A cache MUST invalidate the target URI when it receives a non-error
    /// status code in response to an unsafe request method (including methods whose safety
    /// is unknown)"; RFC 9110 §9.2.1: GET, HEAD, OPTIONS and TRACE are the safe ones.
    #[test]
    fn only_the_rfc_9110_safe_methods_do_not_invalidate() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(is_safe(&Method::from_bytes(m.as_bytes()).unwrap()), "{m}");
        }
        for m in [
            "POST", "PUT", "DELETE", "PATCH", "PROPFIND", "MKCOL", "LINK", "PURGEX", "get",
        ] {
            assert!(!is_safe(&Method::from_bytes(m.as_bytes()).unwrap()), "{m}");
        }
    }
}
