//! Health reports: what an edge counted while serving one configuration version, per service
//! and in total. The control plane's rollout gates compare these between the edges that took a
//! new version and the edges still on the previous one.
//!
//! Counts are cumulative since the edge started serving `version` (they restart at zero when
//! the version changes), so a lost report loses nothing: the next one carries the sum.

use serde::{Deserialize, Serialize};

/// Upper bounds (inclusive, milliseconds) of the latency histogram's buckets; one more bucket
/// counts everything slower than the last bound.
pub const LATENCY_BOUNDS_MS: [u64; 16] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768,
];
/// Number of latency buckets (the bounds plus the overflow bucket).
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;
/// Most services one report may carry.
pub const MAX_REPORTED_SERVICES: usize = 1_000;

/// The bucket a latency of `ms` milliseconds falls in.
pub fn latency_bucket(ms: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Request counts of one service (or of all services) over one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Counts {
    /// Client requests answered.
    pub requests: u64,
    /// Answers by class.
    pub status_2xx: u64,
    /// 3xx answers.
    pub status_3xx: u64,
    /// 4xx answers.
    pub status_4xx: u64,
    /// 5xx answers, whoever made them.
    pub status_5xx: u64,
    /// 5xx answers the edge made itself (origin unreachable or timed out, injected faults,
    /// caught panics): the edge's fault, or the configuration's.
    pub edge_5xx: u64,
    /// 5xx answers passed through from an origin.
    pub origin_5xx: u64,
    /// Requests sent to origins (misses, revalidations, passes).
    pub origin_requests: u64,
    /// Origin requests that got no answer (connect failure, timeout, reset).
    pub origin_errors: u64,
    /// Answers served from cache (fresh or stale).
    pub hits: u64,
    /// Panics caught in request handling.
    pub panics: u64,
    /// Time to the response head, by [`LATENCY_BOUNDS_MS`] bucket ([`LATENCY_BUCKETS`] long).
    pub latency: Vec<u64>,
}

impl Counts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.status_2xx += other.status_2xx;
        self.status_3xx += other.status_3xx;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
        self.edge_5xx += other.edge_5xx;
        self.origin_5xx += other.origin_5xx;
        self.origin_requests += other.origin_requests;
        self.origin_errors += other.origin_errors;
        self.hits += other.hits;
        self.panics += other.panics;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    /// `self - earlier`, field by field, saturating (counters restart with a new version).
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut latency = self.latency.clone();
        for (a, b) in latency.iter_mut().zip(&earlier.latency) {
            *a = a.saturating_sub(*b);
        }
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            status_2xx: self.status_2xx.saturating_sub(earlier.status_2xx),
            status_3xx: self.status_3xx.saturating_sub(earlier.status_3xx),
            status_4xx: self.status_4xx.saturating_sub(earlier.status_4xx),
            status_5xx: self.status_5xx.saturating_sub(earlier.status_5xx),
            edge_5xx: self.edge_5xx.saturating_sub(earlier.edge_5xx),
            origin_5xx: self.origin_5xx.saturating_sub(earlier.origin_5xx),
            origin_requests: self.origin_requests.saturating_sub(earlier.origin_requests),
            origin_errors: self.origin_errors.saturating_sub(earlier.origin_errors),
            hits: self.hits.saturating_sub(earlier.hits),
            panics: self.panics.saturating_sub(earlier.panics),
            latency,
        }
    }

    /// Whether the numbers are within sane bounds (a hostile or broken report is refused).
    pub fn is_plausible(&self) -> bool {
        self.latency.len() <= LATENCY_BUCKETS
            && self.status_5xx <= self.requests
            && self.edge_5xx.saturating_add(self.origin_5xx)
                <= self.requests.saturating_add(self.panics)
            && self.requests < u64::MAX / 4
    }
}

/// One service's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceHealth {
    /// Service name.
    pub service: String,
    /// Its counts.
    pub counts: Counts,
}

/// What an edge counted while serving `version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    /// The configuration version these counts belong to.
    pub version: u64,
    /// When the edge started serving it, ms since the Unix epoch (edge clock).
    pub since_ms: u64,
    /// All services together (requests no service matched included).
    pub total: Counts,
    /// Each service that saw traffic.
    pub services: Vec<ServiceHealth>,
    /// The earliest `not_after` (ms since the Unix epoch) of the certificates of the version
    /// served; `None` without certificates (or from an edge that does not tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expiry_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_latency() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(40_000), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn since_saturates_and_add_sums() {
        let mut a = Counts {
            requests: 10,
            status_5xx: 2,
            latency: vec![1, 2, 3],
            ..Counts::default()
        };
        let b = Counts {
            requests: 4,
            status_5xx: 5,
            latency: vec![1, 1],
            ..Counts::default()
        };
        let d = a.since(&b);
        assert_eq!((d.requests, d.status_5xx), (6, 0));
        assert_eq!(d.latency, vec![0, 1, 3]);
        a.add(&b);
        assert_eq!(a.requests, 14);
        assert_eq!(a.latency, vec![2, 3, 3]);
    }
}
