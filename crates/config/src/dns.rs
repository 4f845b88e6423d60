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

use serde::Deserialize;

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
    /// A MaxMind-format database (file name, standalone only; under the control plane it
    /// travels as a document of the version) used to place clients by country or continent
    /// when no prefix matches.
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
    /// POPs that serve this service (default: every POP).
    pub pops: Vec<String>,
    /// Answered as a CNAME when none of the service's POPs is healthy (a backup CDN).
    pub fallback_cname: Option<String>,
    /// Answered when none of the service's POPs is healthy (e.g. the origin). Give this or
    /// `fallback_cname`, not both. Without either, the last healthy answer is kept.
    pub fallback_addrs: Vec<std::net::IpAddr>,
}
