//! `firebreak drill`: the outage drill. Against a running fleet (`firebreak up`), it pushes a
//! version that breaks one service the way real outages do (its origin pointed at a closed
//! port, or an injected 503/panic), rolls it out through the normal path with a steady load on
//! every edge, and reports what the firebreaks did: time to detect after the canary
//! activated, time until every edge was back on the previous version, and the requests that
//! failed, per cell and fleet-wide, against the targets.

use crate::api_client::{exit, Api, Failed};
use crate::load::{Load, Snapshot};
use firebreak_control::rollout::state::Phase;
use firebreak_control::rollout::RolloutView;
use firebreak_protocol::api::{DeployRequest, EdgeStatus, PushRequest, VersionDetail, VersionInfo};
use http::Method;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How the drill breaks the version.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Breakage {
    /// The service's origin points at a closed port (the example).
    ClosedOrigin,
    /// An injected fault: the service answers 503.
    Status,
    /// An injected fault: every request of the service panics.
    Panic,
    /// An injected fault: the edge process aborts when it starts serving the version (needs a
    /// supervisor that restarts edges, as `firebreak up` does; safe mode catches it).
    Crash,
}

fn refused(m: impl Into<String>) -> Failed {
    Failed::new(exit::REFUSED, m)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Failed> {
    serde_json::to_vec(v).map_err(|e| refused(e.to_string()))
}

fn closed_port() -> Result<u16, Failed> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| refused(e.to_string()))?;
    let port = l.local_addr().map_err(|e| refused(e.to_string()))?.port();
    drop(l);
    Ok(port)
}

/// The broken document and a description of the break.
fn break_document(
    text: &str,
    service: Option<&str>,
    how: Breakage,
) -> Result<(String, String), Failed> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| refused(format!("{e}")))?;
    let services = doc
        .get_mut("service")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .ok_or_else(|| refused("the fleet's version has no [[service]]"))?;
    let pick = |t: &toml_edit::Table| match service {
        Some(name) => t.get("name").and_then(toml_edit::Item::as_str) == Some(name),
        None => t.get("default").and_then(toml_edit::Item::as_bool) == Some(true),
    };
    let index = services
        .iter()
        .position(pick)
        .or(if service.is_none() { Some(0) } else { None })
        .ok_or_else(|| refused(format!("no service {}", service.unwrap_or("?"))))?;
    let table = services
        .get_mut(index)
        .ok_or_else(|| refused("no such service"))?;
    let name = table
        .get("name")
        .and_then(toml_edit::Item::as_str)
        .unwrap_or("?")
        .to_owned();
    let what = match how {
        Breakage::ClosedOrigin => {
            let port = closed_port()?;
            let origin = table
                .get_mut("origin")
                .and_then(toml_edit::Item::as_table_like_mut)
                .ok_or_else(|| refused(format!("service {name} has no origin table")))?;
            let mut servers = toml_edit::Array::new();
            let mut one = toml_edit::InlineTable::new();
            one.insert("addr", format!("127.0.0.1:{port}").into());
            servers.push(one);
            origin.insert("servers", toml_edit::value(servers));
            format!("service {name}'s origin pointed at closed port {port}")
        }
        Breakage::Status | Breakage::Panic | Breakage::Crash => {
            let mut fault = toml_edit::Table::new();
            match how {
                Breakage::Status => {
                    fault.insert("action", toml_edit::value("status"));
                    fault.insert("status", toml_edit::value(503));
                }
                Breakage::Crash => {
                    fault.insert("action", toml_edit::value("crash_on_load"));
                }
                _ => {
                    fault.insert("action", toml_edit::value("panic"));
                }
            }
            let mut faults = toml_edit::ArrayOfTables::new();
            faults.push(fault);
            table.insert("fault", toml_edit::Item::ArrayOfTables(faults));
            format!(
                "service {name} with an injected fault ({})",
                match how {
                    Breakage::Status => "503",
                    Breakage::Crash => "the process aborts on load",
                    _ => "panic",
                }
            )
        }
    };
    Ok((doc.to_string(), what))
}

fn sum(s: &Snapshot, ids: &BTreeSet<String>) -> (u64, u64) {
    s.iter()
        .filter(|(id, _)| ids.contains(*id))
        .fold((0, 0), |(a, b), (_, (ok, f))| (a + ok, b + f))
}

/// Runs the drill; exit 0 when the version was rolled back and every target was met.
pub async fn run(
    api: &Api,
    how: Breakage,
    service: Option<String>,
    rate: u32,
    out: Option<std::path::PathBuf>,
) -> Result<(), Failed> {
    #[derive(serde::Deserialize)]
    struct Stored {
        version: u64,
    }
    let current: Stored = api.json(Method::GET, "/v1/target", None).await?;
    let detail: VersionDetail = api
        .json(
            Method::GET,
            // As stored: the broken copy is pushed again, certificates and all.
            &format!("/v1/versions/{}?certs=pem", current.version),
            None,
        )
        .await?;
    let fleet: Vec<EdgeStatus> = api.json(Method::GET, "/v1/fleet", None).await?;
    let mut targets: Vec<(String, SocketAddr)> = Vec::new();
    let mut cell_of: BTreeMap<String, String> = BTreeMap::new();
    for e in &fleet {
        let addr = e
            .report
            .listen
            .first()
            .and_then(|u| u.strip_prefix("http://"))
            .and_then(|a| a.parse().ok());
        if let Some(addr) = addr {
            targets.push((e.id.clone(), addr));
            cell_of.insert(e.id.clone(), e.report.cell.clone());
        }
    }
    if targets.is_empty() {
        return Err(refused("no edge reports a listener; is the fleet up?"));
    }
    let (broken, what) = break_document(&detail.document, service.as_deref(), how)?;
    out!(
        "drill: {} edges in {} cells on version {}; breaking {what}",
        targets.len(),
        cell_of.values().collect::<BTreeSet<_>>().len(),
        current.version
    );
    let load = Load::start(&targets, rate);
    // Warm up: the load reaches every edge and the baseline has traffic.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warm = load.snapshot();
    let info: VersionInfo = api
        .json(
            Method::POST,
            "/v1/versions",
            Some(to_json(&PushRequest {
                file: "drill.toml".into(),
                document: broken,
                message: format!("drill: {what}"),
                author: Some("drill".into()),
                activate: false,
                // A fleet whose document names a MaxMind database is refused here: the drill
                // does not fetch the running version's database to send it again.
                geoip: None,
                force: false,
            })?),
        )
        .await?;
    let rollout: firebreak_control::rollout::state::Rollout = api
        .json(
            Method::POST,
            "/v1/rollouts",
            Some(to_json(&DeployRequest {
                version: info.version,
                plan: None,
                message: "firebreak drill".into(),
            })?),
        )
        .await?;
    out!(
        "version {} pushed; rollout {} on plan `{}`",
        info.version,
        rollout.id,
        rollout.plan.name
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let mut activated: Option<(Instant, Snapshot)> = None;
    let mut detected: Option<Instant> = None;
    let mut took: BTreeSet<String> = BTreeSet::new();
    let mut end: Option<(Instant, Snapshot)> = None;
    let mut outcome = String::new();
    let mut gate_reason = String::new();
    while Instant::now() < deadline {
        let view: RolloutView = api.json(Method::GET, "/v1/rollout", None).await?;
        let fleet: Vec<EdgeStatus> = api.json(Method::GET, "/v1/fleet", None).await?;
        for e in &fleet {
            if e.report.applied_version == Some(info.version) {
                took.insert(e.id.clone());
            }
        }
        // Edges the version was sent to (a version that crashes an edge is never reported
        // applied by it).
        for c in &view.cells {
            for e in &c.edges {
                if e.target == Some(info.version) {
                    took.insert(e.id.clone());
                }
            }
        }
        let Some(r) = view.rollout.filter(|r| r.id == rollout.id) else {
            return Err(refused("the drill's rollout was replaced by another"));
        };
        if activated.is_none() && (r.phase == Phase::Wave || !took.is_empty()) {
            activated = Some((Instant::now(), load.snapshot()));
        }
        if r.phase.is_end() || r.held.is_some() {
            if detected.is_none() {
                detected = Some(Instant::now());
                outcome = r.outcome.clone().or(r.held.clone()).unwrap_or_default();
                gate_reason = r.last_gate.map(|g| g.reason).unwrap_or_default();
                if activated.is_none() {
                    activated = Some((Instant::now(), load.snapshot()));
                }
            }
            if r.phase != Phase::RolledBack {
                break;
            }
            let back = fleet
                .iter()
                .all(|e| e.report.applied_version == Some(current.version));
            if back {
                end = Some((Instant::now(), load.snapshot()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finish = end
        .clone()
        .unwrap_or_else(|| (Instant::now(), load.snapshot()));
    drop(load);
    let (t_act, at_act) = activated.unwrap_or_else(|| (started, warm.clone()));
    let all: BTreeSet<String> = cell_of.keys().cloned().collect();
    let untouched: BTreeSet<String> = all.difference(&took).cloned().collect();
    let window = |ids: &BTreeSet<String>| {
        let (ok1, f1) = sum(&finish.1, ids);
        let (ok0, f0) = sum(&at_act, ids);
        (ok1 + f1 - ok0 - f0, f1 - f0)
    };
    let (total_n, total_f) = window(&all);
    let (canary_n, _) = window(&took);
    let (_, untouched_f) = window(&untouched);
    let (_, warm_f) = sum(&warm, &all);
    let detect_s = detected.map(|d| d.saturating_duration_since(t_act).as_secs_f64());
    let back_s = match (detected, &end) {
        (Some(d), Some((e, _))) => Some(e.saturating_duration_since(d).as_secs_f64()),
        _ => None,
    };
    let share = |f: u64, n: u64| if n == 0 { 0.0 } else { f as f64 / n as f64 };
    let fleet_failed = share(total_f, total_n);
    let canary_share = share(canary_n, total_n);
    let mut report = String::new();
    let mut line = |s: String| {
        out!("{s}");
        report.push_str(&s);
        report.push('\n');
    };
    line(format!("## Drill: {what}"));
    line(String::new());
    line(format!("- outcome: {outcome}"));
    if !gate_reason.is_empty() {
        line(format!("- gate: {gate_reason}"));
    }
    line(format!(
        "- edges the version was sent to: version {}: {} of {} ({})",
        info.version,
        took.len(),
        all.len(),
        took.iter().cloned().collect::<Vec<_>>().join(", ")
    ));
    line(format!(
        "- time to detect after the canary activated: {} (target ≤ 30 s)",
        detect_s.map_or("not detected".into(), |s| format!("{s:.1} s"))
    ));
    line(format!(
        "- time until every edge was back on version {}: {} (target ≤ 60 s)",
        current.version,
        back_s.map_or("never".into(), |s| format!("{s:.1} s"))
    ));
    line(format!(
        "- drill window: {total_n} requests, {total_f} failed = {:.2}% fleet-wide; the canary's share of traffic {:.1}% (target: failed share ≤ canary share)",
        100.0 * fleet_failed,
        100.0 * canary_share
    ));
    line(format!(
        "- failed requests on edges that never took the version: {untouched_f} (target 0); failures during warm-up: {warm_f}"
    ));
    line(String::new());
    line("| cell | edges | took it | requests | failed | failed share |".into());
    line("|---|---|---|---|---|---|".into());
    let cells: BTreeSet<&String> = cell_of.values().collect();
    for cell in cells {
        let ids: BTreeSet<String> = cell_of
            .iter()
            .filter(|(_, c)| *c == cell)
            .map(|(id, _)| id.clone())
            .collect();
        let (n, f) = window(&ids);
        line(format!(
            "| {cell} | {} | {} | {n} | {f} | {:.2}% |",
            ids.len(),
            ids.intersection(&took).count(),
            100.0 * share(f, n)
        ));
    }
    let met = outcome.starts_with("rolled back")
        && detect_s.is_some_and(|s| s <= 30.0)
        && back_s.is_some_and(|s| s <= 60.0)
        && untouched_f == 0
        && fleet_failed <= canary_share;
    line(String::new());
    line(format!("targets {}", if met { "met" } else { "NOT met" }));
    if let Some(path) = out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| refused(format!("{}: {e}", path.display())))?;
        let _ = writeln!(f, "{report}");
    }
    if met {
        Ok(())
    } else {
        Err(refused("the drill's targets were not met"))
    }
}
