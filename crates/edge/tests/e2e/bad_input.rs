//! Hostile or malformed input from clients and origins.

use crate::common::*;
use std::sync::atomic::Ordering;

async fn edge_and_origin() -> (Edge, TestOrigin) {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("max-age=60")).await;
    (edge_for(&origin).await, origin)
}

fn status_of(out: &str) -> u16 {
    out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn malformed_requests_get_400_class_and_never_reach_the_origin() {
    let (edge, origin) = edge_and_origin().await;
    let cases: &[(&str, &[u8])] = &[
        ("bad header bytes", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\x01b\r\n\r\n"),
        ("space in header name", b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n"),
        (
            "transfer-encoding that is not chunked",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        ),
        ("transfer-encoding in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        (
            "two different content-lengths",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        ),
        ("invalid host", b"GET / HTTP/1.1\r\nHost: bad host!\r\n\r\n"),
        ("missing host", b"GET / HTTP/1.1\r\n\r\n"),
        ("two hosts", b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: other\r\n\r\n"),
        ("garbage request line", b"HELLO\r\n\r\n"),
        ("connect", b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        let out = edge.raw(bytes).await;
        let status = status_of(&out);
        assert!((400..500).contains(&status), "{name}: {out:?}");
    }
    assert_eq!(origin.count(), 0);
}

#[tokio::test]
async fn malformed_streamed_request_body_is_a_400() {
    // The head is valid, so forwarding has begun when the body turns out malformed: the
    // origin's connection is aborted and the client is told it was at fault.
    let (edge, _origin) = edge_and_origin().await;
    let out = edge
        .raw(b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n")
        .await;
    assert_eq!(status_of(&out), 400, "{out}");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    // RFC 9112 §6.3: Transfer-Encoding wins, Content-Length is dropped, and the connection is
    // closed after the response, so bytes after the chunked body are never read as a request.
    let (edge, origin) = edge_and_origin().await;
    let out = edge
        .raw(
            b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await;
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    let seen = origin.requests.lock().unwrap().clone();
    assert!(seen.iter().all(|r| r.uri.path() != "/smuggled"), "{seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.header("content-length").is_none_or(|v| v == "0")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let (edge, origin) = edge_and_origin().await;
    let mut req = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 200 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    let out = edge.raw(&req).await;
    let status = status_of(&out);
    assert!(status == 431 || status == 400, "{out:?}");
    let mut many = b"GET / HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..500 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let status = status_of(&edge.raw(&many).await);
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(origin.count(), 0);
}

#[tokio::test]
async fn malformed_origin_response_is_a_502_and_not_stored() {
    let (addr, count, _task) =
        raw_origin(b"HTTP/1.1 2OO OK\r\nCache-Control: max-age=60\r\n\r\nhello").await;
    let edge = start_edge(&config(addr, "")).await;
    for _ in 0..2 {
        let r = edge.get("/bad").await;
        assert_eq!(r.status, 502);
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "the bad answer was not stored"
    );
}

#[tokio::test]
async fn origin_response_with_conflicting_framing_is_a_502() {
    let (addr, _count, _task) = raw_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\nCache-Control: max-age=60\r\n\r\nhello!",
    )
    .await;
    let edge = start_edge(&config(addr, "")).await;
    assert_eq!(edge.get("/cl").await.status, 502);
}

#[tokio::test]
async fn truncated_origin_body_is_not_stored() {
    let (addr, count, _task) = raw_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=60\r\n\r\nonly-part",
    )
    .await;
    let edge = start_edge(&config(addr, "")).await;
    // The client sees the failure as a broken body (or a 502 if it broke before the head).
    let out = edge
        .raw(b"GET /t HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(!out.contains("hit"), "{out}");
    let out = edge
        .raw(b"GET /t HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(!out.contains("; hit"), "truncated object was stored: {out}");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let cfg = config(origin.addr, "").replace(
        "[cache]",
        "[limits]\nmax_request_body_bytes = 1000\n\n[cache]",
    );
    let edge = start_edge(&cfg).await;
    let declared = edge
        .raw(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n")
        .await;
    assert_eq!(status_of(&declared), 413, "{declared}");
    assert_eq!(
        origin.count(),
        0,
        "a declared oversize body never reaches the origin"
    );
    let mut chunked =
        b"POST /up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend(std::iter::repeat_n(b'a', 512));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status_of(&edge.raw(&chunked).await), 413);
    let ok = edge
        .send(
            http::Method::PUT,
            "/up",
            &[],
            bytes::Bytes::from(vec![1u8; 1000]),
        )
        .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn a_stalled_origin_body_ends_the_response_instead_of_hanging() {
    let senders = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = senders.clone();
    let origin = TestOrigin::start(move |r| {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.try_send(Ok(bytes::Bytes::from_static(b"partial")));
        // Keep the sender alive: the origin neither finishes nor fails, it just stalls.
        s2.lock().unwrap().push(tx);
        let cc = if r.uri.path() == "/cacheable" {
            "max-age=60"
        } else {
            "no-store"
        };
        Reply::streamed(rx).cc(cc)
    })
    .await;
    let cfg =
        config(origin.addr, "").replace("response_timeout_ms = 2000", "response_timeout_ms = 300");
    let edge = start_edge(&cfg).await;
    for path in ["/cacheable", "/passthrough"] {
        let out = edge
            .raw(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        // The connection was closed by the edge (raw() would otherwise wait its full 5 s and
        // the chunked body would be terminated).
        assert!(
            !out.ends_with("0\r\n\r\n"),
            "{path}: a stalled body must not look complete: {out:?}"
        );
    }
    let again = edge
        .raw(b"GET /cacheable HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert!(
        !again.contains("firebreak; hit"),
        "a stalled body was stored: {again}"
    );
    assert_eq!(origin.count(), 3);
}
