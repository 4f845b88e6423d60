//! DNS steering data (`[dns]`, `[[dns.ns]]`, `[[dns.pop]]`, `[[dns.region]]`, and
//! `[service.dns]`): the zone Firebreak's authoritative DNS serves, the POPs it can send
//! clients to, how client addresses map to regions and regions to POPs, and what each
//! service's host name answers when no POP is healthy.
//!
//! It lives in the fleet document, so it is validated, signed, versioned and rolled out like
//! every other part of the configuration; DNS servers are members of the fleet.
//!
//! ```toml
//! [dns]
//! zone = "cdn.example"            # served authoritatively (a trailing dot is optional)
//! default_region = "eu"           # clients no prefix (or GeoIP entry) places
//!
//! [[dns.ns]]
//! name = "ns1.cdn.example"        # NS of the zone; in-zone names need addresses (glue)
//! addrs = ["192.0.2.53"]
//!
//! [[dns.pop]]
//! name = "ams"                    # the POP name edges are started with (`--pop`)
//! answers = ["192.0.2.10", "2001:db8::10"]
//! checks = ["http://192.0.2.10:9080/healthz"]
//!
//! [[dns.region]]
//! name = "eu"
//! prefixes = ["198.51.100.0/24"]
//! countries = ["NL", "DE"]        # with a GeoIP database
//! pops = [["ams", "fra"], "nyc"]  # preference order; a list is one tier shared by weight
//!
//! [[service]]
//! name = "demo"
//! [service.dns]
//! name = "demo"                   # demo.cdn.example; customers CNAME their sites to it
//! fallback_cname = "demo.backup-cdn.example"
//! ```

use crate::limits::*;
use crate::locate::PathSeg::{self, Index, Key};
use crate::model::{Config, ServiceConfig};
use crate::validate::Checker;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// The zone and its steering data (`[dns]`). Absent: the fleet has no DNS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone served authoritatively, e.g. `cdn.example` (trailing dot optional).
    pub zone: String,
    /// TTL of steered A/AAAA answers, seconds (short, so that a POP leaving is seen soon).
    #[serde(default = "default_ttl_s")]
    pub ttl_s: u32,
    /// TTL of the SOA, NS and glue records, seconds.
    #[serde(default = "default_zone_ttl_s")]
    pub zone_ttl_s: u32,
    /// Negative-caching TTL (RFC 2308): the SOA MINIMUM field, and the TTL of the SOA in
    /// NXDOMAIN/NODATA answers.
    #[serde(default = "default_ttl_s")]
    pub negative_ttl_s: u32,
    /// The SOA's RNAME as a domain name (`hostmaster.cdn.example`).
    #[serde(default)]
    pub hostmaster: Option<String>,
    /// The region of clients no prefix or GeoIP entry places.
    pub default_region: String,
    /// Refuse a version that removes more than this share (0.0–1.0) of the POPs, or of the
    /// answer addresses, of the version before it, unless the push is forced.
    #[serde(default = "default_max_removed_share")]
    pub max_removed_share: f64,
    /// Active health checks of the POPs by the DNS servers themselves.
    #[serde(default)]
    pub checks: DnsChecksConfig,
    /// Name servers of the zone (`[[dns.ns]]`), at least one.
    #[serde(default, rename = "ns")]
    pub name_servers: Vec<NameServerConfig>,
    /// POPs clients can be sent to (`[[dns.pop]]`).
    #[serde(default, rename = "pop")]
    pub pops: Vec<PopConfig>,
    /// Regions: which clients they hold and which POPs serve them (`[[dns.region]]`).
    #[serde(default, rename = "region")]
    pub regions: Vec<RegionConfig>,
    /// A MaxMind-format database (a file name, relative to the document) used to place
    /// clients by country or continent when no prefix matches; at most
    /// [`crate::MAX_GEOIP_BYTES`]. Standalone, the DNS server reads the file; under a control
    /// plane `firebreak config push` sends it with the document, the control plane verifies it
    /// and it travels inside the signed version ([`crate::ValidConfig::geoip`]).
    #[serde(default)]
    pub geoip_file: Option<String>,
}

fn default_ttl_s() -> u32 {
    30
}
fn default_zone_ttl_s() -> u32 {
    3600
}
fn default_max_removed_share() -> f64 {
    0.5
}

/// How DNS servers check POPs themselves (`[dns.checks]`), so that a control-plane outage
/// does not freeze stale health.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsChecksConfig {
    /// Time between two checks of one POP's URLs.
    pub interval_ms: u64,
    /// Time a check may take.
    pub timeout_ms: u64,
    /// Consecutive failed rounds before a POP leaves the answers.
    pub unhealthy_after: u32,
    /// Consecutive good rounds before a POP that left comes back (hysteresis: no flapping).
    pub healthy_after: u32,
}

impl Default for DnsChecksConfig {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            timeout_ms: 2_000,
            unhealthy_after: 2,
            healthy_after: 3,
        }
    }
}

/// One name server of the zone.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NameServerConfig {
    /// Its host name (absolute; trailing dot optional).
    pub name: String,
    /// Its addresses: required (glue) when the name is inside the zone.
    #[serde(default)]
    pub addrs: Vec<std::net::IpAddr>,
}

/// One POP as DNS sees it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PopConfig {
    /// The POP's name, as edges are started with (`firebreak edge --pop NAME`).
    pub name: String,
    /// Addresses handed to clients sent to this POP (IPv4 for A, IPv6 for AAAA).
    pub answers: Vec<std::net::IpAddr>,
    /// Share of a tier's clients relative to the other POPs of the tier.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// URLs the DNS servers GET to check the POP (`http://host:port/path`; 2xx = good). The
    /// POP is healthy while at least one answers. Empty: only the control plane's health.
    #[serde(default)]
    pub checks: Vec<String>,
}

fn default_weight() -> u32 {
    1
}

/// One region: the clients it holds and the POPs that serve it, best first.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Unique name.
    pub name: String,
    /// Client prefixes (CIDR) placed in this region; the longest match over all regions wins.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// ISO 3166 country codes placed here by the GeoIP database (after prefixes).
    #[serde(default)]
    pub countries: Vec<String>,
    /// Continent codes (`EU`, `NA`, ...) placed here by the GeoIP database (after countries).
    #[serde(default)]
    pub continents: Vec<String>,
    /// Preference list: each entry a POP, or a list of POPs sharing that tier by weight.
    /// The first tier with a healthy POP serving the service answers.
    pub pops: Vec<Tier>,
}

/// One tier of a region's preference list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Tier {
    /// A single POP.
    One(String),
    /// POPs sharing the tier's clients by their weights.
    Shared(Vec<String>),
}

impl Tier {
    /// The POP names of this tier.
    pub fn pops(&self) -> &[String] {
        match self {
            Tier::One(p) => std::slice::from_ref(p),
            Tier::Shared(p) => p,
        }
    }
}

/// A service's name in the zone and its fallback (`[service.dns]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceDnsConfig {
    /// Label(s) under the zone: `demo` answers `demo.<zone>`. Default: the service's name.
    pub name: Option<String>,
    /// POPs that serve this service. Empty (or absent) = every POP: TOML's `pops = []` and
    /// an absent `pops` are the same thing, so "no POP at all" cannot be written; a list whose
    /// POPs no region serves is refused instead.
    pub pops: Vec<String>,
    /// Answered as a CNAME when none of the service's POPs is healthy (a backup CDN).
    pub fallback_cname: Option<String>,
    /// Answered when none of the service's POPs is healthy (e.g. the origin). Give this or
    /// `fallback_cname`, not both. Without either, the last healthy answer is kept.
    pub fallback_addrs: Vec<std::net::IpAddr>,
}

/// Continent codes as MaxMind databases give them (`continent.code`).
pub const CONTINENT_CODES: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// Longest DNS name in presentation form without the trailing dot (RFC 1035: 255 octets on
/// the wire).
const MAX_DNS_NAME_LEN: usize = 253;

/// Checks labels of letters, digits and hyphens (1 to 63 each, no hyphen at either end).
fn check_labels(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("`{name}` has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("`{name}`: a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "`{name}` is not a DNS name: labels are letters, digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{name}`: a label cannot start or end with '-'"));
        }
    }
    Ok(())
}

/// Checks an absolute DNS name (a trailing dot is optional) and returns it lowercase, without
/// the trailing dot: the one form names are compared in.
pub fn dns_name(name: &str) -> Result<String, String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.len() > MAX_DNS_NAME_LEN {
        return Err(format!(
            "is {} characters; a DNS name has at most {MAX_DNS_NAME_LEN}",
            bare.len()
        ));
    }
    check_labels(bare)?;
    Ok(bare.to_ascii_lowercase())
}

/// Whether `name` (lowercase, no trailing dot) is `zone` or below it.
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.'))
}

/// A client prefix of a region (`198.51.100.0/24`, `2001:db8::/32`): the length is required
/// and bits below it must be zero, so that what is written is what matches.
pub fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let Some((addr, len)) = s.split_once('/') else {
        return Err(format!(
            "`{s}` is not a CIDR prefix (address/length, e.g. 198.51.100.0/24)"
        ));
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{s}`: `{addr}` is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len.parse::<u8>() {
        Ok(l) if l <= max => l,
        _ => return Err(format!("`{s}`: the prefix length must be 0 to {max}")),
    };
    let (bits, width) = prefix_bits(addr);
    let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0) >> (128 - width);
    if bits & host != 0 {
        return Err(format!(
            "`{s}` has host bits set below /{len}: write the network address"
        ));
    }
    Ok((addr, len))
}

/// An address as an integer and its width in bits.
fn prefix_bits(addr: IpAddr) -> (u128, u32) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// A health-check URL: `http://host:port/path` with an explicit port and no user info.
/// Returns the parsed URI (what the checker requests).
pub fn parse_check_url(s: &str) -> Result<http::Uri, String> {
    if s.len() > MAX_DNS_CHECK_URL_LEN {
        return Err(format!(
            "is {} bytes; the limit is {MAX_DNS_CHECK_URL_LEN}",
            s.len()
        ));
    }
    let uri: http::Uri = s
        .parse()
        .map_err(|_| format!("`{s}` is not a URL (http://host:port/path)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{s}`: https checks are not supported yet; use http://"
            ))
        }
        _ => return Err(format!("`{s}` must start with http://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{s}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("`{s}`: user info is not allowed in a check URL"));
    }
    let host = authority.host();
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<std::net::Ipv4Addr>().is_ok() || dns_name(host).is_ok(),
    };
    if !host_ok {
        return Err(format!("`{s}`: `{host}` is not an IP address or host name"));
    }
    match authority.port_u16() {
        Some(p) if p != 0 => Ok(uri),
        _ => Err(format!(
            "`{s}` needs an explicit port (http://host:port/path)"
        )),
    }
}

/// POP and region names: they appear in metrics labels and in `firebreak edge --pop`.
fn valid_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn at(base: &[PathSeg], rest: &[PathSeg]) -> Vec<PathSeg> {
    base.iter().chain(rest).cloned().collect()
}

/// Checks `[dns]` and every `[service.dns]`. The prefix table follows longest-match rules:
/// the same prefix twice (in one region or two), or a prefix inside another prefix of the
/// SAME region, is refused as an overlap (it would be dead or ambiguous data); a more
/// specific prefix in ANOTHER region is allowed: it is a carve-out that wins for the
/// addresses it covers.
pub(crate) fn check(c: &mut Checker, config: &Config) {
    let Some(dns) = &config.dns else {
        for (i, s) in config.services.iter().enumerate() {
            if s.dns.is_some() {
                c.fail(
                    &[Key("service"), Index(i), Key("dns")],
                    "[service.dns] needs a [dns] table (the zone the name lives in)",
                );
            }
        }
        return;
    };
    let base = [Key("dns")];
    let zone = match dns_name(&dns.zone) {
        Ok(z) => Some(z),
        Err(e) => {
            c.fail(&at(&base, &[Key("zone")]), e);
            None
        }
    };
    settings(c, dns);
    let ns_names = name_servers(c, dns, zone.as_deref());
    let pops = pops(c, dns);
    let regions = regions(c, dns, &pops);
    services(c, config, dns, zone.as_deref(), &pops, &regions, &ns_names);
}

fn settings(c: &mut Checker, dns: &DnsConfig) {
    let f = |k: &'static str| [Key("dns"), Key(k)];
    for (key, value, max) in [
        ("ttl_s", dns.ttl_s, MAX_DNS_TTL_S),
        ("negative_ttl_s", dns.negative_ttl_s, MAX_DNS_TTL_S),
        ("zone_ttl_s", dns.zone_ttl_s, MAX_DNS_ZONE_TTL_S),
    ] {
        if !(1..=max).contains(&value) {
            c.fail(
                &f(key),
                format!("must be between 1 and {max} s, got {value}"),
            );
        }
    }
    if !(0.0..=1.0).contains(&dns.max_removed_share) {
        c.fail(
            &f("max_removed_share"),
            format!(
                "must be between 0.0 and 1.0 (a share), got {}",
                dns.max_removed_share
            ),
        );
    }
    if let Some(h) = &dns.hostmaster {
        if let Err(e) = dns_name(h) {
            c.fail(&f("hostmaster"), e);
        }
    }
    if let Some(g) = &dns.geoip_file {
        if g.is_empty() || g.len() > 4096 || g.contains('\0') {
            c.fail(&f("geoip_file"), "must be a file path");
        }
    }
    let checks = &dns.checks;
    let ck = |k: &'static str| [Key("dns"), Key("checks"), Key(k)];
    let ms_ok = |ms: u64| (MIN_DNS_CHECK_MS..=MAX_TIMEOUT_MS).contains(&ms);
    for (key, ms) in [
        ("interval_ms", checks.interval_ms),
        ("timeout_ms", checks.timeout_ms),
    ] {
        if !ms_ok(ms) {
            c.fail(
                &ck(key),
                format!("must be between {MIN_DNS_CHECK_MS} and {MAX_TIMEOUT_MS} ms, got {ms}"),
            );
        }
    }
    if ms_ok(checks.interval_ms)
        && ms_ok(checks.timeout_ms)
        && checks.timeout_ms >= checks.interval_ms
    {
        c.fail(
            &ck("timeout_ms"),
            format!(
                "must be shorter than interval_ms ({} ms), got {} ms",
                checks.interval_ms, checks.timeout_ms
            ),
        );
    }
    for (key, n) in [
        ("unhealthy_after", checks.unhealthy_after),
        ("healthy_after", checks.healthy_after),
    ] {
        if !(1..=MAX_DNS_CHECK_THRESHOLD).contains(&n) {
            c.fail(
                &ck(key),
                format!("must be between 1 and {MAX_DNS_CHECK_THRESHOLD} rounds, got {n}"),
            );
        }
    }
}

/// Checks `[[dns.ns]]`; returns the valid names (lowercase) with their index.
fn name_servers(c: &mut Checker, dns: &DnsConfig, zone: Option<&str>) -> HashMap<String, usize> {
    let base = [Key("dns"), Key("ns")];
    let mut names = HashMap::new();
    if dns.name_servers.is_empty() {
        c.fail(
            &[Key("dns")],
            "at least one [[dns.ns]] is required (the zone's name servers)",
        );
        return names;
    }
    if !c.count(
        &base,
        dns.name_servers.len(),
        1,
        MAX_DNS_NAME_SERVERS,
        "name servers",
    ) {
        return names;
    }
    for (i, ns) in dns.name_servers.iter().enumerate() {
        let p = |rest: &[PathSeg]| at(&[Key("dns"), Key("ns"), Index(i)], rest);
        let name = match dns_name(&ns.name) {
            Ok(n) => n,
            Err(e) => {
                c.fail(&p(&[Key("name")]), e);
                continue;
            }
        };
        if let Some(first) = names.get(&name) {
            c.fail(
                &p(&[Key("name")]),
                format!("name server `{name}` is already dns.ns[{first}]"),
            );
            continue;
        }
        if c.count(
            &p(&[Key("addrs")]),
            ns.addrs.len(),
            0,
            MAX_DNS_NS_ADDRS,
            "addresses",
        ) {
            let mut seen = HashSet::new();
            for (j, a) in ns.addrs.iter().enumerate() {
                if !seen.insert(a) {
                    c.fail(
                        &p(&[Key("addrs"), Index(j)]),
                        format!("{a} is listed twice"),
                    );
                }
            }
        }
        if let Some(zone) = zone {
            let inside = in_zone(&name, zone);
            if name == zone {
                c.fail(
                    &p(&[Key("name")]),
                    "the zone apex itself cannot be a name server name here; use a name under it (ns1.<zone>)",
                );
            } else if inside && ns.addrs.is_empty() {
                c.fail(
                    &p(&[Key("addrs")]),
                    format!("`{name}` is inside the zone, so it needs addrs (glue)"),
                );
            } else if !inside && !ns.addrs.is_empty() {
                c.fail(
                    &p(&[Key("addrs")]),
                    format!("`{name}` is outside the zone: its addresses would not be served (glue is only for names inside the zone); remove them"),
                );
            }
        }
        names.insert(name, i);
    }
    names
}

/// Checks `[[dns.pop]]`; returns the POP names with their index.
fn pops<'a>(c: &mut Checker, dns: &'a DnsConfig) -> HashMap<&'a str, usize> {
    let mut names = HashMap::new();
    if !c.count(
        &[Key("dns"), Key("pop")],
        dns.pops.len(),
        1,
        MAX_DNS_POPS,
        "POPs ([[dns.pop]])",
    ) {
        return names;
    }
    for (i, pop) in dns.pops.iter().enumerate() {
        let p = |rest: &[PathSeg]| at(&[Key("dns"), Key("pop"), Index(i)], rest);
        if !valid_label_name(&pop.name) {
            c.fail(
                &p(&[Key("name")]),
                format!(
                    "`{}` is not a valid POP name: use 1 to {MAX_SERVICE_NAME_LEN} of a-z, 0-9, '-', '_'",
                    pop.name
                ),
            );
        } else if let Some(&first) = names.get(pop.name.as_str()) {
            c.fail(
                &p(&[Key("name")]),
                format!("POP `{}` is already dns.pop[{first}]", pop.name),
            );
        } else {
            names.insert(pop.name.as_str(), i);
        }
        if pop.answers.is_empty() {
            c.fail(
                &p(&[Key("answers")]),
                "a POP with no addresses: give at least one answer address",
            );
        } else if c.count(
            &p(&[Key("answers")]),
            pop.answers.len(),
            1,
            MAX_DNS_ANSWERS_PER_POP,
            "answer addresses",
        ) {
            let mut seen = HashSet::new();
            for (j, a) in pop.answers.iter().enumerate() {
                if !seen.insert(a) {
                    c.fail(
                        &p(&[Key("answers"), Index(j)]),
                        format!("{a} is listed twice"),
                    );
                }
            }
        }
        if !(1..=MAX_DNS_POP_WEIGHT).contains(&pop.weight) {
            c.fail(
                &p(&[Key("weight")]),
                format!("must be between 1 and {MAX_DNS_POP_WEIGHT}"),
            );
        }
        if c.count(
            &p(&[Key("checks")]),
            pop.checks.len(),
            0,
            MAX_DNS_CHECKS_PER_POP,
            "check URLs",
        ) {
            for (j, url) in pop.checks.iter().enumerate() {
                if let Err(e) = parse_check_url(url) {
                    c.fail(&p(&[Key("checks"), Index(j)]), e);
                }
            }
        }
    }
    names
}

/// One region's POPs, for the service checks.
struct RegionPops<'a> {
    pops: HashSet<&'a str>,
}

/// Checks `[[dns.region]]` and `default_region`.
fn regions<'a>(
    c: &mut Checker,
    dns: &'a DnsConfig,
    pops: &HashMap<&str, usize>,
) -> Vec<RegionPops<'a>> {
    let mut out = Vec::new();
    if !c.count(
        &[Key("dns"), Key("region")],
        dns.regions.len(),
        1,
        MAX_DNS_REGIONS,
        "regions ([[dns.region]])",
    ) {
        return out;
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut countries: HashMap<&str, usize> = HashMap::new();
    let mut continents: HashMap<&str, usize> = HashMap::new();
    let total: usize = dns.regions.iter().map(|r| r.prefixes.len()).sum();
    let check_prefixes = c.count(
        &[Key("dns"), Key("region")],
        total,
        0,
        MAX_DNS_PREFIXES,
        "prefixes over all regions",
    );
    // Every valid prefix: (IPv6?, network bits, length) -> (region, index in it).
    let mut all: HashMap<(bool, u128, u8), (usize, usize)> = HashMap::new();
    for (i, r) in dns.regions.iter().enumerate() {
        let p = |rest: &[PathSeg]| at(&[Key("dns"), Key("region"), Index(i)], rest);
        if !valid_label_name(&r.name) {
            c.fail(
                &p(&[Key("name")]),
                format!(
                    "`{}` is not a valid region name: use 1 to {MAX_SERVICE_NAME_LEN} of a-z, 0-9, '-', '_'",
                    r.name
                ),
            );
        } else if let Some(&first) = names.get(r.name.as_str()) {
            c.fail(
                &p(&[Key("name")]),
                format!("region `{}` is already dns.region[{first}]", r.name),
            );
        } else {
            names.insert(&r.name, i);
        }
        if check_prefixes {
            region_prefixes(c, dns, i, r, &mut all);
        }
        codes(c, dns, i, r, &mut countries, &mut continents);
        out.push(RegionPops {
            pops: region_tiers(c, i, r, pops),
        });
    }
    if !names.contains_key(dns.default_region.as_str()) {
        c.fail(
            &[Key("dns"), Key("default_region")],
            format!(
                "`{}` is not a region: name one of the [[dns.region]] tables",
                dns.default_region
            ),
        );
    }
    out
}

fn region_prefixes(
    c: &mut Checker,
    dns: &DnsConfig,
    i: usize,
    r: &RegionConfig,
    all: &mut HashMap<(bool, u128, u8), (usize, usize)>,
) {
    let region_name = |k: usize| dns.regions.get(k).map(|r| r.name.as_str()).unwrap_or("?");
    // This region's valid prefixes, for the nesting check: (IPv6?, bits, length, index).
    let mut own: Vec<(bool, u128, u8, usize)> = Vec::new();
    for (j, text) in r.prefixes.iter().enumerate() {
        let p = at(
            &[
                Key("dns"),
                Key("region"),
                Index(i),
                Key("prefixes"),
                Index(j),
            ],
            &[],
        );
        let (addr, len) = match parse_prefix(text) {
            Ok(v) => v,
            Err(e) => {
                c.fail(&p, e);
                continue;
            }
        };
        let key = (addr.is_ipv6(), prefix_bits(addr).0, len);
        match all.get(&key) {
            Some(&(k, first)) if k == i => {
                c.fail(
                    &p,
                    format!("`{text}` overlaps itself: it is listed twice in this region (prefixes[{first}])"),
                );
                continue;
            }
            Some(&(k, _)) => {
                c.fail(
                    &p,
                    format!(
                        "`{text}` overlaps region `{}` (dns.region[{k}]), which lists the same prefix",
                        region_name(k)
                    ),
                );
                continue;
            }
            None => {
                all.insert(key, (i, j));
            }
        }
        own.push((key.0, key.1, key.2, j));
    }
    // Sorted by family, network and length, a prefix nested in another of the same list comes
    // after it; the outer prefixes kept are disjoint, so the last one kept is the only
    // candidate container.
    own.sort_unstable();
    let mut last: Option<(bool, u128, u8, usize)> = None;
    for cur in own {
        if let Some(outer) = last {
            let width = if cur.0 { 128 } else { 32 };
            let shift = width - u32::from(outer.2);
            let same_net =
                cur.1.checked_shr(shift).unwrap_or(0) == outer.1.checked_shr(shift).unwrap_or(0);
            if outer.0 == cur.0 && cur.2 >= outer.2 && same_net {
                let text = |j: usize| r.prefixes.get(j).map(String::as_str).unwrap_or("?");
                c.fail(
                    &[Key("dns"), Key("region"), Index(i), Key("prefixes"), Index(cur.3)],
                    format!(
                        "`{}` overlaps `{}` (prefixes[{}]) of the same region: a prefix inside another only means something in a different region (a carve-out)",
                        text(cur.3),
                        text(outer.3),
                        outer.3
                    ),
                );
                continue;
            }
        }
        last = Some(cur);
    }
}

fn codes<'a>(
    c: &mut Checker,
    dns: &DnsConfig,
    i: usize,
    r: &'a RegionConfig,
    countries: &mut HashMap<&'a str, usize>,
    continents: &mut HashMap<&'a str, usize>,
) {
    let region_name = |k: usize| dns.regions.get(k).map(|r| r.name.as_str()).unwrap_or("?");
    let p = |k: &'static str| at(&[Key("dns"), Key("region"), Index(i)], &[Key(k)]);
    if c.count(
        &p("countries"),
        r.countries.len(),
        0,
        MAX_DNS_COUNTRIES_PER_REGION,
        "countries",
    ) {
        for (j, code) in r.countries.iter().enumerate() {
            let mut q = p("countries");
            q.push(Index(j));
            if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                c.fail(
                    &q,
                    format!("`{code}` is not a country code: two upper-case letters (ISO 3166-1, e.g. NL)"),
                );
            } else if let Some(&k) = countries.get(code.as_str()) {
                c.fail(
                    &q,
                    format!(
                        "country {code} is already placed in region `{}`",
                        region_name(k)
                    ),
                );
            } else {
                countries.insert(code, i);
            }
        }
    }
    for (j, code) in r.continents.iter().enumerate() {
        let mut q = p("continents");
        q.push(Index(j));
        if !CONTINENT_CODES.contains(&code.as_str()) {
            c.fail(
                &q,
                format!(
                    "`{code}` is not a continent code: one of {}",
                    CONTINENT_CODES.join(" ")
                ),
            );
        } else if let Some(&k) = continents.get(code.as_str()) {
            c.fail(
                &q,
                format!(
                    "continent {code} is already placed in region `{}`",
                    region_name(k)
                ),
            );
        } else {
            continents.insert(code, i);
        }
    }
}

/// Checks a region's preference list; returns the known POPs it names.
fn region_tiers<'a>(
    c: &mut Checker,
    i: usize,
    r: &'a RegionConfig,
    pops: &HashMap<&str, usize>,
) -> HashSet<&'a str> {
    let base = [Key("dns"), Key("region"), Index(i), Key("pops")];
    let mut seen = HashSet::new();
    if r.pops.is_empty() {
        c.fail(
            &base,
            "a region with no POPs: list the POPs that serve it, best first",
        );
        return seen;
    }
    if !c.count(&base, r.pops.len(), 1, MAX_DNS_TIERS, "tiers") {
        return seen;
    }
    for (t, tier) in r.pops.iter().enumerate() {
        if tier.pops().is_empty() {
            c.fail(
                &at(&base, &[Index(t)]),
                "an empty tier: list at least one POP",
            );
        }
        for (j, name) in tier.pops().iter().enumerate() {
            let p = match tier {
                Tier::One(_) => at(&base, &[Index(t)]),
                Tier::Shared(_) => at(&base, &[Index(t), Index(j)]),
            };
            if !pops.contains_key(name.as_str()) {
                c.fail(&p, format!("unknown POP `{name}`: not a [[dns.pop]] name"));
            } else if !seen.insert(name.as_str()) {
                c.fail(&p, format!("POP `{name}` is listed twice in this region"));
            }
        }
    }
    seen
}

fn services(
    c: &mut Checker,
    config: &Config,
    dns: &DnsConfig,
    zone: Option<&str>,
    pops: &HashMap<&str, usize>,
    regions: &[RegionPops<'_>],
    ns_names: &HashMap<String, usize>,
) {
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, s) in config.services.iter().enumerate() {
        let Some(sd) = &s.dns else { continue };
        let base = [Key("service"), Index(i), Key("dns")];
        service_name(c, i, s, sd, zone, ns_names, &mut names);
        service_pops(c, &base, sd, dns, pops, regions);
        service_fallback(c, &base, sd, zone);
    }
}

fn service_name(
    c: &mut Checker,
    i: usize,
    s: &ServiceConfig,
    sd: &ServiceDnsConfig,
    zone: Option<&str>,
    ns_names: &HashMap<String, usize>,
    names: &mut HashMap<String, usize>,
) {
    let base: &[PathSeg] = &[Key("service"), Index(i), Key("dns")];
    let (label, p) = match &sd.name {
        Some(n) => (n.as_str(), at(base, &[Key("name")])),
        None => (s.name.as_str(), base.to_vec()),
    };
    let full_len = label.len() + 1 + zone.map_or(0, str::len);
    let result = if label.ends_with('.') {
        Err(format!(
            "`{label}` is relative to the zone: write the label(s) without a trailing dot"
        ))
    } else if full_len > MAX_DNS_NAME_LEN {
        Err(format!(
            "`{label}` under the zone is {full_len} characters; a DNS name has at most {MAX_DNS_NAME_LEN}"
        ))
    } else {
        check_labels(label)
    };
    if let Err(e) = result {
        let e = if sd.name.is_none() {
            format!("the service name is the default DNS name and {e}; set [service.dns] name")
        } else {
            e
        };
        c.fail(&p, e);
        return;
    }
    let label = label.to_ascii_lowercase();
    if let Some(&first) = names.get(&label) {
        c.fail(
            &p,
            format!("DNS name `{label}` is already service[{first}]'s"),
        );
        return;
    }
    if let Some(zone) = zone {
        let full = format!("{label}.{zone}");
        if let Some(ns) = ns_names.get(&full) {
            c.fail(
                &p,
                format!("`{full}` is the name of name server dns.ns[{ns}]"),
            );
            return;
        }
    }
    names.insert(label, i);
}

fn service_pops(
    c: &mut Checker,
    base: &[PathSeg],
    sd: &ServiceDnsConfig,
    dns: &DnsConfig,
    pops: &HashMap<&str, usize>,
    regions: &[RegionPops<'_>],
) {
    let mut own: HashSet<&str> = HashSet::new();
    for (j, name) in sd.pops.iter().enumerate() {
        let p = at(base, &[Key("pops"), Index(j)]);
        if !pops.contains_key(name.as_str()) {
            c.fail(&p, format!("unknown POP `{name}`: not a [[dns.pop]] name"));
        } else if !own.insert(name) {
            c.fail(&p, format!("POP `{name}` is listed twice"));
        }
    }
    if own.is_empty() && !sd.pops.is_empty() {
        return; // every name refused above
    }
    let serves = |pop: &str| own.is_empty() || own.contains(pop);
    let place = if sd.pops.is_empty() {
        base.to_vec()
    } else {
        at(base, &[Key("pops")])
    };
    // A region listing none of the service's POPs sends its clients to the service's own
    // POPs (steering's last resort), so only a service no region lists at all is refused.
    if !dns.pops.is_empty() && !regions.iter().any(|r| r.pops.iter().any(|p| serves(p))) {
        c.fail(
            &place,
            "a service with no POP: none of its POPs is in any region's list, so no client could be sent anywhere",
        );
    }
}

fn service_fallback(c: &mut Checker, base: &[PathSeg], sd: &ServiceDnsConfig, zone: Option<&str>) {
    if sd.fallback_cname.is_some() && !sd.fallback_addrs.is_empty() {
        c.fail(base, "give fallback_cname or fallback_addrs, not both");
    }
    if let Some(target) = &sd.fallback_cname {
        let p = at(base, &[Key("fallback_cname")]);
        match dns_name(target) {
            Err(e) => c.fail(&p, e),
            Ok(t) if zone.is_some_and(|z| in_zone(&t, z)) => c.fail(
                &p,
                format!("`{t}` is inside the zone: a fallback must lead elsewhere (a backup CDN), or it could loop back here"),
            ),
            Ok(_) => {}
        }
    }
    let p = at(base, &[Key("fallback_addrs")]);
    if c.count(
        &p,
        sd.fallback_addrs.len(),
        0,
        MAX_DNS_FALLBACK_ADDRS,
        "fallback addresses",
    ) {
        let mut seen = HashSet::new();
        for (j, a) in sd.fallback_addrs.iter().enumerate() {
            if !seen.insert(a) {
                c.fail(&at(&p, &[Index(j)]), format!("{a} is listed twice"));
            }
        }
    }
}

/// The change guard: refuses a new version of the DNS data that removes more than
/// `new.max_removed_share` of the POPs, or of the answer addresses, of the version before it
/// (AWS, October 2025: automation published an empty record). A version with no POP or no
/// answer address at all is always refused. `Err` carries the reason: which POPs or how many
/// addresses, the share and the limit. Callers let an operator force past it.
pub fn removal_check(old: &DnsConfig, new: &DnsConfig) -> Result<(), String> {
    let limit = new.max_removed_share;
    let new_pops: HashSet<&str> = new.pops.iter().map(|p| p.name.as_str()).collect();
    let new_answers: HashSet<IpAddr> = new
        .pops
        .iter()
        .flat_map(|p| p.answers.iter().copied())
        .collect();
    if new_pops.is_empty() || new_answers.is_empty() {
        return Err(
            "the new DNS data has no POP or no answer address at all: it would empty every answer"
                .into(),
        );
    }
    let old_pops: HashSet<&str> = old.pops.iter().map(|p| p.name.as_str()).collect();
    let mut removed: Vec<&str> = old_pops.difference(&new_pops).copied().collect();
    removed.sort_unstable();
    let share = |n: usize, of: usize| n as f64 / of as f64;
    if !old_pops.is_empty() && share(removed.len(), old_pops.len()) > limit {
        let shown: Vec<&str> = removed.iter().take(10).copied().collect();
        let more = removed.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        return Err(format!(
            "removes {} of {} POPs ({}{more}): a share of {:.2}, above the limit of {:.2} (dns.max_removed_share)",
            removed.len(),
            old_pops.len(),
            shown.join(", "),
            share(removed.len(), old_pops.len()),
            limit
        ));
    }
    let old_answers: HashSet<IpAddr> = old
        .pops
        .iter()
        .flat_map(|p| p.answers.iter().copied())
        .collect();
    let gone = old_answers.difference(&new_answers).count();
    if !old_answers.is_empty() && share(gone, old_answers.len()) > limit {
        return Err(format!(
            "removes {gone} of {} answer addresses: a share of {:.2}, above the limit of {:.2} (dns.max_removed_share)",
            old_answers.len(),
            share(gone, old_answers.len()),
            limit
        ));
    }
    Ok(())
}
