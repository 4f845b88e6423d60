//! TLS to origins (`tls = true` in `[service.origin]`).
//!
//! The connector is hyper-rustls's `HttpsConnector` over the pool's own `HttpConnector` (its
//! connect timeout, `TCP_NODELAY` and keep-alive pool settings unchanged), `https_only`: a
//! TLS pool never sends a request in cleartext, whatever the origin answers. Trust is
//! webpki-roots (the Mozilla roots compiled in: the same on every machine, no dependency on
//! the host's files, updated with our releases) plus the pool's `ca`; TLS 1.3 and 1.2 with
//! the ring provider, ALPN `http/1.1` (the upstream stays HTTP/1.1), SNI the pool's
//! `tls_server_name` (default `host_header`, else each server's host). One `ClientConfig` per
//! pool, so its session cache resumes TLS sessions across the pool's connections.
//!
//! A pool with `tls = false` keeps the plain connector: nothing of this runs on that path.
//!
//! A failed handshake (certificate not trusted, wrong name, expired, protocol error, an
//! origin answering in cleartext) is a connect failure: nothing was sent, so the next server
//! may be tried, and it counts against the server like a refused connection (ejection,
//! breaker); see [`failure`].

use super::UpstreamBody;
use firebreak_config::OriginPoolConfig;
use hyper_rustls::{
    DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName,
};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use std::sync::Arc;

/// The HTTP client of one pool: cleartext, or TLS.
pub(super) enum UpstreamClient {
    /// `tls = false`: today's connector.
    Plain(Client<HttpConnector, UpstreamBody>),
    /// `tls = true`.
    Tls(Client<HttpsConnector<HttpConnector>, UpstreamBody>),
}

impl UpstreamClient {
    pub(super) fn request(&self, request: http::Request<UpstreamBody>) -> ResponseFuture {
        match self {
            UpstreamClient::Plain(c) => c.request(request),
            UpstreamClient::Tls(c) => c.request(request),
        }
    }
}

/// The rustls client configuration of a TLS pool: webpki-roots plus the pool's `ca`.
pub(super) fn client_config(config: &OriginPoolConfig) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = config.ca_pem() {
        let certs = firebreak_config::origin_tls::parse_ca_bundle(pem)
            .map_err(|e| format!("origin ca: {e}"))?;
        for cert in certs {
            roots.add(cert).map_err(|e| format!("origin ca: {e}"))?;
        }
    }
    // The ring provider, TLS 1.3 and 1.2 (the shared client configuration).
    let mut tls =
        firebreak_protocol::tls::client_config(roots).map_err(|e| format!("origin TLS: {e}"))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Wraps the pool's connector in TLS (https only, the configured SNI name). Built with
/// `HttpsConnector::new`: hyper-rustls's builder refuses (panics on) a configuration that
/// already names its ALPN protocols, and we offer `http/1.1`.
pub(super) fn connector(
    http: HttpConnector,
    config: &OriginPoolConfig,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let resolver: Arc<dyn ResolveServerName + Send + Sync> = match config.fixed_tls_server_name() {
        Some(name) => {
            let name = ServerName::try_from(name.to_owned())
                .map_err(|e| format!("origin tls_server_name `{name}`: {e}"))?;
            Arc::new(FixedServerNameResolver::new(name))
        }
        // Each server's host from the request URI (validation made sure it is a name).
        None => Arc::new(DefaultServerNameResolver::default()),
    };
    Ok(HttpsConnector::new(
        http,
        client_config(config)?,
        true,
        resolver,
    ))
}

/// A TLS failure found in a connect error: the metric's reason and the text for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsFailure {
    /// One of `unknown_issuer`, `name_mismatch`, `expired`, `handshake`, `other`.
    pub reason: &'static str,
    /// `origin TLS: ...`, for the log (never shown to clients).
    pub detail: String,
}

/// Most errors followed down a source chain.
const MAX_CHAIN: usize = 16;

/// Whether a connect error of a TLS pool was the handshake failing, and why. A TCP failure
/// (refused, timed out) is not a TLS failure: `None`.
pub(super) fn failure(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut closed = false;
    for _ in 0..MAX_CHAIN {
        let Some(e) = current else {
            break;
        };
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(TlsFailure {
                reason: reason(tls),
                detail: format!("origin TLS: {tls}"),
            });
        }
        // io::Error's `source` skips the error it wraps: look inside it.
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            closed |= io.kind() == std::io::ErrorKind::UnexpectedEof;
            if let Some(inner) = io.get_ref() {
                current = Some(inner);
                continue;
            }
        }
        current = e.source();
    }
    closed.then(|| TlsFailure {
        reason: "handshake",
        detail: "origin TLS: the origin closed the connection during the handshake".to_owned(),
    })
}

fn reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "name_mismatch"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            _ => "other",
        },
        _ => "handshake",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_named_by_a_small_fixed_set_of_reasons() {
        let wrapped = |e: rustls::Error| {
            // As hyper-rustls hands it over: io::Error(other, io::Error(InvalidData, rustls)).
            let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            let outer: Box<dyn std::error::Error + Send + Sync> =
                Box::new(std::io::Error::other(inner));
            failure(outer.as_ref())
        };
        let f = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))
        .unwrap();
        assert_eq!(f.reason, "unknown_issuer");
        assert!(
            f.detail
                .starts_with("origin TLS: invalid peer certificate: UnknownIssuer"),
            "{}",
            f.detail
        );
        assert_eq!(
            wrapped(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName
            ))
            .unwrap()
            .reason,
            "name_mismatch"
        );
        assert_eq!(
            wrapped(rustls::Error::InvalidCertificate(CertificateError::Expired))
                .unwrap()
                .reason,
            "expired"
        );
        assert_eq!(
            wrapped(rustls::Error::InvalidCertificate(CertificateError::Revoked))
                .unwrap()
                .reason,
            "other"
        );
        assert_eq!(
            wrapped(rustls::Error::DecryptError).unwrap().reason,
            "handshake"
        );
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(failure(&eof).unwrap().reason, "handshake");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(failure(&refused), None);
    }
}
