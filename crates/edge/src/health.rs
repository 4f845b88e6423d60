//! Health counters: what one configuration version served, per service. Each [`Runtime`]
//! (one per version) owns its counters, so they restart at zero with every reload; they are
//! never carried over like origin pools are.
//!
//! Counting is a handful of relaxed atomic increments per request: no lock, no allocation.
//! Reading ([`HealthCounters::snapshot`]) gives the protocol's [`Counts`].
//!
//! [`Runtime`]: crate::runtime::Runtime

use firebreak_protocol::health::{latency_bucket, Counts, LATENCY_BUCKETS};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Who made a response, for the 5xx split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The edge itself (an error of its own, an injected fault, a switch, a caught panic).
    Edge,
    /// An origin, directly or through the cache.
    Origin,
}

/// The counters of one service (or of the requests no service matched) over one version.
#[derive(Debug, Default)]
pub struct HealthCounters {
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
    /// Counts one answered client request: its status, who made it, whether it came from
    /// the cache (fresh or stale) and the time to its response head.
    pub fn response(&self, status: http::StatusCode, source: Source, hit: bool, head: Duration) {
        self.requests.fetch_add(1, Relaxed);
        // 1xx and out-of-range statuses have no class in `Counts`.
        let class = match status.as_u16() {
            200..=299 => Some(&self.status_2xx),
            300..=399 => Some(&self.status_3xx),
            400..=499 => Some(&self.status_4xx),
            500..=599 => {
                let by = match source {
                    Source::Edge => &self.edge_5xx,
                    Source::Origin => &self.origin_5xx,
                };
                by.fetch_add(1, Relaxed);
                Some(&self.status_5xx)
            }
            _ => None,
        };
        if let Some(class) = class {
            class.fetch_add(1, Relaxed);
        }
        if hit {
            self.hits.fetch_add(1, Relaxed);
        }
        let ms = u64::try_from(head.as_millis()).unwrap_or(u64::MAX);
        if let Some(bucket) = self.latency.get(latency_bucket(ms)) {
            bucket.fetch_add(1, Relaxed);
        }
    }

    /// Counts one request sent to an origin; `answered` is false when no response came.
    pub fn origin(&self, answered: bool) {
        self.origin_requests.fetch_add(1, Relaxed);
        if !answered {
            self.origin_errors.fetch_add(1, Relaxed);
        }
    }

    /// Counts one panic caught in request handling (its 500 is counted by `response`).
    pub fn panic(&self) {
        self.panics.fetch_add(1, Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Counts {
        Counts {
            requests: self.requests.load(Relaxed),
            status_2xx: self.status_2xx.load(Relaxed),
            status_3xx: self.status_3xx.load(Relaxed),
            status_4xx: self.status_4xx.load(Relaxed),
            status_5xx: self.status_5xx.load(Relaxed),
            edge_5xx: self.edge_5xx.load(Relaxed),
            origin_5xx: self.origin_5xx.load(Relaxed),
            origin_requests: self.origin_requests.load(Relaxed),
            origin_errors: self.origin_errors.load(Relaxed),
            hits: self.hits.load(Relaxed),
            panics: self.panics.load(Relaxed),
            latency: self.latency.iter().map(|b| b.load(Relaxed)).collect(),
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
}
