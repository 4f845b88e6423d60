//! Key sets: signing-key rotation and revocation.
//!
//! Every signature names its key by a [`KeyId`] (the first 8 bytes of the SHA-256 of the
//! public key, 16 hex digits in text), so a verifier holding several keys picks the right one.
//! A [`KeySet`] lists the control plane's keys, each with the span of signing times it is good
//! for: from `valid_from_ms`, until `retire_after_ms` (rotation) or `revoked_at_ms`
//! (compromise), whichever is earlier. Times are the signer's own: a bundle's `created_at_ms`,
//! a statement's `set_at_ms`/`signed_at_ms`, a request's signed-at header.
//!
//! A revoked key is treated more strictly than a retired one, because a thief can backdate:
//! its signature is accepted only on bundles signed no later than the revocation time (a
//! bundle is content-addressed: an edge loads one only when a statement from a good key names
//! its hash, or from its own disk), never on statements or requests, whatever time they claim.
//!
//! A new key set reaches edges as a [`KeySetStatement`]: the set's JSON, signed by at least
//! one key the edge already trusts (not revoked, valid at the statement's time, and not
//! revoked by the statement itself: a revoked key cannot revoke others) and by every key the
//! set adds (proof that its holder has the secret half). A set may only narrow what the edge
//! trusts: it never shortens a key's revocation, never extends a retirement, never drops a key
//! that is still good, and its generation always increases. Edges apply the control plane's
//! statements in generation order (the chain), so an edge offline across several rotations
//! catches up link by link from the one key it was started with.

use crate::keys::{ControlKey, PublicKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Most keys in a set.
pub const MAX_KEYS: usize = 16;
/// Most statements in a chain the control plane serves (older links are dropped; an edge
/// further behind is started again with the current key).
pub const MAX_CHAIN: usize = 64;
/// Largest key-set statement payload.
pub const MAX_KEY_SET_BYTES: usize = 16 * 1024;
/// Longest signature text (`KEYID:` and 88 base64 characters).
pub const MAX_SIGNATURE_TEXT: usize = 128;

/// A key's id: the first 8 bytes of the SHA-256 of its 32-byte public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &PublicKey) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.to_bytes());
        let mut id = [0u8; 8];
        for (o, d) in id.iter_mut().zip(digest.iter()) {
            *o = *d;
        }
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for KeyId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a key id (16 hex digits)");
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut id = [0u8; 8];
        for (i, o) in id.iter_mut().enumerate() {
            let pair = s.get(i * 2..i * 2 + 2).ok_or_else(bad)?;
            *o = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Self(id))
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Something that signs for the control plane: one key, or the control plane's key store
/// (which signs with whichever key is current).
pub trait Sign {
    /// Signs `message`; returns the id of the key used and the 64-byte signature.
    fn sign_message(&self, message: &[u8]) -> (KeyId, [u8; 64]);
}

impl Sign for ControlKey {
    fn sign_message(&self, message: &[u8]) -> (KeyId, [u8; 64]) {
        (KeyId::of(&self.public()), self.sign(message))
    }
}

impl<T: Sign + ?Sized> Sign for std::sync::Arc<T> {
    fn sign_message(&self, message: &[u8]) -> (KeyId, [u8; 64]) {
        (**self).sign_message(message)
    }
}

/// What a signature is on: revoked keys are accepted (for their past) only on bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signs {
    /// A sealed bundle (content-addressed; its time is `created_at_ms`).
    Bundle,
    /// A statement (target, purge, key set; its time is in its payload).
    Statement,
    /// An admin request (its time is the signed-at header).
    Request,
}

/// The signing times a verified signature is good for; the caller checks the signed
/// statement's own time against it once parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The key that signed.
    pub key: KeyId,
    /// Earliest signing time accepted.
    pub from_ms: u64,
    /// Latest signing time accepted.
    pub until_ms: u64,
}

impl Window {
    /// Every time: a single trusted key has no bounds.
    pub fn always(key: KeyId) -> Self {
        Self {
            key,
            from_ms: 0,
            until_ms: u64::MAX,
        }
    }

    /// Whether the window bounds anything (else no time need be looked for).
    pub fn is_bounded(&self) -> bool {
        self.from_ms > 0 || self.until_ms < u64::MAX
    }

    /// Checks a signing time.
    pub fn admit(&self, at_ms: u64) -> Result<(), KeyRefused> {
        if at_ms < self.from_ms || at_ms > self.until_ms {
            return Err(KeyRefused::OutsideWindow {
                key: self.key,
                at_ms,
                from_ms: self.from_ms,
                until_ms: self.until_ms,
            });
        }
        Ok(())
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefused {
    /// It does not verify.
    #[error("signature does not verify with the trusted control-plane key")]
    BadSignature,
    /// Made by a key the verifier does not know.
    #[error("signature made by key {0}, which is not trusted here")]
    UnknownKey(KeyId),
    /// Made by a revoked key, on something a revoked key may never sign.
    #[error("signature made by key {0}, which is revoked")]
    Revoked(KeyId),
    /// Made at a time the key was not good for.
    #[error("signature made by key {key} at {at_ms} ms, outside the times it is trusted for ({from_ms} to {until_ms} ms)")]
    OutsideWindow {
        /// The key.
        key: KeyId,
        /// The signing time claimed.
        at_ms: u64,
        /// Earliest accepted.
        from_ms: u64,
        /// Latest accepted.
        until_ms: u64,
    },
    /// The signed thing carries no signing time, and the key is only good for some.
    #[error("signature made by key {0}, which is trusted only for some signing times, but the statement carries none")]
    NoTime(KeyId),
}

/// Something that verifies control-plane signatures: one trusted key, or a key set.
pub trait Verify {
    /// Checks `signature` over `message`, made by `key` when the signature names it (else any
    /// key that fits), on a `what`. Returns the times the signing key is good for.
    fn verify_signed(
        &self,
        key: Option<KeyId>,
        message: &[u8],
        signature: &[u8],
        what: Signs,
    ) -> Result<Window, KeyRefused>;
}

impl Verify for PublicKey {
    fn verify_signed(
        &self,
        key: Option<KeyId>,
        message: &[u8],
        signature: &[u8],
        _what: Signs,
    ) -> Result<Window, KeyRefused> {
        let mine = KeyId::of(self);
        if let Some(id) = key.filter(|id| *id != mine) {
            return Err(KeyRefused::UnknownKey(id));
        }
        self.verify(message, signature)
            .map_err(|_| KeyRefused::BadSignature)?;
        Ok(Window::always(mine))
    }
}

impl<T: Verify + ?Sized> Verify for std::sync::Arc<T> {
    fn verify_signed(
        &self,
        key: Option<KeyId>,
        message: &[u8],
        signature: &[u8],
        what: Signs,
    ) -> Result<Window, KeyRefused> {
        (**self).verify_signed(key, message, signature, what)
    }
}

/// A signature as text: `KEYID:BASE64`.
pub fn signature_text(key: KeyId, signature: &[u8; 64]) -> String {
    format!("{key}:{}", B64.encode(signature))
}

/// Splits signature text into the key id (absent in the older, bare form) and the bytes.
pub fn parse_signature_text(text: &str) -> Result<(Option<KeyId>, Vec<u8>), KeyRefused> {
    if text.len() > MAX_SIGNATURE_TEXT {
        return Err(KeyRefused::BadSignature);
    }
    let (key, b64) = match text.split_once(':') {
        Some((id, b64)) => (
            Some(id.parse::<KeyId>().map_err(|_| KeyRefused::BadSignature)?),
            b64,
        ),
        None => (None, text),
    };
    let bytes = B64.decode(b64).map_err(|_| KeyRefused::BadSignature)?;
    Ok((key, bytes))
}

/// The signing time a statement's payload carries: `set_at_ms` (targets) or `signed_at_ms`.
pub fn statement_time(payload: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Times {
        set_at_ms: Option<u64>,
        signed_at_ms: Option<u64>,
    }
    let t: Times = serde_json::from_str(payload).ok()?;
    t.signed_at_ms.or(t.set_at_ms)
}

mod public_text {
    use crate::keys::PublicKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One key of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Its id (checked against `public`).
    pub id: KeyId,
    /// The public key, `ed25519:…`.
    #[serde(with = "public_text")]
    pub public: PublicKey,
    /// Signatures made before this time are refused.
    pub valid_from_ms: u64,
    /// Signatures made after this time are refused (rotation).
    #[serde(default)]
    pub retire_after_ms: Option<u64>,
    /// Signatures made after this time are refused, and the key signs no statement or request
    /// at all any more (compromise).
    #[serde(default)]
    pub revoked_at_ms: Option<u64>,
}

impl KeyEntry {
    /// A key good from `valid_from_ms` on.
    pub fn new(public: PublicKey, valid_from_ms: u64) -> Self {
        Self {
            id: KeyId::of(&public),
            public,
            valid_from_ms,
            retire_after_ms: None,
            revoked_at_ms: None,
        }
    }

    /// The signing times this key is good for on a `what`.
    pub fn window(&self, what: Signs) -> Result<Window, KeyRefused> {
        if self.revoked_at_ms.is_some() && what != Signs::Bundle {
            return Err(KeyRefused::Revoked(self.id));
        }
        let until = [self.retire_after_ms, self.revoked_at_ms]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(u64::MAX);
        Ok(Window {
            key: self.id,
            from_ms: self.valid_from_ms,
            until_ms: until,
        })
    }

    /// Whether the key may still sign statements at `at_ms`.
    pub fn signs_statements_at(&self, at_ms: u64) -> bool {
        self.window(Signs::Statement)
            .is_ok_and(|w| w.admit(at_ms).is_ok())
    }
}

/// The control plane's keys, as edges trust them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    /// Increases with every change.
    pub generation: u64,
    /// When the control plane signed this set (ms since the epoch).
    pub signed_at_ms: u64,
    /// The keys, at most [`MAX_KEYS`].
    pub keys: Vec<KeyEntry>,
}

/// Why a key-set statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// Too large or too many signatures or keys.
    #[error("key set statement too large: {0}")]
    TooLarge(String),
    /// No signature from a key trusted here (or only from revoked ones).
    #[error("key set generation {generation} is not signed by a key trusted here (revoked keys do not count)")]
    NoTrustedSignature {
        /// The generation claimed (0 when refused before parsing).
        generation: u64,
    },
    /// A key it adds did not sign it.
    #[error("key set adds key {0} without that key's signature")]
    NewKeyUnsigned(KeyId),
    /// Not newer than the set trusted now.
    #[error("key set generation {got} is not newer than {have}")]
    NotNewer {
        /// Trusted now.
        have: u64,
        /// Offered.
        got: u64,
    },
    /// It would widen trust (un-revoke, extend, drop a good key, or change a key).
    #[error("key set would widen trust in key {key}: {why}")]
    Widens {
        /// The key.
        key: KeyId,
        /// How.
        why: &'static str,
    },
    /// Verified but malformed.
    #[error("malformed key set: {0}")]
    Malformed(String),
}

impl KeySet {
    /// A set of one key, trusted for every signing time (an edge's `--trust`).
    pub fn trusting(key: PublicKey) -> Self {
        Self {
            generation: 0,
            signed_at_ms: 0,
            keys: vec![KeyEntry::new(key, 0)],
        }
    }

    /// The entry of key `id`.
    pub fn get(&self, id: KeyId) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| k.id == id)
    }

    fn check_shape(&self) -> Result<(), KeySetError> {
        if self.keys.len() > MAX_KEYS {
            return Err(KeySetError::TooLarge(format!(
                "{} keys; at most {MAX_KEYS}",
                self.keys.len()
            )));
        }
        for (i, k) in self.keys.iter().enumerate() {
            if k.id != KeyId::of(&k.public) {
                return Err(KeySetError::Malformed(format!(
                    "key {} has the id of another key",
                    k.id
                )));
            }
            if self.keys.iter().skip(i + 1).any(|o| o.id == k.id) {
                return Err(KeySetError::Malformed(format!("key {} listed twice", k.id)));
            }
        }
        Ok(())
    }

    /// Verifies `statement` against this set and returns the set it states, if it may
    /// replace this one (see the module documentation for the rules).
    pub fn accept(&self, statement: &KeySetStatement) -> Result<KeySet, KeySetError> {
        if statement.payload.len() > MAX_KEY_SET_BYTES {
            return Err(KeySetError::TooLarge(format!(
                "{} bytes",
                statement.payload.len()
            )));
        }
        if statement.signatures.len() > MAX_KEYS {
            return Err(KeySetError::TooLarge(format!(
                "{} signatures",
                statement.signatures.len()
            )));
        }
        let message = statement.payload.as_bytes();
        let mut signed_by: Vec<KeyId> = Vec::new();
        let mut sigs = Vec::new();
        for text in &statement.signatures {
            if let Ok((Some(id), bytes)) = parse_signature_text(text) {
                sigs.push((id, bytes));
            }
        }
        // Nothing is parsed before a key trusted here verified the payload.
        for (id, bytes) in &sigs {
            if let Some(k) = self.get(*id) {
                if k.revoked_at_ms.is_none() && k.public.verify(message, bytes).is_ok() {
                    signed_by.push(*id);
                }
            }
        }
        if signed_by.is_empty() {
            return Err(KeySetError::NoTrustedSignature { generation: 0 });
        }
        let next: KeySet = serde_json::from_str(&statement.payload)
            .map_err(|e| KeySetError::Malformed(e.to_string()))?;
        next.check_shape()?;
        let endorsed = signed_by.iter().any(|id| {
            let old_ok = self
                .get(*id)
                .is_some_and(|k| k.signs_statements_at(next.signed_at_ms));
            let new_ok = next.get(*id).is_none_or(|k| k.revoked_at_ms.is_none());
            old_ok && new_ok
        });
        if !endorsed {
            return Err(KeySetError::NoTrustedSignature {
                generation: next.generation,
            });
        }
        if next.generation <= self.generation || next.signed_at_ms < self.signed_at_ms {
            return Err(KeySetError::NotNewer {
                have: self.generation,
                got: next.generation,
            });
        }
        for old in &self.keys {
            let Some(new) = next.get(old.id) else {
                let ended = old.revoked_at_ms.is_some()
                    || old.retire_after_ms.is_some_and(|r| r <= next.signed_at_ms);
                if !ended {
                    return Err(KeySetError::Widens {
                        key: old.id,
                        why: "drops a key that is neither retired nor revoked",
                    });
                }
                continue;
            };
            if new.public != old.public {
                return Err(KeySetError::Widens {
                    key: old.id,
                    why: "changes the public key",
                });
            }
            if new.valid_from_ms < old.valid_from_ms {
                return Err(KeySetError::Widens {
                    key: old.id,
                    why: "moves its start earlier",
                });
            }
            if let Some(r) = old.retire_after_ms {
                if new.retire_after_ms.is_none_or(|n| n > r) {
                    return Err(KeySetError::Widens {
                        key: old.id,
                        why: "extends or removes its retirement",
                    });
                }
            }
            if let Some(r) = old.revoked_at_ms {
                if new.revoked_at_ms.is_none_or(|n| n > r) {
                    return Err(KeySetError::Widens {
                        key: old.id,
                        why: "moves or removes its revocation",
                    });
                }
            }
        }
        for new in &next.keys {
            // A key new here must prove its holder signed, unless it can no longer sign
            // anything but the bundles of its past (an edge started with a newer key learns
            // the retired ones it never saw).
            let ended = new.revoked_at_ms.is_some()
                || new.retire_after_ms.is_some_and(|r| r <= next.signed_at_ms);
            if self.get(new.id).is_none() && !ended {
                let self_signed = sigs
                    .iter()
                    .any(|(id, bytes)| *id == new.id && new.public.verify(message, bytes).is_ok());
                if !self_signed {
                    return Err(KeySetError::NewKeyUnsigned(new.id));
                }
            }
        }
        Ok(next)
    }
}

impl Verify for KeySet {
    fn verify_signed(
        &self,
        key: Option<KeyId>,
        message: &[u8],
        signature: &[u8],
        what: Signs,
    ) -> Result<Window, KeyRefused> {
        match key {
            Some(id) => {
                let k = self.get(id).ok_or(KeyRefused::UnknownKey(id))?;
                let window = k.window(what)?;
                k.public
                    .verify(message, signature)
                    .map_err(|_| KeyRefused::BadSignature)?;
                Ok(window)
            }
            None => {
                // The older form without a key id: any key that fits.
                for k in &self.keys {
                    if let Ok(window) = k.window(what) {
                        if k.public.verify(message, signature).is_ok() {
                            return Ok(window);
                        }
                    }
                }
                Err(KeyRefused::BadSignature)
            }
        }
    }
}

/// A key set and its signatures, as served at `GET /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetStatement {
    /// The JSON text of the [`KeySet`].
    pub payload: String,
    /// Signatures over `payload`, each `KEYID:BASE64`.
    pub signatures: Vec<String>,
}

impl KeySetStatement {
    /// Signs `set` with each of `signers`.
    pub fn sign(set: &KeySet, signers: &[&dyn Sign]) -> Result<Self, KeySetError> {
        set.check_shape()?;
        let payload =
            serde_json::to_string(set).map_err(|e| KeySetError::Malformed(e.to_string()))?;
        let signatures = signers
            .iter()
            .map(|s| {
                let (id, sig) = s.sign_message(payload.as_bytes());
                signature_text(id, &sig)
            })
            .collect();
        Ok(Self {
            payload,
            signatures,
        })
    }

    /// The generation the payload claims (unverified: for choosing what to ask for).
    pub fn claimed_generation(&self) -> Option<u64> {
        #[derive(Deserialize)]
        struct G {
            generation: u64,
        }
        serde_json::from_str::<G>(&self.payload)
            .ok()
            .map(|g| g.generation)
    }
}

/// The answer of `GET /v1/keys?after=GEN`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyChain {
    /// Statements newer than `after`, oldest first: apply them in order.
    pub chain: Vec<KeySetStatement>,
}

/// Applies a chain of statements to `set` in order and returns the set reached, how many
/// links were applied, and the last refusal of a link newer than the set reached, if any.
/// Each link states the whole set and is checked on its own against the set reached so far,
/// so a link this set cannot verify (one from before the key this edge was started with) is
/// passed over for the later ones; links not newer than the set reached are skipped.
pub fn apply_chain(
    set: &KeySet,
    chain: &[KeySetStatement],
) -> (KeySet, usize, Option<KeySetError>) {
    let mut current = set.clone();
    let mut applied = 0;
    let mut refused = None;
    for link in chain.iter().take(MAX_CHAIN) {
        if link
            .claimed_generation()
            .is_some_and(|g| g <= current.generation)
        {
            continue;
        }
        match current.accept(link) {
            Ok(next) => {
                current = next;
                applied += 1;
                refused = None;
            }
            Err(e) => refused = Some(e),
        }
    }
    (current, applied, refused)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> ControlKey {
        ControlKey::generate().unwrap()
    }

    /// The set after rotating from `a` (alone) to `b` at `t0` with `overlap`.
    fn rotated(a: &ControlKey, b: &ControlKey, t0: u64, overlap: u64) -> KeySet {
        let mut old = KeyEntry::new(a.public(), 0);
        old.retire_after_ms = Some(t0 + overlap);
        KeySet {
            generation: 1,
            signed_at_ms: t0,
            keys: vec![old, KeyEntry::new(b.public(), t0)],
        }
    }

    #[test]
    fn key_ids_round_trip_and_signatures_name_them() {
        let a = key();
        let id = KeyId::of(&a.public());
        assert_eq!(id.to_string().len(), 16);
        assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        assert!("xyz".parse::<KeyId>().is_err());
        assert!("0123456789abcdeg".parse::<KeyId>().is_err());
        let (sid, sig) = a.sign_message(b"m");
        let text = signature_text(sid, &sig);
        let (parsed, bytes) = parse_signature_text(&text).unwrap();
        assert_eq!(parsed, Some(id));
        assert_eq!(
            a.public()
                .verify_signed(parsed, b"m", &bytes, Signs::Statement)
                .unwrap(),
            Window::always(id)
        );
        let b = key();
        assert_eq!(
            b.public()
                .verify_signed(parsed, b"m", &bytes, Signs::Statement),
            Err(KeyRefused::UnknownKey(id))
        );
    }

    #[test]
    fn rotation_is_accepted_with_old_and_new_signatures_and_overlap_holds() {
        let (a, b) = (key(), key());
        let trusted = KeySet::trusting(a.public());
        let next = rotated(&a, &b, 1_000, 500);
        let stmt = KeySetStatement::sign(&next, &[&a, &b]).unwrap();
        let set = trusted.accept(&stmt).unwrap();
        assert_eq!(set, next);
        // During the overlap both keys verify statements; after it, only the new one.
        let (ia, sa) = a.sign_message(b"x");
        let (ib, sb) = b.sign_message(b"x");
        let wa = set
            .verify_signed(Some(ia), b"x", &sa, Signs::Statement)
            .unwrap();
        let wb = set
            .verify_signed(Some(ib), b"x", &sb, Signs::Statement)
            .unwrap();
        assert!(wa.admit(1_400).is_ok() && wb.admit(1_400).is_ok());
        assert!(
            wa.admit(1_501).is_err(),
            "old key retired after the overlap"
        );
        assert!(wb.admit(1_501).is_ok());
        assert!(
            wb.admit(999).is_err(),
            "new key is not good before it existed"
        );
        // A bundle the old key sealed before retirement still verifies (restart from disk).
        assert!(set
            .verify_signed(Some(ia), b"x", &sa, Signs::Bundle)
            .unwrap()
            .admit(10)
            .is_ok());
    }

    #[test]
    fn new_key_must_sign_and_old_key_must_endorse() {
        let (a, b, c) = (key(), key(), key());
        let trusted = KeySet::trusting(a.public());
        let next = rotated(&a, &b, 1_000, 500);
        let only_old = KeySetStatement::sign(&next, &[&a]).unwrap();
        assert_eq!(
            trusted.accept(&only_old),
            Err(KeySetError::NewKeyUnsigned(KeyId::of(&b.public())))
        );
        let only_new = KeySetStatement::sign(&next, &[&b]).unwrap();
        assert!(matches!(
            trusted.accept(&only_new),
            Err(KeySetError::NoTrustedSignature { .. })
        ));
        let stranger = KeySetStatement::sign(&next, &[&c, &b]).unwrap();
        assert!(trusted.accept(&stranger).is_err());
        let mut tampered = KeySetStatement::sign(&next, &[&a, &b]).unwrap();
        tampered.payload = tampered.payload.replace("1500", "9500");
        assert!(trusted.accept(&tampered).is_err());
    }

    #[test]
    fn retired_key_cannot_sign_later_sets_and_sets_only_narrow() {
        let (a, b, c) = (key(), key(), key());
        let set = KeySet::trusting(a.public())
            .accept(&KeySetStatement::sign(&rotated(&a, &b, 1_000, 500), &[&a, &b]).unwrap())
            .unwrap();
        // A set signed by the retired key after its retirement is refused.
        let mut late = set.clone();
        late.generation = 2;
        late.signed_at_ms = 2_000;
        late.keys.push(KeyEntry::new(c.public(), 2_000));
        assert!(matches!(
            set.accept(&KeySetStatement::sign(&late, &[&a, &c]).unwrap()),
            Err(KeySetError::NoTrustedSignature { .. })
        ));
        assert!(set
            .accept(&KeySetStatement::sign(&late, &[&b, &c]).unwrap())
            .is_ok());
        // Extending the retirement or dropping the current key widens trust.
        let mut extend = set.clone();
        extend.generation = 2;
        extend.signed_at_ms = 1_200;
        extend.keys[0].retire_after_ms = Some(99_999);
        assert!(matches!(
            set.accept(&KeySetStatement::sign(&extend, &[&b]).unwrap()),
            Err(KeySetError::Widens { .. })
        ));
        let mut drop = set.clone();
        drop.generation = 2;
        drop.signed_at_ms = 1_200;
        drop.keys.remove(1);
        assert!(matches!(
            set.accept(&KeySetStatement::sign(&drop, &[&a]).unwrap()),
            Err(KeySetError::Widens { .. })
        ));
        // Replays of the same generation are not newer.
        assert!(matches!(
            set.accept(&KeySetStatement::sign(&set, &[&b]).unwrap()),
            Err(KeySetError::NotNewer { .. })
        ));
    }

    #[test]
    fn revoked_key_is_refused_and_cannot_revoke_others() {
        let (a, b) = (key(), key());
        let set = KeySet::trusting(a.public())
            .accept(&KeySetStatement::sign(&rotated(&a, &b, 1_000, 500), &[&a, &b]).unwrap())
            .unwrap();
        // A statement revoking A, signed only by A, does not count: A's signature is not a
        // good key's once the statement revokes it. Signed by B, it is accepted.
        let mut revoke = set.clone();
        revoke.generation = 2;
        revoke.signed_at_ms = 1_300;
        revoke.keys[0].revoked_at_ms = Some(1_200);
        let by_a = KeySetStatement::sign(&revoke, &[&a]).unwrap();
        assert!(matches!(
            set.accept(&by_a),
            Err(KeySetError::NoTrustedSignature { .. })
        ));
        let set = set
            .accept(&KeySetStatement::sign(&revoke, &[&b]).unwrap())
            .unwrap();
        // Now A's statements are refused whatever time they claim; its bundles only up to
        // the revocation time.
        let (ia, sa) = a.sign_message(b"x");
        assert_eq!(
            set.verify_signed(Some(ia), b"x", &sa, Signs::Statement),
            Err(KeyRefused::Revoked(ia))
        );
        assert_eq!(
            set.verify_signed(Some(ia), b"x", &sa, Signs::Request),
            Err(KeyRefused::Revoked(ia))
        );
        let w = set
            .verify_signed(Some(ia), b"x", &sa, Signs::Bundle)
            .unwrap();
        assert!(w.admit(1_100).is_ok());
        assert!(w.admit(1_201).is_err());
        // The revoked key cannot revoke B (nor un-revoke itself).
        let mut counter = set.clone();
        counter.generation = 3;
        counter.signed_at_ms = 1_400;
        counter.keys[1].revoked_at_ms = Some(1_000);
        assert!(matches!(
            set.accept(&KeySetStatement::sign(&counter, &[&a]).unwrap()),
            Err(KeySetError::NoTrustedSignature { .. })
        ));
        let mut unrevoke = set.clone();
        unrevoke.generation = 3;
        unrevoke.signed_at_ms = 1_400;
        unrevoke.keys[0].revoked_at_ms = None;
        assert!(matches!(
            set.accept(&KeySetStatement::sign(&unrevoke, &[&b]).unwrap()),
            Err(KeySetError::Widens { .. })
        ));
    }

    #[test]
    fn chains_catch_an_edge_up_across_rotations() {
        let (a, b, c) = (key(), key(), key());
        let s1 = rotated(&a, &b, 1_000, 500);
        let mut s2 = s1.clone();
        s2.generation = 2;
        s2.signed_at_ms = 3_000;
        s2.keys[1].retire_after_ms = Some(3_500);
        s2.keys.push(KeyEntry::new(c.public(), 3_000));
        let chain = vec![
            KeySetStatement::sign(&s1, &[&a, &b]).unwrap(),
            KeySetStatement::sign(&s2, &[&b, &c]).unwrap(),
        ];
        let (set, applied, err) = apply_chain(&KeySet::trusting(a.public()), &chain);
        assert_eq!((applied, err), (2, None));
        assert_eq!(set, s2);
        // Started with the newest key instead: the chain still applies.
        let (set, _, err) = apply_chain(&KeySet::trusting(c.public()), &chain);
        assert_eq!(err, None, "{set:?}");
        // Replaying from the reached set applies nothing.
        let (again, applied, err) = apply_chain(&s2, &chain);
        assert_eq!((again, applied, err), (s2, 0, None));
    }

    #[test]
    fn statement_times_are_read_from_the_payload() {
        assert_eq!(statement_time(r#"{"set_at_ms":5,"x":1}"#), Some(5));
        assert_eq!(statement_time(r#"{"signed_at_ms":7}"#), Some(7));
        assert_eq!(statement_time(r#"{"x":1}"#), None);
        assert_eq!(statement_time("nonsense"), None);
    }
}
