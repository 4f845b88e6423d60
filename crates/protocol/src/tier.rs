//! The tier credential: what an edge puts on a request it sends to another edge (an origin
//! shield) so that the receiving edge can tell a tier request from a client's.
//!
//! One job only: the per-fleet **tier secret** (32 random bytes the control plane generates,
//! given over the authenticated edge channel to HTTP edges only, never to DNS members, and
//! never an edge's own join credential) keys an HMAC-SHA256 over the request's method,
//! authority, path-and-query and an expiry at most [`MAX_TIER_CREDENTIAL_S`] ahead. It rides
//! in one header, [`TIER_HEADER`]: `<expires_at_s>.<hex mac>`. A captured credential can only
//! repeat the same GET of the same object for under a minute.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The request header carrying the credential.
pub const TIER_HEADER: &str = "x-firebreak-tier";
/// Longest a credential may be valid ahead of the receiving edge's clock, in seconds.
pub const MAX_TIER_CREDENTIAL_S: u64 = 60;
/// Lifetime given to the credentials an edge signs (leaves room for clock skew below
/// [`MAX_TIER_CREDENTIAL_S`]).
pub const TIER_CREDENTIAL_S: u64 = 30;
/// Length of a tier secret in bytes.
pub const TIER_SECRET_BYTES: usize = 32;
/// Longest header value accepted (an expiry of up to 20 digits, a dot, 64 hex digits).
const MAX_HEADER_LEN: usize = 20 + 1 + 64;
/// SHA-256's block size, for HMAC.
const BLOCK: usize = 64;

/// A tier secret: the HMAC key. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct TierSecret([u8; TIER_SECRET_BYTES]);

impl std::fmt::Debug for TierSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TierSecret(..)")
    }
}

/// Why a credential was refused (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierRefusal {
    /// Not `<digits>.<64 hex digits>`.
    Malformed,
    /// The expiry has passed.
    Expired,
    /// The expiry is further ahead than [`MAX_TIER_CREDENTIAL_S`].
    TooLong,
    /// The MAC does not match (forged, another fleet's, or for another request).
    BadMac,
    /// This edge holds no tier secret, so it cannot check any.
    NoSecret,
}

impl TierRefusal {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::TooLong => "too_long",
            Self::BadMac => "bad_mac",
            Self::NoSecret => "no_secret",
        }
    }
}

impl TierSecret {
    /// A new random secret (the control plane's; a standalone operator's via `firebreak`).
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TIER_SECRET_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The secret as lower-case hex, as it travels and is kept.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses the hex form: exactly [`TIER_SECRET_BYTES`] bytes.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() != TIER_SECRET_BYTES * 2 {
            return Err(format!(
                "a tier secret is {} hex digits, got {}",
                TIER_SECRET_BYTES * 2,
                s.len()
            ));
        }
        let mut out = [0u8; TIER_SECRET_BYTES];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let (Some(hi), Some(lo)) = (
                pair.first().and_then(|b| hex_value(*b)),
                pair.get(1).and_then(|b| hex_value(*b)),
            ) else {
                return Err("a tier secret is hex digits only".into());
            };
            if let Some(slot) = out.get_mut(i) {
                *slot = (hi << 4) | lo;
            }
        }
        Ok(Self(out))
    }

    /// The header value for a request, valid until `expires_at_s` (seconds since the epoch).
    pub fn sign(&self, method: &str, authority: &str, path: &str, expires_at_s: u64) -> String {
        let mac = self.mac(method, authority, path, expires_at_s);
        format!("{expires_at_s}.{}", hex(&mac))
    }

    /// Checks a header value against the request it came with, at `now_s`.
    pub fn verify(
        &self,
        value: &[u8],
        method: &str,
        authority: &str,
        path: &str,
        now_s: u64,
    ) -> Result<(), TierRefusal> {
        let (expires, mac) = parse(value)?;
        if expires < now_s {
            return Err(TierRefusal::Expired);
        }
        if expires > now_s.saturating_add(MAX_TIER_CREDENTIAL_S) {
            return Err(TierRefusal::TooLong);
        }
        let want = self.mac(method, authority, path, expires);
        if bool::from(want.as_slice().ct_eq(mac.as_slice())) {
            Ok(())
        } else {
            Err(TierRefusal::BadMac)
        }
    }

    /// The MAC of a request: the fields, each length-prefixed so that no two requests share
    /// an input, after a domain label.
    fn mac(&self, method: &str, authority: &str, path: &str, expires_at_s: u64) -> [u8; 32] {
        let mut input = Vec::with_capacity(64 + method.len() + authority.len() + path.len());
        input.extend_from_slice(b"firebreak-tier-v1");
        for field in [method.as_bytes(), authority.as_bytes(), path.as_bytes()] {
            input.extend_from_slice(&(field.len() as u64).to_be_bytes());
            input.extend_from_slice(field);
        }
        input.extend_from_slice(&expires_at_s.to_be_bytes());
        hmac_sha256(&self.0, &input)
    }
}

/// HMAC-SHA256 (RFC 2104) with a key of at most one block (64 bytes; longer keys are hashed
/// first, as the RFC says).
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        let digest = Sha256::digest(key);
        if let Some(head) = block.get_mut(..digest.len()) {
            head.copy_from_slice(&digest);
        }
    } else if let Some(head) = block.get_mut(..key.len()) {
        head.copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// Splits `<expires>.<hex mac>`.
fn parse(value: &[u8]) -> Result<(u64, [u8; 32]), TierRefusal> {
    if value.len() > MAX_HEADER_LEN {
        return Err(TierRefusal::Malformed);
    }
    let text = std::str::from_utf8(value).map_err(|_| TierRefusal::Malformed)?;
    let (expires, mac) = text.split_once('.').ok_or(TierRefusal::Malformed)?;
    if expires.is_empty() || !expires.bytes().all(|b| b.is_ascii_digit()) || mac.len() != 64 {
        return Err(TierRefusal::Malformed);
    }
    let expires: u64 = expires.parse().map_err(|_| TierRefusal::Malformed)?;
    let mut out = [0u8; 32];
    for (i, pair) in mac.as_bytes().chunks(2).enumerate() {
        let (Some(hi), Some(lo)) = (
            pair.first().and_then(|b| hex_value(*b)),
            pair.get(1).and_then(|b| hex_value(*b)),
        ) else {
            return Err(TierRefusal::Malformed);
        };
        if let Some(slot) = out.get_mut(i) {
            *slot = (hi << 4) | lo;
        }
    }
    Ok((expires, out))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Seconds since the Unix epoch, now.
pub fn now_s() -> u64 {
    crate::now_ms() / 1000
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_and_nothing_else_does() {
        let s = TierSecret::generate().unwrap();
        let now = 1_700_000_000;
        let v = s.sign("GET", "example.com", "/a?b", now + 30);
        assert_eq!(
            s.verify(v.as_bytes(), "GET", "example.com", "/a?b", now),
            Ok(())
        );
        for (m, a, p) in [
            ("HEAD", "example.com", "/a?b"),
            ("GET", "example.org", "/a?b"),
            ("GET", "example.com", "/a?c"),
        ] {
            assert_eq!(
                s.verify(v.as_bytes(), m, a, p, now),
                Err(TierRefusal::BadMac)
            );
        }
        let other = TierSecret::generate().unwrap();
        assert_eq!(
            other.verify(v.as_bytes(), "GET", "example.com", "/a?b", now),
            Err(TierRefusal::BadMac)
        );
        assert_eq!(
            s.verify(v.as_bytes(), "GET", "example.com", "/a?b", now + 31),
            Err(TierRefusal::Expired)
        );
        let long = s.sign("GET", "example.com", "/a?b", now + 61);
        assert_eq!(
            s.verify(long.as_bytes(), "GET", "example.com", "/a?b", now),
            Err(TierRefusal::TooLong)
        );
        for bad in ["", "x", "1.", ".ab", "12.zz", "1.abc", "-1.00"] {
            assert_eq!(
                s.verify(bad.as_bytes(), "GET", "example.com", "/", now),
                Err(TierRefusal::Malformed),
                "{bad}"
            );
        }
        // A field boundary moved is another input.
        let v = s.sign("GET", "ab", "/c", now + 10);
        assert_eq!(
            s.verify(v.as_bytes(), "GET", "a", "b/c", now),
            Err(TierRefusal::BadMac)
        );
    }

    #[test]
    fn hex_round_trip() {
        let s = TierSecret::generate().unwrap();
        assert_eq!(TierSecret::from_hex(&s.to_hex()).unwrap(), s);
        assert!(TierSecret::from_hex("ab").is_err());
        assert!(TierSecret::from_hex(&"g".repeat(64)).is_err());
        assert_eq!(format!("{s:?}"), "TierSecret(..)");
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 and test case 6 (a key longer than a block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
