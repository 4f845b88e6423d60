//! Health counters: what one configuration version served, per service. Each [`Runtime`]
//! (one per version) owns its counters, so they restart at zero with every reload; they are
//! never carried over like origin pools are.
//!
//! Counting is a handful of relaxed atomic increments per request: no lock, no allocation.
//! The counters are sharded by thread (each connection worker counts on a cache line of its
//! own, so two cores never pass one line back and forth per request); reading
//! ([`HealthCounters::snapshot`]) sums the shards into the protocol's [`Counts`].
//!
//! [`Runtime`]: crate::runtime::Runtime

use firebreak_protocol::health::{latency_bucket, Counts, LATENCY_BUCKETS};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Who made a response, for the 5xx split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The edge itself (an error of its own, an injected fault, a switch, a caught panic).
    Edge,
    /// An origin, directly or through the cache.
    Origin,
}

/// Shards of each service's counters: at least the connection workers of a typical edge.
const SHARDS: usize = 8;

/// The shard of the calling thread: threads take shards round robin on first use.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// The counters of one service (or of the requests no service matched) over one version.
#[derive(Debug, Default)]
pub struct HealthCounters {
    shards: Box<[Shard; SHARDS]>,
}

/// One thread's share of the counters, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    status_2xx: AtomicU64,
    status_3xx: AtomicU64,
    status_4xx: AtomicU64,
    status_5xx: AtomicU64,
    edge_5xx: AtomicU64,
    origin_5xx: AtomicU64,
    origin_requests: AtomicU64,
    origin_errors: AtomicU64,
    hits: AtomicU64,
    panics: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl HealthCounters {
    fn mine(&self) -> &Shard {
        let [first, rest @ ..] = &*self.shards;
        rest.get(shard_index().wrapping_sub(1)).unwrap_or(first)
    }

    /// Counts one answered client request: its status, who made it, whether it came from
    /// the cache (fresh or stale) and the time to its response head.
    pub fn response(&self, status: http::StatusCode, source: Source, hit: bool, head: Duration) {
        let c = self.mine();
        c.requests.fetch_add(1, Relaxed);
        // 1xx and out-of-range statuses have no class in `Counts`.
        let class = match status.as_u16() {
            200..=299 => Some(&c.status_2xx),
            300..=399 => Some(&c.status_3xx),
            400..=499 => Some(&c.status_4xx),
            500..=599 => {
                let by = match source {
                    Source::Edge => &c.edge_5xx,
                    Source::Origin => &c.origin_5xx,
                };
                by.fetch_add(1, Relaxed);
                Some(&c.status_5xx)
            }
            _ => None,
        };
        if let Some(class) = class {
            class.fetch_add(1, Relaxed);
        }
        if hit {
            c.hits.fetch_add(1, Relaxed);
        }
        let ms = u64::try_from(head.as_millis()).unwrap_or(u64::MAX);
        if let Some(bucket) = c.latency.get(latency_bucket(ms)) {
            bucket.fetch_add(1, Relaxed);
        }
    }

    /// Counts one request sent to an origin; `answered` is false when no response came.
    pub fn origin(&self, answered: bool) {
        let c = self.mine();
        c.origin_requests.fetch_add(1, Relaxed);
        if !answered {
            c.origin_errors.fetch_add(1, Relaxed);
        }
    }

    /// Counts one panic caught in request handling (its 500 is counted by `response`).
    pub fn panic(&self) {
        self.mine().panics.fetch_add(1, Relaxed);
    }

    /// The counts so far (all shards).
    pub fn snapshot(&self) -> Counts {
        let sum = |f: fn(&Shard) -> &AtomicU64| -> u64 {
            self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
        };
        Counts {
            requests: sum(|s| &s.requests),
            status_2xx: sum(|s| &s.status_2xx),
            status_3xx: sum(|s| &s.status_3xx),
            status_4xx: sum(|s| &s.status_4xx),
            status_5xx: sum(|s| &s.status_5xx),
            edge_5xx: sum(|s| &s.edge_5xx),
            origin_5xx: sum(|s| &s.origin_5xx),
            origin_requests: sum(|s| &s.origin_requests),
            origin_errors: sum(|s| &s.origin_errors),
            hits: sum(|s| &s.hits),
            panics: sum(|s| &s.panics),
            latency: (0..LATENCY_BUCKETS)
                .map(|i| {
                    self.shards
                        .iter()
                        .filter_map(|s| s.latency.get(i))
                        .map(|b| b.load(Relaxed))
                        .sum()
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn classes_sources_hits_and_latency() {
        let h = HealthCounters::default();
        let ms = Duration::from_millis;
        h.response(StatusCode::OK, Source::Origin, true, ms(0));
        h.response(StatusCode::NOT_MODIFIED, Source::Origin, true, ms(3));
        h.response(StatusCode::NOT_FOUND, Source::Edge, false, ms(3));
        h.response(StatusCode::BAD_GATEWAY, Source::Edge, false, ms(100_000));
        h.response(
            StatusCode::SERVICE_UNAVAILABLE,
            Source::Origin,
            false,
            ms(5),
        );
        h.response(
            StatusCode::SWITCHING_PROTOCOLS,
            Source::Origin,
            false,
            ms(5),
        );
        h.origin(true);
        h.origin(false);
        h.panic();
        let c = h.snapshot();
        assert_eq!(c.requests, 6);
        assert_eq!(
            (c.status_2xx, c.status_3xx, c.status_4xx, c.status_5xx),
            (1, 1, 1, 2)
        );
        assert_eq!((c.edge_5xx, c.origin_5xx, c.hits, c.panics), (1, 1, 2, 1));
        assert_eq!((c.origin_requests, c.origin_errors), (2, 1));
        assert_eq!(c.latency.len(), LATENCY_BUCKETS);
        assert_eq!(c.latency[0], 1);
        assert_eq!(c.latency[2], 2);
        assert_eq!(c.latency[3], 2);
        assert_eq!(c.latency[LATENCY_BUCKETS - 1], 1);
        assert!(c.is_plausible());
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let c = std::sync::Arc::new(HealthCounters::default());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.response(http::StatusCode::OK, Source::Origin, true, Duration::ZERO);
                    }
                    c.origin(false);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let counts = c.snapshot();
        assert_eq!(counts.requests, 12_000);
        assert_eq!(counts.status_2xx, 12_000);
        assert_eq!(counts.hits, 12_000);
        assert_eq!(counts.origin_requests, 12);
        assert_eq!(counts.origin_errors, 12);
        assert_eq!(counts.latency.iter().sum::<u64>(), 12_000);
    }
}
