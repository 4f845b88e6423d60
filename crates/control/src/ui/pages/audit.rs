//! The audit log.

use super::*;

/// Newest audit entries listed.
const AUDIT_LISTED: usize = 200;

/// One audit entry.
pub struct AuditRow {
    /// When.
    pub at: String,
    /// Who.
    pub who: String,
    /// What.
    pub action: String,
    /// Version.
    pub version: String,
    /// Rollout.
    pub rollout: String,
    /// Why.
    pub message: String,
}

/// The audit page.
#[derive(Template)]
#[template(path = "ui/audit.html")]
pub struct AuditPage {
    /// Header.
    pub nav: Nav,
    /// Newest first.
    pub entries: Vec<AuditRow>,
}

/// `GET /ui/audit`.
pub async fn audit(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
) -> Result<Response, UiError> {
    let list = ui.plane.audit_log(AUDIT_LISTED).await?;
    Ok(render(&AuditPage {
        nav: Nav::new(&s, "audit"),
        entries: list
            .into_iter()
            .rev()
            .map(|e| AuditRow {
                at: when(e.at_ms),
                who: e.who,
                action: e.action,
                version: version_text(e.version),
                rollout: e.rollout.map_or_else(|| "–".to_owned(), |r| r.to_string()),
                message: e.message,
            })
            .collect(),
    }))
}
