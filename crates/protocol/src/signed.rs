//! Small signed statements: the target version an edge should run, and the authorisation of
//! a control-plane request to an edge's admin listener (purge fan-out).

use crate::keyring::{
    parse_signature_text, signature_text, statement_time, KeyRefused, Sign, Signs, Verify,
};
use serde::{Deserialize, Serialize};

/// Largest signed statement accepted.
pub const MAX_STATEMENT_BYTES: usize = 16 * 1024;

/// The version an edge should run. Each statement names its audience: every edge (`*`), one
/// cell (`cell:NAME`) or one edge (`edge:ID`), and edges refuse statements addressed to others,
/// so a target signed for the canary cell cannot be replayed to the rest of the fleet. `seq`
/// increases with every change of any target, so that edges can tell a newer decision from an
/// older one even when a rollback lowers `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Increases by one with every target change.
    pub seq: u64,
    /// Who this statement is for: `*`, `cell:NAME` or `edge:ID`.
    pub audience: String,
    /// The configuration version to run.
    pub version: u64,
    /// SHA-256 of that version's sealed bundle.
    pub bundle_sha256: String,
    /// Whether going to an older version is intended. Edges refuse to go back otherwise.
    pub rollback: bool,
    /// A version to download, verify and build now without serving it (a rollout's stage
    /// phase); the edge reports whether it could.
    #[serde(default)]
    pub stage: Option<Stage>,
    /// The rollout this statement belongs to, if any.
    #[serde(default)]
    pub rollout: Option<u64>,
    /// When it was set, in ms since the Unix epoch.
    pub set_at_ms: u64,
    /// Who set it.
    pub set_by: String,
}

/// A version to prepare without serving it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The version.
    pub version: u64,
    /// SHA-256 of its sealed bundle.
    pub bundle_sha256: String,
}

/// The audience of statements for every edge.
pub const EVERYONE: &str = "*";

/// The audience naming one cell.
pub fn cell_audience(cell: &str) -> String {
    format!("cell:{cell}")
}

/// The audience naming one edge.
pub fn edge_audience(id: &str) -> String {
    format!("edge:{id}")
}

impl Target {
    /// Whether this statement is addressed to the edge `id` in `cell`.
    pub fn addressed_to(&self, id: &str, cell: &str) -> bool {
        match self.audience.split_once(':') {
            None => self.audience == EVERYONE,
            Some(("cell", c)) => c == cell,
            Some(("edge", e)) => e == id,
            Some(_) => false,
        }
    }
}

/// A statement and its signature, as sent over the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The JSON text of the statement; parsed only after the signature verified.
    pub payload: String,
    /// Base64 ed25519 signature over `payload`.
    pub signature: String,
}

/// Why a signed statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    /// Larger than [`MAX_STATEMENT_BYTES`].
    #[error("signed statement too large")]
    TooLarge,
    /// The signature does not verify.
    #[error("signature does not verify with the trusted control-plane key")]
    BadSignature,
    /// Signed by a key not trusted for it (unknown, revoked, or outside its times).
    #[error(transparent)]
    Key(KeyRefused),
    /// Verified but not parseable.
    #[error("malformed statement: {0}")]
    Malformed(String),
}

impl From<KeyRefused> for StatementError {
    fn from(e: KeyRefused) -> Self {
        match e {
            KeyRefused::BadSignature => Self::BadSignature,
            other => Self::Key(other),
        }
    }
}

impl Signed {
    /// Serialises and signs `value`; the signature names the key (`KEYID:BASE64`).
    pub fn sign<T: Serialize>(
        value: &T,
        key: &(impl Sign + ?Sized),
    ) -> Result<Self, StatementError> {
        let payload =
            serde_json::to_string(value).map_err(|e| StatementError::Malformed(e.to_string()))?;
        let (id, sig) = key.sign_message(payload.as_bytes());
        Ok(Self {
            payload,
            signature: signature_text(id, &sig),
        })
    }

    /// Verifies (with one trusted key or a key set), then parses. A key trusted only for some
    /// signing times is checked against the payload's `set_at_ms` / `signed_at_ms`.
    pub fn open<T: for<'de> Deserialize<'de>>(
        &self,
        key: &(impl Verify + ?Sized),
    ) -> Result<T, StatementError> {
        if self.payload.len() > MAX_STATEMENT_BYTES || self.signature.len() > 128 {
            return Err(StatementError::TooLarge);
        }
        let (id, sig) = parse_signature_text(&self.signature)?;
        let window = key.verify_signed(id, self.payload.as_bytes(), &sig, Signs::Statement)?;
        let value = serde_json::from_str(&self.payload)
            .map_err(|e| StatementError::Malformed(e.to_string()))?;
        if window.is_bounded() {
            let at = statement_time(&self.payload).ok_or(KeyRefused::NoTime(window.key))?;
            window.admit(at)?;
        }
        Ok(value)
    }
}

/// Header carrying a control-plane request signature to an edge's admin listener.
pub const SIGNATURE_HEADER: &str = "x-firebreak-signature";
/// Header carrying the time the control plane signed the request, in ms since the epoch.
pub const SIGNED_AT_HEADER: &str = "x-firebreak-signed-at";
/// How far a signed admin request's time may be from the edge's clock.
pub const MAX_REQUEST_SKEW_MS: u64 = 60_000;

fn request_message(method: &str, path_and_query: &str, signed_at_ms: u64) -> Vec<u8> {
    format!("firebreak-admin\n{method}\n{path_and_query}\n{signed_at_ms}").into_bytes()
}

/// Signs an admin request (method and path with query) made by the control plane.
pub fn sign_request<S: Sign + ?Sized>(
    key: &S,
    method: &str,
    path_and_query: &str,
    signed_at_ms: u64,
) -> String {
    let (id, sig) = key.sign_message(&request_message(method, path_and_query, signed_at_ms));
    signature_text(id, &sig)
}

/// Checks an admin request's signature (with one trusted key or a key set: the key must be
/// good at `signed_at_ms` and not revoked) and that it was signed within
/// [`MAX_REQUEST_SKEW_MS`] of `now_ms`.
pub fn verify_request<K: Verify + ?Sized>(
    key: &K,
    method: &str,
    path_and_query: &str,
    signed_at_ms: u64,
    signature: &str,
    now_ms: u64,
) -> bool {
    if now_ms.abs_diff(signed_at_ms) > MAX_REQUEST_SKEW_MS || signature.len() > 128 {
        return false;
    }
    let Ok((id, sig)) = parse_signature_text(signature) else {
        return false;
    };
    key.verify_signed(
        id,
        &request_message(method, path_and_query, signed_at_ms),
        &sig,
        Signs::Request,
    )
    .is_ok_and(|w| w.admit(signed_at_ms).is_ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::ControlKey;

    #[test]
    fn target_round_trip_and_tamper() {
        let key = ControlKey::generate().unwrap();
        let t = Target {
            seq: 1,
            audience: cell_audience("c1"),
            version: 2,
            bundle_sha256: "x".into(),
            rollback: false,
            set_at_ms: 3,
            set_by: "me".into(),
            stage: None,
            rollout: None,
        };
        assert!(t.addressed_to("e1", "c1"));
        assert!(!t.addressed_to("e1", "c2"));
        assert!(!t.addressed_to("c1", "c2"));
        let s = Signed::sign(&t, &key).unwrap();
        assert_eq!(s.open::<Target>(&key.public()).unwrap(), t);
        let mut bad = s.clone();
        bad.payload = bad.payload.replace("\"version\":2", "\"version\":1");
        assert_eq!(
            bad.open::<Target>(&key.public()),
            Err(StatementError::BadSignature)
        );
    }

    #[test]
    fn request_signatures_bind_method_path_and_time() {
        let key = ControlKey::generate().unwrap();
        let p = key.public();
        let sig = sign_request(&key, "POST", "/purge/all?service=a", 1_000_000);
        assert!(verify_request(
            &p,
            "POST",
            "/purge/all?service=a",
            1_000_000,
            &sig,
            1_000_500
        ));
        assert!(!verify_request(
            &p,
            "POST",
            "/purge/all?service=b",
            1_000_000,
            &sig,
            1_000_500
        ));
        assert!(!verify_request(
            &p,
            "GET",
            "/purge/all?service=a",
            1_000_000,
            &sig,
            1_000_500
        ));
        assert!(!verify_request(
            &p,
            "POST",
            "/purge/all?service=a",
            1_000_000,
            &sig,
            2_000_000
        ));
    }
}
