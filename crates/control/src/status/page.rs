//! The status page as HTML (askama, `templates/status/page.html`; everything escaped). Times
//! are UTC, RFC 3339. The page says when it was made; a static export also says how often it
//! is rewritten and, with a few lines of optional script, marks itself stale when it is older
//! than that; without script the note still reads correctly.

use super::{ComponentState, Incident, StatusSnapshot};
use askama::Template;

/// The page's stylesheet, embedded.
pub const CSS: &str = include_str!("../../templates/status/status.css");
/// The page's title.
pub const TITLE: &str = "Firebreak status";
/// How often an export is rewritten even when nothing changed, so that its "last updated"
/// proves it is alive (the exported page says "at least once a minute").
pub const HEARTBEAT_MS: u64 = 60_000;
/// An export older than this is stale.
pub const STALE_MS: u64 = 5 * 60_000;
/// Components observed this long before the page was made are called out (an incident
/// written offline while the control plane is down).
const OBSERVED_STALE_MS: u64 = 5 * 60_000;
/// Most resolved incidents the page shows.
const MAX_HISTORY_SHOWN: usize = 100;

/// Where the page is shown, which changes a few lines of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Served by the control plane (`GET /status`): refreshes itself every minute.
    Served,
    /// Static files from an export: says how to tell it stopped updating.
    Exported,
}

/// `ms` since the epoch as RFC 3339 (whole seconds, UTC).
pub(crate) fn time(ms: u64) -> String {
    firebreak_protocol::secrets::rfc3339(i64::try_from(ms / 1000).unwrap_or(i64::MAX))
}

struct ComponentView {
    name: String,
    state: &'static str,
}

struct UpdateView {
    at: String,
    state: &'static str,
    text: String,
}

struct IncidentView {
    id: u64,
    title: String,
    state: &'static str,
    components: String,
    opened: String,
    closed: String,
    open: bool,
    automatic: bool,
    updates: Vec<UpdateView>,
}

impl IncidentView {
    fn of(i: &Incident) -> Self {
        Self {
            id: i.id,
            title: i.title.clone(),
            state: i.state.as_str(),
            components: i.components.join(", "),
            opened: time(i.opened_ms),
            closed: i.closed_ms.map(time).unwrap_or_default(),
            open: i.is_open(),
            automatic: i.automatic.is_some(),
            updates: i
                .updates
                .iter()
                .rev()
                .map(|u| UpdateView {
                    at: time(u.at_ms),
                    state: u.state.as_str(),
                    text: u.text.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "status/page.html")]
struct PageTemplate {
    title: &'static str,
    css: &'static str,
    feed_href: &'static str,
    refresh_s: u64,
    exported: bool,
    generated: String,
    stale_min: u64,
    stale_ms: u64,
    observed_note: String,
    summary: &'static str,
    summary_class: &'static str,
    components: Vec<ComponentView>,
    open: Vec<IncidentView>,
    history: Vec<IncidentView>,
}

/// Renders the page.
pub fn render(s: &StatusSnapshot, flavour: Flavour) -> Result<String, askama::Error> {
    let components: Vec<(String, ComponentState)> = s
        .components
        .iter()
        .map(|c| (c.name.clone(), s.state_of(c)))
        .collect();
    let worst = components
        .iter()
        .map(|(_, st)| *st)
        .max()
        .unwrap_or_default();
    let summary = match worst {
        ComponentState::Operational => "All systems operational",
        ComponentState::Degraded => "Some systems are degraded",
        ComponentState::Outage => "Some systems are down",
    };
    let observed_note = if s.generated_ms.saturating_sub(s.observed_ms) > OBSERVED_STALE_MS {
        format!(
            "The control plane could not be reached: component states were last observed at {}; incidents below are current.",
            time(s.observed_ms)
        )
    } else {
        String::new()
    };
    let (feed_href, refresh_s) = match flavour {
        Flavour::Served => ("/status/feed.atom", 60),
        Flavour::Exported => ("feed.atom", 0),
    };
    let page = PageTemplate {
        title: TITLE,
        css: CSS,
        feed_href,
        refresh_s,
        exported: flavour == Flavour::Exported,
        generated: time(s.generated_ms),
        stale_min: STALE_MS / 60_000,
        stale_ms: STALE_MS,
        observed_note,
        summary,
        summary_class: worst.as_str(),
        components: components
            .into_iter()
            .map(|(name, st)| ComponentView {
                name,
                state: st.as_str(),
            })
            .collect(),
        open: s.incidents.open_incidents().map(IncidentView::of).collect(),
        history: s
            .incidents
            .incidents
            .iter()
            .rev()
            .filter(|i| !i.is_open())
            .take(MAX_HISTORY_SHOWN)
            .map(IncidentView::of)
            .collect(),
    };
    page.render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::status::{Component, Impact, IncidentBook, NewIncident};

    pub(crate) fn hostile_snapshot() -> StatusSnapshot {
        let mut book = IncidentBook::default();
        book.open(
            NewIncident {
                title: "<script>alert(1)</script> & \"quotes\"".into(),
                components: vec!["pop/fra".into()],
                text: "<img src=x onerror=alert(2)>".into(),
                state: None,
                impact: Impact::Outage,
            },
            "alice",
            None,
            1_700_000_000_000,
        )
        .unwrap();
        let mut components = vec![Component {
            id: "pop/fra".into(),
            name: "POP fra".into(),
            observed: ComponentState::Operational,
        }];
        components.extend(StatusSnapshot::fixed_components());
        StatusSnapshot {
            generated_ms: 1_700_000_060_000,
            observed_ms: 1_700_000_060_000,
            components,
            incidents: book,
        }
    }

    #[test]
    fn a_hostile_title_is_escaped() {
        let html = render(&hostile_snapshot(), Flavour::Served).unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62; &#38; &#34;quotes&#34;"),
            "{html}"
        );
    }

    #[test]
    fn the_page_shows_components_incidents_and_when_it_was_made() {
        let html = render(&hostile_snapshot(), Flavour::Served).unwrap();
        assert!(
            html.contains("Last updated <time id=\"generated\" datetime=\"2023-11-14T22:14:20Z\">"),
            "{html}"
        );
        // The open incident's impact shows on its component.
        assert!(
            html.contains("<td>POP fra</td><td class=\"state outage\">outage</td>"),
            "{html}"
        );
        assert!(html.contains("Some systems are down"));
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(!html.contains("<script>"), "no script on the served page");
        let exported = render(&hostile_snapshot(), Flavour::Exported).unwrap();
        assert!(exported.contains("has stopped updating"));
        assert!(!exported.contains("http-equiv=\"refresh\""));
    }

    #[test]
    fn an_export_written_without_the_control_plane_says_so() {
        let mut s = hostile_snapshot();
        s.generated_ms += 3_600_000;
        let html = render(&s, Flavour::Exported).unwrap();
        assert!(
            html.contains("component states were last observed at 2023-11-14T22:14:20Z"),
            "{html}"
        );
    }
}
