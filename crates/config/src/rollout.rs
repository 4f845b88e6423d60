//! Rollout settings of a fleet (`[rollout]`): how a new version travels through the fleet in
//! waves, how long each wave bakes, and the thresholds its health gate acts on. Only the
//! control plane reads them, but they live in the fleet document so that they are versioned,
//! validated and audited like everything else. The plans that govern a rollout are always
//! taken from the version the fleet already runs, never from the version being rolled out: a
//! bad version cannot loosen its own gates.

use crate::locate::PathSeg::{Index, Key};
use crate::validate::Checker;
use serde::{Deserialize, Serialize};

/// Most plans in one fleet document.
pub const MAX_PLANS: usize = 16;
/// Most waves in one plan.
pub const MAX_WAVES: usize = 16;
/// Longest bake, wait or timeout of a plan: one day.
pub const MAX_ROLLOUT_S: u64 = 86_400;
/// Largest DNS p99 latency limit or margin: 10 s (a DNS answer later than that is lost).
pub const MAX_DNS_P99_US: u64 = 10_000_000;

/// `[rollout]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Edges not seen for this long are left out of a rollout's stage phase (and named in its
    /// report), so that one dead edge cannot block every rollout.
    pub edge_gone_s: u64,
    /// Time every reachable edge has to stage a version before the rollout holds.
    pub stage_timeout_s: u64,
    /// Named plans (`[[rollout.plan]]`). `default` and `emergency` exist when not written.
    #[serde(rename = "plan")]
    pub plans: Vec<PlanConfig>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            edge_gone_s: 60,
            stage_timeout_s: 120,
            plans: Vec::new(),
        }
    }
}

impl RolloutConfig {
    /// The plan called `name`: written in the document, else the built-in `default` or
    /// `emergency`.
    pub fn plan(&self, name: &str) -> Option<PlanConfig> {
        self.plans
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .or_else(|| match name {
                "default" => Some(PlanConfig::default_plan()),
                "emergency" => Some(PlanConfig::emergency_plan()),
                _ => None,
            })
    }
}

/// One plan: ordered waves, each baked and judged by the gate before the next.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Name (`default`, `emergency`, or your own): lowercase letters, digits, `-`, `_`.
    pub name: String,
    /// Waves, in order; each includes the ones before it. The last must reach 100% of cells.
    pub waves: Vec<WaveConfig>,
    /// Least time a wave runs before the gate may pass it.
    #[serde(default = "default_bake_s")]
    pub bake_s: u64,
    /// How often the gate looks (and edges' health reports are expected).
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
    /// Least requests the wave's edges must serve before the gate may pass it.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Longest a wave may wait for enough traffic or a clear verdict; then the rollout holds
    /// for an operator (never a silent pass).
    #[serde(default = "default_max_wait_s")]
    pub max_wait_s: u64,
    /// Time the wave's edges have to report the version applied before the rollout holds.
    #[serde(default = "default_activate_timeout_s")]
    pub activate_timeout_s: u64,
    /// The gate's thresholds (`[rollout.plan.gate]`).
    #[serde(default)]
    pub gate: GateConfig,
}

fn default_bake_s() -> u64 {
    300
}
fn default_interval_s() -> u64 {
    5
}
fn default_min_requests() -> u64 {
    1_000
}
fn default_max_wait_s() -> u64 {
    1_800
}
fn default_activate_timeout_s() -> u64 {
    60
}

impl PlanConfig {
    /// The built-in `default` plan: one canary edge, its cell, 25% of cells, every cell.
    pub fn default_plan() -> Self {
        Self {
            name: "default".into(),
            waves: vec![
                WaveConfig::edges(1),
                WaveConfig::cells(1),
                WaveConfig::percent(25),
                WaveConfig::percent(100),
            ],
            bake_s: default_bake_s(),
            interval_s: default_interval_s(),
            min_requests: default_min_requests(),
            max_wait_s: default_max_wait_s(),
            activate_timeout_s: default_activate_timeout_s(),
            gate: GateConfig::default(),
        }
    }

    /// The built-in `emergency` plan, for kill switches and rollbacks only: the canary cell,
    /// then every cell, short bakes — still staged, still gated.
    pub fn emergency_plan() -> Self {
        Self {
            name: "emergency".into(),
            waves: vec![WaveConfig::cells(1), WaveConfig::percent(100)],
            bake_s: 10,
            interval_s: 1,
            min_requests: 50,
            max_wait_s: 60,
            activate_timeout_s: 20,
            gate: GateConfig::default(),
        }
    }
}

/// One wave: exactly one of `edges` (that many edges of the first cell), `cells` (that many
/// cells), `percent` (that share of cells, rounded up) or `names` (these cells).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WaveConfig {
    /// That many edges (canary edges), all in the first cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<u32>,
    /// That many cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells: Option<u32>,
    /// That share of cells, 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// These cells (and every cell of earlier waves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

impl WaveConfig {
    /// `{ edges = n }`.
    pub fn edges(n: u32) -> Self {
        Self {
            edges: Some(n),
            ..Self::default()
        }
    }
    /// `{ cells = n }`.
    pub fn cells(n: u32) -> Self {
        Self {
            cells: Some(n),
            ..Self::default()
        }
    }
    /// `{ percent = p }`.
    pub fn percent(p: u32) -> Self {
        Self {
            percent: Some(p),
            ..Self::default()
        }
    }
}

/// What the gate acts on. Relative thresholds compare the wave's edges with the baseline
/// (edges still on the previous version); they are the smallest effect worth acting on, and
/// the gate acts only when the data show that effect with the stated false-alarm rate.
/// Absolute limits apply when there is no baseline to compare with.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// 5xx share: fail above `error_ratio` × baseline and `error_min` above it.
    pub error_ratio: f64,
    /// Absolute margin for the 5xx share (0 to 1).
    pub error_min: f64,
    /// 4xx share (a 404 storm): ratio to baseline.
    pub client_error_ratio: f64,
    /// Absolute margin for the 4xx share.
    pub client_error_min: f64,
    /// Share of requests sent to origins (a collapsed hit ratio): ratio to baseline.
    pub origin_ratio: f64,
    /// Absolute margin for the origin share.
    pub origin_min: f64,
    /// p99 latency: fail above `p99_ratio` × baseline (and `p99_min_ms` above it) when the
    /// rank test says the wave is slower.
    pub p99_ratio: f64,
    /// Absolute margin for p99, in ms.
    pub p99_min_ms: u64,
    /// With no baseline: largest acceptable 5xx share.
    pub max_error_rate: f64,
    /// With no baseline: largest acceptable p99, in ms.
    pub max_p99_ms: u64,
    /// Chance that a healthy wave is failed by noise, over the whole wave (every look
    /// together), 0 to 0.5.
    pub false_alarm: f64,
    /// DNS servers: share of queries answered from a fallback or the last-healthy set (no
    /// healthy POP): ratio to the baseline's. (SERVFAIL share uses the 5xx thresholds.)
    pub dns_fallback_ratio: f64,
    /// Absolute margin for the DNS fallback share.
    pub dns_fallback_min: f64,
    /// With no baseline: largest acceptable DNS fallback share.
    pub dns_max_fallback_share: f64,
    /// DNS p99 query latency: margin over the baseline's, in µs (with `p99_ratio`).
    pub dns_p99_min_us: u64,
    /// With no baseline: largest acceptable DNS p99 query latency, in µs.
    pub dns_max_p99_us: u64,
    /// A POP whose share of the wave's DNS answers falls below this fraction of its share
    /// of the baseline's fails the gate (0: no per-POP check, for DNS servers whose clients
    /// differ by region so much that shares are not comparable).
    pub dns_pop_drop: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            error_ratio: 2.0,
            error_min: 0.01,
            client_error_ratio: 2.0,
            client_error_min: 0.05,
            origin_ratio: 2.0,
            origin_min: 0.10,
            p99_ratio: 1.5,
            p99_min_ms: 50,
            max_error_rate: 0.05,
            max_p99_ms: 5_000,
            false_alarm: 0.01,
            dns_fallback_ratio: 2.0,
            dns_fallback_min: 0.05,
            dns_max_fallback_share: 0.5,
            dns_p99_min_us: 500,
            dns_max_p99_us: 50_000,
            dns_pop_drop: 0.5,
        }
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks `[rollout]`.
pub(crate) fn check(c: &mut Checker, r: &RolloutConfig) {
    for (key, v) in [
        ("edge_gone_s", r.edge_gone_s),
        ("stage_timeout_s", r.stage_timeout_s),
    ] {
        if v == 0 || v > MAX_ROLLOUT_S {
            c.fail(
                &[Key("rollout"), Key(key)],
                format!("must be between 1 and {MAX_ROLLOUT_S} s"),
            );
        }
    }
    if !c.count(
        &[Key("rollout"), Key("plan")],
        r.plans.len(),
        0,
        MAX_PLANS,
        "plans",
    ) {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in r.plans.iter().enumerate() {
        let at = |k: &'static str| [Key("rollout"), Key("plan"), Index(i), Key(k)];
        if !name_ok(&p.name) {
            c.fail(
                &at("name"),
                "must be 1 to 64 lowercase letters, digits, '-' or '_'",
            );
        } else if !seen.insert(p.name.as_str()) {
            c.fail(&at("name"), format!("plan `{}` is defined twice", p.name));
        }
        for (key, v) in [
            ("bake_s", p.bake_s),
            ("interval_s", p.interval_s),
            ("max_wait_s", p.max_wait_s),
            ("activate_timeout_s", p.activate_timeout_s),
        ] {
            if v == 0 || v > MAX_ROLLOUT_S {
                c.fail(&at(key), format!("must be between 1 and {MAX_ROLLOUT_S} s"));
            }
        }
        if p.max_wait_s < p.bake_s {
            c.fail(&at("max_wait_s"), "must be at least bake_s");
        }
        if p.min_requests > 1_000_000_000 {
            c.fail(&at("min_requests"), "must be at most 1000000000");
        }
        if c.count(&at("waves"), p.waves.len(), 1, MAX_WAVES, "waves") {
            for (w, wave) in p.waves.iter().enumerate() {
                let path = [
                    Key("rollout"),
                    Key("plan"),
                    Index(i),
                    Key("waves"),
                    Index(w),
                ];
                let set = [
                    wave.edges.is_some(),
                    wave.cells.is_some(),
                    wave.percent.is_some(),
                    wave.names.is_some(),
                ];
                if set.iter().filter(|s| **s).count() != 1 {
                    c.fail(&path, "give exactly one of edges, cells, percent or names");
                    continue;
                }
                match wave {
                    WaveConfig { edges: Some(n), .. } | WaveConfig { cells: Some(n), .. }
                        if *n == 0 || *n > 100_000 =>
                    {
                        c.fail(&path, "must be between 1 and 100000")
                    }
                    WaveConfig {
                        percent: Some(pc), ..
                    } if *pc == 0 || *pc > 100 => c.fail(&path, "percent must be 1 to 100"),
                    WaveConfig {
                        names: Some(names), ..
                    } if names.is_empty()
                        || names.len() > 1_000
                        || names.iter().any(|n| n.is_empty() || n.len() > 256) =>
                    {
                        c.fail(&path, "names must list 1 to 1000 cell names")
                    }
                    _ => {}
                }
            }
            if p.waves.last().and_then(|w| w.percent) != Some(100) {
                c.fail(
                    &at("waves"),
                    "the last wave must be { percent = 100 } so that a rollout reaches every cell",
                );
            }
        }
        gate(c, i, &p.gate);
    }
}

fn gate(c: &mut Checker, i: usize, g: &GateConfig) {
    let at = |k: &'static str| [Key("rollout"), Key("plan"), Index(i), Key("gate"), Key(k)];
    for (key, v) in [
        ("error_ratio", g.error_ratio),
        ("client_error_ratio", g.client_error_ratio),
        ("origin_ratio", g.origin_ratio),
        ("p99_ratio", g.p99_ratio),
        ("dns_fallback_ratio", g.dns_fallback_ratio),
    ] {
        if !(1.0..=1000.0).contains(&v) {
            c.fail(&at(key), "must be between 1.0 and 1000.0");
        }
    }
    for (key, v) in [
        ("error_min", g.error_min),
        ("client_error_min", g.client_error_min),
        ("origin_min", g.origin_min),
        ("max_error_rate", g.max_error_rate),
        ("dns_fallback_min", g.dns_fallback_min),
        ("dns_max_fallback_share", g.dns_max_fallback_share),
    ] {
        if !(0.0..=1.0).contains(&v) {
            c.fail(&at(key), "must be between 0.0 and 1.0");
        }
    }
    if !(g.false_alarm > 0.0 && g.false_alarm <= 0.5) {
        c.fail(&at("false_alarm"), "must be above 0 and at most 0.5");
    }
    if g.max_p99_ms == 0 || g.max_p99_ms > 600_000 {
        c.fail(&at("max_p99_ms"), "must be between 1 and 600000 ms");
    }
    if g.p99_min_ms > 600_000 {
        c.fail(&at("p99_min_ms"), "must be at most 600000 ms");
    }
    if g.dns_max_p99_us == 0 || g.dns_max_p99_us > MAX_DNS_P99_US {
        c.fail(
            &at("dns_max_p99_us"),
            format!("must be between 1 and {MAX_DNS_P99_US} µs"),
        );
    }
    if g.dns_p99_min_us > MAX_DNS_P99_US {
        c.fail(
            &at("dns_p99_min_us"),
            format!("must be at most {MAX_DNS_P99_US} µs"),
        );
    }
    if !(0.0..=0.95).contains(&g.dns_pop_drop) {
        c.fail(&at("dns_pop_drop"), "must be between 0.0 (off) and 0.95");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::parse_managed_str;

    fn fleet(gate: &str) -> String {
        format!(
            r#"[[service]]
name = "a"
hosts = ["a.example"]
[service.origin]
servers = [{{ addr = "127.0.0.1:9000" }}]

[[rollout.plan]]
name = "default"
waves = [{{ percent = 100 }}]

[rollout.plan.gate]
{gate}
"#
        )
    }

    #[test]
    fn dns_gate_thresholds_have_defaults_and_are_bounded() {
        let c = parse_managed_str("fleet.toml", &fleet("dns_pop_drop = 0.0")).unwrap();
        let g = &c.get().rollout.plans[0].gate;
        assert_eq!(g.dns_pop_drop, 0.0);
        assert_eq!(g.dns_max_p99_us, 50_000);
        for (line, field) in [
            ("dns_pop_drop = 1.0", "dns_pop_drop"),
            ("dns_fallback_ratio = 0.5", "dns_fallback_ratio"),
            ("dns_fallback_min = 2.0", "dns_fallback_min"),
            ("dns_max_fallback_share = -0.1", "dns_max_fallback_share"),
            ("dns_max_p99_us = 0", "dns_max_p99_us"),
            ("dns_p99_min_us = 99999999", "dns_p99_min_us"),
        ] {
            let e = parse_managed_str("fleet.toml", &fleet(line)).unwrap_err();
            let err = &e.errors[0];
            assert_eq!(err.field, format!("rollout.plan[0].gate.{field}"), "{e}");
            // Located at the value: line 12, after `field = `.
            assert_eq!((err.line, err.column), (12, field.len() + 4), "{e}");
            assert!(e.to_string().starts_with("fleet.toml:12:"), "{e}");
        }
    }
}
