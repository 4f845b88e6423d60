//! DNS over TCP (RFC 7766): each message preceded by its 16-bit length, several queries per
//! connection answered in order.
//!
//! Bounds: at most `max_connections_per_address` open from one client address (IPv6: its
//! /64; beyond, refused: a client neither takes every slot nor evicts others), at most
//! `max_connections` open in all; when full, a new connection takes the place of
//! the oldest one that is waiting for a query (RFC 7766 §6.2.3 lets a server close idle
//! connections under pressure), and is refused only when every connection is in the middle
//! of a query. A connection must send its first query within `first_bytes_timeout` (a flood
//! of connections that never send is closed within it) and each later one within
//! `idle_timeout`; a message must arrive whole within the same timeout once its length has
//! come; a response must be taken by the client within `write_timeout`; after
//! `max_queries` the connection is closed. Messages are at most 65535 bytes (the prefix is
//! 16 bits); a prefix shorter than a DNS header closes the connection.

use crate::answer::{answer, Outcome, Transport, Zone};
use crate::metrics::{DropReason, Shard};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// TCP bounds.
#[derive(Clone, Debug)]
pub struct TcpLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: one /64), so that one client
    /// cannot take every slot, nor evict every other client's idle connection.
    pub max_connections_per_address: usize,
    /// Time for a new connection's first query to arrive whole.
    pub first_bytes_timeout: Duration,
    /// Time for each later query to begin arriving, and for any query to arrive whole.
    pub idle_timeout: Duration,
    /// Time for the client to take a response.
    pub write_timeout: Duration,
    /// Queries answered on one connection before it is closed.
    pub max_queries: u32,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            // A few resolvers keep a connection each; more is a flood.
            max_connections: 1024,
            // A resolver needs a few; a /64 of resolvers rarely more than this.
            max_connections_per_address: 64,
            // A resolver that opened a connection sends at once.
            first_bytes_timeout: Duration::from_secs(2),
            // RFC 7766 §6.2.3 suggests seconds, not minutes.
            idle_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            max_queries: 1000,
        }
    }
}

/// Binds the TCP listener (with `SO_REUSEADDR` so that a restart does not wait for
/// TIME_WAIT). Must be called within a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Connections waiting for a query, oldest first: the ones a new connection may replace.
#[derive(Default)]
struct Waiting {
    by_age: Mutex<BTreeMap<u64, Arc<Notify>>>,
}

impl Waiting {
    fn add(&self, id: u64, n: &Arc<Notify>) {
        self.lock().insert(id, Arc::clone(n));
    }
    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
    /// Tells the oldest waiting connection to close; false if none is waiting.
    fn evict_oldest(&self) -> bool {
        match self.lock().pop_first() {
            Some((_, n)) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Notify>>> {
        self.by_age.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Connections open per client address (IPv6 by /64).
#[derive(Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// The address a client is counted under: IPv4 as is (also when mapped into IPv6), IPv6
    /// by its /64 (one host's many addresses are one client).
    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
            },
        }
    }

    /// Counts one more connection of `key`, unless it has `max` already.
    fn take(&self, key: IpAddr, max: usize) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, key: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

/// Gives back a connection's count of its address when dropped.
struct AddressSlot {
    per_address: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.per_address.give_back(self.key);
    }
}

/// Frees a connection's slots (global and its address's) when it ends, however it ends.
struct Slot {
    open: Arc<AtomicUsize>,
    _address: AddressSlot,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts and serves connections until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    zone: Arc<ArcSwap<Zone>>,
    shard: Arc<Shard>,
    limits: TcpLimits,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let per_address = Arc::new(PerAddress::default());
    let waiting = Arc::new(Waiting::default());
    let ids = AtomicU64::new(0);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!("dns tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The client's own share first: a client at its bound neither gets a slot nor evicts
        // anyone else's idle connection.
        let key = PerAddress::key(peer.ip());
        if !per_address.take(key, limits.max_connections_per_address.max(1)) {
            shard.dropped(DropReason::TcpAddressFull);
            drop(stream);
            continue;
        }
        let address = AddressSlot {
            per_address: Arc::clone(&per_address),
            key,
        };
        if open.load(Ordering::Relaxed) >= limits.max_connections.max(1) {
            if waiting.evict_oldest() {
                shard.dropped(DropReason::TcpEvicted);
            } else {
                shard.dropped(DropReason::TcpFull);
                drop((address, stream));
                continue;
            }
        }
        open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            open: Arc::clone(&open),
            _address: address,
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        // Registered as waiting now, not when its task first runs, so that the next accept
        // can already evict it.
        let evict = Arc::new(Notify::new());
        waiting.add(id, &evict);
        let conn = Conn {
            id,
            peer,
            zone: Arc::clone(&zone),
            shard: Arc::clone(&shard),
            limits: limits.clone(),
            waiting: Arc::clone(&waiting),
        };
        tokio::spawn(async move {
            let _slot = slot;
            conn.run(stream, evict).await;
        });
    }
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    zone: Arc<ArcSwap<Zone>>,
    shard: Arc<Shard>,
    limits: TcpLimits,
    waiting: Arc<Waiting>,
}

/// How waiting for the next query ended.
enum Next {
    Len(u16),
    Closed,
    TimedOut,
    Evicted,
}

impl Conn {
    async fn run(self, mut stream: TcpStream, evict: Arc<Notify>) {
        let _ = stream.set_nodelay(true);
        let mut query = Vec::new();
        let mut out = Vec::new();
        let mut frame = Vec::new();
        let mut served: u32 = 0;
        loop {
            let wait = if served == 0 {
                self.limits.first_bytes_timeout
            } else {
                self.limits.idle_timeout
            };
            self.waiting.add(self.id, &evict);
            let next = tokio::select! {
                r = tokio::time::timeout(wait, stream.read_u16()) => match r {
                    Ok(Ok(len)) => Next::Len(len),
                    Ok(Err(_)) => Next::Closed,
                    Err(_) => Next::TimedOut,
                },
                () = evict.notified() => Next::Evicted,
            };
            self.waiting.remove(self.id);
            let len = match next {
                Next::Len(len) => len,
                Next::Closed => return,
                Next::TimedOut => return self.shard.dropped(DropReason::TcpTimeout),
                Next::Evicted => return,
            };
            query.clear();
            query.resize(usize::from(len), 0);
            match tokio::time::timeout(self.limits.idle_timeout, stream.read_exact(&mut query))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => return self.shard.dropped(DropReason::TcpTimeout),
            }
            // Timed from the whole query read to the response ready to write (the write
            // waits on the client's receive window, not on us).
            let received_at = std::time::Instant::now();
            let current = self.zone.load_full();
            let outcome = answer(&current, &query, self.peer.ip(), Transport::Tcp, &mut out);
            self.shard.record(&current, &outcome, received_at.elapsed());
            drop(current);
            let Outcome::Reply(_) = outcome else {
                // Nothing to answer: a stream that sends responses or garbage is closed.
                return;
            };
            let Ok(prefix) = u16::try_from(out.len()) else {
                return;
            };
            // One write, so the length and the message leave in one segment.
            frame.clear();
            frame.extend_from_slice(&prefix.to_be_bytes());
            frame.extend_from_slice(&out);
            match tokio::time::timeout(self.limits.write_timeout, stream.write_all(&frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => return self.shard.dropped(DropReason::TcpTimeout),
            }
            served = served.saturating_add(1);
            if served >= self.limits.max_queries {
                self.shard.dropped(DropReason::TcpTooManyQueries);
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_by_address_and_ipv6_by_its_64() {
        let ip = |s: &str| {
            s.parse::<IpAddr>()
                .unwrap_or(IpAddr::V4([0, 0, 0, 0].into()))
        };
        assert_eq!(PerAddress::key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(PerAddress::key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            PerAddress::key(ip("2001:db8:1:2:aaaa::1")),
            PerAddress::key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            PerAddress::key(ip("2001:db8:1:2::1")),
            PerAddress::key(ip("2001:db8:1:3::1"))
        );
        let p = PerAddress::default();
        let k = ip("192.0.2.7");
        assert!(p.take(k, 2) && p.take(k, 2));
        assert!(!p.take(k, 2));
        p.give_back(k);
        assert!(p.take(k, 2));
        p.give_back(k);
        p.give_back(k);
        assert!(p.open.lock().map(|m| m.is_empty()).unwrap_or(false));
    }
}
