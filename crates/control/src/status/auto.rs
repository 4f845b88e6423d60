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
//! - `dns/fallback`: DNS answers with fallbacks. The control plane has no signal from the DNS
//!   servers for this; it is derived from the POP health they use: DNS serves a service's
//!   fallback when none of its POPs is healthy, so this is "a POP served, and none is healthy
//!   now" (per service would need each service's POPs from the `[dns]` data: not done).
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
        let pops = crate::pops::pop_health_of(&fleet, now, window).pops;
        let served = fleet
            .iter()
            .filter(|e| e.report.role == MemberRole::Edge && e.report.applied_version.is_some())
            .map(|e| e.report.pop.clone())
            .collect();
        Ok(Self {
            pops,
            served,
            fleet,
            window,
            state: plane.fleet_state(),
            now,
        })
    }

    /// Whether DNS serves fallbacks (see the module's documentation).
    pub(crate) fn dns_fallback(&self) -> bool {
        !self.served.is_empty() && self.pops.iter().all(|p| !p.healthy)
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
                    text: "No POP is healthy, so DNS answers each service with its configured fallback.".into(),
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
            .filter(|e| {
                e.report.applied_version == Some(r.version)
                    || e.report.bad_versions.contains(&r.version)
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
    use firebreak_protocol::api::EdgeReport;

    fn edge(id: &str, pop: &str, applied: Option<u64>, seen: u64) -> EdgeStatus {
        EdgeStatus {
            id: id.into(),
            report: EdgeReport {
                pop: pop.into(),
                cell: "c".into(),
                admin_url: None,
                listen: Vec::new(),
                applied_version: applied,
                applied_seq: 0,
                error: None,
                failed_services: Vec::new(),
                staged: None,
                bad_versions: Vec::new(),
                stale: None,
                role: MemberRole::Edge,
            },
            last_seen_ms: seen,
            cert_expiry_ms: None,
        }
    }

    fn signals(fleet: Vec<EdgeStatus>, now: u64) -> Signals {
        let window = 1_000;
        let pops = crate::pops::pop_health_of(&fleet, now, window).pops;
        let served = fleet
            .iter()
            .filter(|e| e.report.applied_version.is_some())
            .map(|e| e.report.pop.clone())
            .collect();
        Signals {
            pops,
            served,
            fleet,
            window,
            state: FleetState::default(),
            now,
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
    fn dns_fallback_is_derived_from_no_pop_being_healthy() {
        let s = signals(
            vec![edge("a1", "ams", Some(1), 0), edge("f1", "fra", Some(1), 0)],
            10_000,
        );
        assert!(s.dns_fallback());
        let opening = s.opening();
        assert!(opening.contains_key("dns/fallback"), "{opening:?}");
        assert_eq!(opening.len(), 3);
        // A fleet still starting (nothing ever applied) is not a fallback.
        let s = signals(vec![edge("a1", "ams", None, 10_000)], 10_000);
        assert!(!s.dns_fallback());
        assert!(s.opening().is_empty());
    }
}
