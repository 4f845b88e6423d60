//! The DNS server as a fleet member (`firebreak dns --control URL`): it takes the signed
//! versions of the fleet's configuration through the same agent as an edge (enrolment,
//! targets, staging, last-known-good on disk, safe mode, reports) and serves each version's
//! `[dns]` data. It starts from the version kept on disk before asking the control plane, and
//! keeps answering from it, with its own POP checks, while the control plane is down.

use crate::dns::{check, compile, Serials};
use firebreak_config::ValidConfig;
use firebreak_dns::{DnsServer, Health, HealthChecker, Locate, ServerConfig, TcpLimits};
use firebreak_edge::agent::member::{ControlContext, Launcher, Member, MemberHealth, StartFuture};
use firebreak_edge::server::ServerError;
use firebreak_protocol::api::MemberRole;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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
}

/// A running DNS member.
pub(crate) struct DnsMember {
    server: Mutex<DnsServer>,
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    health: Arc<Health>,
    state: Mutex<Loaded>,
}

/// What changes with each version.
struct Loaded {
    serials: Serials,
    checker: HealthChecker,
}

/// The GeoIP database of a version under the control plane.
fn geoip_of(_valid: &ValidConfig) -> impl FnOnce(&str) -> Result<Arc<dyn Locate>, String> {
    |_file: &str| Err("dns.geoip_file: the database did not come with the version".to_owned())
}

impl DnsMember {
    /// The admin listener's address.
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
        server.reload(zone);
        state.serials.accepted(serial);
        check(&mut state.checker, &dns);
        tracing::info!(serial, "dns data applied");
        Ok(())
    }

    fn health(&self) -> MemberHealth {
        MemberHealth::default()
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
                server: Mutex::new(server),
                health: Arc::clone(&self.health),
                state: Mutex::new(Loaded { serials, checker }),
            })
        })
    }

    fn attach(&self, _member: &Arc<DnsMember>, _control: ControlContext) {}
}
