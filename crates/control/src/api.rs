//! The control plane's HTTP API (axum, JSON). Two bearer tokens: the operator's (everything)
//! and the edges' (poll the target, download bundles, report). The OpenAPI document is served
//! at `/v1/openapi.json`.
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | POST | `/v1/versions` | operator | submit a configuration (validated; 422 with located errors) |
//! | GET | `/v1/versions?limit=N` | operator | newest versions first |
//! | GET | `/v1/versions/{n}` | operator | one version and its configuration text |
//! | GET | `/v1/versions/{n}/bundle` | edge, operator | the signed bundle |
//! | GET | `/v1/diff?from=A&to=B` | operator | unified diff |
//! | GET, PUT | `/v1/target` | operator (GET: edge too) | the fleet-wide target; PUT only rolls back to a version the fleet ran |
//! | POST | `/v1/rollouts` | operator | roll a version out on a plan |
//! | GET | `/v1/rollout` | operator | the current or last rollout, its cells and the gate's numbers |
//! | POST | `/v1/rollout/{pause,resume,abort}` | operator | act on the running rollout |
//! | POST | `/v1/rollback` | operator | the whole fleet back to a version it ran |
//! | POST | `/v1/switches/{name}` | operator | flip a kill switch (a version on the emergency plan) |
//! | GET | `/v1/audit?limit=N` | operator | the audit log |
//! | GET | `/v1/edges/{id}/target?after=SEQ&cell=C&wait_ms=MS` | edge | long-poll for a newer target |
//! | PUT | `/v1/edges/{id}` | edge | report applied version, staging and errors |
//! | POST | `/v1/edges/{id}/health` | edge | health counts of the running version |
//! | GET | `/v1/fleet` | operator | every edge |
//! | POST | `/v1/purge` | operator | purge on every edge, with stragglers named |

use crate::plane::{Plane, PlaneError, MAX_LIST};
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use firebreak_protocol::api::{
    ActionRequest, ApiError, DeployRequest, EdgeReport, PurgeRequest, PushRequest, RollbackRequest,
    SetTargetRequest, SwitchRequest, MAX_API_BODY_BYTES,
};
use firebreak_protocol::health::HealthReport;
use firebreak_protocol::same_secret;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// Longest long-poll.
const MAX_WAIT_MS: u64 = 60_000;
/// Most open API connections (each edge holds one for its long-poll).
pub const MAX_CONNECTIONS: usize = 50_000;
/// Time a client has to send a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The two bearer tokens.
#[derive(Clone)]
pub struct Tokens {
    /// For operators and the CLI: everything.
    pub operator: String,
    /// For edges: poll, download, report.
    pub edge: String,
}

#[derive(Clone)]
struct App {
    plane: Arc<Plane>,
    tokens: Tokens,
    /// Becomes `true` on shutdown: long-polls end at once instead of holding it up.
    stopping: watch::Receiver<bool>,
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Operator,
    Edge,
}

/// The API router over `plane`; long-polls end when `stopping` turns `true`.
pub fn router(plane: Arc<Plane>, tokens: Tokens, stopping: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/public-key", get(public_key))
        .route("/v1/versions", post(push).get(versions))
        .route("/v1/versions/{n}", get(version))
        .route("/v1/versions/{n}/bundle", get(bundle))
        .route("/v1/diff", get(diff))
        .route("/v1/target", get(target).put(set_target))
        .route("/v1/edges/{id}/target", get(poll))
        .route("/v1/edges/{id}", put(report))
        .route("/v1/edges/{id}/health", post(health))
        .route("/v1/rollouts", post(deploy))
        .route("/v1/rollout", get(rollout))
        .route("/v1/rollout/{action}", post(rollout_action))
        .route("/v1/rollback", post(rollback))
        .route("/v1/switches/{name}", post(switch))
        .route("/v1/audit", get(audit))
        .route("/v1/backup", post(backup))
        .route("/v1/fleet", get(fleet))
        .route("/v1/purge", post(purge))
        .layer(DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .with_state(App {
            plane,
            tokens,
            stopping,
        })
}

/// A running API server.
pub struct ControlServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for open requests (long-polls end at once).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Binds `listen` and serves the API in the background.
pub async fn serve(
    listen: SocketAddr,
    plane: Arc<Plane>,
    tokens: Tokens,
) -> std::io::Result<ControlServer> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (stop, rx) = watch::channel(false);
    let app = router(plane, tokens, rx.clone());
    let task = tokio::spawn(accept_loop(listener, app, rx));
    Ok(ControlServer { addr, stop, task })
}

/// Resolves once `rx` says stop (or its sender is gone, which never happens while serving).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Accepts connections (at most [`MAX_CONNECTIONS`] open), each served by hyper with a bound
/// on the time to send a request head; on stop, every connection finishes gracefully.
async fn accept_loop(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        connections.spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                Ok(()) = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn fail(status: StatusCode, msg: impl Into<String>) -> Failure {
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

type Answer = Result<Response, Failure>;

fn bad_query(e: QueryRejection) -> Failure {
    fail(StatusCode::BAD_REQUEST, e.body_text())
}

fn bad_path(e: PathRejection) -> Failure {
    fail(StatusCode::BAD_REQUEST, e.body_text())
}

/// Checks the bearer token in constant time; the edge token is accepted where `edge_ok`.
fn auth(app: &App, headers: &HeaderMap, edge_ok: bool) -> Result<Role, Failure> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if same_secret(given, &app.tokens.operator) {
        return Ok(Role::Operator);
    }
    if edge_ok && same_secret(given, &app.tokens.edge) {
        return Ok(Role::Edge);
    }
    Err(fail(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token",
    ))
}

fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

fn who(role: Role) -> &'static str {
    match role {
        Role::Operator => "operator",
        Role::Edge => "edge",
    }
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

async fn push(State(app): State<App>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let role = auth(&app, &headers, false)?;
    let req: PushRequest = body(&bytes)?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| fail(StatusCode::BAD_REQUEST, "Idempotency-Key must be ASCII"))?,
        ),
        None => None,
    };
    let outcome = app.plane.push_keyed(req, who(role), key).await?;
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

async fn versions(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    auth(&app, &headers, false)?;
    let Query(q) = q.map_err(bad_query)?;
    let list = app
        .plane
        .versions(q.limit.unwrap_or(50).min(MAX_LIST))
        .await?;
    Ok(Json(list).into_response())
}

async fn version(
    State(app): State<App>,
    headers: HeaderMap,
    n: Result<Path<u64>, PathRejection>,
) -> Answer {
    auth(&app, &headers, false)?;
    let Path(n) = n.map_err(bad_path)?;
    Ok(Json(app.plane.version(n).await?).into_response())
}

async fn bundle(
    State(app): State<App>,
    headers: HeaderMap,
    n: Result<Path<u64>, PathRejection>,
) -> Answer {
    auth(&app, &headers, true)?;
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

async fn diff(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Answer {
    auth(&app, &headers, false)?;
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

async fn target(State(app): State<App>, headers: HeaderMap) -> Answer {
    auth(&app, &headers, true)?;
    match app.plane.target() {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(fail(StatusCode::NOT_FOUND, "no target version set yet")),
    }
}

async fn set_target(State(app): State<App>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let role = auth(&app, &headers, false)?;
    let req: SetTargetRequest = body(&bytes)?;
    if !req.rollback {
        return Err(fail(
            StatusCode::CONFLICT,
            "a version reaches the fleet only through a rollout (POST /v1/rollouts, `firebreak deploy`); setting the target at once is only for rolling back (rollback = true) to a version the fleet ran",
        ));
    }
    let target = app
        .plane
        .rollback(Some(req.version), who(role), "config target --rollback")
        .await?;
    Ok(Json(target).into_response())
}

#[derive(Deserialize)]
struct PollQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    cell: String,
    wait_ms: Option<u64>,
}

async fn poll(
    State(app): State<App>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<PollQuery>, QueryRejection>,
) -> Answer {
    auth(&app, &headers, true)?;
    let (Path(id), Query(q)) = (id.map_err(bad_path)?, q.map_err(bad_query)?);
    crate::plane::edge_id(&id)?;
    app.plane.touch(&id);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(30_000).min(MAX_WAIT_MS));
    let mut stopping = app.stopping.clone();
    let found = tokio::select! {
        t = app.plane.wait_target(&id, &q.cell, q.after, wait) => t,
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
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    auth(&app, &headers, true)?;
    let Path(id) = id.map_err(bad_path)?;
    let report: EdgeReport = body(&bytes)?;
    app.plane.report(&id, report).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn fleet(State(app): State<App>, headers: HeaderMap) -> Answer {
    auth(&app, &headers, false)?;
    Ok(Json(app.plane.fleet().await?).into_response())
}

async fn purge(State(app): State<App>, headers: HeaderMap, bytes: Bytes) -> Answer {
    auth(&app, &headers, false)?;
    let req: PurgeRequest = body(&bytes)?;
    Ok(Json(app.plane.purge(req).await?).into_response())
}

async fn health(
    State(app): State<App>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    auth(&app, &headers, true)?;
    let Path(id) = id.map_err(bad_path)?;
    let report: HealthReport = body(&bytes)?;
    app.plane.record_health(&id, report)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn deploy(State(app): State<App>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let role = auth(&app, &headers, false)?;
    let req: DeployRequest = body(&bytes)?;
    let r = app
        .plane
        .deploy(req.version, req.plan.as_deref(), who(role), &req.message)
        .await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

async fn rollout(State(app): State<App>, headers: HeaderMap) -> Answer {
    auth(&app, &headers, false)?;
    Ok(Json(app.plane.rollout_view().await?).into_response())
}

async fn rollout_action(
    State(app): State<App>,
    headers: HeaderMap,
    action: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    let role = auth(&app, &headers, false)?;
    let Path(action) = action.map_err(bad_path)?;
    let req: ActionRequest = if bytes.is_empty() {
        ActionRequest::default()
    } else {
        body(&bytes)?
    };
    let by = who(role);
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

async fn rollback(State(app): State<App>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let role = auth(&app, &headers, false)?;
    let req: RollbackRequest = if bytes.is_empty() {
        RollbackRequest::default()
    } else {
        body(&bytes)?
    };
    let t = app
        .plane
        .rollback(req.version, who(role), &req.message)
        .await?;
    Ok(Json(t).into_response())
}

async fn switch(
    State(app): State<App>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    let role = auth(&app, &headers, false)?;
    let Path(name) = name.map_err(bad_path)?;
    let req: SwitchRequest = body(&bytes)?;
    let r = app
        .plane
        .switch(&name, req.on, who(role), &req.message)
        .await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

/// `POST /v1/backup` (operator; admin once roles exist): a consistent backup of the store
/// ([`crate::backup`]), taken while the control plane runs.
async fn backup(State(app): State<App>, headers: HeaderMap) -> Answer {
    auth(&app, &headers, false)?;
    let taken = crate::backup::backup(&app.plane.store)
        .await
        .map_err(crate::plane::PlaneError::Store)?;
    let bytes = tokio::task::spawn_blocking(move || serde_json::to_vec(&taken))
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

async fn audit(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    auth(&app, &headers, false)?;
    let Query(q) = q.map_err(bad_query)?;
    let list = app.plane.audit_log(q.limit.unwrap_or(100)).await?;
    Ok(Json(list).into_response())
}
