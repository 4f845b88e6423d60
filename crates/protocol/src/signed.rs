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
/// so a target signed for the canary cell cannot be replayed to the rest of the fleet. Targets
/// are ordered by `(epoch, seq)` ([`Target::order`]), never by version: `seq` increases with
/// every change of any target and `epoch` names the store's history, so a rollback is simply a
/// newer target and a replay of an old statement is older than what an edge verified.
/// `expires_at_ms` bounds how long a statement may be used by an edge that has nothing yet:
/// the control plane signs the current target afresh before it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The store's history (the fleet state's epoch); orders before `seq`.
    #[serde(default)]
    pub epoch: u64,
    /// Increases by one with every target change.
    pub seq: u64,
    /// When this signature stops being fresh (ms since the Unix epoch). A fresh edge refuses
    /// an expired target; a serving edge keeps serving and reports itself stale. 0 (a
    /// statement signed before expiries existed) is expired.
    #[serde(default)]
    pub expires_at_ms: u64,
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
    /// The statement's place in the fleet's history: later decisions compare greater.
    pub fn order(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }

    /// Whether the statement's freshness bound has passed at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }

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
/// Header naming the edge a signed request is for (its id).
pub const AUDIENCE_HEADER: &str = "x-firebreak-audience";
/// Header carrying a signed request's random nonce (hex); an edge accepts each nonce once.
pub const NONCE_HEADER: &str = "x-firebreak-nonce";
/// Header carrying the time a signed request expires, in ms since the epoch.
pub const EXPIRES_HEADER: &str = "x-firebreak-expires-at";
/// Longest life of a signed admin request: edges refuse a request that expires later than this
/// after their clock's now, so a captured request is useless a minute later at most.
pub const MAX_REQUEST_LIFE_MS: u64 = 60_000;
/// Longest nonce accepted (hex characters).
pub const MAX_NONCE_LEN: usize = 64;

/// A signed admin request's authorisation, as carried in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth {
    /// The edge id it is for.
    pub audience: String,
    /// Random, hex; used once.
    pub nonce: String,
    /// When it expires (ms since the epoch).
    pub expires_at_ms: u64,
    /// Base64 ed25519 signature.
    pub signature: String,
}

/// Why a signed admin request (or a target) was refused; the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The signature does not verify (or is malformed).
    #[error("signature does not verify")]
    Signature,
    /// Addressed to another edge.
    #[error("addressed to another edge")]
    Audience,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// Expires further ahead than [`MAX_REQUEST_LIFE_MS`].
    #[error("expiry too far ahead")]
    TooLong,
    /// Its nonce was seen before.
    #[error("replayed (nonce seen before)")]
    Replay,
    /// Too many requests in flight to remember their nonces.
    #[error("too many signed requests to remember")]
    Busy,
    /// Older than a statement already verified.
    #[error("older than the newest verified")]
    Older,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Signature => "signature",
            Refusal::Audience => "audience",
            Refusal::Expired => "expired",
            Refusal::TooLong => "too_long",
            Refusal::Replay => "replay",
            Refusal::Busy => "busy",
            Refusal::Older => "older",
        }
    }
}

fn request_message(method: &str, path_and_query: &str, auth: &RequestAuth) -> Vec<u8> {
    format!(
        "firebreak-admin-v2\n{method}\n{path_and_query}\n{}\n{}\n{}",
        auth.audience, auth.nonce, auth.expires_at_ms
    )
    .into_bytes()
}

/// A random nonce (32 hex characters); `None` when the OS has no randomness.
pub fn random_nonce() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Signs an admin request (method and path with query) for the edge `audience`, valid until
/// `expires_at_ms`, with a fresh random nonce.
pub fn sign_request<S: Sign + ?Sized>(
    key: &S,
    method: &str,
    path_and_query: &str,
    audience: &str,
    expires_at_ms: u64,
) -> Result<RequestAuth, StatementError> {
    let nonce = random_nonce().ok_or_else(|| StatementError::Malformed("no randomness".into()))?;
    let mut auth = RequestAuth {
        audience: audience.to_owned(),
        nonce,
        expires_at_ms,
        signature: String::new(),
    };
    let (id, sig) = key.sign_message(&request_message(method, path_and_query, &auth));
    auth.signature = signature_text(id, &sig);
    Ok(auth)
}

/// Checks an admin request's signature, that it is addressed to `me`, and that it has not
/// expired and does not live longer than [`MAX_REQUEST_LIFE_MS`] from `now_ms`. With a key
/// set, the key must be good now and not revoked. Replays are the caller's to refuse (it
/// remembers nonces until their expiry).
pub fn verify_request<K: Verify + ?Sized>(
    key: &K,
    method: &str,
    path_and_query: &str,
    auth: &RequestAuth,
    me: &str,
    now_ms: u64,
) -> Result<(), Refusal> {
    if auth.signature.len() > 128
        || auth.nonce.is_empty()
        || auth.nonce.len() > MAX_NONCE_LEN
        || auth.audience.len() > 256
    {
        return Err(Refusal::Signature);
    }
    let (id, sig) = parse_signature_text(&auth.signature).map_err(|_| Refusal::Signature)?;
    key.verify_signed(
        id,
        &request_message(method, path_and_query, auth),
        &sig,
        Signs::Request,
    )
    .map_err(|_| Refusal::Signature)?
    .admit(now_ms)
    .map_err(|_| Refusal::Signature)?;
    if auth.audience != me {
        return Err(Refusal::Audience);
    }
    if now_ms >= auth.expires_at_ms {
        return Err(Refusal::Expired);
    }
    if auth.expires_at_ms - now_ms > MAX_REQUEST_LIFE_MS {
        return Err(Refusal::TooLong);
    }
    Ok(())
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
            epoch: 7,
            seq: 1,
            expires_at_ms: 100,
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
    fn request_signatures_bind_method_path_audience_and_expiry() {
        let key = ControlKey::generate().unwrap();
        let p = key.public();
        let now = 1_000_000;
        let auth = sign_request(&key, "POST", "/purge/all?service=a", "e1", now + 30_000).unwrap();
        assert_eq!(
            verify_request(&p, "POST", "/purge/all?service=a", &auth, "e1", now),
            Ok(())
        );
        let other = sign_request(&key, "POST", "/purge/all?service=a", "e1", now + 30_000).unwrap();
        assert_ne!(auth.nonce, other.nonce, "nonces are random");
        assert_eq!(
            verify_request(&p, "POST", "/purge/all?service=b", &auth, "e1", now),
            Err(Refusal::Signature)
        );
        assert_eq!(
            verify_request(&p, "GET", "/purge/all?service=a", &auth, "e1", now),
            Err(Refusal::Signature)
        );
        assert_eq!(
            verify_request(&p, "POST", "/purge/all?service=a", &auth, "e2", now),
            Err(Refusal::Audience)
        );
        assert_eq!(
            verify_request(
                &p,
                "POST",
                "/purge/all?service=a",
                &auth,
                "e1",
                now + 30_000
            ),
            Err(Refusal::Expired)
        );
        let mut moved = auth.clone();
        moved.audience = "e2".into();
        assert_eq!(
            verify_request(&p, "POST", "/purge/all?service=a", &moved, "e2", now),
            Err(Refusal::Signature),
            "the audience is signed"
        );
        let long = sign_request(&key, "POST", "/purge/all", "e1", now + 3_600_000).unwrap();
        assert_eq!(
            verify_request(&p, "POST", "/purge/all", &long, "e1", now),
            Err(Refusal::TooLong)
        );
    }

    #[test]
    fn targets_order_by_epoch_then_seq_never_version() {
        let t = |epoch, seq, version| Target {
            epoch,
            seq,
            expires_at_ms: 10,
            audience: EVERYONE.into(),
            version,
            bundle_sha256: String::new(),
            rollback: false,
            stage: None,
            rollout: None,
            set_at_ms: 0,
            set_by: String::new(),
        };
        assert!(
            t(1, 5, 1).order() > t(1, 4, 9).order(),
            "a rollback is newer"
        );
        assert!(
            t(2, 1, 1).order() > t(1, 99, 9).order(),
            "a new history is newer"
        );
        assert!(t(1, 5, 1).expired(10));
        assert!(!t(1, 5, 1).expired(9));
        // A statement without an expiry (signed before expiries existed) is expired.
        let old: Target = serde_json::from_str(
            r#"{"seq":1,"audience":"*","version":1,"bundle_sha256":"x","rollback":false,"set_at_ms":0,"set_by":"a"}"#,
        )
        .unwrap();
        assert!(old.expired(1));
    }
}
