//! Backups of the store: every version (metadata and sealed bundle), the fleet state, the
//! audit log and the status page's incident log, read consistently (redb: one read transaction; etcd: one range read of the
//! prefix, which etcd answers at a single revision), as one JSON document. Restore writes them
//! into an empty store and gives the fleet state a new epoch (the current time in ms, above the
//! old one), so edges can tell the restored history from a replay of the old one. Edge reports
//! and idempotency keys are not kept: edges report again within a heartbeat.

use crate::store::{FleetState, Store, StoreError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use firebreak_protocol::api::VersionInfo;
use serde::{Deserialize, Serialize};

/// The format name written in every backup.
pub const FORMAT: &str = "firebreak-backup-1";
/// Largest backup read or written: a thousand versions of the largest bundle would not fit,
/// but real histories (tens of KiB per version) fit many thousands.
pub const MAX_BACKUP_BYTES: usize = 1 << 30;

/// One backed-up version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackedVersion {
    /// Its metadata.
    pub info: VersionInfo,
    /// The sealed bundle, base64.
    pub bundle: String,
}

/// One audit entry with its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackedAudit {
    /// Storage key (time and nonce).
    pub key: String,
    /// The entry (JSON).
    pub entry: serde_json::Value,
}

/// A whole backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// [`FORMAT`].
    pub format: String,
    /// When it was taken (ms since the Unix epoch).
    pub taken_at_ms: u64,
    /// Every version, oldest first.
    pub versions: Vec<BackedVersion>,
    /// The fleet state (targets, rollout), if any was written.
    pub state: Option<FleetState>,
    /// The audit log, oldest first.
    pub audit: Vec<BackedAudit>,
    /// The status page's incident log, if any was written (absent from older backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incidents: Option<crate::status::IncidentBook>,
}

/// What the store holds, as raw bytes (read in one consistent view by the backend).
#[derive(Debug, Default)]
pub struct Dump {
    /// (number, metadata JSON, sealed bundle), oldest first.
    pub versions: Vec<(u64, Vec<u8>, Vec<u8>)>,
    /// The fleet state JSON.
    pub state: Option<Vec<u8>>,
    /// (key, entry JSON), oldest first.
    pub audit: Vec<(String, Vec<u8>)>,
    /// The incident log JSON.
    pub incidents: Option<Vec<u8>>,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl Backup {
    /// Turns a dump into a backup, checking each bundle against its recorded hash.
    pub fn from_dump(dump: Dump) -> Result<Self, StoreError> {
        let mut versions = Vec::with_capacity(dump.versions.len());
        for (n, meta, bundle) in dump.versions {
            let info: VersionInfo = serde_json::from_slice(&meta).map_err(corrupt)?;
            if info.version != n || firebreak_protocol::sha256_hex(&bundle) != info.sha256 {
                return Err(StoreError::Corrupt(format!(
                    "version {n}: bundle does not match its metadata"
                )));
            }
            versions.push(BackedVersion {
                info,
                bundle: B64.encode(&bundle),
            });
        }
        let state = dump
            .state
            .map(|raw| serde_json::from_slice(&raw))
            .transpose()
            .map_err(corrupt)?;
        let audit = dump
            .audit
            .into_iter()
            .map(|(key, raw)| {
                Ok(BackedAudit {
                    key,
                    entry: serde_json::from_slice(&raw).map_err(corrupt)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let incidents = dump
            .incidents
            .map(|raw| serde_json::from_slice(&raw))
            .transpose()
            .map_err(corrupt)?;
        Ok(Self {
            format: FORMAT.into(),
            taken_at_ms: firebreak_protocol::now_ms(),
            versions,
            state,
            audit,
            incidents,
        })
    }

    /// The dump to write back, with the fleet state's epoch set to `epoch`. Checks the
    /// format, that numbers run 1, 2, 3 … and that every bundle matches its hash.
    pub fn into_dump(self, epoch: u64) -> Result<Dump, StoreError> {
        if self.format != FORMAT {
            return Err(StoreError::Corrupt(format!(
                "not a backup in format {FORMAT} (found `{}`)",
                self.format
            )));
        }
        let mut versions = Vec::with_capacity(self.versions.len());
        for (i, v) in self.versions.into_iter().enumerate() {
            let n = v.info.version;
            if n != i as u64 + 1 {
                return Err(StoreError::Corrupt(format!(
                    "versions must run 1, 2, 3 …; found {n} at position {}",
                    i + 1
                )));
            }
            let bundle = B64.decode(&v.bundle).map_err(corrupt)?;
            if firebreak_protocol::sha256_hex(&bundle) != v.info.sha256 {
                return Err(StoreError::Corrupt(format!(
                    "version {n}: bundle does not match its sha256"
                )));
            }
            let meta = serde_json::to_vec(&v.info).map_err(corrupt)?;
            versions.push((n, meta, bundle));
        }
        let state = match self.state {
            Some(mut s) => {
                s.epoch = epoch;
                Some(serde_json::to_vec(&s).map_err(corrupt)?)
            }
            None => None,
        };
        let audit = self
            .audit
            .into_iter()
            .map(|a| Ok((a.key, serde_json::to_vec(&a.entry).map_err(corrupt)?)))
            .collect::<Result<_, StoreError>>()?;
        let incidents = self
            .incidents
            .map(|book| serde_json::to_vec(&book))
            .transpose()
            .map_err(corrupt)?;
        Ok(Dump {
            versions,
            state,
            audit,
            incidents,
        })
    }
}

/// The new epoch of a restored state: the current time in ms, and always above `old`.
pub fn next_epoch(old: u64) -> u64 {
    firebreak_protocol::now_ms().max(old.saturating_add(1))
}

/// Takes a consistent backup of `store`.
pub async fn backup(store: &Store) -> Result<Backup, StoreError> {
    let dump = store.dump().await?;
    tokio::task::spawn_blocking(move || Backup::from_dump(dump))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}

/// Restores `backup` into `store`, which must hold no version and no fleet state. Returns the
/// restored state's new epoch.
pub async fn restore(store: &Store, backup: Backup) -> Result<u64, StoreError> {
    let old = backup.state.as_ref().map_or(0, |s| s.epoch);
    let epoch = next_epoch(old);
    let dump = tokio::task::spawn_blocking(move || backup.into_dump(epoch))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))??;
    store.load(dump).await?;
    Ok(epoch)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_through_a_redb_store_sets_a_newer_epoch() {
        let dir = std::env::temp_dir().join(format!("fb-backup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Store::open(&format!("redb:{}", dir.join("a.redb").display()))
            .await
            .unwrap();
        let key = firebreak_protocol::keys::ControlKey::generate().unwrap();
        for n in 1..=3u64 {
            let bundle = firebreak_protocol::bundle::Bundle {
                version: n,
                parent: n.checked_sub(1).filter(|p| *p > 0),
                created_at_ms: n,
                author: "t".into(),
                message: "m".into(),
                fleet: "[cache]\n".into(),
                services: Vec::new(),
                geoip: None,
            };
            let sealed = bundle.seal(&key).unwrap();
            assert!(a
                .insert_version(&bundle.describe(&sealed), &sealed)
                .await
                .unwrap());
        }
        let state = FleetState {
            seq: 9,
            epoch: u64::MAX / 2,
            ..FleetState::default()
        };
        assert!(a.set_state(0, &state).await.unwrap());
        let mut book = crate::status::IncidentBook::default();
        book.open(
            crate::status::NewIncident {
                title: "kept".into(),
                components: vec!["api".into()],
                text: String::new(),
                state: None,
                impact: crate::status::Impact::Degraded,
            },
            "t",
            None,
            1,
        )
        .unwrap();
        book.seq = 1;
        assert!(a
            .set_incidents(0, &serde_json::to_vec(&book).unwrap())
            .await
            .unwrap());
        let taken = backup(&a).await.unwrap();
        assert_eq!(taken.versions.len(), 3);

        let b = Store::open(&format!("redb:{}", dir.join("b.redb").display()))
            .await
            .unwrap();
        let epoch = restore(&b, taken.clone()).await.unwrap();
        assert!(epoch > state.epoch);
        let restored = b.state().await.unwrap().unwrap();
        assert_eq!((restored.seq, restored.epoch), (9, epoch));
        assert_eq!(b.versions(10).await.unwrap(), a.versions(10).await.unwrap());
        assert_eq!(b.bundle(2).await.unwrap(), a.bundle(2).await.unwrap());
        assert_eq!(b.incidents().await.unwrap(), a.incidents().await.unwrap());
        // A store that holds anything is not overwritten.
        assert!(restore(&b, taken.clone()).await.is_err());
        // A tampered bundle is refused.
        let mut bad = taken;
        bad.versions[1].bundle = B64.encode(b"tampered");
        let c = Store::open(&format!("redb:{}", dir.join("c.redb").display()))
            .await
            .unwrap();
        assert!(restore(&c, bad).await.is_err());
        assert!(c.versions(10).await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir); // kept when the test fails
    }
}
