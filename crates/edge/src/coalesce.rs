//! Request coalescing: concurrent misses for one cache key make one origin request.
//!
//! The first request for a key becomes the [`Leader`]; later ones get a [`Waiter`] that
//! resolves when the leader has stored the response (then they read it from the cache), or at
//! once when the leader finds the response uncacheable or fails (then they go to the origin
//! themselves, in parallel — there is no lock to wait out, unlike nginx's `proxy_cache_lock`).
//!
//! A key whose response was not storable is remembered for [`PASS_FOR`] ("hit-for-pass", as
//! Varnish calls it): requests for it skip coalescing and go to the origin in parallel rather
//! than queueing behind a leader whose answer nobody can share.

use crate::store::CacheKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Number of independently locked shards; misses for different keys rarely contend.
const SHARDS: usize = 64;
/// How long a key stays "pass" after an unstorable response.
pub const PASS_FOR: Duration = Duration::from_secs(30);
/// Most entries per shard; beyond it expired pass markers are swept and new ones dropped, so
/// a flood of unique uncacheable URLs cannot grow the table without bound.
const MAX_ENTRIES_PER_SHARD: usize = 4096;

/// What became of a coalesced fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Still fetching.
    Pending,
    /// The response is in the cache: read it from there.
    Stored,
    /// The response will not be stored this time (failed, cancelled, timed out): fetch
    /// yourself.
    NotStored,
    /// The response may not be stored (no-store, private, too large, ...): fetch yourself,
    /// and later requests skip coalescing for [`PASS_FOR`].
    Uncacheable,
}

enum Slot {
    InFlight(watch::Receiver<FetchOutcome>),
    Pass(Instant),
}

type Shard = Mutex<HashMap<CacheKey, Slot>>;

/// The table of in-flight fetches.
#[derive(Clone)]
pub struct Coalescer {
    shards: Arc<[Shard]>,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// The result of joining the fetch for a key.
pub enum Join {
    /// Nobody is fetching this key: you do, and report the outcome.
    Leader(Leader),
    /// Someone is: wait for them.
    Waiter(Waiter),
    /// The key recently answered with something unstorable: go to the origin directly.
    Pass,
}

impl Coalescer {
    fn shard(&self, key: &CacheKey) -> Option<&Shard> {
        use std::hash::{BuildHasher, RandomState};
        // One hasher per process keeps a key in one shard; random keys resist flooding.
        static STATE: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
        let h = STATE.get_or_init(RandomState::new).hash_one(key);
        self.shards.get((h as usize) % self.shards.len())
    }

    /// Joins the fetch for `key`, becoming its leader if there is none.
    pub fn join(&self, key: &CacheKey) -> Join {
        let Some(shard) = self.shard(key) else {
            return Join::Leader(Leader::detached());
        };
        let mut map = match shard.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        match map.get(key) {
            Some(Slot::InFlight(rx)) if *rx.borrow() == FetchOutcome::Pending => {
                return Join::Waiter(Waiter { rx: rx.clone() });
            }
            Some(Slot::Pass(until)) if *until > Instant::now() => return Join::Pass,
            _ => {}
        }
        if map.len() >= MAX_ENTRIES_PER_SHARD {
            sweep(&mut map);
            if map.len() >= MAX_ENTRIES_PER_SHARD {
                // Table full of in-flight fetches: fetch uncoalesced rather than grow it.
                return Join::Leader(Leader::detached());
            }
        }
        let (tx, rx) = watch::channel(FetchOutcome::Pending);
        map.insert(key.clone(), Slot::InFlight(rx));
        Join::Leader(Leader {
            slot: Some((self.clone(), key.clone(), tx)),
        })
    }

    /// Number of keys being fetched right now.
    pub fn in_flight(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map(|m| {
                        m.values()
                            .filter(|v| matches!(v, Slot::InFlight(_)))
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum()
    }

    fn release(&self, key: &CacheKey, tx: &watch::Sender<FetchOutcome>, outcome: FetchOutcome) {
        if let Some(shard) = self.shard(key) {
            let mut map = match shard.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            // Touch only our own entry; a newer leader may have replaced it.
            let ours = matches!(map.get(key), Some(Slot::InFlight(rx)) if rx.same_channel(&tx.subscribe()));
            if ours {
                if outcome == FetchOutcome::Uncacheable {
                    map.insert(key.clone(), Slot::Pass(Instant::now() + PASS_FOR));
                } else {
                    map.remove(key);
                }
            }
        }
    }
}

/// Drops expired pass markers.
fn sweep(map: &mut HashMap<CacheKey, Slot>) {
    let now = Instant::now();
    map.retain(|_, slot| match slot {
        Slot::InFlight(_) => true,
        Slot::Pass(until) => *until > now,
    });
}

/// The request that fetches for everyone. Dropping it without [`Leader::finish`] releases the
/// waiters with [`FetchOutcome::NotStored`], so a failed or cancelled leader never strands them.
pub struct Leader {
    slot: Option<(Coalescer, CacheKey, watch::Sender<FetchOutcome>)>,
}

impl Leader {
    /// A leader with no waiters (used when coalescing is not possible).
    pub fn detached() -> Self {
        Self { slot: None }
    }

    /// Number of requests waiting for this fetch right now (a waiter that timed out or went
    /// away no longer counts).
    pub fn waiters(&self) -> usize {
        self.slot.as_ref().map_or(0, |(_, _, tx)| {
            // One receiver is the table's own.
            tx.receiver_count().saturating_sub(1)
        })
    }

    /// Reports the outcome. Call after the object is in the store, so that waiters find it.
    pub fn finish(mut self, outcome: FetchOutcome) {
        self.complete(outcome);
    }

    fn complete(&mut self, outcome: FetchOutcome) {
        if let Some((coalescer, key, tx)) = self.slot.take() {
            coalescer.release(&key, &tx, outcome);
            tx.send_replace(outcome);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.complete(FetchOutcome::NotStored);
    }
}

/// A request waiting for a leader's fetch.
pub struct Waiter {
    rx: watch::Receiver<FetchOutcome>,
}

impl Waiter {
    /// Waits at most `limit` for the outcome; `NotStored` on timeout.
    pub async fn wait(mut self, limit: Duration) -> FetchOutcome {
        match tokio::time::timeout(limit, self.rx.wait_for(|s| *s != FetchOutcome::Pending)).await {
            Ok(Ok(outcome)) => *outcome,
            _ => FetchOutcome::NotStored,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn key(p: &str) -> CacheKey {
        CacheKey::new("s", "h", p)
    }

    #[tokio::test(start_paused = true)]
    async fn one_leader_many_waiters_all_released_on_store() {
        let c = Coalescer::default();
        let Join::Leader(leader) = c.join(&key("/a")) else {
            panic!("first must lead")
        };
        let waiters: Vec<_> = (0..10)
            .map(|_| match c.join(&key("/a")) {
                Join::Waiter(w) => tokio::spawn(w.wait(Duration::from_secs(5))),
                _ => panic!("second must wait"),
            })
            .collect();
        // Other keys are independent.
        assert!(matches!(c.join(&key("/b")), Join::Leader(_)));
        leader.finish(FetchOutcome::Stored);
        for w in waiters {
            assert_eq!(w.await.unwrap(), FetchOutcome::Stored);
        }
        assert_eq!(c.in_flight(), 0);
        assert!(matches!(c.join(&key("/a")), Join::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_leader_releases_waiters_as_not_stored() {
        let c = Coalescer::default();
        let Join::Leader(leader) = c.join(&key("/a")) else {
            panic!()
        };
        let Join::Waiter(w) = c.join(&key("/a")) else {
            panic!()
        };
        assert_eq!(leader.waiters(), 1);
        let handle = tokio::spawn(w.wait(Duration::from_secs(5)));
        drop(leader);
        assert_eq!(handle.await.unwrap(), FetchOutcome::NotStored);
    }

    #[tokio::test(start_paused = true)]
    async fn uncacheable_keys_pass_for_a_while() {
        let c = Coalescer::default();
        let Join::Leader(leader) = c.join(&key("/u")) else {
            panic!()
        };
        let Join::Waiter(w) = c.join(&key("/u")) else {
            panic!()
        };
        leader.finish(FetchOutcome::Uncacheable);
        assert_eq!(
            w.wait(Duration::from_secs(1)).await,
            FetchOutcome::Uncacheable
        );
        assert!(matches!(c.join(&key("/u")), Join::Pass));
        assert!(matches!(c.join(&key("/u")), Join::Pass));
        assert_eq!(c.in_flight(), 0);
        tokio::time::advance(PASS_FOR + Duration::from_millis(1)).await;
        assert!(matches!(c.join(&key("/u")), Join::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded() {
        let c = Coalescer::default();
        let mut leaders = Vec::new();
        for i in 0..(SHARDS * MAX_ENTRIES_PER_SHARD + 100) {
            if let Join::Leader(l) = c.join(&key(&format!("/{i}"))) {
                leaders.push(l);
            }
        }
        assert!(c.in_flight() <= SHARDS * MAX_ENTRIES_PER_SHARD);
        // Expired pass markers make room again.
        for l in leaders.drain(..) {
            l.finish(FetchOutcome::Uncacheable);
        }
        tokio::time::advance(PASS_FOR + Duration::from_millis(1)).await;
        assert!(matches!(
            c.join(&key("/new")),
            Join::Leader(Leader { slot: Some(_) })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_time_out() {
        let c = Coalescer::default();
        let Join::Leader(_leader) = c.join(&key("/a")) else {
            panic!()
        };
        let Join::Waiter(w) = c.join(&key("/a")) else {
            panic!()
        };
        let start = tokio::time::Instant::now();
        assert_eq!(
            w.wait(Duration::from_millis(250)).await,
            FetchOutcome::NotStored
        );
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }
}
