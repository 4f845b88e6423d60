//! Request smuggling and framing: the request sent upstream is framed by the edge alone, and
//! what the client gets is framed by the edge whatever the origin sent.

use crate::common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the raw origin treats a request's `Content-Length`.
#[derive(Clone, Copy, PartialEq)]
enum BodyHandling {
    /// Like nginx serving a static file: answer at once, then discard that many bytes from
    /// the kept-alive connection.
    AnswerThenDiscard,
    /// Read the whole body before answering.
    WaitForBody,
}

/// A keep-alive HTTP/1.1 origin over raw TCP that answers `path=<path>` (cacheable for a
/// minute) and records every request head exactly as it read it.
struct RawKeepAliveOrigin {
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawKeepAliveOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawKeepAliveOrigin {
    async fn start(handling: BodyHandling) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h2, c2) = (heads.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_raw(stream, handling, h2.clone()));
            }
        });
        Self {
            addr,
            heads,
            connections,
            task,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn serve_raw(mut s: TcpStream, handling: BodyHandling, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        heads.lock().unwrap().push(head.clone());
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if !matches!(method, "GET" | "HEAD" | "POST" | "OPTIONS") || !path.starts_with('/') {
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        }
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        if handling == BodyHandling::WaitForBody && !discard(&mut s, &mut buf, length).await {
            return;
        }
        let body = format!("path={path}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=60\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        if handling == BodyHandling::AnswerThenDiscard {
            // The body is discarded after the answer, from whatever the connection carries.
            if !discard(&mut s, &mut buf, length).await {
                return;
            }
        }
    }
}

/// Drops the next `length` bytes of the connection (those already in `buf` first); `false`
/// if the connection closed first.
async fn discard(s: &mut TcpStream, buf: &mut Vec<u8>, length: usize) -> bool {
    let n = length.min(buf.len());
    buf.drain(..n);
    let mut remaining = length - n;
    let mut chunk = [0u8; 4096];
    while remaining > 0 {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                let take = n.min(remaining);
                remaining -= take;
                buf.extend_from_slice(&chunk[take..n]);
            }
        }
    }
    true
}

/// Sends raw bytes to the edge and reads the answer until the edge closes (or 5 s).
async fn raw_exchange(edge: &Edge, bytes: &[u8]) -> String {
    edge.raw(bytes).await
}

#[tokio::test]
async fn cl0_desync_does_not_poison_the_cache() {
    let origin = RawKeepAliveOrigin::start(BodyHandling::AnswerThenDiscard).await;
    let edge = start_edge(&config(origin.addr, "")).await;
    // The attacker learns how the edge lays out a request for a path as long as `/victim`
    // with a header it controls: its value starts `n` bytes into the upstream head.
    let smuggled = "GET /evil HTTP/1.1";
    let probe = edge.get_with("/victix", &[("x-a", smuggled)]).await;
    assert_eq!(probe.text(), "path=/victix");
    let probe_head = origin.heads().last().cloned().unwrap();
    let n = probe_head.find(smuggled).expect("header in the probe");

    // A GET with `Content-Length: n` (and its body, so the client side is well framed)...
    let attack = format!(
        "GET /cl0 HTTP/1.1\r\nHost: localhost\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n{}",
        "a".repeat(n)
    );
    let out = raw_exchange(&edge, attack.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // ...then `/victim` on the same pooled origin connection: before the fix the origin ate
    // its first n bytes and answered the smuggled `GET /evil`, stored under `/victim`.
    let _ = edge.get_with("/victim", &[("x-a", smuggled)]).await;
    assert_eq!(
        origin.connections.load(Ordering::SeqCst),
        1,
        "the attack needs one pooled origin connection"
    );
    let victim = edge.get_until_hit("/victim").await;
    assert_eq!(victim.text(), "path=/victim", "{:?}", victim.cache_status());
    for head in origin.heads() {
        if head.starts_with("GET /cl0 ") {
            assert!(
                !head.to_ascii_lowercase().contains("content-length"),
                "a GET's body is never forwarded, so neither is a length: {head}"
            );
        }
    }
}

#[tokio::test]
async fn cl0_origin_waiting_for_the_body_is_not_stalled() {
    // An origin that waits for the announced body used to cost the request the full response
    // timeout (504) and eject a healthy origin.
    let origin = RawKeepAliveOrigin::start(BodyHandling::WaitForBody).await;
    let edge = start_edge(&config(origin.addr, "")).await;
    for (i, method) in ["GET", "HEAD"].iter().enumerate() {
        let req = format!(
            "{method} /wait{i} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        );
        let out = raw_exchange(&edge, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{method}: {out}");
    }
    let plain = edge.get("/after").await;
    assert_eq!(plain.text(), "path=/after");
}

#[tokio::test]
async fn request_bodies_are_framed_by_the_edge() {
    // What does reach the origin with a body is framed from the body actually sent.
    let origin = TestOrigin::start(|r| Reply::ok(format!("got {} bytes", r.body.len()))).await;
    let edge = edge_for(&origin).await;
    // Chunked from the client: forwarded chunked (no length known in advance).
    let out = edge
        .raw(b"POST /c HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    assert!(out.contains("got 3 bytes"), "{out}");
    let seen = origin.last();
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen.header("content-length"), None);
    // A POST without a body carries `Content-Length: 0`; a DELETE without one no length.
    let r = edge
        .send(http::Method::POST, "/p", &[], bytes::Bytes::new())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.last().header("content-length"), Some("0"));
    let r = edge
        .send(http::Method::DELETE, "/d", &[], bytes::Bytes::new())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.last().header("content-length"), None);
    assert_eq!(origin.last().header("transfer-encoding"), None);
}

#[tokio::test]
async fn expect_100_continue_is_answered_at_the_edge_not_forwarded() {
    let origin = TestOrigin::start(|r| Reply::ok(format!("got {} bytes", r.body.len()))).await;
    let edge = edge_for(&origin).await;
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(
        b"PUT /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // The edge asks for the body itself (its server answers 100 when the body is read).
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut first))
        .await
        .expect("edge sent 100 Continue")
        .unwrap();
    let head = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    s.write_all(b"hello").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(out.contains("got 5 bytes"), "{head}{out}");
    let seen = origin.last();
    assert_eq!(seen.header("expect"), None, "Expect is hop-local: {seen:?}");
    assert_eq!(seen.header("content-length"), Some("5"));
}

#[tokio::test]
async fn origin_cl_and_te_is_not_truncated() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; the length must not reach
    // the client (it cut the 11-byte body to 5).
    let (addr, _count, _task) = raw_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
    )
    .await;
    let edge = start_edge(&config(addr, "")).await;
    let r = edge.get("/both").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world");
    assert_ne!(r.header("content-length"), Some("5"));
    // The same through pass (bypassed) and invalidate (POST) paths.
    let r = edge
        .send(http::Method::POST, "/both", &[], bytes::Bytes::from("x"))
        .await;
    assert_eq!(r.text(), "hello world");
}

#[tokio::test]
async fn http10_origin_status_line_is_http11() {
    let (addr, _count, _task) =
        raw_origin(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok")
            .await;
    let edge = start_edge(&config(addr, "")).await;
    for req in [
        &b"GET /old HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"[..],
        &b"POST /old HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"[..],
    ] {
        let out = edge.raw(req).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("ok"), "{out}");
    }
}
