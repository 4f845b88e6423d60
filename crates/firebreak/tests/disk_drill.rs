//! The disk tier against a crash: `firebreak edge` with `--disk-dir` is killed with SIGKILL
//! while clients load it, started again on the same directory, and then every object must
//! be served whole and exact — the ones its disk held as hits, without the origin — and
//! none truncated or corrupted (checksums on disk; a torn write is never served).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod procs;
use procs::{free_port, log_file, temp_dir, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_firebreak");
const TOKEN: &str = "disk-drill-admin-token";
/// Distinct objects.
const OBJECTS: usize = 400;

/// Object `n`'s size: from a few bytes to several 64 KiB blocks, and two above the memory
/// promotion bound (streamed from disk).
fn size_of(n: usize) -> usize {
    match n % 10 {
        0 => 5,
        1..=5 => 1024 + n * 7,
        6..=8 => 70_000 + n * 311,
        _ if n % 200 == 9 => 1_300_000 + n,
        _ => 200_000,
    }
}

fn body_of(n: usize) -> Vec<u8> {
    (0..size_of(n))
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(n as u32)
                .to_le_bytes()[1]
        })
        .collect()
}

/// An origin on 127.0.0.1 serving `/o/N` (cacheable for an hour) and counting requests.
async fn origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    c.fetch_add(1, Ordering::SeqCst);
                    let n: usize = req
                        .uri()
                        .path()
                        .trim_start_matches("/o/")
                        .parse()
                        .unwrap_or(0);
                    async move {
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .header("cache-control", "max-age=3600")
                                .header("etag", format!("\"{n}\""))
                                .body(Full::new(Bytes::from(body_of(n))))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, count)
}

struct Edge {
    proc: Proc,
    port: u16,
    admin: u16,
}

fn start_edge(origin: SocketAddr, dir: &Path, logs: &Path, name: &str) -> Edge {
    let (port, admin) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["edge", "--origin", &origin.to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--admin-token", TOKEN])
        // A memory tier smaller than the working set: most hits after the restart are
        // read from disk.
        .args(["--cache-mib", "16"])
        .args([
            "--disk-dir",
            &dir.display().to_string(),
            "--disk-mib",
            "512",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file(logs, name))
        .spawn()
        .unwrap();
    Edge {
        proc: Proc(child),
        port,
        admin,
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn get(
    c: &Client<HttpConnector, Full<Bytes>>,
    port: u16,
    path: &str,
    token: Option<&str>,
) -> Option<(StatusCode, String, Bytes)> {
    let mut req = Request::get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status();
    let cache = resp
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some((status, cache, body))
}

/// A metric's value from the edge's `/metrics`.
async fn metric(c: &Client<HttpConnector, Full<Bytes>>, admin: u16, name: &str) -> Option<f64> {
    let (_, _, body) = get(c, admin, "/metrics", Some(TOKEN)).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `metric` until `ok` holds, failing after `limit`.
async fn wait_metric(
    c: &Client<HttpConnector, Full<Bytes>>,
    admin: u16,
    name: &str,
    limit: Duration,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = metric(c, admin, name).await {
            if ok(v) {
                return v;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} did not reach the expected value within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_it_held_and_serves_nothing_torn() {
    let (origin, origin_count) = origin().await;
    let logs = temp_dir("disk-drill", "logs");
    let dir = temp_dir("disk-drill", "cache");
    let c = client();

    let mut edge = start_edge(origin, &dir, &logs, "edge-1");
    wait_metric(
        &c,
        edge.admin,
        "firebreak_disk_recovering",
        Duration::from_secs(30),
        |v| v == 0.0,
    )
    .await;

    // Load: four clients walking the objects in different orders, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for k in 0..4usize {
        let (stop, c, port) = (stop.clone(), c.clone(), edge.port);
        load.push(tokio::spawn(async move {
            let mut i = k;
            while !stop.load(Ordering::Relaxed) {
                let n = (i * 7 + k * 13) % OBJECTS;
                if let Some((StatusCode::OK, _, body)) =
                    get(&c, port, &format!("/o/{n}"), None).await
                {
                    assert_eq!(
                        body.len(),
                        size_of(n),
                        "object {n} cut short before the kill"
                    );
                }
                i += 1;
            }
        }));
    }
    // Killed mid-load, once the disk holds a good part of the objects.
    wait_metric(
        &c,
        edge.admin,
        "firebreak_disk_objects",
        Duration::from_secs(120),
        |v| v >= (OBJECTS / 2) as f64,
    )
    .await;
    let held_before = metric(&c, edge.admin, "firebreak_disk_objects")
        .await
        .unwrap_or(0.0);
    edge.proc.kill(); // SIGKILL, by PID
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }

    let edge = start_edge(origin, &dir, &logs, "edge-2");
    wait_metric(
        &c,
        edge.admin,
        "firebreak_disk_recovering",
        Duration::from_secs(60),
        |v| v == 0.0,
    )
    .await;
    let recovered = metric(&c, edge.admin, "firebreak_disk_recovered_objects_total")
        .await
        .unwrap_or(0.0) as usize;
    assert!(
        recovered as f64 >= held_before * 0.9 && recovered > 0,
        "recovered {recovered} of the {held_before} objects the disk held at the kill"
    );
    let before = origin_count.load(Ordering::SeqCst);
    let mut hits = 0;
    let mut misses = 0;
    for n in 0..OBJECTS {
        let (status, cache, body) = get(&c, edge.port, &format!("/o/{n}"), None)
            .await
            .unwrap_or_else(|| panic!("object {n}: no whole answer"));
        assert_eq!(status, StatusCode::OK, "object {n}");
        assert_eq!(body.len(), size_of(n), "object {n} served truncated");
        assert!(body[..] == body_of(n)[..], "object {n} served corrupted");
        if cache.contains("hit") {
            hits += 1;
        } else {
            misses += 1;
        }
    }
    assert_eq!(
        origin_count.load(Ordering::SeqCst) - before,
        misses,
        "only the misses went to the origin"
    );
    assert!(
        hits >= recovered,
        "{hits} hits, {recovered} recovered objects"
    );
    println!(
        "disk drill: {held_before} objects on disk at the SIGKILL, {recovered} recovered, {hits} hits and {misses} misses of {OBJECTS} after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_to_memory_and_never_stops_the_edge() {
    let (origin, _) = origin().await;
    let logs = temp_dir("disk-drill", "full-logs");
    let dir = temp_dir("disk-drill", "full-cache");
    let c = client();
    // The cache directory is a 1 MiB tmpfs in the edge's own mount namespace; the tier is
    // told it may use 512 MiB: the disk fills long before the bound.
    let (port, admin) = (free_port(), free_port());
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {dir} && exec {BIN} edge --origin {origin} --listen 127.0.0.1:{port} --admin 127.0.0.1:{admin} --admin-token {TOKEN} --cache-mib 64 --disk-dir {dir} --disk-mib 512",
        dir = dir.display(),
    );
    let _edge = Proc(
        Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file(&logs, "edge-full"))
            .spawn()
            .expect("unshare (util-linux) is needed"),
    );
    wait_metric(
        &c,
        admin,
        "firebreak_disk_recovering",
        Duration::from_secs(30),
        |v| v == 0.0,
    )
    .await;
    for n in 0..60 {
        let (status, _, body) = get(&c, port, &format!("/o/{n}"), None)
            .await
            .unwrap_or_else(|| panic!("object {n}: no answer"));
        assert_eq!(status, StatusCode::OK);
        assert!(body[..] == body_of(n)[..], "object {n}");
    }
    // Writes failed, were counted, and the tier went memory-only; nothing else changed.
    wait_metric(
        &c,
        admin,
        "firebreak_disk_degraded",
        Duration::from_secs(30),
        |v| v == 1.0,
    )
    .await;
    let text = {
        let (_, _, body) = get(&c, admin, "/metrics", Some(TOKEN)).await.unwrap();
        String::from_utf8_lossy(&body).into_owned()
    };
    assert!(
        text.lines()
            .any(|l| l.starts_with("firebreak_disk_writes_total{result=\"error\"}")),
        "write errors counted:\n{text}"
    );
    // Still serving, from memory: every object a hit now.
    for n in 0..60 {
        let (status, cache, body) = get(&c, port, &format!("/o/{n}"), None).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(cache.contains("hit"), "object {n}: {cache}");
        assert!(body[..] == body_of(n)[..], "object {n}");
    }
    let log = std::fs::read_to_string(logs.join("edge-full.log")).unwrap_or_default();
    assert!(
        log.contains("write failed"),
        "the failure is logged:\n{log}"
    );
}
