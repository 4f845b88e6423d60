//! `firebreak`: one CLI for the edge cloud.
#![cfg_attr(test, allow(clippy::indexing_slicing))]

use api_client::{exit, Api, Failed};
use clap::{Parser, Subcommand};
use firebreak_config::{load_file, parse_str, ValidConfig};
use firebreak_control::{Plane, Store};
use firebreak_edge::agent::Agent;
use firebreak_edge::EdgeServer;
use firebreak_protocol::api::PurgeRequest;
use firebreak_protocol::keys::ControlKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[macro_use]
mod stdout;
mod api_client;
mod control_flags;
mod demo_origin;
mod dns;
mod dns_load;
mod dns_member;
mod drill;
mod keys;
mod load;
mod local_ca;
mod member_flags;
mod ops;
mod rollouts;
mod status;
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
pub(crate) struct ApiArgs {
    /// Control plane URL.
    #[arg(
        long = "control",
        env = "FIREBREAK_CONTROL",
        default_value = "http://127.0.0.1:7000",
        global = true
    )]
    pub(crate) control: String,
    /// Operator bearer token.
    #[arg(
        long = "token",
        env = "FIREBREAK_TOKEN",
        default_value = "",
        hide_env_values = true,
        global = true
    )]
    pub(crate) token: String,
    /// The fleet's CA bundle (PEM): an `https://` control plane is verified against it only
    /// (default: webpki-roots).
    #[arg(long = "ca", env = "FIREBREAK_CA", global = true)]
    pub(crate) ca: Option<PathBuf>,
}

impl ApiArgs {
    /// The client these arguments describe.
    pub(crate) fn api(&self) -> Result<Api, Failed> {
        Api::with_ca(&self.control, &self.token, self.ca.as_deref())
    }
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
    /// Run the control plane; or, with a subcommand, manage its signing keys or back up and
    /// restore its store.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Control {
        /// Signing keys (rotate, revoke, list); store backup and restore.
        #[command(subcommand)]
        command: Option<ControlCommand>,
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
        /// Admin bearer token (at least 16 characters): the operator named `operator`.
        /// Give this, `--operators`, or both.
        #[arg(long, env = "FIREBREAK_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Named operators with roles: a TOML file of `[[operator]] name, role (admin,
        /// deployer, read-only), token_sha256` (`firebreak hash-token` prints the hash).
        #[arg(long, env = "FIREBREAK_OPERATORS")]
        operators: Option<PathBuf>,
        /// The edges' join token (at least 16 characters): it lets an edge join once, which
        /// gives the edge its own credential; it can do nothing else.
        #[arg(
            long,
            visible_alias = "join-token",
            env = "FIREBREAK_EDGE_TOKEN",
            hide_env_values = true,
            required = true
        )]
        edge_token: Option<String>,
        /// Networks edges' admin addresses must be in (purges are sent there), comma-separated
        /// CIDR blocks.
        #[arg(long, default_value = "127.0.0.0/8,::1/128", value_delimiter = ',')]
        edge_networks: Vec<String>,
        /// Most edges that may join.
        #[arg(long, default_value_t = firebreak_control::registry::DEFAULT_MAX_EDGES)]
        max_edges: usize,
        /// Edges not seen for this many seconds are forgotten with their credential.
        #[arg(long, default_value_t = 24 * 3600)]
        edge_prune_s: u64,
        /// How long a rotated-out signing key keeps signing beside the new one (edges fetch
        /// the new key set meanwhile), in seconds; `rotate-key --overlap-s` overrides it.
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        key_overlap_s: u64,
        /// How long a signed target stays fresh, in seconds (at least 1). Edges with nothing
        /// applied refuse an older one (a replayed old target); serving edges report stale
        /// when they hold no fresher one. The plane signs each target afresh after half of it.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
        target_freshness_s: u64,
        /// Serve the API over HTTPS with this certificate chain (PEM, the server's certificate
        /// first; with `--tls-key`). Edges verify it against the fleet's CA (`--control-ca`),
        /// the CLI with `--ca`. Without it the API is cleartext HTTP.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of `--tls-cert`.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Also write the public status page as static files into this directory whenever it
        /// changes (and at least every minute), for hosting elsewhere (`firebreak status
        /// export` does the same from another machine).
        #[arg(long)]
        status_export: Option<PathBuf>,
        #[command(flatten)]
        api: control_flags::ApiFlags,
    },
    /// Print the SHA-256 of a token read from standard input, for `token_sha256` in an
    /// operators file or a fleet document's `[admin]`.
    HashToken,
    /// Run an edge: under a control plane (`--control`), from a configuration file
    /// (`--config`, SIGHUP reloads it), or in front of one origin (`--origin`).
    Edge(EdgeArgs),
    /// Run the authoritative DNS server from a fleet document's `[dns]` data (SIGHUP
    /// reloads it).
    Dns(dns::DnsArgs),
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
    /// The fleet as the control plane sees it; `fleet remove EDGE` forgets an edge.
    Fleet {
        #[command(subcommand)]
        command: Option<FleetCommand>,
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
    /// Incidents on the public status page: open, update (`--state resolved` closes), list;
    /// `--export-dir DIR` writes straight into a status export when the control plane is down.
    Incident {
        #[command(subcommand)]
        command: status::IncidentCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The public status page: `status export DIR [--watch]` writes it as static files.
    Status {
        #[command(subcommand)]
        command: status::StatusCommand,
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

#[derive(Subcommand)]
enum FleetCommand {
    /// Forget an edge and its credential (it must join again with the join token); audited.
    Remove {
        /// The edge id.
        edge: String,
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
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
    /// Disk tier directory of the one-origin edge (kept across restarts; one edge per
    /// directory). Fleet members set `[cache.disk]` in the fleet document instead.
    #[arg(long, requires = "origin")]
    disk_dir: Option<PathBuf>,
    /// Disk tier size of the one-origin edge, in MiB.
    #[arg(long, default_value_t = 1024, requires = "disk_dir")]
    disk_mib: u64,
    /// Bearer token of the one-origin edge's admin listener (`--admin`); a random one is
    /// printed when not given.
    #[arg(long, requires = "origin")]
    admin_token: Option<String>,
    /// Threads serving the one-origin edge's connections (`[limits] connection_workers`;
    /// 0: one per core).
    #[arg(long, default_value_t = 0, requires = "origin")]
    workers: usize,
    /// How the edge joins and follows a control plane (`--control URL`).
    #[command(flatten)]
    member: member_flags::MemberFlags,
    /// Client listener(s), for `--control` and `--origin` edges.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Client listener(s) terminating TLS (HTTPS, ALPN h2 and http/1.1), for `--control`
    /// edges: each service's certificate comes with its configuration. HTTP/3 is served on
    /// the same port over UDP unless the fleet document's `[http3]` turns it off.
    #[arg(long, requires = "control")]
    listen_tls: Vec<SocketAddr>,
    /// Admin listener (purge, metrics), for `--control` and `--origin` edges.
    #[arg(long)]
    admin: Option<SocketAddr>,
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
    /// Submit a file as the next version (validated by the control plane the same way). The
    /// MaxMind database its `dns.geoip_file` names (relative to the file) is sent with it.
    Push {
        /// Configuration file (TOML).
        file: PathBuf,
        /// Why.
        #[arg(short, long)]
        message: String,
        /// Also make it the fleet's target.
        #[arg(long)]
        activate: bool,
        /// Store it even if its DNS data removes more than `dns.max_removed_share` of the POPs
        /// or answer addresses of the latest version (refused otherwise); the audit log records
        /// the forced push and what it overrode.
        #[arg(long)]
        force: bool,
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

/// jemalloc, not glibc's malloc (ARCHITECTURE.md, "Allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        Ok(valid) if !certificates_valid_now(file, &valid) => ExitCode::FAILURE,
        Ok(_) => {
            let kind = if standalone {
                "standalone edge file"
            } else {
                "fleet document"
            };
            out!("{}: ok ({kind})", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Expired certificates refuse the file (an edge loading it would only warn); certificates not
/// yet valid are a warning. Each is printed `file:line:column: field: message`.
fn certificates_valid_now(file: &std::path::Path, valid: &ValidConfig) -> bool {
    use firebreak_config::tls::{check_validity, Severity};
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let name = file.display().to_string();
    let mut ok = true;
    for p in check_validity(valid, std::time::SystemTime::now()) {
        let located = p.located(&name, &text);
        match p.severity {
            Severity::Error => {
                ok = false;
                eprintln!("{located}");
            }
            Severity::Warning => eprintln!("warning: {located}"),
        }
    }
    ok
}

/// `firebreak control SUBCOMMAND`.
#[derive(Subcommand)]
enum ControlCommand {
    /// Signing keys.
    #[command(flatten)]
    Keys(keys::KeyCommand),
    /// The store.
    #[command(flatten)]
    Store(ControlAction),
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
        /// The fleet's CA bundle (PEM) for an `https://` control plane (with `--control`).
        #[arg(long, env = "FIREBREAK_CA")]
        ca: Option<PathBuf>,
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
            command: Some(ControlCommand::Keys(command)),
            ..
        } => keys::run(command).await,
        Command::Control {
            command: Some(ControlCommand::Store(action)),
            ..
        } => ops::control_action(action).await,
        Command::Control {
            command: None,
            listen,
            data_dir,
            store,
            key,
            token,
            operators,
            edge_token,
            edge_networks,
            max_edges,
            edge_prune_s,
            key_overlap_s,
            target_freshness_s,
            tls_cert,
            tls_key,
            status_export,
            api,
        } => {
            let (Some(data_dir), Some(edge_token)) = (data_dir, edge_token) else {
                return Err(Failed::new(
                    exit::USAGE,
                    "--data-dir and --edge-token (--join-token) are required to run the control plane",
                ));
            };
            let access = access(token, operators, &edge_token).map_err(fail)?;
            let edges = edge_settings(&edge_networks, max_edges, edge_prune_s).map_err(fail)?;
            control(
                listen,
                (data_dir, store, key),
                (access, edges),
                key_overlap_s,
                std::time::Duration::from_secs(target_freshness_s),
                (api, tls_cert.zip(tls_key)),
                status_export,
            )
            .await
            .map_err(fail)
        }
        Command::HashToken => hash_token().map_err(fail),
        Command::Edge(args) => edge(args).await.map_err(fail),
        Command::Dns(args) => dns::run(args).await.map_err(fail),
        Command::Origin { listen } => {
            let origin = demo_origin::start(listen)
                .await
                .map_err(|e| fail(e.to_string()))?;
            out!("demo origin listening on http://{}", origin.addr);
            wait_for_ctrl_c().await;
            Ok(())
        }
        Command::Config { command, api } => {
            let api = api.api()?;
            match command {
                ConfigCommand::Validate { .. } => Ok(()),
                ConfigCommand::Push {
                    file,
                    message,
                    activate,
                    force,
                    retries,
                } => {
                    let options = ops::PushOptions {
                        activate,
                        force,
                        retries,
                    };
                    ops::push_with(&api, &file, &message, options).await
                }
                ConfigCommand::Versions { limit } => ops::versions(&api, limit).await,
                ConfigCommand::Show { version } => ops::show(&api, version).await,
                ConfigCommand::Diff { a, b } => ops::diff(&api, a, b).await,
                ConfigCommand::Target { version, rollback } => {
                    ops::target(&api, version, rollback).await
                }
            }
        }
        Command::Fleet { command, json, api } => {
            let api = api.api()?;
            match command {
                None => ops::fleet(&api, json).await,
                Some(FleetCommand::Remove { edge, message }) => {
                    ops::remove_edge(&api, &edge, &message).await
                }
            }
        }
        Command::Deploy {
            version,
            plan,
            message,
            api,
        } => rollouts::deploy(&api.api()?, version, plan, &message).await,
        Command::Rollout { command, api } => {
            let api = api.api()?;
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
        } => rollouts::rollback(&api.api()?, version, &message).await,
        Command::Switch {
            name,
            state,
            message,
            api,
        } => rollouts::switch(&api.api()?, &name, state == "on", &message).await,
        Command::Drill {
            fault,
            service,
            rate,
            out,
            api,
        } => drill::run(&api.api()?, fault, service, rate, out).await,
        Command::Incident { command, api } => status::incident(&api, command).await,
        Command::Status { command, api } => status::status(&api, command).await,
        Command::Audit { limit, api } => rollouts::audit(&api.api()?, limit).await,
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
            ops::purge(&api.api()?, req).await
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

/// The operators (`--token`: admin `operator`; `--operators FILE`) and the join token.
fn access(
    token: Option<String>,
    operators: Option<PathBuf>,
    join_token: &str,
) -> Result<firebreak_control::auth::Access, String> {
    use firebreak_control::auth::{load_operators, Access, Operator, Role};
    check_token("--edge-token", join_token)?;
    let mut all = Vec::new();
    if let Some(token) = token {
        check_token("--token", &token)?;
        all.push(
            Operator::with_token("operator", Role::Admin, &token)
                .map_err(|e| format!("--token: {e}"))?,
        );
    }
    if let Some(path) = operators {
        let named = load_operators(&path).map_err(|e| e.to_string())?;
        if all.iter().any(|a| named.iter().any(|n| n.name == a.name)) {
            return Err(format!(
                "{}: the name `operator` is taken by --token; rename that entry",
                path.display()
            ));
        }
        all.extend(named);
    }
    if all.is_empty() {
        return Err(
            "give --token TOKEN (an admin named `operator`), --operators FILE, or both".into(),
        );
    }
    Access::new(all, join_token).map_err(|e| e.to_string())
}

/// The edge registry's settings from the command line.
fn edge_settings(
    networks: &[String],
    max_edges: usize,
    prune_s: u64,
) -> Result<firebreak_control::registry::EdgeSettings, String> {
    let networks = networks
        .iter()
        .filter(|n| !n.trim().is_empty())
        .map(|n| {
            firebreak_config::Cidr::parse(n.trim()).map_err(|e| format!("--edge-networks: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if networks.is_empty() {
        return Err(
            "--edge-networks: give at least one CIDR block (edges' admin addresses must be in one)"
                .into(),
        );
    }
    if max_edges == 0 {
        return Err("--max-edges must be at least 1".into());
    }
    if prune_s == 0 {
        return Err("--edge-prune-s must be at least 1".into());
    }
    Ok(firebreak_control::registry::EdgeSettings {
        networks,
        max_edges,
        prune_after: std::time::Duration::from_secs(prune_s),
    })
}

/// `firebreak hash-token`: the SHA-256 of the token on standard input (one line).
fn hash_token() -> Result<(), String> {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(4096)
        .read_line(&mut line)
        .map_err(|e| format!("reading the token from standard input: {e}"))?;
    let token = line.trim_end_matches(['\n', '\r']);
    check_token("the token", token)?;
    out!("{}", firebreak_control::auth::token_sha256(token));
    Ok(())
}

async fn control(
    listen: SocketAddr,
    (data_dir, store, key): (PathBuf, String, Option<PathBuf>),
    (access, edges): (
        firebreak_control::auth::Access,
        firebreak_control::registry::EdgeSettings,
    ),
    key_overlap_s: u64,
    target_freshness: std::time::Duration,
    (api, tls): (control_flags::ApiFlags, Option<(PathBuf, PathBuf)>),
    status_export: Option<PathBuf>,
) -> Result<(), String> {
    let limits = api.limits(control_flags::raise_open_files_limit())?;
    let tls = match tls {
        Some((cert, key)) => Some(
            tokio::task::spawn_blocking(move || {
                firebreak_control::https::server_config(&cert, &key)
            })
            .await
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let overlap = std::time::Duration::from_secs(key_overlap_s);
    if overlap > firebreak_control::keys::MAX_OVERLAP {
        return Err(format!(
            "--key-overlap-s {key_overlap_s} is longer than the limit of {} s",
            firebreak_control::keys::MAX_OVERLAP.as_secs()
        ));
    }
    let key_path = key.unwrap_or_else(|| data_dir.join("control.key"));
    let key = ControlKey::load_or_create(&key_path).map_err(|e| e.to_string())?;
    let key = firebreak_control::keys::ControlKeys::open(&key_path, key, overlap)
        .map_err(|e| e.to_string())?;
    let public = key.public();
    let spec = if store == "redb" {
        format!("redb:{}", data_dir.join("control.redb").display())
    } else {
        store
    };
    let store = Store::open(&spec).await.map_err(|e| e.to_string())?;
    let options = firebreak_control::plane::PlaneOptions {
        target_freshness,
        edges,
        ..Default::default()
    };
    let plane = Plane::with_options(store, key, options)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(dir) = status_export {
        firebreak_control::status::export::spawn(std::sync::Arc::downgrade(&plane), dir);
    }
    let server = firebreak_control::serve_maybe_tls(listen, plane, access, limits, tls)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let pub_path = data_dir.join("control.pub");
    if let Err(e) = std::fs::write(&pub_path, format!("{public}\n")) {
        tracing::warn!(error = %e, path = %pub_path.display(), "cannot write the public key file");
    }
    out!(
        "control plane listening on {scheme}://{}",
        server.local_addr()
    );
    out!("public key {public} (also in {})", pub_path.display());
    wait_for_ctrl_c().await;
    server.shutdown().await;
    Ok(())
}

async fn edge(args: EdgeArgs) -> Result<(), String> {
    control_flags::raise_open_files_limit();
    let port = args
        .listen
        .first()
        .or(args.listen_tls.first())
        .map(|a| a.port())
        .unwrap_or(0);
    if let Some(mut opts) = args.member.options("main", port)? {
        if args.listen.is_empty() && args.listen_tls.is_empty() {
            return Err("--listen ADDR (or --listen-tls ADDR) is required with --control".into());
        }
        opts.listen = args.listen;
        opts.listen_tls = args.listen_tls;
        opts.admin = args.admin;
        let id = opts.id.clone();
        let agent = Agent::start(opts).await.map_err(|e| e.to_string())?;
        for url in agent.member.local_urls() {
            out!("edge {id} listening on {url}");
        }
        for addr in agent.member.http3_addrs() {
            out!("edge {id} serving HTTP/3 on udp {addr}");
        }
        if let Some(admin) = agent.member.admin_addr() {
            out!("edge {id} admin on http://{admin}");
        }
        wait_for_ctrl_c().await;
        agent.shutdown();
        if !agent.member.drain(DRAIN_LIMIT).await {
            tracing::warn!("some connections were still open after {DRAIN_LIMIT:?}");
        }
        return Ok(());
    }
    let valid = match (&args.config, args.origin) {
        (Some(path), _) => load_file(path).map_err(|e| e.to_string())?,
        (None, Some(origin)) => {
            let admin = match args.admin {
                Some(addr) => {
                    let token = match args.admin_token {
                        Some(t) => t,
                        None => {
                            let t = firebreak_edge::agent::random_token();
                            out!("admin token: {t}");
                            t
                        }
                    };
                    Some((addr, token))
                }
                None => None,
            };
            let disk = args.disk_dir.as_deref().map(|d| (d, args.disk_mib));
            one_origin_config(&OneOrigin {
                origin: &origin,
                listen: args.listen.first().copied(),
                cache_mib: args.cache_mib,
                disk,
                admin,
                workers: args.workers,
            })?
        }
        (None, None) => {
            return Err("give --control URL, --config FILE or --origin HOST:PORT".into())
        }
    };
    let handle = Arc::new(EdgeServer::start(valid).await.map_err(|e| e.to_string())?);
    for url in handle.local_urls() {
        out!("edge listening on {url}");
    }
    for addr in handle.http3_addrs() {
        out!("edge serving HTTP/3 on udp {addr}");
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

/// What the one-origin edge is given on the command line.
struct OneOrigin<'a> {
    origin: &'a str,
    listen: Option<SocketAddr>,
    cache_mib: u64,
    /// Disk tier directory and size in MiB.
    disk: Option<(&'a std::path::Path, u64)>,
    /// Admin listener and its token.
    admin: Option<(SocketAddr, String)>,
    /// Connection worker threads; 0 for one per core.
    workers: usize,
}

/// A TOML basic string of `s`, or an error naming `what` when it cannot be one simply.
fn toml_str(what: &str, s: &str) -> Result<String, String> {
    if s.contains(['"', '\\', '\n', '\r']) || s.chars().any(char::is_control) {
        return Err(format!(
            "{what} {s:?} has characters this shortcut does not take"
        ));
    }
    Ok(format!("\"{s}\""))
}

/// A configuration for one default service in front of one origin.
fn one_origin_config(o: &OneOrigin<'_>) -> Result<ValidConfig, String> {
    let origin = o.origin.trim_start_matches("http://").trim_end_matches('/');
    if origin.contains(['"', '\\', '\n']) {
        return Err(format!("--origin {origin:?} is not host:port"));
    }
    let listen = o
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let max_bytes = o.cache_mib.saturating_mul(1024 * 1024);
    // The largest object: a quarter of memory, and half of the disk tier when it is smaller.
    let disk_bytes = o.disk.map(|(_, mib)| mib.saturating_mul(1024 * 1024));
    let max_object = (max_bytes / 4)
        .min(disk_bytes.map_or(u64::MAX, |d| d / 2))
        .max(1);
    let mut text = format!(
        "[[listener]]\naddr = \"{listen}\"\n\n[cache]\nmax_bytes = {max_bytes}\n\
         max_object_bytes = {max_object}\n\n"
    );
    if o.workers > 0 {
        text.push_str(&format!("[limits]\nconnection_workers = {}\n\n", o.workers));
    }
    if let Some((dir, mib)) = o.disk {
        let path = toml_str("--disk-dir", &dir.to_string_lossy())?;
        let disk_bytes = mib.saturating_mul(1024 * 1024);
        text.push_str(&format!(
            "[cache.disk]\npath = {path}\nmax_bytes = {disk_bytes}\n\n"
        ));
    }
    if let Some((addr, token)) = &o.admin {
        let token = toml_str("--admin-token", token)?;
        text.push_str(&format!(
            "[admin]\nlisten = \"{addr}\"\ntoken = {token}\n\n"
        ));
    }
    text.push_str(&format!(
        "[[service]]\nname = \"default\"\ndefault = true\n\n\
         [service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n"
    ));
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
        let o = |origin, cache_mib| super::OneOrigin {
            origin,
            listen: None,
            cache_mib,
            disk: None,
            admin: None,
            workers: 0,
        };
        let c = super::one_origin_config(&o("http://127.0.0.1:9000/", 64)).unwrap();
        assert_eq!(c.services[0].origin.servers[0].addr, "127.0.0.1:9000");
        assert_eq!(c.cache.max_bytes, 64 * 1024 * 1024);
        assert!(c.cache.disk.is_none());
        assert!(super::one_origin_config(&o("no-port", 64)).is_err());
        assert!(super::one_origin_config(&o("a\"b:1", 64)).is_err());
        assert!(super::one_origin_config(&o("127.0.0.1:9000", 0)).is_err());
        let disk = std::path::Path::new("/var/cache/fb");
        let c = super::one_origin_config(&super::OneOrigin {
            disk: Some((disk, 512)),
            admin: Some((
                "127.0.0.1:9".parse().unwrap(),
                "one-origin-admin-token".into(),
            )),
            ..o("127.0.0.1:9000", 64)
        })
        .unwrap();
        let d = c.cache.disk.as_ref().unwrap();
        assert_eq!((d.path.as_str(), d.max_bytes), ("/var/cache/fb", 512 << 20));
        assert!(c.admin.is_some());
        // A small disk tier bounds the largest object.
        let small = super::one_origin_config(&super::OneOrigin {
            disk: Some((disk, 16)),
            ..o("127.0.0.1:9000", 256)
        })
        .unwrap();
        assert_eq!(small.cache.max_object_bytes, 8 << 20);
        // Below the tier's minimum: refused, naming the field.
        let bad = super::one_origin_config(&super::OneOrigin {
            disk: Some((disk, 0)),
            ..o("127.0.0.1:9000", 256)
        });
        assert!(bad.unwrap_err().contains("cache.disk.max_bytes"));
        let quote = std::path::Path::new("/a\"b");
        assert!(super::one_origin_config(&super::OneOrigin {
            disk: Some((quote, 512)),
            ..o("127.0.0.1:9000", 64)
        })
        .is_err());
    }

    /// clap's own consistency checks (argument ids named in `conflicts_with`/`requires`
    /// exist, also through the flattened member flags).
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
