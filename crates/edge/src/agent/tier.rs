//! What an HTTP edge follows from the control plane for tiered caching: the fleet's tier
//! secret (`GET /v1/edges/{id}/tier`, its own credential) and the POPs' serving edges'
//! client listeners (`GET /v1/pops`), polled every health interval into the edge's
//! [`crate::tier::TierState`]. When the control plane cannot be asked, the last list and
//! secret stay (static stability: a control-plane outage never changes where misses go).

use super::client::ControlClient;
use crate::server::EdgeHandle;
use crate::tier::ShieldMembers;
use firebreak_protocol::api::PopHealthList;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

/// Polls between two fetches of the tier secret once one is held (it changes only when the
/// control plane's store is rebuilt).
const SECRET_EVERY_POLLS: u32 = 60;

/// Follows the control plane until the edge is gone.
pub(crate) async fn follow(edge: Weak<EdgeHandle>, client: ControlClient, every: Duration) {
    let mut since_secret: Option<u32> = None;
    loop {
        let Some(handle) = edge.upgrade() else { return };
        let tier = &handle.state().tier;
        if since_secret.is_none_or(|n| n >= SECRET_EVERY_POLLS) {
            match client.tier_secret().await {
                Ok(secret) => {
                    tier.set_secret(secret);
                    since_secret = Some(0);
                }
                Err(e) => tracing::debug!(error = %e, "tier secret not fetched"),
            }
        }
        since_secret = since_secret.map(|n| n.saturating_add(1));
        match client.pop_health().await {
            Ok(list) => tier.set_members(members(&list)),
            Err(e) => tracing::debug!(error = %e, "POP edges not fetched; keeping the last list"),
        }
        drop(handle);
        tokio::time::sleep(every).await;
    }
}

/// Every POP's plain-HTTP listeners, by POP (its own POP's too: in a shield POP, each object
/// has one home among its edges).
pub fn members(list: &PopHealthList) -> ShieldMembers {
    ShieldMembers::new(list.pops.iter().map(|p| {
        let edges: Vec<SocketAddr> = p
            .listen
            .iter()
            .filter_map(|url| url.strip_prefix("http://"))
            .filter_map(|addr| addr.trim_end_matches('/').parse().ok())
            .collect();
        (p.pop.clone(), edges)
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use firebreak_protocol::api::PopHealth;

    #[test]
    fn members_are_the_other_pops_plain_listeners() {
        let pop = |name: &str, listen: &[&str]| PopHealth {
            pop: name.into(),
            edges: 1,
            live: 1,
            healthy_edges: 1,
            stale: 0,
            healthy: true,
            listen: listen.iter().map(|s| s.to_string()).collect(),
        };
        let list = PopHealthList {
            at_ms: 0,
            live_window_ms: 0,
            pops: vec![
                pop("ams", &["http://127.0.0.1:1"]),
                pop(
                    "pa",
                    &[
                        "http://127.0.0.1:3",
                        "https://127.0.0.1:4",
                        "http://x:5",
                        "http://127.0.0.1:2",
                    ],
                ),
                pop("nyc", &[]),
            ],
            truncated: false,
        };
        let m = members(&list);
        assert_eq!(m.of("ams").unwrap().len(), 1);
        let pa: Vec<String> = m.of("pa").unwrap().iter().map(|a| a.to_string()).collect();
        assert_eq!(pa, ["127.0.0.1:2", "127.0.0.1:3"]);
        assert!(m.of("nyc").is_none());
        assert_eq!(m.len(), 2);
    }
}
