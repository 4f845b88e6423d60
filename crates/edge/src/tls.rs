//! HTTPS on the client listeners: the certificate table compiled with each [`Runtime`] and
//! the SNI resolver that reads the current runtime's table on every handshake.
//!
//! Rotation is an ordinary reload: the resolver loads the runtime installed *now*, so new
//! handshakes get the new certificate while established connections keep the session they
//! negotiated (resumed sessions skip the resolver altogether). The service a connection's SNI
//! selects is the one whose hosts match it (exact, then `*.` wildcard one label up), else the
//! service carrying the default certificate; a request whose `Host` selects another service
//! is answered 421 ([`crate::proxy::route`]).
//!
//! Metrics:
//! - `firebreak_tls_cert_expiry_seconds{service}` — seconds until the certificate's
//!   `not_after` (negative once expired), set when a runtime is installed.
//! - `firebreak_tls_expired_certificates_loaded_total{service}` — runtimes installed with an
//!   expired certificate (each also logged once as a warning). Expiry never refuses a
//!   configuration on an edge: the last known good version keeps serving.

use crate::proxy::EdgeState;
use crate::runtime::Runtime;
use firebreak_config::tls::{certified_key, inspect};
use firebreak_config::Config;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::SystemTime;

/// Gauge: seconds until each service's certificate expires.
pub const CERT_EXPIRY_SECONDS: &str = "firebreak_tls_cert_expiry_seconds";
/// Counter: runtimes installed with an expired certificate, per service.
pub const EXPIRED_LOADED: &str = "firebreak_tls_expired_certificates_loaded_total";

/// The certificates of one runtime: one slot per service (in the runtime's service order),
/// and the service whose certificate answers handshakes no service's hosts match.
#[derive(Default)]
pub struct CertTable {
    certs: Vec<Option<Arc<CertifiedKey>>>,
    default: Option<usize>,
}

impl CertTable {
    /// Loads every service's certificate and key (validated by the parser; a key given as
    /// `key_sha256` that the edge could not put back leaves the service without one).
    pub fn build(config: &Config) -> Self {
        let mut certs = Vec::with_capacity(config.services.len());
        let mut default = None;
        for (i, s) in config.services.iter().enumerate() {
            let Some(tls) = &s.tls else {
                certs.push(None);
                continue;
            };
            if tls.default {
                default = Some(i);
            }
            let loaded = match (tls.cert_pem(), tls.key_pem()) {
                (Some(cert), Some(key)) => match certified_key(cert, key) {
                    Ok(ck) => Some(Arc::new(ck)),
                    Err(e) => {
                        tracing::error!(service = %s.name, error = %e, "certificate not loaded");
                        None
                    }
                },
                _ => {
                    tracing::warn!(service = %s.name, "no private key for the certificate (key_sha256 not resolved); TLS handshakes for it fail");
                    None
                }
            };
            certs.push(loaded);
        }
        Self { certs, default }
    }

    /// Whether any service has a usable certificate.
    pub fn is_empty(&self) -> bool {
        self.certs.iter().all(Option::is_none)
    }

    /// The index of the service carrying the default certificate.
    pub fn default_service(&self) -> Option<usize> {
        self.default
    }

    /// The certificate for a handshake: the selected service's, else the default one.
    fn for_service(&self, service: Option<usize>) -> Option<Arc<CertifiedKey>> {
        service
            .and_then(|i| self.certs.get(i).cloned().flatten())
            .or_else(|| {
                self.default
                    .and_then(|i| self.certs.get(i).cloned().flatten())
            })
    }
}

/// SNI as a host name: lower-cased, a trailing dot dropped.
fn sni_host(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The service index a TLS server name selects in `runtime`: hosts (exact, then wildcard),
/// else the default certificate's service.
pub fn sni_service(runtime: &Runtime, server_name: &str) -> Option<usize> {
    runtime
        .host_index(&sni_host(server_name))
        .or(runtime.tls.default_service())
}

/// Picks each handshake's certificate from the runtime installed at that moment.
pub struct SniResolver {
    state: Arc<EdgeState>,
}

impl SniResolver {
    /// A resolver over the edge's current runtime.
    pub fn new(state: Arc<EdgeState>) -> Self {
        Self { state }
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let runtime = self.state.runtime.load();
        let service = hello.server_name().and_then(|n| sni_service(&runtime, n));
        runtime.tls.for_service(service)
    }
}

/// Builds the rustls configuration of the TLS client listeners (TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1, session resumption) over the edge's current certificates.
pub fn server_config(
    state: Arc<EdgeState>,
) -> Result<Arc<rustls::ServerConfig>, firebreak_protocol::tls::TlsError> {
    firebreak_protocol::tls::server_config(Arc::new(SniResolver::new(state)))
}

/// Called when `runtime` is installed for serving: sets the expiry gauge of each service's
/// certificate and warns about (and counts) expired ones.
pub fn installed(runtime: &Runtime) {
    let now = SystemTime::now();
    for s in &runtime.config.services {
        let Some(pem) = s.tls.as_ref().and_then(|t| t.cert_pem()) else {
            continue;
        };
        let Ok(info) = inspect(pem) else { continue };
        let left = info.expires_in(now);
        let service: Arc<str> = s.name.as_str().into();
        metrics::gauge!(CERT_EXPIRY_SECONDS, "service" => service.clone()).set(left as f64);
        if left < 0 {
            metrics::counter!(EXPIRED_LOADED, "service" => service).increment(1);
            tracing::warn!(
                service = %s.name,
                subject = %info.subject,
                expired_s_ago = -left,
                "serving an expired certificate: clients will refuse it; push a new one"
            );
        }
    }
}

/// 421 when the request came over TLS with a server name that selects another service than
/// its host did (a connection reused for a host it was not opened for). Without SNI, or over
/// cleartext, nothing to check.
pub(crate) fn check_sni(
    runtime: &Runtime,
    svc: &Arc<crate::runtime::Service>,
    extensions: &http::Extensions,
    host: &str,
) -> Result<(), crate::error::ProxyError> {
    let Some(sni) = extensions
        .get::<firebreak_protocol::serve::TlsInfo>()
        .and_then(|t| t.server_name.as_deref())
    else {
        return Ok(());
    };
    let by_sni = sni_service(runtime, sni);
    if by_sni.is_some() && by_sni == runtime.service_index(svc) {
        Ok(())
    } else {
        Err(crate::error::ProxyError::Misdirected(host.to_owned()))
    }
}
