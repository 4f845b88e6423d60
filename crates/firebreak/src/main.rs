//! `firebreak`: one CLI for the edge cloud.

use clap::{Parser, Subcommand};
use firebreak_config::{load_file, parse_str, ValidConfig};
use firebreak_edge::EdgeServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

mod demo_origin;

/// How long Ctrl-C waits for in-flight requests before exiting.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The example configuration `firebreak up` runs.
const EXAMPLE_CONFIG: &str = include_str!("../../../examples/firebreak.toml");

#[derive(Parser)]
#[command(name = "firebreak", version, about = "Firebreak edge cloud")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local network: one edge on 127.0.0.1:8080 in front of the demo origin on
    /// 127.0.0.1:8081, using the built-in example configuration.
    Up {
        /// Edge port; the demo origin takes the next one.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run an edge in front of real origins: from a configuration file (SIGHUP reloads it),
    /// or in front of one origin with `--origin` (a default service, defaults elsewhere).
    Edge {
        /// Configuration file (TOML).
        #[arg(long, required_unless_present = "origin", conflicts_with_all = ["origin", "listen", "cache_mib"])]
        config: Option<PathBuf>,
        /// Origin `host:port` (or `http://host:port`) for a one-origin edge without a file.
        #[arg(long)]
        origin: Option<String>,
        /// Listen address of the one-origin edge.
        #[arg(long, default_value = "127.0.0.1:8080", requires = "origin")]
        listen: Option<SocketAddr>,
        /// Cache size of the one-origin edge, in MiB.
        #[arg(long, default_value_t = 256, requires = "origin")]
        cache_mib: u64,
    },
    /// Run the demo origin alone.
    Origin {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a file; exit 0 if valid, 1 with located errors if not.
    Validate {
        /// Configuration file (TOML).
        file: PathBuf,
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
    } = &cli.command
    {
        return match load_file(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
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
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Up { port } => up(port).await,
        Command::Edge {
            config,
            origin,
            listen,
            cache_mib,
        } => {
            let valid = match (&config, origin) {
                (Some(path), _) => load_file(path).map_err(|e| e.to_string())?,
                (None, Some(origin)) => one_origin_config(&origin, listen, cache_mib)?,
                (None, None) => return Err("give --config FILE or --origin HOST:PORT".into()),
            };
            let handle = Arc::new(EdgeServer::start(valid).await.map_err(|e| e.to_string())?);
            for addr in handle.local_addrs() {
                println!("edge listening on http://{addr}");
            }
            let _reloader = match config {
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
        Command::Origin { listen } => {
            let origin = demo_origin::start(listen)
                .await
                .map_err(|e| e.to_string())?;
            println!("demo origin listening on http://{}", origin.addr);
            wait_for_ctrl_c().await;
            Ok(())
        }
        Command::Config { .. } => Ok(()),
    }
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

/// The example configuration with the edge on `port`, the origin on `port + 1` and the admin
/// listener on `port + 2`.
fn example_config(port: u16) -> Result<ValidConfig, String> {
    let origin_port = port.checked_add(1).ok_or("port must be below 65534")?;
    let admin_port = port.checked_add(2).ok_or("port must be below 65534")?;
    let text = EXAMPLE_CONFIG
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{origin_port}"))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{admin_port}"));
    parse_str("examples/firebreak.toml (built in)", &text).map_err(|e| e.to_string())
}

async fn up(port: u16) -> Result<(), String> {
    let config = example_config(port)?;
    let origin_addr: SocketAddr = config
        .services
        .first()
        .and_then(|s| s.origin.servers.first())
        .and_then(|s| s.addr.parse().ok())
        .ok_or("the example configuration names no origin address")?;
    let origin = demo_origin::start(origin_addr)
        .await
        .map_err(|e| format!("demo origin on {origin_addr}: {e}"))?;
    let token = config
        .admin
        .as_ref()
        .map(|a| a.token.clone())
        .unwrap_or_default();
    let edge = EdgeServer::start(config).await.map_err(|e| e.to_string())?;
    let edge_addr = edge
        .local_addrs()
        .first()
        .copied()
        .ok_or("the example configuration has no listener")?;
    println!("firebreak is up.");
    println!("  edge        http://{edge_addr}/   (service `demo`, host localhost)");
    println!("  demo origin http://{}/", origin.addr);
    if let Some(admin) = edge.admin_addr() {
        println!("  admin       http://{admin}/   (bearer token `{token}`)");
    }
    println!();
    println!("Try:");
    println!("  curl -si http://{edge_addr}/static/hello.txt   # run twice: fwd=miss, then hit");
    println!("  curl -si http://{edge_addr}/api/data           # stale-while-revalidate / stale-if-error");
    println!("  curl -si -H 'Accept-Language: fr' http://{edge_addr}/vary");
    println!("  curl -si -r 0-9 http://{edge_addr}/static/hello.txt");
    println!("  curl -si http://{edge_addr}/time               # no-store: always forwarded");
    println!(
        "  curl -s  http://{}/__origin/stats            # requests the origin saw",
        origin.addr
    );
    if let Some(admin) = edge.admin_addr() {
        println!("  curl -s -H 'Authorization: Bearer {token}' http://{admin}/metrics");
        println!(
            "  curl -s -X POST -H 'Authorization: Bearer {token}' 'http://{admin}/purge/key?service=demo&key=static'"
        );
    }
    println!();
    println!("Ctrl-C stops everything.");
    wait_for_ctrl_c().await;
    edge.drain(DRAIN_LIMIT).await;
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, the signals operators and supervisors stop with.
async fn wait_for_ctrl_c() {
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

    #[test]
    fn example_config_moves_with_the_port() {
        let c = super::example_config(9000).unwrap();
        assert_eq!(c.listeners[0].addr.port(), 9000);
        assert_eq!(c.services[0].origin.servers[0].addr, "127.0.0.1:9001");
        assert_eq!(c.admin.as_ref().unwrap().listen.port(), 9002);
        assert!(super::example_config(65534).is_err());
    }
}
