//! The worker thread: writes queued objects, unlinks files that left the index, writes
//! expiry marks, answers barriers.

use super::*;
/// The thread that writes, unlinks and marks files.
pub(super) struct Worker {
    pub(super) root: PathBuf,
    pub(super) index: Arc<MemoryStore>,
    pub(super) shared: Arc<SharedRef>,
    pub(super) gate: Arc<PurgeGate>,
    pub(super) last_error_log: Option<Instant>,
}

impl Worker {
    pub(super) fn run(mut self, rx: Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            match job {
                Job::Write {
                    key,
                    object,
                    generation,
                    bytes,
                } => {
                    self.write(key, &object, generation);
                    self.shared
                        .0
                        .queued_bytes
                        .fetch_sub(bytes, Ordering::AcqRel);
                }
                Job::Unlink(path) => {
                    if !path.as_os_str().is_empty() {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                Job::MarkExpired(path, at) => {
                    if let Ok(f) = File::options().write(true).open(&path) {
                        if let Err(e) =
                            f.write_all_at(&format::expired_field(at), format::EXPIRED_AT)
                        {
                            tracing::warn!(path = %path.display(), error = %e, "disk tier: cannot mark expired; removing");
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Job::Discard(key, path) => {
                    self.index
                        .remove_where(&key, |o| o.body.file().is_some_and(|f| f.path == path));
                    let _ = std::fs::remove_file(&path);
                }
                Job::Barrier(tx) => {
                    let _ = tx.send(());
                }
                Job::Stop => break,
            }
        }
    }

    fn write(&mut self, key: CacheKey, object: &StoredObject, generation: u64) {
        let s = &self.shared.0;
        if s.degraded() {
            metrics::counter!("firebreak_disk_writes_total", "result" => "degraded").increment(1);
            return;
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let name = format!("{:08x}-{id:012x}", s.run);
        let tmp = self.root.join("tmp").join(&name);
        let dir = self.root.join("objects").join(format!("{:02x}", id & 0xff));
        let path = dir.join(&name);
        let written = write_file(&tmp, &key, object).and_then(|head_len| {
            // The 256 directories exist from the opening (recreated if someone removed one).
            if let Err(e) = std::fs::rename(&tmp, &path) {
                std::fs::create_dir_all(&dir)?;
                std::fs::rename(&tmp, &path).map_err(|_| e)?;
            }
            Ok(head_len)
        });
        let head_len = match written {
            Ok(h) => h,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.failed(&e);
                return;
            }
        };
        metrics::counter!("firebreak_disk_writes_total", "result" => "ok").increment(1);
        let on_disk = Arc::new(StoredObject {
            headers: object.headers.clone(),
            body: ObjectBody::Disk(Arc::new(DiskFile::new(
                path,
                key.clone(),
                head_len,
                object.body_len(),
                self.shared.clone(),
            ))),
            vary: object.vary.clone(),
            freshness: object.freshness,
            surrogate_keys: object.surrogate_keys.clone(),
        });
        let service = key.service().to_owned();
        let stored = self.gate.if_generation(&service, generation, || {
            self.index.put(key, on_disk.clone());
        });
        if stored.is_none() {
            // Purged since its fetch began: the file goes with `on_disk`.
            metrics::counter!("firebreak_disk_writes_total", "result" => "purged").increment(1);
        }
    }

    fn failed(&mut self, e: &std::io::Error) {
        let s = &self.shared.0;
        let until = s
            .now_ms()
            .saturating_add(u64::try_from(s.retry.as_millis()).unwrap_or(u64::MAX));
        s.degraded_until_ms.store(until, Ordering::Relaxed);
        metrics::counter!("firebreak_disk_writes_total", "result" => "error").increment(1);
        let quiet = self
            .last_error_log
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
        if !quiet {
            self.last_error_log = Some(Instant::now());
            tracing::error!(
                error = %e,
                retry_in = ?s.retry,
                "disk tier: write failed; serving from memory only until the retry"
            );
        }
    }
}

/// Writes `object` (body in memory) to `path`; returns the head's length.
fn write_file(path: &Path, key: &CacheKey, object: &StoredObject) -> std::io::Result<u64> {
    let head = format::encode_head(
        key,
        object.status(),
        &object.headers,
        &object.vary,
        &object.freshness,
        &object.surrogate_keys,
    );
    let chunks = object.body.chunks().unwrap_or_default();
    let mut out = BufWriter::with_capacity(256 * 1024, File::create(path)?);
    out.write_all(&format::prefix(&head, object.body_len()))?;
    let mut in_block = 0u64;
    let mut crc = crc32fast::Hasher::new();
    let mut written = 0u64;
    for chunk in chunks {
        let mut rest: &[u8] = chunk;
        while !rest.is_empty() {
            let n = (BLOCK - in_block).min(rest.len() as u64) as usize;
            let (part, tail) = rest.split_at(n);
            out.write_all(part)?;
            crc.update(part);
            in_block += n as u64;
            written += n as u64;
            rest = tail;
            if in_block == BLOCK {
                out.write_all(&std::mem::take(&mut crc).finalize().to_le_bytes())?;
                in_block = 0;
            }
        }
    }
    if in_block > 0 {
        out.write_all(&crc.finalize().to_le_bytes())?;
    }
    if written != object.body_len() {
        return Err(std::io::Error::other(
            "body length disagrees with its chunks",
        ));
    }
    out.write_all(&head)?;
    out.write_all(&format::END)?;
    out.into_inner().map_err(|e| e.into_error())?;
    Ok(head.len() as u64)
}
