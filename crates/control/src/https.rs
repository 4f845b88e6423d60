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
