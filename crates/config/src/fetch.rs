//! Settings of the origin/fill path (`[fetch]`, and `breaker` in each origin pool): how long
//! the edge waits for a client's upload, for a client that takes a fill's bytes, how much
//! memory fills in progress may hold, and when an origin server is cut off by its breaker.

use crate::locate::PathSeg::{self, Key};
use crate::validate::Checker;
use crate::{CacheConfig, MAX_CACHE_BYTES, MAX_TIMEOUT_MS};
use serde::Deserialize;

/// Most consecutive faults a breaker can be set to wait for.
pub const MAX_BREAKER_FAILURES: u32 = 1_000;

/// The fill path (`[fetch]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Longest silence allowed in a client's request body while it is forwarded; past it the
    /// client gets 408 and the origin is not blamed (nginx's `client_body_timeout` is 60 s;
    /// 30 s matches the origin response timeout).
    pub request_body_idle_timeout_ms: u64,
    /// A client reading a fill that takes no bytes for this long is detached from the fill
    /// (it no longer holds the fill's memory nor counts as someone waiting for it).
    pub client_write_timeout_ms: u64,
    /// Bytes that fills in progress may hold in memory, all fills together. Unset: a quarter
    /// of `cache.max_bytes`, at least `cache.max_object_bytes`. A fill that would exceed it
    /// streams through to its client without being stored.
    pub fill_budget_bytes: Option<u64>,
    /// A fill whose clients have all gone (no reader, no coalesced waiter) is finished and
    /// stored only if it is no longer than this (declared length or bytes so far); longer
    /// ones are cut off and nothing is stored.
    pub abandoned_fill_bytes: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            request_body_idle_timeout_ms: 30_000,
            client_write_timeout_ms: 30_000,
            fill_budget_bytes: None,
            abandoned_fill_bytes: 4 * 1024 * 1024,
        }
    }
}

impl FetchConfig {
    /// The fill budget in bytes, with the default applied.
    pub fn fill_budget(&self, cache: &CacheConfig) -> u64 {
        self.fill_budget_bytes
            .unwrap_or_else(|| (cache.max_bytes / 4).max(cache.max_object_bytes))
    }
}

/// A circuit breaker per origin server (`breaker` in `[service.origin]`): after `failures`
/// consecutive origin faults (connect refused or timed out, no response in time, reset, bad
/// framing) the server is not asked for `open_ms`; then one probe request decides.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive origin faults that open the breaker.
    pub failures: u32,
    /// How long an open breaker keeps the server out before one probe is let through.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            open_ms: 10_000,
        }
    }
}

pub(crate) fn check(c: &mut Checker, f: &FetchConfig, cache: &CacheConfig) {
    timeout(
        c,
        &[Key("fetch"), Key("request_body_idle_timeout_ms")],
        f.request_body_idle_timeout_ms,
    );
    timeout(
        c,
        &[Key("fetch"), Key("client_write_timeout_ms")],
        f.client_write_timeout_ms,
    );
    if let Some(b) = f.fill_budget_bytes {
        if b < cache.max_object_bytes || b > MAX_CACHE_BYTES {
            c.fail(
                &[Key("fetch"), Key("fill_budget_bytes")],
                format!(
                    "must be between cache.max_object_bytes ({}) and {MAX_CACHE_BYTES}, got {b}",
                    cache.max_object_bytes
                ),
            );
        }
    }
    if f.abandoned_fill_bytes > MAX_CACHE_BYTES {
        c.fail(
            &[Key("fetch"), Key("abandoned_fill_bytes")],
            format!(
                "must be at most {MAX_CACHE_BYTES}, got {}",
                f.abandoned_fill_bytes
            ),
        );
    }
}

pub(crate) fn check_breaker(c: &mut Checker, at: &[PathSeg], b: &BreakerConfig) {
    if b.failures == 0 || b.failures > MAX_BREAKER_FAILURES {
        let path: Vec<PathSeg> = at.iter().cloned().chain([Key("failures")]).collect();
        c.fail(
            &path,
            format!(
                "must be between 1 and {MAX_BREAKER_FAILURES}, got {}",
                b.failures
            ),
        );
    }
    let path: Vec<PathSeg> = at.iter().cloned().chain([Key("open_ms")]).collect();
    timeout(c, &path, b.open_ms);
}

fn timeout(c: &mut Checker, path: &[PathSeg], ms: u64) {
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        c.fail(
            path,
            format!("must be between 1 and {MAX_TIMEOUT_MS} ms, got {ms}"),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use crate::parse_str;

    const BASE: &str = r#"
[[listener]]
addr = "127.0.0.1:8080"

[[service]]
name = "a"
hosts = ["a.example"]

[service.origin]
servers = [{ addr = "127.0.0.1:9000" }]
"#;

    fn errors(extra: &str, origin: &str) -> String {
        let text = BASE.replace(
            "servers = [{ addr = \"127.0.0.1:9000\" }]",
            &format!("servers = [{{ addr = \"127.0.0.1:9000\" }}]\n{origin}"),
        ) + extra;
        match parse_str("edge.toml", &text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let c = parse_str("edge.toml", BASE).unwrap();
        assert_eq!(c.fetch.request_body_idle_timeout_ms, 30_000);
        assert_eq!(c.fetch.client_write_timeout_ms, 30_000);
        assert_eq!(c.fetch.abandoned_fill_bytes, 4 * 1024 * 1024);
        // A quarter of the 256 MiB cache, which is also the largest object.
        assert_eq!(c.fetch.fill_budget(&c.cache), 64 * 1024 * 1024);
        let b = &c.services[0].origin.breaker;
        assert_eq!((b.failures, b.open_ms), (5, 10_000));
    }

    #[test]
    fn settings_are_checked_and_named() {
        assert_eq!(errors("\n[fetch]\nrequest_body_idle_timeout_ms = 500\nclient_write_timeout_ms = 500\nfill_budget_bytes = 67108864\n", "breaker = { failures = 1, open_ms = 500 }"), "");
        let e = errors("\n[fetch]\nrequest_body_idle_timeout_ms = 0\n", "");
        assert!(e.contains("fetch.request_body_idle_timeout_ms"), "{e}");
        let e = errors("\n[fetch]\nclient_write_timeout_ms = 600001\n", "");
        assert!(e.contains("fetch.client_write_timeout_ms"), "{e}");
        let e = errors("\n[fetch]\nfill_budget_bytes = 1024\n", "");
        assert!(
            e.contains("fetch.fill_budget_bytes") && e.contains("max_object_bytes"),
            "{e}"
        );
        let e = errors("\n[fetch]\nfill_bytes = 1\n", "");
        assert!(e.contains("fill_bytes"), "{e}");
        let e = errors("", "breaker = { failures = 0 }");
        assert!(e.contains("origin.breaker.failures"), "{e}");
        let e = errors("", "breaker = { open_ms = 0 }");
        assert!(e.contains("origin.breaker.open_ms"), "{e}");
    }
}
