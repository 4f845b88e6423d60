//! The public status page: one line per component (each POP, DNS, the control plane, the
//! API) with its state, open incidents and 90 days of history, as server-rendered HTML
//! (`GET /status`), an Atom feed (`GET /status/feed.atom`) and the data behind both
//! (`GET /status/incidents.json`), none of which needs a token.
//!
//! - [`incidents`]: the model and its bounds (one [`IncidentBook`] document in the store).
//! - [`auto`]: incidents the control plane opens and closes itself (a tripped rollout gate,
//!   an unhealthy POP, DNS answering with fallbacks).
//! - [`page`], [`feed`]: rendering (askama templates under `templates/status/`, escaped).
//! - [`export`]: the page as static files (`index.html`, `feed.atom`, `incidents.json`), for
//!   hosting on infrastructure that shares nothing with the network; written offline too.
//!
//! The operations here ([`Plane::open_incident`], [`Plane::add_incident_update`],
//! [`Plane::incident_book`], [`Plane::status_snapshot`]) are what the API and the operator
//! dashboard call.

pub mod auto;
pub use auto::StatusInputs;
pub mod export;
pub mod feed;
pub(crate) mod http;
pub mod incidents;
pub mod page;

pub use incidents::{
    Impact, Incident, IncidentBook, IncidentError, IncidentState, NewIncident, NewUpdate,
};

use crate::plane::{Plane, PlaneError};
use firebreak_protocol::now_ms;
use serde::{Deserialize, Serialize};

/// How many times a write of the incident log retries when another replica wrote first.
const ATTEMPTS: usize = 8;

/// How long a status snapshot is reused for the public routes (a change of the incident log
/// through this replica drops it at once).
pub const SNAPSHOT_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The last status snapshot and when it was made.
pub(crate) type SnapshotCache =
    std::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<StatusSnapshot>)>>;

/// A component's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentState {
    /// Working.
    #[default]
    Operational,
    /// Working in part, or slower.
    Degraded,
    /// Not working.
    Outage,
}

impl ComponentState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operational => "operational",
            Self::Degraded => "degraded",
            Self::Outage => "outage",
        }
    }
}

impl From<Impact> for ComponentState {
    fn from(i: Impact) -> Self {
        match i {
            Impact::Degraded => Self::Degraded,
            Impact::Outage => Self::Outage,
        }
    }
}

/// One line of the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Its id, as incidents name it (`pop/NAME`, `dns`, `control-plane`, `api`).
    pub id: String,
    /// What the page calls it.
    pub name: String,
    /// Its state as last observed (POP health), before open incidents are counted.
    pub observed: ComponentState,
}

/// Everything the page and the feed show: what `GET /status/incidents.json` answers and what
/// an export directory's `incidents.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// When this snapshot was made (ms since the epoch): the page's "last updated".
    pub generated_ms: u64,
    /// When the components' states were observed: equal to `generated_ms` when the control
    /// plane made it, older when an incident was written offline into an export.
    pub observed_ms: u64,
    /// Components, POPs by name, then DNS, the control plane and the API.
    pub components: Vec<Component>,
    /// The incident log.
    pub incidents: IncidentBook,
}

impl StatusSnapshot {
    /// A component's state: the worse of what was observed and the impact of its open
    /// incidents.
    pub fn state_of(&self, c: &Component) -> ComponentState {
        self.incidents
            .open_incidents()
            .filter(|i| i.components.contains(&c.id))
            .map(|i| ComponentState::from(i.impact))
            .fold(c.observed, Ord::max)
    }

    /// The components the control plane always shows besides its POPs.
    pub fn fixed_components() -> Vec<Component> {
        [
            ("dns", "DNS"),
            ("control-plane", "Control plane"),
            ("api", "API"),
        ]
        .into_iter()
        .map(|(id, name)| Component {
            id: id.into(),
            name: name.into(),
            observed: ComponentState::Operational,
        })
        .collect()
    }
}

impl From<IncidentError> for PlaneError {
    fn from(e: IncidentError) -> Self {
        match e {
            IncidentError::Invalid(m) => PlaneError::BadRequest(m),
            IncidentError::NotFound(id) => PlaneError::NotFound(format!("no incident {id}")),
            IncidentError::Full(m) => PlaneError::Conflict(m),
        }
    }
}

impl Plane {
    /// The incident log as stored (empty when none is).
    pub async fn incident_book(&self) -> Result<IncidentBook, PlaneError> {
        let raw = self.store.incidents().await?;
        match raw {
            Some(raw) => serde_json::from_slice(&raw).map_err(|e| {
                PlaneError::Store(crate::store::StoreError::Corrupt(format!(
                    "incident log: {e}"
                )))
            }),
            None => Ok(IncidentBook::default()),
        }
    }

    /// Changes the incident log by compare-and-set: `change` returns its answer and whether it
    /// changed anything (nothing is written otherwise).
    pub(crate) async fn change_incidents<T>(
        &self,
        mut change: impl FnMut(&mut IncidentBook, u64) -> Result<(T, bool), PlaneError>,
    ) -> Result<T, PlaneError> {
        for _ in 0..ATTEMPTS {
            let current = self.incident_book().await?;
            let mut next = current.clone();
            let (out, changed) = change(&mut next, now_ms())?;
            if !changed {
                return Ok(out);
            }
            next.seq = current.seq.saturating_add(1);
            let raw = serde_json::to_vec(&next)
                .map_err(|e| PlaneError::Internal(format!("incident log: {e}")))?;
            if self.store.set_incidents(current.seq, &raw).await? {
                if let Ok(mut cached) = self.status_cache.lock() {
                    *cached = None;
                }
                return Ok(out);
            }
        }
        Err(PlaneError::Conflict(
            "the incident log is changing too fast; try again".into(),
        ))
    }

    /// Opens an incident by operator `by` (`POST /v1/incidents`).
    pub async fn open_incident(&self, new: NewIncident, by: &str) -> Result<Incident, PlaneError> {
        self.change_incidents(|book, now| {
            let id = book.open(new.clone(), by, None, now)?;
            let opened = book
                .incidents
                .iter()
                .find(|i| i.id == id)
                .cloned()
                .ok_or_else(|| PlaneError::Internal("incident lost".into()))?;
            Ok((opened, true))
        })
        .await
        .inspect(|i| {
            self.audit_incident(by, "incident-open", i);
        })
    }

    /// Records an operator's incident change in the audit log (spawned: never delays the
    /// answer; a failure is logged).
    fn audit_incident(&self, by: &str, action: &str, i: &Incident) {
        let entry = crate::rollout::state::AuditEntry {
            at_ms: now_ms(),
            who: by.to_owned(),
            action: action.to_owned(),
            version: None,
            rollout: None,
            message: format!("incident {} ({}): {}", i.id, i.state, i.title),
            gate: None,
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.audit(&entry).await {
                tracing::warn!(error = %e, "audit entry not stored");
            }
        });
    }

    /// Adds an update to incident `id` by operator `by`; state `resolved` closes it
    /// (`POST /v1/incidents/{id}/updates`).
    pub async fn add_incident_update(
        &self,
        id: u64,
        update: NewUpdate,
        by: &str,
    ) -> Result<Incident, PlaneError> {
        self.change_incidents(|book, now| {
            book.update(id, update.clone(), by, now)?;
            let changed = book
                .incidents
                .iter()
                .find(|i| i.id == id)
                .cloned()
                .ok_or(PlaneError::NotFound(format!("no incident {id}")))?;
            Ok((changed, true))
        })
        .await
        .inspect(|i| {
            self.audit_incident(by, "incident-update", i);
        })
    }

    /// [`Plane::status_snapshot`], reused for up to [`SNAPSHOT_TTL`]: what the public routes
    /// answer from.
    pub async fn status_snapshot_cached(
        &self,
    ) -> Result<std::sync::Arc<StatusSnapshot>, PlaneError> {
        if let Ok(cached) = self.status_cache.lock() {
            if let Some((at, s)) = cached.as_ref() {
                if at.elapsed() < SNAPSHOT_TTL {
                    return Ok(s.clone());
                }
            }
        }
        let fresh = std::sync::Arc::new(self.status_snapshot().await?);
        if let Ok(mut cached) = self.status_cache.lock() {
            *cached = Some((std::time::Instant::now(), fresh.clone()));
        }
        Ok(fresh)
    }

    /// What the status page shows now: each POP's health, DNS, the control plane (this
    /// replica answers, so operational unless an incident says otherwise), the API, and the
    /// incident log.
    pub async fn status_snapshot(&self) -> Result<StatusSnapshot, PlaneError> {
        let signals = auto::Signals::read(self).await?;
        let mut incidents = self.incident_book().await?;
        // Public: operators are not named (the authenticated `GET /v1/incidents` names them).
        for u in incidents
            .incidents
            .iter_mut()
            .flat_map(|i| i.updates.iter_mut())
        {
            if u.by != incidents::AUTOMATIC_AUTHOR {
                u.by = "operator".into();
            }
        }
        let now = now_ms();
        let mut components: Vec<Component> = signals
            .pops
            .iter()
            .map(|p| Component {
                id: format!("pop/{}", p.pop),
                name: format!("POP {}", p.pop),
                observed: if p.healthy {
                    ComponentState::Operational
                } else if signals.down(p) {
                    ComponentState::Outage
                } else {
                    // Starting: its edges have not applied a version yet.
                    ComponentState::Degraded
                },
            })
            .collect();
        let mut fixed = StatusSnapshot::fixed_components();
        if signals.dns_fallback() {
            if let Some(dns) = fixed.iter_mut().find(|c| c.id == "dns") {
                dns.observed = ComponentState::Degraded;
            }
        }
        components.extend(fixed);
        Ok(StatusSnapshot {
            generated_ms: now,
            observed_ms: now,
            components,
            incidents,
        })
    }
}
