//! Floods: many idle sockets, a client that sends as fast as it can, more requests than the
//! edge should hold. Others keep being served.

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Barrier, Semaphore};

const TOKEN: &str = "flood-test-admin-token-0123456789";

fn with_admin(base: String) -> String {
    format!("{base}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n")
}

/// Opens `n` connections from `from` that never send anything, a few at a time (a burst
/// larger than the accept queue would leave connections the server never saw, half-open on
/// the client side only); those not accepted within 5 s are skipped.
async fn idle_sockets(from: &str, to: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        if let Ok(s) = connect_from(from, to).await {
            out.push(s);
        }
    }
    out
}

#[tokio::test]
async fn idle_sockets_do_not_take_the_edge_offline() {
    let origin = TestOrigin::start(|_| Reply::ok("fine").cc("max-age=60")).await;
    let toml = with_limits(
        &config(origin.addr, ""),
        "max_connections = 64",
        "first_bytes_timeout_ms = 1000\nmax_connections_per_address = 16",
    );
    let edge = start_edge(&toml).await;
    let mut flood = idle_sockets("127.0.0.2", edge.addr, 180).await;
    assert!(flood.len() >= 150, "only {} sockets opened", flood.len());
    for i in 0..20 {
        assert_eq!(edge.get(&format!("/page/{i}")).await.status, 200);
    }
    // And the idle sockets themselves are closed by the edge, not kept forever.
    let waits: Vec<_> = flood
        .drain(..)
        .map(|mut s| {
            tokio::spawn(async move { closed_within(&mut s, Duration::from_secs(10)).await })
        })
        .collect();
    let mut open = 0;
    for w in waits {
        if !w.await.unwrap() {
            open += 1;
        }
    }
    assert_eq!(open, 0, "idle sockets left open");
}

#[tokio::test]
async fn idle_flood_on_admin_keeps_healthz_up() {
    let origin = TestOrigin::start(|_| Reply::ok("fine")).await;
    // Long deadlines: it is the per-address bounds, not the timeouts, that keep room.
    let toml = with_admin(with_limits(
        &config(origin.addr, ""),
        "max_connections = 64\nheader_read_timeout_ms = 60000",
        "first_bytes_timeout_ms = 60000\nmax_connections_per_address = 16",
    ));
    let edge = start_edge(&toml).await;
    let admin = edge.handle.admin_addr().unwrap();
    let _admin_flood = idle_sockets("127.0.0.2", admin, 150).await;
    let _client_flood = idle_sockets("127.0.0.3", edge.addr, 180).await;
    assert_eq!(status_from("127.0.0.1", admin, "/healthz").await, Some(200));
    let purge = format!(
        "POST /purge/all?service=test HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange_from("127.0.0.1", admin, purge.as_bytes()).await;
    assert_eq!(status_of(&answer), Some(200), "{answer:?}");
    assert_eq!(status_from("127.0.0.1", edge.addr, "/x").await, Some(200));
    assert_eq!(status_from("127.0.0.4", admin, "/healthz").await, Some(200));
}

#[tokio::test]
async fn flooding_client_does_not_starve_a_polite_one() {
    let origin = TestOrigin::start(|_| Reply::ok("fine").cc("max-age=60")).await;
    // The fleet allows a lot; the service overrides it with a small bucket.
    let base = format!(
        "{}\n[service.clients]\nrequests_per_second = 20\nburst = 20\n",
        config(origin.addr, "")
    );
    let toml = with_admin(with_limits(
        &base,
        "max_connections = 32",
        "max_connections_per_address = 8\nrequests_per_second = 100000",
    ));
    let edge = start_edge(&toml).await;
    let answered = Arc::new(Semaphore::new(0));
    let (ok, limited, with_retry_after) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut flooders = Vec::new();
    for _ in 0..32 {
        let (addr, answered) = (edge.addr, answered.clone());
        let (ok, limited, with_retry_after) =
            (ok.clone(), limited.clone(), with_retry_after.clone());
        flooders.push(tokio::spawn(async move {
            let Ok(stream) = connect_from("127.0.0.2", addr).await else {
                return;
            };
            let Ok((mut send, conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return;
            };
            tokio::spawn(conn);
            loop {
                let req = http::Request::get("/flood")
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                if send.ready().await.is_err() {
                    return;
                }
                let Ok(resp) = send.send_request(req).await else {
                    return;
                };
                match resp.status().as_u16() {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        if resp.headers().contains_key("retry-after") {
                            with_retry_after.fetch_add(1, Ordering::Relaxed);
                        }
                        limited.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => 0,
                };
                let _ = resp.into_body().collect().await;
                answered.add_permits(1);
            }
        }));
    }
    // The flood is on: its connections are open and answered.
    let on = tokio::time::timeout(Duration::from_secs(10), answered.acquire_many(60)).await;
    assert!(on.is_ok(), "the flood never got going");
    for i in 0..10 {
        let r = edge.get(&format!("/polite/{i}")).await;
        assert_eq!(r.status, 200, "polite request {i}: {}", r.text());
    }
    assert!(
        limited.load(Ordering::Relaxed) > 0,
        "the flooder was never limited"
    );
    assert_eq!(
        with_retry_after.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        "429 without Retry-After"
    );
    let metrics = format!(
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let admin = edge.handle.admin_addr().unwrap();
    let text = exchange_from("127.0.0.1", admin, metrics.as_bytes())
        .await
        .unwrap_or_default();
    assert!(
        text.contains("firebreak_rate_limited_total{service=\"test\"}"),
        "rate-limited requests not counted by service"
    );
    for f in flooders {
        f.abort();
    }
}

#[tokio::test]
async fn overload_sheds_with_503() {
    let gate = Arc::new(Barrier::new(5));
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let g = gate.clone();
    let origin = TestOrigin::start(move |r| {
        if r.uri.path().starts_with("/slow") {
            let _ = seen_tx.send(());
            Reply::ok("slow").cc("no-store").barrier(g.clone())
        } else {
            Reply::ok("fast").cc("no-store")
        }
    })
    .await;
    let toml = with_admin(with_limits(
        &config(origin.addr, ""),
        "",
        "max_requests_in_flight = 4",
    ));
    let edge = start_edge(&toml).await;
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let addr = edge.addr;
            tokio::spawn(async move { status_from("127.0.0.1", addr, &format!("/slow/{i}")).await })
        })
        .collect();
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("slow requests did not reach the origin");
    }
    // Four requests in flight: the fifth is shed at once.
    let shed = get_from("127.0.0.1", edge.addr, "/fast").await;
    assert_eq!(status_of(&shed), Some(503), "{shed:?}");
    assert!(
        shed.as_deref()
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("retry-after: 1"),
        "{shed:?}"
    );
    let admin = edge.handle.admin_addr().unwrap();
    assert_eq!(status_from("127.0.0.1", admin, "/healthz").await, Some(200));
    tokio::time::timeout(Duration::from_secs(10), gate.wait())
        .await
        .expect("barrier");
    for s in slow {
        assert_eq!(s.await.unwrap(), Some(200));
    }
    assert_eq!(
        status_from("127.0.0.1", edge.addr, "/fast").await,
        Some(200)
    );
}
