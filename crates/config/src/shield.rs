//! Origin shield (tiered caching): a service names a POP whose edges are asked before its
//! origin (`[service.shield]`), and a standalone edge names its own POP, the tier secret and
//! the shield POPs' edges itself (`[tier]`; under a control plane those come from it).
//!
//! ```toml
//! [[service]]
//! name = "demo"
//! [service.shield]
//! pop = "pa"          # edges of other POPs send this service's misses to pa's edges
//! ```
//!
//! Loops cannot be written: a service has one shield POP, the shield POP's own edges go to
//! the origin, and a request that arrives with a valid tier credential is never forwarded to
//! another tier. Validation refuses a shield POP the fleet's `[[dns.pop]]` list does not name
//! (when the fleet document has one), and a `[tier]` section in a fleet document (it is per
//! edge).

use crate::limits::MAX_DNS_POPS;
use crate::locate::PathSeg::{self, Index, Key};
use crate::model::Config;
use crate::validate::{Checker, Mode};
use serde::Deserialize;
use std::collections::HashSet;

/// Most edges listed for one shield POP in a standalone `[tier]` section.
pub const MAX_SHIELD_EDGES: usize = 64;
/// Longest POP name: one DNS label.
pub const MAX_POP_NAME_LEN: usize = 63;

/// A service's shield (`[service.shield]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShieldConfig {
    /// The shield POP's name (as its edges are started with `firebreak edge --pop NAME`).
    pub pop: String,
}

/// A standalone edge's own tier settings (`[tier]`). Refused in a fleet document: under a
/// control plane each edge knows its POP from `--pop`, gets the tier secret over its
/// authenticated channel and learns the shield POPs' edges from `GET /v1/pops`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// This edge's POP: a service whose shield is this POP is fetched from the origin here.
    #[serde(default)]
    pub pop: Option<String>,
    /// The fleet's tier secret, 64 hex digits (`firebreak tier-secret` prints one), shared by
    /// the edges that send and receive tier requests.
    #[serde(default)]
    pub secret: Option<String>,
    /// The shield POPs' edges (`[[tier.shield]]`), this edge's own POP's included when it is
    /// a shield (each object has one home among them).
    #[serde(default, rename = "shield")]
    pub shields: Vec<ShieldMembersConfig>,
}

/// The client listeners of one shield POP's edges.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShieldMembersConfig {
    /// The POP.
    pub pop: String,
    /// Its edges' client listeners, `host:port` (plain HTTP).
    pub edges: Vec<String>,
}

/// A POP name: one DNS label (lowercase letters, digits, '-', not at either end).
pub fn valid_pop_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_POP_NAME_LEN
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn pop_problem(name: &str) -> String {
    format!("`{name}` is not a POP name: one DNS label (1 to {MAX_POP_NAME_LEN} of a-z, 0-9, '-', not at either end)")
}

pub(crate) fn check(c: &mut Checker, config: &Config, mode: Mode) {
    let known: Option<HashSet<&str>> = config
        .dns
        .as_ref()
        .filter(|d| !d.pops.is_empty())
        .map(|d| d.pops.iter().map(|p| p.name.as_str()).collect());
    for (i, s) in config.services.iter().enumerate() {
        let Some(shield) = &s.shield else { continue };
        let at = [Key("service"), Index(i), Key("shield"), Key("pop")];
        if !valid_pop_name(&shield.pop) {
            c.fail(&at, pop_problem(&shield.pop));
            continue;
        }
        if let Some(known) = &known {
            if !known.contains(shield.pop.as_str()) {
                c.fail(
                    &at,
                    format!(
                        "unknown POP `{}`: not a [[dns.pop]] of this fleet (a shield must be a POP whose edges exist)",
                        shield.pop
                    ),
                );
            }
        }
        if mode == Mode::Standalone && config.tier.is_none() {
            c.fail(
                &at,
                "a standalone edge with a shielded service needs [tier] (its own POP, the tier secret and the shield's edges)",
            );
        }
    }
    let Some(tier) = &config.tier else { return };
    if mode == Mode::Managed {
        c.fail(
            &[Key("tier")],
            "is set per edge (`firebreak edge --pop`; the tier secret and shield edges come from the control plane); remove it from configuration given to the control plane",
        );
        return;
    }
    if let Some(pop) = &tier.pop {
        if !valid_pop_name(pop) {
            c.fail(&[Key("tier"), Key("pop")], pop_problem(pop));
        }
    }
    match &tier.secret {
        Some(secret) => {
            if let Err(e) = crate::shield::secret_bytes(secret) {
                c.fail(&[Key("tier"), Key("secret")], e);
            }
        }
        None => c.fail(
            &[Key("tier"), Key("secret")],
            "is required: 64 hex digits shared with the other tier's edges",
        ),
    }
    if !c.count(
        &[Key("tier"), Key("shield")],
        tier.shields.len(),
        0,
        MAX_DNS_POPS,
        "shield POPs",
    ) {
        return;
    }
    let mut seen = HashSet::new();
    for (i, m) in tier.shields.iter().enumerate() {
        let base = [Key("tier"), Key("shield"), Index(i)];
        let at =
            |k: &'static str| -> Vec<PathSeg> { base.iter().cloned().chain([Key(k)]).collect() };
        if !valid_pop_name(&m.pop) {
            c.fail(&at("pop"), pop_problem(&m.pop));
        } else if !seen.insert(m.pop.as_str()) {
            c.fail(&at("pop"), format!("POP `{}` is listed twice", m.pop));
        }
        if c.count(&at("edges"), m.edges.len(), 1, MAX_SHIELD_EDGES, "edges") {
            for (j, e) in m.edges.iter().enumerate() {
                if e.parse::<std::net::SocketAddr>().is_err() {
                    let mut p = at("edges");
                    p.push(Index(j));
                    c.fail(
                        &p,
                        format!("`{e}` is not ip:port (an edge's client listener)"),
                    );
                }
            }
        }
    }
}

/// The bytes of a tier secret written as 64 hex digits.
pub fn secret_bytes(s: &str) -> Result<[u8; 32], String> {
    let bad = || "must be 64 hex digits (32 random bytes)".to_string();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(s.as_bytes().chunks(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| bad())?;
        *slot = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use crate::{parse_managed_str, parse_str, ConfigRejected};

    const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn service(shield: &str) -> String {
        format!(
            r#"
[[service]]
name = "a"
hosts = ["a.example"]
[service.origin]
servers = [{{ addr = "127.0.0.1:9000" }}]
{shield}
"#
        )
    }

    fn standalone(tier: &str, shield: &str) -> String {
        format!(
            "[[listener]]\naddr = \"127.0.0.1:8080\"\n{tier}\n{}",
            service(shield)
        )
    }

    fn messages(e: ConfigRejected) -> String {
        e.errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_standalone_shield_with_its_tier_is_accepted() {
        let tier = format!(
            "[tier]\npop = \"ams\"\nsecret = \"{SECRET}\"\n[[tier.shield]]\npop = \"pa\"\nedges = [\"127.0.0.1:8081\"]\n"
        );
        let c = parse_str(
            "e.toml",
            &standalone(&tier, "[service.shield]\npop = \"pa\""),
        )
        .unwrap();
        assert_eq!(c.services[0].shield.as_ref().unwrap().pop, "pa");
        assert_eq!(c.tier.as_ref().unwrap().shields[0].edges.len(), 1);
    }

    #[test]
    fn what_could_loop_or_cannot_work_is_refused() {
        let cases = [
            // Not a DNS label.
            (standalone("", "[service.shield]\npop = \"Pa\""), "service[0].shield.pop"),
            (standalone("", "[service.shield]\npop = \"-pa\""), "service[0].shield.pop"),
            // A shielded standalone edge without [tier] could never reach its shield.
            (standalone("", "[service.shield]\npop = \"pa\""), "service[0].shield.pop"),
            // No secret.
            (
                standalone("[tier]\npop = \"ams\"", "[service.shield]\npop = \"pa\""),
                "tier.secret",
            ),
            (
                standalone(&format!("[tier]\nsecret = \"{}\"", &SECRET[1..]), ""),
                "tier.secret",
            ),
            // A POP twice.
            (
                standalone(
                    &format!("[tier]\npop = \"pa\"\nsecret = \"{SECRET}\"\n[[tier.shield]]\npop = \"pa\"\nedges = [\"127.0.0.1:1\"]\n[[tier.shield]]\npop = \"pa\"\nedges = [\"127.0.0.1:2\"]"),
                    "",
                ),
                "tier.shield[1].pop",
            ),
            (
                standalone(
                    &format!("[tier]\nsecret = \"{SECRET}\"\n[[tier.shield]]\npop = \"pa\"\nedges = [\"localhost\"]"),
                    "",
                ),
                "tier.shield[0].edges[0]",
            ),
            (
                standalone(
                    &format!("[tier]\nsecret = \"{SECRET}\"\n[[tier.shield]]\npop = \"pa\"\nedges = []"),
                    "",
                ),
                "tier.shield[0].edges",
            ),
        ];
        for (text, field) in cases {
            let e = match parse_str("e.toml", &text) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err(e) => messages(e),
            };
            assert!(e.contains(field), "{field} not in\n{e}\nfor\n{text}");
        }
    }

    #[test]
    fn a_fleet_shield_must_be_a_known_pop_and_tier_is_per_edge() {
        let dns = r#"
[dns]
zone = "cdn.example"
default_region = "eu"
[[dns.ns]]
name = "ns1.other.example"
[[dns.pop]]
name = "ams"
answers = ["192.0.2.10"]
[[dns.pop]]
name = "pa"
answers = ["192.0.2.11"]
[[dns.region]]
name = "eu"
pops = ["ams", "pa"]
"#;
        let ok = format!("{dns}{}", service("[service.shield]\npop = \"pa\""));
        parse_managed_str("f.toml", &ok).unwrap();
        let unknown = format!("{dns}{}", service("[service.shield]\npop = \"nyc\""));
        let e = messages(parse_managed_str("f.toml", &unknown).unwrap_err());
        assert!(e.contains("unknown POP `nyc`"), "{e}");
        // Without DNS data the fleet names no POPs: any label is accepted.
        parse_managed_str("f.toml", &service("[service.shield]\npop = \"nyc\"")).unwrap();
        let tier = format!("[tier]\nsecret = \"{SECRET}\"\n{}", service(""));
        let e = messages(parse_managed_str("f.toml", &tier).unwrap_err());
        assert!(e.contains("tier: is set per edge"), "{e}");
    }
}
