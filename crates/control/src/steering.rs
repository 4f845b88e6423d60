//! Where DNS sends clients now, as the control plane sees it: each region's first tier with a
//! healthy POP, and each service whose own fallback answers because no POP of its is healthy.
//! One computation for the dashboard's DNS page and the status page's automatic `dns/fallback`
//! incident, from the running version's `[dns]` data and the POP health the DNS servers read
//! (`GET /v1/pops`). The DNS servers' own active checks are not known here.

use firebreak_config::Config;
use firebreak_protocol::api::PopHealthList;

/// One region's steering now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionRow {
    /// Name.
    pub region: String,
    /// Its preference list, tiers separated by `→`.
    pub preference: String,
    /// Where clients are sent now.
    pub sent_to: String,
    /// Whether that is a fallback (not the first tier, or no POP at all).
    pub fallback: bool,
}

/// One service's DNS fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDnsRow {
    /// Service.
    pub service: String,
    /// What it answers when none of its POPs is healthy.
    pub fallback: String,
    /// Whether that fallback answers now somewhere (a region with no healthy POP of its).
    pub in_use: String,
    /// Regions where no POP of the service is healthy.
    pub without: Vec<String>,
}

/// The steering of a fleet with DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    /// The zone.
    pub zone: String,
    /// Regions.
    pub regions: Vec<RegionRow>,
    /// Services with a `[service.dns]` section.
    pub services: Vec<ServiceDnsRow>,
}

impl Steering {
    /// Fallbacks in use now, described (empty: every region on its first tier, every
    /// service answered by a POP of its).
    pub fn fallbacks(&self) -> Vec<String> {
        let regions = self
            .regions
            .iter()
            .filter(|r| r.fallback)
            .map(|r| format!("region {} → {}", r.region, r.sent_to));
        let services = self
            .services
            .iter()
            .filter(|s| !s.without.is_empty())
            .map(|s| format!("service {}: {}", s.service, s.in_use));
        regions.chain(services).collect()
    }
}

/// The steering of `config` under `health`; `None` when the fleet has no DNS.
pub fn steering(config: &Config, health: &PopHealthList) -> Option<Steering> {
    let dns = config.dns.as_ref()?;
    let healthy = |p: &str| health.pops.iter().any(|h| h.pop == p && h.healthy);
    let regions = dns
        .regions
        .iter()
        .map(|r| {
            let first = r.pops.iter().enumerate().find_map(|(i, t)| {
                let up: Vec<&str> = t
                    .pops()
                    .iter()
                    .map(String::as_str)
                    .filter(|p| healthy(p))
                    .collect();
                (!up.is_empty()).then(|| (i, up.join(", ")))
            });
            let (sent_to, fallback) = match first {
                Some((0, up)) => (up, false),
                Some((i, up)) => (format!("{up} (tier {} of {})", i + 1, r.pops.len()), true),
                None => (
                    "no healthy POP: each service's fallback answers".to_owned(),
                    true,
                ),
            };
            RegionRow {
                region: r.name.clone(),
                preference: r
                    .pops
                    .iter()
                    .map(|t| t.pops().join(" + "))
                    .collect::<Vec<_>>()
                    .join(" → "),
                sent_to,
                fallback,
            }
        })
        .collect();
    let services = config
        .services
        .iter()
        .filter_map(|svc| {
            let d = svc.dns.as_ref()?;
            let fallback = match (&d.fallback_cname, d.fallback_addrs.is_empty()) {
                (Some(c), _) => format!("CNAME {c}"),
                (None, false) => d
                    .fallback_addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                (None, true) => "the last healthy answer".to_owned(),
            };
            let serves = |p: &str| d.pops.is_empty() || d.pops.iter().any(|x| x == p);
            let without: Vec<String> = dns
                .regions
                .iter()
                .filter(|r| {
                    !r.pops
                        .iter()
                        .flat_map(|t| t.pops())
                        .any(|p| serves(p) && healthy(p))
                })
                .map(|r| r.name.clone())
                .collect();
            let in_use = match (
                without.is_empty(),
                d.fallback_cname.is_none() && d.fallback_addrs.is_empty(),
            ) {
                (true, _) => "no".to_owned(),
                (false, false) => format!("yes, in {}", without.join(", ")),
                (false, true) => format!("in {}: no POP of its is healthy", without.join(", ")),
            };
            Some(ServiceDnsRow {
                service: svc.name.clone(),
                fallback,
                in_use,
                without,
            })
        })
        .collect();
    Some(Steering {
        zone: dns.zone.clone(),
        regions,
        services,
    })
}

#[cfg(test)]
pub(crate) mod testing {
    /// A fleet document with DNS: regions eu (ams, then fra) and us (nyc); service demo with a
    /// fallback CNAME.
    pub(crate) const DNS_DOC: &str = "[cache]\nmax_bytes = 67108864\nmax_object_bytes = 1048576\n\
[dns]\nzone = \"cdn.example\"\ndefault_region = \"eu\"\n\
[[dns.ns]]\nname = \"ns1.other.example\"\naddrs = []\n\
[[dns.pop]]\nname = \"ams\"\nanswers = [\"192.0.2.1\"]\n\
[[dns.pop]]\nname = \"fra\"\nanswers = [\"192.0.2.2\"]\n\
[[dns.pop]]\nname = \"nyc\"\nanswers = [\"192.0.2.3\"]\n\
[[dns.region]]\nname = \"eu\"\nprefixes = [\"198.51.100.0/24\"]\npops = [\"ams\", \"fra\"]\n\
[[dns.region]]\nname = \"us\"\nprefixes = [\"203.0.113.0/24\"]\npops = [\"nyc\"]\n\
[[service]]\nname = \"demo\"\nhosts = [\"demo.test\"]\n[service.origin]\nservers = [{ addr = \"127.0.0.1:9\" }]\n\
[service.dns]\nfallback_cname = \"demo.backup.example\"\n";
}
