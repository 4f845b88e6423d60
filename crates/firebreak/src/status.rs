//! `firebreak incident open|update|list` (through the API, or straight into a status export
//! directory with `--export-dir` when the control plane is down) and `firebreak status export
//! DIR [--watch]` (the public status page as static files, see
//! `firebreak_control::status::export`).

use crate::api_client::{exit, Api, Failed};
use firebreak_control::status::export::{self, Exporter, MAX_SNAPSHOT_BYTES};
use firebreak_control::status::{
    Impact, Incident, IncidentBook, IncidentState, NewIncident, NewUpdate, StatusSnapshot,
};
use http::Method;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `firebreak incident …`.
#[derive(clap::Subcommand)]
pub(crate) enum IncidentCommand {
    /// Open an incident (it shows on the status page at once).
    Open {
        /// One line, shown to the public.
        #[arg(long)]
        title: String,
        /// Affected component: `pop/NAME`, `dns`, `control-plane` or `api` (repeat for more).
        #[arg(long = "component", required = true)]
        components: Vec<String>,
        /// The first update's text (default: the title).
        #[arg(long, default_value = "")]
        text: String,
        /// investigating, identified, monitoring or resolved.
        #[arg(long, default_value = "investigating", value_parser = parse_state)]
        state: IncidentState,
        /// How badly the components are hurt: degraded or outage.
        #[arg(long, default_value = "degraded", value_parser = parse_impact)]
        impact: Impact,
        #[command(flatten)]
        offline: Offline,
    },
    /// Add an update to an incident; `--state resolved` closes it.
    Update {
        /// The incident's id.
        id: u64,
        /// What happened.
        #[arg(long)]
        text: String,
        /// The state from now on (default: unchanged).
        #[arg(long, value_parser = parse_state)]
        state: Option<IncidentState>,
        #[command(flatten)]
        offline: Offline,
    },
    /// List incidents, newest first.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        offline: Offline,
    },
}

/// Writing without a control plane.
#[derive(clap::Args)]
pub(crate) struct Offline {
    /// Write straight into this status export directory (its `incidents.json`) and render it
    /// again, without the control plane: for when the control plane itself is down.
    #[arg(long)]
    export_dir: Option<PathBuf>,
    /// Who writes, with `--export-dir` (through the API, the operator's name is used).
    #[arg(long, default_value = "operator", requires = "export_dir")]
    by: String,
}

/// `firebreak status …`.
#[derive(clap::Subcommand)]
pub(crate) enum StatusCommand {
    /// Write the status page as static files (`index.html`, `feed.atom`, `incidents.json`)
    /// into DIR, from the control plane's `/status/incidents.json`.
    Export {
        /// The directory (created if missing).
        dir: PathBuf,
        /// Keep going: write again whenever the page changes, and at least every minute so
        /// that its "last updated" shows it is alive.
        #[arg(long)]
        watch: bool,
        /// How often `--watch` asks the control plane, in seconds.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval_s: u64,
    },
}

fn parse_state(s: &str) -> Result<IncidentState, String> {
    IncidentState::parse(s)
        .ok_or_else(|| "investigating, identified, monitoring or resolved".to_owned())
}

fn parse_impact(s: &str) -> Result<Impact, String> {
    Impact::parse(s).ok_or_else(|| "degraded or outage".to_owned())
}

fn refused(e: impl std::fmt::Display) -> Failed {
    Failed::new(exit::REFUSED, e.to_string())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Failed> {
    serde_json::to_vec(v).map_err(refused)
}

/// Runs an incident command: through the API at `api`, or offline.
pub(crate) async fn incident(api: &crate::ApiArgs, command: IncidentCommand) -> Result<(), Failed> {
    match command {
        IncidentCommand::Open {
            title,
            components,
            text,
            state,
            impact,
            offline,
        } => {
            let new = NewIncident {
                title,
                components,
                text,
                state: Some(state),
                impact,
            };
            let opened: Incident = match offline.export_dir {
                Some(dir) => blocking(move || export::open_offline(&dir, new, &offline.by)).await?,
                None => {
                    api.api()?
                        .json(Method::POST, "/v1/incidents", Some(to_json(&new)?))
                        .await?
                }
            };
            out!("incident {} opened: {}", opened.id, opened.title);
            Ok(())
        }
        IncidentCommand::Update {
            id,
            text,
            state,
            offline,
        } => {
            let update = NewUpdate { text, state };
            let changed: Incident = match offline.export_dir {
                Some(dir) => {
                    blocking(move || export::update_offline(&dir, id, update, &offline.by)).await?
                }
                None => {
                    api.api()?
                        .json(
                            Method::POST,
                            &format!("/v1/incidents/{id}/updates"),
                            Some(to_json(&update)?),
                        )
                        .await?
                }
            };
            out!(
                "incident {} is {}: {}",
                changed.id,
                changed.state,
                changed.title
            );
            Ok(())
        }
        IncidentCommand::List { json, offline } => {
            let book: IncidentBook = match offline.export_dir {
                Some(dir) => blocking(move || export::read(&dir))
                    .await?
                    .map(|s| s.incidents)
                    .unwrap_or_default(),
                None => api.api()?.json(Method::GET, "/v1/incidents", None).await?,
            };
            if json {
                out!("{}", serde_json::to_string_pretty(&book).map_err(refused)?);
                return Ok(());
            }
            for i in book.incidents.iter().rev() {
                out!(
                    "{:>4}  {:<13} {}  {:<30} {}{}",
                    i.id,
                    i.state,
                    crate::ops::time(i.opened_ms),
                    i.components.join(","),
                    i.title,
                    if i.automatic.is_some() {
                        "  (automatic)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, export::ExportError> + Send + 'static,
) -> Result<T, Failed> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(refused)?
        .map_err(refused)
}

/// The status data from the control plane (public: no token needed).
async fn fetch(api: &Api) -> Result<StatusSnapshot, Failed> {
    let limit = usize::try_from(MAX_SNAPSHOT_BYTES).unwrap_or(usize::MAX);
    let bytes = api
        .call_limited(Method::GET, "/status/incidents.json", limit)
        .await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Failed::new(exit::UNAVAILABLE, format!("unexpected answer: {e}")))
}

/// `firebreak status export DIR [--watch]`.
pub(crate) async fn status(api: &crate::ApiArgs, command: StatusCommand) -> Result<(), Failed> {
    let StatusCommand::Export {
        dir,
        watch,
        interval_s,
    } = command;
    let api = api.api()?;
    let mut exporter = Exporter::default();
    if !watch {
        let snapshot = fetch(&api).await?;
        write(&dir, &mut exporter, snapshot).await?;
        out!("status page written to {}", dir.display());
        return Ok(());
    }
    let interval = Duration::from_secs(interval_s);
    loop {
        // A control plane that cannot be reached leaves the page as it was: its "last
        // updated" then ages, which is how readers tell it stopped updating.
        match fetch(&api).await {
            Ok(snapshot) => match write(&dir, &mut exporter, snapshot).await {
                Ok(true) => out!("status page written to {}", dir.display()),
                Ok(false) => {}
                Err(e) => eprintln!("error: {}", e.message),
            },
            Err(e) => eprintln!("error: {}", e.message),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn write(dir: &Path, exporter: &mut Exporter, s: StatusSnapshot) -> Result<bool, Failed> {
    let dir = dir.to_owned();
    let mut taken = std::mem::take(exporter);
    let (wrote, back) = tokio::task::spawn_blocking(move || {
        let r = taken.offer(&dir, &s);
        (r, taken)
    })
    .await
    .map_err(refused)?;
    *exporter = back;
    wrote.map_err(refused)
}
