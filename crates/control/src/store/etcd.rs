//! The etcd store, for several control-plane replicas serving one fleet. Every write is one
//! etcd transaction with a compare, so replicas racing to add a version or move the target
//! cannot both win; each replica learns of target changes through an etcd watch.

use super::StoreError;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use firebreak_protocol::bundle::MAX_BUNDLE_BYTES;
use std::time::Duration;

const PREFIX: &str = "/firebreak/";
/// Time allowed for one etcd call; past it the call fails and changes nothing we rely on.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer of a one-key read: a bundle ([`MAX_BUNDLE_BYTES`], with a MaxMind database)
/// and gRPC framing. etcd itself must accept requests that large to store one: its
/// `--max-request-bytes` (default 1.5 MiB) must be raised to fit the largest version pushed.
const MAX_ANSWER_BYTES: usize = MAX_BUNDLE_BYTES + 64 * 1024;

fn meta_key(n: u64) -> String {
    format!("{PREFIX}versions/meta/{n:020}")
}
fn bundle_key(n: u64) -> String {
    format!("{PREFIX}versions/bundle/{n:020}")
}
fn target_key() -> String {
    format!("{PREFIX}target")
}
fn incidents_key() -> String {
    format!("{PREFIX}incidents")
}
fn audit_key(key: &str) -> String {
    format!("{PREFIX}audit/{key}")
}
fn idempotency_key(key: &str) -> String {
    format!("{PREFIX}idempotency/{key}")
}
fn edge_key(id: &str) -> String {
    format!("{PREFIX}edges/{id}")
}
fn secret_key(sha: &str) -> String {
    format!("{PREFIX}secrets/{sha}")
}
fn identity_key(id: &str) -> String {
    format!("{PREFIX}edge-identity/{id}")
}

/// A connection to an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

fn err(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd did not answer within {} s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

impl EtcdStore {
    /// Connects to the cluster (`http://host:port` endpoints).
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoint given".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let client = timed(Client::connect(endpoints, Some(options))).await?;
        Ok(Self { client })
    }

    /// A KV client reading answers of up to `limit` bytes (the gRPC default is 4 MiB, below
    /// a bundle carrying a MaxMind database).
    fn kv(&self, limit: usize) -> etcd_client::KvClient {
        self.client.kv_client().max_decoding_message_size(limit)
    }

    async fn get_one(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.kv(MAX_ANSWER_BYTES);
        let resp = timed(c.get(key, None)).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    pub(super) async fn latest_version(&self) -> Result<Option<u64>, StoreError> {
        let mut c = self.client.clone();
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        let resp = timed(c.get(format!("{PREFIX}versions/meta/"), Some(options))).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                let key = kv.key_str().map_err(err)?;
                let n = key
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt(format!("bad version key {key}")))?;
                Ok(Some(n))
            }
        }
    }

    pub(super) async fn insert_version(
        &self,
        n: u64,
        meta: &[u8],
        bundle: &[u8],
    ) -> Result<bool, StoreError> {
        let mut compares = vec![Compare::create_revision(meta_key(n), CompareOp::Equal, 0)];
        if n > 1 {
            // Contiguous numbers: the predecessor must exist.
            compares.push(Compare::create_revision(
                meta_key(n - 1),
                CompareOp::Greater,
                0,
            ));
        }
        let txn = Txn::new().when(compares).and_then(vec![
            TxnOp::put(meta_key(n), meta.to_vec(), None),
            TxnOp::put(bundle_key(n), bundle.to_vec(), None),
        ]);
        let mut c = self.client.clone();
        Ok(timed(c.txn(txn)).await?.succeeded())
    }

    /// `None`: stored. `Some(None)`: the number is taken. `Some(Some(record))`: the key is.
    /// The key is kept under a lease of [`super::IDEMPOTENCY_TTL_MS`], so etcd forgets it.
    pub(super) async fn insert_version_keyed(
        &self,
        n: u64,
        meta: &[u8],
        bundle: &[u8],
        key: &str,
        record: &[u8],
    ) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        let mut c = self.client.clone();
        let ttl = i64::try_from(super::IDEMPOTENCY_TTL_MS / 1000).unwrap_or(86_400);
        let lease = timed(c.lease_grant(ttl, None)).await?.id();
        let mut compares = vec![
            Compare::create_revision(meta_key(n), CompareOp::Equal, 0),
            Compare::create_revision(idempotency_key(key), CompareOp::Equal, 0),
        ];
        if n > 1 {
            compares.push(Compare::create_revision(
                meta_key(n - 1),
                CompareOp::Greater,
                0,
            ));
        }
        let txn = Txn::new().when(compares).and_then(vec![
            TxnOp::put(meta_key(n), meta.to_vec(), None),
            TxnOp::put(bundle_key(n), bundle.to_vec(), None),
            TxnOp::put(
                idempotency_key(key),
                record.to_vec(),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            ),
        ]);
        if timed(c.txn(txn)).await?.succeeded() {
            return Ok(None);
        }
        let _ = timed(c.lease_revoke(lease)).await;
        Ok(Some(self.get_one(idempotency_key(key)).await?))
    }

    /// One range read of the whole prefix: etcd answers it at a single revision, so the view
    /// is consistent while replicas go on writing.
    pub(super) async fn dump(&self) -> Result<crate::backup::Dump, StoreError> {
        let mut c = self.kv(crate::backup::MAX_BACKUP_BYTES);
        let resp = timed(c.get(PREFIX, Some(GetOptions::new().with_prefix()))).await?;
        let mut out = crate::backup::Dump::default();
        let mut metas = std::collections::BTreeMap::new();
        let mut bundles = std::collections::BTreeMap::new();
        for kv in resp.kvs() {
            let key = kv.key_str().map_err(err)?;
            let rest = key.strip_prefix(PREFIX).unwrap_or(key);
            let number = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| StoreError::Corrupt(format!("bad version key {key}")))
            };
            if let Some(n) = rest.strip_prefix("versions/meta/") {
                metas.insert(number(n)?, kv.value().to_vec());
            } else if let Some(n) = rest.strip_prefix("versions/bundle/") {
                bundles.insert(number(n)?, kv.value().to_vec());
            } else if rest == "target" {
                out.state = Some(kv.value().to_vec());
            } else if rest == "incidents" {
                out.incidents = Some(kv.value().to_vec());
            } else if let Some(k) = rest.strip_prefix("audit/") {
                out.audit.push((k.to_owned(), kv.value().to_vec()));
            }
        }
        for (n, m) in metas {
            let b = bundles
                .remove(&n)
                .ok_or_else(|| StoreError::Corrupt(format!("version {n} has no bundle")))?;
            out.versions.push((n, m, b));
        }
        out.audit.sort();
        Ok(out)
    }

    /// Versions and audit first (each version one transaction that requires it is new), the
    /// fleet state last, only if none exists.
    pub(super) async fn load(&self, dump: crate::backup::Dump) -> Result<(), StoreError> {
        if self.latest_version().await?.is_some() || self.target().await?.is_some() {
            return Err(StoreError::Unavailable(
                "the store is not empty: restore only into a new store".into(),
            ));
        }
        for (n, m, b) in &dump.versions {
            if !self.insert_version(*n, m, b).await? {
                return Err(StoreError::Unavailable(format!(
                    "version {n} appeared during the restore; another writer is using this store"
                )));
            }
        }
        for (k, v) in &dump.audit {
            self.put_audit(k, v).await?;
        }
        if let Some(incidents) = &dump.incidents {
            if !self.set_incidents(0, incidents).await? {
                return Err(StoreError::Unavailable(
                    "the store already holds an incident log: restore only into a new store".into(),
                ));
            }
        }
        if let Some(state) = &dump.state {
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    target_key(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(target_key(), state.clone(), None)]);
            let mut c = self.client.clone();
            if !timed(c.txn(txn)).await?.succeeded() {
                return Err(StoreError::Unavailable(
                    "a fleet state appeared during the restore; another writer is using this store"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    pub(super) async fn idempotency(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_one(idempotency_key(key)).await
    }

    pub(super) async fn version_meta(&self, n: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_one(meta_key(n)).await
    }

    pub(super) async fn bundle(&self, n: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(self.get_one(bundle_key(n)).await?.map(Bytes::from))
    }

    pub(super) async fn versions(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut c = self.client.clone();
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let resp = timed(c.get(format!("{PREFIX}versions/meta/"), Some(options))).await?;
        Ok(resp.kvs().iter().map(|kv| kv.value().to_vec()).collect())
    }

    pub(super) async fn target(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_one(target_key()).await
    }

    pub(super) async fn set_target(
        &self,
        expected_seq: u64,
        raw: &[u8],
    ) -> Result<bool, StoreError> {
        self.set_singleton(target_key(), expected_seq, raw).await
    }

    pub(super) async fn incidents(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_one(incidents_key()).await
    }

    pub(super) async fn set_incidents(
        &self,
        expected_seq: u64,
        raw: &[u8],
    ) -> Result<bool, StoreError> {
        self.set_singleton(incidents_key(), expected_seq, raw).await
    }

    /// Stores `raw` at `key` if the stored document's sequence number is `expected_seq` (0:
    /// none stored). Compares on the stored value's revision: read it, check its sequence
    /// number, and write only if nobody wrote in between; `false` when another write came
    /// first.
    async fn set_singleton(
        &self,
        key: String,
        expected_seq: u64,
        raw: &[u8],
    ) -> Result<bool, StoreError> {
        let mut c = self.client.clone();
        let resp = timed(c.get(key.clone(), None)).await?;
        let (revision, seq) = match resp.kvs().first() {
            Some(kv) => (kv.mod_revision(), super::state_seq(kv.value())?),
            None => (0, 0),
        };
        if seq != expected_seq {
            return Ok(false);
        }
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then(vec![TxnOp::put(key, raw.to_vec(), None)]);
        Ok(timed(c.txn(txn)).await?.succeeded())
    }

    pub(super) async fn put_edge(&self, id: &str, raw: &[u8]) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        timed(c.put(edge_key(id), raw.to_vec(), None)).await?;
        Ok(())
    }

    pub(super) async fn edges(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut c = self.client.clone();
        let resp = timed(c.get(
            format!("{PREFIX}edges/"),
            Some(GetOptions::new().with_prefix()),
        ))
        .await?;
        Ok(resp.kvs().iter().map(|kv| kv.value().to_vec()).collect())
    }

    pub(super) async fn put_audit(&self, key: &str, raw: &[u8]) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        timed(c.put(audit_key(key), raw.to_vec(), None)).await?;
        Ok(())
    }

    /// Newest first.
    pub(super) async fn audit_log(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut c = self.client.clone();
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let resp = timed(c.get(format!("{PREFIX}audit/"), Some(options))).await?;
        Ok(resp.kvs().iter().map(|kv| kv.value().to_vec()).collect())
    }

    pub(super) async fn identity(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_one(identity_key(id)).await
    }

    /// Adds a registration if the id has none and fewer than `max` are held (the count is
    /// read first: replicas racing may pass the bound by the number of concurrent joins).
    pub(super) async fn create_identity(
        &self,
        id: &str,
        raw: &[u8],
        max: usize,
    ) -> Result<super::Created, StoreError> {
        let mut c = self.client.clone();
        let options = GetOptions::new().with_prefix().with_count_only();
        let held = timed(c.get(format!("{PREFIX}edge-identity/"), Some(options))).await?;
        if usize::try_from(held.count()).unwrap_or(usize::MAX) >= max {
            if self.get_one(identity_key(id)).await?.is_some() {
                return Ok(super::Created::Exists);
            }
            return Ok(super::Created::Full);
        }
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                identity_key(id),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(identity_key(id), raw.to_vec(), None)]);
        if timed(c.txn(txn)).await?.succeeded() {
            Ok(super::Created::Added)
        } else {
            Ok(super::Created::Exists)
        }
    }

    /// Replaces an existing registration (a re-join); `false` if the id has none.
    pub(super) async fn update_identity(&self, id: &str, raw: &[u8]) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                identity_key(id),
                CompareOp::Greater,
                0,
            )])
            .and_then(vec![TxnOp::put(identity_key(id), raw.to_vec(), None)]);
        let mut c = self.client.clone();
        Ok(timed(c.txn(txn)).await?.succeeded())
    }

    pub(super) async fn identities(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut c = self.client.clone();
        let resp = timed(c.get(
            format!("{PREFIX}edge-identity/"),
            Some(GetOptions::new().with_prefix()),
        ))
        .await?;
        Ok(resp.kvs().iter().map(|kv| kv.value().to_vec()).collect())
    }

    /// Deletes an edge's registration and its last report in one transaction.
    pub(super) async fn remove_edge(&self, id: &str) -> Result<bool, StoreError> {
        let txn = Txn::new().and_then(vec![
            TxnOp::delete(identity_key(id), None),
            TxnOp::delete(edge_key(id), None),
        ]);
        let mut c = self.client.clone();
        let resp = timed(c.txn(txn)).await?;
        let deleted = resp.op_responses().iter().any(|r| match r {
            etcd_client::TxnOpResponse::Delete(d) => d.deleted() > 0,
            _ => false,
        });
        Ok(deleted)
    }

    /// Stores secret documents (content-addressed) in one transaction.
    pub(super) async fn put_secrets(
        &self,
        secrets: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        if secrets.is_empty() {
            return Ok(());
        }
        let ops = secrets
            .into_iter()
            .map(|(sha, pem)| TxnOp::put(secret_key(&sha), pem, None))
            .collect::<Vec<_>>();
        let mut c = self.client.clone();
        timed(c.txn(Txn::new().and_then(ops))).await?;
        Ok(())
    }

    pub(super) async fn secret(&self, sha: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_one(secret_key(sha)).await
    }

    /// Watches the target key for ever, re-establishing the watch after errors, and calls
    /// `on_change` with every value seen (also the current one after each reconnect, so a
    /// change made while disconnected is not missed).
    pub(super) async fn watch_target(&self, on_change: impl Fn(Vec<u8>) + Send + 'static) {
        loop {
            if let Ok(Some(raw)) = self.target().await {
                on_change(raw);
            }
            let mut c = self.client.clone();
            match c.watch(target_key(), None).await {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            for event in resp.events() {
                                if let Some(kv) = event.kv() {
                                    on_change(kv.value().to_vec());
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "etcd watch interrupted");
                            break;
                        }
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot watch the target in etcd"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
