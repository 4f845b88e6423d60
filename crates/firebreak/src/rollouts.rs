//! Rollout commands: `deploy` (follows the rollout live), `rollout status|pause|resume|abort`,
//! `rollback`, `switch`, `audit`.

use crate::api_client::{exit, Api, Failed};
use firebreak_control::rollout::gate::{GateReport, Verdict};
use firebreak_control::rollout::state::{AuditEntry, Phase, Rollout};
use firebreak_control::rollout::RolloutView;
use firebreak_protocol::api::{ActionRequest, DeployRequest, RollbackRequest, SwitchRequest};
use http::Method;
use std::io::IsTerminal;
use std::time::Duration;

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Failed> {
    serde_json::to_vec(v).map_err(|e| Failed::new(exit::REFUSED, e.to_string()))
}

fn phase_name(r: &Rollout) -> String {
    let base = match r.phase {
        Phase::Staging => "staging".to_owned(),
        Phase::Wave => format!("wave {}/{}", r.wave + 1, r.waves()),
        Phase::Complete => "complete".into(),
        Phase::RolledBack => "rolled back".into(),
        Phase::StageFailed => "stopped at stage".into(),
        Phase::Superseded => "superseded".into(),
    };
    if r.paused {
        format!("{base} (paused)")
    } else if let Some(h) = &r.held {
        format!("{base} (held: {h})")
    } else {
        base
    }
}

fn gate_lines(g: &GateReport) -> Vec<String> {
    let mut out = vec![format!(
        "gate: {} — {} (wave {} requests, baseline {}, z critical {:.2})",
        match g.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Wait => "waiting",
        },
        g.reason,
        g.wave_requests,
        g.baseline_requests,
        g.z_critical
    )];
    for c in g.checks.iter().filter(|c| c.scope == "total" || c.failed) {
        out.push(format!(
            "  {:<20} {:<13} wave {:>9.4}  baseline {:>9}  threshold {:>9.4}  z {:>7}{}",
            c.scope,
            c.metric,
            c.wave,
            c.baseline.map_or("-".into(), |b| format!("{b:.4}")),
            c.threshold,
            c.z.map_or("-".into(), |z| format!("{z:.2}")),
            if c.failed { "  FAILED" } else { "" }
        ));
    }
    out
}

fn cell_lines(view: &RolloutView, version: u64) -> Vec<String> {
    view.cells
        .iter()
        .map(|c| {
            let on = c
                .edges
                .iter()
                .filter(|e| e.applied == Some(version))
                .count();
            format!(
                "  cell {:<10} target {:>5}  {}/{} edges on {version}",
                c.cell,
                c.target.map_or("-".into(), |t| t.to_string()),
                on,
                c.edges.len()
            )
        })
        .collect()
}

/// Prints the current or last rollout.
fn print_view(view: &RolloutView) {
    match &view.rollout {
        None => out!("no rollout yet"),
        Some(r) => {
            out!(
                "rollout {}: version {} (from {}) on plan `{}` by {}: {}",
                r.id,
                r.version,
                r.from.map_or("nothing".into(), |f| f.to_string()),
                r.plan.name,
                r.by,
                phase_name(r)
            );
            if let Some(o) = &r.outcome {
                out!("outcome: {o}");
            }
            for l in cell_lines(view, r.version) {
                out!("{l}");
            }
            if !r.excluded.is_empty() {
                out!("left out: {}", r.excluded.join("; "));
            }
            if let Some(g) = &view.gate {
                for l in gate_lines(g) {
                    out!("{l}");
                }
            }
        }
    }
    out!(
        "fleet version: {}",
        view.fleet_version.map_or("none".into(), |v| v.to_string())
    );
}

/// `rollout status`.
pub async fn status(api: &Api) -> Result<(), Failed> {
    let view: RolloutView = api.json(Method::GET, "/v1/rollout", None).await?;
    print_view(&view);
    Ok(())
}

/// `rollout pause|resume|abort`.
pub async fn action(api: &Api, action: &str, message: &str) -> Result<(), Failed> {
    let req = ActionRequest {
        message: message.to_owned(),
    };
    let r: Rollout = api
        .json(
            Method::POST,
            &format!("/v1/rollout/{action}"),
            Some(to_json(&req)?),
        )
        .await?;
    out!("rollout {}: {}", r.id, phase_name(&r));
    if let Some(o) = &r.outcome {
        out!("outcome: {o}");
    }
    Ok(())
}

/// `rollback [VERSION]`.
pub async fn rollback(api: &Api, version: Option<u64>, message: &str) -> Result<(), Failed> {
    let req = RollbackRequest {
        version,
        message: message.to_owned(),
    };
    let t: firebreak_control::store::StoredTarget = api
        .json(Method::POST, "/v1/rollback", Some(to_json(&req)?))
        .await?;
    out!(
        "fleet rolled back to version {} (seq {}); edges report as they apply it (`firebreak fleet`)",
        t.version, t.seq
    );
    Ok(())
}

/// `audit`.
pub async fn audit(api: &Api, limit: usize) -> Result<(), Failed> {
    let list: Vec<AuditEntry> = api
        .json(Method::GET, &format!("/v1/audit?limit={limit}"), None)
        .await?;
    for e in list {
        out!(
            "{}  {:<12} {:<13} v{:<5} {}",
            crate::ops::time(e.at_ms),
            e.who,
            e.action,
            e.version.map_or("-".into(), |v| v.to_string()),
            e.message
        );
        if let Some(g) = &e.gate {
            for l in gate_lines(g).iter().skip(1) {
                out!("{l}");
            }
        }
    }
    Ok(())
}

/// `deploy VERSION [--plan P] [-m why]`: starts the rollout and follows it until it ends.
pub async fn deploy(
    api: &Api,
    version: u64,
    plan: Option<String>,
    message: &str,
) -> Result<(), Failed> {
    let req = DeployRequest {
        version,
        plan,
        message: message.to_owned(),
    };
    let r: Rollout = api
        .json(Method::POST, "/v1/rollouts", Some(to_json(&req)?))
        .await?;
    out!(
        "rollout {} of version {} on plan `{}` ({} waves): staging on every edge",
        r.id,
        r.version,
        r.plan.name,
        r.plan.waves.len()
    );
    follow(api, r.id).await
}

/// `switch NAME on|off`.
pub async fn switch(api: &Api, name: &str, on: bool, message: &str) -> Result<(), Failed> {
    let req = SwitchRequest {
        on,
        message: message.to_owned(),
    };
    let r: Rollout = api
        .json(
            Method::POST,
            &format!("/v1/switches/{name}"),
            Some(to_json(&req)?),
        )
        .await?;
    out!(
        "kill switch {name} {}: version {} rolling out on plan `{}`",
        if on { "on" } else { "off" },
        r.version,
        r.plan.name
    );
    follow(api, r.id).await
}

/// Follows rollout `id` until it ends: exit 0 when complete, 1 when it rolled back or
/// stopped; a held rollout is reported and left to the operator (exit 1).
pub async fn follow(api: &Api, id: u64) -> Result<(), Failed> {
    let tty = std::io::stdout().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let mut last_line = String::new();
    loop {
        let view: RolloutView = api.json(Method::GET, "/v1/rollout", None).await?;
        let Some(r) = view.rollout.as_ref().filter(|r| r.id == id) else {
            return Err(Failed::new(
                exit::REFUSED,
                format!("rollout {id} was replaced"),
            ));
        };
        let on: usize = view
            .cells
            .iter()
            .flat_map(|c| &c.edges)
            .filter(|e| e.applied == Some(r.version))
            .count();
        let total: usize = view.cells.iter().map(|c| c.edges.len()).sum();
        let gate = view
            .gate
            .as_ref()
            .map(|g| format!(" | gate {:?}: {}", g.verdict, g.reason))
            .unwrap_or_default();
        let line = format!(
            "{} | {on}/{total} edges on {}{gate}",
            phase_name(r),
            r.version
        );
        match &bar {
            Some(b) => {
                b.set_message(line.clone());
                if r.phase == Phase::Wave && !last_line.starts_with(&phase_name(r)) {
                    b.println(format!("{} started", phase_name(r)));
                }
            }
            None if line != last_line => out!("{line}"),
            None => {}
        }
        last_line = line;
        if r.phase.is_end() || r.held.is_some() {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            print_view(&view);
            return match r.phase {
                Phase::Complete => Ok(()),
                _ => Err(Failed::new(
                    exit::REFUSED,
                    r.outcome
                        .clone()
                        .or(r.held.clone())
                        .unwrap_or_else(|| "rollout did not complete".into()),
                )),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
