//! The fleet's tier secret: the key of the credentials edges put on requests to another tier
//! (an origin shield; [`firebreak_protocol::tier`]).
//!
//! One credential, one job: it is neither an edge's own credential (which authenticates the
//! edge to the control plane) nor the join token, and it is given only to HTTP edges —
//! `GET /v1/edges/{id}/tier` answers the edge's own credential ([`crate::auth::Need::EdgeSecret`]:
//! no operator of any role) and only when that member's last report says it is an HTTP edge;
//! a DNS server, or a member that has not reported yet, gets 404.
//!
//! Generated on first use (32 random bytes) and kept in the secrets table (like services'
//! private keys, so backups do not carry it) under the fixed id [`TIER_SECRET_ID`], which is
//! not a SHA-256 and so can never be fetched through the private-key route. Writing it does
//! not touch the fleet state (no rollout step races with it). Within one control plane the
//! generation is serialised; two etcd replicas generating at the same instant may briefly
//! hand out different secrets (the last write stays): edges fetch it again every minute or
//! so, and meanwhile a shield answers their requests as a client's (degraded, never refused).
//! A restored store has none: a new one is made, and edges pick it up the same way.

use crate::plane::{Plane, PlaneError};
use firebreak_protocol::api::MemberRole;
use firebreak_protocol::secrets::Secret;
use firebreak_protocol::tier::TierSecret;

/// The secrets-table id of the tier secret (deliberately not a SHA-256: see the module).
pub const TIER_SECRET_ID: &str = "tier-secret";

/// Serialises generation within this process.
static GENERATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
        if let Some(secret) = self.stored_tier_secret().await? {
            return Ok(secret);
        }
        let _one = GENERATING.lock().await;
        if let Some(secret) = self.stored_tier_secret().await? {
            return Ok(secret);
        }
        let secret = TierSecret::generate()
            .map_err(|e| PlaneError::Internal(format!("no randomness: {e}")))?
            .to_hex();
        self.store
            .put_secrets(&[Secret {
                sha256: TIER_SECRET_ID.to_owned(),
                pem: secret.clone(),
            }])
            .await?;
        tracing::info!("tier secret generated");
        Ok(secret)
    }

    async fn stored_tier_secret(&self) -> Result<Option<String>, PlaneError> {
        let Some(bytes) = self.store.secret(TIER_SECRET_ID).await? else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| PlaneError::Internal("stored tier secret is not text".into()))?;
        TierSecret::from_hex(&text).map_err(PlaneError::Internal)?;
        Ok(Some(text))
    }
}
