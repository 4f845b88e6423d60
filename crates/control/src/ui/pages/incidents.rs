//! Incidents of the public status page: the list, opening one, and updates — the same code
//! as `POST /v1/incidents` and `POST /v1/incidents/{id}/updates`, audited under the operator.

use super::*;
use crate::status::{Impact, IncidentState, NewIncident, NewUpdate};

/// Incidents shown at most (the newest).
const SHOWN: usize = 100;

/// The incidents page.
#[derive(Template)]
#[template(path = "ui/incidents.html")]
pub struct IncidentsPage {
    /// Header.
    pub nav: Nav,
    /// Newest first.
    pub incidents: Vec<IncidentView>,
    /// What the last action did.
    pub notice: String,
}

/// One incident, as shown.
pub struct IncidentView {
    /// Its number.
    pub id: u64,
    /// One line.
    pub title: String,
    /// Components, comma separated.
    pub components: String,
    /// State.
    pub state: String,
    /// `ok` when resolved, else `bad`.
    pub class: &'static str,
    /// Impact.
    pub impact: &'static str,
    /// When it opened.
    pub opened: String,
    /// When it closed.
    pub closed: String,
    /// What it follows when the control plane opened it.
    pub automatic: String,
    /// Whether it is open (an update form is shown).
    pub open: bool,
    /// Updates, newest first: when, state, by, text.
    pub updates: Vec<(String, String, String, String)>,
}

fn view(i: &crate::status::Incident) -> IncidentView {
    IncidentView {
        id: i.id,
        title: i.title.clone(),
        components: i.components.join(", "),
        state: i.state.to_string(),
        class: if i.is_open() { "bad" } else { "ok" },
        impact: match i.impact {
            Impact::Degraded => "degraded",
            Impact::Outage => "outage",
        },
        opened: when(i.opened_ms),
        closed: i.closed_ms.map(when).unwrap_or_default(),
        automatic: i.automatic.clone().unwrap_or_default(),
        open: i.is_open(),
        updates: i
            .updates
            .iter()
            .rev()
            .map(|u| {
                (
                    when(u.at_ms),
                    u.state.to_string(),
                    u.by.clone(),
                    u.text.clone(),
                )
            })
            .collect(),
    }
}

async fn page(ui: &Ui, s: &Session, notice: String) -> Result<Response, UiError> {
    let book = ui.plane.incident_book().await?;
    let mut incidents: Vec<IncidentView> =
        book.incidents.iter().rev().take(SHOWN).map(view).collect();
    // Open ones first, each group newest first.
    incidents.sort_by_key(|i| !i.open);
    Ok(render(&IncidentsPage {
        nav: Nav::new(s, "incidents"),
        incidents,
        notice,
    }))
}

/// `GET /ui/incidents`.
pub async fn incidents(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
) -> Result<Response, UiError> {
    page(&ui, &s, String::new()).await
}

fn state_field(fields: &[(String, String)]) -> Result<Option<IncidentState>, UiError> {
    match field(fields, "state")
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => Ok(None),
        Some(v) => IncidentState::parse(v)
            .map(Some)
            .ok_or_else(|| UiError::new(StatusCode::BAD_REQUEST, "unknown incident state")),
    }
}

/// `POST /ui/incidents`: opens one (`title`, `components` comma separated, `text`, `impact`).
pub async fn open_incident(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    body: Bytes,
) -> Result<Response, UiError> {
    let fields = action_form(&s, &body)?;
    let impact = match field(&fields, "impact").map(str::trim) {
        None | Some("") => Impact::default(),
        Some(v) => Impact::parse(v)
            .ok_or_else(|| UiError::new(StatusCode::BAD_REQUEST, "impact is degraded or outage"))?,
    };
    let new = NewIncident {
        title: field(&fields, "title").unwrap_or("").trim().to_owned(),
        components: field(&fields, "components")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        text: field(&fields, "text").unwrap_or("").trim().to_owned(),
        state: state_field(&fields)?,
        impact,
    };
    let opened = ui.plane.open_incident(new, &s.operator).await?;
    page(&ui, &s, format!("Incident {} opened.", opened.id)).await
}

/// `POST /ui/incidents/{id}`: adds an update (`text`, optional `state`).
pub async fn update_incident(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    Path(id): Path<u64>,
    body: Bytes,
) -> Result<Response, UiError> {
    let fields = action_form(&s, &body)?;
    let update = NewUpdate {
        text: field(&fields, "text").unwrap_or("").trim().to_owned(),
        state: state_field(&fields)?,
    };
    let changed = ui
        .plane
        .add_incident_update(id, update, &s.operator)
        .await?;
    page(
        &ui,
        &s,
        format!("Incident {} updated: {}.", changed.id, changed.state),
    )
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn incidents_are_escaped() {
        let i = crate::status::Incident {
            id: 7,
            title: HOSTILE.into(),
            components: vec!["pop/ams".into()],
            state: IncidentState::Investigating,
            impact: Impact::Outage,
            opened_ms: 1_700_000_000_000,
            closed_ms: None,
            automatic: None,
            updates: vec![crate::status::incidents::IncidentUpdate {
                at_ms: 1_700_000_000_000,
                state: IncidentState::Investigating,
                text: HOSTILE.into(),
                by: HOSTILE.into(),
            }],
        };
        let html = IncidentsPage {
            nav: nav(),
            incidents: vec![view(&i)],
            notice: HOSTILE.into(),
        }
        .render()
        .unwrap();
        assert_escaped(&html);
        assert!(
            html.contains("Incident 7") || html.contains(">7<"),
            "{html}"
        );
    }
}
