//! Property tests: every parser of untrusted header values terminates without panicking on
//! arbitrary input, and its results stay within their documented bounds.

use super::cache_control::{CacheControl, DELTA_SECONDS_MAX};
use super::conditional::not_modified;
use super::freshness::{evaluate, CachePolicy, Exchange, Storability};
use super::headers::strip_hop_by_hop;
use super::range::{decide, RangeDecision};
use crate::store::VaryKey;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use proptest::prelude::*;
use std::time::{Duration, SystemTime};

/// Header values as a hostile peer could send them (any bytes hyper accepts in a value).
fn value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        "[ -~]{0,80}",
        "(max-age|s-maxage|no-cache|private|stale-if-error|stale-while-revalidate|bytes|W/)?[=,\"\\\\ 0-9a-z*-]{0,40}",
    ]
    .prop_filter_map("valid header value", |s| HeaderValue::from_str(&s).ok())
}

fn map(names: &'static [&'static str]) -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((0..names.len(), value()), 0..8).prop_map(move |pairs| {
        let mut h = HeaderMap::new();
        for (i, v) in pairs {
            if let Some(name) = names.get(i) {
                h.append(HeaderName::from_static(name), v);
            }
        }
        h
    })
}

const RESPONSE: &[&str] = &[
    "cache-control",
    "cdn-cache-control",
    "surrogate-control",
    "expires",
    "date",
    "age",
    "last-modified",
    "etag",
    "vary",
    "set-cookie",
];
const REQUEST: &[&str] = &[
    "cache-control",
    "authorization",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "accept-encoding",
    "connection",
];

proptest! {
    #[test]
    fn cache_control_parsing_is_total(s in "\\PC{0,200}") {
        let cc = CacheControl::parse_str(&s);
        for v in [cc.max_age, cc.s_maxage, cc.stale_if_error, cc.stale_while_revalidate].into_iter().flatten() {
            prop_assert!(v <= DELTA_SECONDS_MAX);
        }
    }

    #[test]
    fn range_decisions_stay_inside_the_body(req in map(REQUEST), stored in map(RESPONSE), len in 0u64..10_000) {
        match decide(&req, &stored, len) {
            RangeDecision::Partial { start, end } => prop_assert!(start < end && end <= len),
            RangeDecision::Full | RangeDecision::Unsatisfiable => {}
        }
    }

    #[test]
    fn freshness_evaluation_is_total(req in map(REQUEST), resp in map(RESPONSE), status in 100u16..600, delay in 0u64..100) {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let x = Exchange {
            method: &Method::GET,
            request: &req,
            status,
            response: &resp,
            request_time: t0,
            response_time: t0 + Duration::from_secs(delay),
        };
        for policy in [CachePolicy::default(), CachePolicy { heuristic: Some(crate::http::freshness::MAX_HEURISTIC_LIFETIME), default_ttl: Some(Duration::from_secs(60)), forced_ttl: None }] {
            if let Storability::Store { freshness, .. } = evaluate(&x, &policy) {
                prop_assert!(freshness.lifetime() <= Duration::from_secs(DELTA_SECONDS_MAX));
                let _ = freshness.ttl_secs(t0 + Duration::from_secs(u32::MAX as u64));
                let _ = freshness.can_serve_on_error(t0, Some(Duration::MAX));
            }
        }
        let _ = not_modified(&req, &resp);
        let _ = VaryKey::from_exchange(&resp, &req).map(|k| k.matches(&req));
    }

    #[test]
    fn hop_by_hop_stripping_is_total(mut req in map(REQUEST)) {
        strip_hop_by_hop(&mut req);
        prop_assert!(!req.contains_key("connection"));
    }
}
