//! The loop that moves a running rollout forward. Each step reads the stored state, decides,
//! and writes the next state with compare-and-set, so a replica that dies mid-step leaves
//! either the old or the new state, and replicas never take the same step twice.
//!
//! Staging: every edge seen within `edge_gone` must report the version staged; one that
//! cannot stage it stops the rollout before any edge serves it; edges unseen longer are left
//! out (and named). Waves: the wave's targets are written with the step that starts it; the
//! wave's edges must report the version applied within `activate_timeout`; every `interval`
//! the gate judges the wave against the baseline; a failure rolls back every edge that took
//! the version; a pass after `bake` starts the next wave; no verdict by `max_wait` holds the
//! rollout for an operator. An edge that crash-looped on the version (safe mode) fails the
//! gate at once.

use super::gate::{self, Verdict};
use super::state::{AuditEntry, FleetState, Phase, Rollout};
use super::TargetSpec;
use crate::plane::{Plane, PlaneError};
use firebreak_protocol::api::EdgeStatus;
use firebreak_protocol::now_ms;
use firebreak_protocol::signed::{cell_audience, edge_audience, EVERYONE};
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Runs the driver until the plane is dropped.
pub(crate) fn spawn(plane: Weak<Plane>, tick: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            let Some(plane) = plane.upgrade() else { return };
            if let Err(e) = step(&plane).await {
                tracing::warn!(error = %e, "rollout step failed; trying again");
            }
        }
    });
}

/// One look at the running rollout.
pub async fn step(plane: &Arc<Plane>) -> Result<(), PlaneError> {
    // Read the store, not the cache: another replica may have moved the rollout.
    let state = plane.store.state().await?.unwrap_or_default();
    plane.observe_state(state.clone());
    let Some(r) = state.running().cloned() else {
        return Ok(());
    };
    if r.paused || r.held.is_some() {
        return Ok(());
    }
    let mut fleet = plane.fleet().await?;
    // A replica that just started (a restart after an outage) has not heard from any edge
    // yet: their stored last-seen times are as old as the outage. Count them as seen when
    // the replica started, so that they are not taken for gone — which would stage and pass
    // waves on no evidence — before they had `edge_gone` to reconnect.
    for e in &mut fleet {
        e.last_seen_ms = e.last_seen_ms.max(plane.started_ms);
    }
    match r.phase {
        Phase::Staging => staging(plane, &r, &fleet).await,
        Phase::Wave => wave(plane, &r, &fleet).await,
        _ => Ok(()),
    }
}

fn live<'a>(r: &Rollout, fleet: &'a [EdgeStatus], now: u64) -> Vec<&'a EdgeStatus> {
    fleet
        .iter()
        .filter(|e| now.saturating_sub(e.last_seen_ms) <= r.edge_gone_ms)
        .collect()
}

async fn staging(plane: &Arc<Plane>, r: &Rollout, fleet: &[EdgeStatus]) -> Result<(), PlaneError> {
    let now = now_ms();
    let live = live(r, fleet, now);
    let excluded: Vec<String> = fleet
        .iter()
        .filter(|e| !live.iter().any(|l| l.id == e.id))
        .map(|e| {
            format!(
                "{}: not seen for {} s",
                e.id,
                now.saturating_sub(e.last_seen_ms) / 1000
            )
        })
        .collect();
    let mut waiting = Vec::new();
    for e in &live {
        let staged = e.report.applied_version == Some(r.version)
            || e.report
                .staged
                .as_ref()
                .is_some_and(|s| s.version == r.version && s.error.is_none());
        if let Some(err) = e
            .report
            .staged
            .as_ref()
            .filter(|s| s.version == r.version)
            .and_then(|s| s.error.clone())
        {
            let reason = format!("edge {} cannot stage version {}: {err}", e.id, r.version);
            return end_at_stage(plane, r, &reason).await;
        }
        if e.report.bad_versions.contains(&r.version) {
            let reason = format!(
                "edge {} refuses version {} (it crash-looped on it)",
                e.id, r.version
            );
            return end_at_stage(plane, r, &reason).await;
        }
        if !staged {
            waiting.push(e.id.clone());
        }
    }
    if !waiting.is_empty() {
        if now.saturating_sub(r.phase_since_ms) > r.stage_timeout_ms {
            let reason = format!(
                "edges did not stage version {} within {} s: {}",
                r.version,
                r.stage_timeout_ms / 1000,
                waiting.join(", ")
            );
            hold(plane, r, &reason, None).await?;
        }
        return Ok(());
    }
    // Every live edge staged it: fix the wave order and start wave 0.
    let shield_edges = crate::rollout::shield::held_edges(plane, r, &live).await?;
    let mut cells: Vec<String> = live.iter().map(|e| e.report.cell.clone()).collect();
    cells.sort();
    cells.dedup();
    // Cells holding only the shield's (held) edges go last: a planned wave of them would
    // judge nothing.
    let only_held = |c: &String| {
        live.iter()
            .filter(|e| &e.report.cell == c)
            .all(|e| shield_edges.contains(&e.id))
    };
    cells.sort_by_key(|c| only_held(c));
    let canary_cell = cells.first().cloned().unwrap_or_default();
    let mut canary: Vec<String> = live
        .iter()
        .filter(|e| e.report.cell == canary_cell && !shield_edges.contains(&e.id))
        .map(|e| e.id.clone())
        .collect();
    canary.sort();
    let id = r.id;
    let started = plane
        .update(|s, seq| {
            let Some(cur) = s
                .rollout
                .as_mut()
                .filter(|x| x.id == id && x.phase == Phase::Staging)
            else {
                return Ok(None);
            };
            cur.phase = Phase::Wave;
            cur.wave = 0;
            cur.phase_since_ms = now_ms();
            cur.cells = cells.clone();
            cur.canary_edges = canary.clone();
            cur.shield_edges = shield_edges.clone();
            cur.excluded = excluded.clone();
            let cur = cur.clone();
            write_wave_targets(plane, s, &cur, seq)?;
            Ok(Some(cur))
        })
        .await?;
    if let Some(cur) = started {
        let (cells, edges) = cur.members(0);
        plane
            .audit(AuditEntry {
                at_ms: now_ms(),
                who: "control-plane".into(),
                action: "wave".into(),
                version: Some(cur.version),
                rollout: Some(cur.id),
                message: format!(
                    "every reachable edge staged version {}; wave 1 of {} activated: cells [{}] edges [{}]{}{}",
                    cur.version,
                    cur.waves(),
                    cells.join(", "),
                    edges.join(", "),
                    if cur.shield_edges.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; shield edges held for the last wave: [{}]",
                            cur.shield_edges.join(", ")
                        )
                    },
                    if cur.excluded.is_empty() {
                        String::new()
                    } else {
                        format!("; left out: {}", cur.excluded.join("; "))
                    }
                ),
                gate: None,
            })
            .await;
    }
    Ok(())
}

/// Writes the overrides of the rollout's current wave (cells, and canary edges outside them).
fn write_wave_targets(
    plane: &Plane,
    s: &mut FleetState,
    r: &Rollout,
    seq: u64,
) -> Result<(), PlaneError> {
    let (cells, edges) = r.members(r.wave);
    let spec = |audience: String| TargetSpec {
        audience,
        version: r.version,
        sha256: &r.sha256,
        rollback: false,
        stage: None,
        rollout: Some(r.id),
        by: "control-plane",
    };
    for c in &cells {
        if s.cells.get(c).is_none_or(|t| t.version != r.version) {
            let t = plane.sign_target((s.epoch, seq), spec(cell_audience(c)))?;
            s.cells.insert(c.clone(), t);
        }
    }
    for e in &edges {
        if s.edges.get(e).is_none_or(|t| t.version != r.version) {
            let t = plane.sign_target((s.epoch, seq), spec(edge_audience(e)))?;
            s.edges.insert(e.clone(), t);
        }
    }
    // The shield's edges stay at the previous version (an edge override beats their cell's)
    // until the last wave.
    if let (Some(from), Some(from_sha)) = (r.from, r.from_sha256.as_deref()) {
        for e in r.held(r.wave) {
            if s.edges.get(e).is_none_or(|t| t.version != from) {
                let t = plane.sign_target(
                    (s.epoch, seq),
                    TargetSpec {
                        audience: edge_audience(e),
                        version: from,
                        sha256: from_sha,
                        rollback: false,
                        stage: None,
                        rollout: Some(r.id),
                        by: "control-plane",
                    },
                )?;
                s.edges.insert(e.clone(), t);
            }
        }
    }
    Ok(())
}

async fn end_at_stage(plane: &Arc<Plane>, r: &Rollout, reason: &str) -> Result<(), PlaneError> {
    let id = r.id;
    let done = plane
        .update(|s, seq| {
            let Some(cur) = s
                .rollout
                .as_mut()
                .filter(|x| x.id == id && x.phase == Phase::Staging)
            else {
                return Ok(None);
            };
            cur.phase = Phase::StageFailed;
            cur.ended_ms = Some(now_ms());
            cur.outcome = Some(reason.to_owned());
            let cur = cur.clone();
            // Stop asking edges to stage it; nothing else changes (no edge serves it).
            s.default = plane.back_to_previous((s.epoch, seq), &cur, "control-plane")?;
            Ok(Some(cur))
        })
        .await?;
    if let Some(cur) = done {
        plane
            .audit(AuditEntry {
                at_ms: now_ms(),
                who: "control-plane".into(),
                action: "stage-failed".into(),
                version: Some(cur.version),
                rollout: Some(cur.id),
                message: format!("stopped before any edge served it: {reason}"),
                gate: None,
            })
            .await;
    }
    Ok(())
}

async fn hold(
    plane: &Arc<Plane>,
    r: &Rollout,
    reason: &str,
    gate: Option<gate::GateReport>,
) -> Result<(), PlaneError> {
    let id = r.id;
    let held = plane
        .update(|s, _| {
            let Some(cur) = s
                .rollout
                .as_mut()
                .filter(|x| x.id == id && !x.phase.is_end())
            else {
                return Ok(false);
            };
            cur.held = Some(reason.to_owned());
            if gate.is_some() {
                cur.last_gate = gate.clone();
            }
            Ok(true)
        })
        .await?;
    if held {
        plane
            .audit(AuditEntry {
                at_ms: now_ms(),
                who: "control-plane".into(),
                action: "held".into(),
                version: Some(r.version),
                rollout: Some(r.id),
                message: format!(
                    "waiting for an operator (`firebreak rollout resume|abort`): {reason}"
                ),
                gate,
            })
            .await;
    }
    Ok(())
}

async fn wave(plane: &Arc<Plane>, r: &Rollout, fleet: &[EdgeStatus]) -> Result<(), PlaneError> {
    let now = now_ms();
    let (cells, edges) = r.members(r.wave);
    let held = r.held(r.wave);
    let members: Vec<&EdgeStatus> = fleet
        .iter()
        .filter(|e| cells.contains(&e.report.cell) || edges.contains(&e.id))
        .filter(|e| !held.contains(&e.id))
        .collect();
    // An edge that crash-looped on the version booted the previous one: a failed gate.
    if let Some(e) = fleet
        .iter()
        .find(|e| e.report.bad_versions.contains(&r.version))
    {
        let reason = format!(
            "edge {} crash-looped on version {} and went back to its previous version (safe mode)",
            e.id, r.version
        );
        plane.roll_back_running(&reason, None, "gate").await?;
        return Ok(());
    }
    let elapsed = now.saturating_sub(r.phase_since_ms);
    let live_members: Vec<&&EdgeStatus> = members
        .iter()
        .filter(|e| now.saturating_sub(e.last_seen_ms) <= r.edge_gone_ms)
        .collect();
    let pending: Vec<&&&EdgeStatus> = live_members
        .iter()
        .filter(|e| e.report.applied_version != Some(r.version))
        .collect();
    if !pending.is_empty() && elapsed > r.plan.activate_timeout_s.saturating_mul(1000) {
        if let Some(e) = pending.iter().find(|e| e.report.error.is_some()) {
            let reason = format!(
                "edge {} did not apply version {}: {}",
                e.id,
                r.version,
                e.report.error.clone().unwrap_or_default()
            );
            plane.roll_back_running(&reason, None, "gate").await?;
        } else {
            let ids: Vec<&str> = pending.iter().map(|e| e.id.as_str()).collect();
            let reason = format!(
                "edges did not report version {} applied within {} s: {}",
                r.version,
                r.plan.activate_timeout_s,
                ids.join(", ")
            );
            hold(plane, r, &reason, None).await?;
        }
        return Ok(());
    }
    // A wave edge that was reachable at staging and has gone silent since the version was
    // sent to it may have been killed by it: that is a failure, never a pass.
    let excluded: HashSet<&str> = r
        .excluded
        .iter()
        .filter_map(|x| x.split(':').next())
        .collect();
    if let Some(e) = members.iter().find(|e| {
        !excluded.contains(e.id.as_str()) && now.saturating_sub(e.last_seen_ms) > r.edge_gone_ms
    }) {
        let reason = format!(
            "edge {} stopped reporting after version {} was sent to it (last seen {} s ago; crashed?)",
            e.id,
            r.version,
            now.saturating_sub(e.last_seen_ms) / 1000
        );
        plane.roll_back_running(&reason, None, "gate").await?;
        return Ok(());
    }
    if live_members.is_empty() {
        // Nothing in this wave serves traffic (no edge, or only edges already gone at
        // staging): there is nothing to judge or protect.
        let report = gate::GateReport {
            verdict: Verdict::Pass,
            reason: "no live edge in this wave".into(),
            wave_requests: 0,
            baseline_requests: 0,
            wave_queries: 0,
            baseline_queries: 0,
            z_critical: 0.0,
            checks: Vec::new(),
        };
        return advance(plane, r, report).await;
    }
    // Look at most once per interval.
    let interval = Duration::from_secs(r.plan.interval_s.max(1));
    let due = match plane.looked.lock() {
        Ok(mut looked) => {
            let key = (r.id, r.wave);
            match looked.get(&key) {
                Some(t) if t.elapsed() < interval => false,
                _ => {
                    looked.insert(key, Instant::now());
                    true
                }
            }
        }
        Err(_) => true,
    };
    if !due {
        return Ok(());
    }
    let member_ids: HashSet<String> = members.iter().map(|e| e.id.clone()).collect();
    let (evidence, fresh) = plane
        .health
        .evidence(r.id, r.wave, &member_ids, r.version, r.from);
    let looks = (r.plan.max_wait_s / r.plan.interval_s.max(1)).max(1);
    let mut thresholds = r.plan.gate.clone();
    if matches!(r.kind, super::state::RolloutKind::Switch { .. }) {
        // A kill switch changes caching on purpose (bypass, no stale): more requests to the
        // origin is its point, not a regression. Errors and latency are still judged.
        thresholds.origin_ratio = 1000.0;
        thresholds.origin_min = 1.0;
    }
    let report = gate::judge(&thresholds, r.plan.min_requests, looks, &evidence);
    if let Ok(mut view) = plane.gate_view.lock() {
        view.insert(r.id, report.clone());
    }
    plane
        .gate_history
        .record(r.id, r.wave, firebreak_protocol::now_ms(), &report);
    match report.verdict {
        Verdict::Fail => {
            let reason = format!("gate failed in wave {}: {}", r.wave + 1, report.reason);
            plane
                .roll_back_running(&reason, Some(report), "gate")
                .await?;
        }
        Verdict::Pass
            if !fresh && pending.is_empty() && elapsed >= r.plan.bake_s.saturating_mul(1000) =>
        {
            advance(plane, r, report).await?;
        }
        _ if elapsed >= r.plan.max_wait_s.saturating_mul(1000) => {
            let reason = format!(
                "no verdict in wave {} after {} s: {}",
                r.wave + 1,
                r.plan.max_wait_s,
                report.reason
            );
            hold(plane, r, &reason, Some(report)).await?;
        }
        _ => {}
    }
    Ok(())
}

async fn advance(
    plane: &Arc<Plane>,
    r: &Rollout,
    report: gate::GateReport,
) -> Result<(), PlaneError> {
    let (id, wave) = (r.id, r.wave);
    let moved = plane
        .update(|s, seq| {
            let Some(cur) = s
                .rollout
                .as_mut()
                .filter(|x| x.id == id && x.phase == Phase::Wave && x.wave == wave)
            else {
                return Ok(None);
            };
            cur.last_gate = Some(report.clone());
            if cur.last_wave() {
                cur.phase = Phase::Complete;
                cur.ended_ms = Some(now_ms());
                cur.outcome = Some(format!("every edge runs version {}", cur.version));
                let cur = cur.clone();
                s.default = Some(plane.sign_target(
                    (s.epoch, seq),
                    TargetSpec {
                        audience: EVERYONE.into(),
                        version: cur.version,
                        sha256: &cur.sha256,
                        rollback: false,
                        stage: None,
                        rollout: Some(cur.id),
                        by: "control-plane",
                    },
                )?);
                s.cells.clear();
                s.edges.clear();
                s.note_ran(cur.version);
                Ok(Some(cur))
            } else {
                cur.wave += 1;
                cur.phase_since_ms = now_ms();
                let cur = cur.clone();
                write_wave_targets(plane, s, &cur, seq)?;
                Ok(Some(cur))
            }
        })
        .await?;
    if let Some(cur) = moved {
        let message = if cur.phase == Phase::Complete {
            format!("rollout complete: every edge runs version {}", cur.version)
        } else {
            let (cells, edges) = cur.members(cur.wave);
            format!(
                "wave {} passed ({}); wave {} of {} activated: cells [{}] edges [{}]",
                wave + 1,
                report.reason,
                cur.wave + 1,
                cur.waves(),
                cells.join(", "),
                edges.join(", ")
            )
        };
        plane
            .audit(AuditEntry {
                at_ms: now_ms(),
                who: "gate".into(),
                action: if cur.phase == Phase::Complete {
                    "complete".into()
                } else {
                    "wave".into()
                },
                version: Some(cur.version),
                rollout: Some(cur.id),
                message,
                gate: Some(report),
            })
            .await;
    }
    Ok(())
}
