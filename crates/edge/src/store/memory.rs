//! In-memory storage bounded by bytes, on `quick_cache` (sharded, S3-FIFO-like eviction), so
//! the hit path takes no global lock and bodies stay shared `Bytes`.
//!
//! A surrogate-key index (service + tag → keys) makes purge by tag proportional to the number
//! of tagged objects, not to the cache size. It is kept up to date on insert, removal and
//! eviction, and checked against the objects at purge time, so a stale index entry can never
//! purge an object that no longer carries the tag.
//!
//! The cache does not keep key strings: an entry is keyed by a [`Digest`] of its
//! [`CacheKey`] — 128 bits of the whole key and 64 of its service, from SipHash-1-3 under a key
//! drawn at random per process (so nobody can aim for a collision). Two keys share a digest
//! with odds of 2^-128 per pair; the string, 64 bytes of every object, stays with the request
//! and with the disk tier's files, which need it.

use super::{
    CacheKey, FillBudget, PurgeMode, PurgeTarget, Storage, StoreStats, StoredObject, Variants,
};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Average object size assumed when sizing the index up front.
const ESTIMATED_OBJECT_BYTES: u64 = 8 * 1024;
/// Most shards: enough that two cores (or sixteen) rarely contend on one lock.
const MAX_SHARDS: u64 = 64;
/// Shards of the surrogate-key index.
const TAG_SHARDS: usize = 16;
/// Purge generation slots; services are hashed onto them, so a purge of one service rarely
/// cancels the fills of another.
const GENERATION_SLOTS: usize = 64;

/// What the cache keeps of a [`CacheKey`] (see the module's documentation). Equal keys have
/// equal services, so the key's halves alone identify an entry: a lookup hashes only those
/// (it finds the entry through `Borrow<[u64; 2]>`).
#[derive(Debug, Clone, Copy, Eq)]
struct Digest {
    key: [u64; 2],
    service: u64,
}

impl PartialEq for Digest {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl std::hash::Hash for Digest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl std::borrow::Borrow<[u64; 2]> for Digest {
    fn borrow(&self) -> &[u64; 2] {
        &self.key
    }
}

/// Makes [`Digest`]s: one SipHash-1-3 key per process, drawn at random, the key and service
/// digests told apart by a prefix. A key's 128 bits come from one pass over it.
struct Digester {
    k0: u64,
    k1: u64,
}

impl Digester {
    fn new() -> Self {
        let mut seed = [0u8; 16];
        if getrandom::fill(&mut seed).is_err() {
            // No OS randomness: std's per-process random keys (also secret) instead.
            let r = RandomState::new();
            seed[..8].copy_from_slice(&r.hash_one(1u8).to_le_bytes());
            seed[8..].copy_from_slice(&r.hash_one(2u8).to_le_bytes());
        }
        let (k0, k1) = seed.split_at(8);
        let word = |b: &[u8]| b.try_into().map(u64::from_le_bytes).unwrap_or_default();
        Self {
            k0: word(k0),
            k1: word(k1),
        }
    }

    fn hasher(&self, prefix: u8) -> SipHasher13 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u8(prefix);
        h
    }

    fn of(&self, key: &CacheKey) -> Digest {
        Digest {
            key: self.key(key),
            service: self.service(key.service()),
        }
    }

    /// The key's halves of its digest: all a lookup needs.
    fn key(&self, key: &CacheKey) -> [u64; 2] {
        let mut h = self.hasher(1);
        h.write(key.as_str().as_bytes());
        let d = h.finish128();
        [d.h1, d.h2]
    }

    fn service(&self, service: &str) -> u64 {
        let mut h = self.hasher(3);
        h.write(service.as_bytes());
        Hasher::finish(&h)
    }
}

#[derive(Clone)]
struct VariantsWeighter;

impl Weighter<Digest, Variants> for VariantsWeighter {
    fn weight(&self, _: &Digest, value: &Variants) -> u64 {
        std::mem::size_of::<Digest>() as u64 + value.weight()
    }
}

/// (Service digest, tag) → the keys of objects carrying the tag.
type TagMap = HashMap<(u64, Box<str>), HashSet<Digest>>;
type TagShard = Mutex<TagMap>;

/// Service + tag → keys. Lock order: a cache shard may be held when this is locked (eviction
/// callback), never the other way round.
struct TagIndex {
    shards: Box<[TagShard]>,
    hasher: RandomState,
}

impl TagIndex {
    fn new() -> Self {
        Self {
            shards: (0..TAG_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, service: u64, tag: &str) -> Option<std::sync::MutexGuard<'_, TagMap>> {
        let i = (self.hasher.hash_one((service, tag)) as usize) % self.shards.len();
        let shard = self.shards.get(i)?;
        Some(match shard.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        })
    }

    fn add(&self, key: &Digest, variants: &Variants) {
        for tag in variants.tags() {
            if let Some(mut map) = self.shard(key.service, tag) {
                map.entry((key.service, tag.into()))
                    .or_default()
                    .insert(*key);
            }
        }
    }

    fn remove(&self, key: &Digest, variants: &Variants) {
        for tag in variants.tags() {
            self.forget(key.service, tag, key);
        }
    }

    fn forget(&self, service: u64, tag: &str, key: &Digest) {
        if let Some(mut map) = self.shard(service, tag) {
            let k = (service, Box::<str>::from(tag));
            if let Some(set) = map.get_mut(&k) {
                set.remove(key);
                if set.is_empty() {
                    map.remove(&k);
                }
            }
        }
    }

    fn keys(&self, service: u64, tag: &str) -> Vec<Digest> {
        self.shard(service, tag)
            .and_then(|map| {
                map.get(&(service, tag.into()))
                    .map(|set| set.iter().copied().collect())
            })
            .unwrap_or_default()
    }
}

thread_local! {
    /// The key this thread is inserting right now. quick_cache reports a replaced value
    /// through `on_evict` like an eviction; the store handles its own replacements, so the
    /// hook ignores the key being inserted.
    static INSERTING: RefCell<Option<Digest>> = const { RefCell::new(None) };
}

/// Keeps the tag index and the eviction count in step with quick_cache's evictions.
#[derive(Clone)]
struct EvictionHook {
    tags: Arc<TagIndex>,
    evictions: Arc<AtomicU64>,
}

impl Lifecycle<Digest, Variants> for EvictionHook {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), key: Digest, val: Variants) {
        if INSERTING.with(|k| k.borrow().as_ref() == Some(&key)) {
            return;
        }
        self.evictions.fetch_add(1, Ordering::Relaxed);
        self.tags.remove(&key, &val);
    }
}

/// A byte-bounded memory store.
pub struct MemoryStore {
    cache: Cache<Digest, Variants, VariantsWeighter, DefaultHashBuilder, EvictionHook>,
    digests: Digester,
    tags: Arc<TagIndex>,
    evictions: Arc<AtomicU64>,
    /// Purge generation per slot of services.
    generations: Box<[AtomicU64]>,
    hasher: RandomState,
    /// Taken shared by `put_if_generation` (check + insert) and exclusively by purges to
    /// move the generation: a fill's check and insert are never split by a purge.
    purging: RwLock<()>,
    fills: FillBudget,
    /// Bodies from this size up go to zero-copy pages (0: none).
    zero_copy_min: u64,
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of objects (bodies, headers and bookkeeping), in
    /// which an object of `max_object_bytes` still fits.
    ///
    /// The budget is split evenly across shards and an entry must fit in one shard, so the
    /// shard count is the largest power of two that leaves every shard room for two objects
    /// of the largest size (at most [`MAX_SHARDS`]).
    pub fn new(max_bytes: u64, max_object_bytes: u64) -> Self {
        let items = (max_bytes / ESTIMATED_OBJECT_BYTES).clamp(16, 16 * 1024 * 1024) as usize;
        let room = (max_bytes / max_object_bytes.saturating_mul(2).max(1)).clamp(1, MAX_SHARDS);
        let shards = 1u64 << (63 - room.leading_zeros());
        let tags = Arc::new(TagIndex::new());
        let evictions = Arc::new(AtomicU64::new(0));
        let hook = EvictionHook {
            tags: tags.clone(),
            evictions: evictions.clone(),
        };
        let options = OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(max_bytes)
            .shards(shards as usize)
            .build();
        let cache = match options {
            Ok(options) => Cache::with_options(
                options,
                VariantsWeighter,
                DefaultHashBuilder::default(),
                hook,
            ),
            // `build` fails only when a field is unset; both are set above.
            Err(_) => Cache::with(
                items,
                max_bytes,
                VariantsWeighter,
                DefaultHashBuilder::default(),
                hook,
            ),
        };
        Self {
            cache,
            digests: Digester::new(),
            tags,
            evictions,
            generations: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            purging: RwLock::new(()),
            fills: FillBudget::new((max_bytes / 4).max(max_object_bytes)),
            zero_copy_min: 0,
        }
    }

    /// Keeps bodies of at least `bytes` in zero-copy pages (`cache.zero_copy_min_bytes`;
    /// 0, the default, keeps them all in ordinary memory).
    pub fn with_zero_copy(mut self, bytes: u64) -> Self {
        self.zero_copy_min = bytes;
        self
    }

    /// Sets the bound on bytes held by fills in progress (default: a quarter of `max_bytes`,
    /// at least `max_object_bytes`).
    pub fn with_fill_budget(mut self, bytes: u64) -> Self {
        self.fills = FillBudget::new(bytes);
        self
    }

    fn generation_slot(&self, service: &str) -> Option<&AtomicU64> {
        let i = (self.hasher.hash_one(service) as usize) % self.generations.len();
        self.generations.get(i)
    }

    /// Moves the service's purge generation, waiting out any check-and-insert in progress.
    /// Called before the objects are removed: a fill that stored before this is removed by
    /// the purge, one that stores after it is refused.
    fn next_generation(&self, service: &str) {
        let _guard = match self.purging.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(slot) = self.generation_slot(service) {
            slot.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Number of independently locked shards.
    pub fn shards(&self) -> usize {
        self.cache.num_shards()
    }

    /// Inserts `next` under `key` in place of `previous`, keeping the tag index exact: the
    /// previous value's tags go, the new value's tags come if it was admitted.
    fn replace(&self, key: &Digest, previous: Option<&Variants>, next: Variants) {
        INSERTING.with(|k| *k.borrow_mut() = Some(*key));
        self.cache.insert(*key, next.clone());
        INSERTING.with(|k| k.borrow_mut().take());
        if let Some(old) = previous {
            self.tags.remove(key, old);
        }
        if self.cache.contains_key(key) {
            self.tags.add(key, &next);
        }
    }

    fn remove_entry(&self, key: &Digest) -> Option<Variants> {
        let (_, old) = self.cache.remove(key)?;
        self.tags.remove(key, &old);
        Some(old)
    }

    /// Every object a purge of `target` would touch, before it does.
    pub(crate) fn matching(&self, target: PurgeTarget<'_>) -> Vec<Arc<StoredObject>> {
        let of_key = |key: &Digest, select: &dyn Fn(&StoredObject) -> bool| {
            self.cache
                .get(key)
                .map(|v| {
                    v.objects()
                        .iter()
                        .filter(|o| select(o))
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        match target {
            PurgeTarget::Url(key) => of_key(&self.digests.of(key), &|_| true),
            PurgeTarget::Tag { service, tag } => self
                .tags
                .keys(self.digests.service(service), tag)
                .iter()
                .flat_map(|key| of_key(key, &|o| o.has_tag(tag)))
                .collect(),
            PurgeTarget::Service(service) => {
                let service = self.digests.service(service);
                self.cache
                    .iter()
                    .filter(|(k, _)| k.service == service)
                    .flat_map(|(_, v)| v.objects().to_vec())
                    .collect()
            }
        }
    }

    /// Removes the variants of `key` that `select` picks (no purge generation moves).
    pub(crate) fn remove_where(&self, key: &CacheKey, select: impl Fn(&StoredObject) -> bool) {
        let key = self.digests.of(key);
        self.purge_variants(&key, PurgeMode::Hard, SystemTime::now(), select);
    }

    /// Purges the variants of `key` that `select` picks; returns how many.
    fn purge_variants(
        &self,
        key: &Digest,
        mode: PurgeMode,
        now: SystemTime,
        select: impl Fn(&StoredObject) -> bool,
    ) -> u64 {
        let Some(current) = self.cache.get(key) else {
            return 0;
        };
        let hit = current.objects().iter().filter(|o| select(o)).count() as u64;
        if hit == 0 {
            return 0;
        }
        let kept: Vec<Arc<StoredObject>> = match mode {
            PurgeMode::Hard => current
                .objects()
                .iter()
                .filter(|o| !select(o))
                .cloned()
                .collect(),
            PurgeMode::Soft => current
                .objects()
                .iter()
                .map(|o| {
                    if select(o) {
                        Arc::new(o.expired_copy(now))
                    } else {
                        o.clone()
                    }
                })
                .collect(),
        };
        if kept.is_empty() {
            self.remove_entry(key);
        } else {
            self.replace(key, Some(&current), Variants::new(kept));
        }
        hit
    }
}

impl Storage for MemoryStore {
    fn get(&self, key: &CacheKey) -> Option<Variants> {
        self.cache.get(&self.digests.key(key))
    }

    fn put(&self, key: CacheKey, object: Arc<StoredObject>) {
        let key = self.digests.of(&key);
        let existing = self.cache.get(&key);
        let merged = match &existing {
            Some(existing) => existing.with(object),
            None => Variants::default().with(object),
        };
        self.replace(&key, existing.as_ref(), merged);
    }

    fn remove(&self, key: &CacheKey) -> bool {
        self.next_generation(key.service());
        self.remove_entry(&self.digests.of(key)).is_some()
    }

    fn purge(&self, target: PurgeTarget<'_>, mode: PurgeMode, now: SystemTime) -> u64 {
        let service = match target {
            PurgeTarget::Url(key) => key.service(),
            PurgeTarget::Tag { service, .. } | PurgeTarget::Service(service) => service,
        };
        self.next_generation(service);
        match target {
            PurgeTarget::Url(key) => {
                self.purge_variants(&self.digests.of(key), mode, now, |_| true)
            }
            PurgeTarget::Tag { service, tag } => {
                let service = self.digests.service(service);
                self.tags
                    .keys(service, tag)
                    .iter()
                    .map(|key| {
                        if !self.cache.contains_key(key) {
                            // Evicted between insert and indexing: drop the dangling entry.
                            self.tags.forget(service, tag, key);
                        }
                        self.purge_variants(key, mode, now, |o| o.has_tag(tag))
                    })
                    .sum()
            }
            PurgeTarget::Service(service) => {
                let service = self.digests.service(service);
                let keys: Vec<Digest> = self
                    .cache
                    .iter()
                    .filter(|(k, _)| k.service == service)
                    .map(|(k, _)| k)
                    .collect();
                keys.iter()
                    .map(|key| self.purge_variants(key, mode, now, |_| true))
                    .sum()
            }
        }
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.cache.len() as u64,
            bytes: self.cache.weight(),
            evictions: self.evictions.load(Ordering::Relaxed),
            fill_bytes: self.fills.used(),
            fill_budget: self.fills.limit(),
            disk: None,
        }
    }

    fn generation(&self, service: &str) -> u64 {
        self.generation_slot(service)
            .map_or(0, |g| g.load(Ordering::Acquire))
    }

    fn put_if_generation(&self, key: CacheKey, object: Arc<StoredObject>, generation: u64) -> bool {
        let _guard = match self.purging.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if self.generation(key.service()) != generation {
            return false;
        }
        self.put(key, object);
        true
    }

    fn fills(&self) -> &FillBudget {
        &self.fills
    }

    fn zero_copy_min(&self) -> u64 {
        self.zero_copy_min
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::freshness::Freshness;
    use crate::store::VaryKey;
    use bytes::Bytes;
    use std::time::Duration;

    fn tagged(len: usize, tags: &[&str]) -> Arc<StoredObject> {
        Arc::new(StoredObject {
            headers: Default::default(),
            body: vec![Bytes::from(vec![0u8; len])].into(),
            vary: VaryKey::default(),
            freshness: Freshness::from(crate::http::freshness::FreshnessParts {
                response_time: SystemTime::now(),
                corrected_initial_age: Duration::ZERO,
                lifetime: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                must_revalidate: false,
            }),
            surrogate_keys: tags.iter().map(|t| Box::<str>::from(*t)).collect(),
        })
    }

    fn object(len: usize) -> Arc<StoredObject> {
        tagged(len, &[])
    }

    #[test]
    fn stays_within_its_byte_budget_and_counts_evictions() {
        let store = MemoryStore::new(1024 * 1024, 64 * 1024);
        for i in 0..1000 {
            store.put(CacheKey::new("s", "h", &format!("/{i}")), object(4096));
        }
        let stats = store.stats();
        assert!(stats.bytes <= 1024 * 1024, "{stats:?}");
        assert!(stats.keys > 100 && stats.keys < 1000, "{stats:?}");
        assert!(stats.evictions > 0, "{stats:?}");
    }

    #[test]
    fn the_largest_object_fits_in_a_shard() {
        let store = MemoryStore::new(64 * 1024 * 1024, 16 * 1024 * 1024);
        assert_eq!(store.shards(), 2);
        let key = CacheKey::new("s", "h", "/big");
        store.put(key.clone(), object(16 * 1024 * 1024 - 4096));
        assert!(store.get(&key).is_some());
        assert_eq!(MemoryStore::new(1 << 30, 1 << 20).shards(), 64);
    }

    #[test]
    fn put_get_remove() {
        let store = MemoryStore::new(1024 * 1024, 64 * 1024);
        let key = CacheKey::new("s", "h", "/a");
        assert!(store.get(&key).is_none());
        store.put(key.clone(), object(10));
        assert_eq!(store.get(&key).unwrap().objects().len(), 1);
        assert!(store.remove(&key));
        assert!(!store.remove(&key));
    }

    #[test]
    fn object_bigger_than_the_store_is_not_kept() {
        let store = MemoryStore::new(64 * 1024, 64 * 1024);
        let key = CacheKey::new("s", "h", "/big");
        store.put(key.clone(), object(1024 * 1024));
        assert!(store.get(&key).is_none());
    }

    #[test]
    fn purge_by_tag_touches_only_that_service_and_tag() {
        let store = MemoryStore::new(16 * 1024 * 1024, 1024 * 1024);
        let now = SystemTime::now();
        let a = CacheKey::new("s1", "h", "/a");
        let b = CacheKey::new("s1", "h", "/b");
        let other = CacheKey::new("s2", "h", "/a");
        store.put(a.clone(), tagged(10, &["red", "blue"]));
        store.put(b.clone(), tagged(10, &["blue"]));
        store.put(other.clone(), tagged(10, &["red"]));
        let red = PurgeTarget::Tag {
            service: "s1",
            tag: "red",
        };
        assert_eq!(store.purge(red, PurgeMode::Hard, now), 1);
        assert!(store.get(&a).is_none());
        assert!(store.get(&b).is_some() && store.get(&other).is_some());
        // A re-stored object without the tag is not purged by a stale index entry.
        store.put(a.clone(), tagged(10, &["green"]));
        assert_eq!(store.purge(red, PurgeMode::Hard, now), 0);
        assert!(store.get(&a).is_some());
    }

    #[test]
    fn soft_purge_expires_but_keeps() {
        let store = MemoryStore::new(16 * 1024 * 1024, 1024 * 1024);
        let now = SystemTime::now();
        let a = CacheKey::new("s1", "h", "/a");
        store.put(a.clone(), tagged(10, &["t"]));
        assert_eq!(store.purge(PurgeTarget::Url(&a), PurgeMode::Soft, now), 1);
        let obj = store.get(&a).unwrap().objects()[0].clone();
        assert!(obj.freshness.ttl(now + Duration::from_millis(1)).is_none());
        assert_eq!(
            store.tags.keys(store.digests.service("s1"), "t").len(),
            1,
            "index after soft purge"
        );
        // Still tagged and purgeable.
        let t = PurgeTarget::Tag {
            service: "s1",
            tag: "t",
        };
        assert_eq!(store.purge(t, PurgeMode::Hard, now), 1);
        assert!(store.get(&a).is_none());
    }

    #[test]
    fn purge_a_whole_service() {
        let store = MemoryStore::new(16 * 1024 * 1024, 1024 * 1024);
        for i in 0..50 {
            store.put(CacheKey::new("s1", "h", &format!("/{i}")), object(10));
            store.put(CacheKey::new("s2", "h", &format!("/{i}")), object(10));
        }
        assert_eq!(
            store.purge(
                PurgeTarget::Service("s1"),
                PurgeMode::Hard,
                SystemTime::now()
            ),
            50
        );
        assert_eq!(store.stats().keys, 50);
    }

    #[test]
    fn a_million_small_objects() {
        const N: usize = 1_000_000;
        let store = MemoryStore::new(2 << 30, 1 << 20);
        let body = Bytes::from_static(b"0123456789abcdef");
        for i in 0..N {
            let obj = StoredObject {
                headers: Default::default(),
                body: vec![body.clone()].into(),
                vary: VaryKey::default(),
                freshness: tagged(0, &[]).freshness,
                surrogate_keys: Default::default(),
            };
            store.put(CacheKey::new("s", "h", &format!("/{i}")), Arc::new(obj));
        }
        let stats = store.stats();
        assert_eq!(stats.keys, N as u64, "{stats:?}");
        assert_eq!(stats.evictions, 0);
        for i in (0..N).step_by(9973) {
            assert!(
                store
                    .get(&CacheKey::new("s", "h", &format!("/{i}")))
                    .is_some(),
                "/{i}"
            );
        }
    }

    #[test]
    fn replacing_a_value_is_not_an_eviction() {
        let store = MemoryStore::new(16 * 1024 * 1024, 1024 * 1024);
        let a = CacheKey::new("s", "h", "/a");
        for _ in 0..10 {
            store.put(a.clone(), tagged(10, &["t"]));
        }
        assert_eq!(store.stats().evictions, 0);
        assert_eq!(store.tags.keys(store.digests.service("s"), "t").len(), 1);
    }

    #[test]
    fn a_purge_since_the_fill_started_refuses_its_insert() {
        let store = MemoryStore::new(16 * 1024 * 1024, 1024 * 1024);
        let a = CacheKey::new("s1", "h", "/a");
        let other = CacheKey::new("s2", "h", "/a");
        let gen = store.generation("s1");
        let other_gen = store.generation("s2");
        store.purge(PurgeTarget::Url(&a), PurgeMode::Hard, SystemTime::now());
        assert!(!store.put_if_generation(a.clone(), object(10), gen));
        assert!(store.get(&a).is_none());
        // A fill that started after the purge stores.
        assert!(store.put_if_generation(a.clone(), object(10), store.generation("s1")));
        assert!(store.get(&a).is_some());
        // Removal by an unsafe method counts too.
        let gen = store.generation("s1");
        store.remove(&a);
        assert!(!store.put_if_generation(a.clone(), object(10), gen));
        // Another service is not affected (unless it shares the slot by chance).
        if store.generation("s2") == other_gen {
            assert!(store.put_if_generation(other, object(10), other_gen));
        }
    }

    #[test]
    fn fill_budget_reserves_and_releases() {
        let store = MemoryStore::new(16 * 1024 * 1024, 1024 * 1024).with_fill_budget(100);
        let b = store.fills();
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert!(b.try_reserve(40));
        b.release(100);
        assert_eq!(b.used(), 0);
        b.release(5);
        assert_eq!(b.used(), 0);
        assert_eq!(store.stats().fill_budget, 100);
    }

    #[test]
    fn evicted_keys_leave_the_tag_index() {
        let store = MemoryStore::new(1024 * 1024, 64 * 1024);
        for i in 0..1000 {
            store.put(
                CacheKey::new("s", "h", &format!("/{i}")),
                tagged(4096, &["all"]),
            );
        }
        let indexed = store.tags.keys(store.digests.service("s"), "all").len() as u64;
        assert_eq!(
            indexed,
            store.stats().keys,
            "index holds exactly the live keys"
        );
    }
}
