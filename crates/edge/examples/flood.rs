//! A polite client's latency, unloaded and while another address floods the edge.
//!
//! ```text
//! cargo run -p firebreak-edge --example flood [-- POLITE_REQUESTS FLOOD_CONNECTIONS IDLE_SOCKETS]
//! ```
//!
//! One process: an origin, an edge (its own runtime, two workers), a flooder from 127.0.0.2
//! (`FLOOD_CONNECTIONS` keep-alive connections sending as fast as they are answered) and
//! 127.0.0.3 (`IDLE_SOCKETS` sockets that never send) and a polite client from 127.0.0.1 (one keep-alive
//! connection, one request every 5 ms, a cached 1 KiB object). Prints p50/p99 of the polite
//! client unloaded and under the flood, and their ratio (target: p99 within 2x). The edge
//! runs with the per-address limits of `[limits.clients]` below; the same run without them
//! (`--no-limits`) shows what the flood does to an unprotected edge.
#![allow(clippy::indexing_slicing)] // a measuring tool, not the product: its own fixed data
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const BODY: [u8; 1024] = [b'x'; 1024];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let no_limits = args.iter().any(|a| a == "--no-limits");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let polite_n = nums.first().copied().unwrap_or(1500);
    let flood_conns = nums.get(1).copied().unwrap_or(64);
    let idle = nums.get(2).copied().unwrap_or(500);

    // Origin and edge on their own runtime (two workers, as on the bench machine).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (edge_addr, _edge) = server_rt.block_on(async {
        let origin = origin().await;
        let clients = if no_limits {
            "max_connections_per_address = 100000".to_owned()
        } else {
            "max_connections_per_address = 16\nrequests_per_second = 300\nburst = 300".to_owned()
        };
        let toml = format!(
            r#"
[[listener]]
addr = "127.0.0.1:0"

[limits]
max_connections = 10000

[limits.clients]
{clients}

[[service]]
name = "bench"
hosts = ["localhost"]
default = true

[service.origin]
servers = [{{ addr = "{origin}" }}]
"#
        );
        let valid = firebreak_config::parse_str("flood.toml", &toml).unwrap();
        let edge = firebreak_edge::EdgeServer::start(valid).await.unwrap();
        (edge.local_addrs()[0], edge)
    });

    // Clients on another runtime.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async move {
        let mut polite = Polite::connect(edge_addr).await;
        for _ in 0..200 {
            polite.get().await; // warm the cache and the connection
        }
        let unloaded = polite.measure(polite_n).await;

        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FloodStats::default());
        let mut _idle = Vec::new();
        for _ in 0..idle {
            if let Ok(s) = connect_from("127.0.0.3", edge_addr).await {
                _idle.push(s);
            }
        }
        let mut flooders = Vec::new();
        for _ in 0..flood_conns {
            flooders.push(tokio::spawn(flood(edge_addr, stop.clone(), stats.clone())));
        }
        // Let the flood reach full speed.
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = stats.answered.load(Ordering::Relaxed);
        let started = Instant::now();
        let loaded = polite.measure(polite_n).await;
        let flood_rate = (stats.answered.load(Ordering::Relaxed) - before) as f64
            / started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for f in flooders {
            let _ = f.await;
        }

        println!(
            "edge {} | polite client: {polite_n} GETs (one every 5 ms) of a cached 1 KiB object from 127.0.0.1",
            if no_limits { "WITHOUT per-address limits" } else { "with per-address limits (16 connections, 300 req/s burst 300, 429 after 250 ms)" }
        );
        println!(
            "flood from 127.0.0.2: {flood_conns} keep-alive connections ({} got in), {idle} idle sockets from 127.0.0.3; {:.0} answers/s during the measurement ({} ok, {} 429)",
            stats.connected.load(Ordering::Relaxed),
            flood_rate,
            stats.ok.load(Ordering::Relaxed),
            stats.limited.load(Ordering::Relaxed),
        );
        println!("| | p50 (µs) | p99 (µs) | max (µs) | errors |");
        println!("|---|---|---|---|---|");
        for (name, s) in [("unloaded", &unloaded), ("under flood", &loaded)] {
            println!(
                "| {name} | {} | {} | {} | {} |",
                s.p50, s.p99, s.max, s.errors
            );
        }
        println!(
            "ratio under flood / unloaded: p50 {:.2}x, p99 {:.2}x (target p99 <= 2x)",
            loaded.p50 as f64 / unloaded.p50.max(1) as f64,
            loaded.p99 as f64 / unloaded.p99.max(1) as f64
        );
    });
}

async fn origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    let mut r = http::Response::new(Full::new(Bytes::from_static(&BODY)));
                    r.headers_mut()
                        .insert("cache-control", "max-age=3600".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    socket.connect(to).await
}

#[derive(Default)]
struct FloodStats {
    connected: AtomicU64,
    answered: AtomicU64,
    ok: AtomicU64,
    limited: AtomicU64,
}

async fn flood(addr: SocketAddr, stop: Arc<AtomicBool>, stats: Arc<FloodStats>) {
    let Ok(stream) = connect_from("127.0.0.2", addr).await else {
        return;
    };
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return;
    };
    tokio::spawn(conn);
    let mut counted = false;
    let mut path = 0u64;
    while !stop.load(Ordering::Relaxed) {
        path += 1;
        // Half hits, half distinct misses: the flood also reaches the origin.
        let uri = if path & 1 == 0 {
            "/polite".to_owned()
        } else {
            format!("/flood/{}", path % 1000)
        };
        let req = http::Request::get(uri)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        if send.ready().await.is_err() {
            return;
        }
        let Ok(resp) = send.send_request(req).await else {
            return;
        };
        if !counted {
            counted = true;
            stats.connected.fetch_add(1, Ordering::Relaxed);
        }
        match resp.status().as_u16() {
            200 => stats.ok.fetch_add(1, Ordering::Relaxed),
            429 => stats.limited.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let _ = resp.into_body().collect().await;
        stats.answered.fetch_add(1, Ordering::Relaxed);
    }
}

struct Polite {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

struct Summary {
    p50: u128,
    p99: u128,
    max: u128,
    errors: usize,
}

impl Polite {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = connect_from("127.0.0.1", addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { send }
    }

    async fn get(&mut self) -> bool {
        let req = http::Request::get("/polite")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        if let Err(e) = self.send.ready().await {
            eprintln!("polite: {e}");
            return false;
        }
        match self.send.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let ok = resp.into_body().collect().await.is_ok();
                if status != 200 || !ok {
                    eprintln!("polite: status {status}, body complete: {ok}");
                }
                status == 200 && ok
            }
            Err(e) => {
                eprintln!("polite: {e}");
                false
            }
        }
    }

    /// `n` requests, one every 5 ms (200/s: a polite client, under its 300/s limit).
    async fn measure(&mut self, n: usize) -> Summary {
        let mut lat = Vec::with_capacity(n);
        let mut errors = 0;
        let mut pace = tokio::time::interval(Duration::from_millis(5));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..n {
            pace.tick().await;
            let t = Instant::now();
            if !self.get().await {
                errors += 1;
            }
            lat.push(t.elapsed().as_micros());
        }
        lat.sort_unstable();
        let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        Summary {
            p50: at(0.50),
            p99: at(0.99),
            max: *lat.last().unwrap(),
            errors,
        }
    }
}
