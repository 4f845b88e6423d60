//! Unsafe methods: forward with the streamed body, then invalidate what they changed
//! (RFC 9111 §4.4): the target URI and same-host `Location` / `Content-Location`.

use super::respond::{forwarded, CacheStatus};
use super::RequestCtx;
use crate::body::EdgeBody;
use crate::error::ProxyError;
use crate::store::CacheKey;
use http::{header, Response, Uri};
use hyper::body::Incoming;

pub(crate) async fn forward_unsafe(
    ctx: &RequestCtx,
    body: Incoming,
) -> Result<Response<EdgeBody>, ProxyError> {
    let body = super::request_body(ctx, body)?;
    let resp = ctx.send_upstream(&ctx.upstream(), body).await?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        let store = &ctx.state.store;
        store.remove(&CacheKey::new(
            &ctx.svc.name,
            &ctx.host,
            ctx.path_and_query.as_str(),
        ));
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(target) = resp
                .headers()
                .get(&name)
                .and_then(|v| same_host_target(ctx, v))
            {
                store.remove(&CacheKey::new(&ctx.svc.name, &ctx.host, &target));
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
    Some(
        uri.path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into()),
    )
}
