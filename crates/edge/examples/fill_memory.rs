//! Measures the edge's memory under abandoned fills: twenty clients each ask for a different
//! 60 MiB object and leave after the first bytes, against the default 256 MiB cache. Prints
//! the process's resident memory before and its peak after (Linux `/proc/self/status`).
//!
//! `cargo run -p firebreak-edge --example fill_memory [read]` (uses only the public API, so
//! the same program measures any version of the edge). With `read`, the twenty clients stay
//! and read every byte at once instead: fills in progress are then bounded by the fill
//! budget, not by how many clients ask.
#![allow(clippy::indexing_slicing)] // a measuring tool, not the product: its own fixed data
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FILLS: usize = 20;
const MIB: usize = 1024 * 1024;
const OBJECT: usize = 60 * MIB;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Counts origin bodies that ended (sent whole or dropped by the edge).
struct Ended(Arc<AtomicUsize>, usize, Arc<AtomicUsize>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        self.2.fetch_add(self.1, Ordering::SeqCst);
    }
}

#[tokio::main]
async fn main() {
    let chunk = Bytes::from(vec![9u8; MIB]);
    let ended = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let (e2, s2) = (ended.clone(), sent.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (chunk, ended, sent) = (chunk.clone(), e2.clone(), s2.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let chunk = chunk.clone();
                    let guard = Ended(ended.clone(), 0, sent.clone());
                    async move {
                        let frames =
                            futures_util::stream::unfold((0usize, guard), move |(i, mut guard)| {
                                let chunk = chunk.clone();
                                async move {
                                    if i == OBJECT / MIB {
                                        return None;
                                    }
                                    guard.1 += MIB;
                                    Some((
                                        Ok::<_, std::io::Error>(Frame::data(chunk)),
                                        (i + 1, guard),
                                    ))
                                }
                            });
                        let mut resp = Response::new(StreamBody::new(frames));
                        let h = resp.headers_mut();
                        h.insert("cache-control", "max-age=600".parse().unwrap());
                        h.insert("content-length", OBJECT.to_string().parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let toml = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n\n[[service]]\nname = \"m\"\nhosts = [\"localhost\"]\ndefault = true\n\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n"
    );
    let valid = firebreak_config::parse_str("fill_memory.toml", &toml).unwrap();
    let edge = firebreak_edge::EdgeServer::start(valid).await.unwrap();
    let addr = edge.local_addrs()[0];
    let before = status_kib("VmRSS:");
    let started = Instant::now();
    let read_all = std::env::args().any(|a| a == "read");
    let mut readers = Vec::new();
    for i in 0..FILLS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /obj{i} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = s.read(&mut buf).await;
        if read_all {
            readers.push(tokio::spawn(async move {
                let mut got = 0usize;
                while got < OBJECT {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
            }));
        } else {
            drop(s);
        }
    }
    for r in readers {
        let _ = r.await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ended.load(Ordering::SeqCst) < FILLS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = edge.state().store.stats();
    println!(
        "{FILLS} {} fills of {} MiB, cache 256 MiB: RSS before {} MiB, peak {} MiB, now {} MiB; origin bodies ended {}/{FILLS}, origin bytes sent {} MiB, cache {} MiB in {} objects, {:.1} s",
        if read_all { "read" } else { "abandoned" },
        OBJECT / MIB,
        before / 1024,
        status_kib("VmHWM:") / 1024,
        status_kib("VmRSS:") / 1024,
        ended.load(Ordering::SeqCst),
        sent.load(Ordering::SeqCst) / MIB,
        stats.bytes / MIB as u64,
        stats.keys,
        started.elapsed().as_secs_f64(),
    );
}
