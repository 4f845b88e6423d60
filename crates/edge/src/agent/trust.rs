//! The edge's trust store: which control-plane keys it accepts, and for which signing times.
//!
//! It starts from the key the edge was given (`--trust`) and grows only through key-set
//! statements ([`firebreak_protocol::keyring`]) the control plane serves at `GET /v1/keys`:
//! each is verified with a key already trusted and may only narrow trust (revocations and
//! retirements), except for the new keys it endorses. The edge asks for newer statements on
//! its heartbeat, so a rotation's overlap (days by default) leaves ample time.
//!
//! Accepted statements are kept in `DATA_DIR/trust.json` (mode 0600, written atomically, file
//! and directory fsynced). The file is checked, not trusted: at start the edge replays it from
//! the `--trust` key, link by link, and keeps only what verifies, so it restarts from disk
//! after a rotation (bundles the old key sealed before its retirement still verify) and a
//! tampered file widens nothing.

use super::client::ControlClient;
use firebreak_protocol::keyring::{
    apply_chain, KeyId, KeyRefused, KeySet, KeySetStatement, Signs, Verify, Window, MAX_CHAIN,
};
use firebreak_protocol::keys::PublicKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Largest `trust.json` read.
const MAX_TRUST_FILE_BYTES: u64 = 2 * 1024 * 1024;

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    /// Accepted statements, oldest first.
    chain: Vec<KeySetStatement>,
}

struct Trusted {
    set: KeySet,
    chain: Vec<KeySetStatement>,
}

/// The keys this edge trusts.
pub struct TrustStore {
    path: PathBuf,
    trusted: RwLock<Trusted>,
    /// One update (verify, write, swap) at a time.
    update: Mutex<()>,
}

impl TrustStore {
    /// The trust of an edge started with `anchor`, plus what `DATA_DIR/trust.json` holds that
    /// still verifies from it. Blocking (reads a file).
    pub fn open(data_dir: &Path, anchor: PublicKey) -> Self {
        let path = data_dir.join("trust.json");
        let start = KeySet::trusting(anchor);
        let kept = match read_bounded(&path) {
            Ok(Some(bytes)) => match serde_json::from_slice::<TrustFile>(&bytes) {
                Ok(f) => f.chain,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "trust file is malformed; trusting only the --trust key");
                    Vec::new()
                }
            },
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "trust file unreadable; trusting only the --trust key");
                Vec::new()
            }
        };
        let (set, applied, refused) = apply_chain(&start, &kept);
        if let Some(e) = refused {
            tracing::warn!(file = %path.display(), error = %e, "part of the trust file does not verify from the --trust key; ignoring that part");
        }
        if applied > 0 {
            tracing::info!(
                generation = set.generation,
                keys = set.keys.len(),
                "trusting the key set kept on disk"
            );
        }
        let chain = if applied > 0 { kept } else { Vec::new() };
        Self {
            path,
            trusted: RwLock::new(Trusted { set, chain }),
            update: Mutex::new(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Trusted> {
        self.trusted
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The generation of the key set trusted now (0: only the `--trust` key).
    pub fn generation(&self) -> u64 {
        self.read().set.generation
    }

    /// The key set trusted now.
    pub fn set(&self) -> KeySet {
        self.read().set.clone()
    }

    /// Verifies `chain` link by link and, when it advances trust, keeps it on disk and then
    /// trusts it. Returns how many links were applied; an error when the newest offered link
    /// was refused (what was applied before it stays). Blocking (fsync).
    pub fn apply(&self, chain: &[KeySetStatement]) -> Result<usize, String> {
        let _turn = self
            .update
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (current, kept) = {
            let t = self.read();
            (t.set.clone(), t.chain.clone())
        };
        let (set, applied, refused) = apply_chain(&current, chain);
        if applied > 0 {
            let mut all = kept;
            all.extend(
                chain
                    .iter()
                    .filter(|s| {
                        s.claimed_generation()
                            .is_some_and(|g| g > current.generation && g <= set.generation)
                    })
                    .cloned(),
            );
            if all.len() > MAX_CHAIN {
                let extra = all.len() - MAX_CHAIN;
                all.drain(..extra);
            }
            let file = TrustFile { chain: all };
            let bytes = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
            firebreak_protocol::durable::write_private(&self.path, &bytes)
                .map_err(|e| format!("cannot keep the key set in {}: {e}", self.path.display()))?;
            let generation = set.generation;
            *self
                .trusted
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Trusted {
                set,
                chain: file.chain,
            };
            tracing::info!(generation, "control-plane key set accepted");
        }
        match refused {
            Some(e) => {
                metrics::counter!("firebreak_key_sets_refused_total").increment(1);
                Err(format!("key set refused: {e}"))
            }
            None => Ok(applied),
        }
    }

    /// One round: fetch what is newer than the trusted generation and apply it.
    pub async fn refresh(self: &Arc<Self>, client: &ControlClient) -> Result<usize, String> {
        let chain = client.keys(self.generation()).await?;
        if chain.is_empty() {
            return Ok(0);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.apply(&chain))
            .await
            .map_err(|e| e.to_string())?
    }
}

impl Verify for TrustStore {
    fn verify_signed(
        &self,
        key: Option<KeyId>,
        message: &[u8],
        signature: &[u8],
        what: Signs,
    ) -> Result<Window, KeyRefused> {
        self.read().set.verify_signed(key, message, signature, what)
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    file.take(MAX_TRUST_FILE_BYTES + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_TRUST_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_TRUST_FILE_BYTES} bytes"
        )));
    }
    Ok(Some(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use firebreak_protocol::keyring::{KeyEntry, Sign};
    use firebreak_protocol::keys::ControlKey;

    fn rotation(a: &ControlKey, b: &ControlKey) -> KeySetStatement {
        let mut old = KeyEntry::new(a.public(), 0);
        old.retire_after_ms = Some(2_000);
        let set = KeySet {
            generation: 1,
            signed_at_ms: 1_000,
            keys: vec![old, KeyEntry::new(b.public(), 1_000)],
        };
        KeySetStatement::sign(&set, &[a as &dyn Sign, b]).unwrap()
    }

    #[test]
    fn accepted_sets_are_kept_private_and_replayed_from_the_anchor() {
        let dir = std::env::temp_dir().join(format!("fb-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (
            ControlKey::generate().unwrap(),
            ControlKey::generate().unwrap(),
        );
        let store = TrustStore::open(&dir, a.public());
        assert_eq!(store.generation(), 0);
        assert_eq!(store.apply(&[rotation(&a, &b)]).unwrap(), 1);
        assert_eq!(store.generation(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("trust.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Restart: the kept set verifies from the anchor.
        assert_eq!(TrustStore::open(&dir, a.public()).generation(), 1);
        // Started with another anchor, the kept chain does not verify: only the anchor.
        let stranger = ControlKey::generate().unwrap();
        assert_eq!(TrustStore::open(&dir, stranger.public()).generation(), 0);
        // A set not signed by a trusted key is refused and changes nothing.
        let c = ControlKey::generate().unwrap();
        let fresh = TrustStore::open(&dir.join("x"), c.public());
        std::fs::create_dir_all(dir.join("x")).unwrap();
        assert!(fresh.apply(&[rotation(&a, &b)]).is_err());
        assert_eq!(fresh.generation(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
