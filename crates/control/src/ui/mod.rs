//! The operator dashboard at `/ui/`: server-rendered HTML (askama templates, checked at
//! compile time, under `templates/ui/`) with a small embedded stylesheet and script
//! ([`assets`]); no front-end build step.
//!
//! - [`session`]: sign-in with an operator's token (POSTed once, never in a URL or a page),
//!   sessions in memory, the session cookie, CSRF tokens and the same-origin check.
//! - [`pages`]: fleet, rollouts (live, with pause/resume/abort/rollback), versions and diffs,
//!   audit log, purge, DNS steering and traffic. Actions call the same [`Plane`] functions as
//!   the API, under the signed-in operator's name, and re-check the role here.
//! - [`plot`]: inline SVG plots drawn on the server. The fleet and rollout pages' script
//!   fetches their live part (`/ui/fleet/live`, `/ui/rollouts/live`: server-rendered HTML in
//!   JSON) every two seconds and swaps it in, so tables and plots update without reloading
//!   and read fine without it.
//!
//! The router is merged beside the API's, outside its bearer-token gate: [`guard`] is this
//! router's gate. It runs before any body is read, refuses cross-site POSTs from the headers
//! and bodies over [`MAX_FORM_BYTES`], and sends requests without a live session to the
//! sign-in page (or answers 403 to a POST).

pub mod assets;
pub mod pages;
pub mod plot;
pub mod session;

use crate::auth::Access;
use crate::bounded_body::{self, BodyBounds};
use crate::plane::Plane;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use session::{Session, Sessions};
use std::sync::Arc;

/// Largest form body.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// Most fields read from a form.
pub const MAX_FORM_FIELDS: usize = 16;

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Ui {
    /// The control plane.
    pub plane: Arc<Plane>,
    /// The operators, for sign-in.
    pub access: Arc<Access>,
    /// Signed-in operators.
    pub sessions: Arc<Sessions>,
    /// Whether the control plane serves TLS (cookies are then `Secure`).
    pub secure: bool,
}

/// The dashboard's router (`/ui`, `/ui/…`), to merge beside the API's; forms are read within
/// `bodies` and [`MAX_FORM_BYTES`].
pub fn router(plane: Arc<Plane>, access: Arc<Access>, bodies: BodyBounds, secure: bool) -> Router {
    let ui = Ui {
        plane,
        access,
        sessions: Arc::new(Sessions::default()),
        secure,
    };
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(pages::fleet))
        .route("/ui/fleet/live", get(pages::fleet_live))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/assets/{name}", get(assets::serve))
        .route("/ui/rollouts", get(pages::rollouts))
        .route("/ui/rollouts/live", get(pages::rollouts_live))
        .route("/ui/rollout/{action}", post(pages::rollout_action))
        .route("/ui/rollback", post(pages::rollback))
        .route("/ui/versions", get(pages::versions))
        .route("/ui/versions/{n}", get(pages::version))
        .route("/ui/diff", get(pages::diff))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/purge", get(pages::purge_form).post(pages::purge))
        .route(
            "/ui/incidents",
            get(pages::incidents).post(pages::open_incident),
        )
        .route("/ui/incidents/{id}", post(pages::update_incident))
        .route("/ui/dns", get(pages::dns))
        .route("/ui/traffic", get(pages::traffic))
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            bodies,
            bounded_body::read,
        ))
        // Outermost: the session and origin checks, from the headers, before the body.
        .layer(axum::middleware::from_fn_with_state(ui.clone(), guard))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ui)
}

async fn not_found() -> Response {
    UiError::new(StatusCode::NOT_FOUND, "no such page").into_response()
}

/// A 303 to `to`.
pub fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// The dashboard's gate: see the module's documentation.
pub async fn guard(State(ui): State<Ui>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    // The router's layers also see requests no dashboard route matches (`/favicon.ico`, the
    // API's unknown paths): those are not the dashboard's to redirect.
    if path != "/ui" && !path.starts_with("/ui/") {
        return next.run(req).await;
    }
    // Anything but a read (POST, and methods no route takes) is checked as a form would be.
    let post = !matches!(*req.method(), Method::GET | Method::HEAD);
    if post {
        let authority = req.uri().authority().map(|a| a.as_str().to_owned());
        if !session::same_origin(req.headers(), authority.as_deref()) {
            return UiError::new(
                StatusCode::FORBIDDEN,
                "a form may only be sent from this dashboard's own pages",
            )
            .into_response();
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_FORM_BYTES) {
            return UiError::new(StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response();
        }
    }
    if path == "/ui/login" || path.starts_with("/ui/assets/") || path == "/ui" {
        return next.run(req).await;
    }
    let found = session::cookie(req.headers(), session::COOKIE).and_then(|id| ui.sessions.get(id));
    match found {
        Some(s) => {
            req.extensions_mut().insert(s);
            next.run(req).await
        }
        None if post => UiError::new(
            StatusCode::FORBIDDEN,
            "not signed in (or the session ended)",
        )
        .into_response(),
        None if path.ends_with("/live") => StatusCode::UNAUTHORIZED.into_response(),
        None => redirect("/ui/login"),
    }
}

/// Headers on every dashboard answer: no framing, no inline script or style, nothing cached.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// An error page.
#[derive(Debug)]
pub struct UiError {
    status: StatusCode,
    message: String,
}

impl UiError {
    /// `status` with `message` shown.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<crate::plane::PlaneError> for UiError {
    fn from(e: crate::plane::PlaneError) -> Self {
        use crate::plane::PlaneError as E;
        let status = match &e {
            E::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::BadRequest(_) => StatusCode::BAD_REQUEST,
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Conflict(_) => StatusCode::CONFLICT,
            E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match e {
            E::BadRequest(m) | E::NotFound(m) | E::Conflict(m) | E::Internal(m) => m,
            other => other.to_string(),
        };
        Self::new(status, message)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let page = pages::ErrorPage {
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or("error"),
            message: &self.message,
        };
        (self.status, render(&page)).into_response()
    }
}

/// Renders a template as HTML (a plain 500 if it cannot be).
pub fn render<T: askama::Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard template");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(
                    "<!doctype html><title>error</title><p>The page could not be drawn.</p>"
                        .to_owned(),
                ),
            )
                .into_response()
        }
    }
}

/// A form's fields (at most [`MAX_FORM_FIELDS`]), after checking its CSRF field against the
/// session's in constant time: 403 without it.
pub fn checked_form(session: &Session, body: &[u8]) -> Result<Vec<(String, String)>, UiError> {
    let fields = form_fields(body);
    let given = field(&fields, "csrf").unwrap_or("");
    if !session::same_secret(given, &session.csrf) {
        return Err(UiError::new(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong: reload the page and try again",
        ));
    }
    Ok(fields)
}

/// A form's fields, at most [`MAX_FORM_FIELDS`].
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .take(MAX_FORM_FIELDS)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of field `name`.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The fields of a form that acts on the fleet: its CSRF field checked ([`checked_form`]),
/// then the operator's role ([`may_act`]).
pub fn action_form(session: &Session, body: &[u8]) -> Result<Vec<(String, String)>, UiError> {
    let fields = checked_form(session, body)?;
    may_act(session)?;
    Ok(fields)
}

/// Refuses operators who may not act (read-only): 403.
pub fn may_act(session: &Session) -> Result<(), UiError> {
    if session.can_act() {
        Ok(())
    } else {
        Err(UiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "operator {} is {}; this needs the deployer role",
                session.operator, session.role
            ),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::auth::{Operator, Role};
    use crate::store::Store;
    use axum::body::{Body, Bytes};
    use axum::http::Request as HttpRequest;
    use firebreak_protocol::keys::ControlKey;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn app(name: &str, tls: bool) -> (Router, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("fb-ui-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&format!("redb:{}", dir.join("s.redb").display()))
            .await
            .unwrap();
        let plane = Plane::new(store, ControlKey::generate().unwrap())
            .await
            .unwrap();
        let access = Access::new(
            vec![Operator::with_token("alice", Role::Admin, "alice-token").unwrap()],
            "join-token",
        )
        .unwrap();
        let (_, stopping) = tokio::sync::watch::channel(false);
        let router = crate::api::router_served(plane, access, stopping, BodyBounds::default(), tls);
        (router, dir)
    }

    /// `f`, failing after ten seconds (a body read that never ends) instead of hanging.
    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(10), f)
            .await
            .expect("no answer: the body was waited for")
    }

    fn set_cookies(r: &Response) -> Vec<String> {
        r.headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn cookies_are_secure_when_the_listener_serves_tls() {
        let (router, dir) = app("tls", true).await;
        let form = router
            .clone()
            .oneshot(HttpRequest::get("/ui/login").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let login = set_cookies(&form)[0].clone();
        assert!(login.contains("; Secure"), "{login}");
        let html = String::from_utf8(
            form.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        let pair = login.split(';').next().unwrap().to_owned();
        let resp = router
            .oneshot(
                HttpRequest::post("/ui/login")
                    .header("cookie", pair)
                    .header("sec-fetch-site", "same-origin")
                    .body(Body::from(format!("csrf={csrf}&token=alice-token")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let session = set_cookies(&resp)
            .into_iter()
            .find(|c| c.starts_with("fb_session="))
            .unwrap();
        assert!(
            session.ends_with("; Path=/ui; HttpOnly; SameSite=Strict; Secure"),
            "{session}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// What a browser does by itself (Chromium asks for `/favicon.ico` after every page)
    /// neither lands on the sign-in page nor changes the sign-in token: a page already shown
    /// still signs in (found by the browser test).
    #[tokio::test]
    async fn requests_outside_the_dashboard_leave_the_sign_in_alone() {
        let (router, dir) = app("favicon", false).await;
        let resp = router
            .clone()
            .oneshot(
                HttpRequest::get("/favicon.ico")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_ne!(resp.status(), StatusCode::SEE_OTHER);
        assert!(set_cookies(&resp).is_empty());
        let first = router
            .clone()
            .oneshot(HttpRequest::get("/ui/login").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let pair = set_cookies(&first)[0].split(';').next().unwrap().to_owned();
        let again = router
            .oneshot(
                HttpRequest::get("/ui/login")
                    .header("cookie", &pair)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let kept = set_cookies(&again)[0].split(';').next().unwrap().to_owned();
        assert_eq!(kept, pair, "a second sign-in page minted another token");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_post_without_a_session_is_refused_before_its_body_is_read() {
        let (router, dir) = app("before-body", false).await;
        // A body that never arrives: answered at once, so it was never waited for.
        let never =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let resp = within(
            router.clone().oneshot(
                HttpRequest::post("/ui/rollback")
                    .header("sec-fetch-site", "same-origin")
                    .body(never)
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let never =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let resp = within(
            router.clone().oneshot(
                HttpRequest::post("/ui/login")
                    .header("sec-fetch-site", "cross-site")
                    .body(never)
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        // Declared too large: refused before reading.
        let resp = router
            .clone()
            .oneshot(
                HttpRequest::post("/ui/login")
                    .header("sec-fetch-site", "same-origin")
                    .header("content-length", (MAX_FORM_BYTES + 1).to_string())
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // The API beside it is still behind its bearer gate.
        let resp = router
            .oneshot(HttpRequest::get("/v1/fleet").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Signs in through the forms; the `fb_session=…` pair. `held`: a session cookie the
    /// browser already has.
    async fn sign_in(router: &Router, held: Option<&str>) -> String {
        let form = router
            .clone()
            .oneshot(HttpRequest::get("/ui/login").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let login = set_cookies(&form)[0].split(';').next().unwrap().to_owned();
        let html = form.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8_lossy(&html);
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        let cookies = match held {
            Some(h) => format!("{login}; {h}"),
            None => login,
        };
        let resp = router
            .clone()
            .oneshot(
                HttpRequest::post("/ui/login")
                    .header("cookie", cookies)
                    .header("origin", "http://cp")
                    .header("host", "cp")
                    .body(Body::from(format!("csrf={csrf}&token=alice-token")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        set_cookies(&resp)
            .into_iter()
            .find(|c| c.starts_with("fb_session="))
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    async fn status_of(router: &Router, cookie: &str) -> StatusCode {
        router
            .clone()
            .oneshot(
                HttpRequest::get("/ui/")
                    .header("cookie", cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn signing_in_again_ends_the_session_the_browser_held() {
        let (router, dir) = app("again", false).await;
        let first = sign_in(&router, None).await;
        assert_eq!(status_of(&router, &first).await, StatusCode::OK);
        let second = sign_in(&router, Some(&first)).await;
        assert_ne!(first, second);
        assert_eq!(status_of(&router, &first).await, StatusCode::SEE_OTHER);
        assert_eq!(status_of(&router, &second).await, StatusCode::OK);
        let _ = std::fs::remove_dir_all(dir);
    }
}
