//! Clients that do not read: they never slow the fill, the store or anyone else, and fills
//! nobody waits for any more are cut off.

use crate::common::*;
use bytes::Bytes;
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

const BIG: usize = 12 * 1024 * 1024;

/// A client with a tiny receive buffer that sends a GET and then never reads.
async fn stuck_client(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn stuck_client_does_not_hold_back_fill_or_waiters() {
    let (asked_tx, mut asked) = mpsc::unbounded_channel::<()>();
    let body = Bytes::from(vec![7u8; BIG]);
    let origin = TestOrigin::start(move |_| {
        let _ = asked_tx.send(());
        Reply::ok(body.clone()).cc("max-age=600")
    })
    .await;
    // Waiters would wait a minute for a fill held back by the stuck client.
    let cfg = config(origin.addr, "")
        .replace("coalesce_wait_ms = 5000", "coalesce_wait_ms = 60000")
        + "\n[fetch]\nclient_write_timeout_ms = 600000\n";
    let edge = Arc::new(start_edge(&cfg).await);
    let stuck = stuck_client(edge.addr, "/big").await;
    tokio::time::timeout(Duration::from_secs(10), asked.recv())
        .await
        .expect("the origin was not asked");
    // A coalesced waiter gets the object as soon as the origin has sent it, although the
    // first client has read (almost) nothing.
    let waiter = edge.get("/big").await;
    assert_eq!(waiter.status, StatusCode::OK);
    assert_eq!(waiter.body.len(), BIG);
    assert!(
        waiter.cache_status().contains("hit"),
        "{}",
        waiter.cache_status()
    );
    let later = edge.get("/big").await;
    assert!(
        later.cache_status().contains("hit"),
        "{}",
        later.cache_status()
    );
    assert_eq!(origin.count(), 1, "one origin request for everyone");
    drop(stuck);
}

#[tokio::test]
async fn abandoned_fills_stay_within_budget() {
    const FILLS: usize = 8;
    const SIZE: usize = 6 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    // Each origin body reports whether it was sent whole or cut off by the edge.
    let (done_tx, mut done) = mpsc::unbounded_channel::<bool>();
    // The origin sends the first chunks, then the rest once every client has left: the edge
    // serves connections on its own threads and could otherwise read all 6 MiB into socket
    // buffers before a client leaves, which is a fill that was not abandoned.
    let (gone_tx, gone) = tokio::sync::watch::channel(false);
    let origin = TestOrigin::start(move |_| {
        let (tx, rx) = mpsc::channel(1);
        let done_tx = done_tx.clone();
        let mut gone = gone.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![1u8; CHUNK]);
            for i in 0..SIZE / CHUNK {
                if i == 2 {
                    let _ = gone.wait_for(|g| *g).await;
                }
                if tx.send(Ok(chunk.clone())).await.is_err() {
                    let _ = done_tx.send(false);
                    return;
                }
            }
            // Handed over whole (all but the last chunk or two were read by the edge).
            let _ = done_tx.send(true);
        });
        Reply::streamed(rx)
            .cc("max-age=600")
            .header("content-length", SIZE.to_string())
    })
    .await;
    let cfg = config(origin.addr, "") + "\n[fetch]\nabandoned_fill_bytes = 1048576\n";
    let edge = start_edge(&cfg).await;
    for i in 0..FILLS {
        let mut s = TcpStream::connect(edge.addr).await.unwrap();
        s.write_all(format!("GET /f{i} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut s, Duration::from_secs(10))
            .await
            .expect("no response head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        // The client leaves after the first bytes.
        drop(s);
    }
    gone_tx.send_replace(true);
    let mut whole = 0;
    for _ in 0..FILLS {
        let sent_whole = tokio::time::timeout(Duration::from_secs(20), done.recv())
            .await
            .expect("an origin body neither finished nor was cut off")
            .unwrap();
        whole += usize::from(sent_whole);
    }
    assert_eq!(
        whole, 0,
        "fills of {SIZE} bytes nobody waited for were read to the end"
    );
    let stats = edge.handle.state().store.stats();
    assert_eq!(stats.fill_bytes, 0, "{stats:?}");
    assert_eq!(stats.keys, 0, "{stats:?}");
}

/// Reads at least `n` bytes from a raw connection, within 10 s; returns how many it read.
async fn read_body(s: &mut TcpStream, n: usize) -> usize {
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    let read = async {
        while got < n {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(k) => got += k,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("body bytes did not come");
    assert!(got >= n, "connection closed after {got} bytes");
    got
}

#[tokio::test]
async fn fills_over_budget_stream_through_unstored() {
    const MIB: usize = 1024 * 1024;
    // /held: 12 MiB fed by the test; anything else: 8 MiB at once.
    let (held_tx, held_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let held_rx = Arc::new(std::sync::Mutex::new(Some(held_rx)));
    let origin = TestOrigin::start(move |r| {
        if r.uri.path() == "/held" {
            if let Some(rx) = held_rx.lock().unwrap().take() {
                return Reply::streamed(rx)
                    .cc("max-age=600")
                    .header("content-length", (12 * MIB).to_string());
            }
        }
        Reply::ok(vec![3u8; 8 * MIB]).cc("max-age=600")
    })
    .await;
    // The budget holds one largest object: 16 MiB.
    let cfg = config(origin.addr, "") + "\n[fetch]\nfill_budget_bytes = 16777216\n";
    let edge = start_edge(&cfg).await;
    let (last_tx, last_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![5u8; MIB]);
        for _ in 0..11 {
            held_tx.send(Ok(chunk.clone())).await.unwrap();
        }
        let _ = last_rx.await;
        held_tx.send(Ok(chunk)).await.unwrap();
    });
    let mut held = TcpStream::connect(edge.addr).await.unwrap();
    held.write_all(b"GET /held HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut held, Duration::from_secs(10)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Its client has 10 MiB: the fill keeps at least that much, 6 MiB of budget are left.
    let got = read_body(&mut held, 10 * MIB).await;
    let state = edge.handle.state().clone();
    assert!(state.store.stats().fill_bytes >= 10 * MIB as u64);
    // A fill that does not fit streams through whole, and is not stored.
    let over = edge.get("/over").await;
    assert_eq!(over.status, StatusCode::OK);
    assert_eq!(over.body.len(), 8 * MIB);
    let again = edge.get("/over").await;
    assert!(
        again.cache_status().contains("fwd=miss"),
        "{}",
        again.cache_status()
    );
    assert!(state.store.stats().fill_bytes <= 16 * MIB as u64);
    // The held fill completes and is stored; its reservation is given back.
    last_tx.send(()).unwrap();
    // (`read_head` may have taken a few KiB of the body with the head.)
    read_body(&mut held, 12 * MIB - got - 4096).await;
    let hit = edge.get("/held").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(state.store.stats().fill_bytes, 0);
}

/// The edge's count of client connections it closed for `reason`.
fn closed_for(reason: &str) -> u64 {
    let text = firebreak_edge::telemetry::prometheus()
        .map(|h| h.render())
        .unwrap_or_default();
    let series =
        format!("firebreak_connections_closed_total{{listener=\"client\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn stuck_client_socket_is_closed_after_the_send_timeout() {
    let body = Bytes::from(vec![7u8; BIG]);
    let origin = TestOrigin::start(move |_| Reply::ok(body.clone()).cc("max-age=600")).await;
    let cfg = with_limits(
        &config(origin.addr, ""),
        "header_read_timeout_ms = 1000",
        "send_timeout_ms = 1000",
    );
    let edge = start_edge(&cfg).await;
    let before = closed_for("send_timeout");
    let mut stuck = stuck_client(edge.addr, "/big").await;
    // The edge gives up on the socket: counted, and the connection is gone.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while closed_for("send_timeout") == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a client that stopped reading was never closed"
        );
        tick.tick().await;
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stuck.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection is still open");
    assert!(
        got.len() < BIG,
        "the whole body arrived: {} bytes",
        got.len()
    );
    // Everyone else is served.
    assert_eq!(edge.get("/big").await.body.len(), BIG);
}
