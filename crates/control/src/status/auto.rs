//! Incidents the control plane opens and closes by itself, reconciled like a controller: a
//! loop compares the conditions it observes with the open automatic incidents and takes the
//! idempotent step (one open incident per condition, in one compare-and-set document, so
//! replicas cannot open it twice).
//!
//! Conditions:
//! - `pop/NAME`: the POP is unhealthy (no live edge serving a version, as `GET /v1/pops`
//!   tells the DNS servers) after it served: a POP whose edges have never applied a version
//!   (a new POP, the fleet's first rollout) is starting, not down. Edges count as seen from
//!   this replica's start, like the rollout driver, so a restart does not call every POP down.
//! - `dns/fallback`: DNS answers with fallbacks: a region is sent to a lower tier of its
//!   preference list, or a service's own fallback answers because no POP of its is healthy
//!   in some region — computed by [`crate::steering`] from the running version's `[dns]` data
//!   and the POP health the DNS servers read, as the dashboard's DNS page shows it — or a DNS
//!   server's latest health report counts fallback answers (its own active checks may see what
//!   the control plane does not). Only after some POP served, like `pop/NAME`.
//! - `gate/ROLLOUT`: a rollout's health gate tripped and rolled it back (`gate_tripped`,
//!   called where the rollback starts); it ends when no rollout runs held by it and every live
//!   member runs the fleet's target version again, or when a newer rollout starts.

use super::incidents::{Impact, NewIncident};
use crate::plane::{Plane, PlaneError};
use crate::rollout::state::{FleetState, Rollout};
use firebreak_protocol::api::{EdgeStatus, MemberRole, PopHealth};
use firebreak_protocol::now_ms;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What the conditions are judged from.
pub(crate) struct Signals {
    /// Each POP's health.
    pub(crate) pops: Vec<PopHealth>,
    /// Every fleet member, seen no earlier than this replica's start.
    fleet: Vec<EdgeStatus>,
    /// The live window, ms.
    window: u64,
    /// POPs with an edge that applied a version (its last report): the others are starting.
    served: BTreeSet<String>,
    /// The fleet state.
    state: FleetState,
    /// When read.
    now: u64,
    /// DNS fallbacks in use, described (empty: none, or no DNS in the running version).
    fallbacks: Vec<String>,
}

/// What the conditions need beyond one read of the registry, kept between looks: the running
/// version's configuration, parsed once per version (the reconciler looks twice a second, the
/// status page and its export every two seconds), and each DNS server's last report.
#[derive(Default)]
pub struct StatusInputs {
    config: Option<(u64, Arc<firebreak_config::ValidConfig>)>,
    dns: BTreeMap<String, DnsSeen>,
}

/// A DNS server's report as last seen: which counting period (version, start), how many
/// queries and fallback answers in it, and how many fallback answers its latest report added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DnsSeen {
    period: (u64, u64),
    queries: u64,
    fallback: u64,
    added: u64,
}

/// Most DNS servers followed.
const MAX_DNS_SEEN: usize = 1024;

impl StatusInputs {
    async fn config(&mut self, plane: &Plane) -> Option<Arc<firebreak_config::ValidConfig>> {
        let v = plane.fleet_state().default_version()?;
        if let Some((cached, config)) = &self.config {
            if *cached == v {
                return Some(config.clone());
            }
        }
        let doc = plane.version(v).await.ok()?.document;
        let parsed = tokio::task::spawn_blocking(move || {
            firebreak_config::parse_managed_str(&format!("version {v}"), &doc).ok()
        })
        .await
        .ok()
        .flatten()?;
        let parsed = Arc::new(parsed);
        self.config = Some((v, parsed.clone()));
        Some(parsed)
    }

    /// Takes in DNS server `id`'s latest report: its version, counting start, queries and
    /// fallback answers (fallback plus last-healthy) so far; returns the fallback answers its
    /// latest report added. A report seen for the first time adds nothing (its answers may be
    /// old: the control plane just started); a new counting period adds all of its answers.
    fn dns_report(&mut self, id: &str, period: (u64, u64), queries: u64, fallback: u64) -> u64 {
        let next = match self.dns.get(id) {
            None => DnsSeen {
                period,
                queries,
                fallback,
                added: 0,
            },
            Some(seen) if seen.period == period && seen.queries == queries => *seen,
            Some(seen) if seen.period == period => DnsSeen {
                period,
                queries,
                fallback,
                added: fallback.saturating_sub(seen.fallback),
            },
            Some(_) => DnsSeen {
                period,
                queries,
                fallback,
                added: fallback,
            },
        };
        if self.dns.len() < MAX_DNS_SEEN || self.dns.contains_key(id) {
            self.dns.insert(id.to_owned(), next);
        }
        next.added
    }
}

/// The fallbacks DNS steering uses under `health` by the running configuration (none
/// without one, or without `[dns]`). A POP still starting (never `served`) is not a failure
/// DNS routes around: judged as healthy here, as `pop/NAME` does not call it down.
fn steering_fallbacks(
    config: Option<&firebreak_config::Config>,
    health: &firebreak_protocol::api::PopHealthList,
    served: &BTreeSet<String>,
) -> Vec<String> {
    let Some(config) = config else {
        return Vec::new();
    };
    let mut judged = health.clone();
    for p in &mut judged.pops {
        p.healthy |= !served.contains(&p.pop);
    }
    crate::steering::steering(config, &judged)
        .map(|s| s.fallbacks())
        .unwrap_or_default()
}

impl Signals {
    /// Reads the registry and the fleet state.
    pub(crate) async fn read(plane: &Plane) -> Result<Self, PlaneError> {
        let window = plane.live_window_ms().await;
        let mut fleet = plane.fleet().await?;
        for e in &mut fleet {
            e.last_seen_ms = e.last_seen_ms.max(plane.started_ms);
        }
        let now = now_ms();
        let health = crate::pops::pop_health_of(&fleet, now, window);
        let served: BTreeSet<String> = fleet
            .iter()
            .filter(|e| e.report.role == MemberRole::Edge && e.report.applied_version.is_some())
            .map(|e| e.report.pop.clone())
            .collect();
        let mut inputs = plane.status_inputs.lock().await;
        let config = inputs.config(plane).await;
        let mut fallbacks =
            steering_fallbacks(config.as_deref().map(|c| c.get()), &health, &served);
        // What the DNS servers say they answered: fallback answers in their latest reports.
        let mut answered = 0u64;
        let mut servers = Vec::new();
        for e in fleet.iter().filter(|e| {
            e.report.role == MemberRole::Dns && now.saturating_sub(e.last_seen_ms) <= window
        }) {
            let Some(report) = plane.health.latest(&e.id) else {
                continue;
            };
            let Some(dns) = report.dns.as_ref() else {
                continue;
            };
            let added = inputs.dns_report(
                &e.id,
                (report.version, report.since_ms),
                dns.queries,
                dns.fallback.saturating_add(dns.last_healthy),
            );
            if added > 0 {
                answered = answered.saturating_add(added);
                servers.push(e.id.clone());
            }
        }
        drop(inputs);
        if answered > 0 {
            fallbacks.push(format!(
                "{answered} fallback answers in the latest reports of DNS server(s) {}",
                servers.join(", ")
            ));
        }
        let pops = health.pops;
        Ok(Self {
            pops,
            served,
            fleet,
            window,
            state: plane.fleet_state(),
            now,
            fallbacks,
        })
    }

    /// Whether DNS serves fallbacks (see the module's documentation).
    pub(crate) fn dns_fallback(&self) -> bool {
        !self.served.is_empty() && !self.fallbacks.is_empty()
    }

    /// Whether POP `p` is down: unhealthy after it served.
    pub(crate) fn down(&self, p: &PopHealth) -> bool {
        !p.healthy && self.served.contains(&p.pop)
    }

    /// Whether the fleet is back on its target after a rollback of `rollout` (or moved on to a
    /// newer rollout).
    fn recovered_from(&self, rollout: u64) -> bool {
        if self.state.running().is_some_and(|r| r.id == rollout) {
            return false;
        }
        // A newer rollout started: the fleet moved on (its own gate judges it).
        if self.state.rollout.as_ref().is_some_and(|r| r.id > rollout) {
            return true;
        }
        let Some(target) = self.state.default_version() else {
            return true;
        };
        self.fleet
            .iter()
            .filter(|e| self.now.saturating_sub(e.last_seen_ms) <= self.window)
            .all(|e| e.report.applied_version == Some(target))
    }

    /// The conditions holding now that open incidents, by condition.
    fn opening(&self) -> BTreeMap<String, NewIncident> {
        let mut out = BTreeMap::new();
        for p in self.pops.iter().filter(|p| self.down(p)) {
            out.insert(
                format!("pop/{}", p.pop),
                NewIncident {
                    title: format!("POP {} is unavailable", p.pop),
                    components: vec![format!("pop/{}", p.pop)],
                    text: format!(
                        "No edge of POP {} is serving ({} edges known, {} seen recently). DNS sends clients to other POPs meanwhile.",
                        p.pop, p.edges, p.live
                    ),
                    state: None,
                    impact: Impact::Outage,
                },
            );
        }
        if self.dns_fallback() {
            out.insert(
                "dns/fallback".to_owned(),
                NewIncident {
                    title: "DNS is answering with fallback addresses".into(),
                    components: vec!["dns".into()],
                    text: format!(
                        "DNS sends clients elsewhere than their first choice: {}.",
                        self.fallbacks.join("; ")
                    ),
                    state: None,
                    impact: Impact::Degraded,
                },
            );
        }
        out
    }
}

/// Runs the reconciler every `tick` until the plane is dropped.
pub(crate) fn spawn(plane: Weak<Plane>, tick: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            let Some(plane) = plane.upgrade() else { return };
            if let Err(e) = reconcile(&plane).await {
                tracing::warn!(error = %e, "status: automatic incidents not reconciled; trying again");
            }
        }
    });
}

/// One look: opens an incident for every condition without one, resolves those whose
/// condition ended. Writes nothing when nothing changed.
pub async fn reconcile(plane: &Arc<Plane>) -> Result<(), PlaneError> {
    let signals = Signals::read(plane).await?;
    let opening = signals.opening();
    plane
        .change_incidents(|book, now| {
            let mut changed = false;
            for (condition, new) in &opening {
                match book.open_automatic(condition, new.clone(), now) {
                    Ok(opened) => changed |= opened,
                    Err(e) => tracing::warn!(condition, error = %e, "status: automatic incident not opened"),
                }
            }
            let mut active: BTreeSet<String> = opening.keys().cloned().collect();
            for i in book.open_incidents() {
                if let Some(rollout) = i
                    .automatic
                    .as_deref()
                    .and_then(|c| c.strip_prefix("gate/"))
                    .and_then(|id| id.parse::<u64>().ok())
                {
                    if !signals.recovered_from(rollout) {
                        active.insert(format!("gate/{rollout}"));
                    }
                }
            }
            changed |= book.close_ended(&active, |_| true, now) > 0;
            Ok(((), changed))
        })
        .await
}

/// A rollout's gate tripped (called where the rollback starts): opens its incident, naming
/// the POPs of the edges that ran the version. A failure is logged, never fatal to the
/// rollback.
pub(crate) async fn gate_tripped(plane: &Plane, r: &Rollout, reason: &str) {
    let mut pops: Vec<String> = match plane.fleet().await {
        Ok(fleet) => fleet
            .iter()
            .filter(|e| e.report.role == MemberRole::Edge)
            // The edges that ran the version — by their reports, which may already say the
            // rollback's version by the time this runs, or as the rollout's canary edges.
            .filter(|e| {
                e.report.applied_version == Some(r.version)
                    || e.report.bad_versions.contains(&r.version)
                    || r.canary_edges.contains(&e.id)
            })
            .map(|e| format!("pop/{}", e.report.pop))
            .filter(|c| super::incidents::check_component(c).is_ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    pops.sort();
    pops.dedup();
    pops.truncate(super::incidents::MAX_COMPONENTS);
    if pops.is_empty() {
        pops.push("api".into());
    }
    let text: String = format!(
        "A configuration change (version {}) failed its health gate and is being rolled back: {reason}",
        r.version
    )
    .chars()
    .filter(|c| !c.is_control())
    .take(super::incidents::MAX_TEXT_CHARS)
    .collect();
    let new = NewIncident {
        title: format!("Configuration change rolled back (version {})", r.version),
        components: pops,
        text,
        state: Some(super::IncidentState::Identified),
        impact: Impact::Degraded,
    };
    let condition = format!("gate/{}", r.id);
    let result = plane
        .change_incidents(|book, now| {
            let opened = book.open_automatic(&condition, new.clone(), now)?;
            Ok(((), opened))
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(rollout = r.id, error = %e, "status: gate incident not opened");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::status::IncidentBook;

    fn edge(id: &str, pop: &str, applied: Option<u64>, seen: u64) -> EdgeStatus {
        crate::pops::tests::member(id, pop, seen, applied, MemberRole::Edge)
    }

    fn signals(fleet: Vec<EdgeStatus>, now: u64) -> Signals {
        signals_under(fleet, now, None)
    }

    /// Signals with the fallbacks of `doc`'s steering (none without a document).
    fn signals_under(fleet: Vec<EdgeStatus>, now: u64, doc: Option<&str>) -> Signals {
        let window = 1_000;
        let health = crate::pops::pop_health_of(&fleet, now, window);
        let served: BTreeSet<String> = fleet
            .iter()
            .filter(|e| e.report.applied_version.is_some())
            .map(|e| e.report.pop.clone())
            .collect();
        let config = doc.map(|d| firebreak_config::parse_managed_str("f.toml", d).unwrap());
        let fallbacks = steering_fallbacks(config.as_ref().map(|c| c.get()), &health, &served);
        let pops = health.pops;
        Signals {
            pops,
            served,
            fleet,
            window,
            state: FleetState::default(),
            now,
            fallbacks,
        }
    }

    #[test]
    fn an_unhealthy_pop_that_served_opens_one_incident_and_closes_it_when_healthy() {
        // ams serves; fra's edge went silent; new is still starting (never applied).
        let s = signals(
            vec![
                edge("a1", "ams", Some(1), 10_000),
                edge("f1", "fra", Some(1), 1_000),
                edge("n1", "new", None, 10_000),
            ],
            10_000,
        );
        let opening = s.opening();
        assert_eq!(opening.keys().collect::<Vec<_>>(), ["pop/fra"]);
        assert!(!s.dns_fallback());
        let mut book = IncidentBook::default();
        for _ in 0..2 {
            for (c, new) in &opening {
                book.open_automatic(c, new.clone(), 10_000).unwrap();
            }
        }
        assert_eq!(book.incidents.len(), 1, "idempotent");
        assert_eq!(book.incidents[0].components, ["pop/fra"]);
        // fra is back: the condition ended and its incident closes.
        let s = signals(
            vec![
                edge("a1", "ams", Some(1), 20_000),
                edge("f1", "fra", Some(1), 20_000),
            ],
            20_000,
        );
        let active: BTreeSet<String> = s.opening().into_keys().collect();
        assert_eq!(book.close_ended(&active, |_| true, 20_000), 1);
        assert!(book.open_for("pop/fra").is_none());
    }

    #[test]
    fn a_dns_servers_fallback_answers_count_from_its_next_report_on() {
        let mut inputs = StatusInputs::default();
        // First sight: its answers may be old.
        assert_eq!(inputs.dns_report("d1", (3, 100), 1000, 40), 0);
        // The same report looked at again: nothing new.
        assert_eq!(inputs.dns_report("d1", (3, 100), 1000, 40), 0);
        // A later report with more queries, none of them fallbacks.
        assert_eq!(inputs.dns_report("d1", (3, 100), 1500, 40), 0);
        // Then 25 fallback answers: counted until the next report.
        assert_eq!(inputs.dns_report("d1", (3, 100), 2000, 65), 25);
        assert_eq!(inputs.dns_report("d1", (3, 100), 2000, 65), 25);
        assert_eq!(inputs.dns_report("d1", (3, 100), 2500, 65), 0);
        // A new version: its counts start again, and all of them are new.
        assert_eq!(inputs.dns_report("d1", (4, 900), 10, 7), 7);
    }

    #[test]
    fn dns_fallback_follows_the_steering_of_the_running_version() {
        // Every POP serves: every region on its first tier.
        let all_up = vec![
            edge("a1", "ams", Some(1), 10_000),
            edge("f1", "fra", Some(1), 10_000),
            edge("n1", "nyc", Some(1), 10_000),
        ];
        let s = signals_under(all_up, 10_000, Some(crate::steering::testing::DNS_DOC));
        assert!(!s.dns_fallback());
        // ams went silent: eu is sent to fra, its second tier.
        let s = signals_under(
            vec![
                edge("a1", "ams", Some(1), 0),
                edge("f1", "fra", Some(1), 10_000),
                edge("n1", "nyc", Some(1), 10_000),
            ],
            10_000,
            Some(crate::steering::testing::DNS_DOC),
        );
        assert!(s.dns_fallback());
        let opening = s.opening();
        assert_eq!(
            opening.keys().collect::<Vec<_>>(),
            ["dns/fallback", "pop/ams"]
        );
        assert!(
            opening["dns/fallback"].text.contains("region eu → fra"),
            "{opening:?}"
        );
        // nyc went silent too: us has no POP left, and demo's own fallback answers there.
        let s = signals_under(
            vec![
                edge("a1", "ams", Some(1), 0),
                edge("f1", "fra", Some(1), 10_000),
                edge("n1", "nyc", Some(1), 0),
            ],
            10_000,
            Some(crate::steering::testing::DNS_DOC),
        );
        let text = &s.opening()["dns/fallback"].text;
        assert!(text.contains("service demo: yes, in us"), "{text}");
        // ams never served (a new POP, still starting): DNS skipping it is no incident.
        let s = signals_under(
            vec![
                edge("a1", "ams", None, 10_000),
                edge("f1", "fra", Some(1), 10_000),
                edge("n1", "nyc", Some(1), 10_000),
            ],
            10_000,
            Some(crate::steering::testing::DNS_DOC),
        );
        assert!(!s.dns_fallback());
        // No DNS in the running version: nothing to fall back from.
        let s = signals(vec![edge("a1", "ams", Some(1), 0)], 10_000);
        assert!(!s.dns_fallback());
        // A fleet still starting (nothing ever applied) is not a fallback.
        let s = signals_under(
            vec![edge("a1", "ams", None, 10_000)],
            10_000,
            Some(crate::steering::testing::DNS_DOC),
        );
        assert!(!s.dns_fallback());
        assert!(s.opening().is_empty());
    }
}
