//! Secret documents on the control plane: services' TLS private keys.
//!
//! At push, after the whole text validated: each service's certificate is checked for expiry
//! ([`check_certificates`]: expired → 422, located; not yet valid → a warning in the answer),
//! then each inline `[service.tls] key` moves out of its service document into a secret
//! document keyed by the SHA-256 of its PEM ([`extract`]) and `key_sha256` takes its place, so
//! the sealed bundle every edge downloads holds no private key. The secrets are stored (durably)
//! before the version that names them ([`Plane::store_secrets`]), so no stored version names a
//! secret the store lacks.
//!
//! Serving: `GET /v1/edges/{id}/secrets/{sha256}`, the edge's own credential only
//! ([`crate::auth::Need::EdgeSecret`]); answered only when a version this edge may run (the
//! fleet's current version and overrides, the rolling one, a version the fleet ran) names the
//! secret; everything else is 404, so nobody learns which secrets exist. No operator route
//! returns a key; documents shown by the API have their certificates described, not shown
//! ([`firebreak_protocol::secrets::redact_certs`]).

use crate::plane::{blocking, Plane, PlaneError};
use bytes::Bytes;
use firebreak_config::{ConfigError, ConfigRejected};
use firebreak_protocol::bundle::{Bundle, ServiceDocument};
use firebreak_protocol::secrets::{self, is_sha256_hex, Secret};
use toml_edit::{Document, Item};

/// What push checks and moves out, besides the documents.
#[derive(Debug, Default)]
pub struct Moved {
    /// The keys moved out (to store before the version).
    pub secrets: Vec<Secret>,
    /// `key_sha256` the operator wrote (must already be stored).
    pub named: Vec<String>,
}

/// Checks each `[service.tls] cert` of the pushed `text` (named `file`) against the time
/// `now_s` (seconds since the epoch): a certificate whose `not_after` is past refuses the push
/// (`file:line:column: service[i].tls.cert: certificate expired at ...`); one not valid yet is
/// a warning. Certificates that do not parse are left to the configuration's own checks.
pub fn check_certificates(
    file: &str,
    text: &str,
    now_s: i64,
) -> Result<Vec<String>, ConfigRejected> {
    let Ok(doc) = Document::parse(text) else {
        return Ok(Vec::new());
    };
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for (i, cert, carried) in certs_with_spans(&doc) {
        let Some(pem) = cert.as_str() else { continue };
        let Ok(info) = secrets::inspect(pem) else {
            continue;
        };
        let (line, column) = line_col(text, cert.span().map_or(0, |s| s.start));
        let field = format!("service[{i}].tls.cert");
        if info.not_after < now_s && carried {
            // A certificate carried over from a stored version (its key is already a secret
            // document: a kill switch, a rollback made into a version) must not block the
            // change; the edges keep serving it, warned and counted.
            warnings.push(format!(
                "{file}:{line}:{column}: {field}: certificate expired at {} (subject {}); carried over from a stored version, still served",
                secrets::rfc3339(info.not_after),
                info.subject
            ));
        } else if info.not_after < now_s {
            errors.push(ConfigError {
                file: file.to_owned(),
                line,
                column,
                field,
                message: format!(
                    "certificate expired at {} (subject {})",
                    secrets::rfc3339(info.not_after),
                    info.subject
                ),
            });
        } else if info.not_before > now_s {
            warnings.push(format!(
                "{file}:{line}:{column}: {field}: certificate not valid before {} (subject {})",
                secrets::rfc3339(info.not_before),
                info.subject
            ));
        }
    }
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(ConfigRejected { errors })
    }
}

/// `(service index, cert item, carried over)` of every `[[service]]`'s `tls.cert`; carried over
/// = its key is named by `key_sha256` (already a stored secret), not given inline.
fn certs_with_spans<'a>(doc: &'a Document<&str>) -> Vec<(usize, &'a Item, bool)> {
    let mut out = Vec::new();
    let Some(services) = doc.get("service") else {
        return out;
    };
    let mut i = 0;
    while let Some(service) = services.get(i) {
        if let Some(tls) = service.get("tls") {
            if let Some(cert) = tls.get("cert") {
                let carried = tls.get("key").is_none() && tls.get("key_sha256").is_some();
                out.push((i, cert, carried));
            }
        }
        i += 1;
    }
    out
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Moves every inline key out of `services` (already validated), answering the documents with
/// `key_sha256` in their place.
pub fn extract(
    services: Vec<ServiceDocument>,
) -> Result<(Vec<ServiceDocument>, Moved), PlaneError> {
    let mut moved = Moved::default();
    let mut out = Vec::with_capacity(services.len());
    for s in services {
        let (document, keys) = secrets::extract_keys(&s.document)
            .map_err(|e| PlaneError::BadRequest(e.to_string()))?;
        for named in
            secrets::referenced(&document).map_err(|e| PlaneError::BadRequest(e.to_string()))?
        {
            if !keys.iter().any(|k| k.sha256 == named) && !moved.named.contains(&named) {
                moved.named.push(named);
            }
        }
        for k in keys {
            if !moved.secrets.iter().any(|m| m.sha256 == k.sha256) {
                moved.secrets.push(k);
            }
        }
        // A second guard: whatever the schema, no private key goes into a bundle.
        if document.contains("PRIVATE KEY") {
            return Err(PlaneError::BadRequest(format!(
                "service `{}`: a private key outside [service.tls] key; nothing was stored",
                s.name
            )));
        }
        out.push(ServiceDocument {
            name: s.name,
            document,
        });
    }
    Ok((out, moved))
}

impl Plane {
    /// Stores the keys a push moved out, before its version: and checks that every
    /// `key_sha256` the operator wrote names a stored secret.
    pub(crate) async fn store_secrets(&self, moved: &Moved) -> Result<(), PlaneError> {
        for sha in &moved.named {
            if self.store.secret(sha).await?.is_none() {
                return Err(PlaneError::BadRequest(format!(
                    "tls.key_sha256 {sha} names no stored secret: push the key inline (key = \"\"\"...\"\"\"); nothing was stored"
                )));
            }
        }
        self.store.put_secrets(&moved.secrets).await?;
        if !moved.secrets.is_empty() {
            tracing::info!(
                secrets = ?moved.secrets.iter().map(|s| s.sha256.as_str()).collect::<Vec<_>>(),
                "secret documents stored"
            );
        }
        Ok(())
    }

    /// The secret `sha` for edge `id`: only if a version this edge may run names it (see the
    /// module documentation); otherwise 404, whatever the reason.
    pub async fn edge_secret(&self, id: &str, sha: &str) -> Result<Bytes, PlaneError> {
        let gone = || PlaneError::NotFound("no such secret".into());
        crate::plane::edge_id(id)?;
        if !is_sha256_hex(sha) {
            return Err(gone());
        }
        let state = self.fleet_state();
        let mut versions: Vec<u64> = state.ran.clone();
        versions.extend(state.default_version());
        versions.extend(state.cells.values().map(|t| t.version));
        versions.extend(state.edges.values().map(|t| t.version));
        versions.extend(state.running().map(|r| r.version));
        versions.retain(|v| *v != 0);
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions.dedup();
        for v in versions {
            let Some(bytes) = self.store.bundle(v).await? else {
                continue;
            };
            // Cheap first look: the hex appears in the bundle's JSON only if a document names it.
            if !bytes.windows(sha.len()).any(|w| w == sha.as_bytes()) {
                continue;
            }
            let (keys, sha_owned) = (self.key.clone(), sha.to_owned());
            let names = blocking(move || {
                let Ok(bundle) = Bundle::open(&bytes, &keys) else {
                    return Ok(false);
                };
                Ok(bundle.services.iter().any(|s| {
                    secrets::referenced(&s.document).is_ok_and(|r| r.contains(&sha_owned))
                }))
            })
            .await?;
            if names {
                let pem = self.store.secret(sha).await?.ok_or_else(gone)?;
                tracing::info!(
                    edge = id,
                    secret = sha,
                    version = v,
                    "secret served to edge"
                );
                return Ok(Bytes::from(pem));
            }
        }
        Err(gone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn doc(cert: &str, key: &str) -> String {
        format!(
            "[cache]\nmax_bytes = 1000000\n\n[[service]]\nname = \"a\"\nhosts = [\"a.example\"]\n[service.origin]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n[service.tls]\ncert = \"\"\"{cert}\"\"\"\nkey = \"\"\"{key}\"\"\"\n"
        )
    }

    #[test]
    fn an_expired_certificate_carried_over_from_a_stored_version_is_only_warned() {
        // A kill switch flips a stored document whose key is already a secret: an expired
        // certificate in it must not block the switch.
        let now = 1_790_000_000;
        let (old, key) = cert((2020, 1, 1), (2021, 1, 1));
        let carried = doc(&old, &key).replace(
            &format!("key = \"\"\"{key}\"\"\""),
            &format!("key_sha256 = \"{}\"", "a".repeat(64)),
        );
        assert!(!carried.contains("PRIVATE KEY"));
        let w = check_certificates("fleet.toml", &carried, now).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("carried over"), "{w:?}");
    }

    #[test]
    fn an_expired_certificate_is_refused_located_and_a_future_one_warned() {
        let now = 1_790_000_000; // 2026-09
        let (old, key) = cert((2020, 1, 1), (2021, 1, 1));
        let e = check_certificates("fleet.toml", &doc(&old, &key), now).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        let shown = e.errors[0].to_string();
        assert!(
            shown.starts_with(
                "fleet.toml:10:8: service[0].tls.cert: certificate expired at 2021-01-01T00:00:00Z"
            ),
            "{shown}"
        );
        let (future, key) = cert((2030, 1, 1), (2031, 1, 1));
        let w = check_certificates("fleet.toml", &doc(&future, &key), now).unwrap();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("not valid before 2030-01-01T00:00:00Z"),
            "{w:?}"
        );
        let (good, key) = cert((2026, 1, 1), (2027, 1, 1));
        assert!(check_certificates("fleet.toml", &doc(&good, &key), now)
            .unwrap()
            .is_empty());
    }
}
