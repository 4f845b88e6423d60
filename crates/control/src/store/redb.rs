//! The embedded store: one redb file. redb commits are atomic and durable (copy-on-write
//! B-trees with a checksummed commit slot), so a crash or `kill -9` at any point leaves either
//! the previous or the new state, never a mix.

use super::StoreError;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;

const META: TableDefinition<u64, &[u8]> = TableDefinition::new("version_meta");
const BUNDLES: TableDefinition<u64, &[u8]> = TableDefinition::new("version_bundle");
const SINGLETONS: TableDefinition<&str, &[u8]> = TableDefinition::new("singletons");
const EDGES: TableDefinition<&str, &[u8]> = TableDefinition::new("edges");
const AUDIT: TableDefinition<&str, &[u8]> = TableDefinition::new("audit");
/// Joined edges: id → registration (credential hash, admin URL), see `crate::registry`.
const IDENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("edge_identity");
const TARGET: &str = "target";
/// The status page's incident log (`crate::status::incidents::IncidentBook`, JSON), in
/// `singletons`: one document, replaced by compare-and-set on its sequence number.
const INCIDENTS: &str = "incidents";
/// Idempotency key → [`super::IdempotencyRecord`] (JSON).
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// Version → the idempotency key stored with it, oldest first: what pruning walks.
const IDEMPOTENCY_ORDER: TableDefinition<u64, &str> = TableDefinition::new("idempotency_order");
/// Secret documents (services' private keys): lower-case hex SHA-256 → PEM, see
/// `crate::secrets`.
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");

/// Most edge reports written in one transaction.
const MAX_REPORT_BATCH: usize = 1024;

/// Most read transactions run at once. redb's readers never wait for each other, but each
/// holds a blocking-pool thread while it runs: unbounded, thousands of edges polling at once
/// (each reading its registration after a restart) would start the pool's 512 threads.
const MAX_READERS: usize = 8;

/// One edge report waiting for the writer, and who to tell when it is durable.
type ReportWrite = (
    String,
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// A redb database file.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    /// Edge reports go through one writer thread that commits whatever has queued up in one
    /// durable transaction (group commit): a thousand edges reporting at once cost a few
    /// fsyncs, not a thousand.
    reports: tokio::sync::mpsc::Sender<ReportWrite>,
    /// Turns for read transactions ([`MAX_READERS`]).
    readers: Arc<Semaphore>,
    /// The one turn for a write transaction (the report writer takes redb's own lock).
    writer: Arc<Semaphore>,
}

/// Writes queued edge reports, many per transaction, until every sender is gone. Holds the
/// database only while writing, so that dropping the store closes the file at once.
fn report_writer(db: std::sync::Weak<Database>, mut rx: tokio::sync::mpsc::Receiver<ReportWrite>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_REPORT_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = (|| {
            let db = db
                .upgrade()
                .ok_or_else(|| StoreError::Unavailable("store closed".into()))?;
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(EDGES).map_err(err)?;
                // Only joined edges are recorded: a report racing `fleet remove` or the
                // pruning of its edge does not bring the edge back.
                let ids = txn.open_table(IDENTITIES).map_err(err)?;
                for (id, raw, _) in &batch {
                    if ids.get(id.as_str()).map_err(err)?.is_some() {
                        t.insert(id.as_str(), raw.as_slice()).map_err(err)?;
                    }
                }
            }
            txn.commit().map_err(err)?;
            Ok(())
        })();
        for (_, _, done) in batch {
            let _ = done.send(result.clone());
        }
    }
}

/// The turns' semaphores are never closed; should one be, the store is unavailable.
fn closed(_: tokio::sync::AcquireError) -> StoreError {
    StoreError::Unavailable("store closed".into())
}

fn err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}

impl RedbStore {
    /// Opens (or creates) the database file, creating its directory.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::open_upgrading(path).await?.0)
    }

    /// [`Self::open`], upgrading a file written by redb 2 first (see `redb_upgrade`); says
    /// whether it did.
    pub(super) async fn open_upgrading(
        path: &Path,
    ) -> Result<(Self, Option<super::redb_upgrade::Upgraded>), StoreError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
            }
            let opened = |r: Result<Database, redb::DatabaseError>| {
                r.map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))
            };
            let (db, upgraded) = match Database::create(&path) {
                Err(redb::DatabaseError::UpgradeRequired(found)) => {
                    tracing::warn!(path = %path.display(), found, "the store is in an old redb file format: upgrading it");
                    let up = super::redb_upgrade::upgrade(&path, found)?;
                    tracing::warn!(
                        path = %path.display(),
                        backup = %up.backup.display(),
                        rows = up.rows,
                        "store upgraded to redb file format v3; the old file is kept"
                    );
                    (opened(Database::create(&path))?, Some(up))
                }
                other => (opened(other)?, None),
            };
            let txn = db.begin_write().map_err(err)?;
            {
                txn.open_table(META).map_err(err)?;
                txn.open_table(BUNDLES).map_err(err)?;
                txn.open_table(SINGLETONS).map_err(err)?;
                txn.open_table(EDGES).map_err(err)?;
                txn.open_table(AUDIT).map_err(err)?;
                txn.open_table(IDENTITIES).map_err(err)?;
                txn.open_table(IDEMPOTENCY).map_err(err)?;
                txn.open_table(IDEMPOTENCY_ORDER).map_err(err)?;
                txn.open_table(SECRETS).map_err(err)?;
            }
            txn.commit().map_err(err)?;
            let db = Arc::new(db);
            let (reports, rx) = tokio::sync::mpsc::channel(4 * MAX_REPORT_BATCH);
            let writer = Arc::downgrade(&db);
            std::thread::Builder::new()
                .name("redb-reports".into())
                .spawn(move || report_writer(writer, rx))
                .map_err(|e| StoreError::Unavailable(format!("report writer: {e}")))?;
            let store = Self {
                db,
                reports,
                readers: Arc::new(Semaphore::new(MAX_READERS)),
                writer: Arc::new(Semaphore::new(1)),
            };
            Ok((store, upgraded))
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// Runs `f`, a read transaction, on the blocking pool once one of [`MAX_READERS`] turns
    /// is free.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.in_turn(&self.readers, f).await
    }

    /// Runs `f`, a write transaction, on the blocking pool once the previous one has ended.
    /// redb runs one write transaction at a time: a writer waiting for its turn waits as a
    /// task here, not as a thread blocked in `begin_write` (2,000 edges joining at once held
    /// the pool's 512 threads, about 45 MB of stacks and their allocator arenas).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.in_turn(&self.writer, f).await
    }

    /// Waits (as a task) for one of `turns`, then runs `f` on the blocking pool, holding the
    /// turn until `f` returns (also when the caller stops waiting for it).
    async fn in_turn<T: Send + 'static>(
        &self,
        turns: &Arc<Semaphore>,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let turn = turns.clone().acquire_owned().await.map_err(closed)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            f(&db)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    pub(super) async fn latest_version(&self) -> Result<Option<u64>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(META).map_err(err)?;
            let last = t.last().map_err(err)?.map(|(k, _)| k.value());
            Ok(last)
        })
        .await
    }

    pub(super) async fn insert_version(
        &self,
        n: u64,
        meta: &[u8],
        bundle: &[u8],
    ) -> Result<bool, StoreError> {
        let (meta, bundle) = (meta.to_vec(), bundle.to_vec());
        self.write(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut m = txn.open_table(META).map_err(err)?;
                // Numbers are contiguous: only the successor of the newest may be added.
                let latest = m.last().map_err(err)?.map(|(k, _)| k.value());
                if latest.map_or(n != 1, |l| n != l + 1) {
                    return Ok(false);
                }
                m.insert(n, meta.as_slice()).map_err(err)?;
                let mut b = txn.open_table(BUNDLES).map_err(err)?;
                b.insert(n, bundle.as_slice()).map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(true)
        })
        .await
    }

    /// `None`: stored. `Some(None)`: the number is taken. `Some(Some(record))`: the key is.
    pub(super) async fn insert_version_keyed(
        &self,
        n: u64,
        meta: &[u8],
        bundle: &[u8],
        key: &str,
        record: &[u8],
    ) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        let (meta, bundle, key, record) = (
            meta.to_vec(),
            bundle.to_vec(),
            key.to_owned(),
            record.to_vec(),
        );
        self.write(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut keys = txn.open_table(IDEMPOTENCY).map_err(err)?;
                if let Some(existing) = keys.get(key.as_str()).map_err(err)? {
                    return Ok(Some(Some(existing.value().to_vec())));
                }
                let mut m = txn.open_table(META).map_err(err)?;
                let latest = m.last().map_err(err)?.map(|(k, _)| k.value());
                if latest.map_or(n != 1, |l| n != l + 1) {
                    return Ok(Some(None));
                }
                m.insert(n, meta.as_slice()).map_err(err)?;
                let mut b = txn.open_table(BUNDLES).map_err(err)?;
                b.insert(n, bundle.as_slice()).map_err(err)?;
                keys.insert(key.as_str(), record.as_slice()).map_err(err)?;
                let mut order = txn.open_table(IDEMPOTENCY_ORDER).map_err(err)?;
                order.insert(n, key.as_str()).map_err(err)?;
                // Forget the oldest keys: past the count bound, or older than the TTL.
                let cutoff = firebreak_protocol::now_ms().saturating_sub(super::IDEMPOTENCY_TTL_MS);
                loop {
                    let Some((v, k)) = order
                        .first()
                        .map_err(err)?
                        .map(|(v, k)| (v.value(), k.value().to_owned()))
                    else {
                        break;
                    };
                    let old = match keys.get(k.as_str()).map_err(err)? {
                        Some(raw) => super::decode::<super::IdempotencyRecord>(raw.value())
                            .map_or(true, |r| r.at_ms < cutoff),
                        None => true,
                    };
                    let over = order.len().map_err(err)? > super::MAX_IDEMPOTENCY_KEYS as u64;
                    if !(over || old) || v == n {
                        break;
                    }
                    order.remove(v).map_err(err)?;
                    keys.remove(k.as_str()).map_err(err)?;
                }
            }
            txn.commit().map_err(err)?;
            Ok(None)
        })
        .await
    }

    /// One read transaction: a consistent view, taken while writers go on.
    pub(super) async fn dump(&self) -> Result<crate::backup::Dump, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(err)?;
            let meta = txn.open_table(META).map_err(err)?;
            let bundles = txn.open_table(BUNDLES).map_err(err)?;
            let mut out = crate::backup::Dump::default();
            for row in meta.iter().map_err(err)? {
                let (n, m) = row.map_err(err)?;
                let n = n.value();
                let b = bundles
                    .get(n)
                    .map_err(err)?
                    .ok_or_else(|| StoreError::Corrupt(format!("version {n} has no bundle")))?;
                out.versions
                    .push((n, m.value().to_vec(), b.value().to_vec()));
            }
            let singletons = txn.open_table(SINGLETONS).map_err(err)?;
            out.state = singletons
                .get(TARGET)
                .map_err(err)?
                .map(|v| v.value().to_vec());
            out.incidents = singletons
                .get(INCIDENTS)
                .map_err(err)?
                .map(|v| v.value().to_vec());
            let audit = txn.open_table(AUDIT).map_err(err)?;
            for row in audit.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                out.audit.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    /// One write transaction: all or nothing.
    pub(super) async fn load(&self, dump: crate::backup::Dump) -> Result<(), StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut meta = txn.open_table(META).map_err(err)?;
                let mut singletons = txn.open_table(SINGLETONS).map_err(err)?;
                if meta.last().map_err(err)?.is_some()
                    || singletons.get(TARGET).map_err(err)?.is_some()
                {
                    return Err(StoreError::Unavailable(
                        "the store is not empty: restore only into a new store".into(),
                    ));
                }
                let mut bundles = txn.open_table(BUNDLES).map_err(err)?;
                for (n, m, b) in &dump.versions {
                    meta.insert(*n, m.as_slice()).map_err(err)?;
                    bundles.insert(*n, b.as_slice()).map_err(err)?;
                }
                let mut audit = txn.open_table(AUDIT).map_err(err)?;
                for (k, v) in &dump.audit {
                    audit.insert(k.as_str(), v.as_slice()).map_err(err)?;
                }
                if let Some(incidents) = &dump.incidents {
                    singletons
                        .insert(INCIDENTS, incidents.as_slice())
                        .map_err(err)?;
                }
                if let Some(state) = &dump.state {
                    singletons.insert(TARGET, state.as_slice()).map_err(err)?;
                }
            }
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn idempotency(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(IDEMPOTENCY).map_err(err)?;
            Ok(t.get(key.as_str())
                .map_err(err)?
                .map(|v| v.value().to_vec()))
        })
        .await
    }

    pub(super) async fn version_meta(&self, n: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(META, n).await
    }

    pub(super) async fn bundle(&self, n: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(self.get(BUNDLES, n).await?.map(Bytes::from))
    }

    async fn get(
        &self,
        table: TableDefinition<'static, u64, &'static [u8]>,
        n: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(table).map_err(err)?;
            Ok(t.get(n).map_err(err)?.map(|v| v.value().to_vec()))
        })
        .await
    }

    pub(super) async fn versions(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(META).map_err(err)?;
            let mut out = Vec::with_capacity(limit.min(t.len().map_err(err)? as usize));
            for row in t.iter().map_err(err)?.rev().take(limit) {
                let (_, v) = row.map_err(err)?;
                out.push(v.value().to_vec());
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn target(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.singleton(TARGET).await
    }

    pub(super) async fn set_target(
        &self,
        expected_seq: u64,
        raw: &[u8],
    ) -> Result<bool, StoreError> {
        self.set_singleton(TARGET, expected_seq, raw).await
    }

    pub(super) async fn incidents(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.singleton(INCIDENTS).await
    }

    pub(super) async fn set_incidents(
        &self,
        expected_seq: u64,
        raw: &[u8],
    ) -> Result<bool, StoreError> {
        self.set_singleton(INCIDENTS, expected_seq, raw).await
    }

    /// The document stored under `key` in the singletons table.
    async fn singleton(&self, key: &'static str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(SINGLETONS).map_err(err)?;
            Ok(t.get(key).map_err(err)?.map(|v| v.value().to_vec()))
        })
        .await
    }

    /// Stores `raw` under `key` if the stored document's sequence number is `expected_seq`
    /// (0: none stored), in one write transaction; `false` when another write came first.
    async fn set_singleton(
        &self,
        key: &'static str,
        expected_seq: u64,
        raw: &[u8],
    ) -> Result<bool, StoreError> {
        let raw = raw.to_vec();
        self.write(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(SINGLETONS).map_err(err)?;
                let current = match t.get(key).map_err(err)? {
                    Some(v) => super::state_seq(v.value())?,
                    None => 0,
                };
                if current != expected_seq {
                    return Ok(false);
                }
                t.insert(key, raw.as_slice()).map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn put_edge(&self, id: &str, raw: &[u8]) -> Result<(), StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.reports
            .send((id.to_owned(), raw.to_vec(), done))
            .await
            .map_err(|_| StoreError::Unavailable("report writer stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Unavailable("report writer stopped".into()))?
    }

    pub(super) async fn edges(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(EDGES).map_err(err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(err)? {
                let (_, v) = row.map_err(err)?;
                out.push(v.value().to_vec());
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn put_audit(&self, key: &str, raw: &[u8]) -> Result<(), StoreError> {
        let (key, raw) = (key.to_owned(), raw.to_vec());
        self.write(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(AUDIT).map_err(err)?;
                t.insert(key.as_str(), raw.as_slice()).map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }

    /// Newest first.
    pub(super) async fn audit_log(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(AUDIT).map_err(err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(err)?.rev().take(limit) {
                let (_, v) = row.map_err(err)?;
                out.push(v.value().to_vec());
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn identity(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(IDENTITIES).map_err(err)?;
            Ok(t.get(id.as_str()).map_err(err)?.map(|v| v.value().to_vec()))
        })
        .await
    }

    /// Adds a registration if the id has none and fewer than `max` are held.
    pub(super) async fn create_identity(
        &self,
        id: &str,
        raw: &[u8],
        max: usize,
    ) -> Result<super::Created, StoreError> {
        let (id, raw) = (id.to_owned(), raw.to_vec());
        self.write(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(IDENTITIES).map_err(err)?;
                if t.get(id.as_str()).map_err(err)?.is_some() {
                    return Ok(super::Created::Exists);
                }
                if usize::try_from(t.len().map_err(err)?).unwrap_or(usize::MAX) >= max {
                    return Ok(super::Created::Full);
                }
                t.insert(id.as_str(), raw.as_slice()).map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(super::Created::Added)
        })
        .await
    }

    /// Replaces an existing registration (a re-join); `false` if the id has none.
    pub(super) async fn update_identity(&self, id: &str, raw: &[u8]) -> Result<bool, StoreError> {
        let (id, raw) = (id.to_owned(), raw.to_vec());
        self.write(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(IDENTITIES).map_err(err)?;
                if t.get(id.as_str()).map_err(err)?.is_none() {
                    return Ok(false);
                }
                t.insert(id.as_str(), raw.as_slice()).map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn identities(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(IDENTITIES).map_err(err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(err)? {
                let (_, v) = row.map_err(err)?;
                out.push(v.value().to_vec());
            }
            Ok(out)
        })
        .await
    }

    /// Deletes an edge's registration and its last report; `false` if it had neither.
    pub(super) async fn remove_edge(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let removed = {
                let mut ids = txn.open_table(IDENTITIES).map_err(err)?;
                let mut edges = txn.open_table(EDGES).map_err(err)?;
                let a = ids.remove(id.as_str()).map_err(err)?.is_some();
                let b = edges.remove(id.as_str()).map_err(err)?.is_some();
                a || b
            };
            txn.commit().map_err(err)?;
            Ok(removed)
        })
        .await
    }

    /// Stores secret documents (content-addressed: writing one again changes nothing), in one
    /// durable transaction.
    pub(super) async fn put_secrets(
        &self,
        secrets: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        self.write(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(SECRETS).map_err(err)?;
                for (sha, pem) in &secrets {
                    t.insert(sha.as_str(), pem.as_slice()).map_err(err)?;
                }
            }
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn secret(&self, sha: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sha = sha.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(SECRETS).map_err(err)?;
            Ok(t.get(sha.as_str())
                .map_err(err)?
                .map(|v| v.value().to_vec()))
        })
        .await
    }
}
