//! A local certificate authority for `firebreak up`: an ECDSA P-256 CA generated with rcgen
//! and kept in up's data directory (`ca/ca.pem`, and `ca/ca.key` readable by its owner only),
//! reused while it has more than [`RENEW_BEFORE`] left, and leaf certificates issued from it
//! for the names given (the control plane's: `127.0.0.1`, `::1`, `localhost`). Clients trust
//! `ca/ca.pem` (`FIREBREAK_CA`, `--control-ca`, `curl --cacert`).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a new CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A kept CA with less than this left is replaced by a new one.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long an issued certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Clocks that run a little behind still accept a certificate issued now.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Largest CA file read.
const MAX_PEM_BYTES: u64 = 64 * 1024;

/// Why the local CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalCaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Generating or signing failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The local CA.
pub struct LocalCa {
    cert_path: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl LocalCa {
    /// The CA kept in `dir` (`ca.pem`, `ca.key`), or a new one written there when there is
    /// none, it cannot be read, or it expires within [`RENEW_BEFORE`].
    pub fn load_or_create(dir: &Path) -> Result<Self, LocalCaError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        match Self::load(&cert_path, &key_path) {
            Some(ca) => return Ok(ca),
            None if cert_path.exists() => {
                tracing::info!(path = %cert_path.display(), "local CA unusable or near expiry; making a new one")
            }
            None => {}
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut suffix = [0u8; 4];
        let _ = getrandom::fill(&mut suffix);
        let name = format!(
            "Firebreak local CA {}",
            suffix
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let now = time::OffsetDateTime::now_utc();
        let mut params = ca_params(&name);
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert_pem = params.self_signed(&key)?.pem();
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| LocalCaError::Io { path, source }
        };
        // The key first: a certificate on disk is only ever beside its own key.
        firebreak_protocol::durable::write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(io(&key_path))?;
        firebreak_protocol::durable::write_atomic(&cert_path, cert_pem.as_bytes())
            .map_err(io(&cert_path))?;
        Ok(Self {
            cert_path,
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The kept CA if it is whole, its key matches and it is not near expiry.
    fn load(cert_path: &Path, key_path: &Path) -> Option<Self> {
        let cert_pem = String::from_utf8(read_bounded(cert_path)?).ok()?;
        let key_pem = String::from_utf8(read_bounded(key_path)?).ok()?;
        let key = KeyPair::from_pem(&key_pem).ok()?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() || !cert.is_ca() {
            return None;
        }
        let left = cert.validity().not_after.timestamp()
            - time::OffsetDateTime::now_utc().unix_timestamp();
        if left < i64::try_from(RENEW_BEFORE.as_secs()).unwrap_or(i64::MAX) {
            return None;
        }
        let name = cert
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_owned();
        Some(Self {
            cert_path: cert_path.to_owned(),
            cert_pem,
            issuer: Issuer::new(ca_params(&name), key),
        })
    }

    /// Where the CA certificate is (what clients trust).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate (PEM).
    #[allow(dead_code)] // For callers that hand the CA out inline (the demo service's TLS).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A new server certificate for `names` (DNS names or IP addresses), valid for
    /// [`LEAF_VALIDITY`], with a new ECDSA P-256 key: `(certificate PEM, key PEM)`.
    pub fn issue(&self, names: &[String]) -> Result<(String, String), LocalCaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        if let Some(first) = names.first() {
            dn.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The CA's parameters, apart from its validity (the issuer needs only these).
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() as u64 <= MAX_PEM_BYTES).then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn the_ca_is_kept_private_reused_and_issues_certificates_that_verify() {
        let dir = std::env::temp_dir().join(format!("fb-local-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = LocalCa::load_or_create(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = LocalCa::load_or_create(&dir).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem(), "the kept CA is reused");
        let (cert, key) = again
            .issue(&["127.0.0.1".into(), "::1".into(), "localhost".into()])
            .unwrap();
        assert!(key.contains("PRIVATE KEY"));
        // The leaf verifies against the CA for each of its names.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())
                    .unwrap(),
            )
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        let leaf = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        for name in ["127.0.0.1", "::1", "localhost"] {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
                .unwrap();
        }
        let other = rustls::pki_types::ServerName::try_from("example.com").unwrap();
        assert!(verifier
            .verify_server_cert(&leaf, &[], &other, &[], rustls::pki_types::UnixTime::now())
            .is_err());
        // A damaged CA is replaced.
        std::fs::write(dir.join("ca.pem"), "garbage").unwrap();
        let fresh = LocalCa::load_or_create(&dir).unwrap();
        assert_ne!(fresh.cert_pem(), ca.cert_pem());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
