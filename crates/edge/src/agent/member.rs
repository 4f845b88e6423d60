//! What the agent runs under the control plane: a fleet member. The HTTP edge is one
//! ([`EdgeLauncher`]); the authoritative DNS server (in the `firebreak` binary) is another. Both
//! take the same signed versions through the same path — enrolment, targets, staging,
//! last-known-good on disk, safe mode, reports — and differ only in what they build from a
//! configuration and what they count.

use super::client::ControlClient;
use super::trust::TrustStore;
use crate::server::{EdgeHandle, EdgeServer, ServerError};
use crate::signed_admin::ControlLink;
use firebreak_config::ValidConfig;
use firebreak_protocol::api::MemberRole;
use firebreak_protocol::health::{Counts, DnsCounts, ServiceHealth};
use firebreak_protocol::keys::PublicKey;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// The future [`Launcher::start`] returns.
pub type StartFuture<'a, M> = Pin<Box<dyn Future<Output = Result<M, ServerError>> + Send + 'a>>;

/// What a member counted while serving its current version: the body of its health report.
#[derive(Debug, Clone, Default)]
pub struct MemberHealth {
    /// All requests (an HTTP edge), or nothing (a DNS server).
    pub total: Counts,
    /// Per service.
    pub services: Vec<ServiceHealth>,
    /// What a DNS server answered (its gate's evidence); `None` for an HTTP edge.
    pub dns: Option<DnsCounts>,
}

/// The control plane's means, handed to a member once it runs.
#[derive(Clone)]
pub struct ControlContext {
    /// The key given on the command line (`--trust`).
    pub trust: PublicKey,
    /// The key set followed from the control plane.
    pub keys: Arc<TrustStore>,
    /// Signed requests from the control plane (purge) are checked against this.
    pub link: Arc<ControlLink>,
    /// The member's own authenticated client to the control plane.
    pub client: ControlClient,
    /// The member's POP (`--pop`).
    pub pop: String,
    /// How often the member asks the control plane for what it follows (POPs' edges).
    pub every: std::time::Duration,
}

/// A running member.
pub trait Member: Send + Sync + 'static {
    /// Swaps in a new configuration; on error the running one stays.
    fn reload(&self, config: ValidConfig) -> Result<(), String>;
    /// What the running version served so far (restarts at zero with every reload).
    fn health(&self) -> MemberHealth;
    /// The admin listener's address.
    fn admin_addr(&self) -> Option<SocketAddr>;
    /// Where clients reach it (`http://…`, `https://…`, `dns+udp://…`), for operators.
    fn local_urls(&self) -> Vec<String>;
    /// Stops serving at once.
    fn shutdown(&self);
}

/// Starts members of one kind from configurations.
pub trait Launcher: Send + Sync + 'static {
    /// The member it starts.
    type Member: Member;
    /// What the member is, in its reports.
    fn role(&self) -> MemberRole;
    /// The fleet's configuration made local (listeners, admin) before it is built.
    fn localize(&self, config: ValidConfig) -> ValidConfig;
    /// Whether the (localized) configuration builds, without serving it (staging).
    fn check(&self, config: &ValidConfig) -> Result<(), String>;
    /// Starts serving the first configuration.
    fn start(&self, config: ValidConfig) -> StartFuture<'_, Self::Member>;
    /// Gives the running member what it needs from the control plane.
    fn attach(&self, member: &Arc<Self::Member>, control: ControlContext);
}

/// Starts HTTP edges on the given listeners.
pub struct EdgeLauncher {
    /// Client listeners.
    pub listen: Vec<SocketAddr>,
    /// Client listeners terminating TLS.
    pub listen_tls: Vec<SocketAddr>,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// The edge's data directory: a relative `[cache.disk] path` is under it.
    pub data_dir: std::path::PathBuf,
}

impl Member for EdgeHandle {
    fn reload(&self, config: ValidConfig) -> Result<(), String> {
        EdgeHandle::reload(self, config).map_err(|e| e.to_string())
    }

    fn health(&self) -> MemberHealth {
        let (total, services) = EdgeHandle::health(self);
        MemberHealth {
            total,
            services,
            dns: None,
        }
    }

    fn admin_addr(&self) -> Option<SocketAddr> {
        EdgeHandle::admin_addr(self)
    }

    fn local_urls(&self) -> Vec<String> {
        EdgeHandle::local_urls(self)
    }

    fn shutdown(&self) {
        EdgeHandle::shutdown(self)
    }
}

impl Launcher for EdgeLauncher {
    type Member = EdgeHandle;

    fn role(&self) -> MemberRole {
        MemberRole::Edge
    }

    fn localize(&self, config: ValidConfig) -> ValidConfig {
        config
            .localize(&self.listen, self.admin, super::random_token)
            .with_tls_listeners(&self.listen_tls)
            .with_disk_base(&self.data_dir)
    }

    fn check(&self, config: &ValidConfig) -> Result<(), String> {
        crate::runtime::Runtime::build(config.clone(), None).map(|_| ())
    }

    fn start(&self, config: ValidConfig) -> StartFuture<'_, EdgeHandle> {
        Box::pin(EdgeServer::start(config))
    }

    fn attach(&self, edge: &Arc<EdgeHandle>, control: ControlContext) {
        let _ = edge.state().control_key.set(control.trust);
        let _ = edge.state().control_keys.set(control.keys);
        let _ = edge.state().control_link.set(control.link);
        edge.state().tier.set_pop(&control.pop);
        tokio::spawn(super::tier::follow(
            Arc::downgrade(edge),
            control.client,
            control.every,
        ));
    }
}
