//! Listeners, connections and configuration reloads.
//!
//! Each listener accepts HTTP/1.1 (keep-alive) and cleartext HTTP/2 with prior knowledge on
//! the same port. A reload builds a complete new [`Runtime`] and swaps it atomically; requests
//! already running finish on the version they started with.

use crate::proxy::{handle, EdgeState};
use crate::runtime::Runtime;
use crate::store::MemoryStore;
use crate::telemetry::{self, AccessLog};
use firebreak_config::{load_file, ValidConfig};
use firebreak_protocol::health::{Counts, ServiceHealth};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// hyper's smallest allowed read buffer.
const MIN_BUF: usize = 8192;
/// Concurrent HTTP/2 streams per connection.
const MAX_H2_STREAMS: u32 = 256;

/// Starts edges.
pub struct EdgeServer;

/// A running edge: its bound addresses, state, and the means to reload or stop it.
pub struct EdgeHandle {
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    state: Arc<EdgeState>,
    tasks: Vec<JoinHandle<()>>,
    /// Flipped to `true` to ask every open connection to finish gracefully.
    stop: watch::Sender<bool>,
    /// One permit per open connection; all permits back means all connections closed.
    permits: Arc<Semaphore>,
    max_connections: u32,
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
        let store = Arc::new(
            MemoryStore::new(config.cache.max_bytes, config.cache.max_object_bytes)
                .with_fill_budget(config.fetch.fill_budget(&config.cache)),
        );
        let limits = config.limits.clone();
        let listen: Vec<SocketAddr> = config.listeners.iter().map(|l| l.addr).collect();
        let admin = config.admin.clone();
        let access_log = match &config.access_log {
            Some(log) => Some(AccessLog::open(&log.path).map_err(|e| {
                ServerError::Config(format!("access_log.path `{}`: {e}", log.path))
            })?),
            None => None,
        };
        // Install the metrics recorder before the first request is counted.
        let _ = telemetry::prometheus();
        let runtime = Runtime::build(config, None).map_err(ServerError::Config)?;
        abort_if_crash_on_load(&runtime);
        let state = Arc::new(EdgeState::new(runtime, store, access_log));
        let mut listeners = Vec::new();
        for addr in listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            listeners.push(l);
        }
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
            .max_buf_size(limits.max_header_bytes.max(MIN_BUF))
            // Header count stays at hyper's default limit (100, then 431): setting any other
            // value makes hyper heap-allocate its header index on every request.
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(MAX_H2_STREAMS);
        let builder = Arc::new(builder);
        let mut tasks = Vec::new();
        let max_connections = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        let permits = Arc::new(Semaphore::new(max_connections as usize));
        let (stop, _) = watch::channel(false);
        let admin_addr = match admin.and_then(|a| a.listen) {
            Some(listen) => {
                let (addr, task) = crate::admin::start(listen, state.clone(), stop.subscribe())
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
        for listener in listeners {
            addrs.push(listener.local_addr().map_err(|source| ServerError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?);
            tasks.push(tokio::spawn(accept_loop(
                listener,
                state.clone(),
                builder.clone(),
                permits.clone(),
                stop.subscribe(),
            )));
        }
        Ok(EdgeHandle {
            addrs,
            admin_addr,
            state,
            tasks,
            stop,
            permits,
            max_connections,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<EdgeState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    loop {
        // Bound concurrent connections: beyond the limit, clients wait in the kernel backlog.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let client_ip = peer.ip();
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(state, req, client_ip).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped(stop) => {
                    // Finish the requests in progress, then close (HTTP/2: GOAWAY).
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with error");
            }
            drop(permit);
        });
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

/// Resolves once `stop` turns `true` (never, if the handle is gone without stopping).
async fn stopped(mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl EdgeHandle {
    /// Addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
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
        if current.config.admin.as_ref().map(|a| a.listen)
            != config.admin.as_ref().map(|a| a.listen)
            || current.config.access_log != config.access_log
        {
            tracing::warn!("admin listener and access log changes take effect on restart");
        }
        if current.config.cache.max_bytes != config.cache.max_bytes {
            tracing::warn!("cache.max_bytes changes take effect on restart");
        }
        let runtime = Runtime::build(config, Some(&current)).map_err(ServerError::Config)?;
        abort_if_crash_on_load(&runtime);
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
