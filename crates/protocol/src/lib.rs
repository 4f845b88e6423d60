//! The Firebreak control protocol: what travels between the control plane and the edges.
//!
//! - [`keys`]: the control plane's ed25519 signing key and the public key edges trust.
//! - [`bundle`]: one configuration version as a signed, size-bounded bundle.
//! - [`signed`]: small signed statements (the target version).
//! - [`document`]: splitting a configuration file into the fleet document and one document per
//!   service, and assembling them again, so that each service can be applied on its own.
//! - [`api`]: the JSON bodies of the control plane's HTTP API.
//!
//! Everything an edge receives is hostile until verified: sizes are checked before parsing,
//! signatures before trusting, and every failure is a typed error.

pub mod api;
pub mod bundle;
pub mod document;
pub mod keys;
pub mod signed;

/// Milliseconds since the Unix epoch, now. Zero if the clock is before 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
