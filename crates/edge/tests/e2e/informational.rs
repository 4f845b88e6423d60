//! Informational (1xx) responses from the origin (RFC 9110 §15.2, RFC 8297): raw-TCP origins
//! that send `103 Early Hints` (one, several, a flood), an unsolicited `100`, a `101` nobody
//! asked for, and malformed ones, before or instead of the final answer. A 1xx is never the
//! response, never stored, and its fields never end up in the stored object; a malformed one
//! is a clean 502. Over HTTP/3 the edge forwards the origin's interim responses (100 aside)
//! ahead of the final one; over HTTP/1.1 and h2 hyper's server cannot send them, so the client
//! gets the final response only.

use crate::common::*;
use crate::h3client::*;
use bytes::{Buf, Bytes};
use firebreak_edge::upstream::interim::MAX_FORWARDED;
use http::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A final answer the tests cache: `hello`, fresh for a minute.
const FINAL_200: &str = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

const EARLY_HINTS: &str =
    "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n";

/// A raw TCP origin: reads each request head, writes `answer` and closes the connection.
/// Counts requests.
struct RawOrigin {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawOrigin {
    async fn start(answer: impl Into<Vec<u8>>) -> Self {
        let answer: Arc<[u8]> = answer.into().into();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let answer = answer.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    if read_request_head(&mut s).await {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let _ = s.write_all(&answer).await;
                        let _ = s.shutdown().await;
                        // Let the edge read everything before the socket goes.
                        let mut sink = [0u8; 1024];
                        let _ = tokio::time::timeout(WAIT, s.read(&mut sink)).await;
                    }
                });
            }
        });
        Self { addr, count, task }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request_head(s: &mut TcpStream) -> bool {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

/// A plain edge in front of `origin`, whose breaker never opens within a test (each
/// malformed answer is an origin fault).
async fn plain_edge(origin: SocketAddr) -> Edge {
    start_edge(&config(origin, "").replace(
        "response_timeout_ms = 2000",
        "response_timeout_ms = 2000\nbreaker = { failures = 100, open_ms = 1000 }",
    ))
    .await
}

/// The raw answer of the edge to `GET path` on a new HTTP/1.1 connection (until it closes).
async fn raw_get(edge: &Edge, path: &str) -> String {
    edge.raw(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// RFC 9110 §15.2: "A client MUST be able to parse one or more 1xx responses received prior
/// to a final response". The 103 is neither the response nor stored; its `Link` is not in the
/// stored object; the 200 is cached and served as a hit afterwards.
#[tokio::test]
async fn early_hints_before_the_final_response_are_neither_the_response_nor_stored() {
    let origin = RawOrigin::start(format!("{EARLY_HINTS}{FINAL_200}")).await;
    let edge = plain_edge(origin.addr).await;
    let first = edge.get("/page").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "hello");
    assert_eq!(first.header("link"), None, "the 103's fields are its own");
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let hit = edge.get_until_hit("/page").await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.text(), "hello");
    assert_eq!(hit.header("link"), None, "nothing of the 103 was stored");
    assert_eq!(origin.count(), 1, "the 200 was cached");
    // HTTP/1.1 clients get the final answer only: hyper's server cannot send a 1xx.
    let raw = raw_get(&edge, "/page").await;
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(!raw.to_ascii_lowercase().contains("link:"), "{raw}");
}

/// Several interim responses of different codes, and an unsolicited `100 Continue` (the edge
/// never sends `Expect` upstream), all before one final answer.
#[tokio::test]
async fn several_interim_responses_and_an_unsolicited_100_are_skipped() {
    let answer = format!(
        "HTTP/1.1 100 Continue\r\n\r\n\
         HTTP/1.1 102 Processing\r\n\r\n\
         {EARLY_HINTS}\
         HTTP/1.1 103 Early Hints\r\nLink: </app.js>; rel=preload; as=script\r\nX-Hint: 2\r\n\r\n\
         HTTP/1.1 199 Whatever\r\nX-Odd: yes\r\n\r\n\
         HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nLink: </final>; rel=canonical\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let origin = RawOrigin::start(answer).await;
    let edge = plain_edge(origin.addr).await;
    let first = edge.get("/many").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "hello");
    let links: Vec<_> = first.headers.get_all("link").iter().collect();
    assert_eq!(links, ["</final>; rel=canonical"], "only the final's Link");
    assert_eq!(first.header("x-hint"), None);
    assert_eq!(first.header("x-odd"), None);
    let hit = edge.get_until_hit("/many").await;
    assert_eq!(hit.text(), "hello");
    let links: Vec<_> = hit.headers.get_all("link").iter().collect();
    assert_eq!(
        links,
        ["</final>; rel=canonical"],
        "stored: the final's fields only"
    );
    assert_eq!(hit.header("x-hint"), None);
    assert_eq!(origin.count(), 1);
}

/// An origin that sends many interim responses costs a bounded amount: the final answer
/// still arrives and is cached.
#[tokio::test]
async fn a_flood_of_interim_responses_ends_in_the_final_answer() {
    let answer = EARLY_HINTS.repeat(500) + FINAL_200;
    let origin = RawOrigin::start(answer).await;
    let edge = plain_edge(origin.addr).await;
    let first = edge.get("/flood").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "hello");
    let hit = edge.get_until_hit("/flood").await;
    assert_eq!(hit.text(), "hello");
    assert_eq!(origin.count(), 1);
}

/// What an origin must not send around a 1xx: each is a clean 502 (never a panic, never the
/// 1xx or the bytes after it passed on), nothing is stored, and the edge keeps serving.
#[tokio::test]
async fn malformed_or_unsolicited_interim_responses_are_a_clean_502() {
    let cases: [(&str, String); 7] = [
        // A 1xx has no content (RFC 9110 §15.2): the "body" is read as the next status
        // line, which it is not.
        (
            "1xx with a body",
            format!("HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\nhello{FINAL_200}"),
        ),
        // The edge never forwards `Upgrade` (hop-by-hop): a 101 answers nothing it asked
        // (RFC 9110 §15.2.2) and what follows is another protocol.
        (
            "101 without an upgrade",
            format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n{FINAL_200}"),
        ),
        (
            "101 alone",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_owned(),
        ),
        (
            "field without a colon",
            format!("HTTP/1.1 103 Early Hints\r\nLink </a.css>; rel=preload\r\n\r\n{FINAL_200}"),
        ),
        ("1xx head cut short", "HTTP/1.1 103 Early Hints\r\nLink: </a>".to_owned()),
        ("1xx and nothing after", EARLY_HINTS.to_owned()),
        (
            "1xx with an oversized head",
            format!(
                "HTTP/1.1 103 Early Hints\r\n{}\r\n{FINAL_200}",
                "Link: </x>; rel=preload\r\n".repeat(20_000)
            ),
        ),
    ];
    for (case, answer) in cases {
        let origin = RawOrigin::start(answer).await;
        let edge = plain_edge(origin.addr).await;
        for n in 1..=2 {
            let r = edge.get("/x").await;
            assert_eq!(
                r.status,
                StatusCode::BAD_GATEWAY,
                "{case} #{n}: {}",
                r.text()
            );
            assert!(!r.text().contains("hello"), "{case}");
            assert_eq!(r.header("link"), None, "{case}");
            assert_eq!(r.header("upgrade"), None, "{case}");
            assert_eq!(
                origin.count(),
                n,
                "{case}: nothing stored, the origin asked again"
            );
        }
        let raw = raw_get(&edge, "/x").await;
        assert!(raw.starts_with("HTTP/1.1 502 "), "{case}: {raw}");
    }
}

/// `name` with a certificate from `ca` in front of `origin`, on a TLS listener (HTTP/3 on
/// its UDP port).
fn tls_edge_config(origin: SocketAddr, pair: &Pair) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"
tls = true

[cache]
max_bytes = 67108864
max_object_bytes = 16777216

[[service]]
name = "a"
hosts = ["a.example"]

[service.origin]
connect_timeout_ms = 1000
response_timeout_ms = 5000
servers = [{{ addr = "{origin}" }}]
breaker = {{ failures = 100, open_ms = 1000 }}

[service.tls]
cert = '''
{cert}'''
key = '''
{key}'''
"#,
        cert = pair.cert,
        key = pair.key,
    )
}

/// Every head an HTTP/3 GET of `path` gets, in order (interim ones, then the final), and the
/// body.
async fn h3_heads(h3: &mut H3, path: &str) -> (Vec<Response<()>>, Bytes) {
    let exchange = async {
        let req = Request::get(format!("https://a.example{path}"))
            .body(())
            .unwrap();
        let mut stream = h3.send.send_request(req).await.unwrap();
        stream.finish().await.unwrap();
        let mut heads = Vec::new();
        loop {
            let head = stream.recv_response().await.unwrap();
            let interim = head.status().is_informational();
            heads.push(head);
            if !interim {
                break;
            }
            assert!(
                heads.len() <= 64,
                "more interim responses than the edge may send"
            );
        }
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.unwrap() {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                body.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        (heads, Bytes::from(body))
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("no HTTP/3 answer within 10 s")
}

fn statuses(heads: &[Response<()>]) -> Vec<u16> {
    heads.iter().map(|h| h.status().as_u16()).collect()
}

/// Over HTTP/3 the origin's 103 reaches the client ahead of the final response, with its
/// `Link`; the unsolicited 100 does not; the final response and the cached hit carry none of
/// the 103's fields; a hit has no interim response. Over HTTP/1.1 and h2 (hyper's server has
/// no way to send a 1xx) the client gets the final response only.
#[tokio::test]
async fn early_hints_are_forwarded_over_http3_ahead_of_the_final_response() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let pair = ca.leaf(&["a.example"]);
    let answer = format!(
        "HTTP/1.1 100 Continue\r\n\r\n\
         {EARLY_HINTS}\
         HTTP/1.1 103 Early Hints\r\nLink: </app.js>; rel=preload; as=script\r\nConnection: x-drop\r\nX-Drop: 1\r\nKeep-Alive: timeout=5\r\n\r\n\
         {FINAL_200}"
    );
    let origin = RawOrigin::start(answer).await;
    let edge = start_edge(&tls_edge_config(origin.addr, &pair)).await;
    let mut h3 = H3::connect(edge.addr, &ca.roots, "a.example")
        .await
        .unwrap();

    let (heads, body) = h3_heads(&mut h3, "/page").await;
    assert_eq!(statuses(&heads), [103, 103, 200], "{heads:?}");
    let link = |r: &Response<()>| -> Vec<String> {
        r.headers()
            .get_all("link")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(link(&heads[0]), ["</style.css>; rel=preload; as=style"]);
    assert_eq!(link(&heads[1]), ["</app.js>; rel=preload; as=script"]);
    for name in ["connection", "x-drop", "keep-alive"] {
        assert_eq!(
            heads[1].headers().get(name),
            None,
            "hop-by-hop {name} forwarded"
        );
    }
    assert!(
        link(&heads[2]).is_empty(),
        "the 103's Link merged into the final response"
    );
    assert_eq!(body, "hello");
    assert_eq!(origin.count(), 1);

    // The hit: the final response alone, nothing of the 103s stored.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (heads, body) = h3_heads(&mut h3, "/page").await;
        assert_eq!(body, "hello");
        let last = heads.last().unwrap();
        assert!(link(last).is_empty());
        let cs = last
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        if cs.contains("hit") {
            assert_eq!(statuses(&heads), [200], "a hit has no interim response");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never a hit: {cs}");
        tokio::task::yield_now().await;
    }
    assert_eq!(origin.count(), 1);

    // HTTP/1.1 and h2 get the final response only (on a miss too).
    for proto in [Proto::H1, Proto::H2] {
        let path = format!("/{proto:?}");
        let mut client = Client::connect(proto, edge.addr, &ca.roots, "a.example").await;
        let r = client.get("a.example", &path).await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}");
        assert_eq!(r.text(), "hello", "{proto:?}");
        assert_eq!(r.header("link"), None, "{proto:?}");
    }
}

/// A flood of 103s: the final answer arrives, and only a bounded number of them is passed on.
#[tokio::test]
async fn a_flood_of_early_hints_is_forwarded_bounded_over_http3() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let pair = ca.leaf(&["a.example"]);
    let origin = RawOrigin::start(EARLY_HINTS.repeat(500) + FINAL_200).await;
    let edge = start_edge(&tls_edge_config(origin.addr, &pair)).await;
    let mut h3 = H3::connect(edge.addr, &ca.roots, "a.example")
        .await
        .unwrap();
    let (heads, body) = h3_heads(&mut h3, "/flood").await;
    assert_eq!(body, "hello");
    let mut expected = vec![103; MAX_FORWARDED];
    expected.push(200);
    assert_eq!(statuses(&heads), expected, "500 sent by the origin");
    assert_eq!(origin.count(), 1);
}

/// A malformed 1xx over HTTP/3: the well-formed 103 before it has gone out, the one with a
/// `Content-Length` (a 1xx has no content) is not passed on, then a clean 502 (the hints
/// already forwarded do not make the error look like success).
#[tokio::test]
async fn a_malformed_interim_response_is_a_502_over_http3_too() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let pair = ca.leaf(&["a.example"]);
    let origin = RawOrigin::start(format!(
        "{EARLY_HINTS}HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\nhello{FINAL_200}"
    ))
    .await;
    let edge = start_edge(&tls_edge_config(origin.addr, &pair)).await;
    let mut h3 = H3::connect(edge.addr, &ca.roots, "a.example")
        .await
        .unwrap();
    let (heads, body) = h3_heads(&mut h3, "/bad").await;
    assert_eq!(statuses(&heads), [103, 502], "{heads:?}");
    assert!(!String::from_utf8_lossy(&body).contains("hello"));
}
