//! The rollout page (live) and its actions: pause, resume, abort, roll back.

use super::*;

/// Most gate plots on the rollout page.
const MAX_PLOTS: usize = 24;
/// Longest operator message taken from a form.
const MAX_MESSAGE: usize = 1024;

/// One wave of the rollout.
pub struct WaveRow {
    /// 1-based.
    pub n: usize,
    /// What it takes (`1 edge`, `25 %`, cells by name…).
    pub takes: String,
    /// `done`, `baking`, `pending`, `rolled back`…
    pub state: String,
    /// CSS class of the state.
    pub class: &'static str,
}

/// One cell of the rollout.
pub struct CellRow {
    /// Name.
    pub cell: String,
    /// The version its target names.
    pub target: String,
    /// Where it is.
    pub state: String,
    /// CSS class of the state.
    pub class: &'static str,
    /// Its edges: `id: applied (staged) error`.
    pub edges: Vec<String>,
}

/// One gate check.
pub struct CheckRow {
    /// Scope.
    pub scope: String,
    /// Metric.
    pub metric: String,
    /// The wave's value.
    pub wave: String,
    /// The baseline's.
    pub baseline: String,
    /// The threshold.
    pub threshold: String,
    /// Requests judged.
    pub n: u64,
    /// Whether it failed.
    pub failed: bool,
}

/// The live part of the rollout page (also sent alone to the page's script).
#[derive(Template)]
#[template(path = "ui/rollout_live.html")]
pub struct RolloutLive {
    /// The version the fleet runs now.
    pub fleet_version: String,
    /// Whether there ever was a rollout.
    pub any: bool,
    /// One-line summary.
    pub title: String,
    /// Phase.
    pub phase: String,
    /// CSS class of the phase.
    pub phase_class: &'static str,
    /// Who and why.
    pub by: String,
    /// Started when.
    pub started: String,
    /// Paused, held, outcome notes.
    pub notes: Vec<String>,
    /// Waves.
    pub waves: Vec<WaveRow>,
    /// Cells.
    pub cells: Vec<CellRow>,
    /// The gate's verdict and why.
    pub verdict: String,
    /// Its checks.
    pub checks: Vec<CheckRow>,
    /// Each check's value against its threshold over time.
    pub plots: Vec<Plot>,
    /// When this was drawn.
    pub drawn: String,
}

/// The rollout page.
#[derive(Template)]
#[template(path = "ui/rollouts.html")]
pub struct RolloutsPage {
    /// Header.
    pub nav: Nav,
    /// The rendered live part.
    pub live: String,
}

fn wave_takes(r: &Rollout, i: usize) -> String {
    match r.plan.waves.get(i) {
        Some(w) => {
            if let Some(n) = w.edges {
                format!("{n} edge{}", if n == 1 { "" } else { "s" })
            } else if let Some(n) = w.cells {
                format!("{n} cell{}", if n == 1 { "" } else { "s" })
            } else if let Some(p) = w.percent {
                format!("{p} % of cells")
            } else if let Some(names) = &w.names {
                format!("cells {}", names.join(", "))
            } else {
                "–".to_owned()
            }
        }
        None => format!("shield POPs' edges ({})", r.shield_edges.len()),
    }
}

/// The live part's view of `view` with the gate's looks `points`, at `now`.
pub fn rollout_live(
    view: &RolloutView,
    points: &[crate::rollout::history::GatePoint],
    now: u64,
) -> RolloutLive {
    let Some(r) = view.rollout.as_ref() else {
        return RolloutLive {
            fleet_version: version_text(view.fleet_version),
            any: false,
            title: "No rollout yet".into(),
            phase: String::new(),
            phase_class: "muted",
            by: String::new(),
            started: String::new(),
            notes: Vec::new(),
            waves: Vec::new(),
            cells: Vec::new(),
            verdict: String::new(),
            checks: Vec::new(),
            plots: Vec::new(),
            drawn: when(now),
        };
    };
    let (phase, phase_class) = match r.phase {
        Phase::Staging => ("staging", "warn"),
        Phase::Wave => ("rolling out", "warn"),
        Phase::Complete => ("complete", "ok"),
        Phase::RolledBack => ("rolled back", "bad"),
        Phase::StageFailed => ("staging failed", "bad"),
        Phase::Superseded => ("superseded", "muted"),
    };
    let what = match &r.kind {
        RolloutKind::Deploy => format!("Rollout {} of v{}", r.id, r.version),
        RolloutKind::Switch { name, on } => format!(
            "Rollout {} of v{} (switch {name} {})",
            r.id,
            r.version,
            if *on { "on" } else { "off" }
        ),
    };
    let mut notes = Vec::new();
    if r.paused {
        notes.push("Paused by an operator.".to_owned());
    }
    if let Some(h) = &r.held {
        notes.push(format!("Held: {h}"));
    }
    if let Some(o) = &r.outcome {
        notes.push(o.clone());
    }
    if !r.excluded.is_empty() {
        notes.push(format!("Left out: {}", r.excluded.join(", ")));
    }
    let waves = (0..r.waves())
        .map(|i| {
            let (state, class) = match r.phase {
                Phase::Complete => ("done", "ok"),
                Phase::Staging => ("pending", "muted"),
                Phase::Wave if i < r.wave => ("done", "ok"),
                Phase::Wave if i == r.wave => ("baking", "warn"),
                Phase::Wave => ("pending", "muted"),
                Phase::RolledBack if i == r.wave => ("failed; rolled back", "bad"),
                Phase::RolledBack | Phase::Superseded if i < r.wave => ("rolled back", "muted"),
                _ => ("not reached", "muted"),
            };
            WaveRow {
                n: i + 1,
                takes: wave_takes(r, i),
                state: state.to_owned(),
                class,
            }
        })
        .collect();
    let cells = view
        .cells
        .iter()
        .map(|c| {
            let total = c.edges.len();
            let on_new = c
                .edges
                .iter()
                .filter(|e| e.applied == Some(r.version))
                .count();
            let errors = c.edges.iter().filter(|e| e.error.is_some()).count();
            let (state, class) = if errors > 0 {
                (format!("{errors} edge(s) with errors"), "bad")
            } else if total > 0 && on_new == total {
                (format!("on v{}", r.version), "ok")
            } else if c.target == Some(r.version) {
                (
                    format!("activating: {on_new} of {total} on v{}", r.version),
                    "warn",
                )
            } else {
                (format!("on {}", version_text(c.target)), "muted")
            };
            CellRow {
                cell: c.cell.clone(),
                target: version_text(c.target),
                state,
                class,
                edges: c
                    .edges
                    .iter()
                    .map(|e| {
                        let mut s = format!("{}: {}", e.id, version_text(e.applied));
                        if e.staged.is_some() && e.staged != e.applied {
                            s.push_str(&format!(" (staged {})", version_text(e.staged)));
                        }
                        if let Some(err) = &e.error {
                            s.push_str(&format!(" — {err}"));
                        }
                        s
                    })
                    .collect(),
            }
        })
        .collect();
    let (verdict, checks) = match &view.gate {
        Some(g) => (
            format!(
                "{:?}: {} ({} requests in the wave, {} in the baseline)",
                g.verdict, g.reason, g.wave_requests, g.baseline_requests
            ),
            g.checks
                .iter()
                .map(|c| CheckRow {
                    scope: c.scope.clone(),
                    metric: c.metric.clone(),
                    wave: number(c.wave),
                    baseline: c.baseline.map_or_else(|| "–".to_owned(), number),
                    threshold: number(c.threshold),
                    n: c.n,
                    failed: c.failed,
                })
                .collect(),
        ),
        None => ("The gate has not looked yet.".to_owned(), Vec::new()),
    };
    RolloutLive {
        fleet_version: version_text(view.fleet_version),
        any: true,
        title: what,
        phase: phase.to_owned(),
        phase_class,
        by: if r.message.trim().is_empty() {
            format!("by {}", r.by)
        } else {
            format!("by {}: {}", r.by, r.message)
        },
        started: when(r.started_ms),
        notes,
        waves,
        cells,
        verdict,
        checks,
        plots: gate_plots(points),
        drawn: when(now),
    }
}

/// One plot per (scope, metric) of the gate's looks, value against threshold.
pub fn gate_plots(points: &[crate::rollout::history::GatePoint]) -> Vec<Plot> {
    type Series = (Vec<(f64, f64)>, Vec<f64>, bool);
    let mut series: BTreeMap<(String, String), Series> = BTreeMap::new();
    for p in points {
        for c in &p.checks {
            let key = (c.scope.clone(), c.metric.clone());
            if !series.contains_key(&key) && series.len() >= MAX_PLOTS {
                continue;
            }
            let s = series.entry(key).or_default();
            s.0.push((p.at_ms as f64 / 1000.0, c.value));
            s.1.push(c.threshold);
            s.2 = c.failed;
        }
    }
    series
        .into_iter()
        .map(|((scope, metric), (values, thresholds, failed))| {
            plot::plot(&format!("{scope} {metric}"), &values, &thresholds, failed)
        })
        .collect()
}

async fn live_html(ui: &Ui) -> Result<String, UiError> {
    let view = ui.plane.rollout_view().await?;
    let points = view
        .rollout
        .as_ref()
        .map(|r| ui.plane.gate_history.points(r.id))
        .unwrap_or_default();
    rollout_live(&view, &points, now_ms())
        .render()
        .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `GET /ui/rollouts`.
pub async fn rollouts(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
) -> Result<Response, UiError> {
    let live = live_html(&ui).await?;
    Ok(render(&RolloutsPage {
        nav: Nav::new(&s, "rollouts"),
        live,
    }))
}

/// `GET /ui/rollouts/live`: the live part as `{"html": …}`.
pub async fn rollouts_live(State(ui): State<Ui>) -> Result<Response, UiError> {
    let html = live_html(&ui).await?;
    Ok(Json(serde_json::json!({ "html": html })).into_response())
}

fn message(fields: &[(String, String)], default: &str) -> String {
    let m = field(fields, "message").unwrap_or("").trim();
    let m = if m.is_empty() { default } else { m };
    m.chars().take(MAX_MESSAGE).collect()
}

/// `POST /ui/rollout/{pause,resume,abort}`: as `POST /v1/rollout/{action}`.
pub async fn rollout_action(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    Path(action): Path<String>,
    body: Bytes,
) -> Result<Response, UiError> {
    let fields = action_form(&s, &body)?;
    let m = message(&fields, "from the dashboard");
    let by = s.operator.as_str();
    match action.as_str() {
        "pause" => ui.plane.pause(by, &m).await?,
        "resume" => ui.plane.resume(by, &m).await?,
        "abort" => ui.plane.abort(by, &m).await?,
        _ => {
            return Err(UiError::new(
                StatusCode::NOT_FOUND,
                "no such action: pause, resume or abort",
            ))
        }
    };
    Ok(redirect("/ui/rollouts"))
}

/// `POST /ui/rollback`: as `POST /v1/rollback` (`version` empty: the version before).
pub async fn rollback(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    body: Bytes,
) -> Result<Response, UiError> {
    let fields = action_form(&s, &body)?;
    let version = match field(&fields, "version").map(str::trim) {
        None | Some("") => None,
        Some(v) => Some(
            v.trim_start_matches('v')
                .parse::<u64>()
                .map_err(|_| UiError::new(StatusCode::BAD_REQUEST, "version: a number"))?,
        ),
    };
    let m = message(&fields, "rollback from the dashboard");
    ui.plane.rollback(version, &s.operator, &m).await?;
    Ok(redirect("/ui/rollouts"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ui::pages::testing::*;

    #[test]
    fn the_rollout_page_escapes_cells_errors_and_gate_scopes() {
        let rollout: Rollout = serde_json::from_value(json!({
            "id": 5, "kind": "deploy", "version": 4, "sha256": "x", "from": 3, "from_sha256": "y",
            "plan": {"name": "default", "waves": [{"edges": 1}, {"percent": 100}], "bake_s": 1,
                     "interval_s": 1, "min_requests": 0, "max_wait_s": 10, "activate_timeout_s": 10,
                     "gate": {}},
            "edge_gone_ms": 1, "stage_timeout_ms": 1, "by": HOSTILE, "message": HOSTILE,
            "started_ms": 1, "phase": "wave", "wave": 1, "phase_since_ms": 1,
            "held": HOSTILE,
        }))
        .unwrap();
        let view = RolloutView {
            rollout: Some(rollout),
            gate: None,
            fleet_version: Some(3),
            cells: vec![CellView {
                cell: HOSTILE.into(),
                target: Some(4),
                edges: vec![EdgeView {
                    id: "e1".into(),
                    applied: Some(4),
                    target: Some(4),
                    staged: Some(4),
                    error: Some(HOSTILE.into()),
                }],
            }],
        };
        let points = vec![crate::rollout::history::GatePoint {
            at_ms: 1_000,
            wave: 1,
            checks: vec![crate::rollout::history::CheckPoint {
                scope: HOSTILE.into(),
                metric: "5xx".into(),
                value: 0.5,
                threshold: 1.0,
                failed: false,
            }],
        }];
        let live = rollout_live(&view, &points, 2_000);
        assert_eq!(live.waves.len(), 2);
        assert_eq!(live.waves[0].state, "done");
        assert_eq!(live.waves[1].state, "baking");
        assert_eq!(live.plots.len(), 1);
        let html = live.render().unwrap();
        assert_escaped(&html);
        assert!(html.contains("<polyline class=\"value\""), "{html}");
        assert!(
            html.contains("The fleet runs <strong>v3</strong>"),
            "{html}"
        );
        let page = RolloutsPage {
            nav: nav(),
            live: html,
        };
        let html = page.render().unwrap();
        assert!(html.contains("data-live=\"/ui/rollouts/live\""));
        assert!(
            !html.contains("/ui/rollout/pause"),
            "read-only sees no buttons"
        );
    }
}
