//! Phase 1: validate the request head and pick the service.
//!
//! Everything later phases read about the request's identity is settled here, once: the
//! authority (lowercased host, port dropped: the cache key and the `Host` sent upstream are
//! both that one value), the path (normalised by [`crate::http::path`]; nothing reads the
//! raw path after this, except the access log, which records what the client sent) and the
//! headers (hop-by-hop fields gone; a client's forwarding headers gone unless it is a trusted
//! proxy; the service's extra strip list applied), with which of the fields later phases act
//! on the client sent ([`RequestFields`], one pass over the names instead of a hashed lookup
//! each).

use super::{EdgeState, RequestCtx, RequestId};
use crate::error::ProxyError;
use crate::http::headers::{strip_client_forwarding, strip_hop_by_hop};
use crate::http::path::{normalize, BadPath};
use crate::http::request_fields::{Field, RequestFields};
use crate::runtime::{RuleAction, Runtime};
use firebreak_config::valid_host_name;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method};
use std::net::IpAddr;
use std::sync::Arc;

/// Routes a request: host validated and matched, hop-by-hop headers removed, cache rule found.
pub(crate) fn route(
    state: Arc<EdgeState>,
    runtime: Arc<Runtime>,
    mut parts: Parts,
    client_ip: IpAddr,
    id: RequestId,
    trace: Arc<super::RequestTrace>,
) -> Result<(RequestCtx, Option<RuleAction>), ProxyError> {
    if parts.method == Method::CONNECT || parts.method == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed);
    }
    // One pass over the names: the hashed lookups below are made only for fields present.
    let fields = RequestFields::scan(&parts.headers);
    let host = host_name(&host_value(&parts, fields)?)?;
    let svc = runtime
        .route(&host)
        .cloned()
        .ok_or_else(|| ProxyError::UnknownHost(host.clone()))?;
    crate::tls::check_sni(&runtime, &svc, &parts.extensions, &host)?;
    let raw = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !raw.as_str().starts_with('/') {
        return Err(ProxyError::BadRequest(
            "request target must be an absolute path",
        ));
    }
    let path_and_query = match normalize(&raw) {
        Ok(None) => raw,
        Ok(Some(normal)) => normal,
        Err(BadPath) => return Err(ProxyError::BadRequest("malformed percent-encoding in path")),
    };
    let rule = svc.rule_for(path_and_query.path());
    let mut headers = std::mem::take(&mut parts.headers);
    if fields.has(Field::HopByHop) {
        strip_hop_by_hop(&mut headers);
    }
    if fields.has(Field::AcceptEncoding) {
        crate::http::accept_encoding::normalise(&mut headers);
    }
    if fields.has(Field::Host) {
        headers.remove(header::HOST);
    }
    // A valid tier credential (another edge of the fleet) is checked and removed here; the
    // forwarding headers of a tier request are kept, like a trusted proxy's.
    let tier = if fields.has(Field::TierCredential) {
        state.tier.verify(
            &runtime,
            &mut headers,
            parts.method.as_str(),
            &host,
            path_and_query.as_str(),
        )
    } else {
        crate::tier::RequestTier::Client
    };
    let trusted_proxy = runtime.trusts(client_ip) || tier == crate::tier::RequestTier::Tier;
    let cacheable = parts.method == Method::GET || parts.method == Method::HEAD;
    if !trusted_proxy
        && (fields.has(Field::Forwarding) || (cacheable && fields.has(Field::MethodOverride)))
    {
        strip_client_forwarding(&mut headers, cacheable);
    }
    for name in &svc.strip_headers {
        headers.remove(name);
    }
    Ok((
        RequestCtx {
            state,
            runtime,
            svc,
            id,
            host,
            method: parts.method,
            version: parts.version,
            path_and_query,
            headers,
            fields,
            client_ip,
            trusted_proxy,
            tier,
            trace,
            advertise: crate::store::Advertise::Nothing,
        },
        rule,
    ))
}

/// The authority the client asked for: the request target's (HTTP/2 `:authority`,
/// absolute-form) or else the single `Host` header (RFC 9112 §3.2).
fn host_value(parts: &Parts, fields: RequestFields) -> Result<HeaderValue, ProxyError> {
    if let Some(authority) = parts.uri.authority() {
        return HeaderValue::from_str(authority.as_str())
            .map_err(|_| ProxyError::BadRequest("invalid authority"));
    }
    if !fields.has(Field::Host) {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => Ok(h.clone()),
        (None, _) => Err(ProxyError::BadRequest("missing Host header")),
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
    }
}

/// The normalised authority: lowercased host, port dropped (the edge's own listening port
/// says nothing about the resource; keeping it upstream but not in the key let `Host:
/// localhost:1337` poison what every client gets). Refuses anything that is not a host name or IP literal.
fn host_name(value: &HeaderValue) -> Result<String, ProxyError> {
    let bad = ProxyError::BadRequest("invalid Host header");
    let s = value.to_str().map_err(|_| bad.clone())?;
    let host = if s.starts_with('[') {
        let end = s.find(']').ok_or(bad.clone())?;
        let (h, rest) = s.split_at(end + 1);
        if !(rest.is_empty() || valid_port(rest.strip_prefix(':').unwrap_or("x"))) {
            return Err(bad);
        }
        h
    } else {
        match s.rsplit_once(':') {
            Some((h, port)) if valid_port(port) => h,
            Some(_) => return Err(bad),
            None => s,
        }
    };
    if !valid_host_name(host) {
        return Err(bad);
    }
    Ok(host.to_ascii_lowercase())
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn h(s: &'static str) -> Result<String, ProxyError> {
        host_name(&HeaderValue::from_static(s))
    }

    #[test]
    fn host_parsing() {
        assert_eq!(h("Example.COM:8080").unwrap(), "example.com");
        assert_eq!(h("example.com").unwrap(), "example.com");
        assert_eq!(h("[::1]:80").unwrap(), "[::1]");
        assert_eq!(h("127.0.0.1:1").unwrap(), "127.0.0.1");
        for bad in [
            "",
            "a b",
            "exa/mple",
            "x:y",
            "[::1",
            "[::1]x",
            "a..b",
            "host:123456",
        ] {
            assert!(h(bad).is_err(), "{bad}");
        }
    }
}
