//! The operator dashboard (`/ui/`) over real TCP with a real HTTP client: sign-in, the fleet
//! page with a real edge, CSRF and origin checks, a read-only operator who cannot act, an
//! action that reaches the audit log under the operator's name, and the token never in a
//! page or a URL.

use crate::harness::*;
use bytes::Bytes;
use firebreak_control::auth::{Access, Operator, Role};
use firebreak_control::registry::EdgeSettings;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

const VIEWER: &str = "viewer-token-0123456789ab";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `name=value` of the `Set-Cookie` named `name`, and the whole header.
    fn cookie(&self, name: &str) -> Option<(String, String)> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(|v| (v.split(';').next().unwrap().to_owned(), v.to_owned()))
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in {}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

/// Everything the browser was shown, to check no token ever appears.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    async fn ui(
        &mut self,
        c: &Control,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        form: Option<&str>,
    ) -> Answer {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", c.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if form.is_some() {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = req
            .body(Full::new(Bytes::from(form.unwrap_or("").to_owned())))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .expect("no answer in 30 s")
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes())
            .into_owned();
        self.0.push(path.to_owned());
        self.0.push(format!("{headers:?}"));
        self.0.push(body.clone());
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Signs in with `token`; the session cookie (`fb_session=…`).
    async fn sign_in(&mut self, c: &Control, token: &str) -> String {
        let form = self.ui(c, Method::GET, "/ui/login", &[], None).await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let (login_cookie, _) = form.cookie("fb_login").expect("no sign-in cookie");
        let body = form_body(&[("csrf", &form.csrf()), ("token", token)]);
        let a = self
            .ui(
                c,
                Method::POST,
                "/ui/login",
                &[("cookie", &login_cookie), ("sec-fetch-site", "same-origin")],
                Some(&body),
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        assert_eq!(a.location(), "/ui/");
        let (session, whole) = a.cookie("fb_session").expect("no session cookie");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
            assert!(whole.contains(attribute), "{whole}");
        }
        assert!(!whole.contains("Secure"), "cleartext listener: {whole}");
        session
    }
}

fn form_body(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_shows_the_fleet_and_guards_its_forms() {
    let dir = temp_dir("dashboard");
    let access = Access::new(
        vec![
            Operator::with_token("alice", Role::Admin, OPERATOR).unwrap(),
            Operator::with_token("viewer", Role::ReadOnly, VIEWER).unwrap(),
        ],
        EDGE,
    )
    .unwrap();
    let store = format!("redb:{}", dir.join("store.redb").display());
    let c = control_with(&store, &dir, access, EdgeSettings::default()).await;
    let origin = origin().await;
    let v1 = c.release(&fleet_doc(origin, "v1")).await;
    let agent = edge_in(&c, &dir.join("e1"), "edge-ams-1", "ams", "ams-a").await;
    wait_applied(&agent, v1).await;
    let v2 = c.release(&fleet_doc(origin, "v2")).await;
    wait_applied(&agent, v2).await;
    let mut seen = Seen::default();

    // Without a session: the sign-in page, for pages; 403 for forms; 401 for the live part.
    let a = seen.ui(&c, Method::GET, "/ui/", &[], None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.location(), "/ui/login");
    let a = seen
        .ui(&c, Method::GET, "/ui/rollouts/live", &[], None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = seen
        .ui(
            &c,
            Method::POST,
            "/ui/rollback",
            &[("sec-fetch-site", "same-origin")],
            Some("csrf=x"),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // Sign-in: without the sign-in form's token, refused; a wrong token, 401.
    let a = seen
        .ui(
            &c,
            Method::POST,
            "/ui/login",
            &[("sec-fetch-site", "same-origin")],
            Some(&form_body(&[("token", OPERATOR)])),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.cookie("fb_session").is_none());
    let form = seen.ui(&c, Method::GET, "/ui/login", &[], None).await;
    let (login_cookie, _) = form.cookie("fb_login").unwrap();
    let a = seen
        .ui(
            &c,
            Method::POST,
            "/ui/login",
            &[("cookie", &login_cookie), ("sec-fetch-site", "same-origin")],
            Some(&form_body(&[("csrf", &form.csrf()), ("token", "nope")])),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.cookie("fb_session").is_none());

    // Signed in: the fleet page shows the edge, its POP and cell, and what it runs.
    let alice = seen.sign_in(&c, OPERATOR).await;
    let fleet = seen
        .ui(&c, Method::GET, "/ui/", &[("cookie", &alice)], None)
        .await;
    assert_eq!(fleet.status, StatusCode::OK, "{}", fleet.body);
    for shown in [
        "POP ams",
        "Cell ams-a",
        "edge-ams-1",
        &format!("v{v2}"),
        "alice",
    ] {
        assert!(fleet.body.contains(shown), "{shown} not in {}", fleet.body);
    }
    let csp = fleet.headers.get("content-security-policy").unwrap();
    assert!(csp.to_str().unwrap().contains("frame-ancestors 'none'"));
    let csrf = fleet.csrf();

    // Every page draws.
    for path in [
        "/ui/rollouts".to_owned(),
        "/ui/versions".to_owned(),
        format!("/ui/versions/{v2}"),
        format!("/ui/diff?from={v1}&to={v2}"),
        "/ui/audit".to_owned(),
        "/ui/purge".to_owned(),
        "/ui/dns".to_owned(),
        "/ui/traffic".to_owned(),
        "/ui/assets/dashboard.js".to_owned(),
        "/ui/fleet/live".to_owned(),
    ] {
        let a = seen
            .ui(&c, Method::GET, &path, &[("cookie", &alice)], None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
    }
    let rollouts = seen
        .ui(&c, Method::GET, "/ui/rollouts", &[("cookie", &alice)], None)
        .await;
    assert!(
        rollouts.body.contains("action=\"/ui/rollback\""),
        "an admin sees the buttons"
    );
    let diff = seen
        .ui(
            &c,
            Method::GET,
            &format!("/ui/diff?from={v1}&to={v2}"),
            &[("cookie", &alice)],
            None,
        )
        .await;
    assert!(
        diff.body
            .contains("<span class=\"add\">+value = &#34;v2&#34;</span>"),
        "{}",
        diff.body
    );
    let live = seen
        .ui(
            &c,
            Method::GET,
            "/ui/rollouts/live",
            &[("cookie", &alice)],
            None,
        )
        .await;
    assert_eq!(live.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&live.body).unwrap();
    assert!(
        json["html"].as_str().unwrap().contains(&format!("v{v2}")),
        "{json}"
    );

    // The traffic page adds the edge's health reports up under its POP.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let a = seen
            .ui(&c, Method::GET, "/ui/traffic", &[("cookie", &alice)], None)
            .await;
        if a.body.contains("<td>ams</td>") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the traffic page never showed POP ams: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A POST without the CSRF token, with a wrong one, or from another site: 403, nothing done.
    let rollback = form_body(&[
        ("version", &v1.to_string()),
        ("message", "by the dashboard"),
    ]);
    for (headers, body) in [
        (
            vec![
                ("cookie", alice.as_str()),
                ("sec-fetch-site", "same-origin"),
            ],
            rollback.clone(),
        ),
        (
            vec![
                ("cookie", alice.as_str()),
                ("sec-fetch-site", "same-origin"),
            ],
            format!("{rollback}&csrf=0000"),
        ),
        (
            vec![("cookie", alice.as_str()), ("sec-fetch-site", "cross-site")],
            format!("{rollback}&csrf={csrf}"),
        ),
        (
            vec![
                ("cookie", alice.as_str()),
                ("origin", "http://evil.example"),
            ],
            format!("{rollback}&csrf={csrf}"),
        ),
    ] {
        let a = seen
            .ui(&c, Method::POST, "/ui/rollback", &headers, Some(&body))
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{headers:?}: {}", a.body);
    }
    assert_eq!(c.plane.fleet_state().default_version(), Some(v2));

    // A read-only operator sees pages but no buttons, and cannot act even with a valid form.
    let viewer = seen.sign_in(&c, VIEWER).await;
    let page = seen
        .ui(
            &c,
            Method::GET,
            "/ui/rollouts",
            &[("cookie", &viewer)],
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body.contains("action=\"/ui/rollback\""),
        "{}",
        page.body
    );
    let viewer_csrf = page.csrf();
    let a = seen
        .ui(
            &c,
            Method::POST,
            "/ui/rollback",
            &[("cookie", &viewer), ("sec-fetch-site", "same-origin")],
            Some(&format!("{rollback}&csrf={viewer_csrf}")),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.body.contains("viewer is read-only"), "{}", a.body);
    // One session's token does not pass for another's.
    let a = seen
        .ui(
            &c,
            Method::POST,
            "/ui/rollback",
            &[("cookie", &alice), ("sec-fetch-site", "same-origin")],
            Some(&format!("{rollback}&csrf={viewer_csrf}")),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert_eq!(c.plane.fleet_state().default_version(), Some(v2));

    // The admin rolls back through the dashboard: the same path as the API, audited as alice.
    let origin_header = c.url.clone();
    let a = seen
        .ui(
            &c,
            Method::POST,
            "/ui/rollback",
            &[("cookie", &alice), ("origin", &origin_header)],
            Some(&format!("{rollback}&csrf={csrf}")),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.location(), "/ui/rollouts");
    assert_eq!(c.plane.fleet_state().default_version(), Some(v1));
    wait_applied(&agent, v1).await;
    let (_, audit) = c.call(Method::GET, "/v1/audit?limit=20", None).await;
    assert!(
        audit.as_array().unwrap().iter().any(|e| e["who"] == "alice"
            && e["action"] == "rollback"
            && e["message"].as_str().unwrap().contains("by the dashboard")),
        "{audit}"
    );
    let page = seen
        .ui(&c, Method::GET, "/ui/audit", &[("cookie", &alice)], None)
        .await;
    assert!(page.body.contains("by the dashboard"), "{}", page.body);

    // A form body over the bound is refused before it is read.
    let big = format!("csrf={csrf}&message={}", "x".repeat(64 * 1024));
    let a = seen
        .ui(
            &c,
            Method::POST,
            "/ui/rollback",
            &[("cookie", &alice), ("sec-fetch-site", "same-origin")],
            Some(&big),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Sign-out ends the session.
    let a = seen
        .ui(
            &c,
            Method::POST,
            "/ui/logout",
            &[("cookie", &alice), ("sec-fetch-site", "same-origin")],
            Some(&format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let a = seen
        .ui(&c, Method::GET, "/ui/", &[("cookie", &alice)], None)
        .await;
    assert_eq!(a.location(), "/ui/login");

    // No token in any page, header or URL the browser saw.
    for text in &seen.0 {
        assert!(
            !text.contains(OPERATOR),
            "the operator token leaked: {text}"
        );
        assert!(!text.contains(VIEWER), "the viewer token leaked: {text}");
    }
    agent.shutdown();
}
