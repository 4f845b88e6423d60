//! In-memory storage bounded by bytes, on `quick_cache` (sharded, S3-FIFO-like eviction), so
//! the hit path takes no global lock and bodies stay shared `Bytes`.

use super::{CacheKey, Storage, StoreStats, StoredObject, Variants};
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};
use std::sync::Arc;

/// Average object size assumed when sizing the index up front.
const ESTIMATED_OBJECT_BYTES: u64 = 8 * 1024;
/// Most shards: enough that two cores (or sixteen) rarely contend on one lock.
const MAX_SHARDS: u64 = 64;

#[derive(Clone)]
struct VariantsWeighter;

impl Weighter<CacheKey, Arc<Variants>> for VariantsWeighter {
    fn weight(&self, key: &CacheKey, value: &Arc<Variants>) -> u64 {
        // Never zero: zero-weight entries would escape the budget.
        (key.len() as u64 + value.weight()).max(1)
    }
}

/// A byte-bounded memory store.
pub struct MemoryStore {
    cache: Cache<
        CacheKey,
        Arc<Variants>,
        VariantsWeighter,
        DefaultHashBuilder,
        DefaultLifecycle<CacheKey, Arc<Variants>>,
    >,
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
                DefaultLifecycle::default(),
            ),
            // Unreachable with the values above; fall back to the library's defaults.
            Err(_) => Cache::with_weighter(items, max_bytes, VariantsWeighter),
        };
        Self { cache }
    }

    /// Number of independently locked shards.
    pub fn shards(&self) -> usize {
        self.cache.num_shards()
    }
}

impl Storage for MemoryStore {
    fn get(&self, key: &CacheKey) -> Option<Arc<Variants>> {
        self.cache.get(key)
    }

    fn put(&self, key: CacheKey, object: Arc<StoredObject>) {
        let merged = match self.cache.get(&key) {
            Some(existing) => existing.with(object),
            None => Variants::default().with(object),
        };
        self.cache.insert(key, Arc::new(merged));
    }

    fn remove(&self, key: &CacheKey) -> bool {
        self.cache.remove(key).is_some()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.cache.len() as u64,
            bytes: self.cache.weight(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::freshness::Freshness;
    use crate::store::VaryKey;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};
    use std::time::{Duration, SystemTime};

    fn object(len: usize) -> Arc<StoredObject> {
        Arc::new(StoredObject {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: vec![Bytes::from(vec![0u8; len])],
            body_len: len as u64,
            vary: VaryKey::default(),
            freshness: Freshness {
                response_time: SystemTime::UNIX_EPOCH,
                corrected_initial_age: Duration::ZERO,
                lifetime: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                must_revalidate: false,
            },
        })
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let store = MemoryStore::new(1024 * 1024, 64 * 1024);
        for i in 0..1000 {
            store.put(CacheKey::new("s", "h", &format!("/{i}")), object(4096));
        }
        let stats = store.stats();
        assert!(stats.bytes <= 1024 * 1024, "{stats:?}");
        assert!(stats.keys > 100 && stats.keys < 1000, "{stats:?}");
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
        assert_eq!(store.get(&key).unwrap().objects.len(), 1);
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
}
