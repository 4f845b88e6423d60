//! The control plane's HTTP API (axum, JSON). Every request is authenticated from its headers
//! before its body is read ([`crate::auth::gate`]): operators by name and role, edges by their
//! own credential, joining edges by the join token. The OpenAPI document is served at
//! `/v1/openapi.json`.
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | POST | `/v1/versions` | deployer | submit a configuration (validated; 422 with located errors; 409 when its DNS data removes too much, unless `force`) |
//! | GET | `/v1/versions?limit=N` | read-only | newest versions first |
//! | GET | `/v1/versions/{n}` | read-only | one version and its configuration text |
//! | GET | `/v1/versions/{n}/bundle` | edge, read-only | the signed bundle |
//! | GET | `/v1/diff?from=A&to=B` | read-only | unified diff |
//! | GET, PUT | `/v1/target` | GET: edge, read-only; PUT: deployer | the fleet-wide target; PUT only rolls back to a version the fleet ran |
//! | POST | `/v1/rollouts` | deployer | roll a version out on a plan |
//! | GET | `/v1/rollout` | read-only | the current or last rollout, its cells and the gate's numbers |
//! | POST | `/v1/rollout/{pause,resume,abort}` | deployer | act on the running rollout |
//! | POST | `/v1/rollback` | deployer | the whole fleet back to a version it ran |
//! | POST | `/v1/switches/{name}` | deployer | flip a kill switch (a version on the emergency plan) |
//! | GET | `/v1/audit?limit=N` | read-only | the audit log |
//! | POST | `/v1/edges/{id}/join` | join token (or the edge's credential: re-join) | join; answers the edge's credential |
//! | GET | `/v1/edges/{id}/target?after=SEQ&epoch=E&cell=C&wait_ms=MS` | that edge | long-poll for a newer target (at the end of the wait: the current one, signed afresh) |
//! | PUT | `/v1/edges/{id}` | that edge | report applied version, staging and errors |
//! | POST | `/v1/edges/{id}/health` | that edge | health counts of the running version |
//! | GET | `/v1/edges/{id}/secrets/{sha256}` | that edge (no operator) | a private key a version this edge may run names (else 404) |
//! | DELETE | `/v1/edges/{id}` | admin | forget an edge and its credential (audited) |
//! | GET | `/v1/fleet` | read-only | every edge |
//! | GET | `/v1/pops` | any member (its own credential), read-only | each POP's health from its edges, for DNS servers |
//! | POST | `/v1/purge` | deployer | purge on every edge, with stragglers named |
//! | GET | `/v1/keys?after=GEN` | edge, read-only | signed key-set statements newer than GEN, oldest first |
//! | GET | `/v1/keys/ring` | read-only | the keys, which signs now, and from when |
//! | POST | `/v1/keys/rotate` | admin | a new signing key, after an overlap |
//! | POST | `/v1/keys/{id}/revoke` | admin | revoke a key from a stated time |
//! | GET, POST | `/ui/…` | an operator's dashboard session (cookie; [`crate::ui`]) | the operator dashboard |
//! | GET | `/status`, `/status/feed.atom`, `/status/incidents.json` | anyone | the public status page (`crate::status`) |
//! | GET, POST | `/v1/incidents`, POST `/v1/incidents/{id}/updates` | GET: read-only; POST: deployer | incidents |

use crate::auth::{Access, Caller, Gate};
use crate::bounded_body::{self, BodyBounds};
use crate::failure::{bad_path, bad_query, body, fail, Answer};
use crate::plane::{Plane, MAX_LIST};
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use firebreak_protocol::api::{
    ActionRequest, DeployRequest, EdgeReport, JoinRequest, PurgeRequest, PushRequest,
    RollbackRequest, SetTargetRequest, SwitchRequest, MAX_API_BODY_BYTES, MAX_PUSH_BODY_BYTES,
};
use firebreak_protocol::health::HealthReport;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub use crate::listener::{serve, ControlServer, MAX_CONNECTIONS};

/// Longest long-poll.
const MAX_WAIT_MS: u64 = 60_000;

/// The simplest access: one admin named `operator` and the edges' join token.
#[derive(Clone)]
pub struct Tokens {
    /// The admin's token (operator `operator`).
    pub operator: String,
    /// The edges' join token: it can only join (`POST /v1/edges/{id}/join`).
    pub edge: String,
}

impl Tokens {
    /// As [`Access`].
    pub fn access(&self) -> Result<Access, crate::auth::AccessError> {
        let admin =
            crate::auth::Operator::with_token("operator", crate::auth::Role::Admin, &self.operator)
                .map_err(|_| crate::auth::AccessError::NoOperator)?;
        Access::new(vec![admin], &self.edge)
    }
}

#[derive(Clone)]
struct App {
    plane: Arc<Plane>,
    /// Becomes `true` on shutdown: long-polls end at once instead of holding it up.
    stopping: watch::Receiver<bool>,
}

impl axum::extract::FromRef<App> for Arc<Plane> {
    fn from_ref(app: &App) -> Self {
        app.plane.clone()
    }
}

/// The API router over `plane` with the default body bounds; long-polls end when `stopping`
/// turns `true`.
pub fn router(plane: Arc<Plane>, access: Access, stopping: watch::Receiver<bool>) -> Router {
    router_with(plane, access, stopping, BodyBounds::default())
}

/// The API router; request bodies are read within `bodies`, inside the authentication gate,
/// so that a caller is known from the headers before a body byte is read.
pub fn router_with(
    plane: Arc<Plane>,
    access: Access,
    stopping: watch::Receiver<bool>,
    bodies: BodyBounds,
) -> Router {
    router_served(plane, access, stopping, bodies, false)
}

/// [`router_with`] and the dashboard ([`crate::ui`], `/ui/`), whose cookies are `Secure`
/// when `tls` (the listener serves HTTPS). The dashboard is merged after the API's layers:
/// its own session check stands in for the bearer-token gate, before any body is read.
pub fn router_served(
    plane: Arc<Plane>,
    access: Access,
    stopping: watch::Receiver<bool>,
    bodies: BodyBounds,
    tls: bool,
) -> Router {
    let access = Arc::new(access);
    let ui = crate::ui::router(plane.clone(), access.clone(), bodies.clone(), tls);
    let gate = Gate {
        access,
        plane: plane.clone(),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/public-key", get(public_key))
        .route(
            crate::bounded_body::PUSH_PATH,
            // A push may carry a MaxMind database ([`MAX_PUSH_BODY_BYTES`]).
            post(push)
                .layer(DefaultBodyLimit::max(MAX_PUSH_BODY_BYTES))
                .get(versions),
        )
        .route("/v1/versions/{n}", get(version))
        .route("/v1/versions/{n}/bundle", get(bundle))
        .route("/v1/diff", get(diff))
        .route("/v1/target", get(target).put(set_target))
        .route("/v1/edges/{id}/target", get(poll))
        .route("/v1/edges/{id}", put(report).delete(remove_edge))
        .route("/v1/edges/{id}/join", post(join))
        .route("/v1/edges/{id}/health", post(health))
        .route("/v1/edges/{id}/secrets/{sha256}", get(edge_secret))
        .route("/v1/edges/{id}/tier", get(edge_tier))
        .route("/v1/rollouts", post(deploy))
        .route("/v1/rollout", get(rollout))
        .route("/v1/rollout/{action}", post(rollout_action))
        .route("/v1/rollback", post(rollback))
        .route("/v1/switches/{name}", post(switch))
        .route("/v1/audit", get(audit))
        .route("/v1/backup", post(backup))
        .route("/v1/fleet", get(fleet))
        .route("/v1/pops", get(pops))
        .route("/v1/purge", post(purge))
        .route("/v1/keys", get(key_chain))
        .route("/v1/keys/ring", get(key_ring))
        .route("/v1/keys/rotate", post(rotate_key))
        .route("/v1/keys/{id}/revoke", post(revoke_key))
        .route("/status", get(crate::status::http::page))
        .route("/status/feed.atom", get(crate::status::http::feed))
        .route("/status/incidents.json", get(crate::status::http::data))
        .route(
            "/v1/incidents",
            get(crate::status::http::list).post(crate::status::http::open),
        )
        .route(
            "/v1/incidents/{id}/updates",
            post(crate::status::http::update),
        )
        .layer(DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            bodies,
            bounded_body::read,
        ))
        // Outermost: authenticated from the headers before any handler reads a body.
        .layer(axum::middleware::from_fn_with_state(
            gate,
            crate::auth::gate,
        ))
        .with_state(App { plane, stopping })
        .merge(ui)
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

async fn public_key(State(app): State<App>) -> String {
    format!("{}\n", app.plane.public_key())
}

async fn push(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let req: PushRequest = body(&bytes)?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| fail(StatusCode::BAD_REQUEST, "Idempotency-Key must be ASCII"))?,
        ),
        None => None,
    };
    let outcome = app.plane.push_keyed(req, caller.name(), key).await?;
    let status = if outcome.already_stored {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(outcome)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn versions(State(app): State<App>, q: Result<Query<ListQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(bad_query)?;
    let list = app
        .plane
        .versions(q.limit.unwrap_or(50).min(MAX_LIST))
        .await?;
    Ok(Json(list).into_response())
}

/// `GET /v1/versions/{n}?certs=pem`.
#[derive(Deserialize)]
struct VersionQuery {
    certs: Option<CertsShown>,
}

/// How a version's certificates are shown.
#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum CertsShown {
    /// As stored, so that the document can be pushed again (`firebreak drill` does).
    Pem,
}

async fn version(
    State(app): State<App>,
    n: Result<Path<u64>, PathRejection>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> Answer {
    let Path(n) = n.map_err(bad_path)?;
    let Query(q) = q.map_err(bad_query)?;
    let mut detail = app.plane.version(n).await?;
    if q.certs == Some(CertsShown::Pem) {
        // Public certificates; the stored document holds no private key (each is a
        // `key_sha256` reference to a secret only its edges may fetch).
        return Ok(Json(detail).into_response());
    }
    // Certificates described for people, not shown as PEM.
    let document = std::mem::take(&mut detail.document);
    detail.document =
        tokio::task::spawn_blocking(move || firebreak_protocol::secrets::redact_certs(&document))
            .await
            .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(detail).into_response())
}

/// `GET /v1/edges/{id}/secrets/{sha256}`: the PEM of a private key, to that edge only.
async fn edge_secret(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    let Path((id, sha)) = path.map_err(bad_path)?;
    let pem = app.plane.edge_secret(&id, &sha).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        pem,
    )
        .into_response())
}

/// `GET /v1/edges/{id}/tier`: the fleet's tier secret, to that HTTP edge only ([`crate::tier`]).
async fn edge_tier(State(app): State<App>, id: Result<Path<String>, PathRejection>) -> Answer {
    let Path(id) = id.map_err(bad_path)?;
    let secret = app.plane.edge_tier_secret(&id).await?;
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(firebreak_protocol::api::TierSecretAnswer { secret }),
    )
        .into_response())
}

async fn bundle(State(app): State<App>, n: Result<Path<u64>, PathRejection>) -> Answer {
    let Path(n) = n.map_err(bad_path)?;
    let bytes = app.plane.bundle(n).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        bytes,
    )
        .into_response())
}

#[derive(Deserialize)]
struct DiffQuery {
    from: u64,
    to: u64,
}

async fn diff(State(app): State<App>, q: Result<Query<DiffQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(bad_query)?;
    let text = app.plane.diff(q.from, q.to).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

async fn target(State(app): State<App>) -> Answer {
    match app.plane.target() {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(fail(StatusCode::NOT_FOUND, "no target version set yet")),
    }
}

async fn set_target(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Answer {
    let req: SetTargetRequest = body(&bytes)?;
    if !req.rollback {
        return Err(fail(
            StatusCode::CONFLICT,
            "a version reaches the fleet only through a rollout (POST /v1/rollouts, `firebreak deploy`); setting the target at once is only for rolling back (rollback = true) to a version the fleet ran",
        ));
    }
    let target = app
        .plane
        .rollback(Some(req.version), caller.name(), "config target --rollback")
        .await?;
    Ok(Json(target).into_response())
}

#[derive(Deserialize)]
struct PollQuery {
    #[serde(default)]
    after: u64,
    /// The epoch of the edge's newest verified target (targets order by epoch, then seq).
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    cell: String,
    wait_ms: Option<u64>,
}

async fn poll(
    State(app): State<App>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<PollQuery>, QueryRejection>,
) -> Answer {
    let (Path(id), Query(q)) = (id.map_err(bad_path)?, q.map_err(bad_query)?);
    crate::plane::edge_id(&id)?;
    app.plane.touch(&id);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(30_000).min(MAX_WAIT_MS));
    let mut stopping = app.stopping.clone();
    let found = tokio::select! {
        t = app.plane.wait_target(&id, &q.cell, (q.epoch, q.after), wait) => t,
        _ = stopping.wait_for(|s| *s) => None,
    };
    // An edge holding a long-poll is alive: note it at the end too.
    app.plane.touch(&id);
    match found {
        Some(t) => Ok(Json(t).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn report(
    State(app): State<App>,
    id: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    let Path(id) = id.map_err(bad_path)?;
    let report: EdgeReport = body(&bytes)?;
    app.plane.report(&id, report).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn fleet(State(app): State<App>) -> Answer {
    Ok(Json(app.plane.fleet().await?).into_response())
}

/// `GET /v1/pops`: each POP's health ([`crate::pops`]).
async fn pops(State(app): State<App>) -> Answer {
    Ok(Json(app.plane.pop_health().await?).into_response())
}

async fn purge(State(app): State<App>, bytes: Bytes) -> Answer {
    let req: PurgeRequest = body(&bytes)?;
    Ok(Json(app.plane.purge(req).await?).into_response())
}

async fn health(
    State(app): State<App>,
    id: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    let Path(id) = id.map_err(bad_path)?;
    let report: HealthReport = body(&bytes)?;
    app.plane.record_health(&id, report)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn deploy(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Answer {
    let req: DeployRequest = body(&bytes)?;
    let r = app
        .plane
        .deploy(
            req.version,
            req.plan.as_deref(),
            caller.name(),
            &req.message,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

async fn rollout(State(app): State<App>) -> Answer {
    Ok(Json(app.plane.rollout_view().await?).into_response())
}

async fn rollout_action(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    action: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    let Path(action) = action.map_err(bad_path)?;
    let req: ActionRequest = if bytes.is_empty() {
        ActionRequest::default()
    } else {
        body(&bytes)?
    };
    let by = caller.name();
    let r = match action.as_str() {
        "pause" => app.plane.pause(by, &req.message).await?,
        "resume" => app.plane.resume(by, &req.message).await?,
        "abort" => app.plane.abort(by, &req.message).await?,
        _ => {
            return Err(fail(
                StatusCode::NOT_FOUND,
                "no such action: pause, resume or abort",
            ))
        }
    };
    Ok(Json(r).into_response())
}

async fn rollback(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Answer {
    let req: RollbackRequest = if bytes.is_empty() {
        RollbackRequest::default()
    } else {
        body(&bytes)?
    };
    let t = app
        .plane
        .rollback(req.version, caller.name(), &req.message)
        .await?;
    Ok(Json(t).into_response())
}

async fn switch(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    let Path(name) = name.map_err(bad_path)?;
    let req: SwitchRequest = body(&bytes)?;
    let r = app
        .plane
        .switch(&name, req.on, caller.name(), &req.message)
        .await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

/// `POST /v1/backup` (admin): a consistent backup of the store
/// ([`crate::backup`]), taken while the control plane runs.
async fn backup(State(app): State<App>) -> Answer {
    let taken = crate::backup::backup(&app.plane.store)
        .await
        .map_err(crate::plane::PlaneError::Store)?;
    let bytes = tokio::task::spawn_blocking(move || serde_json::to_vec(&taken))
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

async fn audit(State(app): State<App>, q: Result<Query<ListQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(bad_query)?;
    let list = app.plane.audit_log(q.limit.unwrap_or(100)).await?;
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
struct KeysQuery {
    #[serde(default)]
    after: u64,
}

async fn key_chain(State(app): State<App>, q: Result<Query<KeysQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(bad_query)?;
    Ok(Json(firebreak_protocol::keyring::KeyChain {
        chain: app.plane.keys().chain_after(q.after),
    })
    .into_response())
}

async fn key_ring(State(app): State<App>) -> Answer {
    Ok(Json(app.plane.keys().view()).into_response())
}

async fn rotate_key(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Answer {
    let req: crate::keys::RotateRequest = if bytes.is_empty() {
        Default::default()
    } else {
        body(&bytes)?
    };
    Ok(Json(app.plane.rotate_key(req, caller.name()).await?).into_response())
}

async fn revoke_key(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    let Path(id) = id.map_err(bad_path)?;
    let req: crate::keys::RevokeRequest = body(&bytes)?;
    Ok(Json(app.plane.revoke_key(&id, req, caller.name()).await?).into_response())
}

async fn join(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    let Path(id) = id.map_err(bad_path)?;
    let req: JoinRequest = body(&bytes)?;
    // The gate let through the join token or this edge's own credential (a re-join).
    let rejoin = matches!(caller, Caller::Edge { .. });
    let answer = app.plane.join(&id, req, rejoin).await?;
    let status = if rejoin {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(answer)).into_response())
}

#[derive(Deserialize, Default)]
struct RemoveQuery {
    #[serde(default)]
    message: String,
}

async fn remove_edge(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<RemoveQuery>, QueryRejection>,
) -> Answer {
    let (Path(id), Query(q)) = (id.map_err(bad_path)?, q.map_err(bad_query)?);
    app.plane
        .remove_edge(&id, caller.name(), &q.message)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
