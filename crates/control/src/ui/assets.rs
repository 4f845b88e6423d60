//! The dashboard's stylesheet and script, embedded in the binary (`include_str!`): no
//! front-end build, nothing fetched from elsewhere.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The stylesheet.
pub const CSS: &str = include_str!("../../assets/ui/dashboard.css");
/// The script: refreshes the rollout page's live part without reloading.
pub const JS: &str = include_str!("../../assets/ui/dashboard.js");

/// `GET /ui/assets/{name}`.
pub async fn serve(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "dashboard.css" => (CSS, "text/css; charset=utf-8"),
        "dashboard.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=300"),
            ),
        ],
        body,
    )
        .into_response()
}
