//! Entry points for fuzzing: each takes arbitrary bytes and drives one parser or decision of
//! the request path the way a hostile peer could, and must return without panicking whatever
//! the bytes. The cargo-fuzz targets under `fuzz/` and the stable corpus test in
//! `crates/fuzzing` call these same functions, so CI exercises them without a nightly
//! toolchain. Not part of the edge's API.

use crate::http::cache_control::CacheControl;
use crate::http::conditional::not_modified;
use crate::http::freshness::{evaluate, CachePolicy, Exchange, Storability};
use crate::http::headers::strip_hop_by_hop;
use crate::http::path::{normalize_path, rule_view};
use crate::http::range::{decide, RangeDecision};
use crate::proxy::EdgeState;
use crate::runtime::Runtime;
use crate::store::{CacheKey, MemoryStore, VaryKey};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// The configuration the request-head target routes against: two services, a rule of each kind.
const CONFIG: &str = r#"
[[service]]
name = "a"
hosts = ["a.test", "www.a.test"]
default = true
[service.origin]
servers = [{ addr = "127.0.0.1:9" }]
[service.cache]
rules = [
  { path_prefix = "/private/", bypass = true },
  { path_regex = "\\.(css|js)$", ttl_s = 60 },
]
[service.forwarding]
strip_request_headers = ["x-debug"]

[[service]]
name = "b"
hosts = ["b.test"]
[service.origin]
servers = [{ addr = "127.0.0.1:9" }]
"#;

fn state() -> Option<&'static Arc<EdgeState>> {
    static STATE: OnceLock<Option<Arc<EdgeState>>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let config = firebreak_config::parse_managed_str("fuzz.toml", CONFIG).ok()?;
            let runtime = Runtime::build(config, None).ok()?;
            let store = Arc::new(MemoryStore::new(1 << 20, 1 << 16));
            Some(Arc::new(EdgeState::new(runtime, store, None)))
        })
        .as_ref()
}

/// Header lines as `(name, value)` bytes, any content.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Splits `data` into a first line and `name: value` lines (bytes, any content).
fn lines(data: &[u8]) -> (Vec<u8>, Fields) {
    let mut it = data.split(|b| *b == b'\n');
    let first = it.next().unwrap_or_default().to_vec();
    let fields = it
        .filter_map(|l| {
            let i = l.iter().position(|b| *b == b':')?;
            let (n, v) = l.split_at(i);
            Some((n.to_vec(), v.get(1..).unwrap_or_default().to_vec()))
        })
        .collect();
    (first, fields)
}

/// Header fields as the peer's bytes allow (invalid names or values are dropped, as hyper
/// would refuse them).
fn header_map(fields: &[(Vec<u8>, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in fields.iter().take(64) {
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.trim_ascii()),
            HeaderValue::from_bytes(v.trim_ascii()),
        ) else {
            continue;
        };
        h.append(n, v);
    }
    h
}

/// A request head (`METHOD TARGET` then header lines) through routing: host validation and
/// the service, path normalisation, header stripping, the rule, and the cache key.
pub fn request_head(data: &[u8]) {
    let Some(state) = state() else {
        return;
    };
    let (first, fields) = lines(data);
    let mut words = first.split(|b| *b == b' ');
    let method = Method::from_bytes(words.next().unwrap_or_default()).unwrap_or(Method::GET);
    let target = words.next().unwrap_or(b"/");
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = header_map(&fields);
    let (parts, ()) = req.into_parts();
    let runtime = state.runtime.load_full();
    let Ok((ctx, _rule)) = crate::proxy::route::route(
        state.clone(),
        runtime,
        parts,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        state.request_id(),
        Arc::new(crate::proxy::RequestTrace::new()),
    ) else {
        return;
    };
    let pq = ctx.path_and_query.as_str();
    let _ = CacheKey::new(&ctx.svc.name, &ctx.host, pq);
    let _ = ctx.upstream();
    assert!(!ctx.host.is_empty() && ctx.host == ctx.host.to_ascii_lowercase());
}

/// A path through normalisation: the result is stable (normalising it again changes nothing).
pub fn path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(once) = normalize_path(text) {
        let _ = rule_view(&once);
        if let Ok(twice) = normalize_path(&once) {
            assert_eq!(once, twice, "normalisation is not stable for {text:?}");
        }
    }
}

/// Response and request headers (separated by an empty line) through the cache decisions:
/// Cache-Control parsing, storability and freshness, 304 and range decisions, Vary.
pub fn cache_headers(data: &[u8]) {
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let (resp_bytes, req_bytes) = data.split_at(split);
    let (status_line, resp_fields) = lines(resp_bytes);
    let (_, req_fields) = lines(req_bytes);
    let response = header_map(&resp_fields);
    let mut request = header_map(&req_fields);
    let status = std::str::from_utf8(&status_line)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let _ = CacheControl::parse_all(response.get_all(http::header::CACHE_CONTROL));
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let x = Exchange {
        method: &Method::GET,
        request: &request,
        status,
        response: &response,
        request_time: t0,
        response_time: t0 + Duration::from_secs(1),
    };
    for policy in [
        CachePolicy::default(),
        CachePolicy {
            heuristic: Some(crate::http::freshness::MAX_HEURISTIC_LIFETIME),
            default_ttl: Some(Duration::from_secs(60)),
            forced_ttl: None,
        },
    ] {
        if let Storability::Store { freshness, .. } = evaluate(&x, &policy) {
            let _ = freshness.ttl_secs(t0 + Duration::from_secs(u64::from(u32::MAX)));
            let _ = freshness.can_serve_on_error(t0, Some(Duration::MAX));
        }
    }
    let _ = not_modified(&request, &response);
    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
    if let RangeDecision::Partial { start, end } = decide(&request, &response, len) {
        assert!(
            start < end && end <= len,
            "range {start}..{end} outside 0..{len}"
        );
    }
    let _ = VaryKey::from_exchange(&response, &request).map(|k| k.matches(&request));
    strip_hop_by_hop(&mut request);
    assert!(!request.contains_key(http::header::CONNECTION));
}

/// A file in the disk tier's cache directory (files on disk are hostile input too): its
/// prefix, head and body blocks parsed and checked as recovery and reads do.
pub fn disk_object(data: &[u8]) {
    let _ = crate::store::disk::parse_for_fuzzing(data);
}

/// Whether the request-head target has its routing state (its configuration loads); a target
/// that silently did nothing would test nothing.
pub fn ready() -> bool {
    state().is_some()
}
