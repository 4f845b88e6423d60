//! `firebreak dns`: the authoritative DNS server, standalone, from a fleet document.
//!
//! The document is loaded as the control plane would (managed mode) and its `[dns]` data
//! compiled into a steering version (with its GeoIP database, `dns.geoip_file`, relative to
//! the document); the POPs' `checks` URLs are checked actively (`HealthChecker`). SIGHUP
//! reloads it (a file that does not validate or
//! compile is refused and logged, and the running data stays). Under a control plane (next
//! step) the data will come with rollouts instead.

use firebreak_config::{load_file_as, Mode};
use firebreak_dns::{
    DnsServer, GeoIp, Health, HealthChecker, Locate, ServerConfig, Steering, TcpLimits, Zone,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `firebreak dns` arguments.
#[derive(clap::Args)]
pub(crate) struct DnsArgs {
    /// The fleet document holding the `[dns]` data (TOML), for a DNS server without a
    /// control plane (SIGHUP reloads it).
    #[arg(long, conflicts_with = "control", required_unless_present = "control")]
    config: Option<PathBuf>,
    /// UDP address to answer on.
    #[arg(long, default_value = "127.0.0.1:5353")]
    listen: SocketAddr,
    /// TCP address (default: the UDP address).
    #[arg(long)]
    tcp: Option<SocketAddr>,
    /// Admin listener (`/metrics`, `/healthz`).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// UDP threads, one socket each (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// The SOA serial of the first load, plus one at each reload (default: the Unix time of
    /// each load).
    #[arg(long)]
    serial: Option<u32>,
    /// TCP connections open at once (beyond: the oldest idle one is closed).
    #[arg(long, default_value_t = 1024)]
    tcp_max_connections: usize,
    /// TCP connections open at once from one client address (IPv6: one /64); beyond, refused.
    #[arg(long, default_value_t = 64)]
    tcp_max_connections_per_address: usize,
    /// How the server joins and follows a control plane (`--control URL`): the `[dns]` data
    /// then comes with the fleet's signed versions, through rollouts (cell `dns` unless
    /// `--cell`).
    #[command(flatten)]
    member: crate::member_flags::MemberFlags,
}

/// The process recorder's series (the POP checker's `firebreak_dns_pop_healthy`,
/// `_checks_total`), rendered on the DNS admin `/metrics` after the server's own counters.
pub(crate) fn extra_metrics() -> Option<firebreak_dns::metrics::ExtraMetrics> {
    firebreak_edge::telemetry::prometheus().map(|handle| {
        let render: firebreak_dns::metrics::ExtraMetrics = Arc::new(move || handle.render());
        render
    })
}

/// Loads and compiles the document; its GeoIP database (`dns.geoip_file`, relative to the
/// document) is opened with it. Returns the zone and the `[dns]` data (for the checker).
fn load(
    path: &Path,
    serial: u32,
    health: &Arc<Health>,
) -> Result<(Zone, firebreak_config::dns::DnsConfig), String> {
    let valid = load_file_as(path, Mode::Managed).map_err(|e| e.to_string())?;
    let geoip = |file: &str| -> Result<Arc<dyn Locate>, String> {
        let file = path.parent().unwrap_or(Path::new(".")).join(file);
        let db = GeoIp::open_file(&file)
            .map_err(|e| format!("{}: dns.geoip_file: {e}", path.display()))?;
        Ok(Arc::new(db))
    };
    compile(&valid, serial, health, geoip).map_err(|e| format!("{}: {e}", path.display()))
}

/// Compiles a validated configuration's `[dns]` data into a zone; `geoip` opens the database
/// `dns.geoip_file` names. Returns the zone and the `[dns]` data (for the checker).
pub(crate) fn compile(
    valid: &firebreak_config::ValidConfig,
    serial: u32,
    health: &Arc<Health>,
    geoip: impl FnOnce(&str) -> Result<Arc<dyn Locate>, String>,
) -> Result<(Zone, firebreak_config::dns::DnsConfig), String> {
    let config = valid.get();
    let dns = config
        .dns
        .clone()
        .ok_or("the configuration has no [dns] section")?;
    let locate = dns.geoip_file.as_deref().map(geoip).transpose()?;
    let steering = Steering::compile(config, serial, locate, health).map_err(|e| e.to_string())?;
    Ok((Zone::new(steering), dns))
}

/// Starts (again) the active checks of the POPs that list `checks`.
pub(crate) fn check(checker: &mut HealthChecker, dns: &firebreak_config::dns::DnsConfig) {
    for problem in checker.apply(dns) {
        tracing::warn!("dns health check not started: {problem}");
    }
}

/// SOA serials: the given one, then +1 per accepted reload; without one, the Unix time of
/// each load (never below the last serial + 1, so a serial only grows).
pub(crate) struct Serials {
    first: Option<u32>,
    last: Option<u32>,
}

impl Serials {
    /// Time-based serials (the Unix time of each load, always growing).
    pub(crate) fn by_time() -> Serials {
        Serials {
            first: None,
            last: None,
        }
    }

    /// The serial the next load gets if it is accepted.
    pub(crate) fn candidate(&self) -> u32 {
        let next = self.last.map(|l| l.wrapping_add(1));
        match (self.first, next) {
            (Some(first), None) => first,
            (Some(_), Some(next)) => next,
            (None, next) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
                    .unwrap_or(1);
                next.map_or(now, |n| now.max(n))
            }
        }
    }

    pub(crate) fn accepted(&mut self, serial: u32) {
        self.last = Some(serial);
    }
}

pub(crate) async fn run(args: DnsArgs) -> Result<(), String> {
    let threads = args
        .threads
        .unwrap_or_else(firebreak_dns::server::default_threads);
    let tcp_limits = TcpLimits {
        max_connections: args.tcp_max_connections.max(1),
        max_connections_per_address: args.tcp_max_connections_per_address.max(1),
        ..TcpLimits::default()
    };
    if let Some(opts) = args.member.options("dns", args.listen.port())? {
        let mut opts = opts;
        opts.admin = args.admin;
        let launcher = crate::dns_member::DnsLauncher {
            udp: args.listen,
            tcp: Some(args.tcp.unwrap_or(args.listen)),
            admin: args.admin,
            threads,
            tcp_limits,
            health: Health::new(),
            reported_every: opts.health_interval,
        };
        let id = opts.id.clone();
        let agent = firebreak_edge::agent::Agent::start_with(opts, launcher)
            .await
            .map_err(|e| e.to_string())?;
        let member = &agent.member;
        out!("dns {id} listening on udp {}", member.udp_addr());
        if let Some(tcp) = member.tcp_addr() {
            out!("dns {id} listening on tcp {tcp}");
        }
        if let Some(admin) = firebreak_edge::agent::member::Member::admin_addr(&**member) {
            out!("dns {id} admin on http://{admin}");
        }
        if let Some(serial) = member.serial() {
            out!("dns {id} serving (serial {serial})");
        }
        crate::wait_for_ctrl_c().await;
        agent.shutdown();
        return Ok(());
    }
    let path = args.config.ok_or("give --config FILE or --control URL")?;
    let health = Health::new();
    let mut serials = Serials {
        first: args.serial,
        last: None,
    };
    let (zone, dns) = load(&path, serials.candidate(), &health)?;
    serials.accepted(zone.steering().soa().serial);
    let mut checker = HealthChecker::new(Arc::clone(&health), tokio::runtime::Handle::current());
    check(&mut checker, &dns);
    let config = ServerConfig {
        udp: args.listen,
        tcp: Some(args.tcp.unwrap_or(args.listen)),
        admin: args.admin,
        threads,
        tcp_limits,
        extra_metrics: extra_metrics(),
    };
    let server = DnsServer::start(config, zone)
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    out!("dns listening on udp {}", server.udp_addr());
    if let Some(tcp) = server.tcp_addr() {
        out!("dns listening on tcp {tcp}");
    }
    if let Some(admin) = server.admin_addr() {
        out!("dns admin on http://{admin}");
    }
    out!(
        "dns serving zone {} (serial {})",
        server.zone().steering().zone(),
        server.zone().steering().soa().serial
    );
    let server = Arc::new(server);
    let reloader = Reloader {
        server: Arc::clone(&server),
        path,
        serials,
        health,
        checker,
        current: dns,
    };
    let reloader = reloader
        .on_sighup()
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    crate::wait_for_ctrl_c().await;
    reloader.abort();
    Ok(())
}

/// What a SIGHUP reload needs: the server, the file, the serials, the shared health and its
/// checker, and the `[dns]` data running now (judged against the new by `removal_check`).
struct Reloader {
    server: Arc<DnsServer>,
    path: PathBuf,
    serials: Serials,
    health: Arc<Health>,
    checker: HealthChecker,
    current: firebreak_config::dns::DnsConfig,
}

impl Reloader {
    /// Reloads on every SIGHUP. A file that does not validate, or that removes more than
    /// `max_removed_share` of the POPs or answers at once (`removal_check`; the share is read
    /// from the new file, so raising it there is how an operator forces a large change), is
    /// refused and logged; the running data stays.
    fn on_sighup(mut self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Err(e) = self.reload() {
                    tracing::error!("dns data refused, keeping the running one:\n{e}");
                }
            }
        }))
    }

    fn reload(&mut self) -> Result<(), String> {
        let (zone, dns) = load(&self.path, self.serials.candidate(), &self.health)?;
        firebreak_config::dns::removal_check(&self.current, &dns)
            .map_err(|why| format!("{}: {why}", self.path.display()))?;
        let serial = zone.steering().soa().serial;
        self.serials.accepted(serial);
        self.server.reload(zone);
        check(&mut self.checker, &dns);
        self.current = dns;
        tracing::info!(path = %self.path.display(), serial, "dns data reloaded");
        Ok(())
    }
}
