//! Versions, one version's configuration (certificates described), and diffs.

use super::*;

/// Newest versions listed.
const VERSIONS_LISTED: usize = 100;

/// One version in the list.
pub struct VersionRow {
    /// Number.
    pub version: u64,
    /// Parent.
    pub parent: String,
    /// Author.
    pub author: String,
    /// Message.
    pub message: String,
    /// When.
    pub created: String,
    /// Services.
    pub services: usize,
    /// Bundle size.
    pub size: u64,
}

/// The versions page.
#[derive(Template)]
#[template(path = "ui/versions.html")]
pub struct VersionsPage {
    /// Header.
    pub nav: Nav,
    /// Newest first.
    pub versions: Vec<VersionRow>,
    /// The fleet's version.
    pub fleet_version: String,
}

/// `GET /ui/versions`.
pub async fn versions(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
) -> Result<Response, UiError> {
    let list = ui.plane.versions(VERSIONS_LISTED).await?;
    Ok(render(&VersionsPage {
        nav: Nav::new(&s, "versions"),
        versions: list
            .into_iter()
            .map(|v| VersionRow {
                version: v.version,
                parent: version_text(v.parent),
                author: v.author,
                message: v.message,
                created: when(v.created_at_ms),
                services: v.services.len(),
                size: v.size,
            })
            .collect(),
        fleet_version: version_text(ui.plane.fleet_state().default_version()),
    }))
}

/// One version's page.
#[derive(Template)]
#[template(path = "ui/version.html")]
pub struct VersionPage {
    /// Header.
    pub nav: Nav,
    /// Number.
    pub version: u64,
    /// Parent.
    pub parent: Option<u64>,
    /// Author, message, when, hashes.
    pub facts: Vec<(String, String)>,
    /// Its configuration, certificates described, never shown as PEM (keys are never stored).
    pub document: String,
}

/// `GET /ui/versions/{n}`: the configuration with secrets redacted, as `GET /v1/versions/{n}`.
pub async fn version(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    n: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> Result<Response, UiError> {
    let Path(n) = n.map_err(|_| UiError::new(StatusCode::NOT_FOUND, "no such version"))?;
    let detail = ui.plane.version(n).await?;
    let document = detail.document;
    let document =
        tokio::task::spawn_blocking(move || firebreak_protocol::secrets::redact_certs(&document))
            .await
            .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let i = detail.info;
    let mut facts = vec![
        ("author".to_owned(), i.author),
        ("message".to_owned(), i.message),
        ("created".to_owned(), when(i.created_at_ms)),
        ("bundle sha256".to_owned(), i.sha256),
        ("size".to_owned(), format!("{} bytes", i.size)),
    ];
    for svc in i.services {
        facts.push((format!("service {}", svc.name), svc.sha256));
    }
    Ok(render(&VersionPage {
        nav: Nav::new(&s, "versions"),
        version: n,
        parent: i.parent,
        facts,
        document,
    }))
}

/// One line of a diff.
pub struct DiffLine {
    /// `add`, `del`, `hunk` or ``.
    pub class: &'static str,
    /// The line.
    pub text: String,
}

/// The diff page.
#[derive(Template)]
#[template(path = "ui/diff.html")]
pub struct DiffPage {
    /// Header.
    pub nav: Nav,
    /// From.
    pub from: u64,
    /// To.
    pub to: u64,
    /// The unified diff.
    pub lines: Vec<DiffLine>,
}

/// `?from=A&to=B`.
#[derive(serde::Deserialize)]
pub struct DiffQuery {
    from: u64,
    to: u64,
}

/// `GET /ui/diff?from=A&to=B`: as `GET /v1/diff` (certificates redacted).
pub async fn diff(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    q: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    let Query(q) = q.map_err(|_| {
        UiError::new(
            StatusCode::BAD_REQUEST,
            "give two version numbers: from and to",
        )
    })?;
    let text = ui.plane.diff(q.from, q.to).await?;
    let lines = text
        .lines()
        .map(|l| DiffLine {
            class: if l.starts_with("@@") {
                "hunk"
            } else if l.starts_with('+') && !l.starts_with("+++") {
                "add"
            } else if l.starts_with('-') && !l.starts_with("---") {
                "del"
            } else {
                ""
            },
            text: l.to_owned(),
        })
        .collect();
    Ok(render(&DiffPage {
        nav: Nav::new(&s, "versions"),
        from: q.from,
        to: q.to,
        lines,
    }))
}
