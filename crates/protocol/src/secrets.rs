//! Secret documents: a service's TLS private key travels apart from the bundle every edge
//! downloads. The control plane moves each `[service.tls] key` out of the pushed service
//! documents into a secret document keyed by the SHA-256 of the key's PEM text, and leaves
//! `key_sha256 = "<hex>"` in its place ([`extract_keys`]); an edge fetches each secret its
//! services name ([`referenced`]), checks its hash, and puts `key` back into the text before
//! parsing ([`inline_keys`]). Everything here works on TOML text (`toml_edit`), independent of
//! the configuration's Rust types.
//!
//! Certificates are public: they stay in the bundle. Where a document is shown (API, CLI),
//! [`redact_certs`] replaces each PEM by what it says (subject, SANs, issuer, validity).

use toml_edit::{DocumentMut, Item, TableLike};

/// Largest private key (PEM text).
pub const MAX_KEY_PEM_BYTES: usize = 16 * 1024;
/// Largest certificate chain (PEM text) inspected.
pub const MAX_CERT_PEM_BYTES: usize = 64 * 1024;
/// Most secrets one document may name.
pub const MAX_SECRETS: usize = 10_000;

/// Why a document's secrets could not be moved or put back. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The text is not TOML (it was validated before; should not happen).
    #[error("document does not parse: {0}")]
    Parse(String),
    /// A `key` or `key_sha256` is not what it must be.
    #[error("service `{service}`: tls.{field}: {message}")]
    Field {
        /// The service's name (or its index when it has none).
        service: String,
        /// `key` or `key_sha256`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A secret named by a document is not available.
    #[error("secret {0} is not available")]
    Missing(String),
}

/// A private key moved out of a document. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// Lower-case hex SHA-256 of `pem`.
    pub sha256: String,
    /// The key, PEM.
    pub pem: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("sha256", &self.sha256)
            .field("pem", &"(not shown)")
            .finish()
    }
}

/// Whether `s` is 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse(text: &str) -> Result<DocumentMut, SecretError> {
    text.parse::<DocumentMut>()
        .map_err(|e| SecretError::Parse(e.message().to_owned()))
}

/// Calls `f` with each service's name and its `tls` table, whether services are written as
/// `[[service]]` tables or as an inline array, and `tls` as a table or an inline table.
fn each_tls(
    doc: &mut DocumentMut,
    mut f: impl FnMut(&str, &mut dyn TableLike) -> Result<(), SecretError>,
) -> Result<(), SecretError> {
    let Some(services) = doc.get_mut("service") else {
        return Ok(());
    };
    let mut visit = |i: usize, service: &mut dyn TableLike| -> Result<(), SecretError> {
        let name = service
            .get("name")
            .and_then(Item::as_str)
            .map_or_else(|| format!("#{i}"), str::to_owned);
        if let Some(tls) = service.get_mut("tls").and_then(Item::as_table_like_mut) {
            f(&name, tls)?;
        }
        Ok(())
    };
    match services {
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter_mut().enumerate() {
                visit(i, t)?;
            }
        }
        Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter_mut().enumerate() {
                if let Some(t) = v.as_inline_table_mut() {
                    visit(i, t)?;
                }
            }
        }
        Item::Table(t) => visit(0, t)?,
        _ => {}
    }
    Ok(())
}

fn field(service: &str, field: &'static str, message: &str) -> SecretError {
    SecretError::Field {
        service: service.to_owned(),
        field,
        message: message.to_owned(),
    }
}

/// Moves every inline `[service.tls] key` of `text` out: answers the text with
/// `key_sha256 = "<hex>"` in each key's place, and the keys. A document without keys comes
/// back unchanged (byte for byte).
pub fn extract_keys(text: &str) -> Result<(String, Vec<Secret>), SecretError> {
    let mut doc = parse(text)?;
    let mut secrets = Vec::new();
    each_tls(&mut doc, |service, tls| {
        let Some(key) = tls.remove("key") else {
            return Ok(());
        };
        let pem = key
            .as_str()
            .ok_or_else(|| field(service, "key", "must be a string (PEM)"))?;
        if pem.len() > MAX_KEY_PEM_BYTES {
            return Err(field(
                service,
                "key",
                &format!("{} bytes; at most {MAX_KEY_PEM_BYTES}", pem.len()),
            ));
        }
        if tls.contains_key("key_sha256") {
            return Err(field(
                service,
                "key_sha256",
                "give key or key_sha256, not both",
            ));
        }
        if secrets.len() >= MAX_SECRETS {
            return Err(field(service, "key", "too many keys in one document"));
        }
        let sha256 = crate::sha256_hex(pem.as_bytes());
        tls.insert("key_sha256", toml_edit::value(sha256.clone()));
        secrets.push(Secret {
            sha256,
            pem: pem.to_owned(),
        });
        Ok(())
    })?;
    if secrets.is_empty() {
        return Ok((text.to_owned(), secrets));
    }
    Ok((doc.to_string(), secrets))
}

/// The `key_sha256` values `text` names, in order, without repeats.
pub fn referenced(text: &str) -> Result<Vec<String>, SecretError> {
    let mut doc = parse(text)?;
    let mut out: Vec<String> = Vec::new();
    each_tls(&mut doc, |service, tls| {
        if let Some(item) = tls.get("key_sha256") {
            let sha = item
                .as_str()
                .filter(|s| is_sha256_hex(s))
                .ok_or_else(|| field(service, "key_sha256", "must be 64 lower-case hex digits"))?;
            if !out.iter().any(|s| s == sha) {
                if out.len() >= MAX_SECRETS {
                    return Err(field(service, "key_sha256", "too many secrets"));
                }
                out.push(sha.to_owned());
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Puts each key back: every `key_sha256 = "<hex>"` of `text` becomes `key = "<PEM>"`, the
/// PEM from `lookup` (which must answer the secret whose SHA-256 that is). A document that
/// names no secret comes back unchanged; one secret missing fails the whole document.
pub fn inline_keys(
    text: &str,
    mut lookup: impl FnMut(&str) -> Option<String>,
) -> Result<String, SecretError> {
    let mut doc = parse(text)?;
    let mut changed = false;
    each_tls(&mut doc, |service, tls| {
        let Some(item) = tls.remove("key_sha256") else {
            return Ok(());
        };
        let sha = item
            .as_str()
            .filter(|s| is_sha256_hex(s))
            .ok_or_else(|| field(service, "key_sha256", "must be 64 lower-case hex digits"))?;
        let pem = lookup(sha).ok_or_else(|| SecretError::Missing(sha.to_owned()))?;
        if crate::sha256_hex(pem.as_bytes()) != sha {
            return Err(SecretError::Missing(sha.to_owned()));
        }
        tls.insert("key", toml_edit::value(pem));
        changed = true;
        Ok(())
    })?;
    Ok(if changed {
        doc.to_string()
    } else {
        text.to_owned()
    })
}

/// What a certificate says about itself: the configuration crate's, the one inspection.
pub use firebreak_config::tls::CertInfo;

/// One line: subject, SANs, issuer, validity (RFC 3339, UTC).
pub fn summary(info: &CertInfo) -> String {
    format!(
        "subject: {}; SANs: {}; issuer: {}; valid from {} to {}",
        info.subject,
        if info.sans.is_empty() {
            "(none)".to_owned()
        } else {
            info.sans.join(", ")
        },
        info.issuer,
        rfc3339(info.not_before),
        rfc3339(info.not_after)
    )
}

/// Inspects the leaf (first certificate) of a PEM chain with `firebreak_config::tls::inspect`.
pub fn inspect(pem: &str) -> Result<CertInfo, String> {
    firebreak_config::tls::inspect(pem).map_err(|e| e.to_string())
}

/// Every `[service.tls] cert` of `text`, as (service name, PEM).
pub fn certificates(text: &str) -> Result<Vec<(String, String)>, SecretError> {
    let mut doc = parse(text)?;
    let mut out = Vec::new();
    each_tls(&mut doc, |service, tls| {
        if let Some(pem) = tls.get("cert").and_then(Item::as_str) {
            out.push((service.to_owned(), pem.to_owned()));
        }
        Ok(())
    })?;
    Ok(out)
}

/// The earliest `not_after` (seconds since the epoch) of the certificates `texts` hold.
pub fn earliest_expiry<'a>(texts: impl IntoIterator<Item = &'a str>) -> Option<i64> {
    texts
        .into_iter()
        .filter_map(|t| certificates(t).ok())
        .flatten()
        .filter_map(|(_, pem)| inspect(&pem).ok())
        .map(|c| c.not_after)
        .min()
}

/// `text` as shown to people: each `[service.tls] cert` replaced by what the certificate says
/// (subject, SANs, issuer, validity), and any inline `key` replaced by its SHA-256 (stored
/// documents hold none; this is a second guard). Text that does not parse is shown as is
/// unless it holds a private key, which is never shown.
pub fn redact_certs(text: &str) -> String {
    let Ok(mut doc) = parse(text) else {
        if text.contains("PRIVATE KEY") {
            return "# (not shown: the document holds a private key)\n".to_owned();
        }
        return text.to_owned();
    };
    let mut changed = false;
    let _ = each_tls(&mut doc, |_, tls| {
        if let Some(pem) = tls.get("cert").and_then(Item::as_str) {
            let shown = match inspect(pem) {
                Ok(info) => format!("(certificate not shown) {}", summary(&info)),
                Err(e) => format!("(certificate not shown: {e})"),
            };
            tls.insert("cert", toml_edit::value(shown));
            changed = true;
        }
        if let Some(key) = tls.remove("key") {
            let sha = key
                .as_str()
                .map(|k| crate::sha256_hex(k.as_bytes()))
                .unwrap_or_default();
            tls.insert("key_sha256", toml_edit::value(sha));
            changed = true;
        }
        Ok(())
    });
    let shown = if changed {
        doc.to_string()
    } else {
        text.to_owned()
    };
    if shown.contains("PRIVATE KEY") {
        return "# (not shown: the document holds a private key)\n".to_owned();
    }
    shown
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pair(days: i64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        let now = rcgen::date_time_ymd(2026, 1, 1);
        params.not_before = now;
        params.not_after = now + std::time::Duration::from_secs(days as u64 * 86_400);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn service(cert: &str, key: &str) -> String {
        format!(
            "[[service]]\nname = \"a\"\nhosts = [\"a.example\"]\n[service.origin]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n[service.tls]\ncert = \"\"\"{cert}\"\"\"\nkey = \"\"\"{key}\"\"\"\n"
        )
    }

    #[test]
    fn keys_move_out_and_back() {
        let (cert, key) = pair(30);
        let text = service(&cert, &key);
        let (out, secrets) = extract_keys(&text).unwrap();
        assert_eq!(secrets.len(), 1);
        assert!(!out.contains("PRIVATE KEY"), "{out}");
        assert!(out.contains(&format!("key_sha256 = \"{}\"", secrets[0].sha256)));
        assert_eq!(secrets[0].sha256, crate::sha256_hex(key.as_bytes()));
        assert!(!format!("{:?}", secrets[0]).contains("PRIVATE"));
        assert_eq!(referenced(&out).unwrap(), vec![secrets[0].sha256.clone()]);
        let back = inline_keys(&out, |_| Some(key.clone())).unwrap();
        let v: DocumentMut = back.parse().unwrap();
        assert_eq!(v["service"][0]["tls"]["key"].as_str().unwrap(), key);
        // A wrong secret is as good as none.
        assert!(matches!(
            inline_keys(&out, |_| Some("other".into())),
            Err(SecretError::Missing(_))
        ));
        assert!(inline_keys(&out, |_| None).is_err());
        // No keys: unchanged.
        let plain = "[[service]]\nname = \"b\"\n";
        assert_eq!(extract_keys(plain).unwrap().0, plain);
        assert_eq!(inline_keys(plain, |_| None).unwrap(), plain);
    }

    #[test]
    fn certificates_are_shown_by_what_they_say() {
        let (cert, key) = pair(30);
        let info = inspect(&cert).unwrap();
        assert_eq!(info.sans, vec!["a.example".to_owned()]);
        assert_eq!(rfc3339(info.not_before), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(info.not_after), "2026-01-31T00:00:00Z");
        let shown = redact_certs(&service(&cert, &key));
        assert!(!shown.contains("BEGIN"), "{shown}");
        assert!(shown.contains("SANs: a.example"), "{shown}");
        assert!(shown.contains("2026-01-31T00:00:00Z"), "{shown}");
        assert_eq!(
            earliest_expiry([service(&cert, &key).as_str()]),
            Some(info.not_after)
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
