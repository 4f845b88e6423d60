//! The fleet's tier secret: the key of the credentials edges put on requests to another tier
//! (an origin shield; [`firebreak_protocol::tier`]).
//!
//! One credential, one job: it is neither an edge's own credential (which authenticates the
//! edge to the control plane) nor the join token, and it is given only to HTTP edges —
//! `GET /v1/edges/{id}/tier` answers the edge's own credential ([`crate::auth::Need::EdgeSecret`]:
//! no operator of any role) and only when that member's last report says it is an HTTP edge;
//! a DNS server, or a member that has not reported yet, gets 404.
//!
//! Generated on first use (32 random bytes), kept as a secret document (the `secrets` table,
//! like services' private keys, so backups do not carry it) whose SHA-256 the fleet state
//! names (`FleetState.tier_secret`, written by compare-and-set, so two replicas agree on one
//! secret). A restored store whose secret document is missing gets a new one: edges pick it
//! up at their next fetch; meanwhile their tier requests are answered as clients' (degraded,
//! never refused).

use crate::plane::{Plane, PlaneError};
use firebreak_protocol::api::MemberRole;
use firebreak_protocol::secrets::Secret;
use firebreak_protocol::tier::TierSecret;

impl Plane {
    /// The tier secret for member `id`, as hex: only for an HTTP edge that has reported.
    pub async fn edge_tier_secret(&self, id: &str) -> Result<String, PlaneError> {
        crate::plane::edge_id(id)?;
        let none = || PlaneError::NotFound("no tier secret for this member".into());
        let edges = self.store.edges().await?;
        match edges.iter().find(|e| e.id == id) {
            Some(e) if e.report.role == MemberRole::Edge => {}
            _ => return Err(none()),
        }
        self.tier_secret().await
    }

    /// The fleet's tier secret, generated and stored on first use.
    pub(crate) async fn tier_secret(&self) -> Result<String, PlaneError> {
        let named = self
            .store
            .state()
            .await?
            .and_then(|s| s.tier_secret.clone());
        if let Some(sha) = &named {
            if let Some(secret) = self.stored_tier_secret(sha).await? {
                return Ok(secret);
            }
            tracing::warn!("the tier secret the fleet state names is not stored; making a new one");
        }
        let secret = TierSecret::generate()
            .map_err(|e| PlaneError::Internal(format!("no randomness: {e}")))?
            .to_hex();
        let sha = firebreak_protocol::sha256_hex(secret.as_bytes());
        self.store
            .put_secrets(&[Secret {
                sha256: sha.clone(),
                pem: secret.clone(),
            }])
            .await?;
        // Another replica may have named one meanwhile: its choice stands.
        let winner = self
            .update(|state, _| match &state.tier_secret {
                Some(other) if Some(other) != named.as_ref() => Ok(Some(other.clone())),
                _ => {
                    state.tier_secret = Some(sha.clone());
                    Ok(None)
                }
            })
            .await?;
        match winner {
            None => {
                tracing::info!("tier secret generated");
                Ok(secret)
            }
            Some(other) => self.stored_tier_secret(&other).await?.ok_or_else(|| {
                PlaneError::Conflict("the tier secret is changing; try again".into())
            }),
        }
    }

    async fn stored_tier_secret(&self, sha: &str) -> Result<Option<String>, PlaneError> {
        let Some(bytes) = self.store.secret(sha).await? else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| PlaneError::Internal("stored tier secret is not text".into()))?;
        TierSecret::from_hex(&text).map_err(PlaneError::Internal)?;
        Ok(Some(text))
    }
}
