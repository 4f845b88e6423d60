//! The DNS server: UDP on plain threads, TCP and the admin listener on tokio.
//!
//! UDP: `threads` sockets bound to the same address with `SO_REUSEPORT` (the kernel spreads
//! clients over them by their address and port), one thread each running a blocking
//! `recv_from` → [`answer`] → `send_to` loop with a receive and a response buffer allocated
//! once. A query reads the zone through `ArcSwap::load` (no reference count taken, no lock),
//! so [`DnsServer::reload`] swaps the whole version atomically: a query is answered entirely
//! from one version.
//!
//! TCP (RFC 7766) and the admin listener (`GET /metrics`, `GET /healthz`) run on the tokio
//! runtime `start` is called from; see [`crate::tcp`] and [`crate::admin`].

use crate::answer::{answer, Outcome, Transport, Zone};
use crate::metrics::{DropReason, Metrics, Shard};
use crate::tcp::{self, TcpLimits};
use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io;
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Largest UDP datagram read: anything longer is cut by the kernel and then fails to parse.
const RECV_BUFFER: usize = 65_536;
/// Socket buffer sizes asked for (the kernel caps them at `net.core.[rw]mem_max`): room for
/// bursts while a thread is busy.
const SOCKET_BUFFER: usize = 4 << 20;
/// Most UDP threads (one per core is the intent; more only adds contention).
pub const MAX_THREADS: usize = 256;

/// Where and how to serve.
#[derive(Clone)]
pub struct ServerConfig {
    /// UDP address (port 0: any free port).
    pub udp: SocketAddr,
    /// TCP address; `None`: no TCP. Port 0 with the same IP as `udp`: the UDP port.
    pub tcp: Option<SocketAddr>,
    /// Admin (HTTP) address; `None`: none.
    pub admin: Option<SocketAddr>,
    /// UDP threads (at least 1, at most [`MAX_THREADS`]).
    pub threads: usize,
    /// TCP bounds.
    pub tcp_limits: TcpLimits,
    /// More series for the admin `/metrics` (the process's recorder: the POP checks).
    pub extra_metrics: Option<crate::metrics::ExtraMetrics>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .field("admin", &self.admin)
            .field("threads", &self.threads)
            .field("tcp_limits", &self.tcp_limits)
            .field("extra_metrics", &self.extra_metrics.is_some())
            .finish()
    }
}

impl ServerConfig {
    /// UDP and TCP on `addr`, no admin, one UDP thread per CPU, default TCP bounds.
    pub fn new(addr: SocketAddr) -> ServerConfig {
        ServerConfig {
            udp: addr,
            tcp: Some(addr),
            admin: None,
            threads: default_threads(),
            tcp_limits: TcpLimits::default(),
            extra_metrics: None,
        }
    }
}

/// One UDP thread per CPU.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A running server; dropping it stops it (UDP threads are joined).
pub struct DnsServer {
    zone: Arc<ArcSwap<Zone>>,
    metrics: Arc<Metrics>,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    udp_sockets: Vec<UdpSocket>,
    threads: Vec<JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DnsServer {
    /// Binds every listener and starts serving `zone`. Must be called within a tokio
    /// runtime (TCP and admin run on it).
    pub async fn start(config: ServerConfig, zone: Zone) -> io::Result<DnsServer> {
        let zone = Arc::new(ArcSwap::from_pointee(zone));
        let metrics = Metrics::new();
        if let Some(extra) = config.extra_metrics.clone() {
            metrics.set_extra(extra);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads = config.threads.clamp(1, MAX_THREADS);

        let (sockets, tcp_listener) = bind_udp_and_tcp(&config, threads)?;
        let udp_addr = sockets
            .first()
            .ok_or_else(|| io::Error::other("no UDP socket"))?
            .local_addr()?;
        let mut tasks = Vec::new();
        let tcp_addr = match tcp_listener {
            Some(listener) => {
                let bound = listener.local_addr()?;
                tasks.push(tokio::spawn(tcp::serve(
                    listener,
                    Arc::clone(&zone),
                    metrics.shard(),
                    config.tcp_limits.clone(),
                )));
                Some(bound)
            }
            None => None,
        };
        let admin_addr = match config.admin {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let bound = listener.local_addr()?;
                tasks.push(tokio::spawn(crate::admin::serve(
                    listener,
                    Arc::clone(&metrics),
                )));
                Some(bound)
            }
            None => None,
        };

        let mut handles = Vec::with_capacity(threads);
        let mut kept = Vec::with_capacity(threads);
        for (i, socket) in sockets.into_iter().enumerate() {
            kept.push(socket.try_clone()?);
            let zone = Arc::clone(&zone);
            let shard = metrics.shard();
            let stop = Arc::clone(&stop);
            let h = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || udp_loop(&socket, &zone, &shard, &stop))?;
            handles.push(h);
        }
        Ok(DnsServer {
            zone,
            metrics,
            udp_addr,
            tcp_addr,
            admin_addr,
            stop,
            udp_sockets: kept,
            threads: handles,
            tasks,
        })
    }

    /// Serves `zone` from now on (queries in progress finish with the version they began with).
    pub fn reload(&self, zone: Zone) {
        self.zone.store(Arc::new(zone));
    }

    /// The version being served.
    pub fn zone(&self) -> Arc<Zone> {
        self.zone.load_full()
    }

    /// The UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// The TCP address, if TCP is served.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The admin address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops every listener; UDP threads are joined.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        for s in &self.udp_sockets {
            // Wakes a thread blocked in recv_from (Linux: recv returns 0 after SHUT_RD,
            // even on an unconnected UDP socket, which reports ENOTCONN but is woken).
            let _ = SockRef::from(s).shutdown(Shutdown::Read);
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds the UDP sockets and the TCP listener. With port 0 for both on one IP, TCP takes
/// the port UDP got (tried again with a new port, a few times, if that TCP port is taken).
fn bind_udp_and_tcp(
    config: &ServerConfig,
    threads: usize,
) -> io::Result<(Vec<UdpSocket>, Option<tokio::net::TcpListener>)> {
    const ATTEMPTS: usize = 16;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let first = bind_udp(config.udp)?;
        let udp_addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..threads {
            sockets.push(bind_udp(udp_addr)?);
        }
        let Some(mut addr) = config.tcp else {
            return Ok((sockets, None));
        };
        let follows_udp = addr.port() == 0 && addr.ip() == udp_addr.ip();
        if follows_udp {
            addr.set_port(udp_addr.port());
        }
        match tcp::bind(addr) {
            Ok(listener) => return Ok((sockets, Some(listener))),
            Err(e)
                if follows_udp
                    && config.udp.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && attempt < ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: a smaller buffer only means fewer queries absorbed in a burst.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn udp_loop(socket: &UdpSocket, zone: &ArcSwap<Zone>, shard: &Shard, stop: &AtomicBool) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut out = Vec::with_capacity(crate::answer::MAX_MESSAGE);
    loop {
        let received = socket.recv_from(&mut buf);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (n, from) = match received {
            Ok(r) => r,
            // ICMP errors of earlier sends surface here (ECONNREFUSED...): not ours to handle.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("dns udp receive: {e}");
                continue;
            }
        };
        let Some(query) = buf.get(..n) else {
            continue;
        };
        let received_at = std::time::Instant::now();
        let current = zone.load();
        // `answer` does not panic (no unwrap, indexing or slicing; fuzzed). Should it ever,
        // the query is dropped and counted, and the thread goes on serving: a dead thread
        // would silently lose every client the kernel hashes to its socket.
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            answer(&current, query, from.ip(), Transport::Udp, &mut out)
        }));
        let Ok(outcome) = answered else {
            shard.dropped(DropReason::Panic);
            continue;
        };
        if let Outcome::Reply(_) = outcome {
            if let Err(e) = socket.send_to(&out, from) {
                tracing::debug!("dns udp send to {from}: {e}");
            }
        }
        shard.record(&current, &outcome, received_at.elapsed());
    }
}
