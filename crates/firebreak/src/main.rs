//! `firebreak`: one CLI for the edge cloud.
#![cfg_attr(test, allow(clippy::indexing_slicing))]

use api_client::{exit, Api, Failed};
use clap::{Parser, Subcommand};
use firebreak_config::{load_file, parse_str, ValidConfig};
use firebreak_control::{Plane, Store, Tokens};
use firebreak_edge::agent::{Agent, AgentOptions};
use firebreak_edge::EdgeServer;
use firebreak_protocol::api::PurgeRequest;
use firebreak_protocol::keys::{ControlKey, PublicKey};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

mod api_client;
mod demo_origin;
mod drill;
mod load;
mod ops;
mod rollouts;
mod up;

/// How long Ctrl-C waits for in-flight requests before exiting.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Parser)]
#[command(name = "firebreak", version, about = "Firebreak edge cloud")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the client commands find the control plane.
#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// Control plane URL.
    #[arg(
        long = "control",
        env = "FIREBREAK_CONTROL",
        default_value = "http://127.0.0.1:7000",
        global = true
    )]
    control: String,
    /// Operator bearer token.
    #[arg(
        long = "token",
        env = "FIREBREAK_TOKEN",
        default_value = "",
        hide_env_values = true,
        global = true
    )]
    token: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole local network on 127.0.0.1: the control plane, three POPs of two edges
    /// each (separate processes, one cell per POP), and the demo origin, with the example
    /// configuration rolled out through the control plane. Ctrl-C stops everything.
    Up {
        /// First edge port; see the printed map for the rest.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Where control plane and edges keep their data (default: a new temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the control plane.
    #[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
    Control {
        /// Back up or restore the store instead of running.
        #[command(subcommand)]
        action: Option<ControlAction>,
        /// API address.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// Data directory (the embedded store and the signing key live here).
        #[arg(long, required = true)]
        data_dir: Option<PathBuf>,
        /// Store: `redb` (embedded, in the data directory) or `etcd://host:port[,host:port]`.
        #[arg(long, default_value = "redb")]
        store: String,
        /// Signing key file (created if missing); default `DATA_DIR/control.key`. Replicas
        /// sharing an etcd store must share the key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Operator bearer token (at least 16 characters).
        #[arg(long, env = "FIREBREAK_TOKEN", hide_env_values = true, required = true)]
        token: Option<String>,
        /// Edges' bearer token (at least 16 characters).
        #[arg(
            long,
            env = "FIREBREAK_EDGE_TOKEN",
            hide_env_values = true,
            required = true
        )]
        edge_token: Option<String>,
    },
    /// Run an edge: under a control plane (`--control`), from a configuration file
    /// (`--config`, SIGHUP reloads it), or in front of one origin (`--origin`).
    Edge(EdgeArgs),
    /// Run the demo origin alone.
    Origin {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
    },
    /// Configuration: validate locally, push, list, show, diff, set the target.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The fleet as the control plane sees it.
    Fleet {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Roll a version out: staged on every edge, then wave by wave, each judged by the
    /// health gate; follows it live. Exit 0 when complete, 1 when rolled back or held.
    Deploy {
        /// The version.
        version: u64,
        /// The plan (from the fleet's current version; default `default`).
        #[arg(long)]
        plan: Option<String>,
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The running (or last) rollout: status, pause, resume, abort.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Roll the whole fleet back at once to a version it ran (default: the one before).
    Rollback {
        /// The version.
        version: Option<u64>,
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Flip a kill switch (`[[switch]]` in the fleet settings): a new version rolled out on
    /// the emergency plan, staged and gated.
    Switch {
        /// The switch.
        name: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The outage drill, against a running fleet (`firebreak up`): push a version that breaks
    /// one service, roll it out under a steady load, and report time to detect, time until
    /// every edge is back, and the failed requests per cell. Exit 0 when every target is met.
    Drill {
        /// How to break the version.
        #[arg(long, value_enum, default_value = "closed-origin")]
        fault: drill::Breakage,
        /// The service to break (default: the default service).
        #[arg(long)]
        service: Option<String>,
        /// Requests per second and edge.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Append the report (markdown) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The audit log: every rollout action and gate decision.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Purge from every edge: a URL, a surrogate key, or everything of a service.
    Purge {
        /// Full URL, `http://host/path?query`.
        #[arg(required_unless_present_any = ["key", "all"], conflicts_with_all = ["key", "all"])]
        url: Option<String>,
        /// Surrogate key (with --service).
        #[arg(long, requires = "service", conflicts_with = "all")]
        key: Option<String>,
        /// Everything of the service (with --service).
        #[arg(long, requires = "service")]
        all: bool,
        /// The service.
        #[arg(long)]
        service: Option<String>,
        /// Mark stale (revalidate next time) instead of removing.
        #[arg(long)]
        soft: bool,
        /// How long to wait for the edges, in ms.
        #[arg(long, default_value_t = 2000)]
        deadline_ms: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Args)]
struct EdgeArgs {
    /// Configuration file (TOML), for an edge without a control plane.
    #[arg(long, conflicts_with_all = ["origin", "control"])]
    config: Option<PathBuf>,
    /// Origin `host:port` for a one-origin edge without a file.
    #[arg(long, conflicts_with = "control")]
    origin: Option<String>,
    /// Cache size of the one-origin edge, in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mib: u64,
    /// Control plane URL: the edge takes its configuration from there.
    #[arg(long)]
    control: Option<String>,
    /// Edges' bearer token for the control plane.
    #[arg(
        long,
        env = "FIREBREAK_EDGE_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
    /// The control plane's public key (`ed25519:...`) or a file holding it.
    #[arg(long, requires = "control")]
    trust: Option<String>,
    /// POP (site) name.
    #[arg(long, default_value = "local")]
    pop: String,
    /// Cell (rollout group) name.
    #[arg(long, default_value = "main")]
    cell: String,
    /// Edge id (default: POP-CELL-PORT).
    #[arg(long)]
    id: Option<String>,
    /// Where the last good versions are kept.
    #[arg(long, requires = "control")]
    data_dir: Option<PathBuf>,
    /// Versions kept on disk.
    #[arg(long, default_value_t = 5)]
    keep: usize,
    /// Client listener(s), for `--control` and `--origin` edges.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Admin listener, for `--control` edges.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Heartbeat to the control plane, in ms.
    #[arg(long, default_value_t = 10_000)]
    heartbeat_ms: u64,
    /// How often health counts go to the control plane (what rollout gates judge), in ms.
    #[arg(long, default_value_t = 5_000)]
    health_interval_ms: u64,
    /// Safe mode: crashes of one version that make the edge boot the previous one instead.
    #[arg(long, default_value_t = 3)]
    safe_mode_crashes: u32,
    /// Safe mode: the window those crashes must fall in, in seconds.
    #[arg(long, default_value_t = 300)]
    safe_mode_window_s: u64,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Where the rollout is: waves, cells, the gate's numbers.
    Status,
    /// Stop where it is.
    Pause {
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Go on (a held rollout too); the current wave bakes again.
    Resume {
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Stop and roll back every edge that took the version.
    Abort {
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a file locally; exit 0 if valid, 1 with located errors if not. A file with
    /// `[[listener]]` is checked as a standalone edge's file, otherwise as a fleet document
    /// (what `push` sends).
    Validate {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Submit a file as the next version (validated by the control plane the same way).
    Push {
        /// Configuration file (TOML).
        file: PathBuf,
        /// Why.
        #[arg(short, long)]
        message: String,
        /// Also make it the fleet's target.
        #[arg(long)]
        activate: bool,
        /// Further attempts when the control plane is unreachable or answers 5xx (each with
        /// the same idempotency key, so at most one version is stored).
        #[arg(long, default_value_t = 4)]
        retries: u32,
    },
    /// List versions, newest first (`*` marks the target).
    Versions {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Print one version's configuration.
    Show {
        /// Version.
        version: u64,
    },
    /// Unified diff between two versions.
    Diff {
        /// From.
        a: u64,
        /// To.
        b: u64,
    },
    /// Show the target, or set it (`--rollback` to go back to an older version).
    Target {
        /// Version to run.
        version: Option<u64>,
        /// Allow going back to an older version.
        #[arg(long)]
        rollback: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::Config {
        command: ConfigCommand::Validate { file },
        ..
    } = &cli.command
    {
        return validate(file);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    let standalone = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("listener"));
    let result = if standalone {
        load_file(file)
    } else {
        firebreak_config::load_file_as(file, firebreak_config::Mode::Managed)
    };
    match result {
        Ok(_) => {
            let kind = if standalone {
                "standalone edge file"
            } else {
                "fleet document"
            };
            println!("{}: ok ({kind})", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `firebreak control backup|restore`.
#[derive(Subcommand)]
pub enum ControlAction {
    /// Write a consistent backup of the store to FILE: from a running control plane
    /// (`--control`, `POST /v1/backup`) or from the store itself (`--store`; a redb file must
    /// not be open in a running control plane; etcd: one consistent range read).
    Backup {
        /// The store: `redb:PATH` or `etcd://host:port[,…]`.
        #[arg(long, conflicts_with = "control")]
        store: Option<String>,
        /// A running control plane's URL.
        #[arg(long)]
        control: Option<String>,
        /// Operator bearer token (with `--control`).
        #[arg(
            long,
            env = "FIREBREAK_TOKEN",
            hide_env_values = true,
            default_value = ""
        )]
        token: String,
        /// Where to write the backup (JSON).
        file: PathBuf,
    },
    /// Restore a backup into an empty store (the control plane stopped, for redb); the fleet
    /// state gets a new epoch so edges tell the restored history from a replay.
    Restore {
        /// The store: `redb:PATH` or `etcd://host:port[,…]`.
        #[arg(long)]
        store: String,
        /// The backup file.
        file: PathBuf,
    },
}

fn fail(message: impl Into<String>) -> Failed {
    Failed::new(exit::REFUSED, message)
}

async fn run(command: Command) -> Result<(), Failed> {
    match command {
        Command::Up { port, data_dir } => up::run(port, data_dir).await.map_err(fail),
        Command::Control {
            action: Some(action),
            ..
        } => ops::control_action(action).await,
        Command::Control {
            action: None,
            listen,
            data_dir,
            store,
            key,
            token,
            edge_token,
        } => match (data_dir, token, edge_token) {
            (Some(data_dir), Some(token), Some(edge_token)) => {
                control(listen, data_dir, store, key, token, edge_token)
                    .await
                    .map_err(fail)
            }
            _ => Err(fail("--data-dir, --token and --edge-token are required")),
        },
        Command::Edge(args) => edge(args).await.map_err(fail),
        Command::Origin { listen } => {
            let origin = demo_origin::start(listen)
                .await
                .map_err(|e| fail(e.to_string()))?;
            println!("demo origin listening on http://{}", origin.addr);
            wait_for_ctrl_c().await;
            Ok(())
        }
        Command::Config { command, api } => {
            let api = Api::new(&api.control, &api.token);
            match command {
                ConfigCommand::Validate { .. } => Ok(()),
                ConfigCommand::Push {
                    file,
                    message,
                    activate,
                    retries,
                } => ops::push(&api, &file, &message, activate, retries).await,
                ConfigCommand::Versions { limit } => ops::versions(&api, limit).await,
                ConfigCommand::Show { version } => ops::show(&api, version).await,
                ConfigCommand::Diff { a, b } => ops::diff(&api, a, b).await,
                ConfigCommand::Target { version, rollback } => {
                    ops::target(&api, version, rollback).await
                }
            }
        }
        Command::Fleet { json, api } => ops::fleet(&Api::new(&api.control, &api.token), json).await,
        Command::Deploy {
            version,
            plan,
            message,
            api,
        } => rollouts::deploy(&Api::new(&api.control, &api.token), version, plan, &message).await,
        Command::Rollout { command, api } => {
            let api = Api::new(&api.control, &api.token);
            match command {
                RolloutCommand::Status => rollouts::status(&api).await,
                RolloutCommand::Pause { message } => {
                    rollouts::action(&api, "pause", &message).await
                }
                RolloutCommand::Resume { message } => {
                    rollouts::action(&api, "resume", &message).await
                }
                RolloutCommand::Abort { message } => {
                    rollouts::action(&api, "abort", &message).await
                }
            }
        }
        Command::Rollback {
            version,
            message,
            api,
        } => rollouts::rollback(&Api::new(&api.control, &api.token), version, &message).await,
        Command::Switch {
            name,
            state,
            message,
            api,
        } => {
            rollouts::switch(
                &Api::new(&api.control, &api.token),
                &name,
                state == "on",
                &message,
            )
            .await
        }
        Command::Drill {
            fault,
            service,
            rate,
            out,
            api,
        } => {
            drill::run(
                &Api::new(&api.control, &api.token),
                fault,
                service,
                rate,
                out,
            )
            .await
        }
        Command::Audit { limit, api } => {
            rollouts::audit(&Api::new(&api.control, &api.token), limit).await
        }
        Command::Purge {
            url,
            key,
            all,
            service,
            soft,
            deadline_ms,
            api,
        } => {
            let req = PurgeRequest {
                url,
                key,
                all,
                service,
                soft,
                deadline_ms: Some(deadline_ms),
            };
            ops::purge(&Api::new(&api.control, &api.token), req).await
        }
    }
}

fn check_token(what: &str, token: &str) -> Result<(), String> {
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} must be at least 16 printable characters without spaces"
        ));
    }
    Ok(())
}

async fn control(
    listen: SocketAddr,
    data_dir: PathBuf,
    store: String,
    key: Option<PathBuf>,
    token: String,
    edge_token: String,
) -> Result<(), String> {
    check_token("--token", &token)?;
    check_token("--edge-token", &edge_token)?;
    let key_path = key.unwrap_or_else(|| data_dir.join("control.key"));
    let key = ControlKey::load_or_create(&key_path).map_err(|e| e.to_string())?;
    let public = key.public();
    let spec = if store == "redb" {
        format!("redb:{}", data_dir.join("control.redb").display())
    } else {
        store
    };
    let store = Store::open(&spec).await.map_err(|e| e.to_string())?;
    let plane = Plane::new(store, key).await.map_err(|e| e.to_string())?;
    let tokens = Tokens {
        operator: token,
        edge: edge_token,
    };
    let server = firebreak_control::serve(listen, plane, tokens)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let pub_path = data_dir.join("control.pub");
    if let Err(e) = std::fs::write(&pub_path, format!("{public}\n")) {
        tracing::warn!(error = %e, path = %pub_path.display(), "cannot write the public key file");
    }
    println!("control plane listening on http://{}", server.local_addr());
    println!("public key {public} (also in {})", pub_path.display());
    wait_for_ctrl_c().await;
    server.shutdown().await;
    Ok(())
}

async fn edge(args: EdgeArgs) -> Result<(), String> {
    if let Some(control) = args.control {
        let trust = args.trust.ok_or("--trust KEY is required with --control")?;
        let trust = PublicKey::from_arg(&trust).map_err(|e| e.to_string())?;
        let data_dir = args
            .data_dir
            .ok_or("--data-dir is required with --control")?;
        if args.listen.is_empty() {
            return Err("--listen ADDR is required with --control".into());
        }
        let port = args.listen.first().map(|a| a.port()).unwrap_or(0);
        let id = args
            .id
            .unwrap_or_else(|| format!("{}-{}-{port}", args.pop, args.cell));
        let agent = Agent::start(AgentOptions {
            control,
            token: args.token,
            id: id.clone(),
            pop: args.pop,
            cell: args.cell,
            data_dir,
            trust,
            listen: args.listen,
            admin: args.admin,
            keep: args.keep,
            heartbeat: std::time::Duration::from_millis(args.heartbeat_ms.max(100)),
            health_interval: std::time::Duration::from_millis(args.health_interval_ms.max(100)),
            safe_mode: firebreak_edge::agent::journal::SafeMode {
                crashes: args.safe_mode_crashes.max(1),
                window: std::time::Duration::from_secs(args.safe_mode_window_s.max(1)),
            },
        })
        .await
        .map_err(|e| e.to_string())?;
        for addr in agent.edge.local_addrs() {
            println!("edge {id} listening on http://{addr}");
        }
        if let Some(admin) = agent.edge.admin_addr() {
            println!("edge {id} admin on http://{admin}");
        }
        wait_for_ctrl_c().await;
        agent.shutdown();
        if !agent.edge.drain(DRAIN_LIMIT).await {
            tracing::warn!("some connections were still open after {DRAIN_LIMIT:?}");
        }
        return Ok(());
    }
    let valid = match (&args.config, args.origin) {
        (Some(path), _) => load_file(path).map_err(|e| e.to_string())?,
        (None, Some(origin)) => {
            one_origin_config(&origin, args.listen.first().copied(), args.cache_mib)?
        }
        (None, None) => {
            return Err("give --control URL, --config FILE or --origin HOST:PORT".into())
        }
    };
    let handle = Arc::new(EdgeServer::start(valid).await.map_err(|e| e.to_string())?);
    for addr in handle.local_addrs() {
        println!("edge listening on http://{addr}");
    }
    let _reloader = match args.config {
        Some(path) => Some(handle.reload_on_sighup(path).map_err(|e| e.to_string())?),
        None => None,
    };
    wait_for_ctrl_c().await;
    tracing::info!("draining connections (up to {DRAIN_LIMIT:?})");
    if !handle.drain(DRAIN_LIMIT).await {
        tracing::warn!("some connections were still open after {DRAIN_LIMIT:?}");
    }
    Ok(())
}

/// A configuration for one default service in front of one origin.
fn one_origin_config(
    origin: &str,
    listen: Option<SocketAddr>,
    cache_mib: u64,
) -> Result<ValidConfig, String> {
    let origin = origin.trim_start_matches("http://").trim_end_matches('/');
    if origin.contains(['"', '\\', '\n']) {
        return Err(format!("--origin {origin:?} is not host:port"));
    }
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let max_bytes = cache_mib.saturating_mul(1024 * 1024);
    let text = format!(
        "[[listener]]\naddr = \"{listen}\"\n\n[cache]\nmax_bytes = {max_bytes}\n\
         max_object_bytes = {}\n\n[[service]]\nname = \"default\"\ndefault = true\n\n\
         [service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n",
        (max_bytes / 4).max(1)
    );
    parse_str("command line", &text).map_err(|e| e.to_string())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, the signals operators and supervisors stop with.
pub(crate) async fn wait_for_ctrl_c() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handling available: run until killed.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn one_origin_config_is_validated() {
        let c = super::one_origin_config("http://127.0.0.1:9000/", None, 64).unwrap();
        assert_eq!(c.services[0].origin.servers[0].addr, "127.0.0.1:9000");
        assert_eq!(c.cache.max_bytes, 64 * 1024 * 1024);
        assert!(super::one_origin_config("no-port", None, 64).is_err());
        assert!(super::one_origin_config("a\"b:1", None, 64).is_err());
        assert!(super::one_origin_config("127.0.0.1:9000", None, 0).is_err());
    }
}
