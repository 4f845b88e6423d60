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

pub use firebreak_edge::fuzzing::{cache_headers, disk_object, path, request_head};

/// A fuzz target: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// Every target: its name (the corpus directory and the cargo-fuzz binary) and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_head", request_head),
    ("path", path),
    ("cache_headers", cache_headers),
    ("disk_object", disk_object),
    ("config", config),
    ("bundle", bundle),
    ("signed_target", signed_target),
    ("proxy_protocol", proxy_protocol),
    ("key_set", key_set),
    ("dns_query", dns_query),
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

/// The zone the DNS target answers from: services steered by region (one by ECS prefix), a
/// fallback CNAME, name servers with glue, an answer too big for 512 bytes.
const DNS_FLEET: &str = r#"
[dns]
zone = "cdn.example"
default_region = "eu"
[[dns.ns]]
name = "ns1.cdn.example"
addrs = ["192.0.2.53", "2001:db8::53"]
[[dns.ns]]
name = "ns.other.example"
[[dns.pop]]
name = "ams"
answers = ["192.0.2.10", "2001:db8::10"]
[[dns.pop]]
name = "nyc"
answers = ["198.51.100.10", "2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::3", "2001:db8:1::4", "2001:db8:1::5", "2001:db8:1::6", "2001:db8:1::7", "2001:db8:1::8", "2001:db8:1::9", "2001:db8:1::a", "2001:db8:1::b", "2001:db8:1::c", "2001:db8:1::d", "2001:db8:1::e", "2001:db8:1::f"]
[[dns.region]]
name = "eu"
pops = ["ams", "nyc"]
[[dns.region]]
name = "us"
prefixes = ["203.0.113.0/24", "2001:db8:ff::/48"]
pops = ["nyc", "ams"]
[[service]]
name = "demo"
hosts = ["demo.test"]
[service.origin]
servers = [{ addr = "127.0.0.1:9" }]
[service.dns]
name = "demo"
[[service]]
name = "big"
hosts = ["big.test"]
[service.origin]
servers = [{ addr = "127.0.0.1:9" }]
[service.dns]
name = "truncation-test-answers-of-sixteen-aaaax"
pops = ["nyc"]
[[service]]
name = "gone"
hosts = ["gone.test"]
[service.origin]
servers = [{ addr = "127.0.0.1:9" }]
[service.dns]
name = "a.gone"
pops = ["nyc"]
fallback_cname = "gone.backup.example"
"#;

fn dns_zone() -> Option<&'static firebreak_dns::Zone> {
    static ZONE: OnceLock<Option<firebreak_dns::Zone>> = OnceLock::new();
    ZONE.get_or_init(|| {
        let valid = firebreak_config::parse_managed_str("fuzz.toml", DNS_FLEET).ok()?;
        let health = firebreak_dns::Health::new();
        let steering = firebreak_dns::Steering::compile(valid.get(), 1, None, &health).ok()?;
        Some(firebreak_dns::Zone::new(steering))
    })
    .as_ref()
}

/// A DNS query as a client sends it, over UDP and TCP: never a panic, and every response
/// has the query's id, is a response, parses as a DNS message, and over UDP fits 1232 bytes
/// (512 unless the query had an OPT).
pub fn dns_query(data: &[u8]) {
    use firebreak_dns::{answer, Outcome, Transport};
    let Some(zone) = dns_zone() else {
        return;
    };
    let mut out = Vec::with_capacity(65_535);
    let src = std::net::IpAddr::from([203, 0, 113, 7]);
    for transport in [Transport::Udp, Transport::Tcp] {
        let outcome = answer(zone, data, src, transport, &mut out);
        let Outcome::Reply(_) = outcome else {
            assert!(out.is_empty(), "a dropped query left bytes in the buffer");
            continue;
        };
        assert_eq!(
            out.get(..2),
            data.get(..2),
            "the response has the query's id"
        );
        assert!(out.get(2).is_some_and(|b| b & 0x80 != 0), "QR is set");
        let parsed = hickory_proto::op::Message::from_vec(&out);
        assert!(parsed.is_ok(), "unparsable response {parsed:?}: {out:02x?}");
        if transport == Transport::Udp {
            assert!(out.len() <= 1232, "UDP response of {} bytes", out.len());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_dns_target_has_its_zone() {
        // Without it the target would accept every input without looking at it.
        assert!(super::dns_zone().is_some());
    }
}
