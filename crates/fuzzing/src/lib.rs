//! Fuzz entry points: each takes arbitrary bytes, feeds them to one of Firebreak's parsers or
//! verifiers of untrusted input, and must return without panicking (some also check an
//! invariant of the result). The cargo-fuzz targets in `fuzz/fuzz_targets/` call these, and
//! `tests/corpus.rs` runs each over its corpus (`fuzz/corpus/NAME/`) and a bounded number of
//! deterministic mutations under stable `cargo test`, so CI exercises every target without a
//! nightly toolchain. Every crash found becomes a file in the corpus.
#![forbid(unsafe_code)]

use firebreak_protocol::bundle::Bundle;
use firebreak_protocol::keyring::{KeySet, KeySetStatement};
use firebreak_protocol::keys::{ControlKey, PublicKey};
use firebreak_protocol::signed::{Signed, Target as TargetStatement};
use std::sync::OnceLock;

pub use firebreak_edge::fuzzing::{cache_headers, path, request_head};

/// A fuzz target: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// Every target: its name (the corpus directory and the cargo-fuzz binary) and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_head", request_head),
    ("path", path),
    ("cache_headers", cache_headers),
    ("config", config),
    ("bundle", bundle),
    ("signed_target", signed_target),
    ("proxy_protocol", proxy_protocol),
    ("key_set", key_set),
];

/// The control-plane key the verification targets trust (made once per process).
pub fn key() -> Option<&'static ControlKey> {
    static KEY: OnceLock<Option<ControlKey>> = OnceLock::new();
    KEY.get_or_init(|| ControlKey::generate().ok()).as_ref()
}

fn public() -> Option<PublicKey> {
    key().map(ControlKey::public)
}

/// A configuration file, as a standalone edge and as a fleet document pushed to the control
/// plane: refused with located errors or accepted, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(valid) = firebreak_config::parse_str("fuzz.toml", text) {
        let _ = firebreak_edge::runtime::Runtime::build(valid, None);
    }
    let _ = firebreak_config::parse_managed_str("fuzz.toml", text);
}

/// A sealed bundle as an edge downloads it: size, format and signature checked before parsing.
pub fn bundle(data: &[u8]) {
    if let Some(key) = public() {
        if let Ok(b) = Bundle::open(data, &key) {
            let _ = b.assembled();
        }
    }
}

/// A signed target as a long-poll answers it: parsed, verified, judged.
pub fn signed_target(data: &[u8]) {
    let Some(key) = public() else {
        return;
    };
    if let Ok(signed) = serde_json::from_slice::<Signed>(data) {
        if let Ok(t) = signed.open::<TargetStatement>(&key) {
            let _ = t.addressed_to("e1", "c1");
            let _ = t.order();
        }
    }
}

/// A PROXY protocol (v1 or v2) header as a load balancer, or an attacker, sends it.
pub fn proxy_protocol(data: &[u8]) {
    let _ = firebreak_protocol::serve::proxy_protocol::parse(data);
}

/// A signed key-set statement (key rotation) as an edge fetches it.
pub fn key_set(data: &[u8]) {
    let Some(key) = public() else {
        return;
    };
    if let Ok(statement) = serde_json::from_slice::<KeySetStatement>(data) {
        let _ = KeySet::trusting(key).accept(&statement);
    }
}
