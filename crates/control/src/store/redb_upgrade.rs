//! Upgrades a store file written by redb 2 (file format v2) to the format redb 4 reads (v3).
//!
//! redb 3 dropped the v2 format; the only upgrade is `Database::upgrade()` of redb 2.6, so
//! that crate stays a dependency under the name `redb2`, used here and nowhere else. The
//! original file is never written: the upgrade runs on a copy beside it
//! (`<file>.redb3-upgrade`), which redb 2 opens (repairing it if the old control plane was
//! killed), upgrades, and which redb 4 then reads back. Every row of every table is hashed on
//! both sides (before the upgrade with redb 2, after it with redb 4); only if the two agree is
//! the original kept as `<file>.redb2-backup` (a hard link, or a copy where links are not
//! possible) and the copy renamed over it, and the directory fsynced. Any failure removes the
//! copy and leaves the original file exactly as it was, with an error that names the file and
//! the cause; the control plane then does not start (edges keep serving what they run).

use super::StoreError;
use redb::ReadableDatabase as _;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// Tables keyed by version number with byte values.
const U64_TABLES: [&str; 2] = ["version_meta", "version_bundle"];
/// Tables keyed by string with byte values.
const STR_TABLES: [&str; 5] = [
    "singletons",
    "edges",
    "audit",
    "edge_identity",
    "idempotency",
];
/// Version → idempotency key.
const ORDER_TABLE: &str = "idempotency_order";

/// Most backup names tried (`<file>.redb2-backup`, `.redb2-backup.2`, …): an earlier backup is
/// never overwritten.
const MAX_BACKUP_NAMES: u32 = 100;

/// What an upgrade did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    /// The file format found (2).
    pub from_format: u8,
    /// Where the original file is kept.
    pub backup: PathBuf,
    /// Rows checked identical before and after.
    pub rows: u64,
}

/// A hash of every row of every table, in table order then key order.
#[derive(Default)]
struct Rows {
    hash: Sha256,
    count: u64,
}

impl Rows {
    fn row(&mut self, table: &str, key: &[u8], value: &[u8]) {
        for part in [table.as_bytes(), key, value] {
            self.hash.update((part.len() as u64).to_be_bytes());
            self.hash.update(part);
        }
        self.count += 1;
    }

    fn finish(self) -> ([u8; 32], u64) {
        (self.hash.finalize().into(), self.count)
    }
}

/// Hashes every row of the store's tables through one read transaction of `$db`, a database
/// of the redb crate `$redb` (the same code for both majors). A table the file lacks (written
/// by an older Firebreak) counts as empty.
macro_rules! hash_rows {
    ($redb:ident, $db:expr) => {
        (|| -> Result<([u8; 32], u64), String> {
            use $redb::ReadableTable as _;
            let txn = $db.begin_read().map_err(|e| e.to_string())?;
            let mut rows = Rows::default();
            for name in U64_TABLES {
                let def: $redb::TableDefinition<u64, &[u8]> = $redb::TableDefinition::new(name);
                match txn.open_table(def) {
                    Ok(t) => {
                        for row in t.iter().map_err(|e| e.to_string())? {
                            let (k, v) = row.map_err(|e| e.to_string())?;
                            rows.row(name, &k.value().to_be_bytes(), v.value());
                        }
                    }
                    Err($redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err(format!("{name}: {e}")),
                }
            }
            for name in STR_TABLES {
                let def: $redb::TableDefinition<&str, &[u8]> = $redb::TableDefinition::new(name);
                match txn.open_table(def) {
                    Ok(t) => {
                        for row in t.iter().map_err(|e| e.to_string())? {
                            let (k, v) = row.map_err(|e| e.to_string())?;
                            rows.row(name, k.value().as_bytes(), v.value());
                        }
                    }
                    Err($redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err(format!("{name}: {e}")),
                }
            }
            let def: $redb::TableDefinition<u64, &str> = $redb::TableDefinition::new(ORDER_TABLE);
            match txn.open_table(def) {
                Ok(t) => {
                    for row in t.iter().map_err(|e| e.to_string())? {
                        let (k, v) = row.map_err(|e| e.to_string())?;
                        rows.row(ORDER_TABLE, &k.value().to_be_bytes(), v.value().as_bytes());
                    }
                }
                Err($redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(format!("{ORDER_TABLE}: {e}")),
            }
            Ok(rows.finish())
        })()
    };
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn fsync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Upgrades the store file at `path`, which redb 4 refused as file format `found`. Blocking:
/// run it on a blocking thread.
pub(super) fn upgrade(path: &Path, found: u8) -> Result<Upgraded, StoreError> {
    let fail = |what: &str| {
        StoreError::Unavailable(format!(
            "{}: the store is in redb file format v{found} and could not be upgraded to v3 \
             ({what}); the file is unchanged",
            path.display()
        ))
    };
    if found != 2 {
        return Err(fail(
            "only format v2, written by redb 2 (Firebreak before issue 12), can be upgraded",
        ));
    }
    let work = with_suffix(path, ".redb3-upgrade");
    let result = upgrade_copy(path, &work).map_err(|e| fail(&e));
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            let _ = std::fs::remove_file(&work);
            return Err(e);
        }
    };
    let backup = match keep_original(path) {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&work);
            return Err(fail(&format!("keeping the original: {e}")));
        }
    };
    // The one step that changes `path`: atomic, and durable once the directory is.
    if let Err(e) = std::fs::rename(&work, path).and_then(|()| fsync_dir(path)) {
        let _ = std::fs::remove_file(&work);
        return Err(fail(&format!("renaming the upgraded copy: {e}")));
    }
    Ok(Upgraded {
        from_format: found,
        backup,
        rows,
    })
}

/// Copies `path` to `work`, upgrades the copy and checks that it holds the same rows.
fn upgrade_copy(path: &Path, work: &Path) -> Result<u64, String> {
    let _ = std::fs::remove_file(work);
    std::fs::copy(path, work).map_err(|e| format!("copying to {}: {e}", work.display()))?;
    std::fs::File::open(work)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("{}: {e}", work.display()))?;
    let before = {
        let mut old = redb2::Database::open(work).map_err(|e| format!("redb 2: {e}"))?;
        let before = hash_rows!(redb2, old).map_err(|e| format!("reading with redb 2: {e}"))?;
        old.upgrade().map_err(|e| format!("redb 2 upgrade: {e}"))?;
        before
    };
    let after = {
        let new = redb::Database::open(work).map_err(|e| format!("redb 4: {e}"))?;
        hash_rows!(redb, new).map_err(|e| format!("reading with redb 4: {e}"))?
    };
    if before != after {
        return Err(format!(
            "the upgraded copy differs: {} rows before, {} after",
            before.1, after.1
        ));
    }
    Ok(after.1)
}

/// Keeps the original under the first free backup name: a hard link (no copy of a large
/// file), or a durable copy where the file system has no links.
fn keep_original(path: &Path) -> std::io::Result<PathBuf> {
    for i in 1..=MAX_BACKUP_NAMES {
        let backup = if i == 1 {
            with_suffix(path, ".redb2-backup")
        } else {
            with_suffix(path, &format!(".redb2-backup.{i}"))
        };
        if backup.symlink_metadata().is_ok() {
            continue;
        }
        if std::fs::hard_link(path, &backup).is_err() {
            std::fs::copy(path, &backup)?;
            std::fs::File::open(&backup)?.sync_all()?;
        }
        fsync_dir(&backup)?;
        return Ok(backup);
    }
    Err(std::io::Error::other(format!(
        "{MAX_BACKUP_NAMES} backups of it exist already"
    )))
}

/// The audit entry an upgrade leaves.
pub(super) fn audit_entry(up: &Upgraded) -> super::AuditEntry {
    super::AuditEntry {
        at_ms: firebreak_protocol::now_ms(),
        who: "control-plane".into(),
        action: "store-upgraded".into(),
        version: None,
        rollout: None,
        message: format!(
            "store upgraded from redb file format v{} to v3 (redb 4), {} rows checked; \
             the old file is kept as {}",
            up.from_format,
            up.rows,
            up.backup.display()
        ),
        gate: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::{EdgeIdentity, FleetState, IdempotencyRecord, Store};
    use firebreak_protocol::api::{EdgeReport, EdgeStatus, VersionInfo};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sha(path: &Path) -> String {
        firebreak_protocol::sha256_hex(&std::fs::read(path).unwrap())
    }

    /// Everything a store answers, as JSON, to compare two stores.
    async fn everything(s: &Store) -> serde_json::Value {
        let versions = s.versions(100).await.unwrap();
        let mut bundles = Vec::new();
        for v in &versions {
            let b = s.bundle(v.version).await.unwrap().unwrap();
            bundles.push(firebreak_protocol::sha256_hex(&b));
        }
        serde_json::json!({
            "latest": s.latest_version().await.unwrap(),
            "versions": versions,
            "bundles": bundles,
            "state": s.state().await.unwrap(),
            "audit": s.audit_log(100).await.unwrap(),
            "identities": s.identities().await.unwrap(),
            "edges": s.edges().await.unwrap(),
            "idempotency": s.idempotency("push-2").await.unwrap(),
        })
    }

    /// A store with some of everything, written by today's code (redb 4).
    async fn populate(s: &Store) {
        let now = firebreak_protocol::now_ms();
        for n in 1..=3u64 {
            let bundle = format!("sealed bundle {n}").into_bytes();
            let info = VersionInfo {
                version: n,
                parent: n.checked_sub(1).filter(|p| *p > 0),
                sha256: firebreak_protocol::sha256_hex(&bundle),
                size: bundle.len() as u64,
                author: "ops".into(),
                message: format!("version {n}"),
                created_at_ms: now + n,
                fleet_sha256: String::new(),
                services: Vec::new(),
                geoip_sha256: None,
            };
            let record = IdempotencyRecord {
                version: n,
                request_sha256: format!("request {n}"),
                at_ms: now,
            };
            let key = format!("push-{n}");
            let stored = s.insert_version_keyed(&info, &bundle, &key, &record);
            assert_eq!(stored.await.unwrap(), crate::store::Inserted::Stored);
        }
        let state = FleetState {
            seq: 7,
            epoch: now,
            ran: vec![1, 2],
            ..FleetState::default()
        };
        assert!(s.set_state(0, &state).await.unwrap());
        for (i, action) in ["deploy", "complete"].into_iter().enumerate() {
            let entry = crate::store::AuditEntry {
                at_ms: now + i as u64,
                who: "operator".into(),
                action: action.into(),
                version: Some(2),
                rollout: Some(1),
                message: format!("{action} of version 2"),
                gate: None,
            };
            s.audit(&entry).await.unwrap();
        }
        let identity = EdgeIdentity {
            id: "edge-1".into(),
            credential_sha256: "ab".repeat(32),
            pop: "ams".into(),
            cell: "canary".into(),
            admin_url: Some("http://127.0.0.1:9000".into()),
            listen: vec!["http://127.0.0.1:8080".into()],
            joined_ms: now,
            rejoined_ms: now,
        };
        assert_eq!(
            s.create_identity(&identity, 10).await.unwrap(),
            crate::store::Created::Added
        );
        let status = EdgeStatus {
            id: "edge-1".into(),
            report: EdgeReport {
                pop: "ams".into(),
                cell: "canary".into(),
                admin_url: Some("http://127.0.0.1:9000".into()),
                listen: Vec::new(),
                applied_version: Some(2),
                applied_seq: 7,
                error: None,
                failed_services: Vec::new(),
                staged: None,
                bad_versions: Vec::new(),
                stale: None,
                role: Default::default(),
            },
            last_seen_ms: now,
            cert_expiry_ms: None,
        };
        s.put_edge(&status).await.unwrap();
    }

    /// Copies every row of a redb 4 store file into a new file written by redb 2 (format v2),
    /// as Firebreak before redb 4 wrote it.
    fn write_v2_copy(from: &Path, to: &Path) {
        use redb::ReadableTable as _;
        let src = redb::Database::open(from).unwrap();
        let r = src.begin_read().unwrap();
        let dst = redb2::Database::create(to).unwrap();
        let w = dst.begin_write().unwrap();
        for name in U64_TABLES {
            let t = r
                .open_table(redb::TableDefinition::<u64, &[u8]>::new(name))
                .unwrap();
            let mut o = w
                .open_table(redb2::TableDefinition::<u64, &[u8]>::new(name))
                .unwrap();
            for row in t.iter().unwrap() {
                let (k, v) = row.unwrap();
                o.insert(k.value(), v.value()).unwrap();
            }
        }
        for name in STR_TABLES {
            let t = r
                .open_table(redb::TableDefinition::<&str, &[u8]>::new(name))
                .unwrap();
            let mut o = w
                .open_table(redb2::TableDefinition::<&str, &[u8]>::new(name))
                .unwrap();
            for row in t.iter().unwrap() {
                let (k, v) = row.unwrap();
                o.insert(k.value(), v.value()).unwrap();
            }
        }
        let t = r
            .open_table(redb::TableDefinition::<u64, &str>::new(ORDER_TABLE))
            .unwrap();
        let mut o = w
            .open_table(redb2::TableDefinition::<u64, &str>::new(ORDER_TABLE))
            .unwrap();
        for row in t.iter().unwrap() {
            let (k, v) = row.unwrap();
            o.insert(k.value(), v.value()).unwrap();
        }
        drop(o);
        w.commit().unwrap();
    }

    /// The file format redb 4 finds in `path`: `Some(found)` when it asks for an upgrade.
    fn needs_upgrade(path: &Path) -> Option<u8> {
        match redb::Database::open(path) {
            Err(redb::DatabaseError::UpgradeRequired(found)) => Some(found),
            Ok(_) => None,
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }

    #[tokio::test]
    async fn a_store_written_by_redb_2_is_upgraded_at_open_and_keeps_every_version_state_and_audit_entry(
    ) {
        let dir = temp_dir("redb2-upgrade");
        let today = dir.join("today.redb");
        let expected = {
            let s = Store::open(&format!("redb:{}", today.display()))
                .await
                .unwrap();
            populate(&s).await;
            everything(&s).await
        };
        let old = dir.join("control.redb");
        write_v2_copy(&today, &old);
        assert_eq!(
            needs_upgrade(&old),
            Some(2),
            "the test file is in format v2"
        );
        let old_sha = sha(&old);

        let s = Store::open(&format!("redb:{}", old.display()))
            .await
            .unwrap();
        let mut found = everything(&s).await;
        // The upgrade is audited, as the newest entry.
        let audit = found["audit"].as_array_mut().unwrap();
        let last = audit.pop().unwrap();
        assert_eq!(last["action"], "store-upgraded", "{last}");
        assert_eq!(last["who"], "control-plane");
        let message = last["message"].as_str().unwrap();
        assert!(message.contains("v2 to v3"), "{message}");
        assert!(message.contains("control.redb.redb2-backup"), "{message}");
        // Every version, bundle, the fleet state, the audit log, the registry, the last
        // reports and the idempotency keys survived.
        assert_eq!(found, expected);
        // The original is kept, byte for byte, and still opens with redb 2.
        let backup = dir.join("control.redb.redb2-backup");
        assert_eq!(sha(&backup), old_sha);
        assert_eq!(needs_upgrade(&backup), Some(2));
        drop(redb2::Database::open(&backup).unwrap());
        assert!(!dir.join("control.redb.redb3-upgrade").exists());
        // The store keeps working, and a second open upgrades nothing.
        s.audit(&audit_entry(&Upgraded {
            from_format: 0,
            backup: PathBuf::new(),
            rows: 0,
        }))
        .await
        .unwrap();
        drop(s);
        assert_eq!(needs_upgrade(&old), None, "the store is in format v3 now");
        let s = Store::open(&format!("redb:{}", old.display()))
            .await
            .unwrap();
        let upgrades = s
            .audit_log(100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "store-upgraded")
            .count();
        assert_eq!(upgrades, 2, "one from the upgrade, one written by the test");
        assert!(!dir.join("control.redb.redb2-backup.2").exists());
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failed_upgrade_leaves_the_old_store_file_untouched_with_a_clear_error() {
        let dir = temp_dir("redb2-upgrade-fails");
        let old = dir.join("control.redb");
        {
            // redb 2 refuses to upgrade a file holding a persistent savepoint.
            let db = redb2::Database::create(&old).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(redb2::TableDefinition::<u64, &[u8]>::new("version_meta"))
                .unwrap()
                .insert(1, b"{}".as_slice())
                .unwrap();
            w.commit().unwrap();
            let w = db.begin_write().unwrap();
            w.persistent_savepoint().unwrap();
            w.commit().unwrap();
        }
        let old_sha = sha(&old);
        let err = match Store::open(&format!("redb:{}", old.display())).await {
            Ok(_) => panic!("the upgrade should fail"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("control.redb"), "{err}");
        assert!(err.contains("could not be upgraded"), "{err}");
        assert!(err.contains("savepoint"), "{err}");
        assert!(err.contains("the file is unchanged"), "{err}");
        assert_eq!(sha(&old), old_sha);
        assert_eq!(needs_upgrade(&old), Some(2));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("control.redb")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
