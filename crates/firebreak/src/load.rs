//! A small, bounded synthetic load on loopback: `firebreak up` drives it during bakes so that
//! a local fleet's gates have traffic to judge, and `firebreak drill` measures with it. Each
//! edge gets its own paced loop; answers are counted per edge (5xx and transport failures are
//! failures).

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The paths requested, in turn: cached, stale-while-revalidate, and uncached (bypass) ones
/// so that a broken origin shows.
const PATHS: &[&str] = &[
    "/static/hello.txt",
    "/private/a",
    "/api/data",
    "/private/b",
    "/",
];

/// Counts of one edge.
#[derive(Debug, Default)]
pub struct EdgeCounts {
    /// Answers below 500.
    pub ok: AtomicU64,
    /// 5xx answers and requests that got no answer.
    pub failed: AtomicU64,
}

/// A snapshot: edge id → (ok, failed).
pub type Snapshot = BTreeMap<String, (u64, u64)>;

/// A running load.
pub struct Load {
    counts: Vec<(String, Arc<EdgeCounts>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `per_edge` requests per second against each `(id, addr)` (Host `localhost`).
    pub fn start(edges: &[(String, SocketAddr)], per_edge: u32) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let gap = Duration::from_micros(1_000_000 / u64::from(per_edge.clamp(1, 1000)));
        let mut counts = Vec::new();
        let mut tasks = Vec::new();
        for (id, addr) in edges {
            let c = Arc::new(EdgeCounts::default());
            counts.push((id.clone(), c.clone()));
            let (client, addr) = (client.clone(), *addr);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(gap);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut i = 0usize;
                loop {
                    tick.tick().await;
                    let path = PATHS.get(i % PATHS.len()).copied().unwrap_or("/");
                    i = i.wrapping_add(1);
                    let Ok(req) = Request::get(format!("http://{addr}{path}"))
                        .header("host", "localhost")
                        .body(Empty::new())
                    else {
                        continue;
                    };
                    let answer = tokio::time::timeout(Duration::from_secs(5), async {
                        let resp = client.request(req).await.ok()?;
                        let status = resp.status();
                        resp.into_body().collect().await.ok()?;
                        Some(status)
                    })
                    .await
                    .ok()
                    .flatten();
                    match answer {
                        Some(s) if s.as_u16() < 500 => c.ok.fetch_add(1, Ordering::Relaxed),
                        _ => c.failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        Self { counts, tasks }
    }

    /// Counts so far.
    pub fn snapshot(&self) -> Snapshot {
        self.counts
            .iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    (
                        c.ok.load(Ordering::Relaxed),
                        c.failed.load(Ordering::Relaxed),
                    ),
                )
            })
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
