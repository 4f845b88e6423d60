//! The one place that decides what a client sees when a request fails.

use crate::body::EdgeBody;
use http::{header, HeaderValue, Response, StatusCode};
use std::sync::Arc;

/// Why the edge could not produce the response the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed (bad or missing Host, forbidden method, ...).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No service answers for this host and there is no default service.
    #[error("no service is configured for host `{0}`")]
    UnknownHost(String),
    /// The request's host selects another service than its TLS connection's server name
    /// (SNI) did: the client must open a connection for this host.
    #[error("this connection was opened for another service than host `{0}`")]
    Misdirected(String),
    /// Every origin server tried refused or could not be reached.
    #[error("origin unreachable: {0}")]
    OriginUnreachable(String),
    /// The origin did not answer in time.
    #[error("origin timed out")]
    OriginTimeout,
    /// The origin's response was malformed or the connection broke.
    #[error("invalid response from origin: {0}")]
    OriginBadResponse(String),
    /// `Cache-Control: only-if-cached` and nothing usable is stored.
    #[error("not in cache (only-if-cached)")]
    NotCached,
    /// The method is not proxied.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request body is longer than `limits.max_request_body_bytes`.
    #[error("request body too large")]
    PayloadTooLarge,
    /// An injected fault (`action = "status"`) answered with this status (a drill).
    #[error("injected fault (drill)")]
    Fault(StatusCode),
    /// The service is disabled by the named kill switch.
    #[error("service disabled by switch `{0}`")]
    SwitchedOff(Arc<str>),
    /// Request handling panicked; the panic was caught.
    #[error("internal error")]
    Panic,
    /// The client's request body went silent for longer than
    /// `fetch.request_body_idle_timeout_ms` (the client's fault: the origin is not blamed).
    #[error("request body timed out")]
    RequestTimeout,
    /// Every origin server of the pool has its circuit breaker open: answered at once,
    /// with `Retry-After` (seconds until the next probe may go).
    #[error("origin unavailable (circuit breaker open)")]
    OriginUnavailable {
        /// Seconds until a server of the pool may be probed again.
        retry_after_s: u64,
    },
    /// The client's address is over its request rate; retry after this many seconds.
    #[error("too many requests from this address")]
    RateLimited(u64),
    /// The edge has too many requests in flight; retry after this many seconds.
    #[error("the edge is overloaded")]
    Overloaded(u64),
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost(_) | ProxyError::Misdirected(_) => {
                StatusCode::MISDIRECTED_REQUEST
            }
            ProxyError::OriginUnreachable(_) | ProxyError::OriginBadResponse(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::OriginTimeout | ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Fault(status) => *status,
            ProxyError::SwitchedOff(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Panic => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::OriginUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// This cache's `Cache-Status` entry for the error (RFC 9211).
    pub fn cache_status(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "firebreak; detail=bad-request",
            ProxyError::UnknownHost(_) => "firebreak; detail=unknown-host",
            ProxyError::Misdirected(_) => "firebreak; detail=misdirected",
            ProxyError::MethodNotAllowed => "firebreak; detail=method-not-allowed",
            ProxyError::PayloadTooLarge => "firebreak; detail=payload-too-large",
            ProxyError::NotCached => "firebreak; fwd=miss; detail=only-if-cached",
            ProxyError::OriginUnreachable(_) => "firebreak; fwd=miss; detail=origin-unreachable",
            ProxyError::OriginTimeout => "firebreak; fwd=miss; detail=origin-timeout",
            ProxyError::OriginBadResponse(_) => "firebreak; fwd=miss; detail=origin-bad-response",
            ProxyError::Fault(_) => "firebreak; detail=fault",
            ProxyError::SwitchedOff(_) => "firebreak; detail=switch",
            ProxyError::Panic => "firebreak; detail=internal-error",
            ProxyError::RequestTimeout => "firebreak; detail=request-body-timeout",
            ProxyError::OriginUnavailable { .. } => {
                "firebreak; fwd=miss; detail=origin-breaker-open"
            }
            ProxyError::RateLimited(_) => "firebreak; detail=rate-limited",
            ProxyError::Overloaded(_) => "firebreak; detail=overloaded",
        }
    }

    /// A short error page naming the request id, so that a user's report can be traced.
    pub fn to_response(&self, request_id: &str) -> Response<EdgeBody> {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or("Error");
        let detail = match self {
            // Origin details stay in the logs; clients get the category only.
            ProxyError::OriginUnreachable(_) => {
                "The origin server could not be reached.".to_owned()
            }
            ProxyError::OriginBadResponse(_) => {
                "The origin server sent an invalid response.".to_owned()
            }
            other => html_escape(&other.to_string()),
        };
        let body = format!(
            "<!doctype html><html><head><title>{code} {reason}</title></head><body>\
             <h1>{code} {reason}</h1><p>{detail}</p><p>Request id: {request_id}</p>\
             <hr><p>firebreak</p></body></html>\n",
            code = status.as_u16(),
        );
        let mut resp = Response::new(EdgeBody::full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            &crate::http::headers::CACHE_STATUS,
            HeaderValue::from_static(self.cache_status()),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-request-id", v);
        }
        if let ProxyError::OriginUnavailable { retry_after_s } = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        if matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::MethodNotAllowed | ProxyError::RequestTimeout
        ) {
            // A client that sent one malformed request is not trusted with the next one on
            // the same connection (HTTP/1.1; hyper drops the field on HTTP/2).
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        match self {
            ProxyError::Fault(_) => {
                h.insert("x-firebreak-fault", HeaderValue::from_static("status"));
            }
            ProxyError::SwitchedOff(name) => {
                if let Ok(v) = HeaderValue::from_str(name) {
                    h.insert("x-firebreak-switch", v);
                }
            }
            _ => {}
        }
        if let ProxyError::RateLimited(s) | ProxyError::Overloaded(s) = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*s));
        }
        if matches!(self, ProxyError::MethodNotAllowed) {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
            );
        }
        resp
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
