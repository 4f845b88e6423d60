//! Origin faults and what is not one: a slow upload is the client's business, a silent
//! origin opens its breaker (no request waits on it while open), a purge racing a fill wins.

use crate::common::*;
use bytes::Bytes;
use http::StatusCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// An edge in front of `origin` with a short response timeout and a breaker that opens on
/// `failures` consecutive faults and stays open for the whole test.
fn faults_config(origin: std::net::SocketAddr, failures: u32, extra: &str) -> String {
    config(origin, "").replace(
        "response_timeout_ms = 2000",
        &format!(
            "response_timeout_ms = 300\nbreaker = {{ failures = {failures}, open_ms = 600000 }}"
        ),
    ) + extra
}

fn echo_origin() -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    |r| Reply::ok(format!("got {} bytes", r.body.len()))
}

#[tokio::test]
async fn slow_upload_does_not_eject_origin() {
    let origin = TestOrigin::start(echo_origin()).await;
    // A breaker that opens on the first fault: any blame on the origin shows as a 503.
    let cfg = faults_config(
        origin.addr,
        1,
        "\n[fetch]\nrequest_body_idle_timeout_ms = 5000\n",
    );
    let edge = start_edge(&cfg).await;
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20\r\n\r\n0123456789")
        .await
        .unwrap();
    // The client pauses for over three response timeouts: nothing may come back meanwhile
    // (before, the response timeout ran during the upload: 504 and the origin ejected).
    let early = read_head(&mut s, Duration::from_millis(1000)).await;
    assert_eq!(early, None, "the edge answered during the upload");
    s.write_all(b"abcdefghij").await.unwrap();
    let head = read_head(&mut s, Duration::from_secs(10))
        .await
        .expect("no answer after the upload");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(origin.last().body.len(), 20);
    let after = edge.get("/after").await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.cache_status());
}

#[tokio::test]
async fn stalled_upload_is_a_408_and_does_not_eject_origin() {
    let origin = TestOrigin::start(echo_origin()).await;
    let cfg = faults_config(
        origin.addr,
        1,
        "\n[fetch]\nrequest_body_idle_timeout_ms = 600\n",
    );
    let edge = start_edge(&cfg).await;
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"PUT /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20\r\n\r\n0123456789")
        .await
        .unwrap();
    // The client never sends the rest.
    let head = read_head(&mut s, Duration::from_secs(10))
        .await
        .expect("the edge never gave up on the upload");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    // The origin was not blamed: its breaker (one fault opens it) is still closed.
    let after = edge.get("/after").await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.cache_status());
}

#[tokio::test]
async fn silent_origin_opens_breaker_and_fails_fast() {
    let (addr, accepted, _task) = silent_origin().await;
    let edge = start_edge(&faults_config(addr, 2, "")).await;
    for i in 0..2 {
        let r = edge.get(&format!("/t{i}")).await;
        assert_eq!(
            r.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            r.cache_status()
        );
    }
    let asked = accepted.load(Ordering::SeqCst);
    assert_eq!(asked, 2);
    // Open: every request is answered at once with 503 and Retry-After, and none reaches
    // the silent origin (before, each was sent to it as a last resort and waited out).
    for i in 0..10 {
        let r = edge.get(&format!("/open{i}")).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            r.cache_status()
        );
        let retry: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=600).contains(&retry), "{retry}");
        assert!(r.cache_status().contains("breaker"), "{}", r.cache_status());
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        asked,
        "the silent origin was asked again"
    );
}

#[tokio::test]
async fn silent_origin_serves_stale_while_open() {
    let silent = Arc::new(AtomicBool::new(false));
    let s2 = silent.clone();
    let origin = TestOrigin::start(move |_| {
        if s2.load(Ordering::SeqCst) {
            // Accepts, never answers (within any timeout of the test).
            Reply::ok("late").delay(600_000)
        } else {
            // Stale on arrival: the next request revalidates.
            Reply::ok("v1").cc("max-age=10").header("age", "20")
        }
    })
    .await;
    let edge = start_edge(&faults_config(origin.addr, 2, "")).await;
    assert_eq!(edge.get("/s").await.text(), "v1");
    silent.store(true, Ordering::SeqCst);
    // Two revalidations time out (stale served each time, by the safety net): open.
    for _ in 0..2 {
        let r = edge.get("/s").await;
        assert_eq!(r.text(), "v1", "{}", r.cache_status());
    }
    let asked = origin.count();
    assert_eq!(asked, 3);
    for _ in 0..10 {
        let r = edge.get("/s").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "v1", "{}", r.cache_status());
        assert!(r.cache_status().contains("stale"), "{}", r.cache_status());
    }
    assert_eq!(
        origin.count(),
        asked,
        "the silent origin was asked while open"
    );
}

const TOKEN: &str = "test-admin-token-0123";

#[tokio::test]
async fn purge_during_fill_does_not_resurrect() {
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body_rx = Arc::new(Mutex::new(Some(body_rx)));
    let (asked_tx, mut asked) = mpsc::unbounded_channel::<()>();
    let origin = TestOrigin::start(move |_| {
        let _ = asked_tx.send(());
        match body_rx.lock().unwrap().take() {
            Some(rx) => Reply::streamed(rx).cc("max-age=600"),
            None => Reply::ok("after the purge").cc("max-age=600"),
        }
    })
    .await;
    let cfg = config(origin.addr, "")
        + &format!("\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let edge = Arc::new(start_edge(&cfg).await);
    let admin = edge.handle.admin_addr().unwrap();
    let e2 = edge.clone();
    let first = tokio::spawn(async move { e2.get("/p").await });
    tokio::time::timeout(Duration::from_secs(10), asked.recv())
        .await
        .expect("the origin was not asked");
    body_tx.send(Ok(Bytes::from("before "))).await.unwrap();
    // The purge comes while the fill is in progress.
    let status = admin_request(admin, "/purge/url?url=http%3A%2F%2Flocalhost%2Fp", TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    body_tx.send(Ok(Bytes::from("the purge"))).await.unwrap();
    drop(body_tx);
    let r = first.await.unwrap();
    assert_eq!(r.text(), "before the purge");
    // The purged response must not be served from the cache.
    let again = edge.get("/p").await;
    assert_eq!(again.text(), "after the purge", "{}", again.cache_status());
    assert_eq!(origin.count(), 2);
}
