//! Health reports: what an edge counted while serving one configuration version, per service
//! and in total. The control plane's rollout gates compare these between the edges that took a
//! new version and the edges still on the previous one.
//!
//! Counts are cumulative since the edge started serving `version` (they restart at zero when
//! the version changes), so a lost report loses nothing: the next one carries the sum.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Upper bounds (inclusive, milliseconds) of the latency histogram's buckets; one more bucket
/// counts everything slower than the last bound.
pub const LATENCY_BOUNDS_MS: [u64; 16] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768,
];
/// Number of latency buckets (the bounds plus the overflow bucket).
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;
/// Most services one report may carry.
pub const MAX_REPORTED_SERVICES: usize = 1_000;
/// Most POPs a DNS report may carry answers for (a DNS server with more sends the POPs with
/// the most answers).
pub const MAX_REPORTED_POPS: usize = 1_000;
/// Longest POP name in a DNS report.
pub const MAX_POP_NAME: usize = 256;
/// Upper bounds (inclusive, microseconds) of the DNS query latency histogram's buckets,
/// doubling from 8 µs to 262 ms; one more bucket counts everything slower.
pub const DNS_LATENCY_BOUNDS_US: [u64; 16] = [
    8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536, 131_072,
    262_144,
];
/// Number of DNS latency buckets (the bounds plus the overflow bucket).
pub const DNS_LATENCY_BUCKETS: usize = DNS_LATENCY_BOUNDS_US.len() + 1;

/// The bucket a DNS query latency of `us` microseconds falls in.
pub fn dns_latency_bucket(us: u64) -> usize {
    DNS_LATENCY_BOUNDS_US
        .iter()
        .position(|b| us <= *b)
        .unwrap_or(DNS_LATENCY_BOUNDS_US.len())
}

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

/// Steered answers that gave one POP's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PopAnswers {
    /// POP name.
    pub pop: String,
    /// Answers with its addresses (from health or from the last-healthy set).
    pub answers: u64,
}

/// What a DNS server counted while serving one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsCounts {
    /// Queries answered, plus queries whose answering failed (see `servfail`). Queries
    /// dropped unanswered because they were not queries (too short, QR=1) are not counted.
    pub queries: u64,
    /// Queries the server failed: answered SERVFAIL, or dropped because answering failed
    /// (a caught panic) — to the resolver both are a failure of this server.
    pub servfail: u64,
    /// Answered REFUSED (not our zone, zone transfers, classes other than IN).
    pub refused: u64,
    /// Answered NXDOMAIN.
    pub nxdomain: u64,
    /// Answered NOERROR with no records in the answer section (NODATA).
    pub nodata: u64,
    /// Address queries (A, AAAA, ANY) for a service's name answered with neither an address
    /// nor a CNAME in either family: the never-empty guarantee broken. (NODATA for one family
    /// while the other has addresses, e.g. AAAA for an IPv4-only service, is not empty.)
    pub empty: u64,
    /// Answered from the service's fallback (CNAME or addresses): no POP of it healthy.
    pub fallback: u64,
    /// Answered from the POPs healthy last: no POP healthy and no fallback configured.
    pub last_healthy: u64,
    /// Steered answers by POP (healthy or last-healthy), at most [`MAX_REPORTED_POPS`].
    pub answers_by_pop: Vec<PopAnswers>,
    /// Time from receiving a query to sending its response, by [`DNS_LATENCY_BOUNDS_US`]
    /// bucket ([`DNS_LATENCY_BUCKETS`] long).
    pub latency_us: Vec<u64>,
}

impl DnsCounts {
    /// Adds `other` into `self` (POPs matched by name; the list stays within
    /// [`MAX_REPORTED_POPS`], a POP beyond it is dropped).
    pub fn add(&mut self, other: &DnsCounts) {
        self.queries = self.queries.saturating_add(other.queries);
        self.servfail = self.servfail.saturating_add(other.servfail);
        self.refused = self.refused.saturating_add(other.refused);
        self.nxdomain = self.nxdomain.saturating_add(other.nxdomain);
        self.nodata = self.nodata.saturating_add(other.nodata);
        self.empty = self.empty.saturating_add(other.empty);
        self.fallback = self.fallback.saturating_add(other.fallback);
        self.last_healthy = self.last_healthy.saturating_add(other.last_healthy);
        let mut at: HashMap<String, usize> = self
            .answers_by_pop
            .iter()
            .enumerate()
            .map(|(i, p)| (p.pop.clone(), i))
            .collect();
        for p in &other.answers_by_pop {
            if let Some(x) = at.get(&p.pop).and_then(|i| self.answers_by_pop.get_mut(*i)) {
                x.answers = x.answers.saturating_add(p.answers);
            } else if self.answers_by_pop.len() < MAX_REPORTED_POPS {
                at.insert(p.pop.clone(), self.answers_by_pop.len());
                self.answers_by_pop.push(p.clone());
            }
        }
        if self.latency_us.len() < other.latency_us.len() {
            self.latency_us.resize(other.latency_us.len(), 0);
        }
        for (a, b) in self.latency_us.iter_mut().zip(&other.latency_us) {
            *a = a.saturating_add(*b);
        }
    }

    /// `self - earlier`, field by field, saturating (a snapshot taken when a version started
    /// subtracted from the server's running totals); POPs are matched by name, and a POP
    /// with no answers since `earlier` is left out.
    pub fn since(&self, earlier: &DnsCounts) -> DnsCounts {
        let mut latency_us = self.latency_us.clone();
        for (a, b) in latency_us.iter_mut().zip(&earlier.latency_us) {
            *a = a.saturating_sub(*b);
        }
        let before: HashMap<&str, u64> = earlier
            .answers_by_pop
            .iter()
            .map(|p| (p.pop.as_str(), p.answers))
            .collect();
        let answers_by_pop = self
            .answers_by_pop
            .iter()
            .map(|p| {
                let before = before.get(p.pop.as_str()).copied().unwrap_or(0);
                PopAnswers {
                    pop: p.pop.clone(),
                    answers: p.answers.saturating_sub(before),
                }
            })
            .filter(|p| p.answers > 0)
            .collect();
        DnsCounts {
            queries: self.queries.saturating_sub(earlier.queries),
            servfail: self.servfail.saturating_sub(earlier.servfail),
            refused: self.refused.saturating_sub(earlier.refused),
            nxdomain: self.nxdomain.saturating_sub(earlier.nxdomain),
            nodata: self.nodata.saturating_sub(earlier.nodata),
            empty: self.empty.saturating_sub(earlier.empty),
            fallback: self.fallback.saturating_sub(earlier.fallback),
            last_healthy: self.last_healthy.saturating_sub(earlier.last_healthy),
            answers_by_pop,
            latency_us,
        }
    }

    /// Answers with POP addresses, over every POP.
    pub fn pop_answers(&self) -> u64 {
        self.answers_by_pop
            .iter()
            .fold(0u64, |a, p| a.saturating_add(p.answers))
    }

    /// Whether the numbers are within sane bounds (a hostile or broken report is refused).
    pub fn is_plausible(&self) -> bool {
        let q = self.queries;
        q < u64::MAX / 4
            && self.latency_us.len() <= DNS_LATENCY_BUCKETS
            && self.answers_by_pop.len() <= MAX_REPORTED_POPS
            && self
                .answers_by_pop
                .iter()
                .all(|p| !p.pop.is_empty() && p.pop.len() <= MAX_POP_NAME && p.answers <= q)
            && [
                self.servfail,
                self.refused,
                self.nxdomain,
                self.nodata,
                self.empty,
                self.fallback,
                self.last_healthy,
            ]
            .iter()
            .all(|n| *n <= q)
            && self
                .servfail
                .saturating_add(self.refused)
                .saturating_add(self.nxdomain)
                .saturating_add(self.nodata)
                <= q
            && self.fallback.saturating_add(self.pop_answers()) <= q
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
    /// A DNS server's counts on `version` (`None` from an HTTP edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsCounts>,
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

    #[test]
    fn dns_buckets_cover_every_latency() {
        assert_eq!(dns_latency_bucket(0), 0);
        assert_eq!(dns_latency_bucket(8), 0);
        assert_eq!(dns_latency_bucket(9), 1);
        assert_eq!(dns_latency_bucket(262_144), DNS_LATENCY_BUCKETS - 2);
        assert_eq!(dns_latency_bucket(u64::MAX), DNS_LATENCY_BUCKETS - 1);
    }

    fn pop(name: &str, answers: u64) -> PopAnswers {
        PopAnswers {
            pop: name.into(),
            answers,
        }
    }

    #[test]
    fn dns_since_subtracts_a_snapshot_and_add_sums() {
        let start = DnsCounts {
            queries: 100,
            nxdomain: 5,
            fallback: 3,
            answers_by_pop: vec![pop("fra", 50), pop("ams", 40)],
            latency_us: vec![90, 10],
            ..DnsCounts::default()
        };
        let now = DnsCounts {
            queries: 160,
            nxdomain: 6,
            fallback: 3,
            answers_by_pop: vec![pop("fra", 90), pop("ams", 40), pop("lhr", 7)],
            latency_us: vec![140, 15, 5],
            ..DnsCounts::default()
        };
        let d = now.since(&start);
        assert_eq!((d.queries, d.nxdomain, d.fallback), (60, 1, 0));
        assert_eq!(d.answers_by_pop, vec![pop("fra", 40), pop("lhr", 7)]);
        assert_eq!(d.latency_us, vec![50, 5, 5]);
        assert!(d.is_plausible());
        // Counters that restarted (a new process) saturate at zero.
        let d = start.since(&now);
        assert_eq!(d.queries, 0);
        assert!(d.answers_by_pop.is_empty());
        let mut sum = start.clone();
        sum.add(&now);
        assert_eq!(sum.queries, 260);
        assert_eq!(
            sum.answers_by_pop,
            vec![pop("fra", 140), pop("ams", 80), pop("lhr", 7)]
        );
        assert_eq!(sum.latency_us, vec![230, 25, 5]);
    }

    #[test]
    fn implausible_dns_counts_are_refused() {
        let ok = DnsCounts {
            queries: 10,
            servfail: 1,
            fallback: 2,
            answers_by_pop: vec![pop("fra", 8)],
            ..DnsCounts::default()
        };
        assert!(ok.is_plausible());
        for bad in [
            DnsCounts {
                servfail: 11,
                ..ok.clone()
            },
            DnsCounts {
                answers_by_pop: vec![pop("fra", 9)],
                ..ok.clone()
            },
            DnsCounts {
                answers_by_pop: vec![pop("", 1)],
                ..ok.clone()
            },
            DnsCounts {
                latency_us: vec![0; DNS_LATENCY_BUCKETS + 1],
                ..ok.clone()
            },
            DnsCounts {
                queries: u64::MAX,
                ..ok.clone()
            },
        ] {
            assert!(!bad.is_plausible(), "{bad:?}");
        }
        let many = DnsCounts {
            queries: 10_000,
            answers_by_pop: (0..=MAX_REPORTED_POPS)
                .map(|i| pop(&format!("p{i}"), 1))
                .collect(),
            ..DnsCounts::default()
        };
        assert!(!many.is_plausible());
    }

    #[test]
    fn a_report_without_dns_parses_and_omits_it() {
        let r = HealthReport::default();
        let json = serde_json::to_string(&r).unwrap_or_default();
        assert!(!json.contains("dns"), "{json}");
        let back: HealthReport = serde_json::from_str(
            r#"{"version":3,"since_ms":1,"total":{},"services":[],"dns":{"queries":4,"answers_by_pop":[{"pop":"fra","answers":2}]}}"#,
        )
        .unwrap_or_default();
        assert_eq!(back.version, 3);
        assert_eq!(back.dns.map(|d| d.pop_answers()), Some(2));
    }
}
