//! Where the control plane keeps versions, the target and the fleet registry.
//!
//! Two backends behind one type: [`redb`](RedbStore), an embedded transactional file (the
//! default; every write is one atomic, durable transaction, so a `kill -9` at any point leaves
//! the last committed state), and [`etcd`](EtcdStore), for several control-plane replicas
//! serving one fleet (each write is one etcd transaction; replicas see the target change
//! through an etcd watch). Neither needs replication code of ours.
//!
//! Layout (both backends): versions by number (metadata JSON and sealed bundle), the target
//! (its sequence number and the signed statement), edges by id (their last report), and the
//! status page's incident log (one document, compare-and-set like the target).

#[cfg(feature = "etcd")]
mod etcd;
mod redb;
mod redb_upgrade;

#[cfg(feature = "etcd")]
pub use self::etcd::EtcdStore;
pub use self::redb::RedbStore;

use bytes::Bytes;
use firebreak_protocol::api::{EdgeStatus, VersionInfo};
use serde::Deserialize;

/// A store operation failed; nothing was changed by the failed call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    #[error("configuration store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded (written by an incompatible version?).
    #[error("configuration store holds unreadable data: {0}")]
    Corrupt(String),
}

pub use crate::registry::EdgeIdentity;
pub use crate::rollout::state::{AuditEntry, FleetState, StoredTarget};

/// What [`Store::create_identity`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The registration was stored.
    Added,
    /// The id already has one; nothing changed.
    Exists,
    /// The registry holds its maximum; nothing changed.
    Full,
}

/// What an idempotency key stored with a version remembers: the version it made and a hash of
/// the request, so that a retry of the same request answers the same version and a different
/// request under the same key is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The version the keyed push stored.
    pub version: u64,
    /// SHA-256 of the request (document, message, author, file, activate).
    pub request_sha256: String,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;
/// Most idempotency keys remembered (the embedded store drops the oldest past this).
pub const MAX_IDEMPOTENCY_KEYS: usize = 10_000;

/// The outcome of [`Store::insert_version_keyed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The version and its key were stored together.
    Stored,
    /// The version number is taken (retry with the next); nothing stored.
    NumberTaken,
    /// The key is already stored with another version; nothing stored.
    KeyTaken(IdempotencyRecord),
}

/// Most audit entries listed at once.
pub const MAX_AUDIT_LIST: usize = 10_000;

#[derive(Deserialize)]
struct SeqOnly {
    #[serde(default)]
    seq: u64,
}

/// The sequence number of a stored fleet state.
pub(crate) fn state_seq(raw: &[u8]) -> Result<u64, StoreError> {
    Ok(decode::<SeqOnly>(raw)?.seq)
}

/// The configuration store.
#[derive(Clone)]
pub enum Store {
    /// Embedded, single control-plane process.
    Redb(RedbStore),
    /// etcd, for several control-plane replicas (boxed: the client is large).
    #[cfg(feature = "etcd")]
    Etcd(Box<EtcdStore>),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Redb($s) => $e,
            #[cfg(feature = "etcd")]
            Store::Etcd($s) => $e,
        }
    };
}

impl Store {
    /// Opens a store from its address: `redb:PATH`, a plain path, or `etcd://host:port[,…]`.
    pub async fn open(spec: &str) -> Result<Self, StoreError> {
        if let Some(endpoints) = spec.strip_prefix("etcd://") {
            #[cfg(not(feature = "etcd"))]
            {
                let _ = endpoints;
                return Err(StoreError::Unavailable(
                    "this build has no etcd store: build with `--features etcd` (needs protoc)"
                        .into(),
                ));
            }
            #[cfg(feature = "etcd")]
            let endpoints: Vec<String> = endpoints
                .split(',')
                .filter(|e| !e.is_empty())
                .map(|e| format!("http://{e}"))
                .collect();
            #[cfg(feature = "etcd")]
            return Ok(Self::Etcd(Box::new(EtcdStore::connect(&endpoints).await?)));
        }
        let path = spec.strip_prefix("redb:").unwrap_or(spec);
        let (store, upgraded) = RedbStore::open_upgrading(std::path::Path::new(path)).await?;
        let store = Self::Redb(store);
        if let Some(up) = upgraded {
            store.audit(&redb_upgrade::audit_entry(&up)).await?;
        }
        Ok(store)
    }

    /// The newest version number, if any.
    pub async fn latest_version(&self) -> Result<Option<u64>, StoreError> {
        dispatch!(self, s => s.latest_version().await)
    }

    /// Stores a new version. Returns `false`, storing nothing, if that number is taken
    /// (another replica won the race; the caller retries with the next number).
    pub async fn insert_version(
        &self,
        info: &VersionInfo,
        bundle: &[u8],
    ) -> Result<bool, StoreError> {
        let meta = serde_json::to_vec(info).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        dispatch!(self, s => s.insert_version(info.version, &meta, bundle).await)
    }

    /// Stores a new version together with its idempotency `key` (one transaction: both or
    /// neither). Nothing is stored if the number or the key is taken.
    pub async fn insert_version_keyed(
        &self,
        info: &VersionInfo,
        bundle: &[u8],
        key: &str,
        record: &IdempotencyRecord,
    ) -> Result<Inserted, StoreError> {
        let meta = serde_json::to_vec(info).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let raw = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let taken = dispatch!(self, s => s.insert_version_keyed(info.version, &meta, bundle, key, &raw).await)?;
        Ok(match taken {
            None => Inserted::Stored,
            Some(None) => Inserted::NumberTaken,
            Some(Some(raw)) => Inserted::KeyTaken(decode(&raw)?),
        })
    }

    /// The version stored under an idempotency key, if it is still remembered.
    pub async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let raw = dispatch!(self, s => s.idempotency(key).await)?;
        let record: Option<IdempotencyRecord> = raw.map(|b| decode(&b)).transpose()?;
        let now = firebreak_protocol::now_ms();
        Ok(record.filter(|r| now.saturating_sub(r.at_ms) <= IDEMPOTENCY_TTL_MS))
    }

    /// Everything a backup keeps, read in one consistent view.
    pub async fn dump(&self) -> Result<crate::backup::Dump, StoreError> {
        dispatch!(self, s => s.dump().await)
    }

    /// Writes a dump into this store, which must hold no version and no fleet state; the
    /// fleet state is written last, so a restore interrupted half-way leaves no target.
    pub async fn load(&self, dump: crate::backup::Dump) -> Result<(), StoreError> {
        dispatch!(self, s => s.load(dump).await)
    }

    /// One version's metadata.
    pub async fn version(&self, n: u64) -> Result<Option<VersionInfo>, StoreError> {
        let raw = dispatch!(self, s => s.version_meta(n).await)?;
        raw.map(|b| decode(&b)).transpose()
    }

    /// One version's sealed bundle.
    pub async fn bundle(&self, n: u64) -> Result<Option<Bytes>, StoreError> {
        dispatch!(self, s => s.bundle(n).await)
    }

    /// The newest `limit` versions, newest first.
    pub async fn versions(&self, limit: usize) -> Result<Vec<VersionInfo>, StoreError> {
        let raw = dispatch!(self, s => s.versions(limit).await)?;
        raw.iter().map(|b| decode(b)).collect()
    }

    /// The fleet state (targets, rollout).
    pub async fn state(&self) -> Result<Option<FleetState>, StoreError> {
        let raw = dispatch!(self, s => s.target().await)?;
        raw.map(|b| decode(&b)).transpose()
    }

    /// Replaces the fleet state if its sequence number is still `expected_seq` (0: none yet).
    /// Returns `false`, changing nothing, otherwise.
    pub async fn set_state(&self, expected_seq: u64, new: &FleetState) -> Result<bool, StoreError> {
        let raw = serde_json::to_vec(new).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        dispatch!(self, s => s.set_target(expected_seq, &raw).await)
    }

    /// Appends an audit entry.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let raw = serde_json::to_vec(entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut nonce = [0u8; 4];
        let _ = getrandom::fill(&mut nonce);
        let key = format!("{:020}-{:08x}", entry.at_ms, u32::from_be_bytes(nonce));
        dispatch!(self, s => s.put_audit(&key, &raw).await)
    }

    /// The newest `limit` audit entries, oldest first.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let raw = dispatch!(self, s => s.audit_log(limit.min(MAX_AUDIT_LIST)).await)?;
        let mut out: Vec<AuditEntry> = raw.iter().map(|b| decode(b)).collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// The status page's incident log as stored (JSON of
    /// [`crate::status::incidents::IncidentBook`]), if any.
    pub async fn incidents(&self) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, s => s.incidents().await)
    }

    /// Replaces the incident log if its stored `seq` is still `expected_seq` (0: none yet);
    /// `false`, changing nothing, otherwise. One document, so that replicas opening the same
    /// automatic incident at once cannot both succeed.
    pub async fn set_incidents(&self, expected_seq: u64, raw: &[u8]) -> Result<bool, StoreError> {
        dispatch!(self, s => s.set_incidents(expected_seq, raw).await)
    }

    /// Records an edge's latest report.
    pub async fn put_edge(&self, status: &EdgeStatus) -> Result<(), StoreError> {
        let raw = serde_json::to_vec(status).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        dispatch!(self, s => s.put_edge(&status.id, &raw).await)
    }

    /// Every known edge.
    pub async fn edges(&self) -> Result<Vec<EdgeStatus>, StoreError> {
        let raw = dispatch!(self, s => s.edges().await)?;
        raw.iter().map(|b| decode(b)).collect()
    }

    /// An edge's registration (see [`crate::registry`]).
    pub async fn identity(&self, id: &str) -> Result<Option<EdgeIdentity>, StoreError> {
        let raw = dispatch!(self, s => s.identity(id).await)?;
        raw.map(|b| decode(&b)).transpose()
    }

    /// Adds an edge's registration unless its id has one or `max` are held.
    pub async fn create_identity(
        &self,
        identity: &EdgeIdentity,
        max: usize,
    ) -> Result<Created, StoreError> {
        let raw = serde_json::to_vec(identity).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        dispatch!(self, s => s.create_identity(&identity.id, &raw, max).await)
    }

    /// Replaces an edge's registration; `false` if it has none (removed meanwhile).
    pub async fn update_identity(&self, identity: &EdgeIdentity) -> Result<bool, StoreError> {
        let raw = serde_json::to_vec(identity).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        dispatch!(self, s => s.update_identity(&identity.id, &raw).await)
    }

    /// Every registered edge.
    pub async fn identities(&self) -> Result<Vec<EdgeIdentity>, StoreError> {
        let raw = dispatch!(self, s => s.identities().await)?;
        raw.iter().map(|b| decode(b)).collect()
    }

    /// Forgets an edge: its registration (credential) and its last report. `false` if the
    /// store held neither.
    pub async fn remove_edge(&self, id: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remove_edge(id).await)
    }

    /// Stores secret documents (services' private keys, keyed by the SHA-256 of their PEM),
    /// durably, before the version that names them ([`crate::secrets`]).
    pub async fn put_secrets(
        &self,
        secrets: &[firebreak_protocol::secrets::Secret],
    ) -> Result<(), StoreError> {
        if secrets.is_empty() {
            return Ok(());
        }
        let raw: Vec<(String, Vec<u8>)> = secrets
            .iter()
            .map(|s| (s.sha256.clone(), s.pem.as_bytes().to_vec()))
            .collect();
        dispatch!(self, s => s.put_secrets(raw).await)
    }

    /// One secret document, by the SHA-256 of its PEM.
    pub async fn secret(&self, sha: &str) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, s => s.secret(sha).await)
    }

    /// Calls `on_change` with the stored fleet state whenever another writer (an etcd
    /// replica) changes it. The embedded store has no other writers; there this returns at once.
    pub async fn watch_state(&self, on_change: impl Fn(FleetState) + Send + 'static) {
        #[cfg(not(feature = "etcd"))]
        let _ = on_change;
        #[cfg(feature = "etcd")]
        if let Store::Etcd(s) = self {
            s.watch_target(move |raw| match decode::<FleetState>(&raw) {
                Ok(t) => on_change(t),
                Err(e) => tracing::warn!(error = %e, "ignoring unreadable fleet state from etcd"),
            })
            .await;
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn info(version: u64) -> VersionInfo {
        VersionInfo {
            version,
            parent: None,
            sha256: String::new(),
            size: 0,
            author: "a".into(),
            message: "m".into(),
            created_at_ms: 0,
            fleet_sha256: String::new(),
            services: Vec::new(),
            geoip_sha256: None,
        }
    }

    #[tokio::test]
    async fn a_keyed_insert_stores_the_version_and_its_key_together_or_neither() {
        let dir = std::env::temp_dir().join(format!("fb-store-keyed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(&format!("redb:{}", dir.join("s.redb").display()))
            .await
            .unwrap();
        let record = |version| IdempotencyRecord {
            version,
            request_sha256: "h".into(),
            at_ms: firebreak_protocol::now_ms(),
        };
        assert_eq!(
            s.insert_version_keyed(&info(1), b"one", "k", &record(1))
                .await
                .unwrap(),
            Inserted::Stored
        );
        let kept = s.idempotency("k").await.unwrap().unwrap();
        assert_eq!((kept.version, kept.request_sha256.as_str()), (1, "h"));
        // The key is taken: nothing stored, the first record answered.
        match s
            .insert_version_keyed(&info(2), b"two", "k", &record(2))
            .await
            .unwrap()
        {
            Inserted::KeyTaken(r) => assert_eq!(r.version, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.latest_version().await.unwrap(), Some(1));
        // The number is taken: nothing stored, the key stays free.
        assert_eq!(
            s.insert_version_keyed(&info(1), b"x", "k2", &record(1))
                .await
                .unwrap(),
            Inserted::NumberTaken
        );
        assert_eq!(s.idempotency("k2").await.unwrap(), None);
        // Compare-and-set on the fleet state: a stale sequence changes nothing.
        let state = FleetState {
            seq: 1,
            ..FleetState::default()
        };
        assert!(s.set_state(0, &state).await.unwrap());
        assert!(!s.set_state(0, &state).await.unwrap());
        assert_eq!(s.state().await.unwrap().unwrap().seq, 1);
        let _ = std::fs::remove_dir_all(&dir); // kept when the test fails
    }
}
