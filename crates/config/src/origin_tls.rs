//! TLS from the edge to its origins: `tls`, `tls_server_name`, `ca` and `ca_file` in
//! `[service.origin]`.
//!
//! - `tls = false` (default): cleartext HTTP/1.1, as before. The other three settings need
//!   `tls = true` (a CA on a cleartext pool is a mistake, not a no-op).
//! - The name sent as SNI and checked against the origin's certificate is `tls_server_name`,
//!   else `host_header` (without its port), else each server's host. Certificates name hosts,
//!   so a server given as an IP address with no name is refused (field `tls_server_name`).
//! - Trust: webpki-roots (the same on every machine, shipped with our releases, no dependency
//!   on the host's files) plus the certificates of `ca` (inline PEM) or `ca_file` (a PEM file
//!   relative to the configuration file; standalone edges only, files do not travel with a
//!   fleet document). The bundle is bounded ([`MAX_CA_BUNDLE_BYTES`], [`MAX_CA_CERTS`]) and
//!   parsed here, at validation, with the same code the edge uses to build its root store
//!   ([`parse_ca_bundle`]), so a configuration that validates builds.

use crate::locate::PathSeg::{self, Index, Key};
use crate::model::{Config, OriginPoolConfig, ServiceConfig};
use crate::validate::{Checker, Mode, Problem};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::CertificateDer;
use std::net::IpAddr;
use std::path::Path;

/// Largest CA bundle (`ca` or the file `ca_file` names), in bytes.
pub const MAX_CA_BUNDLE_BYTES: usize = 1024 * 1024;
/// Most certificates in one CA bundle.
pub const MAX_CA_CERTS: usize = 256;

/// Why a CA bundle was refused. Messages never quote the bundle's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaBundleError {
    /// Over [`MAX_CA_BUNDLE_BYTES`].
    #[error("the CA bundle is {0} bytes; the limit is {MAX_CA_BUNDLE_BYTES}")]
    TooLarge(usize),
    /// Over [`MAX_CA_CERTS`] certificates.
    #[error("the CA bundle holds more than {MAX_CA_CERTS} certificates")]
    TooMany,
    /// No certificate at all.
    #[error("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")]
    Empty,
    /// A PEM section that cannot be read.
    #[error("PEM section {index} (line {line} of the PEM) is malformed: {what}")]
    Pem {
        /// 1-based number of the section.
        index: usize,
        /// Line of the PEM text where reading stopped.
        line: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A PEM section that is not a certificate (a private key, a CSR, ...).
    #[error("PEM section {index} (ending at line {line} of the PEM) is {kind}, not a certificate; a CA bundle holds certificates only")]
    NotCertificate {
        /// 1-based number of the section.
        index: usize,
        /// Line of its END marker.
        line: usize,
        /// Its kind.
        kind: &'static str,
    },
    /// A certificate that cannot be a trust anchor (bad DER, unsupported structure).
    #[error(
        "certificate {index} (ending at line {line} of the PEM) cannot be a trust anchor: {reason}"
    )]
    Invalid {
        /// 1-based number of the section.
        index: usize,
        /// Line of its END marker.
        line: usize,
        /// Why.
        reason: String,
    },
}

/// Parses a CA bundle (PEM) into the certificates to add to the roots; each is checked to
/// be usable as a trust anchor.
pub fn parse_ca_bundle(pem: &str) -> Result<Vec<CertificateDer<'static>>, CaBundleError> {
    if pem.len() > MAX_CA_BUNDLE_BYTES {
        return Err(CaBundleError::TooLarge(pem.len()));
    }
    let mut sections = <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem.as_bytes());
    let mut certs = Vec::new();
    let mut index = 0;
    loop {
        let next = sections.next();
        let consumed = pem.len().saturating_sub(sections.remainder().len());
        let line = line_of_end(pem, consumed);
        let (kind, der) = match next {
            None => break,
            Some(Err(e)) => {
                return Err(CaBundleError::Pem {
                    index: index + 1,
                    line,
                    what: pem_error(&e),
                })
            }
            Some(Ok(section)) => section,
        };
        index += 1;
        if kind != SectionKind::Certificate {
            return Err(CaBundleError::NotCertificate {
                index,
                line,
                kind: section_kind(kind),
            });
        }
        if certs.len() >= MAX_CA_CERTS {
            return Err(CaBundleError::TooMany);
        }
        let der = CertificateDer::from(der);
        rustls::RootCertStore::empty()
            .add(der.clone())
            .map_err(|e| CaBundleError::Invalid {
                index,
                line,
                reason: anchor_error(&e),
            })?;
        certs.push(der);
    }
    if certs.is_empty() {
        return Err(CaBundleError::Empty);
    }
    Ok(certs)
}

fn line_of_end(pem: &str, consumed: usize) -> usize {
    pem.get(..consumed)
        .map(|p| p.trim_end_matches(['\n', '\r']).matches('\n').count() + 1)
        .unwrap_or(0)
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> &'static str {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "no END marker",
        E::IllegalSectionStart { .. } => "bad BEGIN line",
        E::Base64Decode(_) => "not valid base64",
        E::SectionTooLarge => "section too large",
        _ => "cannot be read",
    }
}

fn section_kind(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey => {
            "a private key"
        }
        SectionKind::PublicKey => "a public key",
        SectionKind::Crl => "a CRL",
        SectionKind::Csr => "a certificate request",
        _ => "another kind of object",
    }
}

fn anchor_error(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => format!("{c:?}"),
        other => other.to_string(),
    }
}

impl OriginPoolConfig {
    /// The extra CA bundle (PEM): `ca`, or the contents of `ca_file`.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_deref().or(self.ca_file_pem.as_deref())
    }

    /// The one name every server of the pool is verified against: `tls_server_name`, else
    /// `host_header` without its port. `None`: each server's own host.
    pub fn fixed_tls_server_name(&self) -> Option<&str> {
        self.tls_server_name
            .as_deref()
            .or_else(|| self.host_header.as_deref().map(without_port))
    }
}

/// The host of `host[:port]` (an IPv6 literal keeps its brackets).
fn without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn is_ip(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok()
}

fn is_dns_name(host: &str) -> bool {
    !is_ip(host) && rustls_pki_types::DnsName::try_from(host).is_ok()
}

/// Checks every pool's TLS settings (called by [`crate::validate::validate`]).
pub(crate) fn check(c: &mut Checker, services: &[ServiceConfig], mode: Mode) {
    for (i, s) in services.iter().enumerate() {
        let base = [Key("service"), Index(i), Key("origin")];
        pool(c, &base, &s.origin, mode);
    }
}

fn pool(c: &mut Checker, base: &[PathSeg], o: &OriginPoolConfig, mode: Mode) {
    let at = |k: &'static str| -> Vec<PathSeg> { base.iter().cloned().chain([Key(k)]).collect() };
    if !o.tls {
        for (name, set) in [
            ("tls_server_name", o.tls_server_name.is_some()),
            ("ca", o.ca.is_some()),
            ("ca_file", o.ca_file.is_some()),
        ] {
            if set {
                c.fail(
                    &at(name),
                    "needs `tls = true` (without it this pool speaks cleartext HTTP)",
                );
            }
        }
        return;
    }
    if o.ca.is_some() && o.ca_file.is_some() {
        c.fail(&at("ca_file"), "give `ca` or `ca_file`, not both");
    }
    if let (Mode::Managed, Some(_)) = (mode, &o.ca_file) {
        c.fail(
            &at("ca_file"),
            "files do not travel with a fleet document: give the PEM inline as `ca`",
        );
    }
    if let Some(pem) = &o.ca {
        if let Err(e) = parse_ca_bundle(pem) {
            c.fail(&at("ca"), e.to_string());
        }
    } else if let (Some(file), Some(pem)) = (&o.ca_file, &o.ca_file_pem) {
        if let Err(e) = parse_ca_bundle(pem) {
            c.fail(&at("ca_file"), format!("`{file}`: {e}"));
        }
    }
    if let Some(name) = &o.tls_server_name {
        if !is_dns_name(name) {
            c.fail(
                &at("tls_server_name"),
                format!(
                    "`{name}` is not a DNS name (certificates name hosts; no port, no IP address)"
                ),
            );
        }
    } else if let Some(host) = o.host_header.as_deref().map(without_port) {
        if !is_dns_name(host) {
            c.fail(
                &at("tls_server_name"),
                format!("is needed: host_header `{host}` is not a DNS name to verify the origin's certificate against; set tls_server_name to the name on the certificate"),
            );
        }
    } else {
        for s in &o.servers {
            let host = without_port(&s.addr);
            if !is_dns_name(host) {
                c.fail(
                    &at("tls_server_name"),
                    format!("is needed: origin server `{}` is an IP address (or not a DNS name) and certificates name hosts; set tls_server_name to the name on the origin's certificate", s.addr),
                );
                break;
            }
        }
    }
}

/// Reads the `ca_file` of every TLS pool (standalone edges; relative to `base`, the
/// configuration file's directory) with the same bounded reader as `[service.tls]` files
/// ([`MAX_CA_BUNDLE_BYTES`], checked before and while reading). The text goes to
/// `ca_file_pem`; [`check`] parses it.
pub(crate) fn read_ca_files(config: &mut Config, base: Option<&Path>, mode: Mode) -> Vec<Problem> {
    let mut problems = Vec::new();
    if mode != Mode::Standalone {
        return problems;
    }
    for (i, s) in config.services.iter_mut().enumerate() {
        let o = &mut s.origin;
        let Some(name) = o.ca_file.as_deref() else {
            continue;
        };
        if !o.tls || o.ca.is_some() {
            continue;
        }
        match crate::tls::read_bounded(base, name, MAX_CA_BUNDLE_BYTES) {
            Ok(text) => o.ca_file_pem = Some(text),
            Err(message) => problems.push(Problem {
                path: vec![Key("service"), Index(i), Key("origin"), Key("ca_file")],
                message: format!("`{name}`: {message}"),
            }),
        }
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::{load_file, parse_managed_str, parse_str};

    /// A fresh test CA certificate (ECDSA P-256), PEM.
    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn edge(origin: &str) -> String {
        format!(
            "[[listener]]\naddr = \"127.0.0.1:8080\"\n\n[[service]]\nname = \"a\"\nhosts = [\"a.example\"]\n\n[service.origin]\n{origin}\n"
        )
    }

    fn fleet(origin: &str) -> String {
        format!(
            "[[service]]\nname = \"a\"\nhosts = [\"a.example\"]\n\n[service.origin]\n{origin}\n"
        )
    }

    fn error(text: &str) -> String {
        match parse_str("edge.toml", text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const NAMED: &str = "servers = [{ addr = \"origin.example:443\" }]";
    const BY_IP: &str = "servers = [{ addr = \"127.0.0.1:9443\" }]";

    #[test]
    fn tls_is_off_by_default_and_names_default_to_host_header_then_the_server() {
        let c = parse_str("edge.toml", &edge(BY_IP)).unwrap();
        let o = &c.services[0].origin;
        assert!(!o.tls && o.ca_pem().is_none() && o.fixed_tls_server_name().is_none());
        let c = parse_str("edge.toml", &edge(&format!("{NAMED}\ntls = true"))).unwrap();
        assert_eq!(c.services[0].origin.fixed_tls_server_name(), None);
        let c = parse_str(
            "edge.toml",
            &edge(&format!(
                "{BY_IP}\ntls = true\nhost_header = \"www.example:8443\""
            )),
        )
        .unwrap();
        assert_eq!(
            c.services[0].origin.fixed_tls_server_name(),
            Some("www.example")
        );
        let c = parse_str(
            "edge.toml",
            &edge(&format!(
                "{BY_IP}\ntls = true\nhost_header = \"www.example\"\ntls_server_name = \"origin.internal\""
            )),
        )
        .unwrap();
        assert_eq!(
            c.services[0].origin.fixed_tls_server_name(),
            Some("origin.internal")
        );
    }

    #[test]
    fn an_ip_origin_without_a_name_is_refused_naming_tls_server_name() {
        let e = error(&edge(&format!("{BY_IP}\ntls = true")));
        assert!(
            e.starts_with("edge.toml:8:1: service[0].origin.tls_server_name: is needed: origin server `127.0.0.1:9443` is an IP address"),
            "{e}"
        );
        let e = error(&edge(&format!(
            "{BY_IP}\ntls = true\nhost_header = \"10.0.0.1:80\""
        )));
        assert!(
            e.contains("origin.tls_server_name: is needed: host_header"),
            "{e}"
        );
        for bad in ["10.0.0.1", "origin.example:443", "bad name", ""] {
            let e = error(&edge(&format!(
                "{NAMED}\ntls = true\ntls_server_name = \"{bad}\""
            )));
            assert!(e.contains("origin.tls_server_name: `"), "{bad}: {e}");
            assert!(e.contains("is not a DNS name"), "{e}");
        }
    }

    #[test]
    fn tls_settings_on_a_cleartext_pool_are_refused() {
        let pem = ca_pem();
        for (field, line) in [
            (
                "tls_server_name",
                "tls_server_name = \"a.example\"".to_owned(),
            ),
            ("ca", format!("ca = \"\"\"\n{pem}\"\"\"")),
            ("ca_file", "ca_file = \"ca.pem\"".to_owned()),
        ] {
            let e = error(&edge(&format!("{NAMED}\n{line}")));
            assert!(
                e.contains(&format!("service[0].origin.{field}: needs `tls = true`")),
                "{e}"
            );
        }
    }

    #[test]
    fn an_inline_ca_is_parsed_at_validation_with_a_located_error() {
        let pem = ca_pem();
        let c = parse_str(
            "edge.toml",
            &edge(&format!(
                "{NAMED}\ntls = true\nca = \"\"\"\n{pem}{pem}\"\"\""
            )),
        )
        .unwrap();
        let bundle = c.services[0].origin.ca_pem().unwrap();
        assert_eq!(parse_ca_bundle(bundle).unwrap().len(), 2);

        // Broken base64 in the second certificate.
        let broken = format!("{pem}{}", pem.replacen("MII", "M!I", 1));
        let e = error(&edge(&format!(
            "{NAMED}\ntls = true\nca = \"\"\"\n{broken}\"\"\""
        )));
        assert!(
            e.starts_with("edge.toml:11:6: service[0].origin.ca: PEM section 2"),
            "{e}"
        );
        assert!(e.contains("malformed: not valid base64"), "{e}");

        // Valid base64, but not a certificate.
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = error(&edge(&format!(
            "{NAMED}\ntls = true\nca = \"\"\"\n{junk}\"\"\""
        )));
        assert!(
            e.contains(
                "origin.ca: certificate 1 (ending at line 3 of the PEM) cannot be a trust anchor"
            ),
            "{e}"
        );

        let e = error(&edge(&format!("{NAMED}\ntls = true\nca = \"hello\"")));
        assert!(e.contains("origin.ca: no PEM certificate found"), "{e}");
    }

    #[test]
    fn a_private_key_in_the_ca_is_refused_without_printing_it() {
        let key = rcgen::KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let e = error(&edge(&format!(
            "{NAMED}\ntls = true\nca = \"\"\"\n{}{key_pem}\"\"\"",
            ca_pem()
        )));
        assert!(e.contains("PEM section 2"), "{e}");
        assert!(e.contains("is a private key, not a certificate"), "{e}");
        let secret_line = key_pem.lines().nth(1).unwrap();
        assert!(!e.contains(secret_line), "{e}");
    }

    #[test]
    fn the_ca_bundle_is_bounded_in_bytes_and_certificates() {
        let pem = ca_pem();
        let many = pem.repeat(MAX_CA_CERTS);
        assert_eq!(parse_ca_bundle(&many).unwrap().len(), MAX_CA_CERTS);
        let too_many = pem.repeat(MAX_CA_CERTS + 1);
        assert_eq!(parse_ca_bundle(&too_many), Err(CaBundleError::TooMany));
        let big = format!("{pem}{}", "#".repeat(MAX_CA_BUNDLE_BYTES));
        assert!(matches!(
            parse_ca_bundle(&big),
            Err(CaBundleError::TooLarge(_))
        ));
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "firebreak-origin-tls-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        dir
    }

    #[test]
    fn a_ca_file_is_read_relative_to_the_config_file_and_bounded() {
        let dir = temp_dir("file");
        let pem = ca_pem();
        std::fs::write(dir.join("certs/ca.pem"), &pem).unwrap();
        let file = dir.join("edge.toml");
        std::fs::write(
            &file,
            edge(&format!("{NAMED}\ntls = true\nca_file = \"certs/ca.pem\"")),
        )
        .unwrap();
        let c = load_file(&file).unwrap();
        assert_eq!(c.services[0].origin.ca_pem(), Some(pem.as_str()));

        // Missing, too big, not PEM: each names the field and the file.
        std::fs::write(
            &file,
            edge(&format!(
                "{NAMED}\ntls = true\nca_file = \"certs/none.pem\""
            )),
        )
        .unwrap();
        let e = load_file(&file).unwrap_err().to_string();
        assert!(e.contains(":11:11: service[0].origin.ca_file: `"), "{e}");
        assert!(e.contains("none.pem`: cannot read"), "{e}");
        std::fs::write(
            dir.join("certs/big.pem"),
            "#".repeat(MAX_CA_BUNDLE_BYTES + 1),
        )
        .unwrap();
        std::fs::write(
            &file,
            edge(&format!("{NAMED}\ntls = true\nca_file = \"certs/big.pem\"")),
        )
        .unwrap();
        let e = load_file(&file).unwrap_err().to_string();
        assert!(
            e.contains("origin.ca_file: `") && e.contains("the limit is 1048576"),
            "{e}"
        );
        std::fs::write(dir.join("certs/junk.pem"), "junk").unwrap();
        std::fs::write(
            &file,
            edge(&format!(
                "{NAMED}\ntls = true\nca_file = \"certs/junk.pem\""
            )),
        )
        .unwrap();
        let e = load_file(&file).unwrap_err().to_string();
        assert!(
            e.contains("origin.ca_file: `certs/junk.pem`: no PEM certificate found"),
            "{e}"
        );

        // Both at once.
        std::fs::write(
            &file,
            edge(&format!(
                "{NAMED}\ntls = true\nca_file = \"certs/ca.pem\"\nca = \"\"\"\n{pem}\"\"\""
            )),
        )
        .unwrap();
        let e = load_file(&file).unwrap_err().to_string();
        assert!(
            e.contains("origin.ca_file: give `ca` or `ca_file`, not both"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fleet_document_refuses_ca_file_and_takes_an_inline_ca() {
        let e = parse_managed_str(
            "fleet.toml",
            &fleet(&format!("{NAMED}\ntls = true\nca_file = \"certs/ca.pem\"")),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("fleet.toml:8:11: service[0].origin.ca_file: files do not travel"),
            "{e}"
        );
        let pem = ca_pem();
        let c = parse_managed_str(
            "fleet.toml",
            &fleet(&format!("{NAMED}\ntls = true\nca = \"\"\"\n{pem}\"\"\"")),
        )
        .unwrap();
        assert!(c.services[0].origin.tls);
    }
}
