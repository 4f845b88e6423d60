//! The API over HTTPS (`firebreak control --tls-cert FILE --tls-key FILE`): the certificate
//! chain and its key are read once at start, bounded (a chain ≤ [`MAX_CERT_BYTES`], a key ≤
//! [`MAX_KEY_BYTES`]), parsed, and checked to belong together; every handshake then answers
//! with that one certificate ([`FixedCert`]), whatever the SNI. Edges verify it against the
//! fleet's CA given at enrolment, so nobody on the path can feed them old targets or read
//! bundles. Without the flags the API stays cleartext (tests, a control plane on loopback).

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// Largest certificate chain file read.
pub const MAX_CERT_BYTES: u64 = 64 * 1024;
/// Largest private key file read.
pub const MAX_KEY_BYTES: u64 = 16 * 1024;

/// Why the API's certificate cannot be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file over its bound.
    #[error("{path}: larger than the limit of {limit} bytes")]
    TooLarge {
        /// The file.
        path: String,
        /// The bound.
        limit: u64,
    },
    /// The certificate file holds no usable certificate.
    #[error("{path}: {message}")]
    Certificate {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The key file holds no usable private key.
    #[error("{path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The key is not the certificate's.
    #[error("{key} is not the private key of the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// The TLS server could not be set up.
    #[error("TLS server: {0}")]
    Setup(String),
}

/// Answers every handshake with one certificate.
#[derive(Debug)]
pub struct FixedCert(pub Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, HttpsError> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut out))
        .map_err(|source| HttpsError::Read {
            path: path.display().to_string(),
            source,
        })?;
    if out.len() as u64 > limit {
        return Err(HttpsError::TooLarge {
            path: path.display().to_string(),
            limit,
        });
    }
    Ok(out)
}

/// The certificate chain in `cert` (PEM, the server's certificate first) with its key in
/// `key` (PEM), checked to match.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, HttpsError> {
    let (cert_name, key_name) = (cert.display().to_string(), key.display().to_string());
    let chain = firebreak_protocol::tls::certs_from_pem(&read_bounded(cert, MAX_CERT_BYTES)?)
        .map_err(|e| HttpsError::Certificate {
            path: cert_name.clone(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(HttpsError::Certificate {
            path: cert_name,
            message: "no certificate".into(),
        });
    }
    let der =
        firebreak_protocol::tls::key_from_pem(&read_bounded(key, MAX_KEY_BYTES)?).map_err(|e| {
            HttpsError::Key {
                path: key_name.clone(),
                message: e.to_string(),
            }
        })?;
    let provider = firebreak_protocol::tls::provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| HttpsError::Key {
            path: key_name.clone(),
            message: format!("unusable private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(HttpsError::Mismatch {
                cert: cert_name,
                key: key_name,
            })
        }
        Err(e) => Err(HttpsError::Certificate {
            path: cert_name,
            message: e.to_string(),
        }),
    }
}

/// The API's TLS configuration: [`load`] behind a [`FixedCert`], through the serve loop's
/// common server configuration (TLS 1.2 and 1.3, ALPN h2 and http/1.1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, HttpsError> {
    let certified = load(cert, key)?;
    firebreak_protocol::tls::server_config(Arc::new(FixedCert(certified)))
        .map_err(|e| HttpsError::Setup(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn the_certificate_and_key_are_checked_at_start_without_showing_the_key() {
        let dir = std::env::temp_dir().join(format!("fb-https-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = pair("127.0.0.1");
        let (_, other_key) = pair("127.0.0.1");
        let file = |name: &str, text: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (c, k) = (
            file("cert.pem", cert.as_bytes()),
            file("key.pem", key.as_bytes()),
        );
        assert!(server_config(&c, &k).is_ok());
        let wrong = file("other.key", other_key.as_bytes());
        let e = server_config(&c, &wrong).unwrap_err().to_string();
        assert!(
            e.contains("is not the private key of the certificate"),
            "{e}"
        );
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        let e = server_config(&k, &k).unwrap_err().to_string();
        assert!(e.contains("key.pem"), "{e}");
        let e = server_config(&c, &c).unwrap_err().to_string();
        assert!(e.contains("cert.pem"), "{e}");
        let big = file("big.pem", &vec![b'a'; MAX_CERT_BYTES as usize + 1]);
        let e = server_config(&big, &k).unwrap_err().to_string();
        assert!(e.contains("larger than the limit"), "{e}");
        let big_key = file("big.key", &vec![b'a'; MAX_KEY_BYTES as usize + 1]);
        assert!(matches!(
            server_config(&c, &big_key),
            Err(HttpsError::TooLarge { .. })
        ));
        assert!(matches!(
            server_config(&dir.join("missing"), &k),
            Err(HttpsError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
