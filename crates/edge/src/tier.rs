//! Tiered caching, the edge's side: what this edge knows about tiers (its POP, the fleet's
//! tier secret, the shield POPs' live edges), the check of a tier credential on arrival
//! ([`TierState::verify`], called by `proxy::route`), and where a service's misses go
//! ([`TierState::shield_for`], called by the fetch).
//!
//! Under a control plane the agent sets all three ([`TierState::set_pop`],
//! [`TierState::set_secret`], [`TierState::set_members`]); a standalone edge names them in
//! its `[tier]` section, which wins when present. Every read on the request path is an
//! `ArcSwap` load: no lock.
//!
//! Each object has one home among the shield POP's edges (rendezvous hashing): the other
//! POPs' edges send its misses there, and so do the shield POP's other edges; the home itself
//! fetches from the origin. Loops are impossible by construction: a request that arrived with
//! a valid tier credential is fetched from the origin ([`RequestTier::Tier`]), never sent on,
//! so a request crosses at most one tier hop; and an edge never sends a miss to itself.

use crate::runtime::Runtime;
use arc_swap::{ArcSwap, ArcSwapOption};
use firebreak_protocol::tier::{TierRefusal, TierSecret, TIER_HEADER};
use http::{HeaderMap, HeaderName};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Most edges of one shield POP an edge keeps (more are ignored: the hash order is over the
/// ones kept, which every edge picks the same way: the smallest addresses).
pub const MAX_SHIELD_MEMBERS: usize = 256;

/// The client listeners of each shield POP's live edges, by POP.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShieldMembers {
    by_pop: HashMap<String, Arc<[SocketAddr]>>,
}

impl ShieldMembers {
    /// From `(pop, edges)` pairs; each POP's edges sorted, deduplicated and bounded.
    pub fn new(pops: impl IntoIterator<Item = (String, Vec<SocketAddr>)>) -> Self {
        let mut by_pop = HashMap::new();
        for (pop, mut edges) in pops {
            edges.sort_unstable();
            edges.dedup();
            edges.truncate(MAX_SHIELD_MEMBERS);
            if !edges.is_empty() {
                by_pop.insert(pop, Arc::from(edges));
            }
        }
        Self { by_pop }
    }

    /// The live edges of `pop`.
    pub fn of(&self, pop: &str) -> Option<&Arc<[SocketAddr]>> {
        self.by_pop.get(pop)
    }

    /// Number of POPs listed.
    pub fn len(&self) -> usize {
        self.by_pop.len()
    }

    /// Whether no POP is listed.
    pub fn is_empty(&self) -> bool {
        self.by_pop.is_empty()
    }
}

/// What this edge knows about tiers (a field of `EdgeState`).
#[derive(Default)]
pub struct TierState {
    pop: ArcSwapOption<String>,
    secret: ArcSwapOption<TierSecret>,
    members: ArcSwap<ShieldMembers>,
    /// This edge's own plain-HTTP client listeners.
    own: ArcSwap<Vec<SocketAddr>>,
}

/// How a request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestTier {
    /// From a client (or with a tier credential that did not verify).
    Client,
    /// From another edge, with a valid tier credential: never forwarded to another tier,
    /// exempt from per-client rate limits, forwarding headers kept.
    Tier,
}

/// Where a shielded service's miss goes: the shield POP's edges and the credential key.
pub struct ShieldRoute {
    /// The shield POP.
    pub pop: Arc<str>,
    /// Its live edges (unordered; the fetch orders them by the object's hash).
    pub edges: Arc<[SocketAddr]>,
    /// The tier secret that signs the request.
    pub secret: Arc<TierSecret>,
    /// This edge's own listeners: in the shield POP, the object's order stops at this edge
    /// (it is then the home, and asks the origin).
    pub own: Arc<Vec<SocketAddr>>,
}

impl TierState {
    /// This edge's POP (`firebreak edge --pop`).
    pub fn set_pop(&self, pop: &str) {
        self.pop.store(Some(Arc::new(pop.to_owned())));
    }

    /// The fleet's tier secret, from the control plane.
    pub fn set_secret(&self, secret: TierSecret) {
        self.secret.store(Some(Arc::new(secret)));
    }

    /// The shield POPs' live edges, from the control plane (the last list is kept while the
    /// control plane is away).
    pub fn set_members(&self, members: ShieldMembers) {
        if **self.members.load() != members {
            tracing::info!(pops = members.len(), "shield members changed");
            self.members.store(Arc::new(members));
        }
    }

    /// This edge's own plain-HTTP client listeners (set when the listeners are bound).
    pub fn set_own_addrs(&self, addrs: Vec<SocketAddr>) {
        self.own.store(Arc::new(addrs));
    }

    /// The shield members now.
    pub fn members(&self) -> Arc<ShieldMembers> {
        self.members.load_full()
    }

    /// This edge's POP: the standalone `[tier] pop`, else what the agent set.
    fn own_pop(&self, runtime: &Runtime) -> Option<Arc<str>> {
        match runtime.config.tier.as_ref() {
            Some(t) => t.pop.as_deref().map(Arc::from),
            None => self.pop.load().as_deref().map(|p| Arc::from(p.as_str())),
        }
    }

    /// The tier secret: the standalone `[tier] secret`, else what the agent set.
    fn secret(&self, runtime: &Runtime) -> Option<Arc<TierSecret>> {
        match runtime.config.tier.as_ref() {
            Some(t) => t
                .secret
                .as_deref()
                .and_then(|s| TierSecret::from_hex(s).ok())
                .map(Arc::new),
            None => self.secret.load_full(),
        }
    }

    /// Checks and removes the tier credential of an arriving request. Any credential that
    /// does not verify is counted and the request is a client's.
    pub(crate) fn verify(
        &self,
        runtime: &Runtime,
        headers: &mut HeaderMap,
        method: &str,
        authority: &str,
        path: &str,
    ) -> RequestTier {
        // A `HeaderName` made once: a `&str` name is parsed again on every lookup.
        static TIER: HeaderName = HeaderName::from_static(TIER_HEADER);
        let mut values = headers.get_all(&TIER).iter();
        let (first, second) = (values.next().cloned(), values.next().is_some());
        let Some(value) = first else {
            return RequestTier::Client;
        };
        headers.remove(&TIER);
        let verdict = if second {
            Err(TierRefusal::Malformed)
        } else {
            match self.secret(runtime) {
                None => Err(TierRefusal::NoSecret),
                Some(secret) => secret.verify(
                    value.as_bytes(),
                    method,
                    authority,
                    path,
                    firebreak_protocol::tier::now_s(),
                ),
            }
        };
        match verdict {
            Ok(()) => {
                metrics::counter!("firebreak_tier_requests_total").increment(1);
                RequestTier::Tier
            }
            Err(why) => {
                metrics::counter!("firebreak_tier_refused_total", "reason" => why.as_str())
                    .increment(1);
                tracing::debug!(reason = why.as_str(), "tier credential refused");
                RequestTier::Client
            }
        }
    }

    /// Where a miss of `shield_pop`'s service goes, or `None` for the origin: this request
    /// came from another tier, or nothing is known of the shield's edges or secret. (An edge
    /// of the shield POP gets a route too: the fetch stops at itself in the object's order.)
    pub(crate) fn shield_for(
        &self,
        runtime: &Runtime,
        shield_pop: &str,
        arrived: RequestTier,
    ) -> Option<ShieldRoute> {
        if arrived == RequestTier::Tier {
            return None;
        }
        let own = self.own.load_full();
        let in_shield = self.own_pop(runtime).as_deref() == Some(shield_pop);
        if in_shield && own.is_empty() {
            return None;
        }
        // The standalone `[[tier.shield]]` list first, else what the agent learned.
        let listed = runtime
            .config
            .tier
            .as_ref()
            .and_then(|t| t.shields.iter().find(|m| m.pop == shield_pop));
        let edges = match listed {
            Some(m) => {
                let mut edges: Vec<SocketAddr> =
                    m.edges.iter().filter_map(|e| e.parse().ok()).collect();
                edges.sort_unstable();
                edges.dedup();
                Arc::from(edges)
            }
            None => self.members.load().of(shield_pop)?.clone(),
        };
        if edges.is_empty() {
            return None;
        }
        Some(ShieldRoute {
            pop: Arc::from(shield_pop),
            edges,
            secret: self.secret(runtime)?,
            own,
        })
    }
}
