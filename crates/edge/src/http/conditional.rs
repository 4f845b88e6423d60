//! Client conditional requests answered from cache (RFC 9110 §13).

use http::{header, HeaderMap, HeaderValue};
use std::time::SystemTime;

/// Most entity-tags read from one `If-None-Match`.
const MAX_ETAGS: usize = 64;

/// Weak comparison of two entity-tags (RFC 9110 §8.8.3.2): opaque tags equal, `W/` ignored.
pub fn weak_eq(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.trim().strip_prefix("W/").unwrap_or(s.trim()).to_owned();
    strip(a) == strip(b)
}

/// Whether `If-None-Match` matches the stored `ETag` (weak comparison; `*` matches anything).
pub fn none_match(list: &HeaderValue, etag: Option<&HeaderValue>) -> bool {
    let Ok(list) = list.to_str() else {
        return false;
    };
    if list.trim() == "*" {
        return true;
    }
    let Some(etag) = etag.and_then(|e| e.to_str().ok()) else {
        return false;
    };
    list.split(',')
        .take(MAX_ETAGS)
        .any(|tag| weak_eq(tag, etag))
}

/// Decides whether a GET/HEAD for a stored 200 response can be answered `304 Not Modified`
/// (RFC 9110 §13.2.2: `If-None-Match` takes precedence over `If-Modified-Since`).
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        return none_match(inm, stored.get(header::ETAG));
    }
    let Some(ims) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    else {
        return false;
    };
    let last_modified: Option<SystemTime> = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok());
    last_modified.is_some_and(|lm| lm <= ims)
}

/// Whether the request carries conditionals the edge must not forward when it wants a full
/// response to store.
pub fn is_conditional(request: &HeaderMap) -> bool {
    [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ]
    .iter()
    .any(|h| request.contains_key(h))
}

/// Header fields a 304 carries from the stored response (RFC 9110 §15.4.5).
pub const NOT_MODIFIED_FIELDS: &[header::HeaderName] = &[
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

/// The 304 for a stored response with headers `stored`: status 304, `body` (empty), and the
/// fields of [`NOT_MODIFIED_FIELDS`] copied from `stored`.
pub fn not_modified_response<B>(stored: &http::HeaderMap, body: B) -> http::Response<B> {
    let mut r = http::Response::new(body);
    *r.status_mut() = http::StatusCode::NOT_MODIFIED;
    for name in NOT_MODIFIED_FIELDS {
        for v in stored.get_all(name) {
            r.headers_mut().append(name.clone(), v.clone());
        }
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::testutil::headers as h;

    #[test]
    fn if_none_match_weak_comparison() {
        let stored = h(&[("etag", "W/\"v1\"")]);
        assert!(not_modified(&h(&[("if-none-match", "\"v1\"")]), &stored));
        assert!(not_modified(
            &h(&[("if-none-match", "\"x\", W/\"v1\"")]),
            &stored
        ));
        assert!(not_modified(&h(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(&h(&[("if-none-match", "\"v2\"")]), &stored));
    }

    #[test]
    fn if_none_match_takes_precedence_over_if_modified_since() {
        let stored = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let req = h(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!not_modified(&req, &stored));
    }

    #[test]
    fn if_modified_since() {
        let stored = h(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified(
            &h(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        assert!(not_modified(
            &h(&[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "garbage")]),
            &stored
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &h(&[])
        ));
    }
}
