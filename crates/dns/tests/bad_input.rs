//! Hostile input over real sockets: each case gets the right error code or nothing, the
//! server never panics and keeps answering.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use firebreak_dns::TcpLimits;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use std::net::SocketAddr;
use std::time::Duration;

fn header(id: u16, qd: u16, ar: u16) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(&[0x01, 0x00]);
    v.extend_from_slice(&qd.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&ar.to_be_bytes());
    v
}

/// Sends `bytes` over UDP and expects a response with `rcode` and our id.
fn expect_rcode(t: &TestServer, bytes: &[u8], rcode: u8) {
    let out = udp_raw(t.udp(), bytes).expect("an answer");
    assert_eq!(&out[..2], &bytes[..2], "id");
    assert_eq!(out[2] & 0x80, 0x80, "QR");
    assert_eq!(out[3] & 0x0F, rcode, "rcode of {bytes:?}");
}

/// The server still answers a good query (after the bad ones).
fn still_answers(t: &TestServer) {
    let m = udp(t.udp(), &query("demo.cdn.example.", RecordType::A));
    assert_eq!(addrs(&m).len(), 2);
}

#[test]
fn malformed_packets_get_formerr_or_nothing() {
    let t = TestServer::default();
    // Headers only, with counts that promise more.
    expect_rcode(&t, &header(1, 1, 0), 1);
    expect_rcode(&t, &header(2, 0, 0), 1);
    expect_rcode(&t, &header(3, 2, 0), 1);
    expect_rcode(&t, &header(4, 0xFFFF, 0xFFFF), 1);
    // Garbage after a valid header.
    let mut junk = header(5, 1, 0);
    junk.extend_from_slice(&[0xFF; 40]);
    expect_rcode(&t, &junk, 1);
    // Shorter than a header: dropped (a later good query is answered, and is the first
    // datagram this socket receives).
    let s = udp_socket();
    for n in [0usize, 1, 11] {
        s.send_to(&vec![0xAB; n], t.udp()).unwrap();
    }
    s.send_to(
        &query("demo.cdn.example.", RecordType::A).to_vec().unwrap(),
        t.udp(),
    )
    .unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(Message::from_vec(&buf[..n]).unwrap().metadata.id, 0xBEEF);
    t.wait_metric("firebreak_dns_dropped_total{reason=\"short\"}", 2);
    // A response (QR=1) is not answered.
    let mut resp = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    resp[0] = 0x77;
    resp[2] |= 0x80;
    s.send_to(&resp, t.udp()).unwrap();
    s.send_to(
        &query("demo.cdn.example.", RecordType::A).to_vec().unwrap(),
        t.udp(),
    )
    .unwrap();
    let (n, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(Message::from_vec(&buf[..n]).unwrap().metadata.id, 0xBEEF);
    t.wait_metric("firebreak_dns_dropped_total{reason=\"response\"}", 1);
    // Unknown opcode.
    let mut op = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    op[2] = (op[2] & 0x87) | (15 << 3);
    expect_rcode(&t, &op, 4);
    still_answers(&t);
}

#[test]
fn truncated_names_are_formerr() {
    let t = TestServer::default();
    let full = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    // Every cut inside the question.
    for cut in 13..full.len() {
        expect_rcode(&t, &full[..cut], 1);
    }
    // A label length past the end.
    let mut v = header(9, 1, 0);
    v.extend_from_slice(&[60, b'a', b'b']);
    expect_rcode(&t, &v, 1);
    // Reserved label types (0x40, 0x80).
    for b in [0x40u8, 0x80] {
        let mut v = header(10, 1, 0);
        v.extend_from_slice(&[b, b'a', 0, 0, 1, 0, 1]);
        expect_rcode(&t, &v, 1);
    }
    // A name over 255 bytes.
    let mut v = header(11, 1, 0);
    for _ in 0..5 {
        v.push(63);
        v.extend_from_slice(&[b'x'; 63]);
    }
    v.extend_from_slice(&[0, 0, 1, 0, 1]);
    expect_rcode(&t, &v, 1);
    still_answers(&t);
}

#[test]
fn compression_loops_are_formerr() {
    let t = TestServer::default();
    for name in [
        vec![0xC0, 12],          // points at itself
        vec![1, b'a', 0xC0, 12], // back to its own first label
        vec![0xC0, 14, 0],       // forward
        vec![0xFF, 0xFF],        // far outside the message
    ] {
        let mut v = header(12, 1, 0);
        v.extend_from_slice(&name);
        v.extend_from_slice(&[0, 1, 0, 1]);
        expect_rcode(&t, &v, 1);
    }
    // A loop in an additional record's name: that record's name is skipped, not followed,
    // and the record is not an OPT, so the query is answered.
    let mut v = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    v[11] = 1;
    let at = u8::try_from(v.len()).unwrap();
    v.extend_from_slice(&[0xC0, at, 0, 16, 0, 1, 0, 0, 0, 0, 0, 0]);
    expect_rcode(&t, &v, 0);
    still_answers(&t);
}

#[test]
fn oversized_edns_is_capped_and_broken_edns_is_formerr() {
    let t = TestServer::default();
    // The client's 65535 is answered up to our 1232.
    let m = udp(
        t.udp(),
        &with_edns(
            query(
                "truncation-test-answers-of-sixteen-aaaax.cdn.example.",
                RecordType::AAAA,
            ),
            65535,
            None,
        ),
    );
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 1232);
    // An OPT whose RDATA length runs past the end.
    let mut v = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    v[11] = 1;
    v.extend_from_slice(&[0, 0, 41, 0xFF, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF, 0, 8]);
    expect_rcode(&t, &v, 1);
    // An option longer than the OPT.
    let mut v = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    v[11] = 1;
    v.extend_from_slice(&[0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 4, 0, 8, 0xFF, 0xFF]);
    expect_rcode(&t, &v, 1);
    // An ECS with bits beyond its prefix.
    let mut v = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    v[11] = 1;
    v.extend_from_slice(&[
        0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 11, 0, 8, 0, 7, 0, 1, 16, 0,
    ]);
    v.extend_from_slice(&[10, 0, 1]);
    expect_rcode(&t, &v, 1);
    // A big datagram: 60 KB of additional records.
    let mut v = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    v[10] = 0x0F;
    v[11] = 0xFF;
    while v.len() < 60_000 {
        v.extend_from_slice(&[0, 0, 16, 0, 1, 0, 0, 0, 0, 0, 4, b'j', b'u', b'n', b'k']);
    }
    assert!(udp_raw(t.udp(), &v).is_some());
    still_answers(&t);
}

#[test]
fn unknown_classes_and_types() {
    let t = TestServer::default();
    for class in [DNSClass::CH, DNSClass::NONE, DNSClass::Unknown(4242)] {
        let mut q = query("demo.cdn.example.", RecordType::A);
        q.queries[0].set_query_class(class);
        let m = udp(t.udp(), &q);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{class:?}");
    }
    for rtype in [
        RecordType::Unknown(4242),
        RecordType::Unknown(65535),
        RecordType::NULL,
    ] {
        let m = udp(t.udp(), &query("demo.cdn.example.", rtype));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{rtype}");
        assert!(m.answers.is_empty() && m.authorities.len() == 1, "NODATA");
    }
    let m = tcp(t.tcp(), &query("cdn.example.", RecordType::AXFR));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    still_answers(&t);
}

#[test]
fn bad_tcp_messages_close_the_connection_or_get_formerr() {
    let t = TestServer::default();
    // A length shorter than a header: dropped, connection closed.
    let mut s = tcp_connect(t.tcp());
    std::io::Write::write_all(&mut s, &[0, 3, 1, 2, 3]).unwrap();
    assert!(closed_by_peer(&mut s, DEADLINE));
    // A malformed question: FORMERR, and the connection goes on.
    let mut s = tcp_connect(t.tcp());
    let mut bad = header(77, 1, 0);
    bad.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    let out = tcp_exchange(&mut s, &bad).unwrap();
    assert_eq!(out[3] & 0x0F, 1);
    let out = tcp_exchange(
        &mut s,
        &query("demo.cdn.example.", RecordType::A).to_vec().unwrap(),
    )
    .unwrap();
    assert_eq!(addrs(&Message::from_vec(&out).unwrap()).len(), 2);
    // A length prefix, then silence: closed at the timeout (idle, 1 s here).
    let t = TestServer::start(
        TcpLimits {
            first_bytes_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(1),
            ..TcpLimits::default()
        },
        1,
    );
    let mut s = tcp_connect(t.tcp());
    std::io::Write::write_all(&mut s, &[0, 40, 1, 2]).unwrap();
    assert!(closed_by_peer(&mut s, DEADLINE));
}

#[test]
fn a_flood_of_silent_tcp_connections_is_bounded_and_timed_out() {
    let limits = TcpLimits {
        max_connections: 8,
        first_bytes_timeout: Duration::from_millis(500),
        ..TcpLimits::default()
    };
    let t = TestServer::start(limits, 1);
    // 32 connections that never send: over the bound of 8.
    let mut flood: Vec<_> = (0..32).map(|_| tcp_connect(t.tcp())).collect();
    // UDP and a new TCP connection are answered meanwhile.
    still_answers(&t);
    let m = tcp(t.tcp(), &query("demo.cdn.example.", RecordType::A));
    assert_eq!(addrs(&m).len(), 2);
    // Every silent connection is closed: evicted for newer ones or at the first-bytes timeout.
    for (i, s) in flood.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s, DEADLINE),
            "flood connection {i} still open"
        );
    }
    let evicted = t.metric("firebreak_dns_dropped_total{reason=\"tcp_evicted\"}");
    let full = t.metric("firebreak_dns_dropped_total{reason=\"tcp_full\"}");
    let timed_out = t.metric("firebreak_dns_dropped_total{reason=\"tcp_timeout\"}");
    assert!(evicted + full >= 24, "evicted {evicted}, refused {full}");
    assert!(timed_out >= 1, "timed out {timed_out}");
    // And TCP still works after the flood.
    let m = tcp(t.tcp(), &query("cdn.example.", RecordType::SOA));
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn a_connection_is_closed_after_its_query_allowance() {
    let limits = TcpLimits {
        max_queries: 3,
        ..TcpLimits::default()
    };
    let t = TestServer::start(limits, 1);
    let mut s = tcp_connect(t.tcp());
    let q = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    for _ in 0..3 {
        tcp_exchange(&mut s, &q).unwrap();
    }
    assert!(closed_by_peer(&mut s, DEADLINE));
    t.wait_metric(
        "firebreak_dns_dropped_total{reason=\"tcp_too_many_queries\"}",
        1,
    );
}

#[test]
fn random_datagrams_never_stop_the_server() {
    let t = TestServer::default();
    let s = udp_socket();
    // A deterministic xorshift stream of packets, some starting with a valid query's bytes.
    let base = with_edns(query("demo.cdn.example.", RecordType::A), 1232, None)
        .to_vec()
        .unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..2000 {
        let mut p = if i % 2 == 0 {
            base.clone()
        } else {
            vec![0; (next() % 80) as usize]
        };
        for _ in 0..(next() % 6) {
            if p.is_empty() {
                break;
            }
            let at = (next() as usize) % p.len();
            p[at] = next() as u8;
        }
        s.send_to(&p, t.udp()).unwrap();
    }
    still_answers(&t);
    let m = tcp(t.tcp(), &query("demo.cdn.example.", RecordType::A));
    assert_eq!(addrs(&m).len(), 2);
}

/// A TCP connection to `to` from the loopback address `from`.
fn tcp_connect_from(from: &str, to: SocketAddr) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

#[test]
fn one_client_address_cannot_take_every_tcp_slot() {
    let limits = TcpLimits {
        max_connections: 8,
        max_connections_per_address: 3,
        first_bytes_timeout: DEADLINE,
        ..TcpLimits::default()
    };
    let t = TestServer::start(limits, 1);
    let mut mine: Vec<_> = (0..3)
        .map(|_| tcp_connect_from("127.0.0.2", t.tcp()))
        .collect();
    // A fourth from the same address is closed at once and counted; it evicts nobody.
    let mut fourth = tcp_connect_from("127.0.0.2", t.tcp());
    assert!(closed_by_peer(&mut fourth, DEADLINE));
    t.wait_metric(
        "firebreak_dns_dropped_total{reason=\"tcp_address_full\"}",
        1,
    );
    assert_eq!(
        t.metric("firebreak_dns_dropped_total{reason=\"tcp_evicted\"}"),
        0
    );
    // The address's three connections are served.
    let q = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    for s in &mut mine {
        let m = Message::from_vec(&tcp_exchange(s, &q).unwrap()).unwrap();
        assert_eq!(addrs(&m).len(), 2);
    }
    // Another address is served too.
    let m = tcp(t.tcp(), &query("cdn.example.", RecordType::SOA));
    assert_eq!(m.answers.len(), 1);
}
