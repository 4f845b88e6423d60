//! The fleet's state as stored: the signed targets (one for every edge, overrides per cell and
//! per edge), the versions the fleet has run, and the current (or last) rollout. It is one
//! document under one key, and every change is one compare-and-set on its sequence number, so
//! a control plane killed between two steps resumes from the last committed step and two
//! replicas never both take the same step.

use super::gate::GateReport;
use firebreak_config::PlanConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most versions remembered as "run by the fleet" (rollback candidates).
pub const MAX_RAN: usize = 100;

/// One signed target statement as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTarget {
    /// Sequence number, equal to the signed statement's.
    pub seq: u64,
    /// The version it names (a copy of the signed field, for the control plane's own use;
    /// edges read the signed one).
    #[serde(default)]
    pub version: u64,
    /// The signed [`firebreak_protocol::signed::Target`].
    pub signed: firebreak_protocol::signed::Signed,
}

/// Everything the rollout machinery decides, in one stored document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetState {
    /// Increases with every change; the compare-and-set key. Statements written in a change
    /// carry this number, so edges always see a newer decision as a larger number.
    pub seq: u64,
    /// This store's history: set (ms since the Unix epoch) when the state is first written
    /// and changed again when a store is restored from a backup or rebuilt, so that edges can
    /// order statements by `(epoch, seq)` and tell a new history from a replay of an old one.
    /// 0 in states written before epochs existed.
    #[serde(default)]
    pub epoch: u64,
    /// The target of every edge without an override.
    pub default: Option<StoredTarget>,
    /// Per-cell overrides (a rollout's waves).
    #[serde(default)]
    pub cells: BTreeMap<String, StoredTarget>,
    /// Per-edge overrides (canary edges).
    #[serde(default)]
    pub edges: BTreeMap<String, StoredTarget>,
    /// Versions that were the fleet-wide target, oldest first (rollback candidates).
    #[serde(default)]
    pub ran: Vec<u64>,
    /// The current or last rollout.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

impl FleetState {
    /// The statement an edge `id` in `cell` should follow.
    pub fn effective(&self, id: &str, cell: &str) -> Option<&StoredTarget> {
        self.edges
            .get(id)
            .or_else(|| self.cells.get(cell))
            .or(self.default.as_ref())
    }

    /// The version every edge without an override runs.
    pub fn default_version(&self) -> Option<u64> {
        self.default.as_ref().map(|t| t.version)
    }

    /// Whether a rollout is in progress (not ended).
    pub fn running(&self) -> Option<&Rollout> {
        self.rollout.as_ref().filter(|r| !r.phase.is_end())
    }

    /// Records that the fleet ran `version`.
    pub fn note_ran(&mut self, version: u64) {
        self.ran.retain(|v| *v != version);
        self.ran.push(version);
        if self.ran.len() > MAX_RAN {
            let extra = self.ran.len() - MAX_RAN;
            self.ran.drain(..extra);
        }
    }
}

/// What a rollout delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RolloutKind {
    /// A pushed version.
    Deploy,
    /// A kill switch flipped (the version was made from the fleet's version by the switch).
    Switch {
        /// The switch.
        name: String,
        /// Its new state.
        on: bool,
    },
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Every reachable edge downloads, verifies and builds the version without serving it.
    Staging,
    /// Waves activate and bake one by one (`Rollout::wave`).
    Wave,
    /// Every edge runs the version.
    Complete,
    /// A gate failed or an operator aborted: every edge that took it went back.
    RolledBack,
    /// Some edge could not stage the version; no edge served it.
    StageFailed,
    /// Stopped by a rollback or kill switch that went first; its edges went back.
    Superseded,
}

impl Phase {
    /// Whether the rollout has ended.
    pub fn is_end(self) -> bool {
        !matches!(self, Phase::Staging | Phase::Wave)
    }
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Its id (the state sequence number it started at).
    pub id: u64,
    /// What it delivers.
    #[serde(flatten)]
    pub kind: RolloutKind,
    /// The version.
    pub version: u64,
    /// SHA-256 of its bundle.
    pub sha256: String,
    /// The version the fleet ran before (the baseline, and where a rollback goes).
    pub from: Option<u64>,
    /// SHA-256 of that version's bundle.
    pub from_sha256: Option<String>,
    /// The plan, as it was when the rollout started.
    pub plan: PlanConfig,
    /// Edges not seen for this long are left out.
    pub edge_gone_ms: u64,
    /// Time edges have to stage.
    pub stage_timeout_ms: u64,
    /// Who started it.
    pub by: String,
    /// Why.
    pub message: String,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// Where it is.
    pub phase: Phase,
    /// The current wave (index into `plan.waves`).
    pub wave: usize,
    /// When the current phase or wave began.
    pub phase_since_ms: u64,
    /// Cells in rollout order (the canary cell first), fixed when activation begins.
    #[serde(default)]
    pub cells: Vec<String>,
    /// The canary edges (for `{ edges = N }` waves), fixed when activation begins.
    #[serde(default)]
    pub canary_edges: Vec<String>,
    /// Edges left out (unreachable at staging), with why.
    #[serde(default)]
    pub excluded: Vec<String>,
    /// Stopped by an operator.
    #[serde(default)]
    pub paused: bool,
    /// Waiting for an operator, and why (too little traffic, edges that do not stage…).
    #[serde(default)]
    pub held: Option<String>,
    /// The gate's last judgement.
    #[serde(default)]
    pub last_gate: Option<GateReport>,
    /// When the first gate failure was seen (ms since the epoch).
    #[serde(default)]
    pub detected_ms: Option<u64>,
    /// When it ended.
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// How it ended, in one line.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Edges of the POPs that a service of the new version names as its origin shield, fixed
    /// when activation begins: held at the previous version (an edge override) through every
    /// planned wave, whatever their cell, and given the version in one last wave of their
    /// own once every planned wave passed its gate (a canary on a shield would break the
    /// misses of every POP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shield_edges: Vec<String>,
}

impl Rollout {
    /// Waves in all: the plan's, and the shield's last wave when edges are held for it.
    pub fn waves(&self) -> usize {
        self.plan.waves.len() + usize::from(!self.shield_edges.is_empty())
    }

    /// The edges held at the previous version during `wave` (the shield's edges, until the
    /// last wave).
    pub fn held(&self, wave: usize) -> &[String] {
        if wave < self.plan.waves.len() {
            &self.shield_edges
        } else {
            &[]
        }
    }

    /// The cells and edges of waves `0..=wave` (waves include the ones before them). The
    /// shield's last wave holds every cell and the shield's edges.
    pub fn members(&self, wave: usize) -> (Vec<String>, Vec<String>) {
        if wave >= self.plan.waves.len() && !self.shield_edges.is_empty() {
            let (_, mut edges) = self.planned_members(wave);
            for e in &self.shield_edges {
                if !edges.contains(e) {
                    edges.push(e.clone());
                }
            }
            return (self.cells.clone(), edges);
        }
        let (cells, mut edges) = self.planned_members(wave);
        edges.retain(|e| !self.shield_edges.contains(e));
        (cells, edges)
    }

    fn planned_members(&self, wave: usize) -> (Vec<String>, Vec<String>) {
        let mut cells: Vec<String> = Vec::new();
        let mut edges: Vec<String> = Vec::new();
        let total = self.cells.len();
        for w in self.plan.waves.iter().take(wave + 1) {
            let add: Vec<String> = if let Some(n) = w.edges {
                for e in self.canary_edges.iter().take(n as usize) {
                    if !edges.contains(e) {
                        edges.push(e.clone());
                    }
                }
                Vec::new()
            } else if let Some(n) = w.cells {
                self.cells.iter().take(n as usize).cloned().collect()
            } else if let Some(p) = w.percent {
                let n = (total * p as usize).div_ceil(100);
                self.cells.iter().take(n).cloned().collect()
            } else if let Some(names) = &w.names {
                names.clone()
            } else {
                Vec::new()
            };
            for c in add {
                if !cells.contains(&c) {
                    cells.push(c);
                }
            }
        }
        (cells, edges)
    }

    /// Whether the current wave is the last.
    pub fn last_wave(&self) -> bool {
        self.wave + 1 >= self.waves()
    }
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Who (`operator`, `gate`, `control-plane`).
    pub who: String,
    /// What (`deploy`, `wave`, `gate-failed`, `rolled-back`, `complete`, `pause`, …).
    pub action: String,
    /// The version concerned.
    pub version: Option<u64>,
    /// The rollout concerned.
    pub rollout: Option<u64>,
    /// Why, or what happened, in one line.
    pub message: String,
    /// The gate's numbers, when a gate decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateReport>,
}
