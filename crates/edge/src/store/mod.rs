//! Cache storage: what a stored response is, how variants are selected, the
//! [`Storage`] trait, the memory store, and the disk tier behind it ([`HybridStore`]).

pub mod disk;
mod head;
mod hybrid;
mod memory;
mod object;

pub use head::{Advertise, HitFields, StoredHeaders};

pub use disk::{DiskError, DiskFile, DiskSpool, DiskStats};
pub use hybrid::HybridStore;
pub use memory::MemoryStore;
pub use object::{
    surrogate_keys, CacheKey, Chunks, ObjectBody, StoredObject, SurrogateKeys, Variants, VaryKey,
    MAX_SURROGATE_KEYS, MAX_VARIANTS,
};

/// What [`Storage::load`] returns: the object ready to serve, or `None` when its body could
/// not be read (it was dropped; treat it as a miss).
pub type LoadFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<Arc<StoredObject>>> + Send + 'a>>;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Object counts and sizes, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Number of URLs (primary keys) stored.
    pub keys: u64,
    /// Bytes accounted against the budget (bodies, headers, keys, bookkeeping).
    pub bytes: u64,
    /// Keys evicted to make room since the store was created.
    pub evictions: u64,
    /// Bytes held by fills in progress (not yet stored), see [`FillBudget`].
    pub fill_bytes: u64,
    /// The bound on `fill_bytes`.
    pub fill_budget: u64,
    /// The disk tier's counts, when there is one.
    pub disk: Option<DiskStats>,
}

/// Memory held by fills in progress (responses being received before they are stored), for
/// all fills of the process together. A fill reserves each chunk before keeping it; a fill
/// that cannot reserve stops buffering (its response streams through and is not stored).
#[derive(Debug)]
pub struct FillBudget {
    used: AtomicU64,
    limit: u64,
}

impl FillBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Reserves `n` bytes if they fit.
    pub fn try_reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` reserved bytes.
    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The bound.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// What to purge.
#[derive(Debug, Clone, Copy)]
pub enum PurgeTarget<'a> {
    /// Every variant of one URL.
    Url(&'a CacheKey),
    /// Every object of a service tagged with a surrogate key.
    Tag {
        /// Service name.
        service: &'a str,
        /// The surrogate key.
        tag: &'a str,
    },
    /// Everything a service has stored.
    Service(&'a str),
}

/// How to purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// Remove the objects.
    Hard,
    /// Mark them expired: revalidated on the next request, still usable for
    /// stale-while-revalidate, stale-if-error and the safety net.
    Soft,
}

/// A cache storage tier. Lookups are by primary key (method + URL, per service); the
/// variants under one key are selected with [`Variants::select`].
///
/// Implementations must not block: they are called on the request path.
pub trait Storage: Send + Sync + 'static {
    /// All stored variants for a key.
    fn get(&self, key: &CacheKey) -> Option<Variants>;
    /// Stores a response, replacing the variant with the same `Vary` values.
    fn put(&self, key: CacheKey, object: Arc<StoredObject>);
    /// Removes every variant of a key. Returns whether anything was removed.
    fn remove(&self, key: &CacheKey) -> bool;
    /// Purges objects; returns how many objects (variants) were removed or expired.
    fn purge(&self, target: PurgeTarget<'_>, mode: PurgeMode, now: SystemTime) -> u64;
    /// Current counts and sizes.
    fn stats(&self) -> StoreStats;
    /// The purge generation of a service: it changes with every purge or removal that may
    /// touch the service's objects. A fill reads it before asking the origin and stores
    /// with [`Storage::put_if_generation`], so a purge that raced the fill wins.
    fn generation(&self, service: &str) -> u64;
    /// Stores `object` only if the service's purge generation is still `generation`
    /// (atomically with respect to purges); returns whether it was stored.
    fn put_if_generation(&self, key: CacheKey, object: Arc<StoredObject>, generation: u64) -> bool;
    /// The memory budget of fills in progress.
    fn fills(&self) -> &FillBudget;
    /// Resolves once what purges and removals did so far is on disk (hard-purged files
    /// unlinked, soft-purged ones marked), so a purge answered is not undone by a restart.
    /// `None` when there is nothing to wait for (memory only).
    fn synced(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        None
    }
    /// Stops what runs behind the store (the disk tier's writer) and releases what it holds
    /// (the cache directory's lock), keeping what is stored for the next start.
    fn close(&self) {}
    /// The largest object the store can take by writing it to disk as it arrives (0: none;
    /// objects beyond the memory tier's bound are not stored).
    fn spool_max(&self) -> u64 {
        0
    }
    /// Bodies from this size up are kept in zero-copy pages (0: none are).
    fn zero_copy_min(&self) -> u64 {
        0
    }
    /// Starts writing a large object to disk as it arrives (blocking: call it off the async
    /// threads); `None` when the store cannot now.
    fn spool(&self) -> Option<std::io::Result<DiskSpool>> {
        None
    }
    /// Makes an object selected from [`Storage::get`] ready to serve. Objects in memory are
    /// ready; a small one on disk is read whole, checked and promoted to memory; `None` when
    /// its file fails a check (it is dropped: serve it as a miss).
    fn load<'a>(&'a self, _key: &'a CacheKey, object: Arc<StoredObject>) -> LoadFuture<'a> {
        Box::pin(std::future::ready(Some(object)))
    }
}
