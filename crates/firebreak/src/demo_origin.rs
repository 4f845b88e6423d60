//! A small origin with one endpoint per caching behaviour, for `firebreak up` and for trying
//! the edge by hand. It counts the requests it serves (`/__origin/stats`), and per path
//! (`/__origin/stats?path=/static/x`: what a shield test counts).

use bytes::Bytes;
use firebreak_protocol::serve::{accept_loop, AddressTable, ListenerConf};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Largest body `/large` produces.
const MAX_LARGE_MIB: u64 = 256;
/// Most open connections.
const MAX_CONNECTIONS: usize = 10_000;
/// Longest delay `/slow` accepts.
const MAX_SLOW_MS: u64 = 30_000;
/// Most distinct paths counted one by one; requests for further paths count in the total only.
const MAX_COUNTED_PATHS: usize = 100_000;
/// Longest path counted one by one.
const MAX_COUNTED_PATH_LEN: usize = 1024;

/// What the origin counts: every request, and requests per path (bounded).
#[derive(Default)]
struct Counts {
    total: AtomicU64,
    by_path: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Counts {
    fn count(&self, path: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if path.len() > MAX_COUNTED_PATH_LEN {
            return;
        }
        let mut by_path = self
            .by_path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = by_path.get_mut(path) {
            *n = n.saturating_add(1);
        } else if by_path.len() < MAX_COUNTED_PATHS {
            by_path.insert(path.to_owned(), 1);
        }
    }

    fn of(&self, path: &str) -> u64 {
        self.by_path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// A running demo origin.
pub struct DemoOrigin {
    /// Bound address.
    pub addr: SocketAddr,
}

/// Binds and serves the demo origin in the background.
pub async fn start(addr: SocketAddr) -> std::io::Result<DemoOrigin> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(Counts::default());
    let started = SystemTime::now();
    // The shared serve loop, with an edge listener's default bounds.
    let limits = firebreak_config::LimitsConfig::default();
    let conf = Arc::new(ListenerConf::new(
        "origin",
        &limits,
        false,
        Arc::new(AddressTable::new(
            limits.clients.max_connections_per_address,
        )),
    ));
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // The origin runs until the process ends: nothing ever stops it.
    let (_, stopping) = watch::channel(false);
    let handler = move |req, _client| {
        let hits = hits.clone();
        async move { serve(req, &hits, started).await }
    };
    tokio::spawn(accept_loop(listener, conf, permits, stopping, handler));
    Ok(DemoOrigin { addr })
}

fn query_u64(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

fn response(
    status: StatusCode,
    cache_control: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn serve(
    req: Request<Incoming>,
    hits: &Counts,
    started: SystemTime,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/__origin/stats" {
        let n = hits.total.load(Ordering::Relaxed);
        let asked = req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "path")
                .map(|(_, v)| v.into_owned())
        });
        let body = match asked {
            Some(p) => format!(
                "{{\"requests\":{n},\"path\":{},\"path_requests\":{}}}\n",
                serde_json::Value::String(p.clone()),
                hits.of(&p)
            ),
            None => format!("{{\"requests\":{n}}}\n"),
        };
        return response(StatusCode::OK, "no-store", body);
    }
    hits.count(&path);
    let now = SystemTime::now();
    let last_modified = HeaderValue::from_str(&httpdate::fmt_http_date(started)).ok();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let len = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        return response(
            StatusCode::OK,
            "no-store",
            format!("received {len} bytes\n"),
        );
    }
    match path.as_str() {
        "/" => {
            let mut r = response(StatusCode::OK, "public, max-age=60", INDEX);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r.headers_mut()
                .insert(header::ETAG, HeaderValue::from_static("\"index-v1\""));
            r
        }
        "/time" => response(
            StatusCode::OK,
            "no-store",
            format!("{}\n", httpdate::fmt_http_date(now)),
        ),
        "/api/data" => {
            let body = format!("{{\"generated\":\"{}\"}}\n", httpdate::fmt_http_date(now));
            let mut r = response(
                StatusCode::OK,
                "max-age=5, stale-while-revalidate=30, stale-if-error=600",
                body,
            );
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        "/vary" => {
            let lang = req
                .headers()
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("en")
                .to_owned();
            let greeting = if lang.starts_with("fr") {
                "bonjour"
            } else {
                "hello"
            };
            let mut r = response(StatusCode::OK, "max-age=300", format!("{greeting}\n"));
            r.headers_mut()
                .insert(header::VARY, HeaderValue::from_static("Accept-Language"));
            r
        }
        "/large" => {
            let mib = query_u64(&req, "mib").unwrap_or(8).min(MAX_LARGE_MIB);
            response(
                StatusCode::OK,
                "max-age=600",
                vec![b'x'; (mib * 1024 * 1024) as usize],
            )
        }
        "/slow" => {
            let ms = query_u64(&req, "ms").unwrap_or(1000).min(MAX_SLOW_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            response(StatusCode::OK, "max-age=60", format!("slept {ms} ms\n"))
        }
        p if p.starts_with("/private/") => {
            response(StatusCode::OK, "private, max-age=60", "per-user content\n")
        }
        p if p.starts_with("/forced/") => response(
            StatusCode::OK,
            "max-age=1",
            "forced to 30 s by the edge's rule\n",
        ),
        p if p.starts_with("/static/") => {
            let mut r = response(
                StatusCode::OK,
                "public, max-age=3600",
                format!("static object {p}\n{}", "x".repeat(960)),
            );
            r.headers_mut()
                .insert(header::ETAG, HeaderValue::from_static("\"static-v1\""));
            if let Some(lm) = last_modified {
                r.headers_mut().insert(header::LAST_MODIFIED, lm);
            }
            r.headers_mut()
                .insert("surrogate-key", HeaderValue::from_static("static"));
            r
        }
        _ => response(StatusCode::NOT_FOUND, "max-age=10", "not found\n"),
    }
}

const INDEX: &str = "<!doctype html><title>firebreak demo origin</title>\
<h1>firebreak demo origin</h1><ul>\
<li><a href=/static/hello.txt>/static/…</a> public, max-age=3600, ETag</li>\
<li><a href=/api/data>/api/data</a> max-age=5, stale-while-revalidate=30, stale-if-error=600</li>\
<li><a href=/vary>/vary</a> Vary: Accept-Language</li>\
<li><a href=/time>/time</a> no-store</li>\
<li><a href=/private/me>/private/…</a> private (and bypassed by a rule)</li>\
<li><a href=/forced/x>/forced/…</a> max-age=1, forced to 30 s by a rule</li>\
<li><a href=/slow?ms=1000>/slow?ms=N</a> answers after N ms</li>\
<li><a href=/large?mib=8>/large?mib=N</a> N MiB</li></ul>\n";
