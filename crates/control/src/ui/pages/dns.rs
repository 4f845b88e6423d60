//! DNS steering as the control plane sees it: where each region goes, fallbacks in use.

use super::*;

pub use crate::steering::{RegionRow, ServiceDnsRow};

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
    let steering = config
        .and_then(|c| crate::steering::steering(c, health))
        .unwrap_or_default();
    DnsPage {
        nav,
        zone: steering.zone,
        pops,
        regions: steering.regions,
        services: steering.services,
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
        let doc = crate::steering::testing::DNS_DOC;
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
