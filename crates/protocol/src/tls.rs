//! TLS pieces every listener and client shares: the one crypto provider (ring), PEM loading
//! with size bounds, and the server and client configurations (TLS 1.3 and 1.2 only: rustls
//! has no older version and no weak suite).

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ResolvesServerCert, ServerSessionMemoryCache};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::{Arc, OnceLock};

/// Largest PEM text read as certificates (a CA bundle; chains are smaller).
pub const MAX_CERTS_PEM_BYTES: usize = 1024 * 1024;
/// Most certificates read from one PEM text.
pub const MAX_CERTS: usize = 256;
/// Largest PEM text read as a private key.
pub const MAX_KEY_PEM_BYTES: usize = 16 * 1024;
/// TLS sessions a listener remembers for session-ID resumption.
const SESSION_CACHE: usize = 4096;
/// ALPN protocols a listener offers, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The PEM text is over its bound.
    #[error("PEM of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        limit: usize,
    },
    /// More certificates than [`MAX_CERTS`].
    #[error("more than {MAX_CERTS} certificates")]
    TooManyCertificates,
    /// The text holds no certificate.
    #[error("no certificate found in the PEM text")]
    NoCertificate,
    /// The text holds no private key.
    #[error("no private key found in the PEM text (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    /// The PEM text is malformed.
    #[error("malformed PEM: {0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider of every TLS configuration in Firebreak: ring, explicitly (never a
/// process-wide default that another crate might install).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn bounded(pem: &[u8], limit: usize) -> Result<(), TlsError> {
    if pem.len() > limit {
        return Err(TlsError::TooLarge {
            len: pem.len(),
            limit,
        });
    }
    Ok(())
}

/// The certificates in a PEM text, in order (a chain: leaf first). At most
/// [`MAX_CERTS_PEM_BYTES`] and [`MAX_CERTS`]; at least one.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    bounded(pem, MAX_CERTS_PEM_BYTES)?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        if certs.len() == MAX_CERTS {
            return Err(TlsError::TooManyCertificates);
        }
        certs.push(cert.map_err(|e| TlsError::Pem(e.to_string()))?);
    }
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// The private key in a PEM text (the first one), at most [`MAX_KEY_PEM_BYTES`].
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    bounded(pem, MAX_KEY_PEM_BYTES)?;
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey,
        other => TlsError::Pem(other.to_string()),
    })
}

/// A listener's server configuration: TLS 1.3 and 1.2, ALPN `h2` then `http/1.1`,
/// certificates from `resolver` at each handshake (so that rotation needs no new
/// configuration), session-ID resumption and session tickets under rotating keys.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// The server configuration of a QUIC (HTTP/3) listener: TLS 1.3 only (QUIC has no other),
/// ALPN `h3`, the same certificate resolver and resumption as the TCP listeners. 0-RTT stays
/// off: early data can be replayed by anyone on the path.
pub fn quic_server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.max_early_data_size = 0;
    Ok(config)
}

/// A client configuration trusting `roots` only: TLS 1.3 and 1.2, no client certificate.
pub fn client_config(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn generated() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn reads_a_generated_pair() {
        let (cert, key) = generated();
        assert_eq!(certs_from_pem(cert.as_bytes()).unwrap().len(), 1);
        key_from_pem(key.as_bytes()).unwrap();
    }

    #[test]
    fn refuses_empty_oversize_and_keyless_text() {
        assert!(matches!(certs_from_pem(b""), Err(TlsError::NoCertificate)));
        assert!(matches!(key_from_pem(b"nothing"), Err(TlsError::NoKey)));
        let big = vec![b'a'; MAX_KEY_PEM_BYTES + 1];
        assert!(matches!(key_from_pem(&big), Err(TlsError::TooLarge { .. })));
        let (cert, _) = generated();
        assert!(matches!(
            key_from_pem(cert.as_bytes()),
            Err(TlsError::NoKey)
        ));
    }

    #[test]
    fn garbage_between_markers_is_an_error_not_a_panic() {
        let text = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(certs_from_pem(text).is_err());
    }
}
