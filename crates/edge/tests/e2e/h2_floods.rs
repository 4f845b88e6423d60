//! HTTP/2 attacks the edge already withstands (hyper/h2's defences, configured in
//! `server.rs`), kept as regression tests over raw frames: Rapid Reset (CVE-2023-44487), the
//! CONTINUATION flood (CVE-2024-27316 class) and oversized header lists.

use crate::common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK header block for `GET path` on `localhost` (static-table indices and literals
/// without indexing, so every block stands alone).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    b.push(0x04); // :path, literal without indexing
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b.push(0x01); // :authority, literal without indexing
    b.push(9);
    b.extend_from_slice(b"localhost");
    b
}

async fn h2_connection(edge: &Edge) -> TcpStream {
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    s.write_all(&hello).await.unwrap();
    s
}

/// Reads frames until the edge closes the connection or `limit` passes; returns whether a
/// GOAWAY arrived and whether the connection was closed.
async fn read_until_goaway(s: &mut TcpStream, limit: Duration) -> (bool, bool) {
    let mut buf = Vec::new();
    let mut goaway = false;
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == GOAWAY {
                    goaway = true;
                }
                buf.drain(..9 + len);
            }
        }
    })
    .await
    .is_ok();
    (goaway, closed)
}

#[tokio::test]
async fn h2_rapid_reset_gets_goaway_and_spares_the_origin() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let edge = edge_for(&origin).await;
    let mut s = h2_connection(&edge).await;
    // 5,000 streams opened and cancelled at once: the attack costs the server work per
    // stream while the client stays within its concurrency limit.
    let mut flood = Vec::new();
    for i in 0..5_000u32 {
        let stream = 2 * i + 1;
        frame(
            &mut flood,
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &get_block(&format!("/r{i}")),
        );
        frame(&mut flood, RST_STREAM, 0, stream, &8u32.to_be_bytes());
    }
    // The edge may close the connection before it has read everything we send.
    let _ = s.write_all(&flood).await;
    let (goaway, closed) = read_until_goaway(&mut s, Duration::from_secs(10)).await;
    assert!(goaway, "no GOAWAY after a rapid-reset flood");
    assert!(closed, "the connection stayed open");
    assert!(
        origin.count() < 1_000,
        "{} of 5,000 reset streams reached the origin",
        origin.count()
    );
    // The edge still serves everyone else.
    assert_eq!(edge.get("/after").await.status, 200);
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("max-age=60")).await;
    let edge = edge_for(&origin).await;
    let mut s = h2_connection(&edge).await;
    // A HEADERS frame that never ends: CONTINUATION frames of header bytes, up to 64 MiB
    // unless the edge stops it first.
    let mut start = Vec::new();
    frame(&mut start, HEADERS, END_STREAM, 1, &get_block("/"));
    s.write_all(&start).await.unwrap();
    let (mut reader, mut writer) = s.into_split();
    let junk = {
        let mut b = Vec::new();
        // Literal header without indexing, new name: "x-a" = 16 KiB-ish value, repeated.
        while b.len() < 16_000 {
            b.extend_from_slice(&[0x00, 0x03, b'x', b'-', b'a', 0x7f, 0x81, 0x07]);
            b.extend(std::iter::repeat_n(b'a', 1000));
        }
        let mut f = Vec::new();
        frame(&mut f, CONTINUATION, 0, 1, &b);
        f
    };
    let writer_task = tokio::spawn(async move {
        let mut sent = 0usize;
        while sent < 64 << 20 {
            if writer.write_all(&junk).await.is_err() {
                break;
            }
            sent += junk.len();
        }
        sent
    });
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    let sent = tokio::time::timeout(Duration::from_secs(20), writer_task)
        .await
        .expect("writer stuck: the edge neither read nor closed")
        .unwrap();
    assert!(closed, "the edge kept reading an endless header block");
    assert!(
        sent < 64 << 20,
        "the edge accepted {sent} bytes of one header block"
    );
    assert_eq!(origin.count(), 0);
    assert_eq!(edge.get("/after").await.status, 200);
}

#[tokio::test]
async fn many_ranges_get_the_full_representation_not_a_multipart_explosion() {
    let origin = TestOrigin::start(|_| Reply::ok(vec![b'z'; 10_000]).cc("max-age=60")).await;
    let edge = edge_for(&origin).await;
    edge.get("/big").await;
    edge.get_until_hit("/big").await;
    let many: String = (0..2_000)
        .map(|i| format!("{}-{}", i * 5, i * 5))
        .collect::<Vec<_>>()
        .join(",");
    let r = edge
        .get_with("/big", &[("range", &format!("bytes={many}"))])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 10_000);
    let overlapping = edge
        .get_with("/big", &[("range", "bytes=0-,0-,0-,0-,0-,0-")])
        .await;
    assert_eq!(overlapping.status, 200);
    assert_eq!(overlapping.body.len(), 10_000);
    let huge = edge
        .get_with("/big", &[("range", "bytes=99999999999999999999-")])
        .await;
    assert_eq!(huge.status, 200, "an unparsable range is ignored");
}
