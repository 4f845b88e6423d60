//! Secret documents on the edge: the private keys its versions' services name
//! (`[service.tls] key_sha256`), fetched from the control plane with the edge's own credential,
//! checked against their SHA-256 and kept at `DATA_DIR/secrets/<sha256>.pem` (0600, written
//! durably), so a kept version restarts from disk while the control plane is away. Before a
//! bundle is composed, each `key_sha256` becomes `key = "<PEM>"` again ([`ready`],
//! [`from_disk`]): the configuration sees an ordinary inline key. A secret that cannot be had
//! makes the whole version fail (cannot stage, not applied), never half-applied. Keys are never
//! logged or put in errors (their SHA-256 is).

use super::client::ControlClient;
use firebreak_protocol::bundle::Bundle;
use firebreak_protocol::secrets::{self, is_sha256_hex, MAX_KEY_PEM_BYTES};
use std::path::{Path, PathBuf};

/// Where the secrets live inside the data directory.
fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
}

fn path(data_dir: &Path, sha: &str) -> PathBuf {
    dir(data_dir).join(format!("{sha}.pem"))
}

/// The kept secret `sha`, if its file holds exactly it (size-bounded, hash-checked).
pub fn load(data_dir: &Path, sha: &str) -> Option<String> {
    if !is_sha256_hex(sha) {
        return None;
    }
    let p = path(data_dir, sha);
    let len = std::fs::metadata(&p).ok()?.len();
    if len > MAX_KEY_PEM_BYTES as u64 {
        return None;
    }
    let pem = std::fs::read_to_string(&p).ok()?;
    (firebreak_protocol::sha256_hex(pem.as_bytes()) == sha).then_some(pem)
}

/// Every secret `bundle`'s services name.
fn named(bundle: &Bundle) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for s in &bundle.services {
        let shas = secrets::referenced(&s.document)
            .map_err(|e| format!("version {}: {e}", bundle.version))?;
        for sha in shas {
            if !out.contains(&sha) {
                out.push(sha);
            }
        }
    }
    Ok(out)
}

/// `bundle` with every named key put back, each from the data directory; `Err` naming the
/// first secret missing.
fn inline(data_dir: &Path, bundle: &Bundle) -> Result<Bundle, String> {
    let mut out = bundle.clone();
    for s in &mut out.services {
        s.document = secrets::inline_keys(&s.document, |sha| load(data_dir, sha))
            .map_err(|e| format!("version {} service `{}`: {e}", bundle.version, s.name))?;
    }
    Ok(out)
}

/// Fetches every secret `bundle` names that is not kept yet (hash-checked, kept 0600), then
/// answers the bundle with the keys in its documents. Any secret that cannot be had fails
/// the whole bundle.
pub async fn ready(
    data_dir: &Path,
    client: &ControlClient,
    bundle: Bundle,
) -> Result<Bundle, String> {
    let names = named(&bundle)?;
    if names.is_empty() {
        return Ok(bundle);
    }
    for sha in &names {
        if load(data_dir, sha).is_some() {
            continue;
        }
        let fail = |why: String| {
            format!(
                "version {}: secret {sha} (a service's private key) cannot be fetched: {why}",
                bundle.version
            )
        };
        let body = client.secret(sha).await.map_err(fail)?;
        if firebreak_protocol::sha256_hex(&body) != *sha {
            return Err(fail("the answer does not match its SHA-256".into()));
        }
        let (d, p) = (dir(data_dir), path(data_dir, sha));
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&d)?;
            firebreak_protocol::durable::write_private(&p, &body)
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("cannot keep it on disk: {e}")))?;
        tracing::info!(version = bundle.version, secret = %sha, "secret fetched and kept");
    }
    let data_dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || inline(&data_dir, &bundle))
        .await
        .map_err(|e| e.to_string())?
}

/// A kept bundle with its keys from the data directory only (start, no control plane);
/// `None` (logged) when one is missing.
pub fn from_disk(data_dir: &Path, bundle: Bundle) -> Option<Bundle> {
    match inline(data_dir, &bundle) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "kept version lacks a secret; not loaded from disk");
            None
        }
    }
}

/// The earliest certificate expiry (ms since the epoch) of what runs, recomputed only when
/// the version or its sequence number changes.
#[derive(Default)]
pub struct Expiry {
    of: Option<(u64, u64)>,
    value: Option<u64>,
}

impl Expiry {
    /// For `applied`.
    pub fn of(&mut self, applied: &super::compose::Applied) -> Option<u64> {
        let key = (applied.version, applied.seq);
        if self.of != Some(key) {
            self.of = Some(key);
            self.value =
                secrets::earliest_expiry(applied.services.iter().map(|(_, s)| s.document.as_str()))
                    .map(|s| u64::try_from(s).unwrap_or(0).saturating_mul(1000));
        }
        self.value
    }
}
