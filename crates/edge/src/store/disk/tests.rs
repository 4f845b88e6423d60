//! The disk tier with real files: written, recovered after a reopen, damaged, purged,
//! bounded, locked, failing.

use super::recovery::read_file;
use super::*;
use crate::http::freshness::Freshness;
use crate::store::{HybridStore, StoredHeaders, VaryKey};
use crate::testutil::headers;
use http::StatusCode;
use std::time::{Duration, UNIX_EPOCH};

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let p = std::env::temp_dir().join(format!("fb-disk-{name}-{hex}"));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn config(&self, max_bytes: u64) -> DiskCacheConfig {
        DiskCacheConfig {
            path: self.0.to_string_lossy().into_owned(),
            max_bytes,
            max_object_bytes: None,
            write_queue_bytes: 64 << 20,
            retry_ms: 30_000,
            open_files: 64,
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const MAX_OBJECT: u64 = 1 << 20;

fn open(dir: &TempDir, disk_bytes: u64) -> HybridStore {
    HybridStore::open(
        MemoryStore::new(8 << 20, MAX_OBJECT),
        &dir.config(disk_bytes),
        MAX_OBJECT,
        0,
    )
    .unwrap()
}

/// A body whose every byte depends on its position and on `seed`.
fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8)
        .collect()
}

fn key(path: &str) -> CacheKey {
    CacheKey::new("svc", "a.example", path)
}

fn object(seed: u8, len: usize, tags: &str) -> Arc<StoredObject> {
    let b = body(seed, len);
    // Several chunks of odd sizes, as a fill receives them.
    let chunks: Vec<Bytes> = b.chunks(7000).map(Bytes::copy_from_slice).collect();
    let h = headers(&[
        ("content-type", "application/octet-stream"),
        ("etag", &format!("\"{seed}\"")),
        ("surrogate-key", tags),
        ("content-length", &len.to_string()),
    ]);
    Arc::new(StoredObject {
        headers: StoredHeaders::from_map(StatusCode::OK, &h),
        body: ObjectBody::Memory(chunks.into()),
        vary: VaryKey::from_exchange(
            &headers(&[("vary", "accept-encoding")]),
            &headers(&[("accept-encoding", "gzip")]),
        )
        .unwrap(),
        freshness: Freshness::from(crate::http::freshness::FreshnessParts {
            // To the millisecond (what the file keeps).
            response_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            corrected_initial_age: Duration::from_secs(3),
            lifetime: Duration::from_secs(3600 * 24 * 365 * 20),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(20),
            must_revalidate: false,
        }),
        surrogate_keys: crate::store::surrogate_keys(&h),
    })
}

/// Waits (bounded) until every queued file operation is done, twice: unlinks queued by the
/// first round's evictions run in the second.
async fn synced(store: &HybridStore) {
    for _ in 0..2 {
        let done = store.synced().unwrap();
        tokio::time::timeout(Duration::from_secs(20), done)
            .await
            .expect("disk tier synced in time")
            .unwrap();
    }
}

async fn recovered(store: &HybridStore) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.disk_stats().recovering {
        assert!(Instant::now() < deadline, "recovery did not finish in time");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The object as read from the disk tier only (the memory tier bypassed).
fn on_disk(store: &HybridStore, k: &CacheKey) -> Option<Arc<StoredObject>> {
    let v = store.disk.get(k)?;
    v.objects().first().cloned()
}

fn read_all(o: &StoredObject) -> Result<Vec<u8>, FormatError> {
    let f = o.body.file().expect("a disk body");
    let file = f.open()?;
    let mut out = Vec::new();
    while (out.len() as u64) < f.body_len() {
        for c in f.read_at(&file, out.len() as u64, f.body_len())? {
            out.extend_from_slice(&c);
        }
    }
    Ok(out)
}

fn files(dir: &TempDir) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(dir.0.join("objects")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

const SIZES: [usize; 5] = [0, 1, 1024, BLOCK as usize, 3 * BLOCK as usize + 17];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_survive_a_reopen_byte_for_byte() {
    let dir = TempDir::new("reopen");
    {
        let store = open(&dir, 64 << 20);
        recovered(&store).await;
        for (i, len) in SIZES.iter().enumerate() {
            let k = key(&format!("/o{i}"));
            let g = store.generation("svc");
            assert!(store.put_if_generation(k, object(i as u8, *len, "t1 t2"), g));
        }
        synced(&store).await;
        assert_eq!(store.disk_stats().keys, SIZES.len() as u64);
    }
    let store = open(&dir, 64 << 20);
    recovered(&store).await;
    for (i, len) in SIZES.iter().enumerate() {
        let k = key(&format!("/o{i}"));
        let want = object(i as u8, *len, "t1 t2");
        let got = on_disk(&store, &k).expect("recovered");
        assert_eq!(read_all(&got).unwrap(), body(i as u8, *len), "object {i}");
        assert_eq!(got.headers, want.headers);
        assert_eq!(got.status(), want.status());
        assert_eq!(got.vary, want.vary);
        assert_eq!(
            got.freshness.response_time(),
            want.freshness.response_time()
        );
        assert_eq!(got.freshness.lifetime(), want.freshness.lifetime());
        assert_eq!(
            got.freshness.stale_if_error(),
            want.freshness.stale_if_error()
        );
        assert!(got.has_tag("t2"));
        // Through the store: found on disk, promoted to memory, the same bytes.
        let v = store.get(&k).unwrap();
        let sel = v
            .select(&headers(&[("accept-encoding", "gzip")]))
            .unwrap()
            .clone();
        let loaded = store.load(&k, sel).await.unwrap();
        let bytes: Vec<u8> = loaded
            .body
            .chunks()
            .unwrap()
            .iter()
            .flat_map(|c| c.to_vec())
            .collect();
        assert_eq!(bytes, body(i as u8, *len));
        assert!(store.memory.get(&k).is_some(), "promoted to memory");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_are_removed_or_refused_never_served() {
    let dir = TempDir::new("damage");
    {
        let store = open(&dir, 64 << 20);
        recovered(&store).await;
        for i in 0..4u8 {
            let g = store.generation("svc");
            store.put_if_generation(key(&format!("/d{i}")), object(i, 100_000, "x"), g);
        }
        synced(&store).await;
    }
    let by_key = |i: u8| {
        files(&dir)
            .into_iter()
            .find(|p| {
                let (k, _) = read_file(p, &Arc::new(dummy_shared())).unwrap();
                k == key(&format!("/d{i}"))
            })
            .unwrap()
    };
    use std::os::unix::fs::FileExt;
    let (p0, p1, p2) = (by_key(0), by_key(1), by_key(2));
    // 0: a flipped bit in its second body block.
    let f = File::options().read(true).write(true).open(&p0).unwrap();
    let mut b = [0u8; 1];
    let at = format::block_offset(1) + 10;
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    // 1: torn (cut short).
    let len = std::fs::metadata(&p1).unwrap().len();
    File::options()
        .write(true)
        .open(&p1)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // 2: a flipped bit in its head.
    let f = File::options().read(true).write(true).open(&p2).unwrap();
    let at = std::fs::metadata(&p2).unwrap().len() - 4 - 3;
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    // A write that never finished.
    std::fs::write(dir.0.join("tmp").join("00000000deadbeef"), b"partial").unwrap();

    let store = open(&dir, 64 << 20);
    recovered(&store).await;
    assert!(
        on_disk(&store, &key("/d1")).is_none(),
        "torn file not indexed"
    );
    assert!(
        on_disk(&store, &key("/d2")).is_none(),
        "damaged head not indexed"
    );
    assert!(!p1.exists() && !p2.exists(), "damaged files removed");
    assert_eq!(std::fs::read_dir(dir.0.join("tmp")).unwrap().count(), 0);
    // 0's head is intact: indexed, but its body fails its checksum when read.
    let o = on_disk(&store, &key("/d0")).unwrap();
    assert!(matches!(read_all(&o), Err(FormatError::Checksum(_))));
    let sel = store.get(&key("/d0")).unwrap().objects()[0].clone();
    assert!(
        store.load(&key("/d0"), sel).await.is_none(),
        "refused, a miss"
    );
    synced(&store).await;
    assert!(
        on_disk(&store, &key("/d0")).is_none(),
        "dropped from the index"
    );
    assert!(!p0.exists(), "and removed");
    // 3 is untouched.
    assert_eq!(
        read_all(&on_disk(&store, &key("/d3")).unwrap()).unwrap(),
        body(3, 100_000)
    );
}

/// A shared state for reading files in tests (never sends anything that matters).
fn dummy_shared() -> SharedRef {
    let (tx, _rx) = channel();
    SharedRef(Shared {
        jobs: Mutex::new(tx),
        closing: AtomicBool::new(true),
        queued_bytes: AtomicU64::new(0),
        queue_limit: 0,
        degraded_until_ms: AtomicU64::new(0),
        retry: Duration::ZERO,
        opened: Instant::now(),
        recovering: AtomicBool::new(false),
        purges_while_recovering: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
        run: 0,
        open_files: AtomicUsize::new(0),
        max_open_files: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_reach_the_disk_and_hold_after_a_reopen() {
    let dir = TempDir::new("purge");
    {
        let store = open(&dir, 64 << 20);
        recovered(&store).await;
        for i in 0..6u8 {
            let tags = if i < 3 { "red" } else { "blue" };
            let g = store.generation("svc");
            store.put_if_generation(key(&format!("/p{i}")), object(i, 5000, tags), g);
        }
        synced(&store).await;
        assert_eq!(files(&dir).len(), 6);
        let now = SystemTime::now();
        let n = store.purge(
            PurgeTarget::Tag {
                service: "svc",
                tag: "red",
            },
            PurgeMode::Hard,
            now,
        );
        assert_eq!(n, 3);
        let n = store.purge(PurgeTarget::Url(&key("/p4")), PurgeMode::Soft, now);
        assert_eq!(n, 1);
        // What the admin endpoint waits for before it answers.
        synced(&store).await;
        assert_eq!(files(&dir).len(), 3, "hard-purged files are gone");
    }
    let store = open(&dir, 64 << 20);
    recovered(&store).await;
    let now = SystemTime::now();
    for i in 0..3u8 {
        assert!(
            store.get(&key(&format!("/p{i}"))).is_none(),
            "purged /p{i} came back"
        );
    }
    let soft = on_disk(&store, &key("/p4")).unwrap();
    assert!(
        soft.freshness.ttl(now).is_none(),
        "soft purge holds after a restart"
    );
    assert!(soft.freshness.stale_if_error() > Duration::ZERO);
    let kept = on_disk(&store, &key("/p5")).unwrap();
    assert!(
        kept.freshness.ttl(now).is_some(),
        "untouched object still fresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_files_are_kept_open_within_the_budget_and_closed_when_their_object_goes() {
    let dir = TempDir::new("kept");
    let mut config = dir.config(64 << 20);
    config.open_files = 3;
    let store = HybridStore::open(
        MemoryStore::new(8 << 20, MAX_OBJECT),
        &config,
        MAX_OBJECT,
        0,
    )
    .unwrap();
    recovered(&store).await;
    for i in 0..5u8 {
        let g = store.generation("svc");
        store.put_if_generation(key(&format!("/k{i}")), object(i, 70_000, "k"), g);
    }
    synced(&store).await;
    assert_eq!(store.disk_stats().open_files, 0, "nothing read yet");
    // Every object reads back whole, twice; only three stay open.
    for _ in 0..2 {
        for i in 0..5u8 {
            let o = on_disk(&store, &key(&format!("/k{i}"))).unwrap();
            assert_eq!(read_all(&o).unwrap(), body(i, 70_000));
        }
    }
    assert_eq!(
        store.disk_stats().open_files,
        3,
        "the budget bounds kept files"
    );
    // The same descriptor serves a second read of a kept object.
    let first = on_disk(&store, &key("/k0")).unwrap();
    let f = first.body.file().unwrap();
    assert!(Arc::ptr_eq(&f.open().unwrap(), &f.open().unwrap()));
    // A reader that holds the file finishes after a hard purge unlinks it.
    let held = f.open().unwrap();
    let n = store.purge(
        PurgeTarget::Tag {
            service: "svc",
            tag: "k",
        },
        PurgeMode::Hard,
        SystemTime::now(),
    );
    assert_eq!(n, 5);
    synced(&store).await;
    assert!(files(&dir).is_empty(), "purged files are unlinked");
    let mut out = Vec::new();
    while (out.len() as u64) < f.body_len() {
        for c in f.read_at(&held, out.len() as u64, f.body_len()).unwrap() {
            out.extend_from_slice(&c);
        }
    }
    assert_eq!(
        out,
        body(0, 70_000),
        "the held file reads whole after its unlink"
    );
    // Objects gone from the index close their kept files.
    drop((first, held));
    assert_eq!(
        store.disk_stats().open_files,
        0,
        "kept files closed with their objects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_recovery_is_applied_to_what_it_finds_later() {
    let dir = TempDir::new("purge-recovering");
    {
        let store = open(&dir, 256 << 20);
        recovered(&store).await;
        for i in 0..2000u32 {
            let g = store.generation("svc");
            store.put_if_generation(key(&format!("/r{i}")), object(i as u8, 100, "all"), g);
        }
        synced(&store).await;
    }
    // Whatever recovery has found by the time the purge arrives, nothing of it survives.
    let store = open(&dir, 256 << 20);
    store.purge(
        PurgeTarget::Service("svc"),
        PurgeMode::Hard,
        SystemTime::now(),
    );
    recovered(&store).await;
    synced(&store).await;
    assert_eq!(store.disk_stats().keys, 0);
    assert_eq!(files(&dir).len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_is_bounded_by_bytes_and_evicted_files_go() {
    let dir = TempDir::new("bound");
    let max = 2 << 20;
    let store = HybridStore::open(
        MemoryStore::new(8 << 20, 128 << 10),
        &dir.config(max),
        128 << 10,
        0,
    )
    .unwrap();
    recovered(&store).await;
    for i in 0..100u32 {
        let g = store.generation("svc");
        store.put_if_generation(key(&format!("/b{i}")), object(i as u8, 64 << 10, "b"), g);
    }
    synced(&store).await;
    let stats = store.disk_stats();
    assert!(stats.bytes <= max, "{stats:?}");
    assert!(stats.keys < 100 && stats.keys > 0, "{stats:?}");
    let on_disk_bytes: u64 = files(&dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(on_disk_bytes <= max, "files hold {on_disk_bytes} > {max}");
    assert_eq!(
        files(&dir).len() as u64,
        stats.keys,
        "evicted files unlinked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_share_the_directory() {
    let dir = TempDir::new("lock");
    let _first = open(&dir, 16 << 20);
    let second = HybridStore::open(
        MemoryStore::new(8 << 20, MAX_OBJECT),
        &dir.config(16 << 20),
        MAX_OBJECT,
        0,
    );
    assert!(matches!(second, Err(DiskError::Locked(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_degrades_to_memory_and_recovers() {
    let dir = TempDir::new("failing");
    let mut config = dir.config(64 << 20);
    config.retry_ms = 1;
    let store = HybridStore::open(
        MemoryStore::new(8 << 20, MAX_OBJECT),
        &config,
        MAX_OBJECT,
        0,
    )
    .unwrap();
    recovered(&store).await;
    // Writes fail: the temporary directory is now a file.
    std::fs::remove_dir_all(dir.0.join("tmp")).unwrap();
    std::fs::write(dir.0.join("tmp"), b"in the way").unwrap();
    let g = store.generation("svc");
    assert!(store.put_if_generation(key("/f"), object(1, 3000, "f"), g));
    synced(&store).await;
    assert_eq!(store.disk_stats().keys, 0, "not on disk");
    assert!(store.get(&key("/f")).is_some(), "still served from memory");
    // The disk comes back: after the retry interval, writes resume.
    std::fs::remove_file(dir.0.join("tmp")).unwrap();
    std::fs::create_dir(dir.0.join("tmp")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while store.disk_stats().keys == 0 {
        assert!(Instant::now() < deadline, "writes did not resume");
        i += 1;
        let g = store.generation("svc");
        store.put_if_generation(key(&format!("/g{i}")), object(2, 3000, "g"), g);
        synced(&store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_racing_a_write_wins() {
    let dir = TempDir::new("race");
    let store = open(&dir, 64 << 20);
    recovered(&store).await;
    // The fetch began before the purge: its generation is stale, nothing is stored.
    let g = store.generation("svc");
    store.purge(
        PurgeTarget::Service("svc"),
        PurgeMode::Hard,
        SystemTime::now(),
    );
    assert!(!store.put_if_generation(key("/late"), object(1, 100, "x"), g));
    // Stored in memory and queued, then purged before the worker wrote it: not indexed.
    let g = store.generation("svc");
    assert!(store.put_if_generation(key("/queued"), object(1, 100, "x"), g));
    store.purge(
        PurgeTarget::Url(&key("/queued")),
        PurgeMode::Hard,
        SystemTime::now(),
    );
    synced(&store).await;
    assert!(store.get(&key("/queued")).is_none());
    assert!(store.get(&key("/late")).is_none());
    assert_eq!(files(&dir).len(), 0);
}

#[test]
fn the_fuzz_corpus_file_is_a_valid_object_and_each_flipped_byte_is_caught() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/disk_object/hello_txt"
    );
    let good = std::fs::read(path).unwrap();
    assert!(parse_for_fuzzing(&good), "written by a real edge: parses");
    // Every single-bit flip outside the mutable expiry field is refused.
    for i in 0..good.len() {
        if (16..28).contains(&i) {
            continue;
        }
        let mut bad = good.clone();
        bad[i] ^= 0x04;
        assert!(!parse_for_fuzzing(&bad), "flip at {i} not caught");
    }
    assert!(!parse_for_fuzzing(&good[..good.len() - 1]));
}
