//! The admin listener: purge, Prometheus metrics and health, on its own port, behind a
//! bearer token (except `/healthz`).
//!
//! | method | path | query | answer |
//! |---|---|---|---|
//! | GET | `/healthz` | | `ok` (and `stale: WHY` when the edge holds no fresh target) |
//! | GET | `/metrics` | | Prometheus text |
//! | POST | `/purge/url` | `url=http://host/path?q`, `soft=true` | `{"purged":N,"service":S}` |
//! | POST | `/purge/key` | `service=S`, `key=K`, `soft=true` | `{"purged":N,"service":S}` |
//! | POST | `/purge/all` | `service=S`, `soft=true` | `{"purged":N,"service":S}` |
//!
//! A hard purge removes objects; a soft purge marks them expired, so that they are
//! revalidated on the next request and remain usable for stale-if-error meanwhile.

use crate::body::EdgeBody;
use crate::conn::{accept_loop, AddressTable, ListenerConf};
use crate::proxy::EdgeState;
use crate::store::{CacheKey, PurgeMode, PurgeTarget};
use crate::telemetry;
use firebreak_config::{valid_host_name, LimitsConfig};
use firebreak_protocol::signed::Refusal;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Concurrent admin connections; the admin port is for operators and scrapers, not crowds.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Concurrent admin connections from one address (IPv6: one /64): a flood from one address
/// leaves room for the control plane, the scraper and the load balancer's `/healthz`.
const MAX_ADMIN_CONNECTIONS_PER_ADDRESS: usize = 8;
/// Longest query string accepted.
const MAX_QUERY_BYTES: usize = 8 * 1024;

/// Binds the admin listener and serves it in the background, with the client listeners'
/// deadlines (`[limits]`, `[limits.clients]`) and its own connection bounds.
/// Open connections close gracefully when `stop` turns `true`.
pub async fn start(
    listen: SocketAddr,
    state: Arc<EdgeState>,
    stop: tokio::sync::watch::Receiver<bool>,
    limits: &LimitsConfig,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let permits = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let conf = Arc::new(ListenerConf::new(
        "admin",
        limits,
        false,
        Arc::new(AddressTable::new(MAX_ADMIN_CONNECTIONS_PER_ADDRESS)),
    ));
    let handler = move |req: Request<Incoming>, _client| {
        let state = state.clone();
        async move {
            let purge = req.method() == Method::POST && req.uri().path().starts_with("/purge/");
            let resp = route(&state, req);
            if purge && resp.status() == StatusCode::OK {
                synced(&state).await;
            }
            resp
        }
    };
    let task = tokio::spawn(accept_loop(listener, conf, permits, stop, handler));
    Ok((addr, task))
}

/// Waits until a purge's effect on the disk tier is durable (files unlinked or marked), so a
/// purge that was answered is not undone by a crash; bounded, logged when it runs late.
async fn synced(state: &EdgeState) {
    if let Some(done) = state.store.synced() {
        if tokio::time::timeout(PURGE_SYNC_TIMEOUT, done)
            .await
            .is_err()
        {
            tracing::warn!(
                timeout = ?PURGE_SYNC_TIMEOUT,
                "purge answered before the disk tier finished it"
            );
        }
    }
}

/// Longest a purge waits for the disk tier.
const PURGE_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn route(state: &EdgeState, req: Request<Incoming>) -> Response<EdgeBody> {
    let path = req.uri().path();
    if path == "/healthz" {
        return match state.control_link.get().and_then(|l| l.stale()) {
            Some(why) => text(StatusCode::OK, &format!("ok\nstale: {why}\n")),
            None => text(StatusCode::OK, "ok\n"),
        };
    }
    let verdict = authorized(state, &req);
    if let Err(Some(reason)) = verdict {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({
                "error": format!("signed request refused: {reason}"),
                "reason": reason.label(),
            })
            .to_string(),
        );
    }
    if verdict.is_err() {
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"missing or wrong bearer token"}"#.into(),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    match (req.method(), path) {
        (&Method::GET, "/metrics") => metrics(state),
        (&Method::POST, "/purge/url" | "/purge/key" | "/purge/all") => {
            let query = req.uri().query().unwrap_or("");
            if query.len() > MAX_QUERY_BYTES {
                return error(StatusCode::BAD_REQUEST, "query too long");
            }
            let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            match purge(state, path, &params) {
                Ok((service, n)) => json(
                    StatusCode::OK,
                    serde_json::json!({ "purged": n, "service": service }).to_string(),
                ),
                Err((status, msg)) => error(status, &msg),
            }
        }
        (_, "/metrics" | "/purge/url" | "/purge/key" | "/purge/all") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "wrong method")
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// Bearer token check, comparing in time independent of where the first difference is; or,
/// on an edge run by a control plane, a request signed by the control plane's key for this
/// edge, unexpired and not seen before ([`crate::signed_admin`]). A request that carries a
/// signature is judged by it alone: refused signatures are answered with their reason.
fn authorized(state: &EdgeState, req: &Request<Incoming>) -> Result<(), Option<Refusal>> {
    if let Some(link) = state.control_link.get() {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let (method, now) = (req.method().as_str(), firebreak_protocol::now_ms());
        // The key set the edge trusts (rotation, revocation) when it has one, else the one
        // `--trust` key.
        let checked = if let Some(keys) = state.control_keys.get() {
            link.check(&**keys, method, pq, req.headers(), now)
        } else if let Some(key) = state.control_key.get() {
            link.check(key, method, pq, req.headers(), now)
        } else {
            None
        };
        match checked {
            Some(Ok(())) => return Ok(()),
            Some(Err(reason)) => return Err(Some(reason)),
            None => {}
        }
    }
    let runtime = state.runtime.load();
    let Some(admin) = &runtime.config.admin else {
        return Err(None);
    };
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(None);
    };
    let given = given.trim();
    let ok = match (&admin.token_sha256, &admin.token) {
        // The fleet document carries only the token's digest: compare digests (constant time).
        (Some(hash), _) => firebreak_protocol::same_secret(
            &firebreak_protocol::sha256_hex(given.as_bytes()),
            &hash.to_ascii_lowercase(),
        ),
        (None, Some(token)) => firebreak_protocol::same_secret(given, token),
        (None, None) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(None)
    }
}

fn metrics(state: &EdgeState) -> Response<EdgeBody> {
    telemetry::store(state.store.stats());
    match telemetry::prometheus() {
        Some(handle) => {
            let mut r = text(StatusCode::OK, &handle.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        ),
    }
}

type PurgeResult = Result<(String, u64), (StatusCode, String)>;

fn purge(state: &EdgeState, path: &str, params: &HashMap<String, String>) -> PurgeResult {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_owned());
    let soft = match params.get("soft").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(bad("soft must be true or false")),
    };
    let mode = if soft {
        PurgeMode::Soft
    } else {
        PurgeMode::Hard
    };
    let runtime = state.runtime.load();
    let now = SystemTime::now();
    let service_named = |name: Option<&String>| -> Result<String, (StatusCode, String)> {
        let name = name.ok_or_else(|| bad("service is required"))?;
        runtime
            .service(name)
            .map(|s| s.name.to_string())
            .ok_or((StatusCode::NOT_FOUND, format!("no service named `{name}`")))
    };
    match path {
        "/purge/url" => {
            let url = params.get("url").ok_or_else(|| bad("url is required"))?;
            let uri: Uri = url.parse().map_err(|_| bad("url is not a URL"))?;
            let host = uri
                .host()
                .map(str::to_ascii_lowercase)
                .filter(|h| valid_host_name(h))
                .ok_or_else(|| bad("url needs a valid host"))?;
            let service = runtime.route(&host).ok_or((
                StatusCode::NOT_FOUND,
                format!("no service for host `{host}`"),
            ))?;
            // The same normal form the request path stores under (`proxy::route`), so
            // `/%70rivate/x` purges what `/private/x` stored.
            let raw = uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            let pq = crate::http::path::normalize(&raw)
                .map_err(|_| bad("url has a malformed percent-encoding"))?
                .unwrap_or(raw);
            let key = CacheKey::new(&service.name, &host, pq.as_str());
            telemetry::purge("url", soft);
            let store = state.store.as_ref();
            let slices =
                crate::proxy::slice::purge_url(store, &service.name, &host, pq.as_str(), mode, now);
            Ok((
                service.name.to_string(),
                store.purge(PurgeTarget::Url(&key), mode, now) + slices,
            ))
        }
        "/purge/key" => {
            let service = service_named(params.get("service"))?;
            let tag = params
                .get("key")
                .filter(|k| !k.is_empty())
                .ok_or_else(|| bad("key is required"))?;
            telemetry::purge("key", soft);
            let n = state.store.purge(
                PurgeTarget::Tag {
                    service: &service,
                    tag,
                },
                mode,
                now,
            );
            Ok((service, n))
        }
        _ => {
            let service = service_named(params.get("service"))?;
            telemetry::purge("all", soft);
            let n = state.store.purge(PurgeTarget::Service(&service), mode, now);
            Ok((service, n))
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<EdgeBody> {
    let mut r = Response::new(EdgeBody::full(body.to_owned()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: String) -> Response<EdgeBody> {
    let mut r = Response::new(EdgeBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<EdgeBody> {
    json(status, serde_json::json!({ "error": message }).to_string())
}
