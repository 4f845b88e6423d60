//! Incidents: the model and its bounds. The whole log is one [`IncidentBook`] document, kept
//! in the store by compare-and-set on its `seq` (like the fleet state) and, for an offline
//! status page, in an export directory's `incidents.json` ([`super::export`]).
//!
//! Bounded everywhere: text lengths ([`MAX_TITLE_CHARS`], [`MAX_TEXT_CHARS`]), updates per
//! incident ([`MAX_UPDATES`]), incidents ([`MAX_INCIDENTS`]), resolved incidents kept for
//! [`HISTORY_MS`] (90 days), and the serialized document ([`MAX_BOOK_BYTES`], under etcd's
//! default request limit).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest update text, in characters.
pub const MAX_TEXT_CHARS: usize = 2_000;
/// Most updates one incident holds (opening and closing included): a long incident gets a new
/// one rather than an unbounded thread.
pub const MAX_UPDATES: usize = 30;
/// Most components one incident names.
pub const MAX_COMPONENTS: usize = 16;
/// Longest component id (`pop/` and a POP name).
pub const MAX_COMPONENT_LEN: usize = 68;
/// Most incidents kept (resolved ones go first, oldest first).
pub const MAX_INCIDENTS: usize = 500;
/// How long a resolved incident stays in the history: 90 days.
pub const HISTORY_MS: u64 = 90 * 24 * 3600 * 1000;
/// Largest serialized log. One document in the store: etcd refuses requests over 1.5 MiB by
/// default; resolved incidents are dropped, oldest first, to stay under this.
pub const MAX_BOOK_BYTES: usize = 1024 * 1024;

/// Where an incident is, as the public page says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    /// Something is wrong; the cause is not known yet.
    Investigating,
    /// The cause is known.
    Identified,
    /// A fix is in; watching that it holds.
    Monitoring,
    /// Over.
    Resolved,
}

impl IncidentState {
    /// Parses `investigating`, `identified`, `monitoring` or `resolved`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "investigating" => Some(Self::Investigating),
            "identified" => Some(Self::Identified),
            "monitoring" => Some(Self::Monitoring),
            "resolved" => Some(Self::Resolved),
            _ => None,
        }
    }

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Investigating => "investigating",
            Self::Identified => "identified",
            Self::Monitoring => "monitoring",
            Self::Resolved => "resolved",
        }
    }
}

impl std::fmt::Display for IncidentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How badly an incident hurts the components it names; a component shows the worst impact
/// of its open incidents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impact {
    /// Working, slower or in part.
    #[default]
    Degraded,
    /// Not working.
    Outage,
}

impl Impact {
    /// Parses `degraded` or `outage`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "degraded" => Some(Self::Degraded),
            "outage" => Some(Self::Outage),
            _ => None,
        }
    }
}

/// One timestamped update of an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentUpdate {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The incident's state from this update on.
    pub state: IncidentState,
    /// What happened.
    pub text: String,
    /// Who wrote it (an operator's name, or `firebreak` for automatic updates).
    pub by: String,
}

/// One incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// Its number (increasing).
    pub id: u64,
    /// One line.
    pub title: String,
    /// Component ids it affects (`pop/NAME`, `dns`, `control-plane`, `api`).
    pub components: Vec<String>,
    /// Where it is now (the latest update's state).
    pub state: IncidentState,
    /// How badly it hurts its components.
    #[serde(default)]
    pub impact: Impact,
    /// When it opened (ms since the epoch).
    pub opened_ms: u64,
    /// When it was resolved.
    #[serde(default)]
    pub closed_ms: Option<u64>,
    /// For an incident the control plane opened itself: the condition it follows (`pop/NAME`,
    /// `dns/fallback`, `gate/ROLLOUT`); it closes when that condition ends. `None`: opened
    /// by an operator.
    #[serde(default)]
    pub automatic: Option<String>,
    /// Updates, oldest first (the first says why it opened).
    pub updates: Vec<IncidentUpdate>,
}

impl Incident {
    /// Whether it is still open.
    pub fn is_open(&self) -> bool {
        self.state != IncidentState::Resolved
    }
}

/// The incident log: every incident kept, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentBook {
    /// Increases with every write (compare-and-set in the store).
    #[serde(default)]
    pub seq: u64,
    /// The next incident's id.
    #[serde(default)]
    pub next_id: u64,
    /// Incidents, oldest first.
    #[serde(default)]
    pub incidents: Vec<Incident>,
}

/// Why an incident change was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncidentError {
    /// The request is out of bounds or malformed.
    #[error("{0}")]
    Invalid(String),
    /// No incident with that id.
    #[error("no incident {0}")]
    NotFound(u64),
    /// The log is full of open incidents (or too large) to take more.
    #[error("{0}")]
    Full(String),
}

/// What opens an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewIncident {
    /// One line.
    pub title: String,
    /// Component ids it affects.
    pub components: Vec<String>,
    /// The first update's text.
    #[serde(default)]
    pub text: String,
    /// The first state (default investigating).
    #[serde(default)]
    pub state: Option<IncidentState>,
    /// How badly it hurts (default degraded).
    #[serde(default)]
    pub impact: Impact,
}

/// An update to an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUpdate {
    /// What happened.
    pub text: String,
    /// The state from now on (default: unchanged; `resolved` closes the incident).
    #[serde(default)]
    pub state: Option<IncidentState>,
}

/// Checks a component id: `dns`, `control-plane`, `api` or `pop/NAME` (NAME: letters, digits,
/// `-`, `_`, `.`, at most 63).
pub fn check_component(id: &str) -> Result<(), IncidentError> {
    let ok = match id {
        "dns" | "control-plane" | "api" => true,
        _ => id.strip_prefix("pop/").is_some_and(|name| {
            !name.is_empty()
                && name.len() <= firebreak_protocol::api::MAX_LABEL_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }),
    };
    if ok && id.len() <= MAX_COMPONENT_LEN {
        Ok(())
    } else {
        Err(IncidentError::Invalid(format!(
            "component `{}`: must be dns, control-plane, api or pop/NAME",
            id.chars().take(MAX_COMPONENT_LEN).collect::<String>()
        )))
    }
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), IncidentError> {
    if text.chars().count() > max {
        return Err(IncidentError::Invalid(format!(
            "{what}: at most {max} characters"
        )));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(IncidentError::Invalid(format!(
            "{what}: no control characters"
        )));
    }
    Ok(())
}

fn check_new(new: &NewIncident) -> Result<(), IncidentError> {
    if new.title.trim().is_empty() {
        return Err(IncidentError::Invalid("title: must not be empty".into()));
    }
    check_text("title", &new.title, MAX_TITLE_CHARS)?;
    if new.title.contains('\n') {
        return Err(IncidentError::Invalid("title: one line".into()));
    }
    check_text("text", &new.text, MAX_TEXT_CHARS)?;
    if new.components.is_empty() || new.components.len() > MAX_COMPONENTS {
        return Err(IncidentError::Invalid(format!(
            "components: 1 to {MAX_COMPONENTS}"
        )));
    }
    for c in &new.components {
        check_component(c)?;
    }
    Ok(())
}

impl IncidentBook {
    /// Opens an incident (by `by`; `automatic`: the condition it follows). Returns its id.
    pub fn open(
        &mut self,
        new: NewIncident,
        by: &str,
        automatic: Option<String>,
        now: u64,
    ) -> Result<u64, IncidentError> {
        check_new(&new)?;
        self.prune(now);
        if self.incidents.len() >= MAX_INCIDENTS {
            let Some(oldest_resolved) = self.incidents.iter().position(|i| !i.is_open()) else {
                return Err(IncidentError::Full(format!(
                    "{MAX_INCIDENTS} incidents are open; resolve some first"
                )));
            };
            self.incidents.remove(oldest_resolved);
        }
        let id = self.next_id.max(1);
        self.next_id = id.saturating_add(1);
        let state = new.state.unwrap_or(IncidentState::Investigating);
        let mut components = new.components;
        components.sort();
        components.dedup();
        let text = if new.text.is_empty() {
            new.title.clone()
        } else {
            new.text
        };
        self.incidents.push(Incident {
            id,
            title: new.title,
            components,
            state,
            impact: new.impact,
            opened_ms: now,
            closed_ms: (state == IncidentState::Resolved).then_some(now),
            automatic,
            updates: vec![IncidentUpdate {
                at_ms: now,
                state,
                text,
                by: by.chars().take(64).collect(),
            }],
        });
        self.fit(now)?;
        Ok(id)
    }

    /// Adds an update to incident `id`; `resolved` closes it (and an update to a resolved one
    /// with another state reopens it).
    pub fn update(
        &mut self,
        id: u64,
        update: NewUpdate,
        by: &str,
        now: u64,
    ) -> Result<(), IncidentError> {
        check_text("text", &update.text, MAX_TEXT_CHARS)?;
        if update.text.trim().is_empty() {
            return Err(IncidentError::Invalid("text: must not be empty".into()));
        }
        let incident = self
            .incidents
            .iter_mut()
            .find(|i| i.id == id)
            .ok_or(IncidentError::NotFound(id))?;
        if incident.updates.len() >= MAX_UPDATES {
            return Err(IncidentError::Full(format!(
                "incident {id} has {MAX_UPDATES} updates, the most it keeps; open a new one"
            )));
        }
        let state = update.state.unwrap_or(incident.state);
        incident.state = state;
        incident.closed_ms = (state == IncidentState::Resolved).then_some(now);
        incident.updates.push(IncidentUpdate {
            at_ms: now,
            state,
            text: update.text,
            by: by.chars().take(64).collect(),
        });
        self.fit(now)
    }

    /// Opens an automatic incident for `condition` unless one is open for it already
    /// (idempotent). Returns whether it opened one.
    pub fn open_automatic(
        &mut self,
        condition: &str,
        new: NewIncident,
        now: u64,
    ) -> Result<bool, IncidentError> {
        if self.open_for(condition).is_some() {
            return Ok(false);
        }
        self.open(new, AUTOMATIC_AUTHOR, Some(condition.to_owned()), now)?;
        Ok(true)
    }

    /// The open incident following `condition`, if any.
    pub fn open_for(&self, condition: &str) -> Option<&Incident> {
        self.incidents
            .iter()
            .find(|i| i.is_open() && i.automatic.as_deref() == Some(condition))
    }

    /// Resolves every open automatic incident whose condition is not in `active` (of those
    /// `covered` decides about: the others' conditions are unknown now). Returns how many.
    pub fn close_ended(
        &mut self,
        active: &BTreeSet<String>,
        covered: impl Fn(&str) -> bool,
        now: u64,
    ) -> usize {
        let mut closed = 0;
        for i in &mut self.incidents {
            let Some(condition) = i.automatic.as_deref() else {
                continue;
            };
            if !i.is_open() || active.contains(condition) || !covered(condition) {
                continue;
            }
            // An automatic incident that an operator filled with updates still closes: the
            // closing update replaces the last one rather than being lost.
            if i.updates.len() >= MAX_UPDATES {
                i.updates.pop();
            }
            i.state = IncidentState::Resolved;
            i.closed_ms = Some(now);
            i.updates.push(IncidentUpdate {
                at_ms: now,
                state: IncidentState::Resolved,
                text: "Resolved automatically: the condition that opened this incident ended."
                    .into(),
                by: AUTOMATIC_AUTHOR.into(),
            });
            closed += 1;
        }
        closed
    }

    /// Drops resolved incidents closed more than [`HISTORY_MS`] ago, and the oldest resolved
    /// ones past [`MAX_INCIDENTS`].
    pub fn prune(&mut self, now: u64) {
        let horizon = now.saturating_sub(HISTORY_MS);
        self.incidents
            .retain(|i| i.is_open() || i.closed_ms.unwrap_or(now) >= horizon);
        while self.incidents.len() > MAX_INCIDENTS {
            let Some(pos) = self.incidents.iter().position(|i| !i.is_open()) else {
                break;
            };
            self.incidents.remove(pos);
        }
    }

    /// Prunes, then drops the oldest resolved incidents until the serialized log fits
    /// [`MAX_BOOK_BYTES`]; refuses when even open incidents alone do not fit.
    fn fit(&mut self, now: u64) -> Result<(), IncidentError> {
        self.prune(now);
        loop {
            let size = serde_json::to_vec(self).map_or(usize::MAX, |v| v.len());
            if size <= MAX_BOOK_BYTES {
                return Ok(());
            }
            let Some(pos) = self.incidents.iter().position(|i| !i.is_open()) else {
                return Err(IncidentError::Full(format!(
                    "the open incidents fill the log ({MAX_BOOK_BYTES} bytes); resolve some first"
                )));
            };
            self.incidents.remove(pos);
        }
    }

    /// Open incidents, newest first.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.iter().rev().filter(|i| i.is_open())
    }
}

/// Who automatic updates are by.
pub const AUTOMATIC_AUTHOR: &str = "firebreak";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn new(title: &str) -> NewIncident {
        NewIncident {
            title: title.into(),
            components: vec!["api".into()],
            text: String::new(),
            state: None,
            impact: Impact::Degraded,
        }
    }

    #[test]
    fn incidents_open_update_and_resolve() {
        let mut b = IncidentBook::default();
        let id = b.open(new("slow"), "alice", None, 10).unwrap();
        assert_eq!(id, 1);
        let second = b.open(new("other"), "alice", None, 11).unwrap();
        assert_eq!(second, 2);
        b.update(
            id,
            NewUpdate {
                text: "fixed".into(),
                state: Some(IncidentState::Resolved),
            },
            "bob",
            20,
        )
        .unwrap();
        let i = &b.incidents[0];
        assert_eq!(
            (i.state, i.closed_ms, i.updates.len()),
            (IncidentState::Resolved, Some(20), 2)
        );
        assert_eq!(b.open_incidents().count(), 1);
        assert_eq!(
            b.update(
                9,
                NewUpdate {
                    text: "x".into(),
                    state: None
                },
                "b",
                1
            ),
            Err(IncidentError::NotFound(9))
        );
    }

    #[test]
    fn text_component_and_update_bounds_are_enforced() {
        let mut b = IncidentBook::default();
        let long = "x".repeat(MAX_TITLE_CHARS + 1);
        assert!(matches!(
            b.open(new(&long), "a", None, 1),
            Err(IncidentError::Invalid(_))
        ));
        assert!(matches!(
            b.open(new(" "), "a", None, 1),
            Err(IncidentError::Invalid(_))
        ));
        assert!(matches!(
            b.open(new("a\u{1b}[31m"), "a", None, 1),
            Err(IncidentError::Invalid(_))
        ));
        for bad in ["", "pop/", "pop/a b", "pop/<x>", "database"] {
            let mut n = new("t");
            n.components = vec![bad.into()];
            assert!(
                matches!(b.open(n, "a", None, 1), Err(IncidentError::Invalid(_))),
                "{bad}"
            );
        }
        let mut n = new("t");
        n.components = vec!["pop/fra-1".into(), "dns".into(), "dns".into()];
        let id = b.open(n, "a", None, 1).unwrap();
        assert_eq!(b.incidents[0].components, ["dns", "pop/fra-1"]);
        let text = "y".repeat(MAX_TEXT_CHARS + 1);
        assert!(b
            .update(id, NewUpdate { text, state: None }, "a", 2)
            .is_err());
        for _ in 1..MAX_UPDATES {
            b.update(
                id,
                NewUpdate {
                    text: "u".into(),
                    state: None,
                },
                "a",
                2,
            )
            .unwrap();
        }
        assert!(matches!(
            b.update(
                id,
                NewUpdate {
                    text: "u".into(),
                    state: None
                },
                "a",
                2
            ),
            Err(IncidentError::Full(_))
        ));
    }

    #[test]
    fn resolved_incidents_are_kept_90_days_and_at_most_max_incidents() {
        let mut b = IncidentBook::default();
        let day = 24 * 3600 * 1000;
        let old = b.open(new("old"), "a", None, day).unwrap();
        b.update(
            old,
            NewUpdate {
                text: "done".into(),
                state: Some(IncidentState::Resolved),
            },
            "a",
            2 * day,
        )
        .unwrap();
        let still_open = b.open(new("still open"), "a", None, day).unwrap();
        b.prune(2 * day + HISTORY_MS);
        assert_eq!(b.incidents.len(), 2, "exactly 90 days: kept");
        b.prune(2 * day + HISTORY_MS + 1);
        assert_eq!(
            b.incidents.iter().map(|i| i.id).collect::<Vec<_>>(),
            [still_open]
        );
        // The count bound drops resolved ones, oldest first; open ones fill it and refuse more.
        for n in 0..MAX_INCIDENTS + 10 {
            let id = b
                .open(new("n"), "a", None, 3 * day)
                .unwrap_or_else(|e| panic!("{n}: {e}"));
            b.update(
                id,
                NewUpdate {
                    text: "r".into(),
                    state: Some(IncidentState::Resolved),
                },
                "a",
                3 * day,
            )
            .unwrap();
        }
        assert_eq!(b.incidents.len(), MAX_INCIDENTS);
        assert_eq!(b.incidents[0].id, still_open);
        assert!(serde_json::to_vec(&b).unwrap().len() <= MAX_BOOK_BYTES);
    }

    #[test]
    fn the_log_stays_under_its_byte_bound() {
        let mut b = IncidentBook::default();
        let text = "z".repeat(MAX_TEXT_CHARS);
        // 25 incidents of ~60 kB each: past the bound.
        for _ in 0..25 {
            let id = b.open(new("big"), "a", None, 1).unwrap();
            for _ in 1..MAX_UPDATES - 1 {
                b.update(
                    id,
                    NewUpdate {
                        text: text.clone(),
                        state: None,
                    },
                    "a",
                    1,
                )
                .unwrap();
            }
            b.update(
                id,
                NewUpdate {
                    text: "end".into(),
                    state: Some(IncidentState::Resolved),
                },
                "a",
                1,
            )
            .unwrap();
        }
        assert!(serde_json::to_vec(&b).unwrap().len() <= MAX_BOOK_BYTES);
        assert!(b.incidents.len() < 25);
    }

    #[test]
    fn automatic_incidents_open_once_per_condition_and_close_when_it_ends() {
        let mut b = IncidentBook::default();
        let mut pop = new("POP fra is down");
        pop.components = vec!["pop/fra".into()];
        assert!(b.open_automatic("pop/fra", pop.clone(), 1).unwrap());
        assert!(
            !b.open_automatic("pop/fra", pop.clone(), 2).unwrap(),
            "one open incident per condition"
        );
        let manual = b.open(new("manual"), "alice", None, 2).unwrap();
        assert_eq!(b.incidents.len(), 2);
        let active: BTreeSet<String> = ["pop/fra".to_owned()].into();
        assert_eq!(b.close_ended(&active, |_| true, 3), 0);
        // Conditions not covered now (unknown) stay open.
        assert_eq!(b.close_ended(&BTreeSet::new(), |_| false, 3), 0);
        assert_eq!(b.close_ended(&BTreeSet::new(), |_| true, 4), 1);
        assert!(b.open_for("pop/fra").is_none());
        assert_eq!(b.incidents[0].closed_ms, Some(4));
        // Manual incidents never close by themselves.
        assert!(b.incidents.iter().any(|i| i.id == manual && i.is_open()));
        // The condition again: a new incident.
        assert!(b.open_automatic("pop/fra", pop, 5).unwrap());
        assert_eq!(b.incidents.len(), 3);
    }
}
