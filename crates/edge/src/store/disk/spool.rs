//! Large objects written to the disk tier as they arrive.

use super::*;
/// A large object written to the disk tier as it arrives (never held whole in memory): body
/// blocks first, then the head once it is final, then the prefix that makes the file valid,
/// then the rename into `objects/`. Blocking: call it off the async threads. Dropped before
/// [`DiskSpool::finish`], its temporary file is removed.
pub struct DiskSpool {
    tmp: PathBuf,
    path: PathBuf,
    out: Option<BufWriter<File>>,
    crc: crc32fast::Hasher,
    in_block: u64,
    written: u64,
    index: Arc<MemoryStore>,
    shared: Arc<SharedRef>,
    gate: Arc<PurgeGate>,
    max_object: u64,
}

impl DiskSpool {
    pub(super) fn create(tmp: PathBuf, path: PathBuf, tier: &DiskTier) -> std::io::Result<Self> {
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(&tmp)?);
        // The prefix is written last; until then the file is not valid.
        out.write_all(&[0u8; format::PREFIX as usize])?;
        Ok(Self {
            tmp,
            path,
            out: Some(out),
            crc: crc32fast::Hasher::new(),
            in_block: 0,
            written: 0,
            index: tier.index.clone(),
            shared: tier.shared.clone(),
            gate: tier.gate.clone(),
            max_object: tier.max_object,
        })
    }

    /// Body bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends body bytes.
    pub fn write(&mut self, chunks: &[Bytes]) -> std::io::Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| std::io::Error::other("spool finished"))?;
        for chunk in chunks {
            if self.written + chunk.len() as u64 > self.max_object {
                return Err(std::io::Error::other("object over the disk tier's bound"));
            }
            let mut rest: &[u8] = chunk;
            while !rest.is_empty() {
                let n = (BLOCK - self.in_block).min(rest.len() as u64) as usize;
                let (part, tail) = rest.split_at(n);
                out.write_all(part)?;
                self.crc.update(part);
                self.in_block += n as u64;
                self.written += n as u64;
                rest = tail;
                if self.in_block == BLOCK {
                    out.write_all(&std::mem::take(&mut self.crc).finalize().to_le_bytes())?;
                    self.in_block = 0;
                }
            }
        }
        Ok(())
    }

    /// Completes the file with `head` (an object whose body is ignored: the spooled bytes are
    /// its body) and indexes it if the service's purge generation is still `generation`.
    /// Returns whether it was stored.
    pub fn finish(
        mut self,
        key: CacheKey,
        head: &StoredObject,
        generation: u64,
    ) -> std::io::Result<bool> {
        let mut out = self
            .out
            .take()
            .ok_or_else(|| std::io::Error::other("spool finished"))?;
        if self.in_block > 0 {
            out.write_all(&std::mem::take(&mut self.crc).finalize().to_le_bytes())?;
        }
        let encoded = format::encode_head(
            &key,
            head.status(),
            &head.headers,
            &head.vary,
            &head.freshness,
            &head.surrogate_keys,
        );
        out.write_all(&encoded)?;
        out.write_all(&format::END)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.write_all_at(&format::prefix(&encoded, self.written), 0)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)?;
        metrics::counter!("firebreak_disk_writes_total", "result" => "ok").increment(1);
        let on_disk = Arc::new(StoredObject {
            headers: head.headers.clone(),
            body: ObjectBody::Disk(Arc::new(DiskFile::new(
                std::mem::take(&mut self.path),
                key.clone(),
                encoded.len() as u64,
                self.written,
                self.shared.clone(),
            ))),
            vary: head.vary.clone(),
            freshness: head.freshness,
            surrogate_keys: head.surrogate_keys.clone(),
        });
        let service = key.service().to_owned();
        let stored = self
            .gate
            .if_generation(&service, generation, || {
                self.index.put(key, on_disk.clone())
            })
            .is_some();
        if !stored {
            metrics::counter!("firebreak_disk_writes_total", "result" => "purged").increment(1);
        }
        Ok(stored)
    }
}

impl Drop for DiskSpool {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
