//! The DNS server as a fleet member (`firebreak dns --control URL`): it takes the signed
//! versions of the fleet's configuration through the same agent as an edge (enrolment,
//! targets, staging, last-known-good on disk, safe mode, reports) and serves each version's
//! `[dns]` data. It starts from the version kept on disk before asking the control plane, and
//! keeps answering from it, with its own POP checks, while the control plane is down.

use crate::dns::{check, compile, Serials};
use firebreak_config::ValidConfig;
use firebreak_dns::{DnsServer, Health, HealthChecker, Locate, ServerConfig, TcpLimits};
use firebreak_edge::agent::client::ControlClient;
use firebreak_edge::agent::member::{ControlContext, Launcher, Member, MemberHealth, StartFuture};
use firebreak_edge::server::ServerError;
use firebreak_protocol::api::MemberRole;
use firebreak_protocol::health::DnsCounts;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where and how the DNS member serves.
pub(crate) struct DnsLauncher {
    /// UDP address.
    pub udp: SocketAddr,
    /// TCP address.
    pub tcp: Option<SocketAddr>,
    /// Admin listener (`/metrics`, `/healthz`).
    pub admin: Option<SocketAddr>,
    /// UDP threads.
    pub threads: usize,
    /// TCP bounds.
    pub tcp_limits: TcpLimits,
    /// POP health, shared by every version served.
    pub health: Arc<Health>,
    /// How often the control plane's view of POP health is read.
    pub reported_every: Duration,
}

/// A running DNS member.
pub(crate) struct DnsMember {
    server: Mutex<DnsServer>,
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    health: Arc<Health>,
    state: Mutex<Loaded>,
    /// The server's counts when the running version began (health reports count from it).
    since: Mutex<DnsCounts>,
    /// The poll of the control plane's view of POP health.
    reported: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What changes with each version.
struct Loaded {
    serials: Serials,
    checker: HealthChecker,
}

/// The GeoIP database of a version under the control plane: the bytes the version carries
/// ([`ValidConfig::geoip`], set by the agent's compose from the signed bundle), opened with
/// the same code the control plane checked them with at push.
fn geoip_of(valid: &ValidConfig) -> impl FnOnce(&str) -> Result<Arc<dyn Locate>, String> {
    let bytes = valid.geoip().cloned();
    move |file: &str| {
        let bytes = bytes.ok_or_else(|| {
            format!("dns.geoip_file: the database {file} did not come with the version")
        })?;
        let db = firebreak_dns::GeoIp::from_bytes(bytes.to_vec())
            .map_err(|e| format!("dns.geoip_file: {file}: {e}"))?;
        Ok(Arc::new(db) as Arc<dyn Locate>)
    }
}

impl DnsMember {
    /// The UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The TCP address, if TCP is served.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The SOA serial being served.
    pub fn serial(&self) -> Option<u32> {
        self.server
            .lock()
            .ok()
            .map(|s| s.zone().steering().soa().serial)
    }
}

impl Member for DnsMember {
    fn reload(&self, config: ValidConfig) -> Result<(), String> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| "dns member state poisoned".to_owned())?;
        let serial = state.serials.candidate();
        let (zone, dns) = compile(&config, serial, &self.health, geoip_of(&config))?;
        let server = self
            .server
            .lock()
            .map_err(|_| "dns server poisoned".to_owned())?;
        let counts = server.metrics().dns_counts();
        server.reload(zone);
        if let Ok(mut since) = self.since.lock() {
            *since = counts;
        }
        state.serials.accepted(serial);
        check(&mut state.checker, &dns);
        tracing::info!(serial, "dns data applied");
        Ok(())
    }

    fn health(&self) -> MemberHealth {
        let now = match self.server.lock() {
            Ok(server) => server.metrics().dns_counts(),
            Err(_) => return MemberHealth::default(),
        };
        let since = self.since.lock().map(|s| s.clone()).unwrap_or_default();
        MemberHealth {
            dns: Some(now.since(&since)),
            ..MemberHealth::default()
        }
    }

    fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    fn local_urls(&self) -> Vec<String> {
        let mut urls = vec![format!("dns+udp://{}", self.udp)];
        urls.extend(self.tcp.map(|t| format!("dns+tcp://{t}")));
        urls
    }

    fn shutdown(&self) {
        if let Some(poll) = self.reported.lock().ok().and_then(|mut r| r.take()) {
            poll.abort();
        }
        if let Ok(mut state) = self.state.lock() {
            state.checker.stop();
        }
        if let Ok(mut server) = self.server.lock() {
            server.shutdown();
        }
    }
}

impl Launcher for DnsLauncher {
    type Member = DnsMember;

    fn role(&self) -> MemberRole {
        MemberRole::Dns
    }

    fn localize(&self, config: ValidConfig) -> ValidConfig {
        // The DNS server's addresses come from its flags; the data is the fleet's.
        config
    }

    fn check(&self, config: &ValidConfig) -> Result<(), String> {
        // Compiled against a scratch health table: staging must not touch what serves.
        compile(config, 1, &Health::new(), geoip_of(config)).map(|_| ())
    }

    fn start(&self, config: ValidConfig) -> StartFuture<'_, DnsMember> {
        Box::pin(async move {
            let mut serials = Serials::by_time();
            let serial = serials.candidate();
            let (zone, dns) = compile(&config, serial, &self.health, geoip_of(&config))
                .map_err(ServerError::Config)?;
            let server_config = ServerConfig {
                udp: self.udp,
                tcp: self.tcp,
                admin: self.admin,
                threads: self.threads,
                tcp_limits: self.tcp_limits.clone(),
                extra_metrics: crate::dns::extra_metrics(),
            };
            let server = DnsServer::start(server_config, zone)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: self.udp,
                    source,
                })?;
            serials.accepted(serial);
            let mut checker =
                HealthChecker::new(Arc::clone(&self.health), tokio::runtime::Handle::current());
            check(&mut checker, &dns);
            Ok(DnsMember {
                udp: server.udp_addr(),
                tcp: server.tcp_addr(),
                admin: server.admin_addr(),
                since: Mutex::new(server.metrics().dns_counts()),
                server: Mutex::new(server),
                health: Arc::clone(&self.health),
                state: Mutex::new(Loaded { serials, checker }),
                reported: Mutex::new(None),
            })
        })
    }

    fn attach(&self, member: &Arc<DnsMember>, control: ControlContext) {
        let poll = tokio::spawn(follow_reported(
            control.client,
            Arc::clone(&self.health),
            self.reported_every,
        ));
        if let Ok(mut slot) = member.reported.lock() {
            if let Some(old) = slot.replace(poll) {
                old.abort();
            }
        }
    }
}

/// Follows the control plane's view of each POP's health (`GET /v1/pops`, from its edges'
/// reports) into [`Health::set_reported`], every `every`. A POP the control plane does not
/// list has no report (`None`): the server's own checks alone decide. When the control plane
/// cannot be asked for `STALE_AFTER` polls in a row, every report is withdrawn (`None`), so
/// an outage of the control plane never freezes a stale verdict: the active checks go on.
async fn follow_reported(client: ControlClient, health: Arc<Health>, every: Duration) {
    /// Failed polls before the reports are withdrawn.
    const STALE_AFTER: u32 = 3;
    let mut known: HashSet<String> = HashSet::new();
    let mut failures = 0u32;
    loop {
        match client.pop_health().await {
            Ok(list) => {
                failures = 0;
                let listed: HashSet<String> = list.pops.iter().map(|p| p.pop.clone()).collect();
                for gone in known.difference(&listed) {
                    health.set_reported(gone, None);
                }
                for p in &list.pops {
                    if !p.healthy && known.contains(&p.pop) {
                        tracing::debug!(pop = %p.pop, "control plane reports the POP unhealthy");
                    }
                    health.set_reported(&p.pop, Some(p.healthy));
                }
                known = listed;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == STALE_AFTER {
                    tracing::warn!(error = %e, "POP health from the control plane withdrawn; steering by this server's own checks");
                    for pop in known.drain() {
                        health.set_reported(&pop, None);
                    }
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}
