//! Clients that connect and then send nothing, or send a request head too slowly: every such
//! wait ends at a deadline and the edge closes the connection.

use crate::common::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// A HEADERS frame on stream 1 without END_HEADERS: the header block never ends.
const OPEN_HEADERS: &[u8] = &[0, 0, 1, 1, 0, 0, 0, 0, 1, 0x82];

/// Every deadline at 1 s; the edge must close within this (generous) limit.
const CLOSED_WITHIN: Duration = Duration::from_secs(10);

fn short_deadlines(origin: std::net::SocketAddr) -> String {
    with_limits(
        &config(origin, ""),
        "header_read_timeout_ms = 1000",
        "first_bytes_timeout_ms = 1000\nkeepalive_timeout_ms = 1000\nh2_idle_timeout_ms = 1000",
    )
}

#[tokio::test]
async fn h2_preface_only_sockets_are_closed() {
    let origin = TestOrigin::start(|_| Reply::ok("x")).await;
    let edge = start_edge(&short_deadlines(origin.addr)).await;
    let mut waits = Vec::new();
    for i in 0..200 {
        let addr = edge.addr;
        waits.push(tokio::spawn(async move {
            let mut s = connect_from("127.0.0.2", addr).await.unwrap();
            s.write_all(PREFACE).await.unwrap();
            if i & 1 == 0 {
                s.write_all(SETTINGS).await.unwrap();
            }
            closed_within(&mut s, CLOSED_WITHIN).await
        }));
    }
    let mut open = 0;
    for w in waits {
        if !w.await.unwrap() {
            open += 1;
        }
    }
    assert_eq!(open, 0, "h2 connections without a stream left open");
    assert_eq!(edge.get("/after").await.status, 200);
}

#[tokio::test]
async fn slowloris_head_is_cut_off() {
    let origin = TestOrigin::start(|_| Reply::ok("x")).await;
    let edge = start_edge(&short_deadlines(origin.addr)).await;
    let h2_unfinished_headers = [PREFACE, SETTINGS, OPEN_HEADERS].concat();
    let cases: [(&str, &[u8]); 5] = [
        ("one byte", b"G"),
        (
            "HTTP/1 head cut short",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: a",
        ),
        ("h2 preface cut short", b"PRI * HTTP/2.0\r\n"),
        ("h2 header block never ended", &h2_unfinished_headers),
        (
            "HTTP/1 keep-alive idle after a request",
            b"GET /ka HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let mut s = connect_from("127.0.0.2", edge.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        assert!(
            closed_within(&mut s, CLOSED_WITHIN).await,
            "{what}: connection still open after {CLOSED_WITHIN:?}"
        );
    }
    assert_eq!(edge.get("/after").await.status, 200);
}

#[tokio::test]
async fn idle_h2_connection_is_closed_after_its_last_stream() {
    use http_body_util::{BodyExt, Empty};
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("max-age=60")).await;
    let edge = start_edge(&short_deadlines(origin.addr)).await;
    // A well-behaved h2 client (it answers PINGs) that makes one request and then idles.
    let stream = connect_from("127.0.0.2", edge.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://localhost/h2")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
    // The edge ends the connection (GOAWAY, close) once it has had no stream for 1 s.
    let ended = tokio::time::timeout(CLOSED_WITHIN, conn).await;
    assert!(
        ended.is_ok(),
        "idle h2 connection still open after {CLOSED_WITHIN:?}"
    );
}
