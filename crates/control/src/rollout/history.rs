//! What the dashboard plots, kept in memory and bounded: each gate check's value against its
//! threshold at every look of the running rollout ([`GateHistory`]), and the fleet's traffic
//! over the last hour per POP and per service from the edges' health reports
//! ([`TrafficBook`]). Neither is stored: a restarted control plane starts empty.

use super::gate::GateReport;
use firebreak_protocol::health::{Counts, HealthReport};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Most looks kept per rollout (at one look a second: twelve minutes; at the usual 10 s
/// interval: two hours).
pub const MAX_GATE_POINTS: usize = 720;
/// Most checks kept per look (every failing one first).
pub const MAX_CHECKS_PER_POINT: usize = 32;

/// One check's numbers at one look.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckPoint {
    /// `total`, `service:NAME`, `dns`…
    pub scope: String,
    /// `5xx`, `p99_ms`…
    pub metric: String,
    /// The wave's value.
    pub value: f64,
    /// The value it must not exceed.
    pub threshold: f64,
    /// Whether it failed.
    pub failed: bool,
}

/// One look of the gate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GatePoint {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The wave (0-based).
    pub wave: usize,
    /// Its checks.
    pub checks: Vec<CheckPoint>,
}

/// The gate's looks at the newest rollout only (a new rollout starts a new history).
#[derive(Default)]
pub struct GateHistory {
    inner: Mutex<Option<(u64, VecDeque<GatePoint>)>>,
}

impl GateHistory {
    /// Notes a look at wave `wave` of rollout `rollout`.
    pub fn record(&self, rollout: u64, wave: usize, at_ms: u64, report: &GateReport) {
        let mut checks: Vec<&super::gate::Check> = report.checks.iter().collect();
        // Failing checks first, so that truncating never hides one.
        checks.sort_by_key(|c| !c.failed);
        let point = GatePoint {
            at_ms,
            wave,
            checks: checks
                .into_iter()
                .take(MAX_CHECKS_PER_POINT)
                .map(|c| CheckPoint {
                    scope: c.scope.clone(),
                    metric: c.metric.clone(),
                    value: c.wave,
                    threshold: c.threshold,
                    failed: c.failed,
                })
                .collect(),
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        match inner.as_mut() {
            Some((id, points)) if *id == rollout => {
                if points.len() >= MAX_GATE_POINTS {
                    points.pop_front();
                }
                points.push_back(point);
            }
            _ => *inner = Some((rollout, VecDeque::from([point]))),
        }
    }

    /// The looks at rollout `rollout`, oldest first (empty if it is not the newest).
    pub fn points(&self, rollout: u64) -> Vec<GatePoint> {
        match self.inner.lock() {
            Ok(inner) => match inner.as_ref() {
                Some((id, points)) if *id == rollout => points.iter().cloned().collect(),
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        }
    }
}

/// Width of one traffic bucket.
pub const TRAFFIC_BUCKET_MS: u64 = 60_000;
/// Buckets kept: one hour.
pub const TRAFFIC_BUCKETS: usize = 60;
/// Most series (POPs plus services) a bucket holds; further ones are counted under `other`.
pub const MAX_TRAFFIC_SERIES: usize = 256;

/// What a bucket adds up for one POP or service.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TrafficCounts {
    /// Requests.
    pub requests: u64,
    /// Cache hits.
    pub hits: u64,
    /// 5xx answers.
    pub status_5xx: u64,
    /// Latency histogram (the health report's buckets).
    pub latency: Vec<u64>,
}

impl TrafficCounts {
    fn add(&mut self, c: &Counts) {
        self.requests = self.requests.saturating_add(c.requests);
        self.hits = self.hits.saturating_add(c.hits);
        self.status_5xx = self.status_5xx.saturating_add(c.status_5xx);
        if self.latency.len() < c.latency.len() {
            self.latency.resize(c.latency.len(), 0);
        }
        for (into, n) in self.latency.iter_mut().zip(&c.latency) {
            *into = into.saturating_add(*n);
        }
    }
}

/// One minute of the fleet's traffic.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TrafficBucket {
    /// Start of the minute (ms since the epoch).
    pub start_ms: u64,
    /// Per POP.
    pub pops: BTreeMap<String, TrafficCounts>,
    /// Per service.
    pub services: BTreeMap<String, TrafficCounts>,
}

fn series<'a>(map: &'a mut BTreeMap<String, TrafficCounts>, name: &str) -> &'a mut TrafficCounts {
    let name = if map.contains_key(name) || map.len() < MAX_TRAFFIC_SERIES {
        name
    } else {
        "other"
    };
    map.entry(name.to_owned()).or_default()
}

/// The last hour of traffic, from the increments between each edge's successive health
/// reports (reports carry counts since the version was applied; the previous one is the
/// [`super::health::HealthBook`]'s).
#[derive(Default)]
pub struct TrafficBook {
    buckets: Mutex<VecDeque<TrafficBucket>>,
}

impl TrafficBook {
    /// Adds what an edge in `pop` served between its `previous` report and `report`.
    pub fn record(
        &self,
        pop: &str,
        previous: Option<&HealthReport>,
        report: &HealthReport,
        now_ms: u64,
    ) {
        let fresh = |prev: &HealthReport| {
            prev.version == report.version && prev.since_ms == report.since_ms
        };
        let (total, services): (Counts, Vec<(String, Counts)>) = match previous {
            Some(prev) if fresh(prev) => (
                report.total.since(&prev.total),
                report
                    .services
                    .iter()
                    .map(|s| {
                        let before = prev.services.iter().find(|p| p.service == s.service);
                        let c =
                            before.map_or_else(|| s.counts.clone(), |b| s.counts.since(&b.counts));
                        (s.service.clone(), c)
                    })
                    .collect(),
            ),
            _ => (
                report.total.clone(),
                report
                    .services
                    .iter()
                    .map(|s| (s.service.clone(), s.counts.clone()))
                    .collect(),
            ),
        };
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        let start = now_ms - now_ms % TRAFFIC_BUCKET_MS;
        let bucket = match buckets.back_mut() {
            Some(b) if b.start_ms == start => b,
            _ => {
                buckets.push_back(TrafficBucket {
                    start_ms: start,
                    ..TrafficBucket::default()
                });
                while buckets.len() > TRAFFIC_BUCKETS {
                    buckets.pop_front();
                }
                match buckets.back_mut() {
                    Some(b) => b,
                    None => return,
                }
            }
        };
        series(&mut bucket.pops, pop).add(&total);
        for (name, c) in &services {
            series(&mut bucket.services, name).add(c);
        }
    }

    /// The buckets of the last hour before `now_ms`, oldest first.
    pub fn last_hour(&self, now_ms: u64) -> Vec<TrafficBucket> {
        let from = now_ms.saturating_sub(TRAFFIC_BUCKET_MS * TRAFFIC_BUCKETS as u64);
        match self.buckets.lock() {
            Ok(buckets) => buckets
                .iter()
                .filter(|b| b.start_ms >= from)
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The 99th percentile of a latency histogram in ms (0 without requests).
pub fn p99_ms(latency: &[u64]) -> f64 {
    super::gate::percentile_ms(latency, 0.99)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rollout::gate::{Check, Verdict};

    fn report(checks: usize) -> GateReport {
        GateReport {
            verdict: Verdict::Wait,
            reason: String::new(),
            wave_requests: 0,
            baseline_requests: 0,
            wave_queries: 0,
            baseline_queries: 0,
            z_critical: 0.0,
            checks: (0..checks)
                .map(|i| Check {
                    scope: "total".into(),
                    metric: format!("m{i}"),
                    wave: i as f64,
                    baseline: None,
                    threshold: 1.0,
                    z: None,
                    n: 0,
                    failed: i == checks - 1,
                })
                .collect(),
        }
    }

    #[test]
    fn the_gate_history_is_bounded_and_per_rollout() {
        let h = GateHistory::default();
        for i in 0..(MAX_GATE_POINTS + 10) {
            h.record(7, 0, i as u64, &report(MAX_CHECKS_PER_POINT + 5));
        }
        let points = h.points(7);
        assert_eq!(points.len(), MAX_GATE_POINTS);
        assert_eq!(points[0].at_ms, 10);
        assert_eq!(points[0].checks.len(), MAX_CHECKS_PER_POINT);
        assert!(points[0].checks[0].failed, "a failing check is never cut");
        h.record(8, 0, 1, &report(1));
        assert!(h.points(7).is_empty());
        assert_eq!(h.points(8).len(), 1);
    }

    fn health(version: u64, requests: u64) -> HealthReport {
        HealthReport {
            version,
            since_ms: 1,
            total: Counts {
                requests,
                status_5xx: requests / 10,
                ..Counts::default()
            },
            services: vec![firebreak_protocol::health::ServiceHealth {
                service: "www".into(),
                counts: Counts {
                    requests,
                    ..Counts::default()
                },
            }],
            cert_expiry_ms: None,
            dns: None,
        }
    }

    #[test]
    fn traffic_counts_increments_and_keeps_one_hour() {
        let t = TrafficBook::default();
        t.record("ams", None, &health(1, 100), 0);
        t.record("ams", Some(&health(1, 100)), &health(1, 150), 1_000);
        let b = t.last_hour(1_000);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].pops["ams"].requests, 150);
        assert_eq!(b[0].services["www"].requests, 150);
        t.record(
            "ams",
            Some(&health(1, 150)),
            &health(1, 170),
            TRAFFIC_BUCKET_MS,
        );
        let b = t.last_hour(TRAFFIC_BUCKET_MS);
        assert_eq!(b[1].pops["ams"].requests, 20);
        // A new version starts its counts again: they count whole.
        t.record(
            "ams",
            Some(&health(1, 170)),
            &health(2, 5),
            TRAFFIC_BUCKET_MS + 1,
        );
        assert_eq!(t.last_hour(TRAFFIC_BUCKET_MS)[1].pops["ams"].requests, 25);
        for m in 0..(TRAFFIC_BUCKETS as u64 + 5) {
            t.record("ams", None, &health(1, 1), (m + 2) * TRAFFIC_BUCKET_MS);
        }
        assert!(t.last_hour(100 * TRAFFIC_BUCKET_MS).len() <= TRAFFIC_BUCKETS);
    }
}
