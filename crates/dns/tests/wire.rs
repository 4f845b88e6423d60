//! The server over real UDP and TCP sockets on 127.0.0.1: answers, EDNS, truncation and the
//! TCP fallback, ECS steering and scope, reload, metrics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::opt::ClientSubnet;
use hickory_proto::rr::{Name, RData, RecordType};

#[test]
fn udp_and_tcp_answer_the_zone() {
    let t = TestServer::default();
    for m in [
        udp(t.udp(), &query("demo.cdn.example.", RecordType::A)),
        tcp(t.tcp(), &query("demo.cdn.example.", RecordType::A)),
    ] {
        assert_eq!(m.metadata.id, 0xBEEF);
        assert!(m.metadata.authoritative);
        assert_eq!(addrs(&m), vec![ip("192.0.2.10"), ip("192.0.2.11")]);
    }
    let m = udp(t.udp(), &query("cdn.example.", RecordType::SOA));
    assert!(matches!(m.answers[0].data, RData::SOA(_)));
    let m = udp(t.udp(), &query("cdn.example.", RecordType::NS));
    assert_eq!(m.answers.len(), 2);
    assert_eq!(m.additionals.len(), 2, "glue of ns1");
    let m = udp(t.udp(), &query("nope.cdn.example.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].ttl, 60);
    let m = udp(t.udp(), &query("demo.cdn.example.", RecordType::MX));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty() && m.authorities.len() == 1);
    let m = udp(t.udp(), &query("www.example.org.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = udp(t.udp(), &query("demo.cdn.example.", RecordType::ANY));
    assert_eq!(m.answers.len(), 2);
    let m = tcp(t.tcp(), &query("gone.cdn.example.", RecordType::A));
    let RData::CNAME(c) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(c.0, Name::from_ascii("gone.backup.example.").unwrap());
}

#[test]
fn a_big_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let t = TestServer::default();
    let q = query(
        "truncation-test-answers-of-sixteen-aaaax.cdn.example.",
        RecordType::AAAA,
    );
    let m = udp(t.udp(), &q);
    assert!(m.metadata.truncation, "TC over UDP without EDNS");
    assert!(m.answers.is_empty());
    let m = udp(t.udp(), &with_edns(q.clone(), 512, None));
    assert!(m.metadata.truncation, "TC at the client's 512");
    assert!(m.edns.is_some());
    // What a resolver does next: the same query over TCP.
    let m = tcp(t.tcp(), &q);
    assert!(!m.metadata.truncation);
    assert_eq!(addrs(&m).len(), 16);
    // With EDNS 1232 the whole answer fits in UDP.
    let m = udp(t.udp(), &with_edns(q, 4096, None));
    assert!(!m.metadata.truncation);
    assert_eq!(addrs(&m).len(), 16);
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 1232);
    t.wait_metric("firebreak_dns_truncated_total", 2);
}

#[test]
fn ecs_steers_and_scopes_the_answer() {
    let t = TestServer::default();
    let us = ClientSubnet::new(ip("203.0.113.0"), 24, 0);
    let m = udp(
        t.udp(),
        &with_edns(query("demo.cdn.example.", RecordType::A), 1232, Some(us)),
    );
    assert_eq!(
        addrs(&m),
        vec![ip("198.51.100.10")],
        "203.0.113.0/24 is the us region: nyc"
    );
    let back = subnet(&m).expect("ECS echoed");
    assert_eq!((back.addr(), back.source_prefix()), (ip("203.0.113.0"), 24));
    assert!(back.scope_prefix() > 0);
    // Over TCP too.
    let m = tcp(
        t.tcp(),
        &with_edns(query("demo.cdn.example.", RecordType::A), 1232, Some(us)),
    );
    assert_eq!(addrs(&m), vec![ip("198.51.100.10")]);
    // Without ECS the source (127.0.0.1, default region eu) decides: ams.
    let m = udp(t.udp(), &query("demo.cdn.example.", RecordType::A));
    assert_eq!(addrs(&m), vec![ip("192.0.2.10"), ip("192.0.2.11")]);
    let eu = ClientSubnet::new(ip("192.0.2.0"), 24, 0);
    let m = udp(
        t.udp(),
        &with_edns(query("demo.cdn.example.", RecordType::A), 1232, Some(eu)),
    );
    assert_eq!(addrs(&m), vec![ip("192.0.2.10"), ip("192.0.2.11")]);
}

#[test]
fn tcp_serves_several_queries_on_one_connection() {
    let t = TestServer::default();
    let mut s = tcp_connect(t.tcp());
    for name in ["demo.cdn.example.", "four.cdn.example.", "cdn.example."] {
        let out = tcp_exchange(&mut s, &query(name, RecordType::A).to_vec().unwrap()).unwrap();
        let m = hickory_proto::op::Message::from_vec(&out).unwrap();
        assert_eq!(m.queries[0].name().to_ascii(), name);
    }
}

#[test]
fn a_reload_swaps_the_zone_and_metrics_follow() {
    let t = TestServer::default();
    let m = udp(t.udp(), &query("cdn.example.", RecordType::SOA));
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!(soa.serial, 7);
    let changed = fleet().replace("\"192.0.2.10\", \"192.0.2.11\"", "\"192.0.2.99\"");
    t.server.reload(zone_from(&changed, 8, &t.health));
    let m = udp(t.udp(), &query("cdn.example.", RecordType::SOA));
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!(soa.serial, 8);
    let m = udp(t.udp(), &query("demo.cdn.example.", RecordType::A));
    assert_eq!(addrs(&m), vec![ip("192.0.2.99")]);
    // Answers of both versions are counted under the service's and POP's names.
    t.wait_metric(
        "firebreak_dns_answers_total{service=\"demo\",pop=\"ams\",source=\"healthy\"}",
        1,
    );
    t.wait_metric(
        "firebreak_dns_queries_total{qtype=\"SOA\",rcode=\"NOERROR\"}",
        2,
    );
}

#[test]
fn admin_serves_metrics_and_healthz() {
    let t = TestServer::default();
    udp(t.udp(), &query("demo.cdn.example.", RecordType::A));
    udp(t.udp(), &query("nope.cdn.example.", RecordType::AAAA));
    tcp(t.tcp(), &query("gone.cdn.example.", RecordType::A));
    let (status, body) = t.admin_get("/healthz");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "ok\n");
    t.wait_metric(
        "firebreak_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"}",
        2,
    );
    t.wait_metric(
        "firebreak_dns_queries_total{qtype=\"AAAA\",rcode=\"NXDOMAIN\"}",
        1,
    );
    t.wait_metric(
        "firebreak_dns_answers_total{service=\"demo\",pop=\"ams\",source=\"healthy\"}",
        1,
    );
    t.wait_metric(
        "firebreak_dns_answers_total{service=\"gone\",pop=\"\",source=\"fallback\"}",
        1,
    );
    let (_, body) = t.admin_get("/metrics");
    assert!(body.contains("# TYPE firebreak_dns_truncated_total counter"));
    let (status, _) = t.admin_get("/nope");
    assert!(status.contains("404"), "{status}");
}

#[test]
fn every_udp_thread_answers() {
    // Four sockets on one port: queries from many source ports land on all of them.
    let t = TestServer::start(firebreak_dns::TcpLimits::default(), 4);
    for _ in 0..64 {
        let m = udp(t.udp(), &query("demo.cdn.example.", RecordType::AAAA));
        assert_eq!(addrs(&m), vec![ip("2001:db8::10")]);
    }
    t.wait_metric(
        "firebreak_dns_queries_total{qtype=\"AAAA\",rcode=\"NOERROR\"}",
        64,
    );
}
