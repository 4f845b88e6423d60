//! Per-request admission: the per-address token bucket of the request's service (429 with
//! `Retry-After`) and the edge's bound on requests in flight (503 with `Retry-After`, at once,
//! instead of queueing). One call from `proxy::serve`, right after routing.
//!
//! Rates use `governor`'s GCRA (a token bucket in one `u64` per key) over a bounded, sharded
//! key store: addresses (IPv6 by /64) beyond `max_tracked_addresses` push out the entry whose
//! bucket is closest to full (the one that forgets least). With no rate configured, the hit
//! path pays one `ArcSwap` load and one atomic add.

use crate::conn::client_key;
use crate::error::ProxyError;
use arc_swap::ArcSwap;
use firebreak_config::{Config, RateQuota};
use governor::clock::{Clock, MonotonicClock};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Shards of a rate table.
const SHARDS: usize = 64;
/// `Retry-After` of a shed request, in seconds.
const SHED_RETRY_AFTER_S: u64 = 1;

type Limiter = RateLimiter<u128, BoundedStore, MonotonicClock>;

/// Admission state of one edge process (a field of `EdgeState`).
pub struct ClientGate {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Milliseconds a rate-limited request waits before its 429.
    reject_delay_ms: AtomicU64,
    rates: ArcSwap<Rates>,
}

#[derive(Default)]
struct Rates {
    /// Only services with a rate limit.
    by_service: HashMap<Arc<str>, (RateQuota, usize, Arc<Limiter>)>,
}

impl Default for ClientGate {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(usize::MAX),
            reject_delay_ms: AtomicU64::new(0),
            rates: ArcSwap::from_pointee(Rates::default()),
        }
    }
}

/// One admitted request, counted in flight until dropped.
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ClientGate {
    /// Applies a configuration (at start and on every reload). A service whose quota did not
    /// change keeps its buckets.
    pub fn configure(&self, config: &Config) {
        let clients = &config.limits.clients;
        self.max_in_flight
            .store(clients.max_requests_in_flight, Ordering::Relaxed);
        self.reject_delay_ms
            .store(clients.rate_limited_delay_ms, Ordering::Relaxed);
        let old = self.rates.load();
        let mut by_service = HashMap::new();
        for s in &config.services {
            let Some(quota) = clients.quota_for(&s.clients) else {
                continue;
            };
            let keys = clients.max_tracked_addresses;
            let name: Arc<str> = Arc::from(s.name.as_str());
            let limiter = match old.by_service.get(&name) {
                Some((q, k, l)) if *q == quota && *k == keys => l.clone(),
                _ => Arc::new(limiter(quota, keys)),
            };
            by_service.insert(name, (quota, keys, limiter));
        }
        self.rates.store(Arc::new(Rates { by_service }));
    }

    /// Admits one request of `service` from `ip`, or says why not. A request over its
    /// rate is refused after `rate_limited_delay_ms` (the only wait here).
    pub async fn admit(
        &self,
        service: &Arc<str>,
        ip: IpAddr,
        tier_request: bool,
    ) -> Result<InFlight<'_>, ProxyError> {
        // A request from another tier (valid tier credential) carries many clients' misses
        // from one address: per-client rates do not apply to it; the bound in flight does.
        let over = if tier_request {
            None
        } else {
            self.over_rate(service, ip)
        };
        if let Some(retry_after) = over {
            crate::telemetry::rate_limited(service);
            let delay = self.reject_delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            return Err(ProxyError::RateLimited(retry_after));
        }
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = InFlight(&self.in_flight);
        if n >= self.max_in_flight.load(Ordering::Relaxed) {
            crate::telemetry::shed(service);
            return Err(ProxyError::Overloaded(SHED_RETRY_AFTER_S));
        }
        Ok(admitted)
    }

    /// `Some(Retry-After seconds)` when `ip` is over `service`'s rate.
    fn over_rate(&self, service: &Arc<str>, ip: IpAddr) -> Option<u64> {
        let rates = self.rates.load();
        if rates.by_service.is_empty() {
            return None;
        }
        let (_, _, limiter) = rates.by_service.get(service)?;
        let not_until = limiter.check_key(&client_key(ip)).err()?;
        let wait = not_until.wait_time_from(limiter.clock().now());
        Some((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

fn limiter(q: RateQuota, max_keys: usize) -> Limiter {
    let per_second = NonZeroU32::new(q.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(q.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::per_second(per_second).allow_burst(burst);
    RateLimiter::new(quota, BoundedStore::new(max_keys), MonotonicClock)
}

/// A keyed GCRA state store with a bounded number of keys, sharded so that checks from
/// different addresses rarely contend.
pub struct BoundedStore {
    shards: [Mutex<HashMap<u128, u64>>; SHARDS],
    per_shard: usize,
    hasher: std::hash::RandomState,
}

impl BoundedStore {
    fn new(max_keys: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn shard(&self, key: u128) -> &Mutex<HashMap<u128, u64>> {
        // The index is reduced modulo the array's length, so it is always in range.
        #[allow(clippy::indexing_slicing)]
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateStore for BoundedStore {
    type Key = u128;

    fn measure_and_replace<T, F, E>(&self, key: &u128, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self
            .shard(*key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = shard.get(key).copied();
        let (result, next) = f(previous.map(Nanos::from))?;
        if previous.is_none() && shard.len() >= self.per_shard {
            // Forget the bucket that is closest to full: the earliest theoretical arrival.
            if let Some(oldest) = shard.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| *k) {
                shard.remove(&oldest);
            }
        }
        shard.insert(*key, next.into());
        Ok(result)
    }
}

impl ShrinkableKeyedStateStore<u128> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let below: u64 = drop_below.into();
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, tat| *tat >= below);
        }
    }

    fn len(&self) -> usize {
        BoundedStore::len(self)
    }

    fn is_empty(&self) -> bool {
        BoundedStore::is_empty(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bucket_per_address_and_ipv6_by_64() {
        let l = limiter(
            RateQuota {
                per_second: 1,
                burst: 2,
            },
            1000,
        );
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check_key(&client_key(a)).is_ok());
        assert!(l.check_key(&client_key(same_64)).is_ok());
        assert!(l.check_key(&client_key(a)).is_err());
        assert!(l.check_key(&client_key(other)).is_ok());
    }

    #[test]
    fn key_set_stays_bounded() {
        let l = limiter(
            RateQuota {
                per_second: 1,
                burst: 1,
            },
            64,
        );
        for i in 0..10_000u32 {
            let _ = l.check_key(&client_key(IpAddr::from(i.to_be_bytes())));
        }
        assert!(l.len() <= 64, "{}", l.len());
    }

    #[tokio::test]
    async fn in_flight_bound_sheds_and_releases() {
        let gate = ClientGate::default();
        gate.max_in_flight.store(1, Ordering::Relaxed);
        let svc: Arc<str> = Arc::from("s");
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = gate.admit(&svc, ip, false).await.unwrap();
        assert_eq!(
            gate.admit(&svc, ip, false).await.err(),
            Some(ProxyError::Overloaded(SHED_RETRY_AFTER_S))
        );
        // A tier request is exempt from rates, not from the bound in flight.
        assert_eq!(
            gate.admit(&svc, ip, true).await.err(),
            Some(ProxyError::Overloaded(SHED_RETRY_AFTER_S))
        );
        drop(first);
        assert!(gate.admit(&svc, ip, false).await.is_ok());
        assert_eq!(gate.in_flight(), 0);
    }
}
