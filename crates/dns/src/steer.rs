//! Steering: one compiled version of the DNS data, and the decision of which addresses a
//! client gets for a service's name.
//!
//! A client (the EDNS Client Subnet, else the resolver's address) is placed in a region by the
//! longest matching prefix (only prefixes no longer than what the client revealed), else by the
//! GeoIP database (country, then continent), else in the default region. The region's
//! preference list, reduced to the POPs serving the service, is walked tier by tier; the first
//! tier holding a healthy POP with an address of the asked family answers, one POP chosen by
//! weight with a hash of the client's block (a client keeps its POP while nothing changes).
//!
//! Never empty: when none of the service's POPs is healthy the answer is its fallback (CNAME
//! or addresses); without one, the POPs that were healthy last (the latest to go down) keep
//! being answered, as if the outage had not been seen.
//!
//! Everything is decided on data compiled ahead (`compile`) and atomics (`Health`): no lock
//! and no allocation per query.

use firebreak_config::dns::{DnsConfig, RegionConfig};
use firebreak_config::Config;
use hickory_proto::rr::Name;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// SOA REFRESH: secondaries (none today) would check every hour.
const SOA_REFRESH: i32 = 3_600;
/// SOA RETRY.
const SOA_RETRY: i32 = 600;
/// SOA EXPIRE: one week.
const SOA_EXPIRE: i32 = 604_800;
/// Longest name in presentation form without the trailing dot.
const MAX_NAME: usize = 253;

/// Why DNS data could not be compiled (the configuration's validation refuses these first).
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// The configuration has no `[dns]` section.
    #[error("the configuration has no [dns] section")]
    NoDns,
    /// A name is not a valid domain name.
    #[error("{field}: `{name}` is not a valid domain name: {reason}")]
    BadName {
        /// Where.
        field: String,
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A reference to a POP or region that does not exist.
    #[error("{0}")]
    Reference(String),
    /// A prefix that is not `address/length`.
    #[error("dns.region `{region}`: bad prefix `{prefix}`")]
    BadPrefix {
        /// The region.
        region: String,
        /// The prefix as written.
        prefix: String,
    },
}

/// What a query's name is, relative to the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Not in the zone: REFUSED.
    OutOfZone,
    /// In the zone, no such name: NXDOMAIN.
    NoSuchName,
    /// A name that exists only because names below it do (RFC 8020): NODATA for every type.
    EmptyNonTerminal,
    /// The zone's apex (SOA, NS).
    Apex,
    /// A name server's name inside the zone (its glue addresses).
    NameServer(usize),
    /// A service's name (steered A/AAAA).
    Service(usize),
}

/// A name server of the zone and its addresses.
#[derive(Debug, Clone)]
pub struct NameServer {
    /// Its name (lowercase, fully qualified).
    pub name: Name,
    /// IPv4 addresses (glue when inside the zone).
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 addresses.
    pub v6: Vec<Ipv6Addr>,
}

/// The zone's SOA record data.
#[derive(Debug, Clone)]
pub struct Soa {
    /// Primary name server (the first `[[dns.ns]]`).
    pub mname: Name,
    /// The responsible mailbox as a name.
    pub rname: Name,
    /// Version of the data.
    pub serial: u32,
    /// REFRESH.
    pub refresh: i32,
    /// RETRY.
    pub retry: i32,
    /// EXPIRE.
    pub expire: i32,
    /// MINIMUM: the negative-caching TTL (RFC 2308).
    pub minimum: u32,
}

/// Who asks: the EDNS Client Subnet's address and source prefix, else the resolver's address
/// with its full length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Address (bits beyond `source_prefix` are ignored).
    pub addr: IpAddr,
    /// How many leading bits of `addr` are known.
    pub source_prefix: u8,
}

impl Client {
    /// A resolver's own address, fully known.
    pub fn from_addr(addr: IpAddr) -> Self {
        let addr = canonical(addr);
        Self {
            addr,
            source_prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }
}

/// Address family asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A records.
    V4,
    /// AAAA records.
    V6,
}

/// Why an answer holds what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A healthy POP.
    Healthy,
    /// No POP of the service is healthy and it has no fallback: the POPs healthy last.
    LastHealthy,
    /// No POP of the service is healthy: its configured fallback.
    Fallback,
}

impl Source {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Healthy => "healthy",
            Source::LastHealthy => "last_healthy",
            Source::Fallback => "fallback",
        }
    }
}

/// The steering decision for one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steered<'a> {
    /// Addresses of one POP (or the fallback addresses), all of the asked family.
    Addrs {
        /// The addresses.
        addrs: &'a [IpAddr],
        /// The POP chosen (`None` for fallback addresses).
        pop: Option<usize>,
        /// Why.
        source: Source,
        /// ECS SCOPE PREFIX-LENGTH to return (RFC 7871).
        scope: u8,
    },
    /// The service's fallback CNAME (no POP healthy).
    Cname {
        /// The target.
        target: &'a Name,
        /// ECS scope.
        scope: u8,
    },
    /// The name exists but has no address of that family.
    NoData {
        /// ECS scope.
        scope: u8,
    },
}

/// Where a GeoIP database places an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// ISO 3166-1 alpha-2 country code, upper case.
    pub country: Option<[u8; 2]>,
    /// Continent code (`EU`, `NA`, ...), upper case.
    pub continent: Option<[u8; 2]>,
    /// Length of the database's network holding the address.
    pub prefix_len: u8,
}

/// Where clients are: implemented by the GeoIP database wrapper.
pub trait Locate: Send + Sync {
    /// The location of `ip`, if the database knows it.
    fn locate(&self, ip: IpAddr) -> Option<Location>;
}

/// One POP's health as both sources see it.
#[derive(Debug)]
pub struct PopHealth {
    /// `checked && reported != Some(false)`, read on every query.
    healthy: AtomicBool,
    /// The order in which the POP last went down (1, 2, ... across all POPs); 0 while up.
    down_since: AtomicU64,
    /// (checked by this server, reported by the control plane), written rarely.
    sources: Mutex<(bool, Option<bool>)>,
}

impl PopHealth {
    fn new() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            down_since: AtomicU64::new(0),
            sources: Mutex::new((true, None)),
        }
    }

    /// Whether clients are sent to the POP.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// POP health shared by every compiled version (by POP name): the active checker and the
/// control plane's reports write it; `steer` reads it without a lock.
#[derive(Debug)]
pub struct Health {
    /// Counts transitions to down, so that "the POPs that went down last" is exact.
    downs: AtomicU64,
    pops: RwLock<HashMap<String, Arc<PopHealth>>>,
}

impl Health {
    /// Every POP healthy until told otherwise.
    pub fn new() -> Arc<Health> {
        Arc::new(Health {
            downs: AtomicU64::new(0),
            pops: RwLock::new(HashMap::new()),
        })
    }

    /// The entry of `pop`, created healthy if new.
    pub fn pop(&self, pop: &str) -> Arc<PopHealth> {
        if let Some(p) = self.pops.read().ok().and_then(|m| m.get(pop).cloned()) {
            return p;
        }
        match self.pops.write() {
            Ok(mut m) => m
                .entry(pop.to_owned())
                .or_insert_with(|| Arc::new(PopHealth::new()))
                .clone(),
            // A writer panicked while holding the lock: health is advisory, start afresh.
            Err(_) => Arc::new(PopHealth::new()),
        }
    }

    /// The active checker's verdict (after its hysteresis).
    pub fn set_checked(&self, pop: &str, healthy: bool) {
        self.update(pop, |s| s.0 = healthy);
    }

    /// The control plane's verdict; `None` when it has none (or is unreachable).
    pub fn set_reported(&self, pop: &str, healthy: Option<bool>) {
        self.update(pop, |s| s.1 = healthy);
    }

    /// Whether clients are sent to `pop` now.
    pub fn is_healthy(&self, pop: &str) -> bool {
        self.pop(pop).is_healthy()
    }

    fn update(&self, pop: &str, f: impl FnOnce(&mut (bool, Option<bool>))) {
        let entry = self.pop(pop);
        let Ok(mut sources) = entry.sources.lock() else {
            return;
        };
        f(&mut sources);
        let healthy = sources.0 && sources.1 != Some(false);
        if entry.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            let since = match healthy {
                true => 0,
                false => self.downs.fetch_add(1, Ordering::Relaxed) + 1,
            };
            entry.down_since.store(since, Ordering::Relaxed);
            tracing::info!(pop, healthy, "POP health changed");
        }
    }
}

/// One POP as compiled.
struct Pop {
    name: String,
    v4: Vec<IpAddr>,
    v6: Vec<IpAddr>,
    weight: u64,
    health: Arc<PopHealth>,
}

impl Pop {
    fn addrs(&self, family: Family) -> &[IpAddr] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

/// One service as compiled: per region, its tiers of POP indices.
struct Service {
    name: String,
    /// Every POP serving the service.
    pops: Vec<usize>,
    /// `tiers[region]`: the region's preference list reduced to the service's POPs.
    tiers: Vec<Vec<Vec<usize>>>,
    fallback_cname: Option<Name>,
    fallback_v4: Vec<IpAddr>,
    fallback_v6: Vec<IpAddr>,
}

/// A region match in the prefix table.
#[derive(Clone, Copy)]
struct PrefixHit {
    region: usize,
    /// A more specific prefix of another region lies inside this one.
    nested: bool,
}

/// Longest-prefix match: one hash table per prefix length, longest first.
#[derive(Default)]
struct PrefixTable {
    by_len: Vec<(u8, HashMap<u128, PrefixHit>)>,
}

impl PrefixTable {
    fn insert(&mut self, len: u8, key: u128, hit: PrefixHit) {
        match self.by_len.iter_mut().find(|(l, _)| *l == len) {
            Some((_, m)) => {
                m.insert(key, hit);
            }
            None => {
                let mut m = HashMap::new();
                m.insert(key, hit);
                self.by_len.push((len, m));
                self.by_len.sort_by_key(|b| std::cmp::Reverse(b.0));
            }
        }
    }

    /// The longest prefix of at most `known` bits holding `bits` (`width` 32 or 128).
    fn lookup(&self, bits: u128, known: u8, width: u8) -> Option<(u8, PrefixHit)> {
        self.by_len
            .iter()
            .filter(|(len, _)| *len <= known)
            .find_map(|(len, m)| m.get(&mask(bits, *len, width)).map(|hit| (*len, *hit)))
    }

    /// Whether any prefix longer than `len` lies inside `key/len`.
    fn has_inside(&self, key: u128, len: u8, width: u8) -> bool {
        self.by_len
            .iter()
            .filter(|(l, _)| *l > len)
            .any(|(_, m)| m.keys().any(|k| mask(*k, len, width) == key))
    }
}

/// The first `len` bits of `bits` in a `width`-bit address.
fn mask(bits: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let len = u32::from(len.min(width));
    let width = u32::from(width);
    let keep = u128::MAX.checked_shl(width - len).unwrap_or(0);
    let all = match width {
        128 => u128::MAX,
        w => (1u128 << w) - 1,
    };
    bits & keep & all
}

fn addr_bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// An IPv4 client written as an IPv4-mapped IPv6 address is the IPv4 client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One compiled version of the DNS data, immutable; health lives in the shared [`Health`].
pub struct Steering {
    zone: Name,
    zone_labels: usize,
    soa: Soa,
    ttl: u32,
    zone_ttl: u32,
    negative_ttl: u32,
    name_servers: Vec<NameServer>,
    /// Lowercase name relative to the zone (`demo`, `ns1`) → what it is.
    names: HashMap<Box<[u8]>, Lookup>,
    pops: Vec<Pop>,
    services: Vec<Service>,
    v4: PrefixTable,
    v6: PrefixTable,
    /// Country code → region; continent code → region.
    countries: HashMap<[u8; 2], usize>,
    continents: HashMap<[u8; 2], usize>,
    default_region: usize,
    locate: Option<Arc<dyn Locate>>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("zone", &self.zone.to_ascii())
            .field("serial", &self.soa.serial)
            .field("pops", &self.pops.len())
            .field("services", &self.services.len())
            .finish()
    }
}

fn name(field: &str, text: &str) -> Result<Name, SteerError> {
    let bad = |reason: String| SteerError::BadName {
        field: field.to_owned(),
        name: text.to_owned(),
        reason,
    };
    if text.trim_end_matches('.').len() > MAX_NAME {
        return Err(bad(format!("longer than {MAX_NAME} characters")));
    }
    let mut n = Name::from_ascii(text).map_err(|e| bad(e.to_string()))?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

fn code(text: &str) -> Option<[u8; 2]> {
    match text.as_bytes() {
        [a, b] => Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()]),
        _ => None,
    }
}

impl Steering {
    /// Compiles `config`'s `[dns]` data. `serial` is the SOA serial (the version number under
    /// a control plane); `health` is shared with the checker and with later versions.
    pub fn compile(
        config: &Config,
        serial: u32,
        locate: Option<Arc<dyn Locate>>,
        health: &Arc<Health>,
    ) -> Result<Steering, SteerError> {
        let dns: &DnsConfig = config.dns.as_ref().ok_or(SteerError::NoDns)?;
        let zone = name("dns.zone", &dns.zone)?;
        let zone_labels = usize::from(zone.num_labels());
        let mut names: HashMap<Box<[u8]>, Lookup> = HashMap::new();
        let relative = |n: &Name| -> Option<Box<[u8]>> {
            if !zone.zone_of(n) || n.num_labels() == zone.num_labels() {
                return None;
            }
            let inside = usize::from(n.num_labels()) - zone_labels;
            Some(join_lower(n.iter().take(inside)))
        };
        let mut name_servers = Vec::new();
        for (i, ns) in dns.name_servers.iter().enumerate() {
            let n = name(&format!("dns.ns[{i}].name"), &ns.name)?;
            if let Some(rel) = relative(&n) {
                names.insert(rel, Lookup::NameServer(i));
            }
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for a in &ns.addrs {
                match canonical(*a) {
                    IpAddr::V4(a) => v4.push(a),
                    IpAddr::V6(a) => v6.push(a),
                }
            }
            name_servers.push(NameServer { name: n, v4, v6 });
        }
        let mname = name_servers
            .first()
            .map(|n| n.name.clone())
            .ok_or_else(|| SteerError::Reference("dns.ns: at least one name server".into()))?;
        let rname = match &dns.hostmaster {
            Some(h) => name("dns.hostmaster", h)?,
            None => Name::from_ascii("hostmaster")
                .and_then(|h| h.append_domain(&zone))
                .map_err(|e| SteerError::BadName {
                    field: "dns.hostmaster".into(),
                    name: format!("hostmaster.{}", zone.to_ascii()),
                    reason: e.to_string(),
                })?,
        };

        let pops: Vec<Pop> = dns
            .pops
            .iter()
            .map(|p| {
                let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = p
                    .answers
                    .iter()
                    .map(|a| canonical(*a))
                    .partition(IpAddr::is_ipv4);
                Pop {
                    name: p.name.clone(),
                    v4,
                    v6,
                    weight: u64::from(p.weight.max(1)),
                    health: health.pop(&p.name),
                }
            })
            .collect();
        let pop_index: HashMap<&str, usize> = pops
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let region_index: HashMap<&str, usize> = dns
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        let default_region = *region_index
            .get(dns.default_region.as_str())
            .ok_or_else(|| {
                SteerError::Reference(format!(
                    "dns.default_region: no region `{}`",
                    dns.default_region
                ))
            })?;
        let region_tiers = dns
            .regions
            .iter()
            .map(|r| tiers_of(r, &pop_index))
            .collect::<Result<Vec<_>, _>>()?;

        let (v4, v6) = prefix_tables(&dns.regions)?;
        let mut countries = HashMap::new();
        let mut continents = HashMap::new();
        for (i, r) in dns.regions.iter().enumerate() {
            for c in r.countries.iter().filter_map(|c| code(c)) {
                countries.insert(c, i);
            }
            for c in r.continents.iter().filter_map(|c| code(c)) {
                continents.insert(c, i);
            }
        }

        let mut services = Vec::new();
        for s in &config.services {
            let Some(sd) = &s.dns else { continue };
            let label = sd.name.as_deref().unwrap_or(&s.name);
            let field = format!("service `{}`: dns.name", s.name);
            let full = Name::from_ascii(label)
                .map_err(|e| SteerError::BadName {
                    field: field.clone(),
                    name: label.to_owned(),
                    reason: e.to_string(),
                })?
                .append_domain(&zone)
                .map_err(|e| SteerError::BadName {
                    field: field.clone(),
                    name: label.to_owned(),
                    reason: e.to_string(),
                })?
                .to_lowercase();
            let Some(rel) = relative(&full) else {
                return Err(SteerError::Reference(format!(
                    "{field}: `{label}` is not below the zone"
                )));
            };
            let index = services.len();
            // The labels above a multi-label name exist as empty non-terminals.
            let inside = usize::from(full.num_labels()) - zone_labels;
            for skip in 1..inside {
                let ent = join_lower(full.iter().skip(skip).take(inside - skip));
                names.entry(ent).or_insert(Lookup::EmptyNonTerminal);
            }
            names.insert(rel, Lookup::Service(index));
            let own: Vec<usize> = match sd.pops.is_empty() {
                true => (0..pops.len()).collect(),
                false => sd
                    .pops
                    .iter()
                    .map(|p| {
                        pop_index.get(p.as_str()).copied().ok_or_else(|| {
                            SteerError::Reference(format!(
                                "service `{}`: dns.pops: no POP `{p}`",
                                s.name
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            };
            let tiers = region_tiers
                .iter()
                .map(|region| {
                    let tiers = region
                        .iter()
                        .map(|tier| {
                            tier.iter()
                                .copied()
                                .filter(|p| own.contains(p))
                                .collect::<Vec<_>>()
                        })
                        .filter(|tier| !tier.is_empty())
                        .collect::<Vec<_>>();
                    // A region listing none of the service's POPs: all of them, by weight.
                    match tiers.is_empty() {
                        true => vec![own.clone()],
                        false => tiers,
                    }
                })
                .collect();
            let fallback_cname = match &sd.fallback_cname {
                Some(c) => Some(name(
                    &format!("service `{}`: dns.fallback_cname", s.name),
                    c,
                )?),
                None => None,
            };
            let (fallback_v4, fallback_v6) = sd
                .fallback_addrs
                .iter()
                .map(|a| canonical(*a))
                .partition(IpAddr::is_ipv4);
            services.push(Service {
                name: s.name.clone(),
                pops: own,
                tiers,
                fallback_cname,
                fallback_v4,
                fallback_v6,
            });
        }

        Ok(Steering {
            soa: Soa {
                mname,
                rname,
                serial,
                refresh: SOA_REFRESH,
                retry: SOA_RETRY,
                expire: SOA_EXPIRE,
                minimum: dns.negative_ttl_s,
            },
            zone,
            zone_labels,
            ttl: dns.ttl_s,
            zone_ttl: dns.zone_ttl_s,
            negative_ttl: dns.negative_ttl_s,
            name_servers,
            names,
            pops,
            services,
            v4,
            v6,
            countries,
            continents,
            default_region,
            locate,
        })
    }

    /// The zone's apex (lowercase, fully qualified).
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// What `qname` is: outside the zone, the apex, a name server, a service, or nothing.
    /// Case-insensitive; no allocation.
    pub fn owner(&self, qname: &Name) -> Lookup {
        let labels = usize::from(qname.num_labels());
        if labels < self.zone_labels {
            return Lookup::OutOfZone;
        }
        let inside = labels - self.zone_labels;
        let in_zone = qname
            .iter()
            .skip(inside)
            .zip(self.zone.iter())
            .all(|(a, b)| a.eq_ignore_ascii_case(b));
        if !in_zone {
            return Lookup::OutOfZone;
        }
        if inside == 0 {
            return Lookup::Apex;
        }
        let mut buf = [0u8; MAX_NAME + 1];
        let mut len = 0;
        for (i, label) in qname.iter().take(inside).enumerate() {
            let need = label.len() + usize::from(i > 0);
            let Some(dst) = buf.get_mut(len..len + need) else {
                return Lookup::NoSuchName;
            };
            let (dot, rest) = dst.split_at_mut(usize::from(i > 0));
            if let Some(d) = dot.first_mut() {
                *d = b'.';
            }
            for (d, s) in rest.iter_mut().zip(label) {
                *d = s.to_ascii_lowercase();
            }
            len += need;
        }
        buf.get(..len)
            .and_then(|key| self.names.get(key))
            .copied()
            .unwrap_or(Lookup::NoSuchName)
    }

    /// The addresses (or fallback) `client` gets for `service`'s name.
    pub fn steer(&self, service: usize, client: Client, family: Family) -> Steered<'_> {
        let Some(svc) = self.services.get(service) else {
            return Steered::NoData { scope: 0 };
        };
        let (region, scope) = self.region_of(client);
        let tiers = svc.tiers.get(region).map(Vec::as_slice).unwrap_or(&[]);
        let key = client_key(client, scope);
        if let Some((pop, addrs)) = self.pick(tiers, family, key, |p| p.health.is_healthy()) {
            return Steered::Addrs {
                addrs,
                pop: Some(pop),
                source: Source::Healthy,
                scope,
            };
        }
        let any_healthy = svc
            .pops
            .iter()
            .filter_map(|p| self.pops.get(*p))
            .any(|p| p.health.is_healthy());
        if any_healthy {
            // Serving POPs are up; none of them has an address of this family.
            return Steered::NoData { scope };
        }
        if let Some(target) = &svc.fallback_cname {
            return Steered::Cname { target, scope: 0 };
        }
        let fallback = match family {
            Family::V4 => &svc.fallback_v4,
            Family::V6 => &svc.fallback_v6,
        };
        if !(svc.fallback_v4.is_empty() && svc.fallback_v6.is_empty()) {
            return match fallback.is_empty() {
                true => Steered::NoData { scope: 0 },
                false => Steered::Addrs {
                    addrs: fallback,
                    pop: None,
                    source: Source::Fallback,
                    scope: 0,
                },
            };
        }
        // Nothing healthy and no fallback: keep answering the POPs that were healthy last.
        let last = svc
            .pops
            .iter()
            .filter_map(|p| self.pops.get(*p))
            .map(|p| p.health.down_since.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let was_last = |p: &Pop| p.health.down_since.load(Ordering::Relaxed) >= last;
        match self
            .pick(tiers, family, key, was_last)
            .or_else(|| self.pick(tiers, family, key, |_| true))
        {
            Some((pop, addrs)) => Steered::Addrs {
                addrs,
                pop: Some(pop),
                source: Source::LastHealthy,
                scope,
            },
            None => Steered::NoData { scope },
        }
    }

    /// The first tier with an eligible POP holding `family` addresses; one of its POPs by
    /// weight, chosen by `key`.
    fn pick(
        &self,
        tiers: &[Vec<usize>],
        family: Family,
        key: u64,
        eligible: impl Fn(&Pop) -> bool,
    ) -> Option<(usize, &[IpAddr])> {
        let usable = |p: &usize| {
            self.pops
                .get(*p)
                .filter(|pop| !pop.addrs(family).is_empty() && eligible(pop))
                .map(|pop| (*p, pop))
        };
        for tier in tiers {
            let total: u64 = tier.iter().filter_map(usable).map(|(_, p)| p.weight).sum();
            if total == 0 {
                continue;
            }
            let mut at = key % total;
            for (i, pop) in tier.iter().filter_map(usable) {
                if at < pop.weight {
                    return Some((i, pop.addrs(family)));
                }
                at -= pop.weight;
            }
        }
        None
    }

    /// The client's region and the ECS scope the answer holds for.
    fn region_of(&self, client: Client) -> (usize, u8) {
        let addr = canonical(client.addr);
        let (bits, width) = addr_bits(addr);
        let known = client.source_prefix.min(width);
        let table = match addr {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        };
        if let Some((len, hit)) = table.lookup(bits, known, width) {
            // The answer holds for the whole matched prefix unless another region carves a
            // more specific prefix out of it: then only for what the client told.
            return (hit.region, if hit.nested { known } else { len });
        }
        if let Some(loc) = self.locate.as_ref().and_then(|l| l.locate(addr)) {
            let region = loc
                .country
                .and_then(|c| self.countries.get(&c))
                .or_else(|| loc.continent.and_then(|c| self.continents.get(&c)));
            if let Some(region) = region {
                return (*region, known);
            }
        }
        (self.default_region, known)
    }

    /// Name servers of the zone (NS targets and glue).
    pub fn name_servers(&self) -> &[NameServer] {
        &self.name_servers
    }

    /// The SOA record's data.
    pub fn soa(&self) -> &Soa {
        &self.soa
    }

    /// TTL of steered answers.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// TTL of the SOA, NS and glue records.
    pub fn zone_ttl(&self) -> u32 {
        self.zone_ttl
    }

    /// Negative-caching TTL (RFC 2308).
    pub fn negative_ttl(&self) -> u32 {
        self.negative_ttl
    }

    /// A service's name (for metrics); `-` if out of range.
    pub fn service_name(&self, service: usize) -> &str {
        self.services.get(service).map_or("-", |s| s.name.as_str())
    }

    /// A POP's name (for metrics); `-` if out of range.
    pub fn pop_name(&self, pop: usize) -> &str {
        self.pops.get(pop).map_or("-", |p| p.name.as_str())
    }

    /// Number of services with a DNS name.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }
}

/// Labels joined by dots, lowercased.
fn join_lower<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Box<[u8]> {
    let mut out = Vec::new();
    for (i, label) in labels.enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.into_boxed_slice()
}

/// A stable number for the client's block (the bits the answer's scope covers).
fn client_key(client: Client, scope: u8) -> u64 {
    let (bits, width) = addr_bits(canonical(client.addr));
    let block = mask(bits, scope.min(client.source_prefix), width);
    // SplitMix64 finaliser over both halves: neighbouring blocks spread over the weights.
    let mut x = (block as u64) ^ ((block >> 64) as u64).rotate_left(29) ^ u64::from(width);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn tiers_of(
    region: &RegionConfig,
    pop_index: &HashMap<&str, usize>,
) -> Result<Vec<Vec<usize>>, SteerError> {
    region
        .pops
        .iter()
        .map(|tier| {
            tier.pops()
                .iter()
                .map(|p| {
                    pop_index.get(p.as_str()).copied().ok_or_else(|| {
                        SteerError::Reference(format!("dns.region `{}`: no POP `{p}`", region.name))
                    })
                })
                .collect()
        })
        .collect()
}

fn parse_prefix(region: &str, text: &str) -> Result<(u128, u8, u8, bool), SteerError> {
    let bad = || SteerError::BadPrefix {
        region: region.to_owned(),
        prefix: text.to_owned(),
    };
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let len: u8 = len.trim().parse().map_err(|_| bad())?;
    let (bits, width) = addr_bits(addr);
    if len > width {
        return Err(bad());
    }
    Ok((mask(bits, len, width), len, width, addr.is_ipv4()))
}

fn prefix_tables(regions: &[RegionConfig]) -> Result<(PrefixTable, PrefixTable), SteerError> {
    let mut v4 = PrefixTable::default();
    let mut v6 = PrefixTable::default();
    let mut all = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        for p in &r.prefixes {
            let (key, len, width, is_v4) = parse_prefix(&r.name, p)?;
            all.push((key, len, width, is_v4));
            let table = if is_v4 { &mut v4 } else { &mut v6 };
            table.insert(
                len,
                key,
                PrefixHit {
                    region: i,
                    nested: false,
                },
            );
        }
    }
    for (key, len, width, is_v4) in all {
        let table = if is_v4 { &mut v4 } else { &mut v6 };
        if table.has_inside(key, len, width) {
            if let Some(hit) = table
                .by_len
                .iter_mut()
                .find(|(l, _)| *l == len)
                .and_then(|(_, m)| m.get_mut(&key))
            {
                hit.nested = true;
            }
        }
    }
    Ok((v4, v6))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const DATA: &str = r#"
[dns]
zone = "CDN.Example."
default_region = "eu"
ttl_s = 20

[[dns.ns]]
name = "ns1.cdn.example"
addrs = ["192.0.2.53", "2001:db8::53"]

[[dns.ns]]
name = "ns.other.example"

[[dns.pop]]
name = "ams"
answers = ["192.0.2.10", "2001:db8::10"]
weight = 3

[[dns.pop]]
name = "fra"
answers = ["192.0.2.20"]

[[dns.pop]]
name = "nyc"
answers = ["198.51.100.10", "2001:db8:1::10"]

[[dns.region]]
name = "eu"
prefixes = ["10.0.0.0/8", "2001:db8:e::/48"]
countries = ["NL"]
pops = [["ams", "fra"], "nyc"]

[[dns.region]]
name = "us"
prefixes = ["10.1.0.0/16"]
continents = ["NA"]
pops = ["nyc", "ams"]

[[service]]
name = "demo"
hosts = ["demo.example"]
[service.origin]
servers = [{ addr = "127.0.0.1:9000" }]
[service.dns]

[[service]]
name = "shop"
hosts = ["shop.example"]
[service.origin]
servers = [{ addr = "127.0.0.1:9000" }]
[service.dns]
name = "www.shop"
pops = ["nyc"]
fallback_cname = "shop.backup.example"

[[service]]
name = "api"
hosts = ["api.example"]
[service.origin]
servers = [{ addr = "127.0.0.1:9000" }]
[service.dns]
pops = ["fra"]
fallback_addrs = ["203.0.113.9"]

[[service]]
name = "nodns"
hosts = ["nodns.example"]
[service.origin]
servers = [{ addr = "127.0.0.1:9000" }]
"#;

    fn steering(health: &Arc<Health>, locate: Option<Arc<dyn Locate>>) -> Steering {
        let config = firebreak_config::parse_managed_str("fleet.toml", DATA).unwrap();
        Steering::compile(&config, 7, locate, health).unwrap()
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn client(s: &str, prefix: u8) -> Client {
        Client {
            addr: s.parse().unwrap(),
            source_prefix: prefix,
        }
    }

    fn pop_of(s: &Steering, steered: Steered<'_>) -> (String, Source) {
        match steered {
            Steered::Addrs {
                pop: Some(p),
                source,
                ..
            } => (s.pop_name(p).to_owned(), source),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_are_found_case_insensitively_inside_the_zone_only() {
        let s = steering(&Health::new(), None);
        assert_eq!(s.zone().to_ascii(), "cdn.example.");
        assert_eq!(s.owner(&n("cdn.example.")), Lookup::Apex);
        assert_eq!(s.owner(&n("CDN.EXAMPLE")), Lookup::Apex);
        assert_eq!(s.owner(&n("DeMo.Cdn.Example.")), Lookup::Service(0));
        assert_eq!(s.owner(&n("www.shop.cdn.example.")), Lookup::Service(1));
        assert_eq!(s.owner(&n("shop.cdn.example.")), Lookup::EmptyNonTerminal);
        assert_eq!(s.owner(&n("api.cdn.example.")), Lookup::Service(2));
        assert_eq!(s.owner(&n("ns1.cdn.example.")), Lookup::NameServer(0));
        assert_eq!(s.owner(&n("nodns.cdn.example.")), Lookup::NoSuchName);
        assert_eq!(s.owner(&n("x.demo.cdn.example.")), Lookup::NoSuchName);
        assert_eq!(s.owner(&n("example.")), Lookup::OutOfZone);
        assert_eq!(s.owner(&n("demo.cdn.example.org.")), Lookup::OutOfZone);
        assert_eq!(s.owner(&n("xcdn.example.")), Lookup::OutOfZone);
        assert_eq!(s.soa().serial, 7);
        assert_eq!(s.soa().mname.to_ascii(), "ns1.cdn.example.");
        assert_eq!(s.soa().rname.to_ascii(), "hostmaster.cdn.example.");
        assert_eq!(s.ttl(), 20);
    }

    #[test]
    fn longest_prefix_picks_the_region_and_sets_the_scope() {
        let s = steering(&Health::new(), None);
        // 10.1/16 is a carve-out of eu's 10/8: us.
        let (pop, _) = pop_of(&s, s.steer(0, client("10.1.2.0", 24), Family::V4));
        assert_eq!(pop, "nyc");
        assert!(matches!(
            s.steer(0, client("10.1.2.0", 24), Family::V4),
            Steered::Addrs { scope: 16, .. }
        ));
        // 10.2.3.0/24 is in eu, whose /8 has a carve-out: the scope is what the client told.
        let got = s.steer(0, client("10.2.3.0", 24), Family::V4);
        assert!(matches!(got, Steered::Addrs { scope: 24, .. }), "{got:?}");
        assert!(["ams", "fra"].contains(&pop_of(&s, got).0.as_str()));
        // A /12 ECS cannot be placed in the /16: eu's /8 answers.
        let got = s.steer(0, client("10.0.0.0", 12), Family::V4);
        assert!(["ams", "fra"].contains(&pop_of(&s, got).0.as_str()));
        // Unknown clients: the default region.
        let got = s.steer(
            0,
            Client::from_addr("203.0.113.1".parse().unwrap()),
            Family::V4,
        );
        assert!(["ams", "fra"].contains(&pop_of(&s, got).0.as_str()));
        // IPv4-mapped IPv6 is the IPv4 client.
        let got = s.steer(
            0,
            Client::from_addr("::ffff:10.1.0.1".parse().unwrap()),
            Family::V4,
        );
        assert_eq!(pop_of(&s, got).0, "nyc");
    }

    #[test]
    fn weights_share_a_tier_and_a_client_keeps_its_pop() {
        let s = steering(&Health::new(), None);
        let mut ams = 0;
        for i in 0..4000u32 {
            let c = Client {
                addr: IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | (i << 8) & 0x00FF_FF00)),
                source_prefix: 24,
            };
            let first = s.steer(0, c, Family::V4);
            assert_eq!(first, s.steer(0, c, Family::V4), "stable per client block");
            if pop_of(&s, first).0 == "ams" {
                ams += 1;
            }
        }
        // ams weighs 3, fra 1: about three quarters (wide bounds: this is not a timing test).
        assert!((2600..3400).contains(&ams), "{ams} of 4000 to ams");
    }

    #[test]
    fn family_without_addresses_skips_to_pops_that_have_them() {
        let s = steering(&Health::new(), None);
        // fra has no IPv6; AAAA for eu clients comes from ams (the tier's only v6 POP).
        for i in 0..50u32 {
            let c = client(&format!("10.2.{i}.0"), 24);
            let (pop, _) = pop_of(&s, s.steer(0, c, Family::V6));
            assert_eq!(pop, "ams");
        }
        // us lists no POP of api (fra only): api's own POPs serve its clients.
        let (pop, _) = pop_of(&s, s.steer(2, client("10.1.0.0", 24), Family::V4));
        assert_eq!(pop, "fra");
        // api is served by fra only, which has no IPv6, and fra is healthy: NODATA.
        assert!(matches!(
            s.steer(2, client("10.2.0.0", 24), Family::V6),
            Steered::NoData { .. }
        ));
    }

    #[test]
    fn an_unhealthy_pop_leaves_and_the_next_tier_answers() {
        let health = Health::new();
        let s = steering(&health, None);
        health.set_checked("ams", false);
        health.set_checked("fra", false);
        let (pop, source) = pop_of(&s, s.steer(0, client("10.2.0.0", 24), Family::V4));
        assert_eq!((pop.as_str(), source), ("nyc", Source::Healthy));
        // The control plane's verdict counts too, and either source can take a POP out.
        health.set_checked("fra", true);
        health.set_reported("fra", Some(false));
        let (pop, _) = pop_of(&s, s.steer(0, client("10.2.0.0", 24), Family::V4));
        assert_eq!(pop, "nyc");
        health.set_reported("fra", None);
        let (pop, _) = pop_of(&s, s.steer(0, client("10.2.0.0", 24), Family::V4));
        assert_eq!(pop, "fra");
        // Health is shared by name with the next compiled version.
        let next = steering(&health, None);
        assert!(!next.pops[0].health.is_healthy(), "ams still down");
    }

    #[test]
    fn nothing_healthy_answers_the_fallback_never_empty() {
        let health = Health::new();
        let s = steering(&health, None);
        health.set_checked("nyc", false);
        // shop: only nyc, fallback CNAME.
        match s.steer(1, client("10.2.0.0", 24), Family::V4) {
            Steered::Cname { target, scope } => {
                assert_eq!(target.to_ascii(), "shop.backup.example.");
                assert_eq!(scope, 0);
            }
            other => panic!("{other:?}"),
        }
        // api: only fra, fallback addresses.
        health.set_checked("fra", false);
        match s.steer(2, client("10.2.0.0", 24), Family::V4) {
            Steered::Addrs {
                addrs,
                pop: None,
                source: Source::Fallback,
                ..
            } => {
                assert_eq!(addrs, ["203.0.113.9".parse::<IpAddr>().unwrap()]);
            }
            other => panic!("{other:?}"),
        }
        // demo: every POP down, no fallback: the POP healthy last keeps being answered.
        health.set_checked("ams", false);
        let (pop, source) = pop_of(&s, s.steer(0, client("10.1.0.0", 24), Family::V4));
        assert_eq!((pop.as_str(), source), ("ams", Source::LastHealthy));
        let (pop, source) = pop_of(&s, s.steer(0, client("10.2.0.0", 24), Family::V4));
        assert_eq!((pop.as_str(), source), ("ams", Source::LastHealthy));
        // A POP coming back is healthy again at once (hysteresis lives in the checker).
        health.set_checked("nyc", true);
        let (pop, source) = pop_of(&s, s.steer(0, client("10.2.0.0", 24), Family::V4));
        assert_eq!((pop.as_str(), source), ("nyc", Source::Healthy));
    }

    struct Geo;
    impl Locate for Geo {
        fn locate(&self, ip: IpAddr) -> Option<Location> {
            match ip {
                IpAddr::V4(v4) if v4.octets()[0] == 198 => Some(Location {
                    country: Some(*b"US"),
                    continent: Some(*b"NA"),
                    prefix_len: 8,
                }),
                IpAddr::V4(v4) if v4.octets()[0] == 203 => Some(Location {
                    country: Some(*b"NL"),
                    continent: Some(*b"EU"),
                    prefix_len: 8,
                }),
                _ => None,
            }
        }
    }

    #[test]
    fn geoip_places_clients_no_prefix_matches() {
        let s = steering(&Health::new(), Some(Arc::new(Geo)));
        let (pop, _) = pop_of(&s, s.steer(0, client("198.18.0.0", 24), Family::V4));
        assert_eq!(pop, "nyc", "continent NA → us");
        let got = s.steer(0, client("203.0.113.0", 24), Family::V4);
        assert!(
            ["ams", "fra"].contains(&pop_of(&s, got).0.as_str()),
            "country NL → eu"
        );
        // A prefix beats the database.
        let (pop, _) = pop_of(&s, s.steer(0, client("10.1.0.0", 24), Family::V4));
        assert_eq!(pop, "nyc");
    }

    #[test]
    fn the_example_steers_as_its_comments_say() {
        let text = include_str!("../../../examples/dns.toml");
        let config = firebreak_config::parse_managed_str("examples/dns.toml", text).unwrap();
        let s = Steering::compile(&config, 1, None, &Health::new()).unwrap();
        let Lookup::Service(demo) = s.owner(&n("demo.cdn.localhost.")) else {
            panic!("demo not found")
        };
        let (pop, _) = pop_of(&s, s.steer(demo, client("203.0.113.0", 24), Family::V4));
        assert_eq!(pop, "nyc");
        let (pop, _) = pop_of(&s, s.steer(demo, client("192.0.2.0", 24), Family::V4));
        assert_eq!(pop, "sin");
        let Lookup::Service(assets) = s.owner(&n("assets.cdn.localhost.")) else {
            panic!("assets not found")
        };
        let (pop, _) = pop_of(&s, s.steer(assets, client("192.0.2.0", 24), Family::V6));
        assert_eq!(pop, "ams");
    }

    #[test]
    fn mask_handles_every_length() {
        assert_eq!(mask(0xFFFF_FFFF, 0, 32), 0);
        assert_eq!(mask(0xFFFF_FFFF, 8, 32), 0xFF00_0000);
        assert_eq!(mask(0xFFFF_FFFF, 32, 32), 0xFFFF_FFFF);
        assert_eq!(mask(u128::MAX, 128, 128), u128::MAX);
        assert_eq!(mask(u128::MAX, 1, 128), 1u128 << 127);
        assert_eq!(mask(0xFFFF_FFFF, 40, 32), 0xFFFF_FFFF);
    }
}
