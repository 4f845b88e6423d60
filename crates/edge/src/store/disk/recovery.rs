//! Reading object files back: recovery of the index at start, and the fuzz entry point.

use super::*;
use std::io::Read;

/// Reads a file's head back into an object whose body is the file.
pub(super) fn read_file(
    path: &Path,
    shared: &Arc<SharedRef>,
) -> Result<(CacheKey, StoredObject), FormatError> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut prefix = [0u8; format::PREFIX as usize];
    file.read_exact(&mut prefix)?;
    let lengths = format::read_prefix(&prefix, size)?;
    let mut head = BytesMut::zeroed(lengths.head_len as usize);
    file.read_exact_at(&mut head, format::head_offset(lengths.body_len))?;
    let mut end = [0u8; 4];
    file.read_exact_at(&mut end, size - 4)?;
    if end != format::END {
        return Err(FormatError::Magic);
    }
    let h = format::read_head(&prefix, &lengths, head.freeze())?;
    let object = StoredObject {
        headers: h.headers,
        body: ObjectBody::Disk(Arc::new(DiskFile::new(
            path.to_path_buf(),
            h.key.clone(),
            lengths.head_len,
            lengths.body_len,
            shared.clone(),
        ))),
        vary: h.vary,
        freshness: h.freshness,
        surrogate_keys: h.surrogate_keys,
    };
    Ok((h.key, object))
}

/// Parses `data` as a whole object file the way recovery and reads do (prefix, head, every
/// body block), for fuzzing: files on disk are input like any other.
pub fn parse_for_fuzzing(data: &[u8]) -> bool {
    let size = data.len() as u64;
    let Some(prefix) = data.get(..format::PREFIX as usize) else {
        return false;
    };
    let Ok(lengths) = format::read_prefix(prefix, size) else {
        return false;
    };
    let head_at = format::head_offset(lengths.body_len) as usize;
    let Some(head) = data.get(head_at..head_at + lengths.head_len as usize) else {
        return false;
    };
    if format::read_head(prefix, &lengths, Bytes::copy_from_slice(head)).is_err() {
        return false;
    }
    if data.get(data.len().saturating_sub(format::END.len())..) != Some(&format::END[..]) {
        return false;
    }
    let Some(body) = data.get(format::PREFIX as usize..head_at) else {
        return false;
    };
    format::check_blocks(Bytes::copy_from_slice(body), 0, lengths.body_len).is_ok()
}

/// Rebuilds the index from the files at start.
pub(super) struct Recovery {
    pub(super) root: PathBuf,
    pub(super) index: Arc<MemoryStore>,
    pub(super) shared: Arc<SharedRef>,
    pub(super) gate: Arc<PurgeGate>,
}

impl Recovery {
    pub(super) fn run(self) {
        let started = Instant::now();
        let dirs: Vec<PathBuf> = std::fs::read_dir(self.root.join("objects"))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, RECOVERY_THREADS);
        let next = AtomicU64::new(0);
        let found = AtomicU64::new(0);
        let dropped = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(dir) = dirs.get(i) else { break };
                    let Ok(entries) = std::fs::read_dir(dir) else {
                        continue;
                    };
                    let ours = format!("{:08x}-", self.shared.0.run);
                    for e in entries.flatten() {
                        if self.shared.0.closing.load(Ordering::Acquire) {
                            return;
                        }
                        // Written since this opening: already indexed by the worker.
                        if e.file_name().to_string_lossy().starts_with(&ours) {
                            continue;
                        }
                        match self.recover(&e.path()) {
                            true => found.fetch_add(1, Ordering::Relaxed),
                            false => dropped.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
        });
        let s = &self.shared.0;
        // Purges remembered during recovery are no longer needed once it is over.
        self.gate.shared(|| {
            s.recovering.store(false, Ordering::Release);
            if let Ok(mut r) = s.purges_while_recovering.lock() {
                r.clear();
            }
        });
        let objects = found.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        metrics::counter!("firebreak_disk_recovered_objects_total").increment(objects);
        tracing::info!(
            objects,
            removed = dropped.load(Ordering::Relaxed),
            ms = elapsed.as_millis() as u64,
            per_s = (objects as f64 / elapsed.as_secs_f64().max(1e-6)) as u64,
            "disk tier recovered"
        );
    }

    /// Indexes one file; false when it was removed (damaged, purged, superseded).
    fn recover(&self, path: &Path) -> bool {
        let (key, mut object) = match read_file(path, &self.shared) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "disk tier: unusable file removed");
                metrics::counter!("firebreak_disk_corrupt_total").increment(1);
                let _ = std::fs::remove_file(path);
                return false;
            }
        };
        let s = &self.shared.0;
        self.gate.shared(|| {
            if let Ok(records) = s.purges_while_recovering.lock() {
                // Every file recovery reads predates the purge (it was there at the opening).
                for r in records.iter() {
                    if !r.target.selects(&key, &object) {
                        continue;
                    }
                    match r.mode {
                        // Dropping `object` removes the file.
                        PurgeMode::Hard => return false,
                        PurgeMode::Soft => {
                            let expired = object.expired_copy(r.at);
                            if let Some(f) = object.body.file() {
                                s.send(Job::MarkExpired(
                                    f.path.clone(),
                                    format::epoch_ms(r.at).max(1),
                                ));
                            }
                            object = expired;
                        }
                    }
                }
            }
            // A newer copy of the same variant (stored since the start) wins.
            let newer = self.index.get(&key).is_some_and(|v| {
                v.objects().iter().any(|o| {
                    o.vary == object.vary
                        && o.freshness.response_time() >= object.freshness.response_time()
                })
            });
            if newer {
                return false;
            }
            self.index.put(key, Arc::new(object));
            true
        })
    }
}
