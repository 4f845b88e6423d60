//! Each POP's health from its edges (`GET /v1/pops`), for the DNS servers, which steer
//! clients away from POPs that are down (and also check the POPs themselves, so that a
//! control-plane outage does not freeze what they know).
//!
//! Only HTTP edges count (reports with `role = "edge"`; DNS servers are fleet members too but
//! serve no POP). An edge is **live** when seen (long-poll, report or health report) within
//! the fleet's `[rollout] edge_gone_s` — the window after which rollouts, too, call an edge
//! gone (default 60 s, well above the edges' 10 s heartbeat and 25 s long-poll); it is
//! **healthy** when live and serving a version. A POP is **healthy** when at least one of its
//! edges is: one serving edge still answers the addresses DNS hands out for it.
//!
//! An edge reporting `stale` (no fresh target from the control plane) keeps serving its
//! last-known-good version, so it stays healthy; it is counted apart. Were it unhealthy, a
//! control-plane fault that leaves every edge without fresh signatures would empty every POP
//! at once and send all clients to the fallback.

use crate::plane::{Plane, PlaneError};
use firebreak_protocol::api::{
    EdgeStatus, MemberRole, PopHealth, PopHealthList, MAX_LABEL_LEN, MAX_LISTENER_URL_LEN,
    MAX_POP_HEALTH_POPS, MAX_POP_LISTENERS,
};
use firebreak_protocol::now_ms;
use std::collections::BTreeMap;

impl Plane {
    /// Each POP's health as the registry shows it now (see the module's documentation).
    pub async fn pop_health(&self) -> Result<PopHealthList, PlaneError> {
        let window = self.live_window_ms().await;
        let fleet = self.fleet().await?;
        Ok(pop_health_of(&fleet, now_ms(), window))
    }

    /// The fleet's running version's `[rollout] edge_gone_s`, in ms; the default when the fleet
    /// runs nothing yet or the version cannot be read (logged).
    pub(crate) async fn live_window_ms(&self) -> u64 {
        let default = firebreak_config::RolloutConfig::default()
            .edge_gone_s
            .saturating_mul(1000);
        let Some(version) = self.fleet_state().default_version() else {
            return default;
        };
        if let Ok(cached) = self.live_window.lock() {
            if let Some((v, ms)) = *cached {
                if v == version {
                    return ms;
                }
            }
        }
        let ms = match self.rollout_settings(version).await {
            Ok(settings) => settings.edge_gone_s.saturating_mul(1000),
            // A version that does not exist will not appear: said once, not at every look
            // (the status page's reconciler looks twice a second).
            Err(e @ crate::plane::PlaneError::NotFound(_)) => {
                tracing::warn!(version, error = %e, "cannot read the live window; using the default");
                default
            }
            Err(e) => {
                tracing::warn!(version, error = %e, "cannot read the live window; using the default");
                return default;
            }
        };
        if let Ok(mut cached) = self.live_window.lock() {
            *cached = Some((version, ms));
        }
        ms
    }
}

/// The POP health list of `fleet` at `now`, with edges live when seen within `window` ms.
/// POPs by name; at most [`MAX_POP_HEALTH_POPS`]; POP names longer than [`MAX_LABEL_LEN`]
/// (which no DNS data can name) are left out.
pub(crate) fn pop_health_of(fleet: &[EdgeStatus], now: u64, window: u64) -> PopHealthList {
    let mut pops: BTreeMap<&str, PopHealth> = BTreeMap::new();
    for e in fleet {
        let r = &e.report;
        if r.role != MemberRole::Edge || r.pop.len() > MAX_LABEL_LEN {
            continue;
        }
        let pop = pops.entry(r.pop.as_str()).or_insert_with(|| PopHealth {
            pop: r.pop.clone(),
            edges: 0,
            live: 0,
            healthy_edges: 0,
            stale: 0,
            healthy: false,
            listen: Vec::new(),
        });
        pop.edges = pop.edges.saturating_add(1);
        if now.saturating_sub(e.last_seen_ms) > window {
            continue;
        }
        pop.live = pop.live.saturating_add(1);
        if r.stale.is_some() {
            pop.stale = pop.stale.saturating_add(1);
        }
        if r.applied_version.is_some() {
            pop.healthy_edges = pop.healthy_edges.saturating_add(1);
            pop.healthy = true;
            // Where other POPs' edges reach this one for tiered caching: plain HTTP only.
            pop.listen.extend(
                r.listen
                    .iter()
                    .filter(|l| l.starts_with("http://") && l.len() <= MAX_LISTENER_URL_LEN)
                    .cloned(),
            );
        }
    }
    for pop in pops.values_mut() {
        pop.listen.sort_unstable();
        pop.listen.dedup();
        pop.listen.truncate(MAX_POP_LISTENERS);
    }
    let truncated = pops.len() > MAX_POP_HEALTH_POPS;
    PopHealthList {
        at_ms: now,
        live_window_ms: window,
        pops: pops.into_values().take(MAX_POP_HEALTH_POPS).collect(),
        truncated,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use firebreak_protocol::api::EdgeReport;

    /// A fleet member for tests: `id` of `pop`, seen at `seen`, on `applied`.
    pub(crate) fn member(
        id: &str,
        pop: &str,
        seen: u64,
        applied: Option<u64>,
        role: MemberRole,
    ) -> EdgeStatus {
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
                role,
            },
            last_seen_ms: seen,
            cert_expiry_ms: None,
        }
    }

    #[test]
    fn a_pop_is_healthy_while_one_live_edge_serves() {
        let now = 1_000_000;
        let mut stale = member("a2", "ams", now - 100, Some(3), MemberRole::Edge);
        stale.report.stale = Some("no fresh target".into());
        let fleet = vec![
            member("a1", "ams", now - 120_000, Some(3), MemberRole::Edge),
            stale,
            member("f1", "fra", now - 120_000, Some(3), MemberRole::Edge),
            member("f2", "fra", now - 10, None, MemberRole::Edge),
            // DNS servers are members, not edges of a POP.
            member("d1", "nyc", now, Some(3), MemberRole::Dns),
        ];
        let list = pop_health_of(&fleet, now, 60_000);
        assert_eq!(list.at_ms, now);
        assert_eq!(list.live_window_ms, 60_000);
        assert!(!list.truncated);
        let names: Vec<&str> = list.pops.iter().map(|p| p.pop.as_str()).collect();
        assert_eq!(names, ["ams", "fra"]);
        let ams = &list.pops[0];
        assert_eq!(
            (ams.edges, ams.live, ams.healthy_edges, ams.stale),
            (2, 1, 1, 1)
        );
        assert!(ams.healthy, "a stale edge still serves");
        let fra = &list.pops[1];
        assert_eq!((fra.edges, fra.live, fra.healthy_edges), (2, 1, 0));
        assert!(!fra.healthy, "one edge gone, the other serving nothing");
    }

    #[test]
    fn a_pop_lists_its_live_serving_edges_plain_listeners() {
        let now = 1_000_000;
        let mut a = member("a1", "pa", now, Some(3), MemberRole::Edge);
        a.report.listen = vec!["http://127.0.0.1:2".into(), "https://127.0.0.1:3".into()];
        let mut b = member("a2", "pa", now, Some(3), MemberRole::Edge);
        b.report.listen = vec!["http://127.0.0.1:1".into()];
        let mut gone = member("a3", "pa", now - 120_000, Some(3), MemberRole::Edge);
        gone.report.listen = vec!["http://127.0.0.1:9".into()];
        let mut idle = member("a4", "pa", now, None, MemberRole::Edge);
        idle.report.listen = vec!["http://127.0.0.1:8".into()];
        let mut dns = member("d1", "pa", now, Some(3), MemberRole::Dns);
        dns.report.listen = vec!["http://127.0.0.1:7".into()];
        let list = pop_health_of(&[a, b, gone, idle, dns], now, 60_000);
        assert_eq!(
            list.pops[0].listen,
            ["http://127.0.0.1:1", "http://127.0.0.1:2"],
            "live, serving HTTP edges' plain listeners only"
        );
        let many: Vec<EdgeStatus> = (0..MAX_POP_LISTENERS + 10)
            .map(|i| {
                let mut m = member(&format!("e{i}"), "big", now, Some(1), MemberRole::Edge);
                m.report.listen = vec![format!("http://127.0.0.1:{}", 1000 + i)];
                m
            })
            .collect();
        assert_eq!(
            pop_health_of(&many, now, 60_000).pops[0].listen.len(),
            MAX_POP_LISTENERS
        );
    }

    #[test]
    fn the_list_is_bounded() {
        let fleet: Vec<EdgeStatus> = (0..MAX_POP_HEALTH_POPS + 5)
            .map(|i| {
                member(
                    &format!("e{i}"),
                    &format!("p{i:05}"),
                    0,
                    Some(1),
                    MemberRole::Edge,
                )
            })
            .chain(std::iter::once(member(
                "long",
                &"x".repeat(MAX_LABEL_LEN + 1),
                0,
                Some(1),
                MemberRole::Edge,
            )))
            .collect();
        let list = pop_health_of(&fleet, 0, 1);
        assert_eq!(list.pops.len(), MAX_POP_HEALTH_POPS);
        assert!(list.truncated);
        assert!(list.pops.iter().all(|p| p.pop.len() <= MAX_LABEL_LEN));
    }
}
