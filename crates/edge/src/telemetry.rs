//! Metrics (Prometheus, through the `metrics` facade) and the structured access log.
//!
//! Metric names (all prefixed `firebreak_`):
//! - `requests_total{service,status,cache}` — every client request; `cache` is a
//!   [`CacheResult`].
//! - `origin_requests_total{service,status}` and `origin_latency_seconds{service}` (histogram,
//!   time to the response head; `status="error"` when no response came).
//! - `body_bytes_total{service,source}` — body bytes sent to clients, `source` = cache|origin.
//! - `cache_objects`, `cache_bytes`, `cache_evictions_total` — from the store, at scrape time.
//! - `panics_total{service}` — panics caught in request handling (each answered 500).
//! - `coalesced_waiters_total{service}`, `stale_served_total{service,reason}`,
//!   `purges_total{kind,mode}`, `access_log_dropped_total`.
//! - `origin_breaker_transitions_total{origin,state}`, `origin_breaker_open{origin}`,
//!   `fills_not_stored_total{service,reason}`, `fill_clients_detached_total{service}`,
//!   `fill_bytes`, `fill_budget_bytes` — the origin/fill path (see `upstream`, `proxy::fetch`).
//! - Disk tier (`store::disk`): `disk_objects`, `disk_bytes`, `disk_max_bytes`,
//!   `disk_open_files` (files kept open for reading), `disk_recovering` (1 while the index is recovered at start), `disk_degraded` (1 while
//!   writes are off after a failure), `disk_recovered_objects_total`,
//!   `disk_writes_total{result=ok|error|degraded|queue_full|purged}`, `disk_hits_total`,
//!   `disk_read_errors_total`, `disk_corrupt_total` (files removed at recovery),
//!   `disk_open_failures_total`.

use crate::store::StoreStats;
use http::StatusCode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Origin latency histogram buckets, in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Access log lines buffered before new ones are dropped (and counted): a slow disk must
/// never slow requests down.
const ACCESS_LOG_BUFFER: usize = 16 * 1024;

/// What the cache did for a request, as a small closed set (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CacheResult {
    /// Served fresh from cache.
    Hit,
    /// Served stale (stale-while-revalidate, stale-if-error, safety net).
    Stale,
    /// Fetched from the origin after a miss.
    Miss,
    /// A stored response was revalidated with the origin.
    Revalidated,
    /// Forwarded without using the cache (bypass, method, uncacheable).
    Pass,
    /// The edge answered with an error of its own.
    Error,
}

impl CacheResult {
    /// The inverse of `as u8`; unknown values are `Error`.
    pub fn from_u8(v: u8) -> Self {
        [
            CacheResult::Hit,
            CacheResult::Stale,
            CacheResult::Miss,
            CacheResult::Revalidated,
            CacheResult::Pass,
        ]
        .into_iter()
        .find(|r| *r as u8 == v)
        .unwrap_or(CacheResult::Error)
    }

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Stale => "stale",
            CacheResult::Miss => "miss",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Pass => "pass",
            CacheResult::Error => "error",
        }
    }
}

/// The Prometheus recorder of this process, installed on first use. Several edges in one
/// process (tests) share it.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("firebreak_origin_latency_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .ok()?;
            builder.install_recorder().ok()
        })
        .as_ref()
        .inspect(|handle| start_upkeep(handle))
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds histogram samples into their buckets every [`UPKEEP_EVERY`] on a thread of its own.
/// The recorder queues every sample until a scrape or an upkeep drains it: without this an
/// edge nobody scrapes would grow by a few bytes per origin fetch, without bound.
fn start_upkeep(handle: &'static PrometheusHandle) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "metrics upkeep thread not started; histograms drain on scrapes only");
        }
    });
}

/// Static label strings for status codes, so that counting a request allocates nothing.
pub fn status_label(status: StatusCode) -> &'static str {
    static LABELS: OnceLock<Vec<&'static str>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| {
        (0..600u16)
            .map(|c| &*Box::leak(c.to_string().into_boxed_str()))
            .collect()
    });
    labels
        .get(status.as_u16() as usize)
        .copied()
        .unwrap_or("other")
}

/// Counter handles for the commonest events of one service, registered once so that the hit
/// path does not look them up (and allocate their labels) on every request.
#[derive(Clone)]
pub struct ServiceCounters {
    /// `requests_total{status="200",cache="hit"}`.
    pub hit_200: metrics::Counter,
    /// `body_bytes_total{source="cache"}`.
    pub cache_bytes: metrics::Counter,
}

impl ServiceCounters {
    /// Registers the handles for a service (with whatever recorder is installed).
    pub fn new(service: &Arc<str>) -> Self {
        Self {
            hit_200: metrics::counter!(
                "firebreak_requests_total",
                "service" => service.clone(),
                "status" => "200",
                "cache" => CacheResult::Hit.as_str()
            ),
            cache_bytes: metrics::counter!(
                "firebreak_body_bytes_total",
                "service" => service.clone(),
                "source" => "cache"
            ),
        }
    }
}

/// Counts one client request.
pub fn request(service: &Arc<str>, status: StatusCode, result: CacheResult) {
    metrics::counter!(
        "firebreak_requests_total",
        "service" => service.clone(),
        "status" => status_label(status),
        "cache" => result.as_str()
    )
    .increment(1);
}

/// Counts one origin exchange and its latency to the response head.
pub fn origin(service: &Arc<str>, status: Option<StatusCode>, latency: Duration) {
    let status = status.map(status_label).unwrap_or("error");
    metrics::counter!("firebreak_origin_requests_total", "service" => service.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("firebreak_origin_latency_seconds", "service" => service.clone())
        .record(latency.as_secs_f64());
}

/// A handle counting body bytes streamed from an origin to a client.
pub fn origin_bytes(service: &Arc<str>) -> metrics::Counter {
    metrics::counter!("firebreak_body_bytes_total", "service" => service.clone(), "source" => "origin")
}

/// Counts a request that waited for another request's fetch.
pub fn coalesced(service: &Arc<str>) {
    metrics::counter!("firebreak_coalesced_waiters_total", "service" => service.clone())
        .increment(1);
}

/// Counts a stale response served, by reason.
pub fn stale_served(service: &Arc<str>, reason: &'static str) {
    metrics::counter!("firebreak_stale_served_total", "service" => service.clone(), "reason" => reason)
        .increment(1);
}

/// Counts a panic caught in request handling (`-` when it happened before routing).
pub fn panicked(service: Option<&Arc<str>>) {
    static UNROUTED: OnceLock<Arc<str>> = OnceLock::new();
    let service = service.unwrap_or_else(|| UNROUTED.get_or_init(|| Arc::from("-")));
    metrics::counter!("firebreak_panics_total", "service" => service.clone()).increment(1);
}

/// Counts a purge request.
pub fn purge(kind: &'static str, soft: bool) {
    let mode = if soft { "soft" } else { "hard" };
    metrics::counter!("firebreak_purges_total", "kind" => kind, "mode" => mode).increment(1);
}

/// Publishes the store's counts (called before each scrape).
pub fn store(stats: StoreStats) {
    metrics::gauge!("firebreak_cache_objects").set(stats.keys as f64);
    metrics::gauge!("firebreak_cache_bytes").set(stats.bytes as f64);
    metrics::counter!("firebreak_cache_evictions_total").absolute(stats.evictions);
    metrics::gauge!("firebreak_fill_bytes").set(stats.fill_bytes as f64);
    metrics::gauge!("firebreak_fill_budget_bytes").set(stats.fill_budget as f64);
    if let Some(pages) = firebreak_zerocopy::arena::existing().map(|a| a.stats()) {
        metrics::gauge!("firebreak_zero_copy_bodies").set(pages.bodies as f64);
        metrics::gauge!("firebreak_zero_copy_bytes").set(pages.bytes as f64);
        metrics::gauge!("firebreak_zero_copy_leaked_pages").set(pages.leaked_pages as f64);
    }
    if let Some(disk) = stats.disk {
        metrics::gauge!("firebreak_disk_objects").set(disk.keys as f64);
        metrics::gauge!("firebreak_disk_bytes").set(disk.bytes as f64);
        metrics::gauge!("firebreak_disk_max_bytes").set(disk.max_bytes as f64);
        metrics::gauge!("firebreak_disk_recovering").set(f64::from(u8::from(disk.recovering)));
        metrics::gauge!("firebreak_disk_degraded").set(f64::from(u8::from(disk.degraded)));
        metrics::gauge!("firebreak_disk_open_files").set(disk.open_files as f64);
    }
}

/// One access log record.
#[derive(Debug, serde::Serialize)]
pub struct AccessRecord<'a> {
    /// Unix time in seconds, with milliseconds.
    pub ts: f64,
    /// Request id (also on error pages).
    pub id: String,
    /// Client address.
    pub client: String,
    /// Service name, `-` when the request was refused before routing.
    pub service: &'a str,
    /// Method.
    pub method: &'a str,
    /// Host as sent.
    pub host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// HTTP version.
    pub version: &'static str,
    /// Response status.
    pub status: u16,
    /// What the cache did.
    pub cache: &'static str,
    /// This cache's Cache-Status entry.
    pub cache_status: &'a str,
    /// Response body length when known up front.
    pub bytes: Option<u64>,
    /// Microseconds until the response head was ready.
    pub duration_us: u64,
    /// Microseconds spent waiting for the origin's response head, if it was asked.
    pub origin_us: Option<u64>,
}

/// A non-blocking access log: records are queued to a writer thread; when the queue is full
/// they are dropped and counted, never waited for.
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens `path` for appending (`-` = standard output) and starts the writer thread.
    pub fn open(path: &str) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (tx, rx) = sync_channel::<String>(ACCESS_LOG_BUFFER);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(out);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // Flush when the queue is drained, so lines appear promptly when idle.
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(more.as_bytes());
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues one record.
    pub fn write(&self, record: &AccessRecord<'_>) {
        let Ok(mut line) = serde_json::to_string(record) else {
            return;
        };
        line.push('\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("firebreak_access_log_dropped_total").increment(1);
            }
        }
    }
}

/// A circuit breaker of an origin server changed state (`closed`, `open`, `half_open`):
/// `origin_breaker_transitions_total{origin,state}` and the gauge
/// `origin_breaker_open{origin}` (1 while the server is kept out).
pub fn breaker(origin: &Arc<str>, state: &'static str) {
    metrics::counter!(
        "firebreak_origin_breaker_transitions_total",
        "origin" => origin.clone(),
        "state" => state
    )
    .increment(1);
    let open = if state == "closed" { 0.0 } else { 1.0 };
    metrics::gauge!("firebreak_origin_breaker_open", "origin" => origin.clone()).set(open);
}

/// Counts a fill that was not stored for a reason of the fill path (`budget`, `abandoned`,
/// `purged`): `fills_not_stored_total{service,reason}`.
pub fn fill_not_stored(service: &Arc<str>, reason: &'static str) {
    metrics::counter!("firebreak_fills_not_stored_total", "service" => service.clone(), "reason" => reason)
        .increment(1);
}

/// Counts a client detached from a fill because it took no bytes for
/// `fetch.client_write_timeout_ms`: `fill_clients_detached_total{service}`.
pub fn fill_client_detached(service: &Arc<str>) {
    metrics::counter!("firebreak_fill_clients_detached_total", "service" => service.clone())
        .increment(1);
}

// Connection bounds and client fairness (`conn`, `ratelimit`):
// - `connections_refused_total{listener,reason}` — closed at accept: `per_address`.
// - `connections_closed_total{listener,reason}` — closed by a deadline or a bad preamble:
//   `first_bytes_timeout`, `proxy_header`, `closed_early`, `head_timeout`, `idle`.
// - `rate_limited_total{service}` — requests answered 429 (per-address token bucket).
// - `shed_total{service}` — requests answered 503 because too many were in flight.

// Connections refused and closed are counted by the serve loop (`firebreak_protocol::serve`).

/// Counts a request refused by its client's rate limit.
pub fn rate_limited(service: &Arc<str>) {
    metrics::counter!("firebreak_rate_limited_total", "service" => service.clone()).increment(1);
}

/// Counts a request shed because the edge had too many in flight.
pub fn shed(service: &Arc<str>) {
    metrics::counter!("firebreak_shed_total", "service" => service.clone()).increment(1);
}

/// Signed statements from the control plane refused by this edge, by `kind` (`purge`,
/// `admin`, `target`) and `reason` ([`firebreak_protocol::signed::Refusal::label`]: `replay`,
/// `expired`, `too_long`, `audience`, `signature`, `older`, `busy`).
pub const SIGNED_REFUSED: &str = "firebreak_signed_refused_total";
/// 1 while this edge holds no fresh target (its control plane is unreachable, or answers
/// without a fresh signature); it keeps serving what it runs.
pub const AGENT_TARGET_STALE: &str = "firebreak_agent_target_stale";

/// Counts a refused signed statement.
pub fn signed_refused(kind: &'static str, reason: firebreak_protocol::signed::Refusal) {
    metrics::counter!(SIGNED_REFUSED, "kind" => kind, "reason" => reason.label()).increment(1);
}

/// Whether this edge's target is stale.
pub fn target_stale(stale: bool) {
    metrics::gauge!(AGENT_TARGET_STALE).set(if stale { 1.0 } else { 0.0 });
}

/// An origin TLS handshake failed (`reason`: `unknown_issuer`, `name_mismatch`, `expired`,
/// `handshake`, `other`).
pub fn origin_tls_failure(service: &Arc<str>, reason: &'static str) {
    metrics::counter!("firebreak_origin_tls_failures_total", "service" => service.clone(), "reason" => reason)
        .increment(1);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_static_and_bounded() {
        assert_eq!(status_label(StatusCode::OK), "200");
        assert_eq!(status_label(StatusCode::from_u16(599).unwrap()), "599");
        assert_eq!(status_label(StatusCode::from_u16(999).unwrap()), "other");
    }
}
