//! Shield POPs take a new version last. A service's shield POP is asked by every other POP
//! for that service's misses, so a canary wave there would put the version in front of the
//! whole fleet's misses before any gate had judged it. By construction: when activation
//! begins, the live HTTP edges of every POP that a service of the new version names as its
//! shield (`[service.shield] pop`) are held at the previous version by an edge override
//! through every wave of the plan (whatever their cell), and take the version in one extra
//! last wave once every planned wave passed its gate. Plans need not say anything: any plan
//! gets the extra wave when the version names a shield.
//!
//! Not held: the fleet's first version (there is nothing to hold them at), kill switches
//! (the emergency plan must reach every edge), and a fleet whose live edges are all in
//! shield POPs (there would be nothing to judge first).

use crate::plane::{Plane, PlaneError};
use crate::rollout::state::{Rollout, RolloutKind};
use crate::store::StoreError;
use firebreak_config::parse_managed_str;
use firebreak_protocol::api::{EdgeStatus, MemberRole};
use std::collections::HashSet;

/// The shield POPs the services of `version` name.
pub(crate) async fn shield_pops(
    plane: &Plane,
    version: u64,
) -> Result<HashSet<String>, PlaneError> {
    let detail = plane.version(version).await?;
    let config =
        parse_managed_str(&format!("version {version}"), &detail.document).map_err(|_| {
            PlaneError::Store(StoreError::Corrupt(format!(
                "version {version} no longer validates"
            )))
        })?;
    Ok(config
        .services
        .iter()
        .filter_map(|s| s.shield.as_ref().map(|sh| sh.pop.clone()))
        .collect())
}

/// The live edges `r` holds for its last wave (sorted), see the module's documentation.
pub(crate) async fn held_edges(
    plane: &Plane,
    r: &Rollout,
    live: &[&EdgeStatus],
) -> Result<Vec<String>, PlaneError> {
    if r.kind != RolloutKind::Deploy || r.from.is_none() || r.from_sha256.is_none() {
        return Ok(Vec::new());
    }
    let pops = shield_pops(plane, r.version).await?;
    Ok(select(&pops, live))
}

/// The live HTTP edges of `pops`, sorted; none when that would be every live HTTP edge.
pub(crate) fn select(pops: &HashSet<String>, live: &[&EdgeStatus]) -> Vec<String> {
    if pops.is_empty() {
        return Vec::new();
    }
    let edges: Vec<&&EdgeStatus> = live
        .iter()
        .filter(|e| e.report.role == MemberRole::Edge)
        .collect();
    let mut held: Vec<String> = edges
        .iter()
        .filter(|e| pops.contains(&e.report.pop))
        .map(|e| e.id.clone())
        .collect();
    if held.len() == edges.len() {
        return Vec::new();
    }
    held.sort();
    held
}
