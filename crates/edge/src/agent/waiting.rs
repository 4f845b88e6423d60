//! The health endpoint of an edge that has no configuration yet (empty data directory, control
//! plane unreachable or without a version for it): the admin address answers `/healthz` at once
//! with 503 `waiting for first configuration` (and the last reason the edge could not get one),
//! so a supervisor tells a waiting edge from a dead one. Every other path answers the same
//! 503. It stops (its listener closed) just before the edge server binds the admin address
//! with the first configuration, whose `/healthz` then answers 200.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// Longest life of one connection.
const CONNECTION_LIFE: Duration = Duration::from_secs(10);
/// Longest note shown.
const MAX_NOTE: usize = 512;

/// The waiting edge's health listener.
pub struct WaitingHealth {
    addr: SocketAddr,
    note: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl WaitingHealth {
    /// Binds `listen` and answers there until stopped.
    pub async fn start(listen: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let note = Arc::new(Mutex::new(String::new()));
        let task = tokio::spawn(serve(listener, note.clone()));
        tracing::info!(%addr, "waiting for the first configuration; /healthz answers 503 meanwhile");
        Ok(Self { addr, note, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the reason shown after the status line (why there is no configuration yet).
    pub fn note(&self, why: &str) {
        if let Ok(mut n) = self.note.lock() {
            *n = why.chars().take(MAX_NOTE).collect();
        }
    }

    /// Closes the listener and every connection; returns once the address is free.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for WaitingHealth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, note: Arc<Mutex<String>>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let note = note.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                // `/healthz` and (nothing else being served yet) every other path.
                let _ = req;
                let body = answer(&note);
                async move { Ok::<_, std::convert::Infallible>(body) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFE, conn).await;
        });
    }
}

fn answer(note: &Mutex<String>) -> Response<Full<Bytes>> {
    let note = note.lock().map(|n| n.clone()).unwrap_or_default();
    let mut body = String::from("waiting for first configuration\n");
    if !note.is_empty() {
        body.push_str(&note);
        body.push('\n');
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    r
}
