//! The counts a DNS server's health report carries (`Metrics::dns_counts`), from real
//! queries over UDP and TCP to a started server: rcodes, NODATA, answers per POP, answers
//! from the last-healthy set and the fallback when no POP is healthy, latency, and the
//! difference since a snapshot (what a member reports for the version it serves).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use firebreak_protocol::health::DnsCounts;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::time::Instant;

/// The counts since `snapshot`, once `queries` queries have been counted (a UDP thread counts
/// a query after sending its response, so the client may see the answer first).
fn counted(t: &TestServer, snapshot: &DnsCounts, queries: u64) -> DnsCounts {
    let end = Instant::now() + DEADLINE;
    loop {
        let d = t.server.metrics().dns_counts().since(snapshot);
        if d.queries >= queries {
            return d;
        }
        assert!(
            Instant::now() < end,
            "{} of {queries} queries counted",
            d.queries
        );
        std::thread::yield_now();
    }
}

fn answers(d: &DnsCounts, pop: &str) -> u64 {
    d.answers_by_pop
        .iter()
        .find(|p| p.pop == pop)
        .map_or(0, |p| p.answers)
}

#[test]
fn real_queries_are_counted_for_the_health_report() {
    let t = TestServer::default();
    // Traffic before the version started: not in what the member reports.
    for _ in 0..3 {
        udp(t.udp(), &query("demo.cdn.example.", RecordType::A));
    }
    counted(&t, &DnsCounts::default(), 3);
    let snapshot = t.server.metrics().dns_counts();

    // Healthy: 127.0.0.1 is in the default region `eu`, whose first POP is ams.
    for _ in 0..5 {
        let m = udp(t.udp(), &query("demo.cdn.example.", RecordType::A));
        assert_eq!(addrs(&m), vec![ip("192.0.2.10"), ip("192.0.2.11")]);
    }
    let m = tcp(t.tcp(), &query("demo.cdn.example.", RecordType::AAAA));
    assert_eq!(addrs(&m), vec![ip("2001:db8::10")]);
    for _ in 0..2 {
        let m = udp(t.udp(), &query("nope.cdn.example.", RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
    let m = udp(t.udp(), &query("www.example.org.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = udp(t.udp(), &query("four.cdn.example.", RecordType::AAAA));
    assert!(m.answers.is_empty(), "an IPv4-only service: NODATA");
    // `gone`'s only POP is down: its fallback CNAME.
    let m = udp(t.udp(), &query("gone.cdn.example.", RecordType::A));
    assert!(!m.answers.is_empty());
    let d = counted(&t, &snapshot, 11);
    assert_eq!(d.queries, 11, "{d:?}");
    assert_eq!((d.nxdomain, d.refused, d.nodata), (2, 1, 1), "{d:?}");
    assert_eq!((d.servfail, d.empty), (0, 0), "{d:?}");
    assert_eq!((d.fallback, d.last_healthy), (1, 0), "{d:?}");
    assert_eq!(answers(&d, "ams"), 6, "{d:?}");
    assert_eq!(answers(&d, "nyc"), 0, "{d:?}");
    assert_eq!(
        d.latency_us.iter().sum::<u64>(),
        11,
        "every answered query timed"
    );
    assert!(d.is_plausible(), "{d:?}");

    // ams down: demo's answers move to nyc.
    t.health.set_checked("ams", false);
    for _ in 0..4 {
        let m = udp(t.udp(), &query("demo.cdn.example.", RecordType::A));
        assert_eq!(addrs(&m), vec![ip("198.51.100.10")]);
    }
    // nyc down too: no POP healthy and no fallback, so the POPs healthy last (nyc).
    t.health.set_checked("nyc", false);
    for _ in 0..3 {
        let m = udp(t.udp(), &query("demo.cdn.example.", RecordType::A));
        assert_eq!(addrs(&m), vec![ip("198.51.100.10")], "never empty");
    }
    let d = counted(&t, &snapshot, 18);
    assert_eq!(d.queries, 18, "{d:?}");
    assert_eq!(answers(&d, "ams"), 6, "{d:?}");
    assert_eq!(answers(&d, "nyc"), 7, "{d:?}");
    assert_eq!((d.fallback, d.last_healthy, d.empty), (1, 3, 0), "{d:?}");
    assert!(d.is_plausible(), "{d:?}");
    // The report's JSON round-trips.
    let back: DnsCounts = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(back, d);
}
