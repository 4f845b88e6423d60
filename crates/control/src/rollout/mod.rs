//! Safe rollouts: a version reaches the fleet only through a rollout — stage on every edge,
//! then waves (canary edge, its cell, a share of cells, every cell), each baked and judged by
//! the health gate, with automatic rollback when a gate fails.
//!
//! - [`state`]: the stored fleet state (targets + rollout), changed only by compare-and-set.
//! - [`gate`]: the statistics that pass, fail or wait on a wave.
//! - [`health`]: the edges' health reports, in memory.
//! - [`driver`]: the loop that moves a running rollout forward.
//!
//! Operators act through [`Plane::deploy`], [`Plane::pause`], [`Plane::resume`],
//! [`Plane::abort`], [`Plane::rollback`] and [`Plane::switch`]; every action and every
//! decision of the gate is appended to the audit log.

pub mod driver;
pub mod gate;
pub mod health;
pub mod history;
pub mod shield;
pub mod state;

use crate::plane::{Plane, PlaneError};
use crate::store::StoreError;
use firebreak_config::{parse_managed_str, RolloutConfig};
use firebreak_protocol::health::HealthReport;
use firebreak_protocol::now_ms;
use firebreak_protocol::signed::{Signed, Stage, Target, EVERYONE};
use state::{AuditEntry, FleetState, Phase, Rollout, RolloutKind, StoredTarget};

/// How many times a state change is retried when another writer got there first.
const ATTEMPTS: usize = 16;

/// The plan reserved for kill switches (and rollbacks).
pub const EMERGENCY: &str = "emergency";

/// What one target statement says, before signing.
pub(crate) struct TargetSpec<'a> {
    pub audience: String,
    pub version: u64,
    pub sha256: &'a str,
    pub rollback: bool,
    pub stage: Option<(u64, &'a str)>,
    pub rollout: Option<u64>,
    pub by: &'a str,
}

impl Plane {
    /// Signs one target statement for `(epoch, seq)`, fresh for the plane's freshness bound.
    pub(crate) fn sign_target(
        &self,
        (epoch, seq): (u64, u64),
        t: TargetSpec<'_>,
    ) -> Result<StoredTarget, PlaneError> {
        let now = now_ms();
        let target = Target {
            epoch,
            seq,
            expires_at_ms: now.saturating_add(self.freshener.bound_ms()),
            audience: t.audience,
            version: t.version,
            bundle_sha256: t.sha256.to_owned(),
            rollback: t.rollback,
            stage: t.stage.map(|(version, sha)| Stage {
                version,
                bundle_sha256: sha.to_owned(),
            }),
            rollout: t.rollout,
            set_at_ms: now,
            set_by: t.by.to_owned(),
        };
        let signed =
            Signed::sign(&target, &self.key).map_err(|e| PlaneError::Internal(e.to_string()))?;
        Ok(StoredTarget {
            seq,
            version: t.version,
            signed,
        })
    }

    /// The statement that sends every edge back to the version rollout `r` replaced, signed
    /// for `seq`; `None` for the fleet's first version (nothing to go back to).
    pub(crate) fn back_to_previous(
        &self,
        at: (u64, u64),
        r: &Rollout,
        by: &str,
    ) -> Result<Option<StoredTarget>, PlaneError> {
        match (r.from, r.from_sha256.as_deref()) {
            (Some(from), Some(sha)) => self
                .sign_target(
                    at,
                    TargetSpec {
                        audience: EVERYONE.into(),
                        version: from,
                        sha256: sha,
                        rollback: true,
                        stage: None,
                        rollout: Some(r.id),
                        by,
                    },
                )
                .map(Some),
            _ => Ok(None),
        }
    }

    /// Applies `change` to the stored fleet state with compare-and-set, retrying on a race.
    /// `change` gets the state and the sequence number the new state will carry; it may be
    /// called more than once, so it must only compute.
    pub(crate) async fn update<T>(
        &self,
        mut change: impl FnMut(&mut FleetState, u64) -> Result<T, PlaneError>,
    ) -> Result<T, PlaneError> {
        for _ in 0..ATTEMPTS {
            let current = self.store.state().await?.unwrap_or_default();
            let mut next = current.clone();
            let seq = current.seq + 1;
            if next.epoch == 0 {
                // The state's first write (or the first since epochs exist) names its history.
                next.epoch = now_ms().max(1);
            }
            let out = change(&mut next, seq)?;
            next.seq = seq;
            if self.store.set_state(current.seq, &next).await? {
                self.observe_state(next);
                return Ok(out);
            }
        }
        Err(PlaneError::Conflict(
            "the fleet state is changing too fast; try again".into(),
        ))
    }

    /// Appends to the audit log; a failure is logged, never fatal to the action it records.
    pub(crate) async fn audit(&self, entry: AuditEntry) {
        tracing::info!(action = %entry.action, version = ?entry.version, rollout = ?entry.rollout, who = %entry.who, "{}", entry.message);
        if let Err(e) = self.store.audit(&entry).await {
            tracing::warn!(error = %e, "audit entry not stored");
        }
    }

    /// The newest audit entries, oldest first.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, PlaneError> {
        Ok(self.store.audit_log(limit).await?)
    }

    /// Records an edge's health report.
    pub fn record_health(&self, id: &str, report: HealthReport) -> Result<(), PlaneError> {
        crate::plane::edge_id(id)?;
        if report.services.len() > firebreak_protocol::health::MAX_REPORTED_SERVICES
            || !report.total.is_plausible()
            || report
                .services
                .iter()
                .any(|s| !s.counts.is_plausible() || s.service.len() > 256)
            || report.dns.as_ref().is_some_and(|d| !d.is_plausible())
        {
            return Err(PlaneError::BadRequest("implausible health report".into()));
        }
        self.touch(id);
        // The POP from the registration the gate just checked (cached); the dashboard's
        // traffic page adds the report's increments up per POP and service.
        let pop = self
            .identities
            .lock()
            .ok()
            .and_then(|c| c.get(id).map(|(i, _)| i.pop.clone()))
            .unwrap_or_else(|| "unknown".to_owned());
        let previous = self.health.latest(id);
        self.traffic.record(
            &pop,
            previous.as_ref(),
            &report,
            firebreak_protocol::now_ms(),
        );
        self.health.record(id, report);
        Ok(())
    }

    /// The rollout settings of `version` (its fleet document's `[rollout]`).
    pub(crate) async fn rollout_settings(&self, version: u64) -> Result<RolloutConfig, PlaneError> {
        let detail = self.version(version).await?;
        let config =
            parse_managed_str(&format!("version {version}"), &detail.document).map_err(|_| {
                PlaneError::Store(StoreError::Corrupt(format!(
                    "version {version} no longer validates"
                )))
            })?;
        Ok(config.rollout.clone())
    }

    /// Starts rolling `version` out with `plan` (default: `default`). Plans come from the
    /// version the fleet runs now, so a new version cannot loosen its own gates; the fleet's
    /// first version brings its own.
    pub async fn deploy(
        &self,
        version: u64,
        plan: Option<&str>,
        by: &str,
        message: &str,
    ) -> Result<Rollout, PlaneError> {
        let plan = plan.unwrap_or("default");
        if plan == EMERGENCY {
            return Err(PlaneError::Conflict(
                "the emergency plan takes only kill switches (`firebreak switch`) and rollbacks (`firebreak rollback`)".into(),
            ));
        }
        self.start(version, plan, RolloutKind::Deploy, by, message)
            .await
    }

    async fn start(
        &self,
        version: u64,
        plan_name: &str,
        kind: RolloutKind,
        by: &str,
        message: &str,
    ) -> Result<Rollout, PlaneError> {
        crate::plane::label_text("message", message)?;
        let info = self
            .store
            .version(version)
            .await?
            .ok_or_else(|| PlaneError::NotFound(format!("no version {version}")))?;
        crate::plane::checked_version(self, version).await?;
        let now_state = self.fleet_state();
        let from = now_state.default_version();
        let settings_from = from.unwrap_or(version);
        let settings = self.rollout_settings(settings_from).await?;
        let plan = settings.plan(plan_name).ok_or_else(|| {
            PlaneError::NotFound(format!(
                "no rollout plan `{plan_name}` in version {settings_from}"
            ))
        })?;
        let from_sha = match from {
            Some(f) => Some(
                self.store
                    .version(f)
                    .await?
                    .ok_or_else(|| PlaneError::NotFound(format!("no version {f}")))?
                    .sha256,
            ),
            None => None,
        };
        let switch = matches!(kind, RolloutKind::Switch { .. });
        let rollout = self
            .update(|state, seq| {
                let from = state.default_version();
                if let Some(running) = state.running() {
                    if !switch {
                        return Err(PlaneError::Conflict(format!(
                            "rollout {} of version {} is running; wait, pause or abort it (a kill switch or rollback goes first)",
                            running.id, running.version
                        )));
                    }
                }
                if from == Some(version) {
                    return Err(PlaneError::Conflict(format!(
                        "the fleet already runs version {version}"
                    )));
                }
                if let Some(f) = from {
                    if version < f {
                        return Err(PlaneError::Conflict(format!(
                            "version {version} is older than the fleet's {f}; use `firebreak rollback {version}`"
                        )));
                    }
                }
                supersede(state, "a kill switch went first");
                // Every edge without an override (after superseding: every edge) stages.
                let current_sha = from_sha.as_deref().unwrap_or("");
                state.default = Some(self.sign_target(
                    (state.epoch, seq),
                    TargetSpec {
                        audience: EVERYONE.into(),
                        version: from.unwrap_or(0),
                        sha256: current_sha,
                        rollback: true,
                        stage: Some((version, &info.sha256)),
                        rollout: Some(seq),
                        by,
                    },
                )?);
                state.cells.clear();
                state.edges.clear();
                let rollout = Rollout {
                    id: seq,
                    kind: kind.clone(),
                    version,
                    sha256: info.sha256.clone(),
                    from,
                    from_sha256: from_sha.clone(),
                    plan: plan.clone(),
                    edge_gone_ms: settings.edge_gone_s.saturating_mul(1000),
                    stage_timeout_ms: settings.stage_timeout_s.saturating_mul(1000),
                    by: by.to_owned(),
                    message: message.to_owned(),
                    started_ms: now_ms(),
                    phase: Phase::Staging,
                    wave: 0,
                    phase_since_ms: now_ms(),
                    cells: Vec::new(),
                    canary_edges: Vec::new(),
                    excluded: Vec::new(),
                    paused: false,
                    held: None,
                    last_gate: None,
                    detected_ms: None,
                    ended_ms: None,
                    outcome: None,
                    shield_edges: Vec::new(),
                };
                state.rollout = Some(rollout.clone());
                Ok(rollout)
            })
            .await?;
        self.audit(AuditEntry {
            at_ms: now_ms(),
            who: by.to_owned(),
            action: match &kind {
                RolloutKind::Deploy => "deploy".into(),
                RolloutKind::Switch { .. } => "switch".into(),
            },
            version: Some(version),
            rollout: Some(rollout.id),
            message: format!(
                "rollout {} of version {version} (from {}) on plan `{}`: staging; {message}",
                rollout.id,
                from.map_or("nothing".into(), |f| f.to_string()),
                rollout.plan.name
            ),
            gate: None,
        })
        .await;
        Ok(rollout)
    }

    /// Pauses the running rollout (it stays where it is).
    pub async fn pause(&self, by: &str, message: &str) -> Result<Rollout, PlaneError> {
        self.operator_action("pause", by, message, |r| {
            r.paused = true;
            Ok(())
        })
        .await
    }

    /// Resumes a paused or held rollout; the current wave's bake starts again.
    pub async fn resume(&self, by: &str, message: &str) -> Result<Rollout, PlaneError> {
        self.operator_action("resume", by, message, |r| {
            r.paused = false;
            r.held = None;
            r.phase_since_ms = now_ms();
            Ok(())
        })
        .await
    }

    async fn operator_action(
        &self,
        action: &str,
        by: &str,
        message: &str,
        mut change: impl FnMut(&mut Rollout) -> Result<(), PlaneError>,
    ) -> Result<Rollout, PlaneError> {
        crate::plane::label_text("message", message)?;
        let r = self
            .update(|state, _| {
                let r = state
                    .rollout
                    .as_mut()
                    .filter(|r| !r.phase.is_end())
                    .ok_or_else(|| PlaneError::Conflict("no rollout is running".into()))?;
                change(r)?;
                Ok(r.clone())
            })
            .await?;
        if action == "resume" {
            if let Ok(mut looked) = self.looked.lock() {
                looked.retain(|(id, _), _| *id != r.id);
            }
            self.health.forget(r.id);
        }
        self.audit(AuditEntry {
            at_ms: now_ms(),
            who: by.to_owned(),
            action: action.to_owned(),
            version: Some(r.version),
            rollout: Some(r.id),
            message: format!("rollout {} {action}d; {message}", r.id),
            gate: None,
        })
        .await;
        Ok(r)
    }

    /// Aborts the running rollout: every edge that took the version goes back.
    pub async fn abort(&self, by: &str, message: &str) -> Result<Rollout, PlaneError> {
        crate::plane::label_text("message", message)?;
        let reason = format!("aborted by {by}: {message}");
        let r = self.roll_back_running(&reason, None, by).await?;
        Ok(r)
    }

    /// Ends the running rollout as rolled back: the fleet-wide target returns to the version
    /// it replaced (a rollback statement, newer than every override, so every edge that took
    /// the version goes back), overrides are cleared. Used by the gate and by `abort`.
    pub(crate) async fn roll_back_running(
        &self,
        reason: &str,
        gate: Option<gate::GateReport>,
        by: &str,
    ) -> Result<Rollout, PlaneError> {
        let r = self
            .update(|state, seq| {
                let running = state
                    .running()
                    .cloned()
                    .ok_or_else(|| PlaneError::Conflict("no rollout is running".into()))?;
                let mut r = running;
                let now = now_ms();
                match (self.back_to_previous((state.epoch, seq), &r, by)?, r.from) {
                    (Some(back), Some(from)) => {
                        state.default = Some(back);
                        state.cells.clear();
                        state.edges.clear();
                        r.phase = Phase::RolledBack;
                        r.ended_ms = Some(now);
                        r.outcome = Some(format!("rolled back to version {from}: {reason}"));
                    }
                    _ => {
                        // The fleet's first version: there is nothing to go back to, and an
                        // edge never serves an empty configuration. Hold for an operator.
                        r.held = Some(format!(
                            "{reason}; this is the fleet's first version, so there is nothing to roll back to"
                        ));
                    }
                }
                if gate.is_some() {
                    r.detected_ms.get_or_insert(now);
                    r.last_gate = gate.clone();
                }
                state.rollout = Some(r.clone());
                Ok(r)
            })
            .await?;
        self.audit(AuditEntry {
            at_ms: now_ms(),
            who: by.to_owned(),
            action: if r.phase == Phase::RolledBack {
                "rolled-back".into()
            } else {
                "held".into()
            },
            version: Some(r.version),
            rollout: Some(r.id),
            message: r.outcome.clone().or(r.held.clone()).unwrap_or_default(),
            gate,
        })
        .await;
        if by == "gate" {
            crate::status::auto::gate_tripped(self, &r, reason).await;
        }
        Ok(r)
    }

    /// Rolls the whole fleet back to `version` (default: the version the fleet ran before its
    /// current one) at once. Only versions the fleet already ran qualify. A running rollout
    /// is superseded (its edges go back with everyone else).
    pub async fn rollback(
        &self,
        version: Option<u64>,
        by: &str,
        message: &str,
    ) -> Result<StoredTarget, PlaneError> {
        crate::plane::label_text("message", message)?;
        let state = self.fleet_state();
        let version = match version {
            Some(v) => v,
            None => {
                let current = state.default_version();
                state
                    .ran
                    .iter()
                    .rev()
                    .copied()
                    .find(|v| Some(*v) != current)
                    .ok_or_else(|| {
                        PlaneError::Conflict("the fleet has run no earlier version".into())
                    })?
            }
        };
        let info = self
            .store
            .version(version)
            .await?
            .ok_or_else(|| PlaneError::NotFound(format!("no version {version}")))?;
        let target = self
            .update(|state, seq| {
                if !state.ran.contains(&version) {
                    return Err(PlaneError::Conflict(format!(
                        "the fleet never ran version {version}; only versions it ran can be set at once — deploy it instead"
                    )));
                }
                supersede(state, &format!("superseded by a rollback to version {version}"));
                let t = self.sign_target(
                    (state.epoch, seq),
                    TargetSpec {
                        audience: EVERYONE.into(),
                        version,
                        sha256: &info.sha256,
                        rollback: true,
                        stage: None,
                        rollout: None,
                        by,
                    },
                )?;
                state.default = Some(t.clone());
                state.cells.clear();
                state.edges.clear();
                state.note_ran(version);
                Ok(t)
            })
            .await?;
        self.audit(AuditEntry {
            at_ms: now_ms(),
            who: by.to_owned(),
            action: "rollback".into(),
            version: Some(version),
            rollout: None,
            message: format!("fleet rolled back to version {version}; {message}"),
            gate: None,
        })
        .await;
        Ok(target)
    }

    /// Flips kill switch `name` in the fleet's current version: a new version (validated like
    /// any push) rolled out on the `emergency` plan — staged, gated, audited.
    pub async fn switch(
        &self,
        name: &str,
        on: bool,
        by: &str,
        message: &str,
    ) -> Result<Rollout, PlaneError> {
        crate::plane::label_text("message", message)?;
        let base = self
            .fleet_state()
            .default_version()
            .ok_or_else(|| PlaneError::Conflict("the fleet runs no version yet".into()))?;
        // The base version's documents, and its MaxMind database with them.
        let bundle = self.open(base).await?;
        let document = flip_switch(&bundle.assembled(), name, on).map_err(PlaneError::NotFound)?;
        let why = format!("switch {name} {}: {message}", if on { "on" } else { "off" });
        // Not judged by the DNS change guard: the document is the running version's with one
        // switch flipped, its `[dns]` unchanged (the latest stored version may be another).
        let info = self
            .push_judged(
                firebreak_protocol::api::PushRequest {
                    file: format!("version-{base}.toml"),
                    document,
                    message: why.clone(),
                    author: Some(by.to_owned()),
                    activate: false,
                    geoip: bundle.geoip,
                    force: false,
                },
                by,
                None,
                crate::plane::DnsBaseline::Unchanged,
            )
            .await?
            .info;
        self.start(
            info.version,
            EMERGENCY,
            RolloutKind::Switch {
                name: name.to_owned(),
                on,
            },
            by,
            &why,
        )
        .await
    }
}

/// Ends a running rollout, if any, because something else goes first: its edges return to
/// the version it replaced (the caller writes the new fleet-wide target).
fn supersede(state: &mut FleetState, why: &str) {
    if let Some(r) = state.rollout.as_mut().filter(|r| !r.phase.is_end()) {
        r.phase = Phase::Superseded;
        r.ended_ms = Some(now_ms());
        r.outcome = Some(why.to_owned());
    }
}

/// Sets `on` of the `[[switch]]` called `name` in a configuration text.
fn flip_switch(text: &str, name: &str, on: bool) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let switches = doc
        .get_mut("switch")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .ok_or_else(|| format!("no kill switch `{name}`: the fleet's version has no [[switch]]"))?;
    let table = switches
        .iter_mut()
        .find(|t| t.get("name").and_then(toml_edit::Item::as_str) == Some(name))
        .ok_or_else(|| format!("no kill switch `{name}` in the fleet's version"))?;
    table.insert("on", toml_edit::value(on));
    Ok(doc.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flipping_a_switch_keeps_the_rest_of_the_text() {
        let text = "# fleet\n[[switch]]\nname = \"a\" # keep me\nservice = \"s\"\naction = \"bypass_cache\"\non = false\n\n[[switch]]\nname = \"b\"\nservice = \"s\"\naction = \"no_stale\"\n";
        let out = flip_switch(text, "b", true).unwrap();
        assert!(out.contains("# keep me"));
        assert!(out.contains("on = true"));
        assert!(out.contains("on = false"));
        assert!(flip_switch(text, "zz", true).is_err());
        assert!(flip_switch("x = 1\n", "a", true).is_err());
    }
}

/// `GET /v1/rollout`: the current or last rollout, the gate's latest numbers, and where
/// each cell is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RolloutView {
    /// The rollout, if there ever was one.
    pub rollout: Option<Rollout>,
    /// The gate's latest judgement (live while a wave bakes).
    pub gate: Option<gate::GateReport>,
    /// The version every edge without an override runs.
    pub fleet_version: Option<u64>,
    /// Each cell: its edges and the versions they run.
    pub cells: Vec<CellView>,
}

/// One cell in a [`RolloutView`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CellView {
    /// The cell.
    pub cell: String,
    /// The version its target names.
    pub target: Option<u64>,
    /// Its edges: id, applied version, staged version.
    pub edges: Vec<EdgeView>,
}

/// One edge in a [`CellView`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EdgeView {
    /// Edge id.
    pub id: String,
    /// The version it serves.
    pub applied: Option<u64>,
    /// The version its target names.
    pub target: Option<u64>,
    /// The last version it staged (or failed to).
    pub staged: Option<u64>,
    /// Its last error.
    pub error: Option<String>,
}

impl Plane {
    /// The rollout as operators see it.
    pub async fn rollout_view(&self) -> Result<RolloutView, PlaneError> {
        let state = self.fleet_state();
        let fleet = self.fleet().await?;
        let mut cells: Vec<CellView> = Vec::new();
        for e in &fleet {
            let target = state.effective(&e.id, &e.report.cell).map(|t| t.version);
            let view = EdgeView {
                id: e.id.clone(),
                applied: e.report.applied_version,
                target,
                staged: e.report.staged.as_ref().map(|s| s.version),
                error: e.report.error.clone(),
            };
            match cells.iter_mut().find(|c| c.cell == e.report.cell) {
                Some(c) => c.edges.push(view),
                None => cells.push(CellView {
                    cell: e.report.cell.clone(),
                    target: state
                        .cells
                        .get(&e.report.cell)
                        .or(state.default.as_ref())
                        .map(|t| t.version),
                    edges: vec![view],
                }),
            }
        }
        cells.sort_by(|a, b| a.cell.cmp(&b.cell));
        let gate = state.rollout.as_ref().and_then(|r| {
            self.gate_view
                .lock()
                .ok()
                .and_then(|v| v.get(&r.id).cloned())
                .or_else(|| r.last_gate.clone())
        });
        Ok(RolloutView {
            fleet_version: state.default_version(),
            rollout: state.rollout,
            gate,
            cells,
        })
    }
}
