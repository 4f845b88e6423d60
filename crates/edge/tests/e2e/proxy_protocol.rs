//! PROXY protocol on a listener: the load balancer's header states the client address, which
//! the edge uses for limits and forwarding headers; never trusted where it is not configured.

use crate::common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn v2(src: [u8; 4], src_port: u16, command: u8, tlv: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(0x11);
    h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h.extend_from_slice(tlv);
    h
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// A default service whose first listener takes PROXY headers; `plain_too` adds a second
/// listener without.
fn proxied(origin: SocketAddr, plain_too: bool, service_extra: &str) -> String {
    let mut toml = config(origin, "").replacen(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nproxy_protocol = true\n",
        1,
    );
    toml.push_str(service_extra);
    if plain_too {
        toml.push_str("\n[[listener]]\naddr = \"127.0.0.2:0\"\n");
    }
    with_limits(&toml, "", "first_bytes_timeout_ms = 1000")
}

#[tokio::test]
async fn proxy_protocol_v2_sets_client_address() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let edge = start_edge(&proxied(
        origin.addr,
        false,
        "\n[service.clients]\nrequests_per_second = 1\nburst = 1\n",
    ))
    .await;
    let request = [
        v2([203, 0, 113, 7], 5555, 1, &[0x04, 0, 2, 7, 7]),
        get("/a").into_bytes(),
    ]
    .concat();
    let answer = exchange_from("127.0.0.1", edge.addr, &request).await;
    assert_eq!(status_of(&answer), Some(200), "{answer:?}");
    let xff = origin
        .last()
        .header("x-forwarded-for")
        .unwrap_or("")
        .to_owned();
    assert!(xff.contains("203.0.113.7"), "origin saw {xff:?}");
    assert!(!xff.contains("127.0.0.1"), "origin saw {xff:?}");
    // The stated address is the one limited: a second request from it is over its bucket,
    // while another client behind the same balancer (PROXY v1 this time) is not.
    let again = exchange_from("127.0.0.1", edge.addr, &request).await;
    assert_eq!(status_of(&again), Some(429), "{again:?}");
    let v1 = format!("PROXY TCP4 198.51.100.9 127.0.0.1 4000 80\r\n{}", get("/b"));
    let other = exchange_from("127.0.0.1", edge.addr, v1.as_bytes()).await;
    assert_eq!(status_of(&other), Some(200), "{other:?}");
    let xff = origin
        .last()
        .header("x-forwarded-for")
        .unwrap_or("")
        .to_owned();
    assert!(xff.contains("198.51.100.9"), "origin saw {xff:?}");
    // LOCAL (the balancer's own health check): served as the balancer's address.
    let local = [v2([0, 0, 0, 0], 0, 0, &[]), get("/c").into_bytes()].concat();
    let answer = exchange_from("127.0.0.1", edge.addr, &local).await;
    assert_eq!(status_of(&answer), Some(200), "{answer:?}");
}

#[tokio::test]
async fn proxy_protocol_header_refused_when_off() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let edge = start_edge(&proxied(origin.addr, true, "")).await;
    let plain = edge.handle.local_addrs()[1];
    let v2_request = [v2([203, 0, 113, 7], 5555, 1, &[]), get("/a").into_bytes()].concat();
    let v1_request = format!("PROXY TCP4 203.0.113.7 127.0.0.1 4000 80\r\n{}", get("/b"));
    for request in [v2_request, v1_request.into_bytes()] {
        let answer = exchange_from("127.0.0.1", plain, &request).await;
        assert!(
            matches!(status_of(&answer), None | Some(400)),
            "a PROXY header on a plain listener was accepted: {answer:?}"
        );
    }
    assert_eq!(origin.count(), 0, "the origin was asked");
    // A plain request on the plain listener is served with the socket's own address.
    assert_eq!(status_from("127.0.0.1", plain, "/c").await, Some(200));
    let xff = origin
        .last()
        .header("x-forwarded-for")
        .unwrap_or("")
        .to_owned();
    assert!(!xff.contains("203.0.113.7"), "origin saw {xff:?}");
}

#[tokio::test]
async fn missing_proxy_header_is_refused() {
    let origin = TestOrigin::start(|_| Reply::ok("x")).await;
    let edge = start_edge(&proxied(origin.addr, false, "")).await;
    let mut bad_version = v2([203, 0, 113, 7], 5555, 1, &[]);
    bad_version[12] = 0x11;
    let cases: [(&str, Vec<u8>); 5] = [
        ("no header", get("/a").into_bytes()),
        ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        (
            "malformed v2",
            [bad_version, get("/a").into_bytes()].concat(),
        ),
        (
            "malformed v1",
            format!("PROXY TCP4 nonsense\r\n{}", get("/a")).into_bytes(),
        ),
        (
            "v1 line too long",
            [b"PROXY ".as_slice(), &[b'9'; 200]].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut s = connect_from("127.0.0.1", edge.addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out),
        )
        .await;
        assert!(read.is_ok(), "{what}: connection left open");
        assert!(
            out.is_empty(),
            "{what}: answered {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    // Silence: closed at the first-bytes deadline.
    let mut s = connect_from("127.0.0.1", edge.addr).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(10)).await,
        "silent connection left open"
    );
    assert_eq!(origin.count(), 0, "the origin was asked");
}
