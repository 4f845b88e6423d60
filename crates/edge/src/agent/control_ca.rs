//! The fleet's CA: what the edge trusts for an `https://` control plane. Given once, at
//! enrolment (`firebreak edge --control-ca FILE`), and kept in `DATA_DIR/control-ca.pem`, so a
//! restart needs no flag. With it, ONLY that CA is trusted: nobody on the path (not even
//! someone holding a certificate from a public CA) can feed the edge old targets or read its
//! bundles. Without it, an `https://` control plane is verified against webpki-roots. An
//! `http://` control URL stays cleartext (the URL's scheme decides; an `https://` URL never
//! falls back to cleartext).

use firebreak_protocol::client::{CaError, HttpClient, MAX_CA_BUNDLE_BYTES};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File name of the kept CA bundle in the data directory.
pub const CONTROL_CA_FILE: &str = "control-ca.pem";
/// How long a connection to the control plane may take to establish.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the control plane's CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlCaError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bundle is not a usable CA bundle.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        source: CaError,
    },
}

/// Where the kept CA lives.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONTROL_CA_FILE)
}

/// Reads a CA bundle (at most [`MAX_CA_BUNDLE_BYTES`]) and checks it.
pub fn read(file: &Path) -> Result<Vec<u8>, ControlCaError> {
    let pem = super::disk::read_bounded(file, MAX_CA_BUNDLE_BYTES as u64).map_err(|source| {
        ControlCaError::Io {
            path: file.display().to_string(),
            source,
        }
    })?;
    firebreak_protocol::client::ca_certs(&pem).map_err(|source| ControlCaError::Invalid {
        path: file.display().to_string(),
        source,
    })?;
    Ok(pem)
}

/// Keeps `pem` (checked first) as the edge's control-plane CA in `data_dir`, replacing the
/// one kept before.
pub fn install(data_dir: &Path, pem: &[u8]) -> Result<(), ControlCaError> {
    let file = path(data_dir);
    firebreak_protocol::client::ca_certs(pem).map_err(|source| ControlCaError::Invalid {
        path: file.display().to_string(),
        source,
    })?;
    firebreak_protocol::durable::write_atomic(&file, pem).map_err(|source| ControlCaError::Io {
        path: file.display().to_string(),
        source,
    })
}

/// The kept CA, if any. A kept file that cannot be read or used is an error (never a silent
/// fall back to other roots).
pub fn load(data_dir: &Path) -> Result<Option<Vec<u8>>, ControlCaError> {
    let file = path(data_dir);
    match std::fs::symlink_metadata(&file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ControlCaError::Io {
                path: file.display().to_string(),
                source,
            })
        }
        Ok(_) => {}
    }
    read(&file).map(Some)
}

/// The HTTP client for the control plane at `control`: trusting the CA kept in `data_dir`
/// for an `https://` URL, webpki-roots when none is kept.
pub fn client(control: &str, data_dir: &Path) -> Result<HttpClient, ControlCaError> {
    let ca = load(data_dir)?;
    let https = control
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    match (&ca, https) {
        (Some(_), true) => tracing::info!(
            ca = %path(data_dir).display(),
            "the control plane is verified against the fleet CA only"
        ),
        (None, true) => tracing::info!(
            "no control-plane CA kept ({}); the control plane is verified against webpki-roots",
            path(data_dir).display()
        ),
        (Some(_), false) => tracing::warn!(
            %control,
            "a control-plane CA is kept but the control URL is cleartext http; it is not used"
        ),
        (None, false) => {}
    }
    HttpClient::with_ca(CONNECT_TIMEOUT, ca.as_deref()).map_err(|source| ControlCaError::Invalid {
        path: path(data_dir).display().to_string(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn the_kept_ca_is_checked_written_and_read_back() {
        let dir = std::env::temp_dir().join(format!("fb-control-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load(&dir).unwrap().is_none());
        assert!(install(&dir, b"not pem").is_err());
        assert!(!path(&dir).exists());
        let pem = ca_pem();
        install(&dir, pem.as_bytes()).unwrap();
        assert_eq!(load(&dir).unwrap().unwrap(), pem.as_bytes());
        std::fs::write(path(&dir), "garbage").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains(CONTROL_CA_FILE), "{e}");
        std::fs::write(path(&dir), vec![b'a'; MAX_CA_BUNDLE_BYTES + 1]).unwrap();
        assert!(load(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
