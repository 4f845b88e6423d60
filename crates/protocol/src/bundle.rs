//! A configuration version as a signed bundle.
//!
//! Wire form: `FBB2` (4 bytes), the signing key's id (8 bytes, see
//! [`crate::keyring::KeyId`]), the ed25519 signature (64 bytes), then the payload: the JSON of
//! a [`Bundle`]. The signature covers the payload. The older `FBB1` form (no key id) is still
//! read: its signature is checked with every key that fits. An edge checks the length before
//! anything else, then the magic, then the signature, and only then parses the JSON, so a
//! hostile or truncated download costs a bounded amount of work and never reaches the parser.

use crate::binary::Binary;
use crate::keyring::{KeyId, KeyRefused, Sign, Signs, Verify};
use firebreak_config::{ConfigError, ConfigRejected, ValidConfig};
use serde::{Deserialize, Serialize};

/// Largest bundle accepted: a configuration file is at most
/// [`firebreak_config::MAX_CONFIG_BYTES`] (JSON escaping and metadata fit in four times that),
/// plus a MaxMind database of at most [`firebreak_config::MAX_GEOIP_BYTES`] in base64: about
/// 46.7 MiB. Read with this bound everywhere: the edges' download, the bundles they keep on
/// disk, the control plane's store.
pub const MAX_BUNDLE_BYTES: usize = 4 * firebreak_config::MAX_CONFIG_BYTES as usize
    + crate::binary::base64_len(firebreak_config::MAX_GEOIP_BYTES as usize);
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
    /// The MaxMind database the fleet document's `dns.geoip_file` names (base64 in the JSON,
    /// so the signature covers it); present exactly when the fleet document names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip: Option<Binary>,
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

    /// The payload of a sealed bundle, parsed WITHOUT checking its signature: only for the
    /// control plane's comparisons with what it stored itself (the DNS change guard compares
    /// a push with the latest version, which may be signed by a key since revoked, or
    /// corrupted in the store); never for anything that is served or trusted.
    pub fn open_unverified(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { len: bytes.len() });
        }
        let not = || BundleError::NotABundle { len: bytes.len() };
        let (magic, rest) = bytes.split_at_checked(MAGIC.len()).ok_or_else(not)?;
        let rest = if magic == MAGIC_WITH_ID {
            rest.get(ID_LEN..).ok_or_else(not)?
        } else if magic == MAGIC {
            rest
        } else {
            return Err(not());
        };
        let payload = rest.get(SIG_LEN..).ok_or_else(not)?;
        serde_json::from_slice(payload).map_err(|e| BundleError::Malformed(e.to_string()))
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
            geoip_sha256: self.geoip.as_ref().map(|g| crate::sha256_hex(g.bytes())),
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
    /// The MaxMind database, when there is one, goes with the fleet document
    /// ([`carry_geoip`]); its contents are the DNS server's to judge (the control plane runs
    /// the DNS server's own check before it calls this).
    pub fn validate(&self, file: &str) -> Result<ValidConfig, ConfigRejected> {
        self.check_documents(file)?;
        let file = format!("{file} (assembled)");
        let text = self.assembled();
        let config = firebreak_config::parse_managed_str(&file, &text)?;
        carry_geoip(&file, &text, config, self.geoip.as_ref())
    }
}

/// Attaches a version's MaxMind database to its configuration ([`ValidConfig::with_geoip`]),
/// refusing a database over [`firebreak_config::MAX_GEOIP_BYTES`], a document naming
/// `dns.geoip_file` without a database, and a database the document does not name. `text` is
/// the configuration's text (errors are located in it). The control plane (at push) and every
/// member (at compose) run this, so they refuse the same versions.
pub fn carry_geoip(
    file: &str,
    text: &str,
    config: ValidConfig,
    geoip: Option<&Binary>,
) -> Result<ValidConfig, ConfigRejected> {
    let named = config.get().dns.as_ref().and_then(|d| d.geoip_file.clone());
    let refuse = |message: String| ConfigRejected {
        errors: vec![ConfigError::at_field(
            file,
            text,
            &["dns", "geoip_file"],
            message,
        )],
    };
    match (named, geoip) {
        (None, None) => Ok(config),
        (Some(name), None) => Err(refuse(format!(
            "names the MaxMind database `{name}`, but none came with the configuration (`firebreak config push` reads it next to the file and sends it)"
        ))),
        (None, Some(_)) => Err(refuse(
            "a MaxMind database came with the configuration, but it names none".into(),
        )),
        (Some(name), Some(db)) if db.len() as u64 > firebreak_config::MAX_GEOIP_BYTES => {
            Err(refuse(format!(
                "{name}: the MaxMind database is {} bytes; the limit is {}",
                db.len(),
                firebreak_config::MAX_GEOIP_BYTES
            )))
        }
        (Some(_), Some(db)) => Ok(config.with_geoip(db.bytes().clone())),
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
            geoip: None,
        }
    }

    #[test]
    fn an_unverified_read_parses_any_signer_and_refuses_what_is_not_a_bundle() {
        let stranger = ControlKey::generate().unwrap();
        let sealed = sample().seal(&stranger).unwrap();
        assert_eq!(Bundle::open_unverified(&sealed).unwrap(), sample());
        assert!(Bundle::open_unverified(&sealed[..10]).is_err());
        assert!(Bundle::open_unverified(b"not a bundle at all").is_err());
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
    fn a_bundle_carries_its_geoip_database_under_the_signature() {
        let key = ControlKey::generate().unwrap();
        let public = key.public();
        // Without a database the field is left out, so an older edge still parses it.
        let plain = serde_json::to_value(sample()).unwrap();
        assert!(plain.get("geoip").is_none(), "{plain}");
        let mut with = sample();
        let db: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        with.geoip = Some(Binary::from(db.clone()));
        let sealed = with.seal(&key).unwrap();
        let opened = Bundle::open(&sealed, &public).unwrap();
        assert_eq!(opened, with);
        assert_eq!(&opened.geoip.unwrap().bytes()[..], &db[..]);
        assert!(with
            .describe(&sealed)
            .geoip_sha256
            .is_some_and(|h| h == crate::sha256_hex(&db)));
        // Flip a byte of the database (inside its base64): the signature no longer verifies.
        let text = String::from_utf8_lossy(&sealed[HEADER_LEN..]).into_owned();
        let at = HEADER_LEN + text.find("\"geoip\":\"").unwrap() + 20;
        for flip in [0x01u8, 0x02, 0x20] {
            let mut bad = sealed.clone();
            bad[at] ^= flip;
            assert_eq!(Bundle::open(&bad, &public), Err(BundleError::BadSignature));
        }
        // A bundle written before the field existed opens with no database.
        let mut old = serde_json::to_value(sample()).unwrap();
        old.as_object_mut().unwrap().remove("geoip");
        let old: Bundle = serde_json::from_value(old).unwrap();
        assert_eq!(old.geoip, None);
    }

    const DNS_FLEET: &str = include_str!("../../../examples/dns.toml");

    fn dns_bundle(named: bool, db: Option<Vec<u8>>) -> Bundle {
        let docs = crate::document::split(DNS_FLEET).unwrap();
        let mut fleet = docs.fleet;
        if named {
            fleet = fleet.replacen("[dns]\n", "[dns]\ngeoip_file = \"geo.mmdb\"\n", 1);
        }
        Bundle {
            fleet,
            services: docs.services,
            geoip: db.map(Binary::from),
            ..sample()
        }
    }

    #[test]
    fn the_database_goes_with_a_fleet_document_that_names_it_and_only_then() {
        let ok = dns_bundle(true, Some(vec![1, 2, 3]))
            .validate("fleet.toml")
            .unwrap();
        assert_eq!(ok.geoip().map(|g| &g[..]), Some(&[1u8, 2, 3][..]));
        assert!(dns_bundle(false, None)
            .validate("fleet.toml")
            .unwrap()
            .geoip()
            .is_none());
        let e = dns_bundle(true, None).validate("fleet.toml").unwrap_err();
        let e = &e.errors[0];
        assert_eq!(e.field, "dns.geoip_file", "{e}");
        assert!(e.line > 0, "located: {e}");
        assert!(e.message.contains("none came with"), "{e}");
        let e = dns_bundle(false, Some(vec![1]))
            .validate("fleet.toml")
            .unwrap_err();
        assert_eq!(e.errors[0].field, "dns.geoip_file", "{e}");
        assert!(e.errors[0].message.contains("names none"), "{e}");
        let big = vec![0u8; firebreak_config::MAX_GEOIP_BYTES as usize + 1];
        let e = dns_bundle(true, Some(big))
            .validate("fleet.toml")
            .unwrap_err();
        assert!(e.errors[0].message.contains("the limit is 33554432"), "{e}");
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
