//! A configuration version as a signed bundle.
//!
//! Wire form: `FBB2` (4 bytes), the signing key's id (8 bytes, see
//! [`crate::keyring::KeyId`]), the ed25519 signature (64 bytes), then the payload: the JSON of
//! a [`Bundle`]. The signature covers the payload. The older `FBB1` form (no key id) is still
//! read: its signature is checked with every key that fits. An edge checks the length before
//! anything else, then the magic, then the signature, and only then parses the JSON, so a
//! hostile or truncated download costs a bounded amount of work and never reaches the parser.

use crate::keyring::{KeyId, KeyRefused, Sign, Signs, Verify};
use serde::{Deserialize, Serialize};

/// Largest bundle accepted: a configuration file is at most
/// [`firebreak_config::MAX_CONFIG_BYTES`]; JSON escaping and metadata fit in the rest.
pub const MAX_BUNDLE_BYTES: usize = 4 * firebreak_config::MAX_CONFIG_BYTES as usize;
const MAGIC: &[u8; 4] = b"FBB1";
const MAGIC_WITH_ID: &[u8; 4] = b"FBB2";
const ID_LEN: usize = 8;
const SIG_LEN: usize = 64;
const HEADER_LEN: usize = MAGIC_WITH_ID.len() + ID_LEN + SIG_LEN;

/// One configuration version: the fleet-wide document and one document per service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Version number, increasing by one per accepted push.
    pub version: u64,
    /// The version this one was made from (the latest when it was pushed).
    pub parent: Option<u64>,
    /// When it was accepted, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Who pushed it.
    pub author: String,
    /// Why.
    pub message: String,
    /// The fleet-wide settings: the configuration file without its services.
    pub fleet: String,
    /// One document per service, in the file's order.
    pub services: Vec<ServiceDocument>,
}

/// One service's own configuration document (a single `[[service]]` table). Its `Debug`
/// never shows a document holding a private key (an edge puts keys back into its copies).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDocument {
    /// The service's name.
    pub name: String,
    /// The TOML text.
    pub document: String,
}

impl std::fmt::Debug for ServiceDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ServiceDocument");
        d.field("name", &self.name);
        if self.document.contains("PRIVATE KEY") {
            d.field("document", &"(holds a private key: not shown)");
        } else {
            d.field("document", &self.document);
        }
        d.finish()
    }
}

impl ServiceDocument {
    /// SHA-256 of the document text: equal hashes mean an unchanged service.
    pub fn sha256(&self) -> String {
        crate::sha256_hex(self.document.as_bytes())
    }
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Larger than [`MAX_BUNDLE_BYTES`].
    #[error("bundle is {len} bytes; the limit is {MAX_BUNDLE_BYTES}")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Shorter than its header, or not starting with the magic bytes.
    #[error("not a bundle (truncated or wrong format, {len} bytes)")]
    NotABundle {
        /// Its length.
        len: usize,
    },
    /// The signature does not match the payload (tampered, truncated or another key).
    #[error("bundle signature does not verify with the trusted control-plane key")]
    BadSignature,
    /// Signed by a key not trusted for it (unknown, or outside the times it is good for).
    #[error("bundle: {0}")]
    Key(KeyRefused),
    /// Its hash differs from the one the signed target names.
    #[error("bundle hash {got} differs from the target's {want}")]
    HashMismatch {
        /// SHA-256 of the bytes received.
        got: String,
        /// SHA-256 the target names.
        want: String,
    },
    /// Signed but not a valid payload (a control plane bug or version skew).
    #[error("bundle payload is malformed: {0}")]
    Malformed(String),
}

impl Bundle {
    /// Serialises and signs the bundle; the sealed form names the key.
    pub fn seal<S: Sign + ?Sized>(&self, key: &S) -> Result<Vec<u8>, BundleError> {
        let payload =
            serde_json::to_vec(self).map_err(|e| BundleError::Malformed(e.to_string()))?;
        let len = HEADER_LEN + payload.len();
        if len > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { len });
        }
        let (id, sig) = key.sign_message(&payload);
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(MAGIC_WITH_ID);
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&sig);
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Checks size, format and signature (with one trusted key or a key set), then parses.
    /// Nothing is parsed before the signature verified; a key trusted only for some signing
    /// times is then checked against `created_at_ms`.
    pub fn open<K: Verify + ?Sized>(bytes: &[u8], key: &K) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { len: bytes.len() });
        }
        let not = || BundleError::NotABundle { len: bytes.len() };
        let (magic, rest) = bytes.split_at_checked(MAGIC.len()).ok_or_else(not)?;
        let (id, rest) = if magic == MAGIC_WITH_ID {
            let (id, rest) = rest.split_at_checked(ID_LEN).ok_or_else(not)?;
            let id: [u8; ID_LEN] = id.try_into().map_err(|_| not())?;
            (Some(KeyId(id)), rest)
        } else if magic == MAGIC {
            (None, rest)
        } else {
            return Err(not());
        };
        let (sig, payload) = rest.split_at_checked(SIG_LEN).ok_or_else(not)?;
        let window = key
            .verify_signed(id, payload, sig, Signs::Bundle)
            .map_err(|e| match e {
                KeyRefused::BadSignature => BundleError::BadSignature,
                other => BundleError::Key(other),
            })?;
        let bundle: Self =
            serde_json::from_slice(payload).map_err(|e| BundleError::Malformed(e.to_string()))?;
        window
            .admit(bundle.created_at_ms)
            .map_err(BundleError::Key)?;
        Ok(bundle)
    }

    /// [`Bundle::open`], first checking the bytes against the SHA-256 a signed target names.
    pub fn open_expecting<K: Verify + ?Sized>(
        bytes: &[u8],
        key: &K,
        sha256: &str,
    ) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { len: bytes.len() });
        }
        let got = crate::sha256_hex(bytes);
        if got != sha256 {
            return Err(BundleError::HashMismatch {
                got,
                want: sha256.to_owned(),
            });
        }
        Self::open(bytes, key)
    }

    /// The metadata the control plane stores and lists for this bundle, sealed as `sealed`.
    pub fn describe(&self, sealed: &[u8]) -> crate::api::VersionInfo {
        crate::api::VersionInfo {
            version: self.version,
            parent: self.parent,
            sha256: crate::sha256_hex(sealed),
            size: sealed.len() as u64,
            author: self.author.clone(),
            message: self.message.clone(),
            created_at_ms: self.created_at_ms,
            fleet_sha256: crate::sha256_hex(self.fleet.as_bytes()),
            services: self
                .services
                .iter()
                .map(|s| crate::api::ServiceHash {
                    name: s.name.clone(),
                    sha256: s.sha256(),
                })
                .collect(),
        }
    }

    /// The whole configuration text: the fleet document followed by every service.
    pub fn assembled(&self) -> String {
        crate::document::assemble(&self.fleet, self.services.iter())
    }

    /// Checks that each part holds only what it is for: the fleet document no service, each
    /// service's document only its own `[[service]]` (named as the part says, nothing
    /// fleet-wide). Errors name `file (fleet document)` or `file (service NAME)`.
    pub fn check_documents(&self, file: &str) -> Result<(), firebreak_config::ConfigRejected> {
        let mut errors = Vec::new();
        if let Err(e) =
            firebreak_config::check_fleet_document(&format!("{file} (fleet document)"), &self.fleet)
        {
            errors.extend(e.errors);
        }
        for s in &self.services {
            if let Err(e) = firebreak_config::check_service_document(
                &format!("{file} (service {})", s.name),
                &s.name,
                &s.document,
            ) {
                errors.extend(e.errors);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(firebreak_config::ConfigRejected { errors })
        }
    }

    /// Validates exactly what an edge loads: every part ([`Bundle::check_documents`]), then
    /// the assembled text ([`Bundle::assembled`]) with [`firebreak_config::parse_managed_str`],
    /// the function the edge's agent composes with. The control plane runs this before it
    /// stores a version, so a version it accepts is one every edge accepts.
    pub fn validate(
        &self,
        file: &str,
    ) -> Result<firebreak_config::ValidConfig, firebreak_config::ConfigRejected> {
        self.check_documents(file)?;
        firebreak_config::parse_managed_str(&format!("{file} (assembled)"), &self.assembled())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::ControlKey;

    fn sample() -> Bundle {
        Bundle {
            version: 3,
            parent: Some(2),
            created_at_ms: 1,
            author: "a".into(),
            message: "m".into(),
            fleet: "[cache]\n".into(),
            services: vec![ServiceDocument {
                name: "s".into(),
                document: "[[service]]\nname = \"s\"\n".into(),
            }],
        }
    }

    #[test]
    fn sealed_bundle_opens_with_the_right_key_only() {
        let key = ControlKey::generate().unwrap();
        let sealed = sample().seal(&key).unwrap();
        assert_eq!(Bundle::open(&sealed, &key.public()).unwrap(), sample());
        let other = ControlKey::generate().unwrap().public();
        assert!(matches!(
            Bundle::open(&sealed, &other),
            Err(BundleError::Key(KeyRefused::UnknownKey(_)))
        ));
        // The older form without a key id is still read, and checked with the key.
        let mut old = b"FBB1".to_vec();
        old.extend_from_slice(&sealed[12..]);
        assert_eq!(Bundle::open(&old, &key.public()).unwrap(), sample());
        assert_eq!(Bundle::open(&old, &other), Err(BundleError::BadSignature));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let key = ControlKey::generate().unwrap();
        let public = key.public();
        let sealed = sample().seal(&key).unwrap();
        for len in 0..sealed.len() {
            assert!(Bundle::open(&sealed[..len], &public).is_err(), "len {len}");
        }
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(Bundle::open(&bad, &public).is_err(), "byte {i}");
        }
        let hash = crate::sha256_hex(&sealed);
        assert!(Bundle::open_expecting(&sealed, &public, &hash).is_ok());
        assert!(matches!(
            Bundle::open_expecting(&sealed[..10], &public, &hash),
            Err(BundleError::HashMismatch { .. })
        ));
    }

    #[test]
    fn oversized_input_is_refused_before_anything_else() {
        let key = ControlKey::generate().unwrap();
        let huge = vec![0u8; MAX_BUNDLE_BYTES + 1];
        assert!(matches!(
            Bundle::open(&huge, &key.public()),
            Err(BundleError::TooLarge { .. })
        ));
    }
}
