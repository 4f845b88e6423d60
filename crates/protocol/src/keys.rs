//! Keys. The control plane holds an ed25519 secret key and signs every bundle, target and
//! purge command with it; edges are given only the public key.
//!
//! Text forms: `ed25519:<base64 of 32 bytes>` for the public key, and a key file holding
//! `ed25519-secret:<base64 of 32 bytes>` for the secret key (created with mode 0600).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

const PUBLIC_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "ed25519-secret:";
/// Largest key file read; a key file is under 100 bytes.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Why a key could not be read, made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not a key in the expected form.
    #[error("{0}")]
    Format(String),
    /// The system's random source failed.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// The control plane's signing key.
#[derive(Clone)]
pub struct ControlKey(SigningKey);

impl ControlKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// Reads the key file at `path`, or creates it (mode 0600, written atomically) with a new
    /// key when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                if meta.len() > MAX_KEY_FILE_BYTES {
                    return Err(KeyError::Format(format!(
                        "{}: {} bytes is too large for a key file",
                        path.display(),
                        meta.len()
                    )));
                }
                let text = std::fs::read_to_string(path).map_err(io)?;
                Self::from_text(text.trim())
                    .map_err(|e| KeyError::Format(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                let text = format!("{SECRET_PREFIX}{}\n", B64.encode(key.0.to_bytes()));
                crate::durable::write_private(path, text.as_bytes()).map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_text(text: &str) -> Result<Self, KeyError> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| KeyError::Format(format!("expected `{SECRET_PREFIX}<base64>`")))?;
        let bytes = B64
            .decode(b64)
            .map_err(|e| KeyError::Format(format!("bad base64: {e}")))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Format("a secret key is 32 bytes".into()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The public key to give to edges.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The key as the text a key file holds (`ed25519-secret:<base64>`): a secret.
    pub fn to_secret_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(self.0.to_bytes()))
    }

    /// Reads [`ControlKey::to_secret_text`]'s form.
    pub fn from_secret_text(text: &str) -> Result<Self, KeyError> {
        Self::from_text(text.trim())
    }
}

/// The public half, which edges use to verify everything the control plane sends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Checks a 64-byte signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        let sig: [u8; 64] = signature.try_into().map_err(|_| BadSignature)?;
        self.0
            .verify(message, &Signature::from_bytes(&sig))
            .map_err(|_| BadSignature)
    }

    /// The 32 bytes of the key (what its key id is computed from).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Reads a public key given either as text (`ed25519:…`) or as the path of a file holding
    /// that text.
    pub fn from_arg(arg: &str) -> Result<Self, KeyError> {
        if arg.starts_with(PUBLIC_PREFIX) {
            return arg.parse();
        }
        let path = Path::new(arg);
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Io {
            path: arg.to_owned(),
            source,
        })?;
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(KeyError::Format(format!("{arg}: too large for a key file")));
        }
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: arg.to_owned(),
            source,
        })?;
        text.trim()
            .parse()
            .map_err(|e| KeyError::Format(format!("{arg}: {e}")))
    }
}

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify with the trusted control-plane key")]
pub struct BadSignature;

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", B64.encode(self.0.to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let b64 = s
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or_else(|| KeyError::Format(format!("expected `{PUBLIC_PREFIX}<base64>`")))?;
        let bytes = B64
            .decode(b64)
            .map_err(|e| KeyError::Format(format!("bad base64: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Format("a public key is 32 bytes".into()))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| KeyError::Format(format!("not an ed25519 public key: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_text_round_trip() {
        let key = ControlKey::generate().unwrap();
        let public: PublicKey = key.public().to_string().parse().unwrap();
        let sig = key.sign(b"hello");
        public.verify(b"hello", &sig).unwrap();
        assert_eq!(public.verify(b"hellO", &sig), Err(BadSignature));
        assert_eq!(public.verify(b"hello", &sig[..63]), Err(BadSignature));
        let other = ControlKey::generate().unwrap().public();
        assert_eq!(other.verify(b"hello", &sig), Err(BadSignature));
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("fb-key-{}", std::process::id()));
        let path = dir.join("control.key");
        let a = ControlKey::load_or_create(&path).unwrap();
        let b = ControlKey::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        std::fs::write(&path, "nonsense").unwrap();
        assert!(ControlKey::load_or_create(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
