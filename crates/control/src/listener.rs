//! Serving the API: the shared serve loop ([`firebreak_protocol::serve`], the one the edge's
//! listeners use) with the control plane's own bounds ([`ApiLimits`]).
//!
//! - Connections: at most `max_connections` open (further clients wait in the kernel's accept
//!   queue), at most `max_connections_per_address` from one address (IPv6 by /64).
//! - A connection that sends nothing, or a request head that does not complete, is closed after
//!   `header_read_timeout` (before, an idle connection was kept forever and a few thousand
//!   exhausted the file descriptors). An HTTP/1 connection with no request in progress closes
//!   after `idle_timeout`; an h2 connection without a stream too (GOAWAY), and h2 PINGs every
//!   `h2_keepalive_interval` find dead peers. A long-poll is a request in progress: it is never
//!   idle.
//! - Request bodies: see [`crate::bounded_body`] (size, time and memory bounds; JSON errors).
//!
//! On shutdown the listener stops accepting, long-polls end at once and every connection
//! finishes what it has in progress, for at most [`SHUTDOWN_GRACE`].

use crate::auth::Access;
use crate::bounded_body::{self, BodyBounds};
use crate::plane::Plane;
use axum::Router;
use firebreak_protocol::api::MAX_API_BODY_BYTES;
use firebreak_protocol::serve::{accept_loop, AddressTable, ListenerConf, Protocol, Timeouts};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// Default bound on open API connections (each edge holds one for its long-poll).
pub const MAX_CONNECTIONS: usize = 50_000;
/// Longest the server waits for open connections to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Largest request head.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Shortest and longest timeout accepted.
const MIN_TIMEOUT: Duration = Duration::from_millis(50);
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most connections the setting accepts.
const MAX_MAX_CONNECTIONS: usize = 1_000_000;

/// The API listener's bounds. [`ApiLimits::default`] is what an operator gets without flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Open connections (default 50,000).
    pub max_connections: usize,
    /// Open connections from one address (default: `max_connections`; edges behind one NAT
    /// share an address).
    pub max_connections_per_address: usize,
    /// From accept to a complete request head, and from a head's first byte to its end
    /// (default 10 s).
    pub header_read_timeout: Duration,
    /// A connection with no request in progress (HTTP/1 keep-alive, h2 without a stream)
    /// (default 60 s).
    pub idle_timeout: Duration,
    /// A response write that finds the socket full for this long closes the connection
    /// (default 60 s).
    pub send_timeout: Duration,
    /// Interval of h2 PINGs, and the time one may go unanswered (default 20 s).
    pub h2_keepalive: Duration,
    /// From the request head to the request body's last byte (default 10 s); then 408.
    pub body_timeout: Duration,
    /// Largest request body (default [`MAX_API_BODY_BYTES`]); a larger `Content-Length` is
    /// refused with 413 before anything is read.
    pub max_body_bytes: usize,
    /// Bytes of request bodies being read at once, over all connections (default 64 MiB); a
    /// request that cannot get its share within `body_timeout` is answered 503.
    pub body_budget_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_connections_per_address: MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            h2_keepalive: Duration::from_secs(20),
            body_timeout: Duration::from_secs(10),
            max_body_bytes: MAX_API_BODY_BYTES,
            body_budget_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct LimitError {
    /// The setting (its command-line flag's name without dashes).
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ApiLimits {
    /// Checks every setting's range; the error names the setting.
    pub fn validate(&self) -> Result<(), LimitError> {
        let err = |setting, message: String| Err(LimitError { setting, message });
        for (setting, d) in [
            ("header-read-timeout-ms", self.header_read_timeout),
            ("idle-timeout-ms", self.idle_timeout),
            ("send-timeout-ms", self.send_timeout),
            ("h2-keepalive-ms", self.h2_keepalive),
            ("body-timeout-ms", self.body_timeout),
        ] {
            if d < MIN_TIMEOUT || d > MAX_TIMEOUT {
                return err(
                    setting,
                    format!(
                        "{} ms is out of range: between {} ms and {} ms",
                        d.as_millis(),
                        MIN_TIMEOUT.as_millis(),
                        MAX_TIMEOUT.as_millis()
                    ),
                );
            }
        }
        if self.max_connections == 0 || self.max_connections > MAX_MAX_CONNECTIONS {
            return err(
                "max-connections",
                format!(
                    "{} is out of range: between 1 and {MAX_MAX_CONNECTIONS}",
                    self.max_connections
                ),
            );
        }
        if self.max_connections_per_address == 0
            || self.max_connections_per_address > self.max_connections
        {
            return err(
                "max-connections-per-address",
                format!(
                    "{} is out of range: between 1 and max-connections ({})",
                    self.max_connections_per_address, self.max_connections
                ),
            );
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_API_BODY_BYTES {
            return err(
                "max-body-bytes",
                format!(
                    "{} is out of range: between 1 and {MAX_API_BODY_BYTES}",
                    self.max_body_bytes
                ),
            );
        }
        if self.body_budget_bytes < self.max_body_bytes
            || u32::try_from(self.body_budget_bytes).is_err()
        {
            return err(
                "body-budget-bytes",
                format!(
                    "{} is out of range: at least max-body-bytes ({}) and below 4 GiB",
                    self.body_budget_bytes, self.max_body_bytes
                ),
            );
        }
        Ok(())
    }

    fn listener_conf(&self) -> ListenerConf {
        ListenerConf::with(
            "control",
            Timeouts {
                first_bytes: self.header_read_timeout,
                head: self.header_read_timeout,
                keepalive: self.idle_timeout,
                h2_idle: self.idle_timeout,
                send: self.send_timeout,
            },
            Protocol {
                max_header_bytes: MAX_HEADER_BYTES,
                h2_keepalive_interval: self.h2_keepalive,
                h2_keepalive_timeout: self.h2_keepalive,
                // API answers are small: the kernel's setting.
                send_queue_bytes: None,
            },
            false,
            Arc::new(AddressTable::new(self.max_connections_per_address)),
        )
    }
}

/// A running API server.
pub struct ControlServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    permits: Arc<Semaphore>,
    max_connections: u32,
}

impl ControlServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits (at most [`SHUTDOWN_GRACE`]) for open requests; long-polls
    /// end at once.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // The listening socket is closed once the aborted task is gone: the port is free.
        let _ = (&mut self.task).await;
        self.stop.send_replace(true);
        let all = self.permits.acquire_many(self.max_connections);
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace period");
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        self.stop.send_replace(true);
    }
}

/// Binds `listen` and serves the API in the background with the default [`ApiLimits`].
pub async fn serve(
    listen: SocketAddr,
    plane: Arc<Plane>,
    access: Access,
) -> std::io::Result<ControlServer> {
    serve_with(listen, plane, access, ApiLimits::default()).await
}

/// Binds `listen` and serves the API in the background within `limits`.
pub async fn serve_with(
    listen: SocketAddr,
    plane: Arc<Plane>,
    access: Access,
    limits: ApiLimits,
) -> std::io::Result<ControlServer> {
    serve_maybe_tls(listen, plane, access, limits, None).await
}

/// [`serve_with`] over HTTPS with `tls` ([`crate::https::server_config`]); cleartext when
/// `None`.
pub async fn serve_maybe_tls(
    listen: SocketAddr,
    plane: Arc<Plane>,
    access: Access,
    limits: ApiLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<ControlServer> {
    limits
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = firebreak_protocol::serve::bind_listener(listen)?;
    let addr = listener.local_addr()?;
    let (stop, rx) = watch::channel(false);
    let bounds = BodyBounds::new(&limits);
    let app: Router = crate::api::router_served(plane, access, rx.clone(), bounds, tls.is_some());
    let max_connections = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let permits = Arc::new(Semaphore::new(max_connections as usize));
    let conf = match tls {
        Some(tls) => limits.listener_conf().with_tls(tls),
        None => limits.listener_conf(),
    };
    let conf = Arc::new(conf);
    let handler = move |req: http::Request<hyper::body::Incoming>, _client| {
        let app = app.clone();
        async move {
            let response = match app.oneshot(req.map(axum::body::Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            bounded_body::json_errors(response).await
        }
    };
    let task = tokio::spawn(accept_loop(listener, conf, permits.clone(), rx, handler));
    Ok(ControlServer {
        addr,
        stop,
        task,
        permits,
        max_connections,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ApiLimits::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let bad = [
            (
                ApiLimits {
                    header_read_timeout: Duration::ZERO,
                    ..ApiLimits::default()
                },
                "header-read-timeout-ms",
            ),
            (
                ApiLimits {
                    body_timeout: Duration::from_secs(86_400),
                    ..ApiLimits::default()
                },
                "body-timeout-ms",
            ),
            (
                ApiLimits {
                    max_connections: 0,
                    ..ApiLimits::default()
                },
                "max-connections",
            ),
            (
                ApiLimits {
                    max_connections: 10,
                    max_connections_per_address: 11,
                    ..ApiLimits::default()
                },
                "max-connections-per-address",
            ),
            (
                ApiLimits {
                    max_body_bytes: MAX_API_BODY_BYTES + 1,
                    ..ApiLimits::default()
                },
                "max-body-bytes",
            ),
            (
                ApiLimits {
                    body_budget_bytes: 1,
                    ..ApiLimits::default()
                },
                "body-budget-bytes",
            ),
        ];
        for (limits, setting) in bad {
            assert_eq!(limits.validate().unwrap_err().setting, setting);
        }
    }
}
