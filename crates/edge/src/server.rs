//! Listeners, connections and configuration reloads.
//!
//! Each listener accepts HTTP/1.1 (keep-alive) and cleartext HTTP/2 with prior knowledge on
//! the same port. A reload builds a complete new [`Runtime`] and swaps it atomically; requests
//! already running finish on the version they started with.

use crate::conn::{accept_loop, AddressTable, ListenerConf};
use crate::proxy::{handle, EdgeState};
use crate::runtime::Runtime;
use crate::store::{HybridStore, MemoryStore, Storage};
use crate::telemetry::{self, AccessLog};
use firebreak_config::{load_file, ValidConfig};
use firebreak_protocol::health::{Counts, ServiceHealth};
use firebreak_protocol::serve::workers::ConnectionWorkers;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

use tokio::task::JoinHandle;

/// Starts edges.
pub struct EdgeServer;

/// A running edge: its bound addresses, state, and the means to reload or stop it.
pub struct EdgeHandle {
    addrs: Vec<SocketAddr>,
    /// Which of `addrs` terminate TLS.
    tls: Vec<bool>,
    /// UDP addresses serving HTTP/3 (those of the TLS listeners).
    http3: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    state: Arc<EdgeState>,
    tasks: Vec<JoinHandle<()>>,
    /// Flipped to `true` to ask every open connection to finish gracefully.
    stop: watch::Sender<bool>,
    /// One permit per open connection; all permits back means all connections closed.
    permits: Arc<Semaphore>,
    max_connections: u32,
    /// The threads serving client connections (HTTP/1.1, h2); dropped with the handle, which
    /// ends the connections still open on them.
    _workers: Arc<ConnectionWorkers>,
}

/// Why an edge could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration was refused; the running one is untouched.
    #[error("{0}")]
    Config(String),
}

impl EdgeServer {
    /// Binds every listener and starts serving. Fails without side effects if any address
    /// cannot be bound.
    pub async fn start(config: ValidConfig) -> Result<EdgeHandle, ServerError> {
        // Install the metrics recorder before anything is counted: the store registers its
        // counters when it opens, and the disk tier's recovery counts from the start.
        let _ = telemetry::prometheus();
        let store = open_store(&config);
        let limits = config.limits.clone();
        let listen: Vec<(SocketAddr, bool, bool)> = config
            .listeners
            .iter()
            .map(|l| (l.addr, l.proxy_protocol, l.tls))
            .collect();
        let admin = config.admin.clone();
        let access_log = match &config.access_log {
            Some(log) => Some(AccessLog::open(&log.path).map_err(|e| {
                ServerError::Config(format!("access_log.path `{}`: {e}", log.path))
            })?),
            None => None,
        };
        let runtime = Runtime::build(config, None).map_err(ServerError::Config)?;
        abort_if_crash_on_load(&runtime);
        crate::tls::installed(&runtime);
        let state = Arc::new(EdgeState::new(runtime, store, access_log));
        state.clients.configure(&state.runtime.load().config);
        let tls_config = match listen.iter().any(|l| l.2) {
            true => Some(
                crate::tls::server_config(state.clone())
                    .map_err(|e| ServerError::Config(format!("TLS: {e}")))?,
            ),
            false => None,
        };
        let http3 = state.runtime.load().config.http3.clone();
        let mut listeners = Vec::new();
        for (addr, proxy_protocol, tls) in listen {
            let (l, udp) = match tls && http3.enabled {
                true => {
                    let (l, udp) = crate::http3::bind_pair(addr)
                        .await
                        .map_err(|source| ServerError::Bind { addr, source })?;
                    (l, Some(udp))
                }
                false => (
                    crate::conn::bind_listener(addr)
                        .map_err(|source| ServerError::Bind { addr, source })?,
                    None,
                ),
            };
            listeners.push((l, udp, proxy_protocol, tls));
        }
        let per_address = Arc::new(AddressTable::new(
            limits.clients.max_connections_per_address,
        ));
        let threads = std::num::NonZeroUsize::new(limits.connection_workers)
            .unwrap_or_else(firebreak_protocol::serve::workers::default_threads);
        let workers = Arc::new(
            ConnectionWorkers::start(threads, "fb-conn")
                .map_err(|e| ServerError::Config(format!("connection workers: {e}")))?,
        );
        let mut tasks = Vec::new();
        let max_connections = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        let permits = Arc::new(Semaphore::new(max_connections as usize));
        let (stop, _) = watch::channel(false);
        let admin_addr = match admin.and_then(|a| a.listen) {
            Some(listen) => {
                let (addr, task) =
                    crate::admin::start(listen, state.clone(), stop.subscribe(), &limits)
                        .await
                        .map_err(|source| ServerError::Bind {
                            addr: listen,
                            source,
                        })?;
                tasks.push(task);
                Some(addr)
            }
            None => None,
        };

        let mut addrs = Vec::new();
        let mut tls_flags = Vec::new();
        let mut http3_addrs = Vec::new();
        let http3_settings = Arc::new(crate::http3::Http3Settings::new(&http3, &limits));
        for (listener, udp, proxy_protocol, tls) in listeners {
            let addr = listener.local_addr().map_err(|source| ServerError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            addrs.push(addr);
            tls_flags.push(tls);
            let mut conf =
                ListenerConf::new("client", &limits, proxy_protocol, per_address.clone())
                    .with_workers(&workers);
            if let (true, Some(tls_config)) = (tls, &tls_config) {
                conf = conf.with_tls(tls_config.clone());
            }
            let mut alt_svc = None;
            if let Some(udp) = udp {
                let endpoint = crate::http3::endpoint(udp, state.clone(), &http3)
                    .map_err(|e| ServerError::Config(format!("HTTP/3 on {addr}: {e}")))?;
                http3_addrs.push(addr);
                // Shared: a pointer is what each request's future carries.
                alt_svc =
                    crate::http3::AltSvc::new(addr.port(), http3.alt_svc_max_age_s).map(Arc::new);
                tasks.push(tokio::spawn(crate::http3::accept_loop(
                    endpoint,
                    state.clone(),
                    http3_settings.clone(),
                    permits.clone(),
                    per_address.clone(),
                    stop.subscribe(),
                )));
            }
            let conf = Arc::new(conf);
            let state = state.clone();
            let handler = move |req: http::Request<hyper::body::Incoming>, client_ip| {
                // Boxed: hyper and the listener move the request's future around (a
                // move copies the whole future); a pointer moves for less.
                Box::pin(handle(state.clone(), req, client_ip, alt_svc.clone()))
            };
            tasks.push(tokio::spawn(accept_loop(
                listener,
                conf,
                permits.clone(),
                stop.subscribe(),
                handler,
            )));
        }
        // Where other edges reach this one: a shield edge never sends a miss to itself.
        state.tier.set_own_addrs(
            addrs
                .iter()
                .zip(&tls_flags)
                .filter(|(_, tls)| !**tls)
                .map(|(a, _)| *a)
                .collect(),
        );
        Ok(EdgeHandle {
            addrs,
            tls: tls_flags,
            http3: http3_addrs,
            admin_addr,
            state,
            tasks,
            stop,
            permits,
            max_connections,
            _workers: workers,
        })
    }
}

/// The cache: memory, and the disk tier behind it when `[cache.disk]` names one. A disk tier
/// that cannot open (directory unusable, held by another process) leaves the edge serving
/// from memory only, logged and counted: a disk never keeps an edge from starting.
fn open_store(config: &ValidConfig) -> Arc<dyn Storage> {
    let memory = MemoryStore::new(config.cache.max_bytes, config.cache.max_object_bytes)
        .with_fill_budget(config.fetch.fill_budget(&config.cache))
        .with_zero_copy(config.cache.zero_copy_min_bytes);
    let Some(disk) = &config.cache.disk else {
        return Arc::new(memory);
    };
    match HybridStore::open(
        memory,
        disk,
        config.cache.max_object_bytes,
        config.limits.max_connections,
    ) {
        Ok(store) => {
            tracing::info!(path = %disk.path, max_bytes = disk.max_bytes, "disk tier open; recovering its index");
            Arc::new(store)
        }
        Err(e) => {
            tracing::error!(error = %e, "disk tier unavailable; serving from memory only");
            metrics::counter!("firebreak_disk_open_failures_total").increment(1);
            Arc::new(
                MemoryStore::new(config.cache.max_bytes, config.cache.max_object_bytes)
                    .with_fill_budget(config.fetch.fill_budget(&config.cache))
                    .with_zero_copy(config.cache.zero_copy_min_bytes),
            )
        }
    }
}

/// The `crash_on_load` drill: a runtime carrying it is about to be installed for serving, so
/// the process dies the way a latent crash bug would kill it. Building the runtime (staging)
/// does not get here.
fn abort_if_crash_on_load(runtime: &Runtime) {
    if let Some(service) = runtime.crash_on_load() {
        tracing::error!(
            service,
            "injected fault `crash_on_load` (drill): aborting the process"
        );
        std::process::abort();
    }
}

impl EdgeHandle {
    /// Addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The client listeners as URLs: `https://` for those terminating TLS.
    pub fn local_urls(&self) -> Vec<String> {
        self.addrs
            .iter()
            .zip(&self.tls)
            .map(|(a, &tls)| format!("{}://{a}", if tls { "https" } else { "http" }))
            .collect()
    }

    /// UDP addresses serving HTTP/3: those of the TLS listeners, unless `[http3]` is off.
    pub fn http3_addrs(&self) -> &[SocketAddr] {
        &self.http3
    }

    /// Address of the admin listener, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Shared state (store, runtime), for tests and admin tooling.
    pub fn state(&self) -> &Arc<EdgeState> {
        &self.state
    }

    /// Swaps in a new configuration atomically. Listener and cache-size changes need a
    /// restart; they are reported and the rest is applied.
    pub fn reload(&self, config: ValidConfig) -> Result<(), ServerError> {
        let current = self.state.runtime.load();
        if current.config.listeners != config.listeners {
            tracing::warn!("listener changes take effect on restart");
        }
        if current.config.limits != config.limits {
            tracing::warn!(
                "connection limits and timeouts take effect on restart (rates and the in-flight bound now)"
            );
        }
        if current.config.admin.as_ref().map(|a| a.listen)
            != config.admin.as_ref().map(|a| a.listen)
            || current.config.access_log != config.access_log
        {
            tracing::warn!("admin listener and access log changes take effect on restart");
        }
        if current.config.http3 != config.http3 {
            tracing::warn!("[http3] changes take effect on restart");
        }
        if current.config.cache.max_bytes != config.cache.max_bytes {
            tracing::warn!("cache.max_bytes changes take effect on restart");
        }
        if current.config.cache.disk != config.cache.disk {
            tracing::warn!("[cache.disk] changes take effect on restart");
        }
        let runtime = Runtime::build(config, Some(&current)).map_err(ServerError::Config)?;
        abort_if_crash_on_load(&runtime);
        crate::tls::installed(&runtime);
        self.state.clients.configure(&runtime.config);
        self.state.runtime.store(Arc::new(runtime));
        Ok(())
    }

    /// What the running configuration version served so far: the total (requests no service
    /// matched included) and each service that saw requests. Counts restart at zero with
    /// every reload.
    pub fn health(&self) -> (Counts, Vec<ServiceHealth>) {
        self.state.runtime.load().health()
    }

    /// Reads, validates and applies a configuration file; on any error the running
    /// configuration stays as it is.
    pub fn reload_file(&self, path: &Path) -> Result<(), ServerError> {
        let config = load_file(path).map_err(|e| ServerError::Config(e.to_string()))?;
        self.reload(config)
    }

    /// Reloads `path` on every SIGHUP, logging the outcome.
    #[cfg(unix)]
    pub fn reload_on_sighup(self: &Arc<Self>, path: PathBuf) -> std::io::Result<JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let me = Arc::clone(self);
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match me.reload_file(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
                    Err(e) => {
                        tracing::error!("configuration refused, keeping the running one:\n{e}")
                    }
                }
            }
        }))
    }

    /// Stops accepting connections at once; open connections are left to finish.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        // Queued disk writes finish; the cache directory is free for the next edge.
        self.state.store.close();
    }

    /// Graceful stop: no new connections, every open connection finishes the requests it
    /// has in progress and closes. Returns `true` if all closed within `limit`.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.shutdown();
        self.stop.send_replace(true);
        let all = self.permits.acquire_many(self.max_connections);
        matches!(tokio::time::timeout(limit, all).await, Ok(Ok(_)))
    }
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
