//! Sign-in, sign-out and the error page.

use super::*;

/// An error page.
#[derive(Template)]
#[template(path = "ui/error.html")]
pub struct ErrorPage<'a> {
    /// HTTP status.
    pub status: u16,
    /// Its reason phrase.
    pub reason: &'a str,
    /// What went wrong.
    pub message: &'a str,
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "ui/login.html")]
pub struct LoginPage {
    /// The double-submit token (also in the `fb_login` cookie).
    pub csrf: String,
    /// Why the last attempt failed.
    pub error: String,
}

fn login_page(ui: &Ui, headers: &HeaderMap, status: StatusCode, error: &str) -> Response {
    // The browser's sign-in token stays the same while it has one: every sign-in page it
    // shows (another tab, a reload, a request the browser makes by itself) then carries the
    // value its cookie holds, instead of the last page load invalidating the others.
    let kept = session::cookie(headers, session::LOGIN_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned);
    let Some(csrf) = kept.or_else(session::random_token) else {
        return UiError::new(StatusCode::SERVICE_UNAVAILABLE, "no randomness").into_response();
    };
    let cookie = format!(
        "{}; Max-Age=600",
        session::set_cookie(session::LOGIN_COOKIE, &csrf, ui.secure)
    );
    let page = LoginPage {
        csrf,
        error: error.to_owned(),
    };
    (status, [(header::SET_COOKIE, cookie)], render(&page)).into_response()
}

/// `GET /ui/login`.
pub async fn login_form(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if session::cookie(&headers, session::COOKIE).is_some_and(|id| ui.sessions.get(id).is_some()) {
        return redirect("/ui/");
    }
    login_page(&ui, &headers, StatusCode::OK, "")
}

/// `POST /ui/login`: `token` and the double-submit `csrf`.
pub async fn login(State(ui): State<Ui>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form_fields(&body);
    let expected = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or("");
    if !session::same_secret(field(&fields, "csrf").unwrap_or(""), expected) {
        return UiError::new(
            StatusCode::FORBIDDEN,
            "the sign-in form's CSRF token is missing or wrong: load the sign-in page again",
        )
        .into_response();
    }
    let token = field(&fields, "token").unwrap_or("").trim();
    match ui.sessions.sign_in(&ui.access, token) {
        Some((id, s)) => {
            // A session this browser held before ends: one browser, one session.
            if let Some(old) = session::cookie(&headers, session::COOKIE) {
                ui.sessions.sign_out(old);
            }
            tracing::info!(operator = %s.operator, "dashboard sign-in");
            let mut resp = redirect("/ui/");
            let h = resp.headers_mut();
            for c in [
                session::set_cookie(session::COOKIE, &id, ui.secure),
                session::set_cookie(session::LOGIN_COOKIE, "", ui.secure),
            ] {
                if let Ok(v) = c.parse() {
                    h.append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        None => login_page(
            &ui,
            &headers,
            StatusCode::UNAUTHORIZED,
            "That token is not an operator's.",
        ),
    }
}

/// `POST /ui/logout`.
pub async fn logout(
    State(ui): State<Ui>,
    Extension(s): Extension<Session>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, UiError> {
    checked_form(&s, &body)?;
    if let Some(id) = session::cookie(&headers, session::COOKIE) {
        ui.sessions.sign_out(id);
    }
    let mut resp = redirect("/ui/login");
    if let Ok(v) = session::set_cookie(session::COOKIE, "", ui.secure).parse() {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ui::pages::testing::*;

    #[test]
    fn the_login_page_carries_its_csrf_token_and_nothing_else() {
        let html = LoginPage {
            csrf: "abc".into(),
            error: HOSTILE.into(),
        }
        .render()
        .unwrap();
        assert_escaped(&html);
        assert!(html.contains("name=\"csrf\" value=\"abc\""));
        assert!(html.contains("type=\"password\""));
    }
}
