//! The fleet page: POPs → cells → edges.

use super::*;

/// One edge on the fleet page.
pub struct FleetEdge {
    /// Id.
    pub id: String,
    /// `edge` or `dns`.
    pub role: String,
    /// Applied version.
    pub applied: String,
    /// CSS class of its health: `ok`, `warn`, `bad`.
    pub health_class: &'static str,
    /// Its health in words.
    pub health: String,
    /// When last seen.
    pub last_seen: String,
    /// Its last error.
    pub error: String,
    /// Services kept back at an older version, with why.
    pub kept_back: Vec<String>,
    /// 5xx share of its latest health report.
    pub share_5xx: String,
}

/// One cell on the fleet page.
pub struct FleetCell {
    /// Name.
    pub cell: String,
    /// Its edges.
    pub edges: Vec<FleetEdge>,
}

/// One POP on the fleet page.
pub struct FleetPop {
    /// Name.
    pub pop: String,
    /// Healthy and live edges, as DNS counts them.
    pub summary: String,
    /// Whether DNS may send clients there.
    pub healthy: bool,
    /// Its cells.
    pub cells: Vec<FleetCell>,
}

/// The fleet page.
#[derive(Template)]
#[template(path = "ui/fleet.html")]
pub struct FleetPage {
    /// Header.
    pub nav: Nav,
    /// The rendered live part ([`FleetLive`]).
    pub live: String,
}

/// The fleet page's tables (also sent alone to the page's script).
#[derive(Template)]
#[template(path = "ui/fleet_live.html")]
pub struct FleetLive {
    /// When this was drawn.
    pub drawn: String,
    /// The version every edge without an override runs.
    pub fleet_version: String,
    /// Edges in all.
    pub edges: usize,
    /// POPs → cells → edges.
    pub pops: Vec<FleetPop>,
}

/// The fleet page's view of `fleet` at `now`; `window` is the live window (ms); `health`
/// gives an edge's latest 5xx share.
pub fn fleet_view(
    fleet: &[EdgeStatus],
    pops: &PopHealthList,
    fleet_version: Option<u64>,
    now: u64,
    health: impl Fn(&str) -> String,
) -> FleetLive {
    let mut out: Vec<FleetPop> = Vec::new();
    for e in fleet {
        let r = &e.report;
        let live = now.saturating_sub(e.last_seen_ms) <= pops.live_window_ms;
        let (health_class, health_text) = if !live {
            ("bad", "gone".to_owned())
        } else if r.error.is_some() || !r.failed_services.is_empty() {
            ("warn", "serving, with errors".to_owned())
        } else if let Some(stale) = &r.stale {
            ("warn", format!("stale: {stale}"))
        } else if r.applied_version.is_some() {
            ("ok", "healthy".to_owned())
        } else {
            ("warn", "not serving yet".to_owned())
        };
        let edge = FleetEdge {
            id: e.id.clone(),
            role: format!("{:?}", r.role).to_lowercase(),
            applied: version_text(r.applied_version),
            health_class,
            health: health_text,
            last_seen: ago(e.last_seen_ms, now),
            error: r.error.clone().unwrap_or_default(),
            kept_back: r
                .failed_services
                .iter()
                .map(|f| match f.kept_version {
                    Some(v) => format!("{} (kept at v{v}): {}", f.service, f.error),
                    None => format!("{} (not served): {}", f.service, f.error),
                })
                .collect(),
            share_5xx: health(&e.id),
        };
        if !out.iter().any(|p| p.pop == r.pop) {
            let h = pops.pops.iter().find(|p| p.pop == r.pop);
            out.push(FleetPop {
                pop: r.pop.clone(),
                summary: h.map_or_else(
                    || "not a POP DNS steers to".to_owned(),
                    |h| {
                        format!(
                            "{} of {} edges live, {} serving",
                            h.live, h.edges, h.healthy_edges
                        )
                    },
                ),
                healthy: h.is_some_and(|h| h.healthy),
                cells: Vec::new(),
            });
        }
        let Some(pop) = out.iter_mut().find(|p| p.pop == r.pop) else {
            continue;
        };
        match pop.cells.iter_mut().find(|c| c.cell == r.cell) {
            Some(c) => c.edges.push(edge),
            None => pop.cells.push(FleetCell {
                cell: r.cell.clone(),
                edges: vec![edge],
            }),
        }
    }
    for p in &mut out {
        p.cells.sort_by(|a, b| a.cell.cmp(&b.cell));
    }
    FleetLive {
        drawn: when(now),
        fleet_version: version_text(fleet_version),
        edges: fleet.len(),
        pops: out,
    }
}

async fn fleet_html(ui: &Ui) -> Result<String, UiError> {
    let fleet = ui.plane.fleet().await?;
    let pops = ui.plane.pop_health().await?;
    let view = fleet_view(
        &fleet,
        &pops,
        ui.plane.fleet_state().default_version(),
        now_ms(),
        |id| {
            ui.plane.health.latest(id).map_or_else(
                || "–".to_owned(),
                |h| share(h.total.status_5xx, h.total.requests),
            )
        },
    );
    view.render()
        .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `GET /ui/`: POPs → cells → edges.
pub async fn fleet(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
) -> Result<Response, UiError> {
    let live = fleet_html(&ui).await?;
    Ok(render(&FleetPage {
        nav: Nav::new(&s, "fleet"),
        live,
    }))
}

/// `GET /ui/fleet/live`: the fleet's tables as `{"html": …}`.
pub async fn fleet_live(State(ui): State<Ui>) -> Result<Response, UiError> {
    let html = fleet_html(&ui).await?;
    Ok(Json(serde_json::json!({ "html": html })).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ui::pages::testing::*;

    #[test]
    fn the_fleet_page_escapes_what_edges_report() {
        let fleet = vec![
            edge("e1", HOSTILE, HOSTILE, Some(HOSTILE)),
            edge("e2", "ams", "c1", None),
        ];
        let pops = PopHealthList {
            at_ms: 1_000,
            live_window_ms: 60_000,
            pops: vec![PopHealth {
                pop: "ams".into(),
                edges: 1,
                live: 1,
                healthy_edges: 1,
                stale: 0,
                healthy: true,
                listen: Vec::new(),
            }],
            truncated: false,
        };
        let live = fleet_view(&fleet, &pops, Some(3), 2_000, |_| HOSTILE.to_owned());
        let html = live.render().unwrap();
        assert_escaped(&html);
        assert!(html.contains("POP ams"), "{html}");
        assert!(html.contains("e2"));
        assert!(html.contains("kept at v2"));
        let html = FleetPage {
            nav: nav(),
            live: html,
        }
        .render()
        .unwrap();
        assert!(html.contains("data-live=\"/ui/fleet/live\""));
        // The CSRF token is in the sign-out form.
        assert!(html.contains(&"c".repeat(64)));
    }
}
