//! TLS settings: `[[listener]] tls = true` and a service's certificate (`[service.tls]`).
//!
//! The parser checks what can be checked once for every edge: the shape (one source for the
//! certificate and one for the key), PEM sizes, that the chain and key parse, that the key
//! matches the certificate, that the certificate's names cover every host of the service, at
//! most one default certificate, and that a TLS listener has a certificate to offer. Expiry is
//! *not* a parse error: [`check_validity`] tells it, and only `firebreak config validate` and
//! the control plane's push refuse on it, so an edge restarting on a kept version whose
//! certificate has expired since still serves (it warns and counts instead).
//!
//! Files (`cert_file`, `key_file`) are read at parse time, relative to the configuration
//! file's directory, with their size checked before reading; a fleet document may not name
//! files (they do not travel with it). A private key never appears in an error message, a
//! log line or a `Debug` output ([`SecretPem`]).

use crate::load::{ConfigError, ValidConfig};
use crate::locate::{line_col, locate, PathSeg, PathSeg::Index, PathSeg::Key};
use crate::model::Config;
use crate::validate::{Checker, Mode, Problem as Found};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Largest certificate chain accepted, in bytes of PEM.
pub const MAX_CERT_CHAIN_PEM_BYTES: usize = 64 * 1024;
/// Largest private key accepted, in bytes of PEM.
pub const MAX_KEY_PEM_BYTES: usize = 16 * 1024;

/// A private key in PEM. Its `Debug` output is redacted, and nothing in this crate prints it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretPem(String);

impl SecretPem {
    /// Wraps a PEM text.
    pub fn new(pem: String) -> Self {
        Self(pem)
    }

    /// The PEM text, for the code that loads the key. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// A service's certificate and private key (`[service.tls]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceTlsConfig {
    /// The certificate chain in PEM, leaf first.
    #[serde(default)]
    pub cert: Option<String>,
    /// A file holding the chain (standalone edges only; relative to the configuration file).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// The private key in PEM (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<SecretPem>,
    /// A file holding the key (standalone edges only; relative to the configuration file).
    #[serde(default)]
    pub key_file: Option<String>,
    /// Under a control plane: the key is the secret document with this SHA-256 (lower-case
    /// hex), fetched by the edges that serve the service.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// This certificate answers handshakes whose SNI matches no service (at most one).
    #[serde(default)]
    pub default: bool,
    /// The chain read from `cert_file`.
    #[serde(skip)]
    loaded_cert: Option<String>,
    /// The key read from `key_file`.
    #[serde(skip)]
    loaded_key: Option<SecretPem>,
}

impl ServiceTlsConfig {
    /// The certificate chain's PEM, inline or read from `cert_file`.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert.as_deref().or(self.loaded_cert.as_deref())
    }

    /// The private key's PEM, inline or read from `key_file`; `None` with `key_sha256` (the
    /// key is a secret document the edge puts back as `key`).
    pub fn key_pem(&self) -> Option<&SecretPem> {
        self.key.as_ref().or(self.loaded_key.as_ref())
    }
}

/// Why a certificate or key cannot be used. Messages never quote key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsConfigError {
    /// Over the size bound.
    #[error("is {len} bytes; the limit is {limit}")]
    TooLarge {
        /// Bytes given.
        len: usize,
        /// The bound.
        limit: usize,
    },
    /// The chain is not PEM, or holds no `CERTIFICATE` block.
    #[error("not a PEM certificate chain: {0}")]
    CertPem(&'static str),
    /// A certificate does not parse as X.509.
    #[error("certificate #{index} of the chain is not a valid X.509 certificate: {reason}")]
    CertParse {
        /// 0 for the leaf.
        index: usize,
        /// The parser's reason.
        reason: String,
    },
    /// The key is not PEM, or holds no private key block.
    #[error("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {0}")]
    KeyPem(&'static str),
    /// The key's algorithm is not supported.
    #[error(
        "the private key's algorithm is not supported (use ECDSA P-256/P-384, Ed25519 or RSA)"
    )]
    KeyUnsupported,
    /// The key is not the certificate's.
    #[error("the private key does not match the certificate (subject {subject})")]
    KeyMismatch {
        /// The leaf's subject.
        subject: String,
    },
}

fn pem_reason(e: &rustls_pki_types::pem::Error) -> &'static str {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "no PEM block of the expected kind found",
        E::MissingSectionEnd { .. } => "a PEM block has no END line",
        E::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        E::Base64Decode(_) => "a PEM block's base64 is invalid",
        _ => "malformed PEM",
    }
}

/// Parses a PEM certificate chain (leaf first), bounded, each certificate checked as X.509.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    if pem.len() > MAX_CERT_CHAIN_PEM_BYTES {
        return Err(TlsConfigError::TooLarge {
            len: pem.len(),
            limit: MAX_CERT_CHAIN_PEM_BYTES,
        });
    }
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::CertPem(pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(TlsConfigError::CertPem("no CERTIFICATE block found"));
    }
    for (index, der) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsConfigError::CertParse {
            index,
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// Parses a PEM private key, bounded. Errors never quote the key.
pub fn key_from_pem(pem: &SecretPem) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let text = pem.expose();
    if text.len() > MAX_KEY_PEM_BYTES {
        return Err(TlsConfigError::TooLarge {
            len: text.len(),
            limit: MAX_KEY_PEM_BYTES,
        });
    }
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| TlsConfigError::KeyPem(pem_reason(&e)))
}

/// The certificate chain and key ready for rustls (ring provider), after checking that the
/// key is the leaf's. The edge builds its certificate table with this same function.
pub fn certified_key(cert_pem: &str, key_pem: &SecretPem) -> Result<CertifiedKey, TlsConfigError> {
    let certs = certs_from_pem(cert_pem)?;
    let key = key_from_pem(key_pem)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| TlsConfigError::KeyUnsupported)?;
    let certified = CertifiedKey::new(certs, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(_) => Err(TlsConfigError::KeyMismatch {
            subject: certified
                .cert
                .first()
                .and_then(|c| inspect_der(c).ok())
                .map(|i| i.subject)
                .unwrap_or_default(),
        }),
    }
}

/// What a certificate says about itself (the leaf of a chain).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertInfo {
    /// Subject distinguished name, for example `CN=www.example.com`.
    pub subject: String,
    /// Subject alternative names: DNS names as written (lower-cased), IP addresses.
    pub sans: Vec<String>,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    /// Seconds from `now` until `not_after`; negative once expired.
    pub fn expires_in(&self, now: SystemTime) -> i64 {
        self.not_after.saturating_sub(unix_seconds(now))
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Describes the leaf certificate of a PEM chain.
pub fn inspect(pem: &str) -> Result<CertInfo, TlsConfigError> {
    let certs = certs_from_pem(pem)?;
    let leaf = certs
        .first()
        .ok_or(TlsConfigError::CertPem("no CERTIFICATE block found"))?;
    inspect_der(leaf)
}

/// Describes one DER certificate (for example the peer certificate of a connection).
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, TlsConfigError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsConfigError::CertParse {
            index: 0,
            reason: e.to_string(),
        })?;
    let validity = cert.validity();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans: san_names(&cert)
            .into_iter()
            .map(|n| match n {
                San::Dns(d) => d,
                San::Ip(ip) => ip.to_string(),
            })
            .collect(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

enum San {
    Dns(String),
    Ip(IpAddr),
}

fn san_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<San> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(San::Dns(d.to_ascii_lowercase())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| San::Ip(IpAddr::from(a))),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| San::Ip(IpAddr::from(a))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Whether a certificate name covers a configured host (both lower-case): exact, or a
/// `*.rest` name for a host one label deeper than `rest`. A wildcard host (`*.example.com`)
/// needs the wildcard name itself.
fn covers(san: &San, host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return matches!(san, San::Ip(s) if *s == ip);
    }
    let San::Dns(name) = san else {
        return false;
    };
    if name == host {
        return true;
    }
    if host.starts_with("*.") {
        return false;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => !label.is_empty() && rest == suffix,
        _ => false,
    }
}

/// Whether `host` is a wildcard host: `*.` followed by a host name (one label matched).
pub fn valid_wildcard_host(host: &str) -> bool {
    host.strip_prefix("*.")
        .is_some_and(|rest| !rest.starts_with('[') && crate::validate::valid_host_name(rest))
}

const FILES_IN_FLEET: &str =
    "a fleet document travels to every edge and files do not: give the PEM inline (`cert`, `key`)";

/// Reads `cert_file` and `key_file` (standalone only), size bounded, relative to `base`.
/// Problems are reported at the field; a file's content never appears in a message.
pub(crate) fn load_files(config: &mut Config, base: Option<&Path>, mode: Mode) -> Vec<Found> {
    let mut problems = Vec::new();
    for (i, s) in config.services.iter_mut().enumerate() {
        let Some(tls) = s.tls.as_mut() else { continue };
        let at = |k: &'static str| vec![Key("service"), Index(i), Key("tls"), Key(k)];
        let mut fail = |k: &'static str, message: String| {
            problems.push(Found {
                path: at(k),
                message,
            })
        };
        if mode == Mode::Managed {
            if tls.cert_file.is_some() {
                fail("cert_file", FILES_IN_FLEET.to_owned());
            }
            if tls.key_file.is_some() {
                fail("key_file", FILES_IN_FLEET.to_owned());
            }
            continue;
        }
        if let Some(name) = &tls.cert_file {
            match read_bounded(base, name, MAX_CERT_CHAIN_PEM_BYTES) {
                Ok(text) => tls.loaded_cert = Some(text),
                Err(e) => fail("cert_file", e),
            }
        }
        if let Some(name) = &tls.key_file {
            match read_bounded(base, name, MAX_KEY_PEM_BYTES) {
                Ok(text) => tls.loaded_key = Some(SecretPem(text)),
                Err(e) => fail("key_file", e),
            }
        }
    }
    problems
}

pub(crate) fn read_bounded(
    base: Option<&Path>,
    name: &str,
    limit: usize,
) -> Result<String, String> {
    if name.is_empty() || name.len() > 4096 || name.contains('\0') {
        return Err("must be a file path".into());
    }
    let path = match base {
        Some(dir) if Path::new(name).is_relative() => dir.join(name),
        _ => Path::new(name).to_path_buf(),
    };
    let shown = path.display();
    let io = |e: std::io::Error| format!("cannot read {shown}: {e}");
    let file = std::fs::File::open(&path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > limit as u64 {
        return Err(format!("{shown} is {len} bytes; the limit is {limit}"));
    }
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > limit {
        return Err(format!("{shown} is over the limit of {limit} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| format!("{shown} is not PEM text"))
}

/// The TLS checks of [`crate::validate`]: shape, PEM, key match, names cover hosts, one
/// default, a certificate for TLS listeners.
pub(crate) fn check(c: &mut Checker, config: &Config, mode: Mode) {
    let mut default: Option<usize> = None;
    let mut any_cert = false;
    for (i, s) in config.services.iter().enumerate() {
        let Some(tls) = &s.tls else { continue };
        let at = |k: &'static str| vec![Key("service"), Index(i), Key("tls"), Key(k)];
        let base = [Key("service"), Index(i), Key("tls")];
        if tls.default {
            if let Some(first) = default {
                c.fail(
                    &at("default"),
                    format!(
                        "only one certificate may be the default; service[{first}]'s already is"
                    ),
                );
            } else {
                default = Some(i);
            }
        }
        let cert_field = if tls.cert.is_none() && tls.cert_file.is_some() {
            "cert_file"
        } else {
            "cert"
        };
        match (&tls.cert, &tls.cert_file) {
            (Some(_), Some(_)) => c.fail(&at("cert_file"), "give cert or cert_file, not both"),
            (None, None) => c.fail(
                &base,
                "needs the certificate chain: cert (PEM) or, on a standalone edge, cert_file",
            ),
            _ => {}
        }
        let key_sources = [
            tls.key.is_some(),
            tls.key_file.is_some(),
            tls.key_sha256.is_some(),
        ];
        let key_field = if tls.key.is_some() {
            "key"
        } else if tls.key_file.is_some() {
            "key_file"
        } else {
            "key_sha256"
        };
        match key_sources.iter().filter(|&&b| b).count() {
            0 => c.fail(
                &base,
                "needs the private key: key (PEM) or, on a standalone edge, key_file",
            ),
            1 => {}
            _ => c.fail(&at(key_field), "give one of key, key_file and key_sha256"),
        }
        if let Some(hash) = &tls.key_sha256 {
            if mode == Mode::Standalone {
                c.fail(
                    &at("key_sha256"),
                    "names a secret document held by a control plane; a standalone edge needs key or key_file",
                );
            } else if hash.len() != 64
                || !hash
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                c.fail(
                    &at("key_sha256"),
                    "must be 64 lower-case hex digits (the SHA-256 of the key's secret document)",
                );
            }
        }
        // The sources' contents (files were read before; a problem reading them is reported).
        let Some(cert_pem) = tls.cert_pem() else {
            continue;
        };
        any_cert = true;
        let certs = match certs_from_pem(cert_pem) {
            Ok(certs) => certs,
            Err(e) => {
                c.fail(&at(cert_field), e.to_string());
                continue;
            }
        };
        let Some(leaf) = certs.first() else { continue };
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf) else {
            continue;
        };
        let names = san_names(&parsed);
        for (j, host) in s.hosts.iter().enumerate() {
            let host = host.to_ascii_lowercase();
            if !names.iter().any(|n| covers(n, &host)) {
                let listed: Vec<String> = names
                    .iter()
                    .map(|n| match n {
                        San::Dns(d) => d.clone(),
                        San::Ip(ip) => ip.to_string(),
                    })
                    .collect();
                c.fail(
                    &at(cert_field),
                    format!(
                        "the certificate does not cover host `{host}` (service[{i}].hosts[{j}]); its names: {}{}",
                        if listed.is_empty() { "none (no subjectAltName)".to_owned() } else { listed.join(", ") },
                        if host.starts_with("*.") { " (a wildcard host needs the same wildcard name)" } else { "" }
                    ),
                );
            }
        }
        if tls.key_sha256.is_some() && mode == Mode::Managed {
            // The key is a secret document: matched when the operator pushed it inline.
            continue;
        }
        if let Some(key) = tls.key_pem() {
            match key_from_pem(key) {
                Err(e) => c.fail(&at(key_field), e.to_string()),
                Ok(_) => {
                    if let Err(e) = certified_key(cert_pem, key) {
                        c.fail(&at(key_field), e.to_string());
                    }
                }
            }
        }
    }
    if mode == Mode::Standalone && !any_cert {
        if let Some(i) = config.listeners.iter().position(|l| l.tls) {
            c.fail(
                &[Key("listener"), Index(i), Key("tls")],
                "a TLS listener needs at least one service with a certificate ([service.tls])",
            );
        }
    }
}

/// How serious a [`Problem`] of [`check_validity`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Refuse the configuration (an expired certificate).
    Error,
    /// Say so, accept (a certificate not yet valid).
    Warning,
}

/// A time-dependent problem with a certificate of a valid configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The service.
    pub service: String,
    /// Dotted field path, for example `service[0].tls.cert`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    path: Vec<PathSeg>,
}

impl Problem {
    /// The problem located in the configuration text it came from:
    /// `file:line:column: field: message`.
    pub fn located(&self, file: &str, text: &str) -> ConfigError {
        let (line, column) = toml_edit::Document::parse(text)
            .ok()
            .and_then(|d| locate(&d, &self.path))
            .map(|offset| line_col(text, offset))
            .unwrap_or((0, 0));
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            field: self.field.clone(),
            message: self.message.clone(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn date(t: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{t} (Unix time)"))
}

/// Certificates of `config` expired at `now` (errors) or not yet valid (warnings), every
/// certificate of each chain. `firebreak config validate` and the control plane refuse on an
/// error; an edge loading a configuration only warns.
pub fn check_validity(config: &ValidConfig, now: SystemTime) -> Vec<Problem> {
    let now_s = unix_seconds(now);
    let mut out = Vec::new();
    for (i, s) in config.services.iter().enumerate() {
        let Some(tls) = &s.tls else { continue };
        let Some(pem) = tls.cert_pem() else { continue };
        let field: &'static str = if tls.cert.is_some() {
            "cert"
        } else {
            "cert_file"
        };
        let path = vec![Key("service"), Index(i), Key("tls"), Key(field)];
        let Ok(certs) = certs_from_pem(pem) else {
            continue;
        };
        for (n, der) in certs.iter().enumerate() {
            let Ok(info) = inspect_der(der) else { continue };
            let which = if n == 0 {
                format!("the certificate ({})", info.subject)
            } else {
                format!("certificate #{n} of the chain ({})", info.subject)
            };
            let (severity, message) = if info.not_after < now_s {
                (
                    Severity::Error,
                    format!(
                        "{which} expired on {} ({} days ago)",
                        date(info.not_after),
                        (now_s - info.not_after) / 86_400
                    ),
                )
            } else if info.not_before > now_s {
                (
                    Severity::Warning,
                    format!("{which} is not valid before {}", date(info.not_before)),
                )
            } else {
                continue;
            };
            out.push(Problem {
                severity,
                service: s.name.clone(),
                field: PathSeg::display(&path),
                message,
                path: path.clone(),
            });
        }
    }
    out
}

impl ValidConfig {
    /// Adds TLS client listeners (`firebreak edge --listen-tls`) to a configuration already
    /// localised for one edge ([`ValidConfig::localize`]).
    pub fn with_tls_listeners(mut self, addrs: &[SocketAddr]) -> Self {
        self.0
            .listeners
            .extend(addrs.iter().map(|&addr| crate::model::ListenerConfig {
                addr,
                proxy_protocol: false,
                tls: true,
            }));
        self
    }

    /// The services that carry a certificate whose chain has expired at `now`, once per
    /// service (what an edge warns about and counts when it loads this configuration).
    pub fn expired_certificates(&self, now: SystemTime) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = Vec::new();
        for p in check_validity(self, now) {
            if p.severity == Severity::Error && !names.iter().any(|n| **n == *p.service) {
                names.push(p.service.as_str().into());
            }
        }
        names
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::expect_used,
    clippy::indexing_slicing
)]
#[path = "tls_tests.rs"]
mod tests;
