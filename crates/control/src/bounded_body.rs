//! Request bodies read with a size, a time and a memory bound, and every error answered as
//! JSON ([`ApiError`]).
//!
//! [`read`] runs as the router's innermost layer, so anything that checks the request's head
//! (authentication) runs before a body byte is read. It reads the whole body before the
//! handler runs:
//! - a `Content-Length` over `max_body_bytes` is refused with 413 before anything is read, a
//!   chunked body at the first byte over it; a push (`POST /v1/versions`, which may carry a
//!   MaxMind database) may be up to [`MAX_PUSH_BODY_BYTES`] (never more than the budget) and
//!   has six times `body_timeout`;
//! - the body must arrive within `body_timeout` of the head, or the answer is 408 (a client
//!   that sends a large `Content-Length` and stalls holds nothing for long);
//! - bodies being read share a byte budget (`body_budget_bytes`): each takes its
//!   `Content-Length` (a chunked one the largest size) from it before reading, and gives it
//!   back when its request is answered, so the memory that uploads hold is bounded however
//!   many connections send them. A request that cannot get its share within `body_timeout` is
//!   answered 503 with `Retry-After`.
//!
//! [`json_errors`] turns the errors that axum and the layers answer in plain text (404 no
//! route, 405, 413, 400 from extractors) into the same JSON as the handlers' errors.

use crate::listener::ApiLimits;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Buf;
use firebreak_protocol::api::{ApiError, MAX_PUSH_BODY_BYTES};
use http_body::Body as _;
use http_body_util::{BodyExt, Collected, LengthLimitError, Limited};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Longest plain-text error body turned into JSON; longer ones are replaced by the status.
const MAX_ERROR_TEXT: usize = 4096;

/// The body bounds shared by every request of one server.
#[derive(Clone)]
pub struct BodyBounds {
    timeout: Duration,
    max_bytes: usize,
    /// A push (`POST /v1/versions`) may carry a MaxMind database: up to
    /// [`MAX_PUSH_BODY_BYTES`], never more than the whole budget.
    max_push_bytes: usize,
    budget: Arc<Semaphore>,
}

impl BodyBounds {
    /// The bounds `limits` set (validated: the budget holds at least one largest body).
    pub fn new(limits: &ApiLimits) -> Self {
        Self {
            timeout: limits.body_timeout,
            max_bytes: limits.max_body_bytes,
            max_push_bytes: MAX_PUSH_BODY_BYTES
                .min(limits.body_budget_bytes)
                .max(limits.max_body_bytes),
            budget: Arc::new(Semaphore::new(limits.body_budget_bytes)),
        }
    }

    /// The largest body `req` may have, and the time it has to arrive: a push that may carry
    /// a MaxMind database gets [`PUSH_TIME_FACTOR`] times `body_timeout` (60 s by default)
    /// for its up to ~45 MiB.
    fn bounds_for(&self, req: &Request) -> (usize, Duration) {
        if req.method() == axum::http::Method::POST && req.uri().path() == PUSH_PATH {
            (
                self.max_push_bytes,
                self.timeout.saturating_mul(PUSH_TIME_FACTOR),
            )
        } else {
            (self.max_bytes, self.timeout)
        }
    }
}

/// The push route, whose body may carry a MaxMind database.
pub const PUSH_PATH: &str = "/v1/versions";
/// How many times `body_timeout` a push's body has.
const PUSH_TIME_FACTOR: u32 = 6;

impl Default for BodyBounds {
    fn default() -> Self {
        Self::new(&ApiLimits::default())
    }
}

/// An error answer: `status` with an [`ApiError`] body.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: message.into(),
            errors: Vec::new(),
        }),
    )
        .into_response()
}

enum Outcome {
    Read(Bytes, tokio::sync::OwnedSemaphorePermit),
    TooLarge,
    Broken(String),
}

/// The middleware: reads the request's body within `bounds`, then hands the request on.
pub async fn read(State(bounds): State<BodyBounds>, req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let declared = req.body().size_hint().exact();
    let (max_bytes, timeout) = bounds.bounds_for(&req);
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {max_bytes} bytes; nothing was read"),
        )
    };
    let charge = match declared {
        Some(n) if n > max_bytes as u64 => return too_large(),
        Some(n) => usize::try_from(n).unwrap_or(max_bytes),
        None => max_bytes,
    };
    let charge = u32::try_from(charge.max(1)).unwrap_or(u32::MAX);
    let (parts, body) = req.into_parts();
    let mut got_budget = false;
    let reading = async {
        let Ok(permit) = bounds.budget.clone().acquire_many_owned(charge).await else {
            return Outcome::Broken("the server is shutting down".into());
        };
        got_budget = true;
        match Limited::new(body, max_bytes).collect().await {
            Ok(c) => Outcome::Read(owned(c), permit),
            Err(e) if e.is::<LengthLimitError>() => Outcome::TooLarge,
            Err(e) => Outcome::Broken(format!("request body: {e}")),
        }
    };
    let outcome = tokio::time::timeout(timeout, reading).await;
    match outcome {
        Ok(Outcome::Read(bytes, permit)) => {
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            drop(permit);
            response
        }
        Ok(Outcome::TooLarge) => too_large(),
        Ok(Outcome::Broken(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(_) if !got_budget => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bodies being read at once; try again",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} ms",
                timeout.as_millis()
            ),
        ),
    }
}

/// The body in a buffer of its own. A body that arrived in one piece is a slice of hyper's
/// read buffer (8 KiB or more, shared with the request's head): it is copied, so that a
/// handler that waits with it — 2,000 edges joining at once wait their turn for the store's
/// writer — does not keep that buffer alive. A body of several pieces is gathered into a new
/// buffer anyway.
fn owned(collected: Collected<Bytes>) -> Bytes {
    let mut all = collected.aggregate();
    let len = all.remaining();
    if all.chunk().len() == len {
        Bytes::copy_from_slice(all.chunk())
    } else {
        all.copy_to_bytes(len)
    }
}

/// Turns an error response that is not JSON into an [`ApiError`] with the same status and
/// headers (its text, if short, is the message; otherwise the status's reason).
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json_or_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    // HTML errors are the dashboard's own pages ([`crate::ui`]): left as they are.
    if !(status.is_client_error() || status.is_server_error()) || is_json_or_html {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match Limited::new(body, MAX_ERROR_TEXT).collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        match status {
            StatusCode::NOT_FOUND => "no such route".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_owned(),
            s => s.canonical_reason().unwrap_or("error").to_owned(),
        }
    } else {
        text
    };
    let json = error(status, message);
    let (new_parts, new_body) = json.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &new_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, new_body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    fn app(limits: &ApiLimits) -> Router {
        Router::new()
            .route("/echo", post(|b: Bytes| async move { b }))
            .layer(axum::middleware::from_fn_with_state(
                BodyBounds::new(limits),
                read,
            ))
    }

    async fn call(app: Router, req: Request) -> (StatusCode, String) {
        let r = json_errors(app.oneshot(req).await.unwrap()).await;
        let status = r.status();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn limits() -> ApiLimits {
        ApiLimits {
            max_body_bytes: 16,
            body_budget_bytes: 32,
            body_timeout: Duration::from_millis(200),
            ..ApiLimits::default()
        }
    }

    #[tokio::test]
    async fn a_body_within_bounds_reaches_the_handler() {
        let req = Request::post("/echo").body(Body::from("hello")).unwrap();
        assert_eq!(
            call(app(&limits()), req).await,
            (StatusCode::OK, "hello".into())
        );
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_limit_is_json_413() {
        let chunks = futures_stream(vec![Bytes::from(vec![b'x'; 10]); 3]);
        let req = Request::post("/echo").body(chunks).unwrap();
        let (status, text) = call(app(&limits()), req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(serde_json::from_str::<ApiError>(&text).is_ok(), "{text}");
    }

    #[tokio::test]
    async fn a_push_may_be_larger_than_other_bodies_within_the_budget() {
        let app = Router::new()
            .route("/echo", post(|b: Bytes| async move { b }))
            .route(PUSH_PATH, post(|b: Bytes| async move { b }))
            .layer(axum::middleware::from_fn_with_state(
                BodyBounds::new(&limits()),
                read,
            ));
        // 24 bytes: over max_body_bytes (16), within the budget (32).
        let body = || Body::from(vec![b'x'; 24]);
        let req = Request::post(PUSH_PATH).body(body()).unwrap();
        assert_eq!(call(app.clone(), req).await.0, StatusCode::OK);
        let req = Request::post("/echo").body(body()).unwrap();
        assert_eq!(
            call(app.clone(), req).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        // Never more than the budget.
        let req = Request::post(PUSH_PATH)
            .body(Body::from(vec![b'x'; 33]))
            .unwrap();
        assert_eq!(call(app, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_stalled_body_is_json_408() {
        let (_tx, body) = stalled();
        let req = Request::post("/echo")
            .header(header::CONTENT_LENGTH, "10")
            .body(body)
            .unwrap();
        let (status, text) = call(app(&limits()), req).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(serde_json::from_str::<ApiError>(&text).is_ok(), "{text}");
    }

    #[tokio::test]
    async fn bodies_over_the_budget_wait_then_get_503() {
        let bounds = BodyBounds::new(&limits());
        let gate = Arc::new(Semaphore::new(0));
        let g = gate.clone();
        let app = Router::new()
            .route("/echo", post(|b: Bytes| async move { b }))
            .route(
                "/hold",
                post(move |b: Bytes| {
                    let g = g.clone();
                    async move {
                        let _ = g.acquire().await.unwrap();
                        b
                    }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(bounds.clone(), read));
        // Two requests of 16 bytes, held in their handler, take the whole budget of 32.
        let held: Vec<_> = (0..2)
            .map(|_| {
                let req = Request::post("/hold")
                    .body(Body::from(vec![b'x'; 16]))
                    .unwrap();
                tokio::spawn(call(app.clone(), req))
            })
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while bounds.budget.available_permits() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "budget never taken");
            tokio::task::yield_now().await;
        }
        let req = Request::post("/echo").body(Body::from("abcd")).unwrap();
        let r = json_errors(app.clone().oneshot(req).await.unwrap()).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key(header::RETRY_AFTER));
        gate.add_permits(2);
        for h in held {
            assert_eq!(h.await.unwrap().0, StatusCode::OK);
        }
        assert_eq!(bounds.budget.available_permits(), 32);
    }

    #[tokio::test]
    async fn plain_errors_become_json() {
        let app = Router::new().route("/only-post", post(|| async { "ok" }));
        for (req, status) in [
            (
                Request::get("/nowhere").body(Body::empty()).unwrap(),
                StatusCode::NOT_FOUND,
            ),
            (
                Request::get("/only-post").body(Body::empty()).unwrap(),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
        ] {
            let (got, text) = call(app.clone(), req).await;
            assert_eq!(got, status);
            let e: ApiError = serde_json::from_str(&text).unwrap();
            assert!(!e.error.is_empty());
        }
    }

    /// A body that never sends a byte (while the sender is kept).
    fn stalled() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
        });
        (tx, Body::from_stream(stream))
    }

    #[tokio::test]
    async fn a_body_owns_its_bytes() {
        // One piece: a slice of a larger buffer (hyper's read buffer) is copied out of it.
        let read_buffer = Bytes::from(vec![b'x'; 8192]);
        let piece = read_buffer.slice(100..122);
        let one = owned(Body::from(piece.clone()).collect().await.unwrap());
        assert_eq!(one, piece);
        assert!(!read_buffer.as_ptr_range().contains(&one.as_ptr()));
        // Several pieces: gathered in order.
        let chunks = futures_stream(vec![Bytes::from("ab"), Bytes::from("cd"), Bytes::from("e")]);
        let all = owned(chunks.collect().await.unwrap());
        assert_eq!(all, Bytes::from("abcde"));
    }

    fn futures_stream(chunks: Vec<Bytes>) -> Body {
        Body::from_stream(futures_util::stream::iter(
            chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
        ))
    }
}
