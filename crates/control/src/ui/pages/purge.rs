//! Purge by URL, surrogate key or whole service.

use super::*;

/// The purge page (form, and the last purge's outcome).
#[derive(Template)]
#[template(path = "ui/purge.html")]
pub struct PurgePage {
    /// Header.
    pub nav: Nav,
    /// The outcome of the purge just made.
    pub outcome: Option<PurgeView>,
}

/// A purge's outcome.
pub struct PurgeView {
    /// What was purged.
    pub what: String,
    /// Edges asked.
    pub edges: usize,
    /// Acknowledged.
    pub acknowledged: usize,
    /// Objects purged.
    pub purged: u64,
    /// Time taken.
    pub elapsed_ms: u64,
    /// Edges that did not acknowledge, with why.
    pub stragglers: Vec<String>,
    /// Edges not asked (not seen for a while).
    pub skipped: Vec<String>,
}

fn purge_view(what: String, o: PurgeOutcome) -> PurgeView {
    PurgeView {
        what,
        edges: o.edges,
        acknowledged: o.acknowledged.len(),
        purged: o.purged,
        elapsed_ms: o.elapsed_ms,
        stragglers: o
            .stragglers
            .into_iter()
            .map(|s| format!("{}: {}", s.id, s.error))
            .collect(),
        skipped: o.skipped,
    }
}

/// `GET /ui/purge`.
pub async fn purge_form(Extension(s): Extension<Session>) -> Response {
    render(&PurgePage {
        nav: Nav::new(&s, "purge"),
        outcome: None,
    })
}

/// `POST /ui/purge`: by `url`, or surrogate `key` of `service`, or `all` of `service`; as
/// `POST /v1/purge`.
pub async fn purge(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    body: Bytes,
) -> Result<Response, UiError> {
    let fields = action_form(&s, &body)?;
    let get = |name: &str| {
        field(&fields, name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let service = get("service");
    let mut req = PurgeRequest {
        soft: get("soft").is_some(),
        service: service.clone(),
        ..PurgeRequest::default()
    };
    let what = if let Some(url) = get("url") {
        req.url = Some(url.clone());
        req.service = None;
        url
    } else if let Some(key) = get("key") {
        req.key = Some(key.clone());
        format!("key {key} of {}", service.unwrap_or_default())
    } else if get("all").is_some() {
        req.all = true;
        format!("everything of {}", service.unwrap_or_default())
    } else {
        return Err(UiError::new(
            StatusCode::BAD_REQUEST,
            "give a URL, or a surrogate key and its service, or tick everything of a service",
        ));
    };
    tracing::info!(operator = %s.operator, what = %what, "purge from the dashboard");
    let outcome = ui.plane.purge(req).await?;
    Ok(render(&PurgePage {
        nav: Nav::new(&s, "purge"),
        outcome: Some(purge_view(what, outcome)),
    }))
}
