//! Dashboard sessions: sign-in with an operator's token, sessions in memory, CSRF tokens.
//!
//! - The token is POSTed once in the sign-in form (never in a URL), checked with the
//!   operators' [`Access`] (SHA-256 digests compared in constant time), and forgotten: the
//!   browser then holds only a random session id in a cookie (`HttpOnly; SameSite=Strict;
//!   Path=/ui`, and `Secure` when the control plane serves TLS).
//! - Sessions are bounded in count ([`MAX_SESSIONS`]; the least recently used goes first), end
//!   after [`IDLE`] without a request and [`ABSOLUTE`] after sign-in whatever happens, and at
//!   sign-out. They are kept by the SHA-256 of their id, so a lookup's timing says nothing
//!   about the ids.
//! - Each session has a CSRF token, put in a hidden field of every form and compared in
//!   constant time on every POST; POSTs must also come from the dashboard's own origin
//!   (`Sec-Fetch-Site`, else `Origin`), checked from the headers before the body is read.
//!   The sign-in form, before there is a session, uses a double-submit token (a short-lived
//!   cookie and the same value in the form).

use crate::auth::{Access, Role};
use axum::http::{header, HeaderMap};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Most sessions at once.
pub const MAX_SESSIONS: usize = 1_000;
/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 60 * 60);
/// The session cookie.
pub const COOKIE: &str = "fb_session";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "fb_login";
/// Longest token accepted at sign-in.
pub const MAX_TOKEN_LEN: usize = 1024;

/// A signed-in operator, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The operator's name (the audit log's `who`).
    pub operator: String,
    /// What the operator may do.
    pub role: Role,
    /// The CSRF token of every form of this session.
    pub csrf: String,
}

impl Session {
    /// Whether the operator may act (pause, resume, abort, roll back, purge).
    pub fn can_act(&self) -> bool {
        self.role >= Role::Deployer
    }
}

struct Entry {
    session: Session,
    created: Instant,
    last: Instant,
}

/// The sessions of one control plane.
pub struct Sessions {
    entries: Mutex<HashMap<String, Entry>>,
    max: usize,
    idle: Duration,
    absolute: Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(MAX_SESSIONS, IDLE, ABSOLUTE)
    }
}

/// 32 random bytes as hex.
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn digest(id: &str) -> String {
    firebreak_protocol::sha256_hex(id.as_bytes())
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    /// Sessions bounded to `max`, ending after `idle` without a request or `absolute` after
    /// sign-in.
    pub fn new(max: usize, idle: Duration, absolute: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max: max.max(1),
            idle,
            absolute,
        }
    }

    /// Checks `token` against the operators; on success a new session and its id.
    pub fn sign_in(&self, access: &Access, token: &str) -> Option<(String, Session)> {
        self.sign_in_at(access, token, Instant::now())
    }

    fn sign_in_at(&self, access: &Access, token: &str, now: Instant) -> Option<(String, Session)> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (operator, role) = access.sign_in(token)?;
        let id = random_token()?;
        let session = Session {
            operator,
            role,
            csrf: random_token()?,
        };
        let mut entries = self.entries.lock().ok()?;
        entries.retain(|_, e| self.alive(e, now));
        while entries.len() >= self.max {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| k.clone())?;
            entries.remove(&oldest);
        }
        entries.insert(
            digest(&id),
            Entry {
                session: session.clone(),
                created: now,
                last: now,
            },
        );
        Some((id, session))
    }

    fn alive(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.last) < self.idle
            && now.saturating_duration_since(e.created) < self.absolute
    }

    /// The session with id `id`, if it has not ended; counts as a request (idle expiry).
    pub fn get(&self, id: &str) -> Option<Session> {
        self.get_at(id, Instant::now())
    }

    fn get_at(&self, id: &str, now: Instant) -> Option<Session> {
        if id.is_empty() || id.len() > 128 {
            return None;
        }
        let key = digest(id);
        let mut entries = self.entries.lock().ok()?;
        let entry = entries.get_mut(&key)?;
        if !self.alive(entry, now) {
            entries.remove(&key);
            return None;
        }
        entry.last = now;
        Some(entry.session.clone())
    }

    /// Ends the session with id `id`.
    pub fn sign_out(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&digest(id));
        }
    }

    /// Sessions held now (ended ones not yet swept included).
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value: `name=value` for `/ui`, HttpOnly, SameSite=Strict, `Secure` over TLS,
/// ending with the browser session (or at once when `value` is empty).
pub fn set_cookie(name: &str, value: &str, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if value.is_empty() {
        c.push_str("; Max-Age=0");
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// Whether a POST comes from the dashboard's own pages: `Sec-Fetch-Site: same-origin` when
/// the browser sends it; otherwise an `Origin` naming the request's own `Host`; a POST with
/// neither is refused (every browser sends one of them on a form POST). `authority` is the
/// request URI's (HTTP/2 carries the host there rather than in `Host`).
pub fn same_origin(headers: &HeaderMap, authority: Option<&str>) -> bool {
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get(header::HeaderName::from_static("sec-fetch-site")) {
        return site == "same-origin";
    }
    let (Some(origin), Some(host)) = (get(header::ORIGIN), get(header::HOST).or(authority)) else {
        return false;
    };
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    rest == Some(host)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::Operator;
    use axum::http::HeaderValue;

    fn access() -> Access {
        Access::new(
            vec![
                Operator::with_token("alice", Role::Admin, "alice-token").unwrap(),
                Operator::with_token("bob", Role::ReadOnly, "bob-token").unwrap(),
            ],
            "join-token",
        )
        .unwrap()
    }

    #[test]
    fn sign_in_needs_an_operator_token() {
        let s = Sessions::default();
        let a = access();
        assert!(s.sign_in(&a, "").is_none());
        assert!(s.sign_in(&a, "join-token").is_none());
        assert!(s.sign_in(&a, "wrong").is_none());
        assert!(s.sign_in(&a, &"x".repeat(MAX_TOKEN_LEN + 1)).is_none());
        let (id, session) = s.sign_in(&a, "bob-token").unwrap();
        assert_eq!(session.operator, "bob");
        assert!(!session.can_act());
        assert_eq!(s.get(&id).unwrap(), session);
        assert_eq!(id.len(), 64);
        assert_ne!(id, session.csrf);
        s.sign_out(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn sessions_end_when_idle_and_at_their_absolute_limit() {
        let s = Sessions::new(10, Duration::from_secs(10), Duration::from_secs(30));
        let a = access();
        let t0 = Instant::now();
        let (id, _) = s.sign_in_at(&a, "alice-token", t0).unwrap();
        assert!(s.get_at(&id, t0 + Duration::from_secs(9)).is_some());
        assert!(s.get_at(&id, t0 + Duration::from_secs(18)).is_some());
        assert!(s.get_at(&id, t0 + Duration::from_secs(27)).is_some());
        // Used within the idle limit each time, but past the absolute one.
        assert!(s.get_at(&id, t0 + Duration::from_secs(31)).is_none());
        let (id, _) = s.sign_in_at(&a, "alice-token", t0).unwrap();
        assert!(s.get_at(&id, t0 + Duration::from_secs(11)).is_none());
    }

    #[test]
    fn the_number_of_sessions_is_bounded_least_recently_used_first() {
        let s = Sessions::new(3, IDLE, ABSOLUTE);
        let a = access();
        let t0 = Instant::now();
        let ids: Vec<String> = (0..3)
            .map(|i| {
                s.sign_in_at(&a, "alice-token", t0 + Duration::from_secs(i))
                    .unwrap()
                    .0
            })
            .collect();
        // The first is used again: the second is now the least recently used.
        assert!(s.get_at(&ids[0], t0 + Duration::from_secs(5)).is_some());
        let (newest, _) = s
            .sign_in_at(&a, "alice-token", t0 + Duration::from_secs(6))
            .unwrap();
        assert_eq!(s.len(), 3);
        let later = t0 + Duration::from_secs(7);
        assert!(s.get_at(&ids[0], later).is_some());
        assert!(s.get_at(&ids[1], later).is_none());
        assert!(s.get_at(&ids[2], later).is_some());
        assert!(s.get_at(&newest, later).is_some());
    }

    #[test]
    fn csrf_tokens_compare_whole_and_never_empty() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", ""));
    }

    #[test]
    fn cookie_attributes() {
        let c = set_cookie(COOKIE, "v", false);
        assert_eq!(c, "fb_session=v; Path=/ui; HttpOnly; SameSite=Strict");
        let c = set_cookie(COOKIE, "v", true);
        assert!(c.ends_with("; Secure"), "{c}");
        let c = set_cookie(COOKIE, "", true);
        assert!(c.contains("Max-Age=0"), "{c}");
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; fb_session=xyz"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    fn same_origin_of(h: &HeaderMap) -> bool {
        same_origin(h, None)
    }

    #[test]
    fn posts_must_come_from_the_same_origin() {
        assert!(same_origin(
            &{
                let mut m = HeaderMap::new();
                m.insert("origin", HeaderValue::from_static("https://cp:1"));
                m
            },
            Some("cp:1")
        ));
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_origin_of(&h(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin_of(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin_of(&h(&[
            ("sec-fetch-site", "same-site"),
            ("origin", "http://cp:1"),
            ("host", "cp:1")
        ])));
        assert!(same_origin_of(&h(&[
            ("origin", "https://cp:1"),
            ("host", "cp:1")
        ])));
        assert!(!same_origin_of(&h(&[
            ("origin", "https://evil"),
            ("host", "cp:1")
        ])));
        assert!(!same_origin_of(&h(&[("origin", "null"), ("host", "cp:1")])));
        assert!(!same_origin_of(&h(&[("host", "cp:1")])));
    }
}
