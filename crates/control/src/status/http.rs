//! The status page's routes (mounted by [`crate::api`]):
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | GET | `/status` | anyone | the page (HTML) |
//! | GET | `/status/feed.atom` | anyone | the incidents as an Atom feed |
//! | GET | `/status/incidents.json` | anyone | the data of both ([`StatusSnapshot`]) |
//! | GET | `/v1/incidents` | read-only | the incident log |
//! | POST | `/v1/incidents` | deployer | open an incident ([`NewIncident`]) |
//! | POST | `/v1/incidents/{id}/updates` | deployer | add an update ([`NewUpdate`]; `resolved` closes it) |

use super::page::Flavour;
use super::{NewIncident, NewUpdate, StatusSnapshot};
use crate::auth::Caller;
use crate::failure::{body, fail, Failure};
use crate::plane::Plane;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

type Answer = Result<Response, Failure>;

fn rendered(r: Result<String, askama::Error>, content_type: &'static str) -> Answer {
    let text = r.map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        text,
    )
        .into_response())
}

async fn snapshot(plane: &Plane) -> Result<Arc<StatusSnapshot>, Failure> {
    Ok(plane.status_snapshot_cached().await?)
}

/// `GET /status`.
pub(crate) async fn page(State(plane): State<Arc<Plane>>) -> Answer {
    let s = snapshot(&plane).await?;
    rendered(
        super::page::render(&s, Flavour::Served),
        "text/html; charset=utf-8",
    )
}

/// `GET /status/feed.atom`.
pub(crate) async fn feed(State(plane): State<Arc<Plane>>) -> Answer {
    let s = snapshot(&plane).await?;
    rendered(
        super::feed::render(&s, "/status"),
        "application/atom+xml; charset=utf-8",
    )
}

/// `GET /status/incidents.json`.
pub(crate) async fn data(State(plane): State<Arc<Plane>>) -> Answer {
    Ok(Json(&*snapshot(&plane).await?).into_response())
}

/// `GET /v1/incidents`.
pub(crate) async fn list(State(plane): State<Arc<Plane>>) -> Answer {
    Ok(Json(plane.incident_book().await?).into_response())
}

/// `POST /v1/incidents`.
pub(crate) async fn open(
    State(plane): State<Arc<Plane>>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Answer {
    let new: NewIncident = body(&bytes)?;
    let opened = plane.open_incident(new, caller.name()).await?;
    Ok((StatusCode::CREATED, Json(opened)).into_response())
}

/// `POST /v1/incidents/{id}/updates`.
pub(crate) async fn update(
    State(plane): State<Arc<Plane>>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<u64>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    let Path(id) = id.map_err(|e| fail(StatusCode::BAD_REQUEST, e.body_text()))?;
    let update: NewUpdate = body(&bytes)?;
    let changed = plane.add_incident_update(id, update, caller.name()).await?;
    Ok(Json(changed).into_response())
}
