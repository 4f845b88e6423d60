//! Edge identity: an edge joins once with the fleet's join token and receives its own
//! credential; the registry of joined edges is bounded, edges that stop reporting are pruned,
//! and an operator can remove one.
//!
//! - `POST /v1/edges/{id}/join` with the join token: the id must be free (else 409: "remove it
//!   first: firebreak fleet remove ID"); the control plane draws a random credential
//!   (`edge:ID:<64 hex>`), keeps only its SHA-256 with the edge's POP, cell, listeners and
//!   admin URL, and answers it once. The same call with the edge's own credential (a re-join)
//!   updates the admin URL and listeners and keeps the credential.
//! - The admin URL is where purges are sent: `http://IP:port`, an IP literal inside the
//!   allowed edge networks (`--edge-networks`, default loopback). It is fixed at (re-)join: a
//!   report cannot change it.
//! - At most `max_edges` registrations (`--max-edges`, default 10,000): a join past it is
//!   refused (409). Edges not seen for `prune_after` (`--edge-prune-s`, default 24 h) are
//!   removed with their credential; `DELETE /v1/edges/{id}` (`firebreak fleet remove`) removes
//!   one at once. Both are audited.

use crate::plane::{edge_id, label_text, Plane, PlaneError};
use crate::rollout::state::AuditEntry;
use crate::store::{Created, StoreError};
use firebreak_config::Cidr;
use firebreak_protocol::api::{JoinAnswer, JoinRequest, MAX_LABEL_LEN};
use firebreak_protocol::now_ms;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// Default bound on joined edges.
pub const DEFAULT_MAX_EDGES: usize = 10_000;
/// Default time after which an edge that stopped reporting is forgotten.
pub const DEFAULT_PRUNE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How long a registration read from the store is trusted before it is read again (so a
/// removal on another etcd replica takes effect within this time).
const CACHE_FOR: Duration = Duration::from_secs(5);
/// Most client listeners an edge may declare.
const MAX_LISTEN: usize = 16;
/// Prefix of edge credentials.
const CREDENTIAL_PREFIX: &str = "edge:";

/// The fleet's edge settings.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Networks an edge's admin URL must be in.
    pub networks: Vec<Cidr>,
    /// Most joined edges.
    pub max_edges: usize,
    /// Edges not seen for this long are forgotten (credential deleted).
    pub prune_after: Duration,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            networks: default_networks(),
            max_edges: DEFAULT_MAX_EDGES,
            prune_after: DEFAULT_PRUNE_AFTER,
        }
    }
}

/// Loopback: 127.0.0.0/8 and ::1.
pub fn default_networks() -> Vec<Cidr> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|c| Cidr::parse(c).ok())
        .collect()
}

/// A joined edge as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeIdentity {
    /// Edge id.
    pub id: String,
    /// Lower-case hex SHA-256 of its credential.
    pub credential_sha256: String,
    /// POP at (re-)join.
    pub pop: String,
    /// Cell at (re-)join.
    pub cell: String,
    /// Where purges go; checked against the allowed networks at (re-)join.
    pub admin_url: Option<String>,
    /// Client listeners it declared.
    #[serde(default)]
    pub listen: Vec<String>,
    /// When it first joined (ms since the epoch).
    pub joined_ms: u64,
    /// When it last (re-)joined.
    #[serde(default)]
    pub rejoined_ms: u64,
}

/// The edge id a credential names, if it has the credential's form.
pub fn credential_id(credential: &str) -> Option<&str> {
    let rest = credential.strip_prefix(CREDENTIAL_PREFIX)?;
    let (id, secret) = rest.rsplit_once(':')?;
    (secret.len() == 64 && !id.is_empty()).then_some(id)
}

/// A new random credential for `id`.
fn new_credential(id: &str) -> Result<String, PlaneError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| PlaneError::Internal(format!("no randomness for a credential: {e}")))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{CREDENTIAL_PREFIX}{id}:{hex}"))
}

/// Checks an admin URL: `http(s)://IP[:port][/]` with the IP inside `networks`.
pub fn check_admin_url(url: &str, networks: &[Cidr]) -> Result<(), String> {
    if url.len() > MAX_LABEL_LEN {
        return Err(format!("admin_url: at most {MAX_LABEL_LEN} characters"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("admin_url `{url}` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("admin_url `{url}` must be an http(s) URL"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "admin_url `{url}` must be a base URL without a path"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("admin_url `{url}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("admin_url `{url}` must not carry user information"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("admin_url `{url}`: the host must be an IP address (names can be re-pointed)")
    })?;
    if !networks.iter().any(|n| n.contains(ip)) {
        return Err(format!(
            "admin_url `{url}`: {ip} is outside the allowed edge networks (control plane --edge-networks)"
        ));
    }
    Ok(())
}

impl Plane {
    /// Joins edge `id`. `rejoin` says the request carried this edge's own credential (checked
    /// by the API): the registration is updated and the credential kept. Otherwise (the join
    /// token) the id must be free and the registry below its bound; a new credential is
    /// returned.
    pub async fn join(
        &self,
        id: &str,
        req: JoinRequest,
        rejoin: bool,
    ) -> Result<JoinAnswer, PlaneError> {
        edge_id(id)?;
        label_text("pop", &req.pop)?;
        label_text("cell", &req.cell)?;
        if req.listen.len() > MAX_LISTEN || req.listen.iter().any(|l| l.len() > MAX_LABEL_LEN) {
            return Err(PlaneError::BadRequest(format!(
                "listen: at most {MAX_LISTEN} URLs of at most {MAX_LABEL_LEN} characters"
            )));
        }
        if let Some(url) = &req.admin_url {
            check_admin_url(url, &self.edges.networks).map_err(PlaneError::BadRequest)?;
        }
        let now = now_ms();
        if rejoin {
            let Some(mut current) = self.store.identity(id).await? else {
                return Err(PlaneError::NotFound(format!(
                    "edge {id} is not registered (removed?); join with the join token"
                )));
            };
            current.pop = req.pop;
            current.cell = req.cell;
            current.admin_url = req.admin_url;
            current.listen = req.listen;
            current.rejoined_ms = now;
            if !self.store.update_identity(&current).await? {
                return Err(PlaneError::NotFound(format!(
                    "edge {id} was removed meanwhile"
                )));
            }
            self.forget_cached(id);
            tracing::info!(edge = %id, admin_url = ?current.admin_url, "edge re-joined");
            return Ok(JoinAnswer {
                id: id.to_owned(),
                credential: None,
                admin_url: current.admin_url,
            });
        }
        let credential = new_credential(id)?;
        let identity = EdgeIdentity {
            id: id.to_owned(),
            credential_sha256: firebreak_protocol::sha256_hex(credential.as_bytes()),
            pop: req.pop,
            cell: req.cell,
            admin_url: req.admin_url,
            listen: req.listen,
            joined_ms: now,
            rejoined_ms: now,
        };
        match self
            .store
            .create_identity(&identity, self.edges.max_edges)
            .await?
        {
            Created::Added => {}
            Created::Exists => {
                return Err(PlaneError::Conflict(format!(
                    "edge {id} has already joined and holds a credential; remove it first: firebreak fleet remove {id}"
                )))
            }
            Created::Full => {
                return Err(PlaneError::Conflict(format!(
                    "the edge registry is full ({} edges, control plane --max-edges); remove edges that are gone: firebreak fleet remove ID",
                    self.edges.max_edges
                )))
            }
        }
        self.forget_cached(id);
        tracing::info!(edge = %id, admin_url = ?identity.admin_url, "edge joined");
        Ok(JoinAnswer {
            id: id.to_owned(),
            credential: Some(credential),
            admin_url: identity.admin_url,
        })
    }

    /// An edge's registration: from a cache at most a few seconds old, else the store.
    pub(crate) async fn registration(&self, id: &str) -> Result<Option<EdgeIdentity>, StoreError> {
        if let Ok(cache) = self.identities.lock() {
            if let Some((identity, at)) = cache.get(id) {
                if at.elapsed() < CACHE_FOR {
                    return Ok(Some(identity.clone()));
                }
            }
        }
        let found = self.store.identity(id).await?;
        if let Ok(mut cache) = self.identities.lock() {
            match &found {
                // Bounded: only registered edges are cached, and the registry is bounded.
                Some(identity) if cache.len() < self.edges.max_edges.saturating_mul(2) => {
                    cache.insert(id.to_owned(), (identity.clone(), Instant::now()));
                }
                _ => {
                    cache.remove(id);
                }
            }
        }
        Ok(found)
    }

    fn forget_cached(&self, id: &str) {
        if let Ok(mut cache) = self.identities.lock() {
            cache.remove(id);
        }
    }

    /// Whether `credential` is the credential of edge `id` (compared as SHA-256 digests in
    /// constant time).
    pub async fn edge_credential_ok(&self, id: &str, credential: &str) -> Result<bool, StoreError> {
        if edge_id(id).is_err() {
            return Ok(false);
        }
        let Some(identity) = self.registration(id).await? else {
            return Ok(false);
        };
        let given = firebreak_protocol::sha256_hex(credential.as_bytes());
        Ok(crate::auth::same_digest(
            &given,
            &identity.credential_sha256,
        ))
    }

    /// Forgets edge `id` and its credential, recording `by` in the audit log.
    pub async fn remove_edge(&self, id: &str, by: &str, message: &str) -> Result<(), PlaneError> {
        edge_id(id)?;
        label_text("message", message)?;
        let removed = self.store.remove_edge(id).await?;
        self.forget_cached(id);
        self.forget_polled(id);
        if !removed {
            return Err(PlaneError::NotFound(format!("no edge {id}")));
        }
        self.audit(AuditEntry {
            at_ms: now_ms(),
            who: by.to_owned(),
            action: "edge-removed".into(),
            version: None,
            rollout: None,
            message: if message.is_empty() {
                format!("edge {id} and its credential removed")
            } else {
                format!("edge {id} and its credential removed: {message}")
            },
            gate: None,
        })
        .await;
        tracing::info!(edge = %id, by, "edge removed");
        Ok(())
    }

    /// Forgets every edge not seen (report, poll or join) for `prune_after`; returns their ids.
    pub async fn prune_edges(&self) -> Result<Vec<String>, StoreError> {
        let identities = self.store.identities().await?;
        let seen = self.last_seen().await?;
        let now = now_ms();
        let limit = u64::try_from(self.edges.prune_after.as_millis()).unwrap_or(u64::MAX);
        let mut pruned = Vec::new();
        for identity in identities {
            let last = seen
                .get(&identity.id)
                .copied()
                .unwrap_or(0)
                .max(identity.joined_ms)
                .max(identity.rejoined_ms);
            if now.saturating_sub(last) <= limit {
                continue;
            }
            if self.store.remove_edge(&identity.id).await? {
                self.forget_cached(&identity.id);
                self.forget_polled(&identity.id);
                self.audit(AuditEntry {
                    at_ms: now_ms(),
                    who: "control-plane".into(),
                    action: "edge-pruned".into(),
                    version: None,
                    rollout: None,
                    message: format!(
                        "edge {} not seen for {} s: forgotten with its credential",
                        identity.id,
                        now.saturating_sub(last) / 1000
                    ),
                    gate: None,
                })
                .await;
                tracing::info!(edge = %identity.id, "edge pruned");
                pruned.push(identity.id);
            }
        }
        Ok(pruned)
    }
}

/// Prunes gone edges in the background while the plane lives, every quarter of the prune
/// time (at most a minute, at least 100 ms).
pub(crate) fn spawn_pruner(plane: Weak<Plane>, prune_after: Duration) {
    let every = (prune_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(plane) = plane.upgrade() else {
                return;
            };
            if let Err(e) = plane.prune_edges().await {
                tracing::warn!(error = %e, "cannot prune gone edges");
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_must_be_ip_literals_inside_the_networks() {
        let loopback = default_networks();
        for ok in [
            "http://127.0.0.1:9000",
            "http://127.0.0.1:9000/",
            "https://127.1.2.3",
            "http://[::1]:9000",
        ] {
            assert!(check_admin_url(ok, &loopback).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:9000",
            "http://attacker.example:80",
            "http://localhost:9000",
            "ftp://127.0.0.1:21",
            "http://127.0.0.1:9000/purge",
            "http://user@127.0.0.1:9000",
            "http://[2001:db8::1]:9000",
            "127.0.0.1:9000",
            "",
        ] {
            assert!(check_admin_url(bad, &loopback).is_err(), "{bad}");
        }
        let lan = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        assert!(check_admin_url("http://10.1.2.3:9000", &lan).is_ok());
        assert!(check_admin_url("http://127.0.0.1:9000", &lan).is_err());
    }

    #[test]
    fn credentials_name_their_edge() {
        let c = new_credential("pop1-c1.edge_2").unwrap();
        assert_eq!(credential_id(&c), Some("pop1-c1.edge_2"));
        assert_ne!(c, new_credential("pop1-c1.edge_2").unwrap());
        assert_eq!(credential_id("edge-token-0123456789abcd"), None);
        assert_eq!(credential_id("edge:x:short"), None);
        assert_eq!(credential_id(&format!("edge::{}", "0".repeat(64))), None);
    }
}
