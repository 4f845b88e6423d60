//! The one HTTP client wrapper: the CLI's, the edge agent's (to the control plane) and the
//! purge fan-out's (to edges' admin listeners). Pooled HTTP/1.1 keep-alive, a connect
//! timeout, and every exchange bounded: the whole exchange by a deadline, the answer by a
//! size (a `Content-Length` over it is refused before the body is read).
//!
//! The URL's scheme decides: `http://` is cleartext, `https://` is TLS (rustls, ring provider,
//! TLS 1.2 and 1.3, ALPN `http/1.1`) and never falls back to cleartext. Trust for `https://`:
//! with a CA bundle ([`HttpClient::with_ca`]) that bundle ONLY (the fleet's own CA: a public
//! CA cannot vouch for the control plane); without one, webpki-roots (the same roots on every
//! machine, from this build).

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

/// Largest CA bundle read (PEM).
pub const MAX_CA_BUNDLE_BYTES: usize = 1024 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection, or the connection failed before an answer.
    #[error("{0}")]
    Unreachable(String),
    /// The server's certificate did not verify against the trusted roots (the CA bundle
    /// given, else webpki-roots), or does not name the host of the URL.
    #[error("certificate not trusted: {0}")]
    Untrusted(String),
    /// The TLS handshake failed for another reason (the server does not speak TLS, no
    /// common protocol version, an alert).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The answer declared a body over the limit.
    #[error("answer of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The answer's body failed or was over the limit.
    #[error("reading the answer: {0}")]
    Reading(String),
    /// No complete answer within the deadline.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// Why a CA bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Over [`MAX_CA_BUNDLE_BYTES`].
    #[error("CA bundle of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not PEM, or a certificate that does not parse.
    #[error("CA bundle: {0}")]
    Invalid(String),
    /// No `CERTIFICATE` block.
    #[error("CA bundle holds no certificate")]
    Empty,
    /// The TLS client could not be set up.
    #[error("TLS client: {0}")]
    Setup(String),
}

/// The certificates of a PEM CA bundle (at most [`MAX_CA_BUNDLE_BYTES`] and
/// [`crate::tls::MAX_CERTS`]), each checked to be usable as a trust anchor.
pub fn ca_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    if pem.len() > MAX_CA_BUNDLE_BYTES {
        return Err(CaError::TooLarge {
            len: pem.len(),
            limit: MAX_CA_BUNDLE_BYTES,
        });
    }
    let certs = crate::tls::certs_from_pem(pem).map_err(|e| match e {
        crate::tls::TlsError::NoCertificate => CaError::Empty,
        other => CaError::Invalid(other.to_string()),
    })?;
    roots(&certs)?;
    Ok(certs)
}

fn roots(certs: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, CaError> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| CaError::Invalid(format!("certificate {}: {e}", i + 1)))?;
    }
    Ok(roots)
}

/// The TLS client configuration: ring, TLS 1.2 and 1.3, ALPN `http/1.1`; trusting `ca`
/// only, or webpki-roots without it.
fn tls_config(ca: Option<&[u8]>) -> Result<rustls::ClientConfig, CaError> {
    let mut config = match ca {
        Some(pem) => crate::tls::client_config(roots(&ca_certs(pem)?)?)
            .map_err(|e| CaError::Setup(e.to_string()))?,
        None => rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| CaError::Setup(e.to_string()))?
            .with_webpki_roots()
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Clone)]
enum Inner {
    /// `http://` and `https://`.
    Any(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
    /// `http://` only: the TLS client could not be set up (the reason).
    Cleartext(Client<HttpConnector, Full<Bytes>>, Arc<str>),
}

/// A pooled HTTP/1.1 client, cleartext or TLS by the URL's scheme.
#[derive(Clone)]
pub struct HttpClient {
    client: Inner,
}

impl HttpClient {
    /// A client whose connections must be established within `connect_timeout`; `https://`
    /// URLs are verified against webpki-roots.
    pub fn new(connect_timeout: Duration) -> Self {
        match tls_config(None) {
            Ok(config) => Self::build(connect_timeout, config),
            // Not expected with the ring provider's defaults; if it ever happens, `https://`
            // URLs fail with the reason, never go cleartext.
            Err(e) => {
                tracing::error!(error = %e, "TLS client setup failed; https URLs will fail");
                Self {
                    client: Inner::Cleartext(
                        Client::builder(TokioExecutor::new())
                            .build(http_connector(connect_timeout)),
                        e.to_string().into(),
                    ),
                }
            }
        }
    }

    /// A client trusting ONLY the certificates of the PEM bundle `ca` for `https://` URLs
    /// (webpki-roots when `None`). A bundle over [`MAX_CA_BUNDLE_BYTES`], not PEM, or without
    /// a certificate is refused.
    pub fn with_ca(connect_timeout: Duration, ca: Option<&[u8]>) -> Result<Self, CaError> {
        Ok(Self::build(connect_timeout, tls_config(ca)?))
    }

    fn build(connect_timeout: Duration, config: rustls::ClientConfig) -> Self {
        // `force_https` off: the scheme decides; an `https://` URL is always TLS.
        let connector = HttpsConnector::from((http_connector(connect_timeout), config));
        Self {
            client: Inner::Any(Client::builder(TokioExecutor::new()).build(connector)),
        }
    }

    /// Sends `req` and reads the answer's status and body (at most `limit` bytes), all within
    /// `timeout`.
    pub async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let exchange = async {
            let sent = match &self.client {
                Inner::Any(client) => client.request(req).await,
                Inner::Cleartext(client, why) => {
                    if req.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
                        return Err(ClientError::Tls(why.to_string()));
                    }
                    client.request(req).await
                }
            };
            let resp = sent.map_err(classify)?;
            let status = resp.status();
            if let Some(len) = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
            {
                if len > limit {
                    return Err(ClientError::TooLarge { len, limit });
                }
            }
            let bytes = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| ClientError::Reading(e.to_string()))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}

fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    connector
}

/// A failed request: a certificate that did not verify ([`ClientError::Untrusted`]), another
/// TLS failure ([`ClientError::Tls`]), or anything else ([`ClientError::Unreachable`]).
fn classify(e: hyper_util::client::legacy::Error) -> ClientError {
    match rustls_error(&e) {
        Some(
            tls @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType),
        ) => ClientError::Untrusted(tls.to_string()),
        Some(tls) => ClientError::Tls(tls.to_string()),
        None => ClientError::Unreachable(format!("{e:#}")),
    }
}

/// The rustls error somewhere in `e`'s chain. `io::Error::source` skips the error it wraps,
/// so each `io::Error` is opened with `get_ref`.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    // Bounded: a chain is short; a cycle must not spin.
    for _ in 0..16 {
        let current = next?;
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => io.source(),
            },
            None => current.source(),
        };
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ca() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_ca_bundle_is_bounded_and_must_hold_certificates() {
        let one = ca();
        assert_eq!(ca_certs(one.as_bytes()).unwrap().len(), 1);
        let two = format!("{one}{}", ca());
        assert_eq!(ca_certs(two.as_bytes()).unwrap().len(), 2);
        assert!(matches!(ca_certs(b""), Err(CaError::Empty)));
        assert!(matches!(ca_certs(b"hello"), Err(CaError::Empty)));
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            ca_certs(broken.as_bytes()),
            Err(CaError::Invalid(_))
        ));
        let big = vec![b' '; MAX_CA_BUNDLE_BYTES + 1];
        assert!(matches!(ca_certs(&big), Err(CaError::TooLarge { .. })));
        assert!(HttpClient::with_ca(Duration::from_secs(1), Some(b"x")).is_err());
        assert!(HttpClient::with_ca(Duration::from_secs(1), Some(one.as_bytes())).is_ok());
    }

    #[tokio::test]
    async fn an_https_url_never_goes_cleartext() {
        use tokio::io::AsyncReadExt;
        // A cleartext server: the client must open with a TLS handshake, and fail.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let first = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            b[0]
        });
        let client = HttpClient::with_ca(Duration::from_secs(1), Some(ca().as_bytes())).unwrap();
        let req = Request::get(format!("https://{addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let e = client
            .exchange(req, 1024, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(first.await.unwrap(), 0x16, "a TLS handshake record");
        assert!(!matches!(e, ClientError::TooLarge { .. }), "{e}");
    }
}
