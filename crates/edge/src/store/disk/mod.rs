//! The disk tier: objects kept in files, one per stored variant, under a byte bound, found
//! again after a restart or a crash.
//!
//! - **Index in memory.** The tier's index is a [`MemoryStore`] whose objects have their body
//!   on disk ([`ObjectBody::Disk`]): the same S3-FIFO eviction, variant selection and
//!   surrogate-key index as the memory tier, weighed by the files' sizes. An object leaves
//!   the index (evicted, replaced, purged) → its [`DiskFile`] is dropped with its last user →
//!   the file is unlinked by the worker.
//! - **Writes off the request path.** Objects stored in memory are queued (bounded by bytes)
//!   for one worker thread, which writes each to `tmp/`, renames it into `objects/xx/` and
//!   only then indexes it — if no purge of its service happened since its fetch began
//!   ([`PurgeGate`]). A file under `objects/` is therefore complete.
//! - **Reads stream.** A body is read in blocks of [`BLOCK`] bytes, each checked against its
//!   CRC-32 before a byte of it is sent; a damaged block drops the object.
//! - **Recovery.** At start a background thread reads every file's head (not its body),
//!   checks lengths, magic and the head's checksum, and indexes it; anything else is removed.
//!   Purges that arrive while it runs are remembered and applied to what it finds later.
//! - **Purges are durable.** A hard purge unlinks the files, a soft purge writes an expiry
//!   mark into each file, before the purge is answered ([`DiskTier::synced`]).
//! - **Failure degrades.** A write that fails (disk full, I/O error) puts the tier in
//!   memory-only mode for `retry_ms` (logged, counted); the edge never stops for its disk.

mod format;
mod recovery;
mod spool;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests;
mod worker;

pub use format::{FormatError, BLOCK};
pub use recovery::parse_for_fuzzing;
pub use spool::DiskSpool;

use recovery::Recovery;
use worker::Worker;

use super::{
    CacheKey, MemoryStore, ObjectBody, PurgeMode, PurgeTarget, Storage, StoredObject, Variants,
};
use bytes::{Bytes, BytesMut};
use firebreak_config::DiskCacheConfig;
use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Body bytes read per blocking read while streaming (a few blocks at a time).
const READ_AHEAD: u64 = 4 * BLOCK;
/// Recovery threads at most.
const RECOVERY_THREADS: usize = 4;
/// Generation slots of the purge gate (services hashed onto them).
const GENERATION_SLOTS: usize = 64;
/// A file's size on disk is counted in whole filesystem blocks.
const FS_BLOCK: u64 = 4096;

/// Purge generations shared by the memory and disk tiers, and the lock that keeps a
/// check-and-store from being split by a purge (see [`super::HybridStore`]).
pub(crate) struct PurgeGate {
    generations: Box<[AtomicU64]>,
    hasher: RandomState,
    lock: RwLock<()>,
}

impl PurgeGate {
    pub(crate) fn new() -> Self {
        Self {
            generations: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            lock: RwLock::new(()),
        }
    }

    fn slot(&self, service: &str) -> Option<&AtomicU64> {
        let i = (self.hasher.hash_one(service) as usize) % self.generations.len();
        self.generations.get(i)
    }

    /// The service's purge generation.
    pub(crate) fn generation(&self, service: &str) -> u64 {
        self.slot(service).map_or(0, |g| g.load(Ordering::Acquire))
    }

    /// Runs `f` with purges held off, if the service's generation is still `generation`.
    pub(crate) fn if_generation<T>(
        &self,
        service: &str,
        generation: u64,
        f: impl FnOnce() -> T,
    ) -> Option<T> {
        let _shared = self.lock.read().unwrap_or_else(|p| p.into_inner());
        (self.generation(service) == generation).then(f)
    }

    /// Runs `f` with purges held off.
    pub(crate) fn shared<T>(&self, f: impl FnOnce() -> T) -> T {
        let _shared = self.lock.read().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// Moves the service's generation and runs `f` (the purge) with every store held off.
    pub(crate) fn purge<T>(&self, service: &str, f: impl FnOnce() -> T) -> T {
        let _exclusive = self.lock.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = self.slot(service) {
            slot.fetch_add(1, Ordering::AcqRel);
        }
        f()
    }
}

/// Counts and sizes of the disk tier, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// URLs indexed.
    pub keys: u64,
    /// Bytes on disk (files rounded up to filesystem blocks).
    pub bytes: u64,
    /// The bound.
    pub max_bytes: u64,
    /// Whether the index is still being recovered.
    pub recovering: bool,
    /// Whether writes are off after a failure.
    pub degraded: bool,
    /// Files kept open for reading.
    pub open_files: u64,
}

/// Open files left to everything else (origin connections, listeners, logs, files being
/// written) when the tier's budget is taken from the open-files limit.
const FILES_RESERVED: u64 = 1024;

/// Files the tier may keep open: `configured`, lowered to what the open-files limit
/// (RLIMIT_NOFILE) leaves once `client_connections` and [`FILES_RESERVED`] are set aside,
/// but never below a quarter of the limit (the share an edge whose connection bound exceeds
/// its limit still gives its disk).
fn open_files_budget(configured: u32, client_connections: usize) -> usize {
    let configured = configured as usize;
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) => {
            let left = soft
                .saturating_sub(client_connections as u64)
                .saturating_sub(FILES_RESERVED);
            let allowed = usize::try_from(left.max(soft / 4)).unwrap_or(usize::MAX);
            if configured > allowed {
                tracing::info!(
                    configured,
                    allowed,
                    open_files_limit = soft,
                    client_connections,
                    "disk tier: cache.disk.open_files lowered to what the open-files limit leaves"
                );
            }
            configured.min(allowed)
        }
        Err(_) => configured,
    }
}

/// What the worker thread does.
enum Job {
    /// Write an object, then index it if its service's generation is unchanged.
    Write {
        key: CacheKey,
        object: Arc<StoredObject>,
        generation: u64,
        bytes: u64,
    },
    /// Remove a file (it left the index).
    Unlink(PathBuf),
    /// Write a soft purge's expiry mark.
    MarkExpired(PathBuf, u64),
    /// Remove the variant of `key` stored in this file (it failed a read).
    Discard(CacheKey, PathBuf),
    /// Answer when every job queued before has run.
    Barrier(tokio::sync::oneshot::Sender<()>),
    /// Stop the worker.
    Stop,
}

/// A purge that arrived while recovery ran: applied to the objects it finds afterwards.
struct PurgeRecord {
    target: OwnedTarget,
    mode: PurgeMode,
    at: SystemTime,
}

enum OwnedTarget {
    Url(CacheKey),
    Tag(Box<str>, Box<str>),
    Service(Box<str>),
}

impl OwnedTarget {
    fn of(target: PurgeTarget<'_>) -> Self {
        match target {
            PurgeTarget::Url(k) => OwnedTarget::Url(k.clone()),
            PurgeTarget::Tag { service, tag } => OwnedTarget::Tag(service.into(), tag.into()),
            PurgeTarget::Service(s) => OwnedTarget::Service(s.into()),
        }
    }

    fn selects(&self, key: &CacheKey, object: &StoredObject) -> bool {
        match self {
            OwnedTarget::Url(k) => k == key,
            OwnedTarget::Tag(service, tag) => key.service() == &**service && object.has_tag(tag),
            OwnedTarget::Service(service) => key.service() == &**service,
        }
    }
}

/// State shared by the tier's handle, its worker, its recovery and every [`DiskFile`].
struct Shared {
    jobs: Mutex<Sender<Job>>,
    /// Set when the tier shuts down: files dropped from then on are kept (they are still
    /// indexed on disk for the next start).
    closing: AtomicBool,
    queued_bytes: AtomicU64,
    queue_limit: u64,
    /// Writes are off until this instant (ms since the tier opened), after a failure.
    degraded_until_ms: AtomicU64,
    retry: Duration,
    opened: Instant,
    recovering: AtomicBool,
    /// Purges seen while recovering.
    purges_while_recovering: Mutex<Vec<PurgeRecord>>,
    next_id: AtomicU64,
    /// This opening's number: the prefix of the files it writes, which recovery (reading
    /// what earlier runs left) skips.
    run: u32,
    /// Files kept open by [`DiskFile`]s now, and the most that may be.
    open_files: AtomicUsize,
    max_open_files: usize,
}

impl Shared {
    fn send(&self, job: Job) -> bool {
        match self.jobs.lock() {
            Ok(tx) => tx.send(job).is_ok(),
            Err(p) => p.into_inner().send(job).is_ok(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn degraded(&self) -> bool {
        self.now_ms() < self.degraded_until_ms.load(Ordering::Relaxed)
    }
}

/// A stored body's file. Dropped with the last object that refers to it: the file is then
/// unlinked, unless the tier is shutting down.
///
/// Its first read keeps the file open (as nginx's `open_file_cache`), while the tier's
/// budget of open files (`cache.disk.open_files`) allows: later hits cost one positional
/// read, not an open, a read and a close (the path walk and the close were an eighth of a
/// disk hit's CPU). The descriptor closes when the object leaves the index and its last
/// reader ends, so a purged or evicted file's space is freed then.
#[derive(Debug)]
pub struct DiskFile {
    path: PathBuf,
    key: CacheKey,
    head_len: u64,
    body_len: u64,
    kept: OnceLock<Arc<File>>,
    shared: Arc<SharedRef>,
}

/// [`Shared`] behind a type that can be `Debug`.
struct SharedRef(Shared);

impl std::fmt::Debug for SharedRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskTier")
    }
}

impl DiskFile {
    fn new(
        path: PathBuf,
        key: CacheKey,
        head_len: u64,
        body_len: u64,
        shared: Arc<SharedRef>,
    ) -> Self {
        Self {
            path,
            key,
            head_len,
            body_len,
            kept: OnceLock::new(),
            shared,
        }
    }

    /// Body length.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file, open for reading: the one kept open, or opened now (and kept if the
    /// tier's open-files budget allows). A reader holds it for its whole response, so a
    /// purge that unlinks the file does not cut a response already being sent. Blocking
    /// when it opens.
    pub fn open(&self) -> std::io::Result<Arc<File>> {
        if let Some(file) = self.kept.get() {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(&self.path)?);
        let s = &self.shared.0;
        if s.open_files.fetch_add(1, Ordering::Relaxed) < s.max_open_files {
            if self.kept.set(file.clone()).is_err() {
                // Another reader kept its own first.
                s.open_files.fetch_sub(1, Ordering::Relaxed);
            }
        } else {
            s.open_files.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(file)
    }

    /// Reads and checks body bytes from `start` (up to `READ_AHEAD` of them, and not past
    /// `end`) from `file` (from [`DiskFile::open`]; positional reads, so any number of
    /// readers may share it). Blocking: call it off the async threads.
    pub fn read_at(&self, file: &File, start: u64, end: u64) -> Result<Vec<Bytes>, FormatError> {
        let end = end.min(self.body_len);
        if start >= end {
            return Ok(Vec::new());
        }
        let first = start / BLOCK;
        let last = (end.min(first * BLOCK + READ_AHEAD) - 1) / BLOCK;
        let from = format::block_offset(first);
        let to = format::block_offset(last) + (self.body_len - last * BLOCK).min(BLOCK) + 4;
        let len = usize::try_from(to - from).map_err(|_| FormatError::Length("read"))?;
        // Positional reads into spare capacity (no zeroing of the buffer first).
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = from + buf.len() as u64;
            match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(std::io::Error::from(e).into()),
            }
        }
        let blocks = format::check_blocks(Bytes::from(buf), first, self.body_len)?;
        // Trim to [start, end).
        let mut out = Vec::with_capacity(blocks.len());
        let mut offset = first * BLOCK;
        for b in blocks {
            let len = b.len() as u64;
            let (lo, hi) = (start.max(offset), end.min(offset + len));
            if lo < hi {
                out.push(b.slice((lo - offset) as usize..(hi - offset) as usize));
            }
            offset += len;
        }
        Ok(out)
    }

    /// The file failed a read: it is dropped from the index and removed.
    pub fn discard(&self, error: &FormatError) {
        tracing::warn!(path = %self.path.display(), %error, "disk tier: object unreadable; dropped");
        metrics::counter!("firebreak_disk_read_errors_total").increment(1);
        self.shared
            .0
            .send(Job::Discard(self.key.clone(), self.path.clone()));
    }

    /// Bytes the file takes on disk.
    fn disk_bytes(head_len: u64, body_len: u64) -> u64 {
        format::file_len(head_len, body_len).div_ceil(FS_BLOCK) * FS_BLOCK
    }
}

impl Drop for DiskFile {
    fn drop(&mut self) {
        if self.kept.get().is_some() {
            self.shared.0.open_files.fetch_sub(1, Ordering::Relaxed);
        }
        if !self.shared.0.closing.load(Ordering::Acquire) {
            self.shared
                .0
                .send(Job::Unlink(std::mem::take(&mut self.path)));
        }
    }
}

/// Bytes a disk object weighs in the tier's index: its file on disk, plus what its head
/// holds in memory.
pub(crate) fn weight_on_disk(file: &DiskFile) -> u64 {
    DiskFile::disk_bytes(file.head_len, file.body_len)
}

/// Why the tier could not open.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The directory cannot be created or used.
    #[error("cache directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the directory.
    #[error("cache directory {0} is in use by another process")]
    Locked(String),
}

/// The disk tier (see the module documentation).
pub struct DiskTier {
    index: Arc<MemoryStore>,
    shared: Arc<SharedRef>,
    gate: Arc<PurgeGate>,
    root: PathBuf,
    max_bytes: u64,
    max_object: u64,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Holds the directory's lock until [`DiskTier::close`].
    lock: Mutex<Option<File>>,
}

impl DiskTier {
    /// Opens (creating) the cache directory, takes its lock, starts the worker and the
    /// recovery of what the directory holds. Objects up to `max_object_bytes` are kept.
    pub(crate) fn open(
        config: &DiskCacheConfig,
        max_object_bytes: u64,
        gate: Arc<PurgeGate>,
        client_connections: usize,
    ) -> Result<Self, DiskError> {
        let root = PathBuf::from(&config.path);
        let dir_err = |source| DiskError::Dir {
            path: config.path.clone(),
            source,
        };
        for i in 0..=0xffu32 {
            std::fs::create_dir_all(root.join("objects").join(format!("{i:02x}")))
                .map_err(dir_err)?;
        }
        std::fs::create_dir_all(root.join("tmp")).map_err(dir_err)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .map_err(dir_err)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| DiskError::Locked(config.path.clone()))?;
        // Whatever was being written when the last process stopped is incomplete.
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let run = next_run(&root).map_err(dir_err)?;
        let (tx, rx) = channel();
        let shared = Arc::new(SharedRef(Shared {
            jobs: Mutex::new(tx),
            closing: AtomicBool::new(false),
            queued_bytes: AtomicU64::new(0),
            queue_limit: config.write_queue_bytes,
            degraded_until_ms: AtomicU64::new(0),
            retry: Duration::from_millis(config.retry_ms),
            opened: Instant::now(),
            recovering: AtomicBool::new(true),
            purges_while_recovering: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            run,
            open_files: AtomicUsize::new(0),
            max_open_files: open_files_budget(config.open_files, client_connections),
        }));
        let index = Arc::new(MemoryStore::new(config.max_bytes, max_object_bytes));
        let worker = Worker {
            root: root.clone(),
            index: index.clone(),
            shared: shared.clone(),
            gate: gate.clone(),
            last_error_log: None,
        };
        let worker = std::thread::Builder::new()
            .name("disk-tier".into())
            .spawn(move || worker.run(rx))
            .map_err(dir_err)?;
        let recovery = Recovery {
            root: root.clone(),
            index: index.clone(),
            shared: shared.clone(),
            gate: gate.clone(),
        };
        std::thread::Builder::new()
            .name("disk-recovery".into())
            .spawn(move || recovery.run())
            .map_err(dir_err)?;
        Ok(Self {
            index,
            shared,
            gate,
            root,
            max_bytes: config.max_bytes,
            max_object: max_object_bytes,
            worker: Mutex::new(Some(worker)),
            lock: Mutex::new(Some(lock)),
        })
    }

    /// The variants indexed under `key`.
    pub(crate) fn get(&self, key: &CacheKey) -> Option<Variants> {
        self.index.get(key)
    }

    /// Queues a stored object (body in memory) for writing; it is indexed once written if
    /// `generation` still holds. Skipped (counted) when the queue is full or the tier is
    /// degraded.
    pub(crate) fn write(&self, key: CacheKey, object: Arc<StoredObject>, generation: u64) {
        let s = &self.shared.0;
        if object.body.chunks().is_none() {
            return;
        }
        if s.degraded() {
            metrics::counter!("firebreak_disk_writes_total", "result" => "degraded").increment(1);
            return;
        }
        let bytes = object.body_len() + object.headers.size() as u64;
        let queued = s
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                q.checked_add(bytes).filter(|t| *t <= s.queue_limit)
            });
        if queued.is_err() {
            metrics::counter!("firebreak_disk_writes_total", "result" => "queue_full").increment(1);
            return;
        }
        s.send(Job::Write {
            key,
            object,
            generation,
            bytes,
        });
    }

    /// The largest object the tier keeps.
    pub(crate) fn max_object(&self) -> u64 {
        self.max_object
    }

    /// Starts writing a large object as it arrives (blocking: creates its file). `None` when
    /// the tier takes no writes now (degraded, closing).
    pub(crate) fn spool(&self) -> Option<std::io::Result<DiskSpool>> {
        let s = &self.shared.0;
        if s.degraded() || s.closing.load(Ordering::Acquire) {
            return None;
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let name = format!("{:08x}-{id:012x}", s.run);
        let tmp = self.root.join("tmp").join(&name);
        let path = self
            .root
            .join("objects")
            .join(format!("{:02x}", id & 0xff))
            .join(&name);
        Some(DiskSpool::create(tmp, path, self).inspect_err(|e| {
            tracing::warn!(error = %e, "disk tier: cannot start writing a large object");
        }))
    }

    /// Indexes a refreshed head of an object whose body is on disk (same file).
    pub(crate) fn update_head(&self, key: CacheKey, object: Arc<StoredObject>) {
        if object.body.file().is_some() {
            self.index.put(key, object);
        }
    }

    /// Whether `key`'s index entry still holds `file`.
    pub(crate) fn holds(&self, key: &CacheKey, file: &Arc<DiskFile>) -> bool {
        self.index.get(key).is_some_and(|v| {
            v.objects()
                .iter()
                .any(|o| o.body.file().is_some_and(|f| Arc::ptr_eq(f, file)))
        })
    }

    /// Purges from the index and queues the files' removal (hard) or expiry marks (soft).
    /// Call inside [`PurgeGate::purge`]; [`DiskTier::synced`] resolves once the files are
    /// done.
    pub(crate) fn purge(&self, target: PurgeTarget<'_>, mode: PurgeMode, now: SystemTime) -> u64 {
        let s = &self.shared.0;
        if s.recovering.load(Ordering::Acquire) {
            if let Ok(mut records) = s.purges_while_recovering.lock() {
                records.push(PurgeRecord {
                    target: OwnedTarget::of(target),
                    mode,
                    at: now,
                });
            }
        }
        let objects = self.index.matching(target);
        let n = self.index.purge(target, mode, now);
        let at = format::epoch_ms(now).max(1);
        for o in objects {
            if let Some(f) = o.body.file() {
                match mode {
                    PurgeMode::Hard => s.send(Job::Unlink(f.path.clone())),
                    PurgeMode::Soft => s.send(Job::MarkExpired(f.path.clone(), at)),
                };
            }
        }
        n
    }

    /// Removes every variant of `key` (invalidation).
    pub(crate) fn remove(&self, key: &CacheKey) -> bool {
        self.purge(PurgeTarget::Url(key), PurgeMode::Hard, SystemTime::now()) > 0
    }

    /// Resolves when every file operation queued so far is done.
    pub(crate) fn synced(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.0.send(Job::Barrier(tx));
        rx
    }

    /// Counts and sizes.
    pub fn stats(&self) -> DiskStats {
        let s = self.index.stats();
        DiskStats {
            keys: s.keys,
            bytes: s.bytes,
            max_bytes: self.max_bytes,
            recovering: self.shared.0.recovering.load(Ordering::Acquire),
            degraded: self.shared.0.degraded(),
            open_files: self.shared.0.open_files.load(Ordering::Relaxed) as u64,
        }
    }
}

impl DiskTier {
    /// Stops the tier: what is queued is written, files still indexed stay for the next
    /// start, the directory's lock is released. Reads of open bodies go on; nothing more is
    /// written or removed.
    pub(crate) fn close(&self) {
        self.shared.0.closing.store(true, Ordering::Release);
        self.shared.0.send(Job::Stop);
        let worker = self.worker.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(w) = worker {
            let _ = w.join();
        }
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        self.close();
    }
}

/// Reads the directory's run counter, moves it on and writes it back (durably): each opening
/// names its files with its own run number.
fn next_run(root: &Path) -> std::io::Result<u32> {
    let path = root.join("run");
    let last = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let run = last.wrapping_add(1);
    firebreak_protocol::durable::write_atomic(&path, format!("{run}\n").as_bytes())?;
    Ok(run)
}
