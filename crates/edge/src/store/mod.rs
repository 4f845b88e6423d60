//! Cache storage: what a stored response is, how variants are selected, and the
//! [`Storage`] trait that the memory store (and later a disk tier) implements.

mod memory;
mod object;

pub use memory::MemoryStore;
pub use object::{CacheKey, StoredObject, Variants, VaryKey, MAX_VARIANTS};

use std::sync::Arc;

/// Object counts and sizes, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Number of URLs (primary keys) stored.
    pub keys: u64,
    /// Bytes accounted against the budget (bodies, headers, keys, bookkeeping).
    pub bytes: u64,
}

/// A cache storage tier. Lookups are by primary key (method + URL, per service); the
/// variants under one key are selected with [`Variants::select`].
///
/// Implementations must not block: they are called on the request path.
pub trait Storage: Send + Sync + 'static {
    /// All stored variants for a key.
    fn get(&self, key: &CacheKey) -> Option<Arc<Variants>>;
    /// Stores a response, replacing the variant with the same `Vary` values.
    fn put(&self, key: CacheKey, object: Arc<StoredObject>);
    /// Removes every variant of a key. Returns whether anything was removed.
    fn remove(&self, key: &CacheKey) -> bool;
    /// Current counts and sizes.
    fn stats(&self) -> StoreStats;
}
