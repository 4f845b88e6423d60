//! DNS steering as the control plane sees it: where each region goes, fallbacks in use.

use super::*;

/// One region's steering now.
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
pub struct ServiceDnsRow {
    /// Service.
    pub service: String,
    /// What it answers when none of its POPs is healthy.
    pub fallback: String,
    /// Whether that fallback answers now somewhere (a region with no healthy POP of its).
    pub in_use: String,
}

/// The DNS page.
#[derive(Template)]
#[template(path = "ui/dns.html")]
pub struct DnsPage {
    /// Header.
    pub nav: Nav,
    /// The zone (empty: the fleet has no DNS).
    pub zone: String,
    /// POP health as the control plane sees it: (pop, healthy, summary).
    pub pops: Vec<(String, bool, String)>,
    /// Regions.
    pub regions: Vec<RegionRow>,
    /// Services.
    pub services: Vec<ServiceDnsRow>,
}

/// The DNS page's view of `config` under `health`.
pub fn dns_view(
    nav: Nav,
    config: Option<&firebreak_config::Config>,
    health: &PopHealthList,
) -> DnsPage {
    let healthy = |p: &str| health.pops.iter().any(|h| h.pop == p && h.healthy);
    let pops = health
        .pops
        .iter()
        .map(|p| {
            (
                p.pop.clone(),
                p.healthy,
                format!(
                    "{} of {} edges live, {} serving, {} stale",
                    p.live, p.edges, p.healthy_edges, p.stale
                ),
            )
        })
        .collect();
    let Some((dns, config)) = config.and_then(|c| c.dns.as_ref().map(|d| (d, c))) else {
        return DnsPage {
            nav,
            zone: String::new(),
            pops,
            regions: Vec::new(),
            services: Vec::new(),
        };
    };
    let regions: Vec<RegionRow> = dns
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
            let without: Vec<&str> = dns
                .regions
                .iter()
                .filter(|r| {
                    !r.pops
                        .iter()
                        .flat_map(|t| t.pops())
                        .any(|p| serves(p) && healthy(p))
                })
                .map(|r| r.name.as_str())
                .collect();
            Some(ServiceDnsRow {
                service: svc.name.clone(),
                fallback,
                in_use: match (
                    without.is_empty(),
                    d.fallback_cname.is_none() && d.fallback_addrs.is_empty(),
                ) {
                    (true, _) => "no".to_owned(),
                    (false, false) => format!("yes, in {}", without.join(", ")),
                    (false, true) => format!("in {}: no POP of its is healthy", without.join(", ")),
                },
            })
        })
        .collect();
    DnsPage {
        nav,
        zone: dns.zone.clone(),
        pops,
        regions,
        services,
    }
}

/// `GET /ui/dns`.
pub async fn dns(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
) -> Result<Response, UiError> {
    let health = ui.plane.pop_health().await?;
    let config = match ui.plane.fleet_state().default_version() {
        Some(v) => {
            let doc = ui.plane.version(v).await?.document;
            tokio::task::spawn_blocking(move || {
                firebreak_config::parse_managed_str(&format!("version {v}"), &doc).ok()
            })
            .await
            .ok()
            .flatten()
        }
        None => None,
    };
    Ok(render(&dns_view(
        Nav::new(&s, "dns"),
        config.as_ref().map(|c| c.get()),
        &health,
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ui::pages::testing::*;

    #[test]
    fn the_dns_page_shows_where_regions_go_and_fallbacks_in_use() {
        let doc = "[cache]\nmax_bytes = 67108864\nmax_object_bytes = 1048576\n\
[dns]\nzone = \"cdn.example\"\ndefault_region = \"eu\"\n\
[[dns.ns]]\nname = \"ns1.other.example\"\naddrs = []\n\
[[dns.pop]]\nname = \"ams\"\nanswers = [\"192.0.2.1\"]\n\
[[dns.pop]]\nname = \"fra\"\nanswers = [\"192.0.2.2\"]\n\
[[dns.pop]]\nname = \"nyc\"\nanswers = [\"192.0.2.3\"]\n\
[[dns.region]]\nname = \"eu\"\nprefixes = [\"198.51.100.0/24\"]\npops = [\"ams\", \"fra\"]\n\
[[dns.region]]\nname = \"us\"\nprefixes = [\"203.0.113.0/24\"]\npops = [\"nyc\"]\n\
[[service]]\nname = \"demo\"\nhosts = [\"demo.test\"]\n[service.origin]\nservers = [{ addr = \"127.0.0.1:9\" }]\n\
[service.dns]\nfallback_cname = \"demo.backup.example\"\n";
        let config = firebreak_config::parse_managed_str("f.toml", doc).unwrap();
        let pop = |name: &str, healthy: bool| PopHealth {
            pop: name.into(),
            edges: 1,
            live: 1,
            healthy_edges: u32::from(healthy),
            stale: 0,
            healthy,
            listen: Vec::new(),
        };
        let health = PopHealthList {
            at_ms: 1,
            live_window_ms: 60_000,
            pops: vec![pop("ams", false), pop("fra", true), pop("nyc", false)],
            truncated: false,
        };
        let page = dns_view(nav(), Some(config.get()), &health);
        assert_eq!(page.regions.len(), 2);
        assert_eq!(page.regions[0].sent_to, "fra (tier 2 of 2)");
        assert!(page.regions[0].fallback);
        assert_eq!(page.regions[0].preference, "ams → fra");
        assert!(page.regions[1].sent_to.starts_with("no healthy POP"));
        assert_eq!(page.services[0].fallback, "CNAME demo.backup.example");
        assert_eq!(page.services[0].in_use, "yes, in us");
        let html = page.render().unwrap();
        assert!(html.contains("zone cdn.example"));
        let none = dns_view(nav(), None, &health).render().unwrap();
        assert!(none.contains("no <code>[dns]</code>"), "{none}");
    }
}
