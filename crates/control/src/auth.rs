//! Who calls the control API and what each route allows, decided from the request's headers
//! before any body is read ([`gate`], an axum middleware in front of every route).
//!
//! Callers ([`Caller`]):
//! - **operators**, each with a name and a [`Role`]: `read-only` (GETs), `deployer` (also
//!   push, deploy, rollout actions, rollback, switches, purge), `admin` (also `fleet remove`).
//!   They come from `firebreak control --operators FILE` (TOML, tokens kept only as SHA-256)
//!   and/or `--token` (one admin named `operator`). The audit log names them.
//! - **edges**, each by its own credential (`edge:ID:<secret>`, issued at join, kept hashed):
//!   an edge may only poll, report and send health for its own id, download bundles and read
//!   the POPs' health (`GET /v1/pops`, which DNS servers, members with an edge credential, use).
//! - **joining edges**, with the fleet's join token: they may only join
//!   (`POST /v1/edges/{id}/join`).
//!
//! Tokens are compared as SHA-256 digests in constant time (`subtle`), over every operator.
//! A missing or unknown token is 401; a known caller without the permission is 403.

use crate::plane::Plane;
use crate::registry::credential_id;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use firebreak_protocol::api::ApiError;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Largest operators file.
const MAX_OPERATORS_FILE_BYTES: u64 = 1024 * 1024;
/// Most operators.
pub const MAX_OPERATORS: usize = 1_000;
/// Longest operator name.
const MAX_NAME_LEN: usize = 64;

/// What an operator may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read everything (GETs).
    ReadOnly,
    /// Also change what the fleet runs: push, deploy, rollout actions, rollback, switches,
    /// purge.
    Deployer,
    /// Everything, also removing edges.
    Admin,
}

impl Role {
    /// Parses `admin`, `deployer` or `read-only`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "deployer" => Some(Self::Deployer),
            "read-only" => Some(Self::ReadOnly),
            _ => None,
        }
    }

    /// The role's name as written in the operators file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Deployer => "deployer",
            Self::ReadOnly => "read-only",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lower-case hex SHA-256 of a token: what the operators file holds.
pub fn token_sha256(token: &str) -> String {
    firebreak_protocol::sha256_hex(token.as_bytes())
}

/// Whether two hex digests are equal, in time independent of where they differ.
pub fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// One named operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Name (the audit log's `who`).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Lower-case hex SHA-256 of its token.
    token_sha256: String,
}

impl Operator {
    /// An operator whose token has this SHA-256 (64 hex digits).
    pub fn new(name: &str, role: Role, token_sha256: &str) -> Result<Self, String> {
        check_name(name)?;
        let digest = token_sha256.to_ascii_lowercase();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(
                "must be 64 hex digits: the SHA-256 of the token (firebreak hash-token)".into(),
            );
        }
        Ok(Self {
            name: name.to_owned(),
            role,
            token_sha256: digest,
        })
    }

    /// An operator holding `token`.
    pub fn with_token(name: &str, role: Role, token: &str) -> Result<Self, String> {
        Self::new(name, role, &token_sha256(token))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    {
        return Err(format!(
            "must be 1 to {MAX_NAME_LEN} letters, digits, '.', '_', '-' or '@'"
        ));
    }
    Ok(())
}

/// Why the operators and the join token cannot be used together.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No operator at all.
    #[error("no operator: give --token or --operators FILE")]
    NoOperator,
    /// Two operators share a name or a token.
    #[error("operator {0}: two operators share this name or token")]
    Duplicate(String),
    /// The join token is an operator's token.
    #[error("the edges' join token is also the token of operator {0}; give them different tokens")]
    JoinIsOperator(String),
}

/// Every credential the API accepts besides edges' own: operators and the join token.
#[derive(Debug, Clone)]
pub struct Access {
    operators: Vec<Operator>,
    join_sha256: String,
}

impl Access {
    /// Operators and the edges' join token.
    pub fn new(operators: Vec<Operator>, join_token: &str) -> Result<Self, AccessError> {
        if operators.is_empty() {
            return Err(AccessError::NoOperator);
        }
        for (i, a) in operators.iter().enumerate() {
            if operators
                .iter()
                .skip(i + 1)
                .any(|b| a.name == b.name || same_digest(&a.token_sha256, &b.token_sha256))
            {
                return Err(AccessError::Duplicate(a.name.clone()));
            }
        }
        let join_sha256 = token_sha256(join_token);
        if let Some(o) = operators
            .iter()
            .find(|o| same_digest(&o.token_sha256, &join_sha256))
        {
            return Err(AccessError::JoinIsOperator(o.name.clone()));
        }
        Ok(Self {
            operators,
            join_sha256,
        })
    }

    /// The operators.
    pub fn operators(&self) -> &[Operator] {
        &self.operators
    }

    /// The operator holding `token`: every operator's digest is compared (constant time each).
    fn operator(&self, token: &str) -> Option<&Operator> {
        let given = token_sha256(token);
        let mut found = None;
        for o in &self.operators {
            if same_digest(&given, &o.token_sha256) {
                found = Some(o);
            }
        }
        found
    }

    /// The name and role of the operator holding `token` (the dashboard's sign-in), compared
    /// as [`Access`] compares bearer tokens: every operator's digest, in constant time.
    pub fn sign_in(&self, token: &str) -> Option<(String, Role)> {
        self.operator(token).map(|o| (o.name.clone(), o.role))
    }

    fn is_join(&self, token: &str) -> bool {
        same_digest(&token_sha256(token), &self.join_sha256)
    }
}

/// Why an operators file was refused: each error as `file:line:column: field: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}", errors.join("\n"))]
pub struct OperatorsError {
    /// The errors, located.
    pub errors: Vec<String>,
}

/// Reads an operators file (TOML):
///
/// ```toml
/// [[operator]]
/// name = "alice"
/// role = "admin"          # admin | deployer | read-only
/// token_sha256 = "…"      # firebreak hash-token < token-file
/// ```
pub fn load_operators(path: &Path) -> Result<Vec<Operator>, OperatorsError> {
    let shown = path.display().to_string();
    let fail = |m: String| OperatorsError {
        errors: vec![format!("{shown}: {m}")],
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > MAX_OPERATORS_FILE_BYTES {
        return Err(fail(format!(
            "{size} bytes; at most {MAX_OPERATORS_FILE_BYTES}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    parse_operators(&shown, &text)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorsFile {
    #[serde(default)]
    operator: Vec<toml::Spanned<OperatorEntry>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorEntry {
    name: toml::Spanned<String>,
    role: toml::Spanned<String>,
    token_sha256: toml::Spanned<String>,
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parses the text of an operators file named `file` (see [`load_operators`]).
pub fn parse_operators(file: &str, text: &str) -> Result<Vec<Operator>, OperatorsError> {
    let at = |offset: usize, field: &str, message: &str| {
        let (line, col) = line_col(text, offset);
        format!("{file}:{line}:{col}: {field}: {message}")
    };
    let parsed: OperatorsFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        OperatorsError {
            errors: vec![at(offset, "operator", e.message().trim())],
        }
    })?;
    let mut errors = Vec::new();
    let mut out: Vec<Operator> = Vec::new();
    if parsed.operator.is_empty() {
        errors.push(at(0, "operator", "no [[operator]] entry"));
    }
    if parsed.operator.len() > MAX_OPERATORS {
        errors.push(at(
            0,
            "operator",
            &format!("{} entries; at most {MAX_OPERATORS}", parsed.operator.len()),
        ));
    }
    for (i, entry) in parsed.operator.iter().enumerate() {
        let e = entry.get_ref();
        let field = |f: &str| format!("operator[{i}].{f}");
        let name = e.name.get_ref();
        if let Err(m) = check_name(name) {
            errors.push(at(e.name.span().start, &field("name"), &m));
            continue;
        }
        let Some(role) = Role::parse(e.role.get_ref()) else {
            errors.push(at(
                e.role.span().start,
                &field("role"),
                &format!(
                    "`{}` is not a role: admin, deployer or read-only",
                    e.role.get_ref()
                ),
            ));
            continue;
        };
        let operator = match Operator::new(name, role, e.token_sha256.get_ref()) {
            Ok(o) => o,
            Err(m) => {
                errors.push(at(e.token_sha256.span().start, &field("token_sha256"), &m));
                continue;
            }
        };
        if out.iter().any(|o| o.name == operator.name) {
            errors.push(at(
                e.name.span().start,
                &field("name"),
                &format!("operator `{name}` is defined twice"),
            ));
            continue;
        }
        if out
            .iter()
            .any(|o| same_digest(&o.token_sha256, &operator.token_sha256))
        {
            errors.push(at(
                e.token_sha256.span().start,
                &field("token_sha256"),
                "two operators share this token; give each its own",
            ));
            continue;
        }
        out.push(operator);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(OperatorsError { errors })
    }
}

/// Who is calling, once authenticated: put in the request's extensions by [`gate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A named operator.
    Operator {
        /// Name.
        name: String,
        /// Role.
        role: Role,
    },
    /// An edge, proven by its own credential.
    Edge {
        /// Its id.
        id: String,
    },
    /// An edge holding the join token (may only join).
    Joiner,
}

impl Caller {
    /// The name the audit log records.
    pub fn name(&self) -> &str {
        match self {
            Self::Operator { name, .. } => name,
            Self::Edge { id } => id,
            Self::Joiner => "joining edge",
        }
    }
}

/// What a route requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing (health, public key, OpenAPI document).
    Anyone,
    /// An operator with at least this role.
    Operator(Role),
    /// This edge (its own credential) and nobody else.
    Edge(String),
    /// Any edge, or an operator with at least this role (bundles, the fleet-wide target).
    EdgeOrOperator(Role),
    /// The join token, or this edge's own credential (a re-join).
    Join(String),
    /// A secret document (a private key): this edge's own credential, nobody else; no operator
    /// of any role.
    EdgeSecret(String),
}

/// The permission table: what `method path` requires. Unknown routes need an admin (they
/// answer 404/405 after that), so nothing is reachable by accident.
pub fn need(method: &Method, path: &str) -> Need {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = *method == Method::GET || *method == Method::HEAD;
    let (post, put, delete) = (
        *method == Method::POST,
        *method == Method::PUT,
        *method == Method::DELETE,
    );
    match segments.as_slice() {
        ["healthz"] | ["v1", "openapi.json"] | ["v1", "public-key"] if get => Need::Anyone,
        // The public status page: no sign-in, by design (it shows nothing an operator token
        // guards; see `crate::status`).
        ["status"] | ["status", "feed.atom"] | ["status", "incidents.json"] if get => Need::Anyone,
        ["v1", "incidents"] if get => Need::Operator(Role::ReadOnly),
        ["v1", "incidents"] | ["v1", "incidents", _, "updates"] if post => {
            Need::Operator(Role::Deployer)
        }
        ["v1", "edges", id, "join"] if post => Need::Join((*id).to_owned()),
        ["v1", "edges", id, "target"] if get => Need::Edge((*id).to_owned()),
        ["v1", "edges", id, "health"] if post => Need::Edge((*id).to_owned()),
        ["v1", "edges", id, "secrets", _] | ["v1", "edges", id, "tier"] if get => {
            Need::EdgeSecret((*id).to_owned())
        }
        ["v1", "edges", id] if put => Need::Edge((*id).to_owned()),
        ["v1", "edges", _] if delete => Need::Operator(Role::Admin),
        ["v1", "versions", _, "bundle"] | ["v1", "target"] | ["v1", "keys"] | ["v1", "pops"]
            if get =>
        {
            Need::EdgeOrOperator(Role::ReadOnly)
        }
        ["v1", "versions"]
        | ["v1", "versions", _]
        | ["v1", "diff"]
        | ["v1", "rollout"]
        | ["v1", "audit"]
        | ["v1", "fleet"]
        | ["v1", "keys", "ring"]
            if get =>
        {
            Need::Operator(Role::ReadOnly)
        }
        ["v1", "versions"]
        | ["v1", "rollouts"]
        | ["v1", "rollout", _]
        | ["v1", "rollback"]
        | ["v1", "switches", _]
        | ["v1", "purge"]
            if post =>
        {
            Need::Operator(Role::Deployer)
        }
        ["v1", "target"] if put => Need::Operator(Role::Deployer),
        _ => Need::Operator(Role::Admin),
    }
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one nobody holds: 401.
    Unauthenticated,
    /// A known caller without the permission: 403, with why.
    Forbidden(String),
}

/// Whether `caller` (`None`: no valid credential) may call a route needing `need`.
pub fn permit(need: &Need, caller: Option<&Caller>) -> Result<(), Denied> {
    let Some(caller) = caller else {
        return match need {
            Need::Anyone => Ok(()),
            _ => Err(Denied::Unauthenticated),
        };
    };
    let forbidden = |m: String| Err(Denied::Forbidden(m));
    match (need, caller) {
        (Need::Anyone, _) => Ok(()),
        (Need::Operator(r) | Need::EdgeOrOperator(r), Caller::Operator { name, role }) => {
            if role >= r {
                Ok(())
            } else {
                forbidden(format!(
                    "operator {name} is {role}; this needs the {r} role"
                ))
            }
        }
        (Need::EdgeOrOperator(_), Caller::Edge { .. }) => Ok(()),
        (Need::Edge(id) | Need::Join(id) | Need::EdgeSecret(id), Caller::Edge { id: own }) => {
            if same_id(id, own) {
                Ok(())
            } else {
                forbidden(format!(
                    "edge {own} may only speak for itself, not for {id}"
                ))
            }
        }
        (Need::Join(_), Caller::Joiner) => Ok(()),
        (_, Caller::Joiner) => {
            forbidden("the join token may only join (POST /v1/edges/{id}/join)".into())
        }
        (_, Caller::Edge { id }) => forbidden(format!(
            "edge {id}'s credential may only poll, report, download bundles and read POP health"
        )),
        (Need::Edge(_) | Need::Join(_), Caller::Operator { name, .. }) => forbidden(format!(
            "operator {name}: edge routes take an edge's own credential"
        )),
        (Need::EdgeSecret(_), Caller::Operator { name, .. }) => forbidden(format!(
            "operator {name}: private keys are served only to edges, never to operators"
        )),
    }
}

fn same_id(a: &str, b: &str) -> bool {
    a == b
}

/// The bearer token of a request ("" if none).
pub fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("")
}

/// What [`gate`] needs.
#[derive(Clone)]
pub struct Gate {
    /// Operators and the join token.
    pub access: Arc<Access>,
    /// Edge credentials are checked against its registry.
    pub plane: Arc<Plane>,
}

/// Classifies the caller of a route needing `need`. Edge credentials are looked up only on
/// routes edges may call, so tokens sent to operator routes never reach the store.
async fn classify(g: &Gate, need: &Need, token: &str) -> Result<Option<Caller>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    let edges_allowed = matches!(
        need,
        Need::Edge(_) | Need::EdgeOrOperator(_) | Need::Join(_) | Need::EdgeSecret(_)
    );
    if let Some(id) = credential_id(token) {
        if !edges_allowed {
            // Not verified (no store read for a route no edge may call): an edge caller is
            // refused on every such route anyway ([`permit`]), with a clearer message.
            return Ok(Some(Caller::Edge { id: id.to_owned() }));
        }
        return match g.plane.edge_credential_ok(id, token).await {
            Ok(true) => Ok(Some(Caller::Edge { id: id.to_owned() })),
            Ok(false) => Ok(None),
            Err(e) => Err(e.to_string()),
        };
    }
    if let Some(o) = g.access.operator(token) {
        return Ok(Some(Caller::Operator {
            name: o.name.clone(),
            role: o.role,
        }));
    }
    if g.access.is_join(token) {
        return Ok(Some(Caller::Joiner));
    }
    Ok(None)
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut resp = (
        status,
        Json(ApiError {
            error: message,
            errors: Vec::new(),
        }),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// The middleware: authenticates from the headers, checks the route's permission, and puts
/// the [`Caller`] in the request's extensions; refused requests are answered before their
/// body is read.
pub async fn gate(State(g): State<Gate>, mut req: Request, next: Next) -> Response {
    let need = need(req.method(), req.uri().path());
    if need == Need::Anyone {
        return next.run(req).await;
    }
    let caller = match classify(&g, &need, bearer(req.headers())).await {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    match permit(&need, caller.as_ref()) {
        Ok(()) => {
            if let Some(caller) = caller {
                req.extensions_mut().insert(caller);
            }
            next.run(req).await
        }
        Err(Denied::Unauthenticated) => refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        ),
        Err(Denied::Forbidden(m)) => refuse(StatusCode::FORBIDDEN, m),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn op(name: &str, role: Role) -> Caller {
        Caller::Operator {
            name: name.into(),
            role,
        }
    }

    fn edge(id: &str) -> Caller {
        Caller::Edge { id: id.into() }
    }

    #[test]
    fn the_permission_table() {
        let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
        let cases = [
            ("GET", "/healthz", Need::Anyone),
            ("GET", "/v1/public-key", Need::Anyone),
            ("GET", "/v1/versions", Need::Operator(Role::ReadOnly)),
            ("POST", "/v1/versions", Need::Operator(Role::Deployer)),
            ("GET", "/v1/versions/3", Need::Operator(Role::ReadOnly)),
            (
                "GET",
                "/v1/versions/3/bundle",
                Need::EdgeOrOperator(Role::ReadOnly),
            ),
            ("GET", "/v1/target", Need::EdgeOrOperator(Role::ReadOnly)),
            ("PUT", "/v1/target", Need::Operator(Role::Deployer)),
            ("POST", "/v1/rollouts", Need::Operator(Role::Deployer)),
            ("POST", "/v1/rollout/pause", Need::Operator(Role::Deployer)),
            ("POST", "/v1/rollback", Need::Operator(Role::Deployer)),
            ("POST", "/v1/switches/x", Need::Operator(Role::Deployer)),
            ("POST", "/v1/purge", Need::Operator(Role::Deployer)),
            ("GET", "/v1/audit", Need::Operator(Role::ReadOnly)),
            ("GET", "/v1/fleet", Need::Operator(Role::ReadOnly)),
            ("GET", "/v1/pops", Need::EdgeOrOperator(Role::ReadOnly)),
            ("POST", "/v1/pops", Need::Operator(Role::Admin)),
            ("DELETE", "/v1/edges/e1", Need::Operator(Role::Admin)),
            ("PUT", "/v1/edges/e1", Need::Edge("e1".into())),
            ("GET", "/v1/edges/e1/target", Need::Edge("e1".into())),
            ("POST", "/v1/edges/e1/health", Need::Edge("e1".into())),
            ("POST", "/v1/edges/e1/join", Need::Join("e1".into())),
            (
                "GET",
                "/v1/edges/e1/secrets/ab",
                Need::EdgeSecret("e1".into()),
            ),
            (
                "PUT",
                "/v1/edges/e1/secrets/ab",
                Need::Operator(Role::Admin),
            ),
            ("GET", "/v1/nothing", Need::Operator(Role::Admin)),
            ("GET", "/status", Need::Anyone),
            ("GET", "/status/feed.atom", Need::Anyone),
            ("GET", "/status/incidents.json", Need::Anyone),
            ("POST", "/status", Need::Operator(Role::Admin)),
            ("GET", "/status/other", Need::Operator(Role::Admin)),
            ("GET", "/v1/incidents", Need::Operator(Role::ReadOnly)),
            ("POST", "/v1/incidents", Need::Operator(Role::Deployer)),
            (
                "POST",
                "/v1/incidents/3/updates",
                Need::Operator(Role::Deployer),
            ),
            ("DELETE", "/v1/versions", Need::Operator(Role::Admin)),
            ("POST", "/healthz", Need::Operator(Role::Admin)),
        ];
        for (method, path, want) in cases {
            assert_eq!(need(&m(method), path), want, "{method} {path}");
        }
    }

    #[test]
    fn roles_scope_operators() {
        let deploy = Need::Operator(Role::Deployer);
        assert!(permit(&deploy, Some(&op("ro", Role::ReadOnly))).is_err());
        assert!(permit(&deploy, Some(&op("d", Role::Deployer))).is_ok());
        assert!(permit(&deploy, Some(&op("a", Role::Admin))).is_ok());
        let remove = Need::Operator(Role::Admin);
        assert!(permit(&remove, Some(&op("d", Role::Deployer))).is_err());
        let read = Need::Operator(Role::ReadOnly);
        assert!(permit(&read, Some(&op("ro", Role::ReadOnly))).is_ok());
        assert_eq!(permit(&read, None), Err(Denied::Unauthenticated));
        assert!(permit(&Need::Anyone, None).is_ok());
    }

    #[test]
    fn edges_speak_only_for_themselves() {
        let own = Need::Edge("e1".into());
        assert!(permit(&own, Some(&edge("e1"))).is_ok());
        assert!(matches!(
            permit(&own, Some(&edge("e2"))),
            Err(Denied::Forbidden(_))
        ));
        assert!(permit(&own, Some(&op("a", Role::Admin))).is_err());
        assert!(permit(&own, Some(&Caller::Joiner)).is_err());
        for n in [
            Need::Operator(Role::ReadOnly),
            Need::Operator(Role::Deployer),
            Need::Operator(Role::Admin),
        ] {
            assert!(permit(&n, Some(&edge("e1"))).is_err(), "{n:?}");
        }
        assert!(permit(&Need::EdgeOrOperator(Role::ReadOnly), Some(&edge("e1"))).is_ok());
        // Private keys: the edge itself, nobody else, no operator (not even an admin).
        let secret = Need::EdgeSecret("e1".into());
        assert!(permit(&secret, Some(&edge("e1"))).is_ok());
        assert!(permit(&secret, Some(&edge("e2"))).is_err());
        assert!(permit(&secret, Some(&op("a", Role::Admin))).is_err());
        assert!(permit(&secret, Some(&Caller::Joiner)).is_err());
        assert_eq!(permit(&secret, None), Err(Denied::Unauthenticated));
    }

    #[test]
    fn the_join_token_can_only_join() {
        assert!(permit(&Need::Join("e1".into()), Some(&Caller::Joiner)).is_ok());
        for n in [
            Need::Edge("e1".into()),
            Need::EdgeOrOperator(Role::ReadOnly),
            Need::Operator(Role::ReadOnly),
            Need::Operator(Role::Admin),
        ] {
            assert!(permit(&n, Some(&Caller::Joiner)).is_err(), "{n:?}");
        }
        // A re-join proves the edge's own credential, for its own id only.
        assert!(permit(&Need::Join("e1".into()), Some(&edge("e1"))).is_ok());
        assert!(permit(&Need::Join("e1".into()), Some(&edge("e2"))).is_err());
    }

    #[test]
    fn operators_are_found_by_token_digest() {
        let access = Access::new(
            vec![
                Operator::with_token("alice", Role::Admin, "alice-token-0123456789").unwrap(),
                Operator::with_token("bob", Role::ReadOnly, "bob-token-0123456789ab").unwrap(),
            ],
            "join-token-0123456789ab",
        )
        .unwrap();
        assert_eq!(
            access.operator("bob-token-0123456789ab").unwrap().name,
            "bob"
        );
        assert_eq!(
            access.operator("alice-token-0123456789").unwrap().role,
            Role::Admin
        );
        assert!(access.operator("bob-token-0123456789a").is_none());
        assert!(access.operator("").is_none());
        assert!(access.is_join("join-token-0123456789ab"));
        assert!(!access.is_join("alice-token-0123456789"));
        assert!(matches!(
            Access::new(
                vec![Operator::with_token("a", Role::Admin, "same-token-0123456789").unwrap()],
                "same-token-0123456789"
            ),
            Err(AccessError::JoinIsOperator(_))
        ));
        assert!(matches!(
            Access::new(Vec::new(), "join-token-0123456789ab"),
            Err(AccessError::NoOperator)
        ));
    }

    #[test]
    fn operators_file_is_validated_with_locations() {
        let h = token_sha256("alice-token-0123456789");
        let ok = format!(
            "[[operator]]\nname = \"alice\"\nrole = \"admin\"\ntoken_sha256 = \"{h}\"\n\n[[operator]]\nname = \"ci\"\nrole = \"deployer\"\ntoken_sha256 = \"{}\"\n",
            token_sha256("ci-token-0123456789abc")
        );
        let ops = parse_operators("ops.toml", &ok).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[1].role, Role::Deployer);

        let bad_role =
            format!("[[operator]]\nname = \"alice\"\nrole = \"root\"\ntoken_sha256 = \"{h}\"\n");
        let e = parse_operators("ops.toml", &bad_role).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert!(
            e.errors[0].starts_with("ops.toml:3:8: operator[0].role: `root` is not a role"),
            "{e}"
        );

        let bad_hash =
            "[[operator]]\nname = \"alice\"\nrole = \"admin\"\ntoken_sha256 = \"plain-token\"\n";
        let e = parse_operators("ops.toml", bad_hash).unwrap_err();
        assert!(
            e.errors[0].starts_with("ops.toml:4:16: operator[0].token_sha256:"),
            "{e}"
        );

        let twice = bad_role.replace("root", "admin").repeat(2);
        let e = parse_operators("ops.toml", &twice).unwrap_err();
        assert!(e.errors[0].contains("defined twice"), "{e}");

        let unknown = "[[operator]]\nname = \"a\"\nrole = \"admin\"\ntoken = \"x\"\n";
        let e = parse_operators("ops.toml", unknown).unwrap_err();
        assert!(e.errors[0].starts_with("ops.toml:"), "{e}");
        assert!(parse_operators("ops.toml", "").is_err());
    }

    #[test]
    fn digests_compare_whole() {
        let a = token_sha256("x");
        assert!(same_digest(&a, &a.clone()));
        assert!(!same_digest(&a, &token_sha256("y")));
        assert!(!same_digest(&a, ""));
        assert!(!same_digest(&a, &a[..63]));
    }
}
