//! The Firebreak control protocol: what travels between the control plane and the edges.
//!
//! - [`keys`]: the control plane's ed25519 signing key and the public key edges trust.
//! - [`keyring`]: key ids, key sets, rotation and revocation; what signs and what verifies.
//! - [`bundle`]: one configuration version as a signed, size-bounded bundle.
//! - [`signed`]: small signed statements (the target version).
//! - [`document`]: splitting a configuration file into the fleet document and one document per
//!   service, and assembling them again, so that each service can be applied on its own.
//! - [`health`]: per-version, per-service request counts that rollout gates judge.
//! - [`secrets`]: private keys moved out of service documents into secret documents, put back
//!   on the edge; certificates shown by what they say.
//! - [`api`]: the JSON bodies of the control plane's HTTP API.
//! - [`client`]: the one HTTP client wrapper (CLI, edge agent, purge fan-out).
//! - [`serve`]: the one serve loop (accept to close, every wait bounded) of the edge's
//!   listeners, the control plane's API and the demo origin.
//!
//! Everything an edge receives is hostile until verified: sizes are checked before parsing,
//! signatures before trusting, and every failure is a typed error.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod api;
pub mod binary;
pub mod bundle;
pub mod client;
pub mod document;
pub mod durable;
pub mod health;
pub mod keyring;
pub mod keys;
pub mod secrets;
pub mod serve;
pub mod signed;
pub mod tier;
pub mod tls;

/// Milliseconds since the Unix epoch, now. Zero if the clock is before 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Compares two secrets in time that depends neither on where they first differ nor on
/// their lengths: both are hashed (SHA-256) and the digests compared with `subtle`'s
/// constant-time equality, which the optimiser cannot turn into an early exit.
pub fn same_secret(a: &str, b: &str) -> bool {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    let (da, db) = (
        sha2::Sha256::digest(a.as_bytes()),
        sha2::Sha256::digest(b.as_bytes()),
    );
    bool::from(da.as_slice().ct_eq(db.as_slice()))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod hostile_input {
    use crate::bundle::Bundle;
    use crate::keys::ControlKey;
    use crate::signed::{Signed, Target};
    use proptest::prelude::*;

    #[test]
    fn same_secret_compares_whole_secrets_of_any_length() {
        let token = "0123456789abcdef0123456789abcdef";
        assert!(crate::same_secret(token, token));
        for wrong in [
            "",
            "0",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdeF",
            "0123456789abcdef0123456789abcdef0",
            "x123456789abcdef0123456789abcdef",
        ] {
            assert!(!crate::same_secret(wrong, token), "{wrong:?}");
            assert!(!crate::same_secret(token, wrong), "{wrong:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Two secrets compare equal exactly when they are equal.
        #[test]
        fn same_secret_is_equality(a in ".{0,40}", b in ".{0,40}") {
            prop_assert_eq!(crate::same_secret(&a, &b), a == b);
            prop_assert!(crate::same_secret(&a, &a));
        }

        /// Arbitrary bytes, and arbitrary bytes behind a valid magic, never verify and never panic.
        #[test]
        fn arbitrary_bundles_are_refused(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let key = ControlKey::generate().unwrap().public();
            prop_assert!(Bundle::open(&body, &key).is_err());
            let mut framed = b"FBB1".to_vec();
            framed.extend_from_slice(&body);
            prop_assert!(Bundle::open(&framed, &key).is_err());
        }

        /// Arbitrary statements never verify and never panic.
        #[test]
        fn arbitrary_statements_are_refused(payload in ".{0,300}", signature in ".{0,200}") {
            let key = ControlKey::generate().unwrap().public();
            let statement = Signed { payload, signature };
            prop_assert!(statement.open::<Target>(&key).is_err());
        }

        /// Splitting arbitrary text returns a result, never a panic.
        #[test]
        fn splitting_arbitrary_text_never_panics(text in "(\\[\\[service\\]\\]\n|name = \"[a-z]{0,3}\"\n|[a-z =\\[\\]\"{},.0-9\n]{0,40}){0,12}") {
            let _ = crate::document::split(&text);
        }
    }
}
