//! The dashboard's pages and actions. Each page's data is gathered into a view (plain
//! strings and numbers), then rendered by its askama template, which escapes every string.

use super::plot::{self, number, Plot};
use super::session::{self, Session};
use super::{checked_form, field, form_fields, may_act, redirect, render, Ui, UiError};
use crate::rollout::history::{p99_ms, TrafficBucket, TrafficCounts, TRAFFIC_BUCKET_MS};
use crate::rollout::state::{Phase, Rollout, RolloutKind};
use crate::rollout::RolloutView;
use askama::Template;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use firebreak_protocol::api::{EdgeStatus, PopHealthList, PurgeOutcome, PurgeRequest};
use firebreak_protocol::now_ms;
use std::collections::BTreeMap;

/// Newest versions listed.
const VERSIONS_LISTED: usize = 100;
/// Newest audit entries listed.
const AUDIT_LISTED: usize = 200;
/// Most gate plots on the rollout page.
const MAX_PLOTS: usize = 24;
/// Longest operator message taken from a form.
const MAX_MESSAGE: usize = 1024;

/// What every page's header shows.
pub struct Nav {
    /// The operator's name.
    pub operator: String,
    /// The operator's role.
    pub role: String,
    /// The session's CSRF token (the sign-out form).
    pub csrf: String,
    /// Whether action buttons are shown.
    pub can_act: bool,
    /// Which page this is.
    pub page: &'static str,
}

impl Nav {
    /// The header for `session` on `page`.
    pub fn new(session: &Session, page: &'static str) -> Self {
        Self {
            operator: session.operator.clone(),
            role: session.role.to_string(),
            csrf: session.csrf.clone(),
            can_act: session.can_act(),
            page,
        }
    }
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SSZ`.
pub fn when(ms: u64) -> String {
    if ms == 0 {
        return "never".to_owned();
    }
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How long ago `ms` was, from `now`.
pub fn ago(ms: u64, now: u64) -> String {
    if ms == 0 {
        return "never".to_owned();
    }
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn version_text(v: Option<u64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("v{v}"))
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".to_owned()
    } else {
        format!("{:.2} %", part as f64 * 100.0 / whole as f64)
    }
}

// ---------------------------------------------------------------- error, sign-in

/// An error page.
#[derive(Template)]
#[template(path = "ui/error.html")]
pub struct ErrorPage<'a> {
    /// HTTP status.
    pub status: u16,
    /// Its reason phrase.
    pub reason: &'a str,
    /// What went wrong.
    pub message: &'a str,
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "ui/login.html")]
pub struct LoginPage {
    /// The double-submit token (also in the `fb_login` cookie).
    pub csrf: String,
    /// Why the last attempt failed.
    pub error: String,
}

fn login_page(ui: &Ui, status: StatusCode, error: &str) -> Response {
    let Some(csrf) = session::random_token() else {
        return UiError::new(StatusCode::SERVICE_UNAVAILABLE, "no randomness").into_response();
    };
    let cookie = format!(
        "{}; Max-Age=600",
        session::set_cookie(session::LOGIN_COOKIE, &csrf, ui.secure)
    );
    let page = LoginPage {
        csrf,
        error: error.to_owned(),
    };
    (status, [(header::SET_COOKIE, cookie)], render(&page)).into_response()
}

/// `GET /ui/login`.
pub async fn login_form(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if session::cookie(&headers, session::COOKIE).is_some_and(|id| ui.sessions.get(id).is_some()) {
        return redirect("/ui/");
    }
    login_page(&ui, StatusCode::OK, "")
}

/// `POST /ui/login`: `token` and the double-submit `csrf`.
pub async fn login(State(ui): State<Ui>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form_fields(&body);
    let expected = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or("");
    if !session::same_secret(field(&fields, "csrf").unwrap_or(""), expected) {
        return UiError::new(
            StatusCode::FORBIDDEN,
            "the sign-in form's CSRF token is missing or wrong: load the sign-in page again",
        )
        .into_response();
    }
    let token = field(&fields, "token").unwrap_or("").trim();
    match ui.sessions.sign_in(&ui.access, token) {
        Some((id, s)) => {
            tracing::info!(operator = %s.operator, "dashboard sign-in");
            let mut resp = redirect("/ui/");
            let h = resp.headers_mut();
            for c in [
                session::set_cookie(session::COOKIE, &id, ui.secure),
                session::set_cookie(session::LOGIN_COOKIE, "", ui.secure),
            ] {
                if let Ok(v) = c.parse() {
                    h.append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        None => login_page(
            &ui,
            StatusCode::UNAUTHORIZED,
            "That token is not an operator's.",
        ),
    }
}

/// `POST /ui/logout`.
pub async fn logout(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, UiError> {
    checked_form(&s, &body)?;
    if let Some(id) = session::cookie(&headers, session::COOKIE) {
        ui.sessions.sign_out(id);
    }
    let mut resp = redirect("/ui/login");
    if let Ok(v) = session::set_cookie(session::COOKIE, "", ui.secure).parse() {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

// ---------------------------------------------------------------- fleet

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

// ---------------------------------------------------------------- rollouts

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
    /// The fleet's version (the default rollback target's successor).
    pub fleet_version: String,
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
        any: true,
        title: what,
        phase: phase.to_owned(),
        phase_class,
        by: format!("{}: {}", r.by, r.message),
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
        fleet_version: version_text(ui.plane.fleet_state().default_version()),
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
    let fields = checked_form(&s, &body)?;
    may_act(&s)?;
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
    let fields = checked_form(&s, &body)?;
    may_act(&s)?;
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

// ---------------------------------------------------------------- versions, diff

/// One version in the list.
pub struct VersionRow {
    /// Number.
    pub version: u64,
    /// Parent.
    pub parent: String,
    /// Author.
    pub author: String,
    /// Message.
    pub message: String,
    /// When.
    pub created: String,
    /// Services.
    pub services: usize,
    /// Bundle size.
    pub size: u64,
}

/// The versions page.
#[derive(Template)]
#[template(path = "ui/versions.html")]
pub struct VersionsPage {
    /// Header.
    pub nav: Nav,
    /// Newest first.
    pub versions: Vec<VersionRow>,
    /// The fleet's version.
    pub fleet_version: String,
}

/// `GET /ui/versions`.
pub async fn versions(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
) -> Result<Response, UiError> {
    let list = ui.plane.versions(VERSIONS_LISTED).await?;
    Ok(render(&VersionsPage {
        nav: Nav::new(&s, "versions"),
        versions: list
            .into_iter()
            .map(|v| VersionRow {
                version: v.version,
                parent: version_text(v.parent),
                author: v.author,
                message: v.message,
                created: when(v.created_at_ms),
                services: v.services.len(),
                size: v.size,
            })
            .collect(),
        fleet_version: version_text(ui.plane.fleet_state().default_version()),
    }))
}

/// One version's page.
#[derive(Template)]
#[template(path = "ui/version.html")]
pub struct VersionPage {
    /// Header.
    pub nav: Nav,
    /// Number.
    pub version: u64,
    /// Parent.
    pub parent: Option<u64>,
    /// Author, message, when, hashes.
    pub facts: Vec<(String, String)>,
    /// Its configuration, certificates described, never shown as PEM (keys are never stored).
    pub document: String,
}

/// `GET /ui/versions/{n}`: the configuration with secrets redacted, as `GET /v1/versions/{n}`.
pub async fn version(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    n: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> Result<Response, UiError> {
    let Path(n) = n.map_err(|_| UiError::new(StatusCode::NOT_FOUND, "no such version"))?;
    let detail = ui.plane.version(n).await?;
    let document = detail.document;
    let document =
        tokio::task::spawn_blocking(move || firebreak_protocol::secrets::redact_certs(&document))
            .await
            .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let i = detail.info;
    let mut facts = vec![
        ("author".to_owned(), i.author),
        ("message".to_owned(), i.message),
        ("created".to_owned(), when(i.created_at_ms)),
        ("bundle sha256".to_owned(), i.sha256),
        ("size".to_owned(), format!("{} bytes", i.size)),
    ];
    for svc in i.services {
        facts.push((format!("service {}", svc.name), svc.sha256));
    }
    Ok(render(&VersionPage {
        nav: Nav::new(&s, "versions"),
        version: n,
        parent: i.parent,
        facts,
        document,
    }))
}

/// One line of a diff.
pub struct DiffLine {
    /// `add`, `del`, `hunk` or ``.
    pub class: &'static str,
    /// The line.
    pub text: String,
}

/// The diff page.
#[derive(Template)]
#[template(path = "ui/diff.html")]
pub struct DiffPage {
    /// Header.
    pub nav: Nav,
    /// From.
    pub from: u64,
    /// To.
    pub to: u64,
    /// The unified diff.
    pub lines: Vec<DiffLine>,
}

/// `?from=A&to=B`.
#[derive(serde::Deserialize)]
pub struct DiffQuery {
    from: u64,
    to: u64,
}

/// `GET /ui/diff?from=A&to=B`: as `GET /v1/diff` (certificates redacted).
pub async fn diff(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    q: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    let Query(q) = q.map_err(|_| {
        UiError::new(
            StatusCode::BAD_REQUEST,
            "give two version numbers: from and to",
        )
    })?;
    let text = ui.plane.diff(q.from, q.to).await?;
    let lines = text
        .lines()
        .map(|l| DiffLine {
            class: if l.starts_with("@@") {
                "hunk"
            } else if l.starts_with('+') && !l.starts_with("+++") {
                "add"
            } else if l.starts_with('-') && !l.starts_with("---") {
                "del"
            } else {
                ""
            },
            text: l.to_owned(),
        })
        .collect();
    Ok(render(&DiffPage {
        nav: Nav::new(&s, "versions"),
        from: q.from,
        to: q.to,
        lines,
    }))
}

// ---------------------------------------------------------------- audit

/// One audit entry.
pub struct AuditRow {
    /// When.
    pub at: String,
    /// Who.
    pub who: String,
    /// What.
    pub action: String,
    /// Version.
    pub version: String,
    /// Rollout.
    pub rollout: String,
    /// Why.
    pub message: String,
}

/// The audit page.
#[derive(Template)]
#[template(path = "ui/audit.html")]
pub struct AuditPage {
    /// Header.
    pub nav: Nav,
    /// Newest first.
    pub entries: Vec<AuditRow>,
}

/// `GET /ui/audit`.
pub async fn audit(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
) -> Result<Response, UiError> {
    let list = ui.plane.audit_log(AUDIT_LISTED).await?;
    Ok(render(&AuditPage {
        nav: Nav::new(&s, "audit"),
        entries: list
            .into_iter()
            .rev()
            .map(|e| AuditRow {
                at: when(e.at_ms),
                who: e.who,
                action: e.action,
                version: version_text(e.version),
                rollout: e.rollout.map_or_else(|| "–".to_owned(), |r| r.to_string()),
                message: e.message,
            })
            .collect(),
    }))
}

// ---------------------------------------------------------------- purge

/// The purge page (form, and the last purge's outcome).
#[derive(Template)]
#[template(path = "ui/purge.html")]
pub struct PurgePage {
    /// Header.
    pub nav: Nav,
    /// The outcome of the purge just made.
    pub outcome: Option<PurgeView>,
}

/// A purge's outcome.
pub struct PurgeView {
    /// What was purged.
    pub what: String,
    /// Edges asked.
    pub edges: usize,
    /// Acknowledged.
    pub acknowledged: usize,
    /// Objects purged.
    pub purged: u64,
    /// Time taken.
    pub elapsed_ms: u64,
    /// Edges that did not acknowledge, with why.
    pub stragglers: Vec<String>,
    /// Edges not asked (not seen for a while).
    pub skipped: Vec<String>,
}

fn purge_view(what: String, o: PurgeOutcome) -> PurgeView {
    PurgeView {
        what,
        edges: o.edges,
        acknowledged: o.acknowledged.len(),
        purged: o.purged,
        elapsed_ms: o.elapsed_ms,
        stragglers: o
            .stragglers
            .into_iter()
            .map(|s| format!("{}: {}", s.id, s.error))
            .collect(),
        skipped: o.skipped,
    }
}

/// `GET /ui/purge`.
pub async fn purge_form(Extension(s): Extension<Session>) -> Response {
    render(&PurgePage {
        nav: Nav::new(&s, "purge"),
        outcome: None,
    })
}

/// `POST /ui/purge`: by `url`, or surrogate `key` of `service`, or `all` of `service`; as
/// `POST /v1/purge`.
pub async fn purge(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    body: Bytes,
) -> Result<Response, UiError> {
    let fields = checked_form(&s, &body)?;
    may_act(&s)?;
    let get = |name: &str| {
        field(&fields, name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let service = get("service");
    let mut req = PurgeRequest {
        soft: get("soft").is_some(),
        service: service.clone(),
        ..PurgeRequest::default()
    };
    let what = if let Some(url) = get("url") {
        req.url = Some(url.clone());
        req.service = None;
        url
    } else if let Some(key) = get("key") {
        req.key = Some(key.clone());
        format!("key {key} of {}", service.unwrap_or_default())
    } else if get("all").is_some() {
        req.all = true;
        format!("everything of {}", service.unwrap_or_default())
    } else {
        return Err(UiError::new(
            StatusCode::BAD_REQUEST,
            "give a URL, or a surrogate key and its service, or tick everything of a service",
        ));
    };
    tracing::info!(operator = %s.operator, what = %what, "purge from the dashboard");
    let outcome = ui.plane.purge(req).await?;
    Ok(render(&PurgePage {
        nav: Nav::new(&s, "purge"),
        outcome: Some(purge_view(what, outcome)),
    }))
}

// ---------------------------------------------------------------- DNS

/// One region's steering now.
pub struct RegionRow {
    /// Name.
    pub region: String,
    /// Its preference list, tiers separated by `→`.
    pub preference: String,
    /// Where clients are sent now.
    pub sent_to: String,
    /// Whether that is a fallback (not the first tier, or no POP at all).
    pub fallback: bool,
}

/// One service's DNS fallback.
pub struct ServiceDnsRow {
    /// Service.
    pub service: String,
    /// What it answers when none of its POPs is healthy.
    pub fallback: String,
    /// Whether that fallback answers now somewhere (a region with no healthy POP of its).
    pub in_use: String,
}

/// The DNS page.
#[derive(Template)]
#[template(path = "ui/dns.html")]
pub struct DnsPage {
    /// Header.
    pub nav: Nav,
    /// The zone (empty: the fleet has no DNS).
    pub zone: String,
    /// POP health as the control plane sees it: (pop, healthy, summary).
    pub pops: Vec<(String, bool, String)>,
    /// Regions.
    pub regions: Vec<RegionRow>,
    /// Services.
    pub services: Vec<ServiceDnsRow>,
}

/// The DNS page's view of `config` under `health`.
pub fn dns_view(
    nav: Nav,
    config: Option<&firebreak_config::Config>,
    health: &PopHealthList,
) -> DnsPage {
    let healthy = |p: &str| health.pops.iter().any(|h| h.pop == p && h.healthy);
    let pops = health
        .pops
        .iter()
        .map(|p| {
            (
                p.pop.clone(),
                p.healthy,
                format!(
                    "{} of {} edges live, {} serving, {} stale",
                    p.live, p.edges, p.healthy_edges, p.stale
                ),
            )
        })
        .collect();
    let Some((dns, config)) = config.and_then(|c| c.dns.as_ref().map(|d| (d, c))) else {
        return DnsPage {
            nav,
            zone: String::new(),
            pops,
            regions: Vec::new(),
            services: Vec::new(),
        };
    };
    let regions: Vec<RegionRow> = dns
        .regions
        .iter()
        .map(|r| {
            let first = r.pops.iter().enumerate().find_map(|(i, t)| {
                let up: Vec<&str> = t
                    .pops()
                    .iter()
                    .map(String::as_str)
                    .filter(|p| healthy(p))
                    .collect();
                (!up.is_empty()).then(|| (i, up.join(", ")))
            });
            let (sent_to, fallback) = match first {
                Some((0, up)) => (up, false),
                Some((i, up)) => (format!("{up} (tier {} of {})", i + 1, r.pops.len()), true),
                None => (
                    "no healthy POP: each service's fallback answers".to_owned(),
                    true,
                ),
            };
            RegionRow {
                region: r.name.clone(),
                preference: r
                    .pops
                    .iter()
                    .map(|t| t.pops().join(" + "))
                    .collect::<Vec<_>>()
                    .join(" → "),
                sent_to,
                fallback,
            }
        })
        .collect();
    let services = config
        .services
        .iter()
        .filter_map(|svc| {
            let d = svc.dns.as_ref()?;
            let fallback = match (&d.fallback_cname, d.fallback_addrs.is_empty()) {
                (Some(c), _) => format!("CNAME {c}"),
                (None, false) => d
                    .fallback_addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                (None, true) => "the last healthy answer".to_owned(),
            };
            let serves = |p: &str| d.pops.is_empty() || d.pops.iter().any(|x| x == p);
            let without: Vec<&str> = dns
                .regions
                .iter()
                .filter(|r| {
                    !r.pops
                        .iter()
                        .flat_map(|t| t.pops())
                        .any(|p| serves(p) && healthy(p))
                })
                .map(|r| r.name.as_str())
                .collect();
            Some(ServiceDnsRow {
                service: svc.name.clone(),
                fallback,
                in_use: if without.is_empty() {
                    "no".to_owned()
                } else {
                    format!("yes, in {}", without.join(", "))
                },
            })
        })
        .collect();
    DnsPage {
        nav,
        zone: dns.zone.clone(),
        pops,
        regions,
        services,
    }
}

/// `GET /ui/dns`.
pub async fn dns(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
) -> Result<Response, UiError> {
    let health = ui.plane.pop_health().await?;
    let config = match ui.plane.fleet_state().default_version() {
        Some(v) => {
            let doc = ui.plane.version(v).await?.document;
            tokio::task::spawn_blocking(move || {
                firebreak_config::parse_managed_str(&format!("version {v}"), &doc).ok()
            })
            .await
            .ok()
            .flatten()
        }
        None => None,
    };
    Ok(render(&dns_view(
        Nav::new(&s, "dns"),
        config.as_ref().map(|c| c.get()),
        &health,
    )))
}

// ---------------------------------------------------------------- traffic

/// One POP's or service's traffic over the last hour.
pub struct TrafficRow {
    /// POP or service.
    pub name: String,
    /// Requests per second, averaged over the last full minute.
    pub rps_now: String,
    /// Requests per second over the hour.
    pub rps_hour: String,
    /// Hit ratio.
    pub hit_ratio: String,
    /// 5xx share.
    pub share_5xx: String,
    /// p99 latency (ms, bucket upper bound).
    pub p99: String,
    /// Requests per second per minute.
    pub plot: Plot,
}

/// A table of the traffic page.
pub struct TrafficSection {
    /// `Per POP` or `Per service`.
    pub heading: &'static str,
    /// Its rows.
    pub rows: Vec<TrafficRow>,
}

/// The traffic page.
#[derive(Template)]
#[template(path = "ui/traffic.html")]
pub struct TrafficPage {
    /// Header.
    pub nav: Nav,
    /// Per POP, then per service.
    pub sections: Vec<TrafficSection>,
    /// Minutes covered.
    pub minutes: usize,
}

fn traffic_rows(
    buckets: &[TrafficBucket],
    pick: fn(&TrafficBucket) -> &BTreeMap<String, TrafficCounts>,
) -> Vec<TrafficRow> {
    let mut names: Vec<&String> = buckets.iter().flat_map(|b| pick(b).keys()).collect();
    names.sort();
    names.dedup();
    let per_s = |c: Option<&TrafficCounts>| {
        c.map_or(0.0, |c| {
            c.requests as f64 * 1000.0 / TRAFFIC_BUCKET_MS as f64
        })
    };
    names
        .into_iter()
        .map(|name| {
            let mut sum = TrafficCounts::default();
            for b in buckets {
                if let Some(c) = pick(b).get(name) {
                    sum.requests = sum.requests.saturating_add(c.requests);
                    sum.hits = sum.hits.saturating_add(c.hits);
                    sum.status_5xx = sum.status_5xx.saturating_add(c.status_5xx);
                    if sum.latency.len() < c.latency.len() {
                        sum.latency.resize(c.latency.len(), 0);
                    }
                    for (a, n) in sum.latency.iter_mut().zip(&c.latency) {
                        *a = a.saturating_add(*n);
                    }
                }
            }
            let values: Vec<(f64, f64)> = buckets
                .iter()
                .map(|b| (b.start_ms as f64 / 1000.0, per_s(pick(b).get(name))))
                .collect();
            // The last full minute (the newest bucket is still filling).
            let now = buckets.len().checked_sub(2).and_then(|i| buckets.get(i));
            let minutes = buckets.len().max(1) as f64;
            TrafficRow {
                name: name.clone(),
                rps_now: now.map_or_else(|| "–".to_owned(), |b| number(per_s(pick(b).get(name)))),
                rps_hour: number(per_s(Some(&sum)) / minutes),
                hit_ratio: share(sum.hits, sum.requests),
                share_5xx: share(sum.status_5xx, sum.requests),
                p99: if sum.requests == 0 {
                    "–".to_owned()
                } else {
                    format!("{} ms", number(p99_ms(&sum.latency)))
                },
                plot: plot::plot(name, &values, &[], false),
            }
        })
        .collect()
}

/// `GET /ui/traffic`: the last hour from the edges' health reports.
pub async fn traffic(State(ui): State<Ui>, Extension(s): Extension<Session>) -> Response {
    let buckets = ui.plane.traffic.last_hour(now_ms());
    render(&TrafficPage {
        nav: Nav::new(&s, "traffic"),
        sections: vec![
            TrafficSection {
                heading: "Per POP",
                rows: traffic_rows(&buckets, |b| &b.pops),
            },
            TrafficSection {
                heading: "Per service",
                rows: traffic_rows(&buckets, |b| &b.services),
            },
        ],
        minutes: buckets.len(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::rollout::{CellView, EdgeView};
    use firebreak_protocol::api::PopHealth;
    use serde_json::json;

    const HOSTILE: &str = "<script>alert(\"x\")</script>&'";

    fn nav() -> Nav {
        Nav::new(
            &Session {
                operator: "alice".into(),
                role: Role::ReadOnly,
                csrf: "c".repeat(64),
            },
            "fleet",
        )
    }

    fn assert_escaped(html: &str) {
        assert!(!html.contains("<script>alert"), "unescaped: {html}");
        assert!(html.contains("&#60;script&#62;alert("), "{html}");
    }

    fn edge(id: &str, pop: &str, cell: &str, error: Option<&str>) -> EdgeStatus {
        serde_json::from_value(json!({
            "id": id, "pop": pop, "cell": cell, "admin_url": null, "applied_version": 3,
            "applied_seq": 1, "error": error,
            "failed_services": [{"service": HOSTILE, "error": HOSTILE, "kept_version": 2}],
            "last_seen_ms": 1_000,
        }))
        .unwrap()
    }

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
        let page = RolloutsPage {
            nav: nav(),
            live: html,
            fleet_version: "v3".into(),
        };
        let html = page.render().unwrap();
        assert!(html.contains("data-live=\"/ui/rollouts/live\""));
        assert!(
            !html.contains("/ui/rollout/pause"),
            "read-only sees no buttons"
        );
    }

    #[test]
    fn the_login_page_carries_its_csrf_token_and_nothing_else() {
        let html = LoginPage {
            csrf: "abc".into(),
            error: HOSTILE.into(),
        }
        .render()
        .unwrap();
        assert_escaped(&html);
        assert!(html.contains("name=\"csrf\" value=\"abc\""));
        assert!(html.contains("type=\"password\""));
    }

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(when(0), "never");
        assert_eq!(when(1_700_000_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(ago(1_000, 6_000), "5 s ago");
    }

    #[test]
    fn the_dns_page_shows_where_regions_go_and_fallbacks_in_use() {
        let doc = "[cache]\nmax_bytes = 67108864\nmax_object_bytes = 1048576\n\
[dns]\nzone = \"cdn.example\"\ndefault_region = \"eu\"\n\
[[dns.ns]]\nname = \"ns1.other.example\"\naddrs = []\n\
[[dns.pop]]\nname = \"ams\"\nanswers = [\"192.0.2.1\"]\n\
[[dns.pop]]\nname = \"fra\"\nanswers = [\"192.0.2.2\"]\n\
[[dns.pop]]\nname = \"nyc\"\nanswers = [\"192.0.2.3\"]\n\
[[dns.region]]\nname = \"eu\"\nprefixes = [\"198.51.100.0/24\"]\npops = [\"ams\", \"fra\"]\n\
[[dns.region]]\nname = \"us\"\nprefixes = [\"203.0.113.0/24\"]\npops = [\"nyc\"]\n\
[[service]]\nname = \"demo\"\nhosts = [\"demo.test\"]\n[service.origin]\nservers = [{ addr = \"127.0.0.1:9\" }]\n\
[service.dns]\nfallback_cname = \"demo.backup.example\"\n";
        let config = firebreak_config::parse_managed_str("f.toml", doc).unwrap();
        let pop = |name: &str, healthy: bool| PopHealth {
            pop: name.into(),
            edges: 1,
            live: 1,
            healthy_edges: u32::from(healthy),
            stale: 0,
            healthy,
            listen: Vec::new(),
        };
        let health = PopHealthList {
            at_ms: 1,
            live_window_ms: 60_000,
            pops: vec![pop("ams", false), pop("fra", true), pop("nyc", false)],
            truncated: false,
        };
        let page = dns_view(nav(), Some(config.get()), &health);
        assert_eq!(page.regions.len(), 2);
        assert_eq!(page.regions[0].sent_to, "fra (tier 2 of 2)");
        assert!(page.regions[0].fallback);
        assert_eq!(page.regions[0].preference, "ams → fra");
        assert!(page.regions[1].sent_to.starts_with("no healthy POP"));
        assert_eq!(page.services[0].fallback, "CNAME demo.backup.example");
        assert_eq!(page.services[0].in_use, "yes, in us");
        let html = page.render().unwrap();
        assert!(html.contains("zone cdn.example"));
        let none = dns_view(nav(), None, &health).render().unwrap();
        assert!(none.contains("no <code>[dns]</code>"), "{none}");
    }

    #[test]
    fn traffic_rows_add_up_the_hour_and_the_last_full_minute() {
        let bucket = |start_ms: u64, requests: u64| {
            let counts = TrafficCounts {
                requests,
                hits: requests / 2,
                status_5xx: requests / 10,
                latency: vec![requests],
            };
            TrafficBucket {
                start_ms,
                pops: BTreeMap::from([(HOSTILE.to_owned(), counts.clone())]),
                services: BTreeMap::from([("www".to_owned(), counts)]),
            }
        };
        let buckets = vec![bucket(0, 600), bucket(60_000, 1200), bucket(120_000, 60)];
        let rows = traffic_rows(&buckets, |b| &b.pops);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].rps_now, "20", "the last full minute: 1200 / 60 s");
        assert_eq!(rows[0].hit_ratio, "50.00 %");
        assert_eq!(rows[0].share_5xx, "10.00 %");
        assert_eq!(rows[0].plot.value.split(' ').count(), 3);
        let html = TrafficPage {
            nav: nav(),
            sections: vec![TrafficSection {
                heading: "Per POP",
                rows,
            }],
            minutes: 3,
        }
        .render()
        .unwrap();
        assert_escaped(&html);
    }
}
