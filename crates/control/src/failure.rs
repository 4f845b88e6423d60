//! How the control API answers a failure: a status and a JSON [`ApiError`], from a
//! [`PlaneError`] or a request the API could not read. Shared by the API's handlers and the
//! status page's (`crate::status::http`).

use crate::plane::PlaneError;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use firebreak_protocol::api::ApiError;
use serde::Deserialize;

/// An error answer (JSON [`ApiError`]).
pub(crate) struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

/// A failure with `status` and message `msg`.
pub(crate) fn fail(status: StatusCode, msg: impl Into<String>) -> Failure {
    Failure(
        status,
        ApiError {
            error: msg.into(),
            errors: Vec::new(),
        },
    )
}

impl From<PlaneError> for Failure {
    fn from(e: PlaneError) -> Self {
        match e {
            PlaneError::Invalid(rejected) => Failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                ApiError {
                    error: format!(
                        "configuration refused ({} error{}); nothing was stored",
                        rejected.errors.len(),
                        if rejected.errors.len() == 1 { "" } else { "s" }
                    ),
                    errors: rejected.errors,
                },
            ),
            PlaneError::BadRequest(m) => fail(StatusCode::BAD_REQUEST, m),
            PlaneError::NotFound(m) => fail(StatusCode::NOT_FOUND, m),
            PlaneError::Conflict(m) => fail(StatusCode::CONFLICT, m),
            PlaneError::Store(e) => fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            PlaneError::Internal(m) => fail(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

/// What a handler answers.
pub(crate) type Answer = Result<Response, Failure>;

/// A query string that does not parse: 400.
pub(crate) fn bad_query(e: QueryRejection) -> Failure {
    fail(StatusCode::BAD_REQUEST, e.body_text())
}

/// A path parameter that does not parse: 400.
pub(crate) fn bad_path(e: PathRejection) -> Failure {
    fail(StatusCode::BAD_REQUEST, e.body_text())
}

/// `bytes` as a JSON request body of type `T` (400 when it is not one).
pub(crate) fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}
