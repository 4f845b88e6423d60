//! The edges' health reports, kept in memory (they are many, frequent and only useful fresh):
//! the latest report of each edge, and for each wave a mark — every baseline edge's report
//! when the wave's gate first looked — so that the baseline is judged on the same window as
//! the wave.

use super::gate::Evidence;
use firebreak_protocol::health::{Counts, DnsCounts, HealthReport, ServiceHealth};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Most edges whose reports are kept.
const MAX_EDGES: usize = 100_000;

/// Latest reports and per-wave marks.
#[derive(Default)]
pub struct HealthBook {
    latest: Mutex<HashMap<String, HealthReport>>,
    /// (rollout id, wave) → baseline reports when the wave's gate first looked.
    marks: Mutex<HashMap<(u64, usize), HashMap<String, HealthReport>>>,
}

fn merge(
    into: &mut Vec<ServiceHealth>,
    services: &[ServiceHealth],
    minus: Option<&[ServiceHealth]>,
) {
    for s in services {
        let counts = match minus.and_then(|m| m.iter().find(|b| b.service == s.service)) {
            Some(before) => s.counts.since(&before.counts),
            None => s.counts.clone(),
        };
        match into.iter_mut().find(|x| x.service == s.service) {
            Some(x) => x.counts.add(&counts),
            None => into.push(ServiceHealth {
                service: s.service.clone(),
                counts,
            }),
        }
    }
}

impl HealthBook {
    /// Records an edge's report (replacing its previous one).
    pub fn record(&self, id: &str, report: HealthReport) {
        if let Ok(mut latest) = self.latest.lock() {
            if latest.len() < MAX_EDGES || latest.contains_key(id) {
                latest.insert(id.to_owned(), report);
            }
        }
    }

    /// The latest report of an edge.
    pub fn latest(&self, id: &str) -> Option<HealthReport> {
        self.latest.lock().ok()?.get(id).cloned()
    }

    /// Forgets the marks of a rollout.
    pub fn forget(&self, rollout: u64) {
        if let Ok(mut marks) = self.marks.lock() {
            marks.retain(|(r, _), _| *r != rollout);
        }
    }

    /// What the gate of wave `wave` of rollout `rollout` sees: the `members`' counts on
    /// `version` (since they took it), and every other edge's counts on `baseline_version`
    /// since the wave's first look. Returns the evidence and whether the mark was just taken.
    /// Reports that carry `dns` (DNS servers) also add to `wave_dns` / `baseline_dns`; the
    /// others are counted as the wave's HTTP members.
    pub fn evidence(
        &self,
        rollout: u64,
        wave: usize,
        members: &HashSet<String>,
        version: u64,
        baseline_version: Option<u64>,
    ) -> (Evidence, bool) {
        let latest = match self.latest.lock() {
            Ok(l) => l.clone(),
            Err(_) => return (Evidence::default(), false),
        };
        let mut fresh = false;
        let marks = match self.marks.lock() {
            Ok(mut marks) => marks
                .entry((rollout, wave))
                .or_insert_with(|| {
                    fresh = true;
                    latest
                        .iter()
                        .filter(|(id, r)| {
                            !members.contains(*id) && Some(r.version) == baseline_version
                        })
                        .map(|(id, r)| (id.clone(), r.clone()))
                        .collect()
                })
                .clone(),
            Err(_) => HashMap::new(),
        };
        let mut e = Evidence::default();
        let mut baseline = Counts::default();
        let mut baseline_edges = 0;
        for (id, r) in &latest {
            if members.contains(id) {
                if r.version == version {
                    e.wave.add(&r.total);
                    merge(&mut e.wave_services, &r.services, None);
                    match &r.dns {
                        Some(d) => e.wave_dns.get_or_insert_with(DnsCounts::default).add(d),
                        None => e.wave_http_members += 1,
                    }
                }
            } else if Some(r.version) == baseline_version {
                if let Some(mark) = marks.get(id).filter(|m| m.version == r.version) {
                    baseline.add(&r.total.since(&mark.total));
                    merge(&mut e.baseline_services, &r.services, Some(&mark.services));
                    baseline_edges += 1;
                    if let Some(d) = &r.dns {
                        let since = match &mark.dns {
                            Some(before) => d.since(before),
                            None => d.clone(),
                        };
                        e.baseline_dns
                            .get_or_insert_with(DnsCounts::default)
                            .add(&since);
                    }
                }
            }
        }
        if baseline_edges > 0 {
            e.baseline = Some(baseline);
        } else {
            e.baseline_services.clear();
        }
        (e, fresh)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use firebreak_protocol::health::PopAnswers;

    fn report(version: u64, requests: u64, dns: Option<(u64, u64)>) -> HealthReport {
        HealthReport {
            version,
            total: Counts {
                requests,
                ..Counts::default()
            },
            dns: dns.map(|(queries, fra)| DnsCounts {
                queries,
                answers_by_pop: vec![PopAnswers {
                    pop: "fra".into(),
                    answers: fra,
                }],
                ..DnsCounts::default()
            }),
            ..HealthReport::default()
        }
    }

    #[test]
    fn dns_counts_are_summed_apart_and_the_baseline_since_its_mark() {
        let book = HealthBook::default();
        book.record("edge-1", report(2, 100, None));
        book.record("dns-1", report(2, 0, Some((50, 40))));
        book.record("dns-2", report(2, 0, Some((30, 20))));
        book.record("dns-9", report(1, 0, Some((1000, 900))));
        book.record("edge-9", report(1, 500, None));
        let members: HashSet<String> = ["edge-1", "dns-1", "dns-2"].map(String::from).into();
        let (e, fresh) = book.evidence(7, 0, &members, 2, Some(1));
        assert!(fresh);
        assert_eq!(e.wave.requests, 100);
        assert_eq!(e.wave_http_members, 1);
        let w = e.wave_dns.as_ref().unwrap();
        assert_eq!((w.queries, w.pop_answers()), (80, 60));
        // The baseline starts at its mark: nothing yet.
        assert_eq!(e.baseline_dns.as_ref().map(|b| b.queries), Some(0));
        book.record("dns-9", report(1, 0, Some((1300, 1100))));
        let (e, fresh) = book.evidence(7, 0, &members, 2, Some(1));
        assert!(!fresh);
        let b = e.baseline_dns.unwrap();
        assert_eq!((b.queries, b.pop_answers()), (300, 200));
        // A wave of HTTP edges only: no DNS evidence at all.
        let only: HashSet<String> = ["edge-1".to_owned()].into();
        let (e, _) = book.evidence(8, 0, &only, 2, Some(1));
        assert!(e.wave_dns.is_none());
        assert_eq!(e.wave_http_members, 1);
    }
}
