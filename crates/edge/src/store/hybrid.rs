//! The memory tier in front of the disk tier.
//!
//! Every object stored in memory is also queued for the disk; a memory miss is looked up on
//! disk; a small object found on disk is read whole, checked and promoted to memory
//! ([`Storage::load`]); a large one is streamed from its file. One [`PurgeGate`] holds the
//! purge generations of both tiers: a purge moves the generation and purges both tiers with
//! stores held off, so an object fetched, written or promoted across a purge is never stored
//! after it.

use super::disk::{DiskError, DiskFile, DiskSpool, DiskStats, DiskTier, PurgeGate};
use super::{
    CacheKey, FillBudget, LoadFuture, MemoryStore, ObjectBody, PurgeMode, PurgeTarget, Storage,
    StoreStats, StoredObject, Variants,
};
use firebreak_config::DiskCacheConfig;
use std::sync::Arc;
use std::time::SystemTime;

/// Largest disk object promoted to memory when read (larger ones stream from their file).
const PROMOTE_MAX: u64 = 1024 * 1024;

/// Largest disk body read on the request's own thread rather than the blocking pool.
const INLINE_READ_MAX: u64 = 64 * 1024;

/// A whole disk body, every block checked.
fn read_whole(file: &DiskFile) -> Result<Vec<bytes::Bytes>, super::disk::FormatError> {
    let f = file.open()?;
    let mut chunks = Vec::new();
    let mut at = 0u64;
    while at < file.body_len() {
        let got = file.read_at(&f, at, file.body_len())?;
        let n: u64 = got.iter().map(|c| c.len() as u64).sum();
        if n == 0 {
            return Err(super::disk::FormatError::Length("no progress"));
        }
        at += n;
        chunks.extend(got);
    }
    Ok(chunks)
}

/// Memory and disk tiers behind one [`Storage`].
pub struct HybridStore {
    // Declared first, so dropped first: the disk tier marks itself closing before the memory
    // tier drops objects whose files must stay for the next start.
    pub(super) disk: DiskTier,
    pub(super) memory: MemoryStore,
    gate: Arc<PurgeGate>,
    promote_max: u64,
    /// `firebreak_disk_hits_total`, registered once (no registry lookup per disk hit).
    disk_hits: metrics::Counter,
}

impl HybridStore {
    /// Puts `memory` in front of the disk tier `config` describes (opened, its recovery
    /// started in the background). `client_connections` is the edge's bound on client
    /// connections: the files the tier keeps open leave room for them.
    pub fn open(
        memory: MemoryStore,
        config: &DiskCacheConfig,
        max_object_bytes: u64,
        client_connections: usize,
    ) -> Result<Self, DiskError> {
        let gate = Arc::new(PurgeGate::new());
        let disk = DiskTier::open(
            config,
            config.max_object(max_object_bytes),
            gate.clone(),
            client_connections,
        )?;
        Ok(Self {
            disk,
            memory,
            gate,
            promote_max: PROMOTE_MAX.min(max_object_bytes),
            disk_hits: metrics::counter!("firebreak_disk_hits_total"),
        })
    }

    /// The disk tier's counts.
    pub fn disk_stats(&self) -> DiskStats {
        self.disk.stats()
    }

    fn put_both(&self, key: CacheKey, object: Arc<StoredObject>, generation: u64) {
        match &object.body {
            ObjectBody::Memory(_) => {
                self.memory.put(key.clone(), object.clone());
                self.disk.write(key, object, generation);
            }
            // A refreshed head of an object read from disk: same file, new head.
            ObjectBody::Disk(_) => {
                self.memory.put(key.clone(), object.clone());
                self.disk.update_head(key, object);
            }
        }
    }

    async fn promote(
        &self,
        key: &CacheKey,
        object: Arc<StoredObject>,
    ) -> Option<Arc<StoredObject>> {
        let file = object.body.file()?.clone();
        let generation = self.gate.generation(key.service());
        let read = match file.body_len() <= INLINE_READ_MAX {
            // One small read, most often from the page cache: cheaper in place than the
            // hand-off to the blocking pool and back (nginx reads this way too).
            true => read_whole(&file),
            false => {
                let reader = file.clone();
                match tokio::task::spawn_blocking(move || read_whole(&reader)).await {
                    Ok(read) => read,
                    Err(_) => return None,
                }
            }
        };
        let chunks = match read {
            Ok(chunks) => chunks,
            Err(e) => {
                file.discard(&e);
                return None;
            }
        };
        // The copy shares the disk object's fields (one head, one ready map), so a map made
        // for either serves both and every later promotion.
        let in_memory = Arc::new(StoredObject {
            headers: object.headers.clone(),
            // The buffers just read, as they are: not copied into zero-copy pages (with a
            // working set larger than memory every disk hit is a promotion that evicts
            // another, and the page write plus the punch of the evicted pages cost more than
            // sending by copy saved: `bench/disk.sh`, Intel, 0.79x nginx with, 0.92x without).
            body: ObjectBody::Memory(chunks.into()),
            vary: object.vary.clone(),
            freshness: object.freshness,
            surrogate_keys: object.surrogate_keys.clone(),
        });
        // Promoted only if no purge came since the lookup and the disk still holds it.
        self.gate.if_generation(key.service(), generation, || {
            if self.disk.holds(key, &file) {
                self.memory.put(key.clone(), in_memory.clone());
            }
        });
        self.disk_hits.increment(1);
        Some(in_memory)
    }
}

impl Storage for HybridStore {
    fn get(&self, key: &CacheKey) -> Option<Variants> {
        self.memory.get(key).or_else(|| self.disk.get(key))
    }

    fn put(&self, key: CacheKey, object: Arc<StoredObject>) {
        let generation = self.gate.generation(key.service());
        self.gate.shared(|| self.put_both(key, object, generation));
    }

    fn remove(&self, key: &CacheKey) -> bool {
        self.gate.purge(key.service(), || {
            let m = self.memory.remove(key);
            let d = self.disk.remove(key);
            m || d
        })
    }

    fn purge(&self, target: PurgeTarget<'_>, mode: PurgeMode, now: SystemTime) -> u64 {
        let service = match target {
            PurgeTarget::Url(key) => key.service(),
            PurgeTarget::Tag { service, .. } | PurgeTarget::Service(service) => service,
        };
        self.gate.purge(service, || {
            // Most objects are in both tiers: the larger count is the closer one.
            let m = self.memory.purge(target, mode, now);
            let d = self.disk.purge(target, mode, now);
            m.max(d)
        })
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            disk: Some(self.disk.stats()),
            ..self.memory.stats()
        }
    }

    fn generation(&self, service: &str) -> u64 {
        self.gate.generation(service)
    }

    fn put_if_generation(&self, key: CacheKey, object: Arc<StoredObject>, generation: u64) -> bool {
        let service = key.service().to_owned();
        self.gate
            .if_generation(&service, generation, || {
                self.put_both(key, object, generation)
            })
            .is_some()
    }

    fn fills(&self) -> &FillBudget {
        self.memory.fills()
    }

    fn synced(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        Some(self.disk.synced())
    }

    fn close(&self) {
        self.disk.close();
    }

    fn spool_max(&self) -> u64 {
        self.disk.max_object()
    }

    fn zero_copy_min(&self) -> u64 {
        self.memory.zero_copy_min()
    }

    fn spool(&self) -> Option<std::io::Result<DiskSpool>> {
        self.disk.spool()
    }

    fn load<'a>(&'a self, key: &'a CacheKey, object: Arc<StoredObject>) -> LoadFuture<'a> {
        Box::pin(async move {
            match object.body.file() {
                Some(f) if f.body_len() <= self.promote_max => self.promote(key, object).await,
                _ => Some(object),
            }
        })
    }
}
