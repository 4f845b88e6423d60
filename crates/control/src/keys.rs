//! The control plane's signing keys: the current key, the keys before it, rotation with an
//! overlap, and revocation.
//!
//! The key ring lives in a file beside the signing key file (`control.key` →
//! `control.key.ring`, mode 0600): the public [`KeySet`] edges trust, the secret halves still
//! needed (the current key and, during an overlap, the next one), and the chain of signed
//! [`KeySetStatement`]s edges replay (`GET /v1/keys`). It is written only by a rotation or a
//! revocation: to a temporary file, fsynced, renamed, and the directory fsynced. Until the
//! first rotation there is no ring file and the key file's key is the only key.
//!
//! Rotation makes key B beside the current key A: A is retired `overlap` from now, B is good
//! from now, and the statement endorsing B is signed by A (which every edge trusts) and by B.
//! The control plane keeps signing with A until the overlap ends, so an edge that has not yet
//! fetched the statement keeps verifying everything; from then on it signs with B. Bundles and
//! targets A signed before its retirement stay valid, so nothing is re-sealed and an edge
//! restarts from the bundles on its disk after A is retired.
//!
//! Revocation marks a key revoked from a stated time, in a statement signed by every other
//! good key (never by the revoked one: edges would not count it). If the revoked key was
//! signing, the next key signs from now on (the overlap ends at once).

use crate::plane::{Plane, PlaneError};
use crate::rollout::state::{AuditEntry, StoredTarget};
use firebreak_protocol::keyring::{
    KeyEntry, KeyId, KeyRefused, KeySet, KeySetStatement, Sign, Signs, Verify, Window, MAX_CHAIN,
    MAX_KEYS,
};
use firebreak_protocol::keys::{ControlKey, PublicKey};
use firebreak_protocol::now_ms;
use firebreak_protocol::signed::Signed;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Default overlap of a rotation: edges have this long to fetch the new key set.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest overlap accepted.
pub const MAX_OVERLAP: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest ring file read.
const MAX_RING_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// How far in the future a revocation time may lie (clock skew between operator and plane).
const MAX_REVOKE_AHEAD_MS: u64 = 60_000;

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The ring file could not be read or written.
    #[error("key ring {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The ring file is not valid.
    #[error("key ring {path}: {why}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The request is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// No such key.
    #[error("no key {0} in the key ring")]
    NotFound(String),
    /// It conflicts with the ring's state.
    #[error("{0}")]
    Conflict(String),
    /// No randomness, or signing failed.
    #[error("{0}")]
    Internal(String),
}

/// A secret key the control plane still holds, and when it starts signing with it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Secret {
    id: KeyId,
    /// `ed25519-secret:…`.
    secret: String,
    /// The control plane signs with the key of the latest `sign_from_ms` not after now.
    sign_from_ms: u64,
}

/// The ring file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RingFile {
    set: KeySet,
    secrets: Vec<Secret>,
    chain: Vec<KeySetStatement>,
}

struct Held {
    key: Arc<ControlKey>,
    id: KeyId,
    sign_from_ms: u64,
}

struct Ring {
    /// The signing key's public half when the ring was made or last changed (what
    /// [`ControlKeys::public`] answers should no key be good, which the ring never allows).
    anchor: PublicKey,
    set: KeySet,
    secrets: Vec<Held>,
    chain: Vec<KeySetStatement>,
}

impl Ring {
    fn of(key: ControlKey) -> Self {
        let public = key.public();
        Self {
            anchor: public,
            set: KeySet::trusting(public),
            secrets: vec![Held {
                id: KeyId::of(&public),
                key: Arc::new(key),
                sign_from_ms: 0,
            }],
            chain: Vec::new(),
        }
    }

    /// The key to sign with at `now`.
    fn signer(&self, now: u64) -> Option<&Held> {
        let good = |h: &&Held| {
            self.set
                .get(h.id)
                .is_some_and(|k| k.revoked_at_ms.is_none())
        };
        self.secrets
            .iter()
            .filter(good)
            .filter(|h| h.sign_from_ms <= now)
            .max_by_key(|h| h.sign_from_ms)
            .or_else(|| {
                self.secrets
                    .iter()
                    .filter(good)
                    .min_by_key(|h| h.sign_from_ms)
            })
    }

    fn to_file(&self) -> RingFile {
        RingFile {
            set: self.set.clone(),
            secrets: self
                .secrets
                .iter()
                .map(|h| Secret {
                    id: h.id,
                    secret: h.key.to_secret_text(),
                    sign_from_ms: h.sign_from_ms,
                })
                .collect(),
            chain: self.chain.clone(),
        }
    }

    fn from_file(file: RingFile) -> Result<Self, String> {
        let mut secrets = Vec::new();
        for s in file.secrets {
            let key = ControlKey::from_secret_text(&s.secret).map_err(|e| e.to_string())?;
            if KeyId::of(&key.public()) != s.id {
                return Err(format!("secret key {} has another key's id", s.id));
            }
            if file.set.get(s.id).is_none() {
                return Err(format!("secret key {} is not in the key set", s.id));
            }
            secrets.push(Held {
                key: Arc::new(key),
                id: s.id,
                sign_from_ms: s.sign_from_ms,
            });
        }
        let anchor = secrets
            .iter()
            .find(|h| {
                file.set
                    .get(h.id)
                    .is_some_and(|k| k.revoked_at_ms.is_none())
            })
            .map(|h| h.key.public())
            .ok_or("no secret key left that is not revoked")?;
        Ok(Self {
            anchor,
            set: file.set,
            secrets,
            chain: file.chain,
        })
    }

    /// Signs `set` with `signers`, appends the statement to the chain (bounded) and makes
    /// `set` the current set.
    fn publish(&mut self, set: KeySet, signers: &[&dyn Sign]) -> Result<(), KeysError> {
        let statement = KeySetStatement::sign(&set, signers)
            .map_err(|e| KeysError::Internal(format!("signing the key set: {e}")))?;
        // Check it as an edge that trusts the current set would.
        self.set
            .accept(&statement)
            .map_err(|e| KeysError::Internal(format!("the new key set would be refused: {e}")))?;
        self.chain.push(statement);
        if self.chain.len() > MAX_CHAIN {
            let extra = self.chain.len() - MAX_CHAIN;
            self.chain.drain(..extra);
        }
        self.set = set;
        Ok(())
    }
}

/// A key as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyView {
    /// The key as in the set edges trust.
    #[serde(flatten)]
    pub entry: KeyEntry,
    /// Whether the control plane signs with it now.
    pub signing: bool,
    /// When the control plane starts (or started) signing with it, if it holds the secret.
    pub signs_from_ms: Option<u64>,
}

/// The key ring as operators see it (`GET /v1/keys/ring`, and the answer of rotate/revoke).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RingView {
    /// The key set's generation.
    pub generation: u64,
    /// The key signing now.
    pub current: Option<KeyId>,
    /// Every key in the set.
    pub keys: Vec<KeyView>,
}

/// The control plane's keys. Cheap to clone (shared).
#[derive(Clone)]
pub struct ControlKeys {
    inner: Arc<Inner>,
}

struct Inner {
    /// The ring file; `None`: kept in memory only (tests, embedded use).
    path: Option<PathBuf>,
    ring: RwLock<Ring>,
    /// One rotation or revocation at a time.
    change: Mutex<()>,
    overlap: Duration,
}

impl From<ControlKey> for ControlKeys {
    /// One key, in memory only; rotation works but is not kept across restarts.
    fn from(key: ControlKey) -> Self {
        Self::new(None, Ring::of(key), DEFAULT_OVERLAP)
    }
}

/// The ring file's path for the key file `key_path`.
pub fn ring_path(key_path: &Path) -> PathBuf {
    let mut name = key_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "control.key".into());
    name.push(".ring");
    key_path.with_file_name(name)
}

impl ControlKeys {
    fn new(path: Option<PathBuf>, ring: Ring, overlap: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                path,
                ring: RwLock::new(ring),
                change: Mutex::new(()),
                overlap,
            }),
        }
    }

    /// The keys of the key file at `key_path` (holding `key`): its ring file when there is
    /// one, else `key` alone. `overlap` is the default overlap of a rotation. Blocking (reads
    /// a file): call from `spawn_blocking` or before serving.
    pub fn open(key_path: &Path, key: ControlKey, overlap: Duration) -> Result<Self, KeysError> {
        check_overlap(overlap)?;
        let path = ring_path(key_path);
        let display = path.display().to_string();
        let ring = match std::fs::metadata(&path) {
            Ok(meta) => {
                if meta.len() > MAX_RING_FILE_BYTES {
                    return Err(KeysError::Corrupt {
                        path: display,
                        why: format!("{} bytes is too large", meta.len()),
                    });
                }
                let bytes = std::fs::read(&path).map_err(|source| KeysError::Io {
                    path: display.clone(),
                    source,
                })?;
                let file: RingFile =
                    serde_json::from_slice(&bytes).map_err(|e| KeysError::Corrupt {
                        path: display.clone(),
                        why: e.to_string(),
                    })?;
                let ring = Ring::from_file(file).map_err(|why| KeysError::Corrupt {
                    path: display.clone(),
                    why,
                })?;
                if ring.set.get(KeyId::of(&key.public())).is_none() {
                    return Err(KeysError::Corrupt {
                        path: display,
                        why: format!(
                            "the key file's key {} is not in the ring (was the key file replaced?)",
                            KeyId::of(&key.public())
                        ),
                    });
                }
                ring
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ring::of(key),
            Err(source) => {
                return Err(KeysError::Io {
                    path: display,
                    source,
                })
            }
        };
        Ok(Self::new(Some(path), ring, overlap))
    }

    /// The default overlap of a rotation.
    pub fn default_overlap(&self) -> Duration {
        self.inner.overlap
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.inner
            .ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The public half of the key signing now (what new edges should trust).
    pub fn public(&self) -> PublicKey {
        let ring = self.read();
        match ring.signer(now_ms()) {
            Some(h) => h.key.public(),
            // Unreachable: a ring always holds a good secret (checked on load and change).
            None => ring.anchor,
        }
    }

    /// The key set edges trust now.
    pub fn set(&self) -> KeySet {
        self.read().set.clone()
    }

    /// The statements newer than generation `after`, oldest first.
    pub fn chain_after(&self, after: u64) -> Vec<KeySetStatement> {
        self.read()
            .chain
            .iter()
            .filter(|s| s.claimed_generation().is_some_and(|g| g > after))
            .cloned()
            .collect()
    }

    /// The ring as operators see it.
    pub fn view(&self) -> RingView {
        let ring = self.read();
        let now = now_ms();
        let current = ring.signer(now).map(|h| h.id);
        RingView {
            generation: ring.set.generation,
            current,
            keys: ring
                .set
                .keys
                .iter()
                .map(|k| KeyView {
                    entry: k.clone(),
                    signing: Some(k.id) == current,
                    signs_from_ms: ring
                        .secrets
                        .iter()
                        .find(|h| h.id == k.id)
                        .map(|h| h.sign_from_ms),
                })
                .collect(),
        }
    }

    /// Makes a new key and publishes the set endorsing it; the current key signs until
    /// `overlap` (default: the configured one) has passed. Blocking (key generation, signing,
    /// fsync): call from `spawn_blocking`.
    pub fn rotate(&self, overlap: Option<Duration>) -> Result<RingView, KeysError> {
        let overlap = overlap.unwrap_or(self.inner.overlap);
        check_overlap(overlap)?;
        let _turn = self
            .inner
            .change
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_ms();
        let mut next = {
            let ring = self.read();
            if let Some(pending) = ring.secrets.iter().find(|h| h.sign_from_ms > now) {
                return Err(KeysError::Conflict(format!(
                    "a rotation is in progress: key {} signs from {} ms; rotate again after that",
                    pending.id, pending.sign_from_ms
                )));
            }
            clone_ring(&ring)
        };
        let old = next
            .signer(now)
            .map(|h| (h.id, h.key.clone()))
            .ok_or_else(|| KeysError::Internal("no signing key".into()))?;
        let new = ControlKey::generate().map_err(|e| KeysError::Internal(e.to_string()))?;
        let new_id = KeyId::of(&new.public());
        let until = now.saturating_add(u64::try_from(overlap.as_millis()).unwrap_or(u64::MAX));
        let mut set = next.set.clone();
        set.generation += 1;
        set.signed_at_ms = now.max(set.signed_at_ms);
        for k in &mut set.keys {
            if k.id == old.0 {
                k.retire_after_ms = Some(k.retire_after_ms.map_or(until, |r| r.min(until)));
            }
        }
        set.keys.push(KeyEntry::new(new.public(), now));
        prune(&mut set, now);
        let new = Arc::new(new);
        next.publish(set, &[&*old.1, &*new])?;
        // Secrets no longer needed: keys retired by now (their signatures cannot be made).
        next.secrets.retain(|h| {
            next.set.get(h.id).is_some_and(|k| {
                k.revoked_at_ms.is_none() && k.retire_after_ms.is_none_or(|r| r > now)
            })
        });
        next.secrets.push(Held {
            key: new,
            id: new_id,
            sign_from_ms: until,
        });
        self.commit(next)
    }

    /// Revokes key `id` from `after_ms` on (signatures it made later are refused; edges refuse
    /// every statement and request it signs); signed by every other good key. Blocking.
    pub fn revoke(&self, id: &str, after_ms: u64) -> Result<RingView, KeysError> {
        let id: KeyId = id.parse().map_err(KeysError::BadRequest)?;
        let _turn = self
            .inner
            .change
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_ms();
        if after_ms > now.saturating_add(MAX_REVOKE_AHEAD_MS) {
            return Err(KeysError::BadRequest(
                "the revocation time is in the future; revoke from now or an earlier time".into(),
            ));
        }
        let mut next = clone_ring(&self.read());
        let entry = next
            .set
            .get(id)
            .ok_or_else(|| KeysError::NotFound(id.to_string()))?;
        if let Some(at) = entry.revoked_at_ms {
            if at <= after_ms {
                return Err(KeysError::Conflict(format!(
                    "key {id} is already revoked from {at} ms"
                )));
            }
        }
        let signers: Vec<Arc<ControlKey>> = next
            .secrets
            .iter()
            .filter(|h| h.id != id)
            .filter(|h| {
                next.set
                    .get(h.id)
                    .is_some_and(|k| k.signs_statements_at(now))
            })
            .map(|h| h.key.clone())
            .collect();
        if signers.is_empty() {
            return Err(KeysError::Conflict(format!(
                "no other good key to sign the revocation of {id}: rotate first (`firebreak control rotate-key`), then revoke"
            )));
        }
        let mut set = next.set.clone();
        set.generation += 1;
        set.signed_at_ms = now.max(set.signed_at_ms);
        for k in &mut set.keys {
            if k.id == id {
                k.revoked_at_ms = Some(k.revoked_at_ms.map_or(after_ms, |r| r.min(after_ms)));
            }
        }
        prune(&mut set, now);
        let dyn_signers: Vec<&dyn Sign> = signers.iter().map(|k| &**k as &dyn Sign).collect();
        next.publish(set, &dyn_signers)?;
        next.secrets.retain(|h| h.id != id);
        // If the revoked key was signing, the next key signs from now on.
        if next.signer(now).is_none_or(|h| h.sign_from_ms > now) {
            if let Some(h) = next.secrets.iter_mut().min_by_key(|h| h.sign_from_ms) {
                h.sign_from_ms = h.sign_from_ms.min(now);
            }
        }
        self.commit(next)
    }

    /// Writes `next` (when kept in a file) and makes it current.
    fn commit(&self, mut next: Ring) -> Result<RingView, KeysError> {
        next.anchor = next
            .signer(now_ms())
            .map(|h| h.key.public())
            .ok_or_else(|| KeysError::Internal("no good signing key would be left".into()))?;
        if let Some(path) = &self.inner.path {
            let bytes = serde_json::to_vec_pretty(&next.to_file())
                .map_err(|e| KeysError::Internal(e.to_string()))?;
            firebreak_protocol::durable::write_private(path, &bytes).map_err(|source| {
                KeysError::Io {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
        *self
            .inner
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(self.view())
    }
}

fn clone_ring(ring: &Ring) -> Ring {
    Ring {
        anchor: ring.anchor,
        set: ring.set.clone(),
        secrets: ring
            .secrets
            .iter()
            .map(|h| Held {
                key: h.key.clone(),
                id: h.id,
                sign_from_ms: h.sign_from_ms,
            })
            .collect(),
        chain: ring.chain.clone(),
    }
}

/// Keeps a set within [`MAX_KEYS`]: drops the oldest keys that can sign nothing new.
fn prune(set: &mut KeySet, now: u64) {
    while set.keys.len() > MAX_KEYS {
        let ended = set
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| {
                k.revoked_at_ms.is_some() || k.retire_after_ms.is_some_and(|r| r <= now)
            })
            .min_by_key(|(_, k)| k.valid_from_ms)
            .map(|(i, _)| i);
        match ended {
            Some(i) => {
                set.keys.remove(i);
            }
            None => break,
        }
    }
}

fn check_overlap(overlap: Duration) -> Result<(), KeysError> {
    if overlap > MAX_OVERLAP {
        return Err(KeysError::BadRequest(format!(
            "overlap {} s is longer than the limit of {} s",
            overlap.as_secs(),
            MAX_OVERLAP.as_secs()
        )));
    }
    Ok(())
}

impl Sign for ControlKeys {
    fn sign_message(&self, message: &[u8]) -> (KeyId, [u8; 64]) {
        let ring = self.read();
        match ring.signer(now_ms()) {
            Some(h) => (h.id, h.key.sign(message)),
            // Unreachable (a ring always holds a good secret); a zero signature verifies
            // nowhere.
            None => (KeyId([0; 8]), [0; 64]),
        }
    }
}

impl Verify for ControlKeys {
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

/// `POST /v1/keys/rotate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old key keeps signing while edges fetch the new set (default: the
    /// control plane's `--key-overlap-s`).
    #[serde(default)]
    pub overlap_ms: Option<u64>,
    /// Why (for the audit log).
    #[serde(default)]
    pub message: String,
}

/// `POST /v1/keys/{id}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Signatures the key made after this time (ms since the epoch) are refused; edges
    /// refuse every statement and request it signs from now on.
    pub after_ms: u64,
    /// Why (for the audit log).
    #[serde(default)]
    pub message: String,
}

impl From<KeysError> for PlaneError {
    fn from(e: KeysError) -> Self {
        match e {
            KeysError::BadRequest(m) => PlaneError::BadRequest(m),
            KeysError::NotFound(m) => PlaneError::NotFound(format!("no key {m} in the key ring")),
            KeysError::Conflict(m) => PlaneError::Conflict(m),
            other => PlaneError::Internal(other.to_string()),
        }
    }
}

impl Plane {
    /// The signing keys.
    pub fn keys(&self) -> &ControlKeys {
        &self.key
    }

    /// Rotates the signing key (see the module documentation); audited.
    pub async fn rotate_key(&self, req: RotateRequest, by: &str) -> Result<RingView, PlaneError> {
        crate::plane::label_text("message", &req.message)?;
        let keys = self.key.clone();
        let overlap = req.overlap_ms.map(Duration::from_millis);
        let view = tokio::task::spawn_blocking(move || keys.rotate(overlap))
            .await
            .map_err(|e| PlaneError::Internal(e.to_string()))??;
        let new = view
            .keys
            .last()
            .map(|k| k.entry.id.to_string())
            .unwrap_or_default();
        let until = view
            .keys
            .last()
            .and_then(|k| k.signs_from_ms)
            .unwrap_or_default();
        self.audit(AuditEntry {
            at_ms: now_ms(),
            who: by.to_owned(),
            action: "key-rotate".into(),
            version: None,
            rollout: None,
            message: format!(
                "new signing key {new} (key set generation {}), signing from {until} ms; {}",
                view.generation, req.message
            ),
            gate: None,
        })
        .await;
        Ok(view)
    }

    /// Revokes a key, then signs every stored target again with a good key (edges refuse
    /// every statement a revoked key signed, whatever its time); audited.
    pub async fn revoke_key(
        &self,
        id: &str,
        req: RevokeRequest,
        by: &str,
    ) -> Result<RingView, PlaneError> {
        crate::plane::label_text("message", &req.message)?;
        let keys = self.key.clone();
        let key_id = id.to_owned();
        let view = tokio::task::spawn_blocking(move || keys.revoke(&key_id, req.after_ms))
            .await
            .map_err(|e| PlaneError::Internal(e.to_string()))??;
        let resigned = self
            .update(|state, seq| {
                let mut n = 0;
                for t in state
                    .default
                    .iter_mut()
                    .chain(state.cells.values_mut())
                    .chain(state.edges.values_mut())
                {
                    *t = resign(t, seq, &self.key)?;
                    n += 1;
                }
                Ok(n)
            })
            .await?;
        self.audit(AuditEntry {
            at_ms: now_ms(),
            who: by.to_owned(),
            action: "key-revoke".into(),
            version: None,
            rollout: None,
            message: format!(
                "key {id} revoked from {} ms (key set generation {}); {resigned} target(s) signed again with key {}; {}",
                req.after_ms,
                view.generation,
                view.current.map(|k| k.to_string()).unwrap_or_default(),
                req.message
            ),
            gate: None,
        })
        .await;
        Ok(view)
    }
}

/// The same target statement, for sequence number `seq`, signed now by `keys`' current key.
/// The payload is carried as JSON, so fields this module does not know are kept.
fn resign(t: &StoredTarget, seq: u64, keys: &ControlKeys) -> Result<StoredTarget, PlaneError> {
    let mut value: serde_json::Value = serde_json::from_str(&t.signed.payload)
        .map_err(|e| PlaneError::Internal(format!("stored target: {e}")))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| PlaneError::Internal("stored target is not an object".into()))?;
    obj.insert("seq".into(), seq.into());
    obj.insert("set_at_ms".into(), now_ms().into());
    let signed = Signed::sign(&value, keys).map_err(|e| PlaneError::Internal(e.to_string()))?;
    Ok(StoredTarget {
        seq,
        version: t.version,
        signed,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use firebreak_protocol::bundle::Bundle;
    use firebreak_protocol::keyring::apply_chain;
    use firebreak_protocol::signed::Signed;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fb-keys-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn bundle(at: u64) -> Bundle {
        Bundle {
            version: 1,
            parent: None,
            created_at_ms: at,
            author: "t".into(),
            message: "m".into(),
            fleet: String::new(),
            services: Vec::new(),
            geoip: None,
        }
    }

    #[test]
    fn rotation_keeps_signing_with_the_old_key_until_the_overlap_ends() {
        let a = ControlKey::generate().unwrap();
        let a_id = KeyId::of(&a.public());
        let edge = KeySet::trusting(a.public());
        let keys = ControlKeys::from(a);
        let view = keys.rotate(Some(Duration::from_secs(3600))).unwrap();
        assert_eq!(view.generation, 1);
        assert_eq!(view.current, Some(a_id), "old key signs during the overlap");
        let b_id = view
            .keys
            .iter()
            .find(|k| k.entry.id != a_id)
            .unwrap()
            .entry
            .id;
        // An edge that trusts only A takes the new set from the chain.
        let (set, applied, err) = apply_chain(&edge, &keys.chain_after(0));
        assert_eq!((applied, err), (1, None));
        assert!(set.get(b_id).is_some());
        // A second rotation waits for the first overlap to end.
        assert!(matches!(keys.rotate(None), Err(KeysError::Conflict(_))));
        // Statements made now verify with the edge's new set.
        let s = Signed::sign(&serde_json::json!({"set_at_ms": now_ms()}), &keys).unwrap();
        assert!(s.open::<serde_json::Value>(&set).is_ok());
    }

    #[test]
    fn after_a_zero_overlap_the_new_key_signs_and_old_bundles_still_open() {
        let a = ControlKey::generate().unwrap();
        let a_id = KeyId::of(&a.public());
        let edge = KeySet::trusting(a.public());
        let keys = ControlKeys::from(a);
        let old = bundle(now_ms()).seal(&keys).unwrap();
        let view = keys.rotate(Some(Duration::ZERO)).unwrap();
        assert_ne!(view.current, Some(a_id));
        let (set, _, err) = apply_chain(&edge, &keys.chain_after(0));
        assert_eq!(err, None);
        // The old bundle (sealed before the retirement) still opens; a new one is by B.
        assert!(Bundle::open(&old, &set).is_ok());
        assert!(Bundle::open(&old, &keys).is_ok());
        let new = bundle(now_ms()).seal(&keys).unwrap();
        assert!(Bundle::open(&new, &set).is_ok());
        assert!(
            Bundle::open(&new, &edge).is_err(),
            "the edge's old set lacks B"
        );
        assert_eq!(
            keys.public(),
            set.get(view.current.unwrap()).unwrap().public
        );
    }

    #[test]
    fn revocation_needs_another_good_key_and_switches_the_signer() {
        let a = ControlKey::generate().unwrap();
        let a_id = KeyId::of(&a.public()).to_string();
        let edge = KeySet::trusting(a.public());
        let keys = ControlKeys::from(a);
        assert!(matches!(
            keys.revoke(&a_id, now_ms()),
            Err(KeysError::Conflict(_))
        ));
        assert!(matches!(
            keys.revoke("0000000000000000", now_ms()),
            Err(KeysError::NotFound(_))
        ));
        assert!(matches!(
            keys.revoke(&a_id, now_ms() + 3_600_000),
            Err(KeysError::BadRequest(_))
        ));
        keys.rotate(Some(Duration::from_secs(3600))).unwrap();
        let before = Signed::sign(&serde_json::json!({"set_at_ms": now_ms()}), &keys).unwrap();
        let view = keys.revoke(&a_id, now_ms()).unwrap();
        assert_ne!(view.current.map(|k| k.to_string()), Some(a_id.clone()));
        let (set, applied, err) = apply_chain(&edge, &keys.chain_after(0));
        assert_eq!((applied, err), (2, None));
        // What A signed is refused now, whatever its time; new statements verify.
        assert!(before.open::<serde_json::Value>(&set).is_err());
        let after = Signed::sign(&serde_json::json!({"set_at_ms": now_ms()}), &keys).unwrap();
        assert!(after.open::<serde_json::Value>(&set).is_ok());
        assert!(matches!(
            keys.revoke(&a_id, now_ms()),
            Err(KeysError::Conflict(_))
        ));
    }

    #[test]
    fn the_ring_is_kept_private_and_reloaded() {
        let d = dir("ring");
        let key_path = d.join("control.key");
        let key = ControlKey::load_or_create(&key_path).unwrap();
        let keys = ControlKeys::open(&key_path, key, DEFAULT_OVERLAP).unwrap();
        assert!(
            !ring_path(&key_path).exists(),
            "no ring file before a rotation"
        );
        let view = keys.rotate(Some(Duration::ZERO)).unwrap();
        let ring = ring_path(&key_path);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&ring).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = ControlKeys::open(
            &key_path,
            ControlKey::load_or_create(&key_path).unwrap(),
            DEFAULT_OVERLAP,
        )
        .unwrap();
        assert_eq!(again.view().current, view.current);
        assert_eq!(again.chain_after(0).len(), 1);
        // A replaced key file is refused rather than silently trusted.
        std::fs::remove_file(&key_path).unwrap();
        let other = ControlKey::load_or_create(&key_path).unwrap();
        assert!(matches!(
            ControlKeys::open(&key_path, other, DEFAULT_OVERLAP),
            Err(KeysError::Corrupt { .. })
        ));
        std::fs::write(&ring, "nonsense").unwrap();
        assert!(matches!(
            ControlKeys::open(
                &key_path,
                ControlKey::load_or_create(&key_path).unwrap(),
                DEFAULT_OVERLAP
            ),
            Err(KeysError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
