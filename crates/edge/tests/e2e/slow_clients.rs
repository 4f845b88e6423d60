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
    assert!(later.cache_status().contains("hit"), "{}", later.cache_status());
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
    let origin = TestOrigin::start(move |_| {
        let (tx, rx) = mpsc::channel(1);
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![1u8; CHUNK]);
            for _ in 0..SIZE / CHUNK {
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
