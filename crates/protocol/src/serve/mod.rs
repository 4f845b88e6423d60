//! Connections, from accept to close: the one serve loop of the edge's client and admin
//! listeners, the control plane's API and the demo origin. Every wait is bounded and no client
//! address can hold more than its share.
//!
//! 1. Accept, under the listener's global connection bound (further clients wait in the
//!    kernel's accept queue).
//! 2. Per-address bound (IPv6 grouped by /64): an address over it is closed at once. On a
//!    `proxy_protocol` listener this is checked with the address the header states.
//! 3. Preamble, under `first_bytes_timeout`: the PROXY header (when configured; a connection
//!    without a valid one is closed) and the first bytes that tell HTTP/1 from the h2
//!    preface. hyper-util's `auto` wait for those bytes had no deadline.
//! 4. Serving, watched by [`Activity`]: an HTTP/1 request head must be complete
//!    `header_read_timeout` after its first byte; an HTTP/1 connection with nothing in
//!    progress closes after `keepalive_timeout`, an h2 connection without an open stream after
//!    `h2_idle_timeout` (GOAWAY, then closed after a grace period), and h2 PINGs detect dead
//!    peers. A request counts as in progress until its response body is done or dropped.
//!
//! A TLS listener ([`ListenerConf::with_tls`]) does the handshake after the PROXY header,
//! within the same `first_bytes` deadline, and picks HTTP/1 or h2 by ALPN; its requests carry
//! [`TlsInfo`].

mod coalesce;
pub mod proxy_protocol;
mod stream_exec;
mod timer;
pub mod workers;

use firebreak_config::LimitsConfig;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use stream_exec::{Batched, InlineFirst};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// hyper's smallest allowed read buffer.
const MIN_BUF: usize = 8192;
/// Concurrent HTTP/2 streams per connection.
const MAX_H2_STREAMS: u32 = 256;
/// hyper's defaults against rapid reset (CVE-2023-44487) and its local-error variant, set
/// explicitly so that they stay.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes read at once while reading the preamble.
const PREAMBLE_CHUNK: usize = 512;
/// Shards of the per-address connection table.
const ADDRESS_SHARDS: usize = 64;

/// The deadlines of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From accept to the bytes that choose the protocol (PROXY header included).
    pub first_bytes: Duration,
    /// From a request head's first byte to its end (HTTP/1).
    pub head: Duration,
    /// HTTP/1 keep-alive idle time.
    pub keepalive: Duration,
    /// HTTP/2 time without an open stream.
    pub h2_idle: Duration,
    /// Longest a response write may wait on a socket that takes nothing.
    pub send: Duration,
}

impl Timeouts {
    /// The deadlines configured in `[limits]` and `[limits.clients]`.
    pub fn from_config(limits: &LimitsConfig) -> Self {
        let c = &limits.clients;
        Self {
            first_bytes: Duration::from_millis(c.first_bytes_timeout_ms),
            head: Duration::from_millis(limits.header_read_timeout_ms),
            keepalive: Duration::from_millis(c.keepalive_timeout_ms),
            h2_idle: Duration::from_millis(c.h2_idle_timeout_ms),
            send: Duration::from_millis(c.send_timeout_ms),
        }
    }
}

/// Counts a connection refused at accept (`reason`: `per_address`).
fn connection_refused(listener: &'static str, reason: &'static str) {
    metrics::counter!("firebreak_connections_refused_total", "listener" => listener, "reason" => reason)
        .increment(1);
}

/// Counts a connection closed because of a deadline or a bad preamble.
fn connection_closed(listener: &'static str, reason: &'static str) {
    metrics::counter!("firebreak_connections_closed_total", "listener" => listener, "reason" => reason)
        .increment(1);
}

/// The protocol settings of one listener, apart from its deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Protocol {
    /// Largest request head (HTTP/1 buffer, h2 header list).
    pub max_header_bytes: usize,
    /// Interval of h2 PINGs.
    pub h2_keepalive_interval: Duration,
    /// Time a PING may go unanswered before the connection is closed.
    pub h2_keepalive_timeout: Duration,
    /// Most bytes a connection's socket holds unsent (`TCP_NOTSENT_LOWAT`); `None` leaves
    /// the kernel's setting.
    pub send_queue_bytes: Option<u32>,
}

impl Protocol {
    /// The settings configured in `[limits]` and `[limits.clients]`.
    pub fn from_config(limits: &LimitsConfig) -> Self {
        Self {
            max_header_bytes: limits.max_header_bytes,
            h2_keepalive_interval: Duration::from_millis(limits.clients.h2_keepalive_interval_ms),
            h2_keepalive_timeout: Duration::from_millis(limits.clients.h2_keepalive_timeout_ms),
            send_queue_bytes: Some(limits.clients.send_queue_bytes).filter(|&b| b > 0),
        }
    }
}

/// What a request that arrived over TLS knows of its connection (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client sent (SNI), lowercased; `None` without SNI.
    pub server_name: Option<Arc<str>>,
}

/// One listener's connection settings.
pub struct ListenerConf {
    /// Metric label: `client` or `admin`.
    pub label: &'static str,
    /// Whether connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// Open connections per client address.
    pub per_address: Arc<AddressTable>,
    /// `TCP_NOTSENT_LOWAT` for accepted sockets (see [`Protocol::send_queue_bytes`]).
    send_queue_bytes: Option<u32>,
    h1: http1::Builder,
    h2: http2::Builder<InlineFirst>,
    tls: Option<TlsAcceptor>,
    /// Held weakly: the connections a worker runs hold this conf, and the owner of the
    /// workers (the edge) ends them by dropping its `Arc`.
    workers: Option<std::sync::Weak<workers::ConnectionWorkers>>,
}

impl ListenerConf {
    /// Settings from `[limits]`, with the per-address table given (shared by the client
    /// listeners; the admin listener has its own, with a smaller bound).
    pub fn new(
        label: &'static str,
        limits: &LimitsConfig,
        proxy_protocol: bool,
        per_address: Arc<AddressTable>,
    ) -> Self {
        Self::with(
            label,
            Timeouts::from_config(limits),
            Protocol::from_config(limits),
            proxy_protocol,
            per_address,
        )
    }

    /// Settings given one by one (the control plane's API has no `[limits]`).
    pub fn with(
        label: &'static str,
        timeouts: Timeouts,
        protocol: Protocol,
        proxy_protocol: bool,
        per_address: Arc<AddressTable>,
    ) -> Self {
        let mut h1 = http1::Builder::new();
        // The watchdog (`Activity`, `drive`) enforces the head and idle deadlines with one
        // timer per connection; hyper's own header timer would arm and cancel a timer (a
        // boxed sleep in the timer wheel) for every request on the hit path.
        h1.timer(timer::QuietTimer)
            .header_read_timeout(None)
            .max_buf_size(protocol.max_header_bytes.max(MIN_BUF))
            // Header count stays at hyper's default limit (100, then 431): setting any other
            // value makes hyper heap-allocate its header index on every request.
            .keep_alive(true);
        // A stream's future is polled first on its connection's task, with the other streams
        // of the same read (a hit needs no task of its own); see `stream_exec`.
        let mut h2 = http2::Builder::new(InlineFirst);
        h2.timer(timer::QuietTimer)
            .max_header_list_size(u32::try_from(protocol.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(MAX_H2_STREAMS)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
            .keep_alive_interval(protocol.h2_keepalive_interval)
            .keep_alive_timeout(protocol.h2_keepalive_timeout);
        Self {
            label,
            proxy_protocol,
            timeouts,
            per_address,
            send_queue_bytes: protocol.send_queue_bytes,
            h1,
            h2,
            tls: None,
            workers: None,
        }
    }

    /// Connections are served on `workers` (a runtime per core) instead of the runtime that
    /// accepts them, for as long as the caller keeps `workers`.
    pub fn with_workers(mut self, workers: &Arc<workers::ConnectionWorkers>) -> Self {
        self.workers = Some(Arc::downgrade(workers));
        self
    }

    /// The listener terminates TLS with `config` (certificates from its resolver at each
    /// handshake).
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(TlsAcceptor::from(config));
        self
    }

    /// Whether the listener terminates TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// The key a client address is limited under: an IPv4 address (IPv4-mapped IPv6 included),
/// or the /64 an IPv6 address belongs to (one host usually holds a whole /64).
pub fn client_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !u128::from(u64::MAX),
    }
}

/// Open connections per client address, sharded so that accepting takes no global lock.
/// Entries exist only for addresses with open connections, so the table is bounded by the
/// listener's connection bound.
pub struct AddressTable {
    shards: [Mutex<HashMap<u128, u32>>; ADDRESS_SHARDS],
    hasher: std::hash::RandomState,
    limit: u32,
}

impl AddressTable {
    /// A table allowing `limit` connections per address.
    pub fn new(limit: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: std::hash::RandomState::new(),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        }
    }

    fn shard(&self, key: u128) -> &Mutex<HashMap<u128, u32>> {
        // The index is reduced modulo the array's length, so it is always in range.
        #[allow(clippy::indexing_slicing)]
        &self.shards[(self.hasher.hash_one(key) as usize) % ADDRESS_SHARDS]
    }

    /// Takes one connection slot for `ip`, or `None` when the address holds its limit.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressGuard> {
        let key = client_key(ip);
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = shard.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(AddressGuard {
            table: self.clone(),
            key,
        })
    }

    /// Connections open from `ip`'s address group.
    pub fn count(&self, ip: IpAddr) -> u32 {
        let key = client_key(ip);
        let shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(&key).copied().unwrap_or(0)
    }
}

/// One open connection counted against its address.
pub struct AddressGuard {
    table: Arc<AddressTable>,
    key: u128,
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut shard = self
            .table
            .shard(self.key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = shard.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

/// Why a connection was closed before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    FirstBytesTimeout,
    ProxyHeader,
    Closed,
    TlsHandshake,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::FirstBytesTimeout => "first_bytes_timeout",
            Refusal::ProxyHeader => "proxy_header",
            Refusal::Closed => "closed_early",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// Reads the PROXY header (when `proxy`) and, when `sniff`, enough bytes to tell HTTP/1 from
/// h2 (a TLS listener learns that from ALPN instead). Returns the stated source address, the
/// protocol and the bytes read past the PROXY header.
async fn read_preamble(
    stream: &mut TcpStream,
    proxy: bool,
    sniff: bool,
) -> Result<(Option<SocketAddr>, Proto, Vec<u8>), Refusal> {
    use proxy_protocol::Parsed;
    let mut buf = Vec::with_capacity(PREAMBLE_CHUNK);
    let mut source = None;
    if proxy {
        loop {
            match proxy_protocol::parse(&buf).map_err(|_| Refusal::ProxyHeader)? {
                Parsed::Need(_) => read_some(stream, &mut buf).await?,
                Parsed::Done {
                    source: s,
                    consumed,
                    skip,
                } => {
                    source = s;
                    buf.drain(..consumed.min(buf.len()));
                    discard(stream, skip).await?;
                    break;
                }
            }
        }
    }
    if !sniff {
        return Ok((source, Proto::H1, buf));
    }
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if n > 0 && buf.get(..n) != H2_PREFACE.get(..n) {
            return Ok((source, Proto::H1, buf));
        }
        if n == H2_PREFACE.len() {
            return Ok((source, Proto::H2, buf));
        }
        read_some(stream, &mut buf).await?;
    }
}

/// One read of at most [`PREAMBLE_CHUNK`] bytes appended to `buf`; end of stream is an error.
async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Refusal> {
    let mut chunk = [0u8; PREAMBLE_CHUNK];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => Err(Refusal::Closed),
        Ok(n) => {
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            Ok(())
        }
    }
}

/// Reads and drops exactly `n` bytes (PROXY v2 TLVs), never more.
async fn discard(stream: &mut TcpStream, mut n: usize) -> Result<(), Refusal> {
    let mut chunk = [0u8; PREAMBLE_CHUNK];
    while n > 0 {
        let want = n.min(chunk.len());
        let part = chunk.get_mut(..want).unwrap_or_default();
        match stream.read(part).await {
            Ok(0) | Err(_) => return Err(Refusal::Closed),
            Ok(got) => n = n.saturating_sub(got),
        }
    }
    Ok(())
}

/// What one connection is doing, shared by its IO, its requests and its watchdog. Times are
/// milliseconds since the connection was accepted.
pub(crate) struct Activity {
    base: Instant,
    /// Requests begun whose response body is not finished (or dropped) yet.
    in_flight: AtomicU32,
    /// When `in_flight` last dropped to zero.
    idle_since: AtomicU64,
    /// HTTP/1: 1 + when the first byte of the next request head arrived; 0 = none yet.
    head_started: AtomicU64,
    /// Whether reads mark head starts (HTTP/1 only; h2 reads PINGs and SETTINGS anytime).
    track_heads: bool,
    /// 1 + when a write found the socket full and has not got through since; 0 = none.
    write_blocked: AtomicU64,
}

impl Activity {
    fn new(track_heads: bool) -> Self {
        Self {
            base: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            // The preamble bytes are the first request's head starting.
            head_started: AtomicU64::new(if track_heads { 1 } else { 0 }),
            track_heads,
            write_blocked: AtomicU64::new(0),
        }
    }

    /// A write returned `Pending` (the socket is full) or got through.
    fn write_progress(&self, blocked: bool) {
        let stamped = self.write_blocked.load(Ordering::Relaxed) != 0;
        if blocked && !stamped {
            self.write_blocked
                .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
        } else if !blocked && stamped {
            self.write_blocked.store(0, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        RequestGuard(self.clone())
    }

    fn read_bytes(&self) {
        if self.track_heads
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
        {
            self.head_started
                .store(self.now_ms().saturating_add(1), Ordering::Release);
        }
    }

    /// What the watchdog does now: a write stalled for `send` ends the connection; other
    /// waits are capped so that a stall is noticed in time.
    fn verdict(&self, t: &Timeouts) -> Verdict {
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        if blocked == 0 {
            return self.deadlines(t);
        }
        let send = u64::try_from(t.send.as_millis()).unwrap_or(u64::MAX);
        let waited = self.now_ms().saturating_sub(blocked - 1);
        match send.checked_sub(waited) {
            Some(left) if left > 0 => match self.deadlines(t) {
                Verdict::Wait(d) => Verdict::Wait(d.min(Duration::from_millis(left))),
                other => other,
            },
            _ => Verdict::SendStalled,
        }
    }

    fn deadlines(&self, t: &Timeouts) -> Verdict {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Verdict::Wait(t.keepalive.min(t.h2_idle).min(t.head));
        }
        let head = ms(t.head);
        if self.track_heads {
            let started = self.head_started.load(Ordering::Acquire);
            if started > 0 {
                let deadline = (started - 1).saturating_add(head);
                return match deadline.checked_sub(now) {
                    Some(left) if left > 0 => Verdict::Wait(Duration::from_millis(left)),
                    _ if self.in_flight.load(Ordering::Acquire) > 0 => Verdict::Wait(t.head),
                    _ => Verdict::HeadTooSlow,
                };
            }
        }
        let idle = ms(if self.track_heads {
            t.keepalive
        } else {
            t.h2_idle
        });
        let deadline = self.idle_since.load(Ordering::Acquire).saturating_add(idle);
        match deadline.checked_sub(now) {
            // A head that starts while idle must be noticed within `head`.
            Some(left) if left > 0 => Verdict::Wait(Duration::from_millis(if self.track_heads {
                left.min(head)
            } else {
                left
            })),
            _ if self.in_flight.load(Ordering::Acquire) > 0 => Verdict::Wait(t.head),
            _ => Verdict::Idle,
        }
    }
}

enum Verdict {
    Wait(Duration),
    /// The client has taken no bytes for `send`: it stopped reading.
    SendStalled,
    HeadTooSlow,
    Idle,
}

/// Holds one request in progress; dropped with the response body.
pub(crate) struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Idle time is stamped before the count drops, so the watchdog never sees an idle
        // connection with an old stamp.
        self.0.idle_since.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in progress until it is done.
    pub(crate) struct Tracked<B> {
        #[pin]
        body: B,
        guard: RequestGuard,
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket with the bytes read before serving (the preamble) replayed first.
struct Replay<S> {
    inner: S,
    prefix: Vec<u8>,
    pos: usize,
}

impl<S> Replay<S> {
    fn new(inner: S, prefix: Vec<u8>) -> Self {
        Self {
            inner,
            prefix,
            pos: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if let Some(rest) = me.prefix.get(me.pos..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            me.pos += n;
            if me.pos >= me.prefix.len() {
                me.prefix = Vec::new();
                me.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The connection's stream (the socket with its preamble replayed, or the TLS stream over
/// it), telling the watchdog when bytes arrive and when writes stall.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            me.activity.read_bytes();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        me.activity.write_progress(r.is_pending());
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        me.activity.write_progress(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Resolves once `stop` turns `true` (never, if the sender is gone without stopping).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The accept queue a listener asks for (the kernel caps it at `net.core.somaxconn`).
/// tokio's default is 1024: when thousands of clients connect at once — every edge of a fleet
/// after a control-plane restart — a full queue drops their handshakes, and a SYN-cookie
/// connection whose ACK finds the queue full is reset.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` (address reuse on, as `TcpListener::bind`) with an
/// accept queue of [`LISTEN_BACKLOG`].
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `listener` until the task is aborted and serves each with
/// `handler(request, client address)`. `permits` bounds the listener's open connections;
/// open connections finish gracefully when `stop` turns `true`.
pub async fn accept_loop<H, F, B>(
    listener: TcpListener,
    conf: Arc<ListenerConf>,
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, IpAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
        // Per address first: one address can never take the whole listener.
        let address = if conf.proxy_protocol {
            None
        } else {
            match conf.per_address.try_acquire(peer.ip()) {
                Some(g) => Some(g),
                None => {
                    connection_refused(conf.label, "per_address");
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = conf.send_queue_bytes {
            if let Err(e) = firebreak_zerocopy::sockopt::set_notsent_lowat(&stream, bytes) {
                tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
            }
        }
        let handler = handler.clone();
        let stop = stop.clone();
        let Some(workers) = conf.workers.as_ref().and_then(std::sync::Weak::upgrade) else {
            let conf = conf.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _address = address;
                connection(stream, peer, conf, stop, handler).await;
            });
            continue;
        };
        // The socket moves to the worker's reactor: it is registered there, not here.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker");
                continue;
            }
        };
        let conf = conf.clone();
        workers.spawn(async move {
            let _permit = permit;
            let _address = address;
            match TcpStream::from_std(stream) {
                Ok(stream) => connection(stream, peer, conf, stop, handler).await,
                Err(e) => tracing::warn!(error = %e, "a worker cannot take a connection"),
            }
        });
    }
}

/// Serves one connection from its preamble to its end. This future is the connection's task
/// for as long as it is open — for a control-plane long-poll, as long as the edge waits — so
/// it keeps inline only what every connection uses and boxes the rest (the TLS handshake and
/// stream, each protocol's connection).
async fn connection<H, F, B>(
    mut stream: TcpStream,
    peer: SocketAddr,
    conf: Arc<ListenerConf>,
    stop: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, IpAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let t = conf.timeouts;
    let deadline = tokio::time::Instant::now() + t.first_bytes;
    let preamble = tokio::time::timeout_at(
        deadline,
        read_preamble(&mut stream, conf.proxy_protocol, conf.tls.is_none()),
    )
    .await;
    let (source, proto, prefix) = match preamble {
        Ok(Ok(p)) => p,
        Ok(Err(refusal)) => {
            connection_closed(conf.label, refusal.label());
            tracing::debug!(%peer, reason = refusal.label(), "connection closed before serving");
            return;
        }
        Err(_) => {
            connection_closed(conf.label, Refusal::FirstBytesTimeout.label());
            return;
        }
    };
    let client_ip = source.map_or(peer.ip(), |s| s.ip());
    let _address = if conf.proxy_protocol {
        match conf.per_address.try_acquire(client_ip) {
            Some(g) => Some(g),
            None => {
                connection_refused(conf.label, "per_address");
                return;
            }
        }
    } else {
        None
    };
    // Plain responses whose bodies lie in zero-copy pages go out with sendfile.
    let io = Replay::new(firebreak_zerocopy::SendStream::new(stream), prefix);
    let Some(acceptor) = conf.tls.clone() else {
        return serve(io, proto, None, client_ip, &conf, stop, handler).await;
    };
    // The handshake and the TLS stream are boxed: this task lives as long as the
    // connection, and inline they would make every connection's task as large as a TLS one
    // in its handshake (see `serve`).
    // The handshake is part of the preamble: it shares its deadline.
    let tls = match tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(io))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            connection_closed(conf.label, Refusal::TlsHandshake.label());
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            connection_closed(conf.label, Refusal::FirstBytesTimeout.label());
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let proto = if session.alpn_protocol() == Some(b"h2".as_slice()) {
        Proto::H2
    } else {
        Proto::H1
    };
    let info = TlsInfo {
        server_name: session
            .server_name()
            .map(|name| Arc::from(name.to_ascii_lowercase())),
    };
    let served = serve(tls, proto, Some(info), client_ip, &conf, stop, handler);
    Box::pin(served).await
}

/// Serves HTTP on an established stream (after the preamble and any TLS handshake).
async fn serve<S, H, F, B>(
    io: S,
    proto: Proto,
    tls: Option<TlsInfo>,
    client_ip: IpAddr,
    conf: &ListenerConf,
    stop: watch::Receiver<bool>,
    handler: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, IpAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let t = conf.timeouts;
    let activity = Arc::new(Activity::new(proto == Proto::H1));
    // h2 gathers the frames one poll writes into one write (see `coalesce`); the watchdog
    // sits below, so it sees the writes that reach the socket and their stalls.
    let io = Watched {
        inner: io,
        activity: activity.clone(),
    };
    let act = activity.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let guard = act.begin();
        if let Some(info) = &tls {
            req.extensions_mut().insert(info.clone());
        }
        let response = handler(req, client_ip);
        async move {
            let response = response.await;
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked { body, guard }))
        }
    });
    let label = conf.label;
    // Each protocol's connection is boxed: a future is as large as its largest state, so
    // inline, every HTTP/1 connection would reserve the room an h2 connection needs (see
    // `connection`).
    match proto {
        Proto::H1 => {
            let conn = conf.h1.serve_connection(TokioIo::new(io), service);
            let run = drive(conn, |c| c.graceful_shutdown(), &activity, &t, stop, label);
            Box::pin(run).await
        }
        Proto::H2 => {
            let io = coalesce::Coalesced::new(io);
            let flusher = io.flusher();
            let conn = Batched::new(conf.h2.serve_connection(TokioIo::new(io), service), flusher);
            let run = drive(
                conn,
                |c| c.conn().graceful_shutdown(),
                &activity,
                &t,
                stop,
                label,
            );
            Box::pin(run).await
        }
    }
}

/// Runs a connection to its end under the watchdog: a slow head is cut off, an idle
/// connection is shut down gracefully and dropped if it does not close within a grace
/// period; when `stop` turns `true` the connection finishes what it has in progress.
async fn drive<C>(
    conn: C,
    shutdown: fn(Pin<&mut C>),
    activity: &Activity,
    t: &Timeouts,
    stop: watch::Receiver<bool>,
    label: &'static str,
) where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(conn);
    let check = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(check);
    let stopping = stopped(stop);
    tokio::pin!(stopping);
    let mut shut = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with error");
                }
                return;
            }
            () = &mut check => match activity.verdict(t) {
                Verdict::Wait(d) => check.as_mut().reset(tokio::time::Instant::now() + d),
                Verdict::HeadTooSlow => {
                    connection_closed(label, "head_timeout");
                    return;
                }
                Verdict::SendStalled => {
                    connection_closed(label, "send_timeout");
                    return;
                }
                Verdict::Idle if shut => return,
                Verdict::Idle => {
                    connection_closed(label, "idle");
                    shutdown(conn.as_mut());
                    shut = true;
                    // Whatever the peer does with GOAWAY, the connection is gone after this.
                    check.as_mut().reset(tokio::time::Instant::now() + t.first_bytes.min(t.head));
                }
            },
            () = &mut stopping, if !shut => {
                shutdown(conn.as_mut());
                shut = true;
            }
        }
    }
}
