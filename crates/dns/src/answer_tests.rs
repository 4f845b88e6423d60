#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::steer::Health;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{DNSClass, RData, RecordType};
use std::str::FromStr;
use std::sync::Arc;

pub(crate) const FLEET: &str = include_str!("../tests/common/fleet.toml");

/// The test fleet document: "big" answers 16 IPv6 addresses (448 bytes of AAAA records;
/// with its service's 40-character label, over 512 bytes).
pub(crate) fn fleet_text() -> String {
    let big: Vec<String> = (1..=16).map(|i| format!("\"2001:db8:2::{i:x}\"")).collect();
    FLEET.replace("BIG", &big.join(", "))
}

pub(crate) fn test_zone() -> (Zone, Arc<Health>) {
    let valid = firebreak_config::parse_managed_str("fleet.toml", &fleet_text()).unwrap();
    let health = Health::new();
    health.set_checked("dead", false);
    let steering = Steering::compile(valid.get(), 7, None, &health).unwrap();
    (Zone::new(steering), health)
}

fn src() -> IpAddr {
    IpAddr::from_str("198.51.100.1").unwrap()
}

fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(HQuery::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

fn with_edns(mut m: Message, payload: u16, ecs: Option<ClientSubnet>) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(payload);
    if let Some(c) = ecs {
        e.options_mut().insert(EdnsOption::Subnet(c));
    }
    m.set_edns(e);
    m
}

fn ask_bytes(zone: &Zone, q: &[u8], t: Transport) -> (Outcome, Vec<u8>) {
    let mut out = Vec::with_capacity(MAX_MESSAGE);
    let o = answer(zone, q, src(), t, &mut out);
    (o, out)
}

fn ask(zone: &Zone, q: &Message) -> (Reply, Message) {
    ask_over(zone, q, Transport::Udp)
}

fn ask_over(zone: &Zone, q: &Message, t: Transport) -> (Reply, Message) {
    let (o, out) = ask_bytes(zone, &q.to_vec().unwrap(), t);
    let Outcome::Reply(r) = o else {
        panic!("dropped: {o:?}")
    };
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    (r, m)
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    IpAddr::from_str(s).unwrap()
}

fn negative_soa(m: &Message) {
    assert!(m.answers.is_empty(), "{m:?}");
    assert_eq!(m.authorities.len(), 1, "{m:?}");
    let soa = &m.authorities[0];
    assert_eq!(soa.name, Name::from_ascii("cdn.example.").unwrap());
    assert_eq!(soa.ttl, 60, "negative TTL");
    let RData::SOA(s) = &soa.data else {
        panic!("not a SOA: {soa:?}")
    };
    assert_eq!(s.serial, 7);
    assert_eq!(s.minimum, 60);
}

#[test]
fn a_for_a_service_is_steered_and_authoritative() {
    let (z, _) = test_zone();
    let (r, m) = ask(&z, &query("demo.cdn.example.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_desired, "RD copied");
    assert!(!m.metadata.recursion_available);
    assert_eq!(addrs(&m), vec![ip("192.0.2.10"), ip("192.0.2.11")]);
    assert!(m.answers.iter().all(|a| a.ttl == 30));
    assert!(m.edns.is_none(), "no OPT without one in the query");
    let s = r.steered.unwrap();
    assert_eq!(z.steering().service_name(s.service), "demo");
    assert_eq!(s.pop.map(|p| z.steering().pop_name(p)), Some("ams"));
    assert_eq!(s.source, Source::Healthy);
}

#[test]
fn aaaa_for_a_service_is_steered() {
    let (z, _) = test_zone();
    let (_, m) = ask(&z, &query("demo.cdn.example.", RecordType::AAAA));
    assert_eq!(addrs(&m), vec![ip("2001:db8::10")]);
    assert!(m.metadata.authoritative);
}

#[test]
fn soa_at_the_apex() {
    let (z, _) = test_zone();
    let (_, m) = ask(&z, &query("cdn.example.", RecordType::SOA));
    assert_eq!(m.answers.len(), 1);
    let RData::SOA(s) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(s.mname, Name::from_ascii("ns1.cdn.example.").unwrap());
    assert_eq!(s.serial, 7);
    assert_eq!(m.answers[0].ttl, 3600);
    assert!(m.metadata.authoritative);
}

#[test]
fn ns_at_the_apex_with_glue_for_in_zone_servers_only() {
    let (z, _) = test_zone();
    let (_, m) = ask(&z, &query("cdn.example.", RecordType::NS));
    let ns: Vec<String> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::NS(n) => n.0.to_ascii(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ns, vec!["ns1.cdn.example.", "ns.other.example."]);
    let glue: Vec<(String, IpAddr)> = m
        .additionals
        .iter()
        .map(|r| {
            let a = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                other => panic!("{other:?}"),
            };
            (r.name.to_ascii(), a)
        })
        .collect();
    assert_eq!(
        glue,
        vec![
            ("ns1.cdn.example.".to_owned(), ip("192.0.2.53")),
            ("ns1.cdn.example.".to_owned(), ip("2001:db8::53")),
        ]
    );
}

#[test]
fn a_and_aaaa_of_a_name_server() {
    let (z, _) = test_zone();
    let (_, m) = ask(&z, &query("ns1.cdn.example.", RecordType::A));
    assert_eq!(addrs(&m), vec![ip("192.0.2.53")]);
    let (_, m) = ask(&z, &query("ns1.cdn.example.", RecordType::AAAA));
    assert_eq!(addrs(&m), vec![ip("2001:db8::53")]);
    let (_, m) = ask(&z, &query("ns1.cdn.example.", RecordType::MX));
    negative_soa(&m);
}

#[test]
fn other_types_at_existing_names_are_nodata() {
    let (z, _) = test_zone();
    for (name, t) in [
        ("demo.cdn.example.", RecordType::MX),
        ("demo.cdn.example.", RecordType::TXT),
        ("cdn.example.", RecordType::A),
        ("four.cdn.example.", RecordType::AAAA),
        ("demo.cdn.example.", RecordType::Unknown(65280)),
    ] {
        let (r, m) = ask(&z, &query(name, t));
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name} {t}"
        );
        assert!(m.metadata.authoritative);
        negative_soa(&m);
        assert_eq!(r.steered, None);
    }
}

#[test]
fn names_that_do_not_exist_are_nxdomain_with_the_soa() {
    let (z, _) = test_zone();
    for name in [
        "nope.cdn.example.",
        "a.demo.cdn.example.",
        "x.ns1.cdn.example.",
    ] {
        let (r, m) = ask(&z, &query(name, RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert_eq!(r.rcode, Rcode::NxDomain);
        assert!(m.metadata.authoritative);
        negative_soa(&m);
    }
}

#[test]
fn names_outside_the_zone_are_refused() {
    let (z, _) = test_zone();
    for name in ["example.", "other.example.", "ns.other.example.", "."] {
        let (_, m) = ask(&z, &query(name, RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
        assert!(!m.metadata.authoritative);
        assert!(m.answers.is_empty() && m.authorities.is_empty());
    }
}

#[test]
fn any_gets_one_rrset() {
    let (z, _) = test_zone();
    let (_, m) = ask(&z, &query("demo.cdn.example.", RecordType::ANY));
    assert_eq!(addrs(&m), vec![ip("192.0.2.10"), ip("192.0.2.11")]);
    assert!(m.answers.iter().all(|r| r.record_type() == RecordType::A));
    let (_, m) = ask(&z, &query("cdn.example.", RecordType::ANY));
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    let (_, m) = ask(
        &z,
        &query(
            "truncation-test-answers-of-sixteen-aaaax.cdn.example.",
            RecordType::ANY,
        ),
    );
    assert!(m
        .answers
        .iter()
        .all(|r| r.record_type() == RecordType::AAAA));
}

#[test]
fn hinfo_rfc8482_when_any_has_nothing_to_give() {
    let (z, _) = test_zone();
    let mut out = Vec::new();
    let q = query("cdn.example.", RecordType::ANY);
    let bytes = q.to_vec().unwrap();
    let q = parse(&bytes, read_head(&bytes).unwrap()).unwrap();
    let o = respond(&z, &q, Plan::Hinfo, (None, 0), Transport::Udp, &mut out);
    assert!(matches!(o, Outcome::Reply(_)));
    let m = Message::from_vec(&out).unwrap();
    let RData::HINFO(h) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(&*h.cpu, b"RFC8482");
    assert_eq!(&*h.os, b"");
}

#[test]
fn fallback_cname_when_no_pop_is_healthy() {
    let (z, _) = test_zone();
    for t in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::MX,
        RecordType::CNAME,
    ] {
        let (r, m) = ask(&z, &query("gone.cdn.example.", t));
        assert_eq!(m.answers.len(), 1, "{t}: {m:?}");
        let RData::CNAME(c) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(c.0, Name::from_ascii("gone.backup.example.").unwrap());
        assert_eq!(m.answers[0].ttl, 30);
        assert_eq!(r.steered.map(|s| s.source), Some(Source::Fallback));
    }
}

#[test]
fn names_are_case_insensitive_and_the_question_is_echoed_as_sent() {
    let (z, _) = test_zone();
    let (_, m) = ask(&z, &query("DeMo.CDN.example.", RecordType::A));
    assert_eq!(m.queries[0].name().to_ascii(), "DeMo.CDN.example.");
    assert_eq!(addrs(&m).len(), 2);
    let (_, m) = ask(&z, &query("NoPe.Cdn.Example.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.queries[0].name().to_ascii(), "NoPe.Cdn.Example.");
}

#[test]
fn opcodes_other_than_query_are_notimp() {
    let (z, _) = test_zone();
    for op in [OpCode::Status, OpCode::Notify, OpCode::Update] {
        let mut q = query("demo.cdn.example.", RecordType::A);
        q.metadata.op_code = op;
        let (r, m) = ask(&z, &q);
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp, "{op:?}");
        assert_eq!(m.metadata.op_code, op);
        assert_eq!(r.rcode, Rcode::NotImp);
    }
}

#[test]
fn question_counts_other_than_one_are_formerr() {
    let (z, _) = test_zone();
    let mut q = query("demo.cdn.example.", RecordType::A);
    q.add_query(HQuery::query(
        Name::from_ascii("cdn.example.").unwrap(),
        RecordType::A,
    ));
    let (_, m) = ask(&z, &q);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    let q = Message::new(0x1234, MessageType::Query, OpCode::Query);
    let (_, m) = ask(&z, &q);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
}

fn raw_header(qd: u16, ar: u16) -> Vec<u8> {
    let mut v = vec![0x12, 0x34, 0x01, 0x00];
    v.extend_from_slice(&qd.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&ar.to_be_bytes());
    v
}

fn formerr(z: &Zone, q: &[u8]) {
    let (o, out) = ask_bytes(z, q, Transport::Udp);
    let Outcome::Reply(r) = o else {
        panic!("dropped")
    };
    assert_eq!(r.rcode, Rcode::FormErr, "{q:?}");
    assert_eq!(&out[..2], &[0x12, 0x34]);
    assert_eq!(out[2] & 0x80, 0x80, "QR");
    assert_eq!(out[3] & 0x0F, 1, "FORMERR");
}

#[test]
fn malformed_questions_are_formerr() {
    let (z, _) = test_zone();
    let mut bad_label = raw_header(1, 0);
    bad_label.extend_from_slice(&[0x80, b'a', 0, 0, 1, 0, 1]);
    formerr(&z, &bad_label);
    let mut truncated_name = raw_header(1, 0);
    truncated_name.extend_from_slice(&[4, b'd', b'e']);
    formerr(&z, &truncated_name);
    let mut no_type = raw_header(1, 0);
    no_type.extend_from_slice(&[4, b'd', b'e', b'm', b'o', 0, 0]);
    formerr(&z, &no_type);
    let mut long_label = raw_header(1, 0);
    long_label.push(63);
    long_label.extend_from_slice(&[b'a'; 63]);
    long_label.extend_from_slice(&[0; 4]);
    long_label.truncate(long_label.len() - 2);
    formerr(&z, &long_label);
    let mut too_long = raw_header(1, 0);
    for _ in 0..5 {
        too_long.push(60);
        too_long.extend_from_slice(&[b'a'; 60]);
    }
    too_long.extend_from_slice(&[0, 0, 1, 0, 1]);
    formerr(&z, &too_long);
}

#[test]
fn compression_loops_are_formerr() {
    let (z, _) = test_zone();
    // The question's name is a pointer to itself.
    let mut self_loop = raw_header(1, 0);
    self_loop.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    formerr(&z, &self_loop);
    // A label, then a pointer back to the label's start.
    let mut two = raw_header(1, 0);
    two.extend_from_slice(&[1, b'a', 0xC0, 12, 0, 1, 0, 1]);
    formerr(&z, &two);
    // A forward pointer.
    let mut fwd = raw_header(1, 0);
    fwd.extend_from_slice(&[0xC0, 14, 0, 0, 1, 0, 1]);
    formerr(&z, &fwd);
}

#[test]
fn truncated_records_after_the_question_are_formerr() {
    let (z, _) = test_zone();
    let mut q = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    q[11] = 1; // ARCOUNT 1, no record follows
    formerr(&z, &q);
    q.extend_from_slice(&[0, 0, 41, 4, 0xD0, 0, 0]); // an OPT cut in its TTL
    formerr(&z, &q);
}

#[test]
fn responses_and_short_packets_are_dropped() {
    let (z, _) = test_zone();
    let mut q = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    q[2] |= 0x80;
    assert_eq!(
        ask_bytes(&z, &q, Transport::Udp).0,
        Outcome::Drop(Dropped::Response)
    );
    for n in 0..12 {
        let (o, out) = ask_bytes(&z, &vec![0; n], Transport::Udp);
        assert_eq!(o, Outcome::Drop(Dropped::Short));
        assert!(out.is_empty());
    }
}

#[test]
fn edns_is_echoed_with_our_payload_size_and_the_do_bit() {
    let (z, _) = test_zone();
    let mut q = with_edns(query("demo.cdn.example.", RecordType::A), 4096, None);
    q.edns.as_mut().unwrap().set_dnssec_ok(true);
    let (_, m) = ask(&z, &q);
    let e = m.edns.as_ref().expect("OPT echoed");
    assert_eq!(e.max_payload(), OUR_UDP_PAYLOAD);
    assert_eq!(e.version(), 0);
    assert!(e.flags().dnssec_ok);
    assert_eq!(addrs(&m).len(), 2);
}

#[test]
fn edns_versions_above_zero_are_badvers() {
    let (z, _) = test_zone();
    let mut q = with_edns(query("demo.cdn.example.", RecordType::A), 1232, None);
    q.edns.as_mut().unwrap().set_version(1);
    let (r, m) = ask(&z, &q);
    assert_eq!(r.rcode, Rcode::BadVers);
    // 16 is both BADVERS and BADSIG; hickory names it BADSIG.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert_eq!(m.edns.as_ref().unwrap().version(), 0);
    assert!(m.answers.is_empty());
}

#[test]
fn two_opt_records_are_formerr() {
    let (z, _) = test_zone();
    let mut q = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    q[11] = 2;
    for _ in 0..2 {
        q.extend_from_slice(&[0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 0]);
    }
    formerr(&z, &q);
}

#[test]
fn big_answers_are_truncated_to_the_udp_size_and_whole_over_tcp() {
    let (z, _) = test_zone();
    let q = query(
        "truncation-test-answers-of-sixteen-aaaax.cdn.example.",
        RecordType::AAAA,
    );
    // No EDNS: 512 bytes.
    let (r, m) = ask(&z, &q);
    assert!(r.truncated && m.metadata.truncation);
    assert!(m.answers.is_empty() && m.additionals.is_empty());
    assert_eq!(m.queries.len(), 1);
    assert!(m.metadata.authoritative);
    // EDNS at 512 (and below: raised to 512): still too small.
    for size in [512, 100] {
        let (r, m) = ask(&z, &with_edns(q.clone(), size, None));
        assert!(r.truncated);
        assert!(m.edns.is_some(), "the OPT stays in a truncated response");
    }
    // EDNS at 4096: answered up to our 1232, which fits 40 AAAA.
    let (r, m) = ask(&z, &with_edns(q.clone(), 4096, None));
    assert!(!r.truncated);
    assert_eq!(addrs(&m).len(), 16);
    // TCP: whole, with or without EDNS.
    let (r, m) = ask_over(&z, &q, Transport::Tcp);
    assert!(!r.truncated && !m.metadata.truncation);
    assert_eq!(addrs(&m).len(), 16);
}

#[test]
fn udp_responses_never_exceed_the_allowed_size() {
    let (z, _) = test_zone();
    for (name, t) in [
        (
            "truncation-test-answers-of-sixteen-aaaax.cdn.example.",
            RecordType::AAAA,
        ),
        ("cdn.example.", RecordType::NS),
        ("demo.cdn.example.", RecordType::A),
    ] {
        for payload in [None, Some(512), Some(1232), Some(65535)] {
            let q = query(name, t);
            let q = match payload {
                Some(p) => with_edns(q, p, None),
                None => q,
            };
            let (_, out) = ask_bytes(&z, &q.to_vec().unwrap(), Transport::Udp);
            let max = payload.map(|p| p.min(OUR_UDP_PAYLOAD)).unwrap_or(512);
            assert!(
                out.len() <= usize::from(max),
                "{name} {payload:?}: {}",
                out.len()
            );
        }
    }
}

fn subnet(m: &Message) -> Option<ClientSubnet> {
    match m
        .edns
        .as_ref()?
        .option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet)?
    {
        EdnsOption::Subnet(s) => Some(*s),
        _ => None,
    }
}

#[test]
fn ecs_steers_and_is_echoed_with_the_scope() {
    let (z, _) = test_zone();
    let ecs = ClientSubnet::new(ip("203.0.113.0"), 24, 0);
    let q = with_edns(query("demo.cdn.example.", RecordType::A), 1232, Some(ecs));
    let (r, m) = ask(&z, &q);
    assert_eq!(addrs(&m), vec![ip("198.51.100.10")], "the us region's POP");
    assert_eq!(
        r.steered
            .and_then(|s| s.pop)
            .map(|p| z.steering().pop_name(p)),
        Some("nyc")
    );
    let back = subnet(&m).expect("ECS echoed");
    assert_eq!(back.addr(), ip("203.0.113.0"));
    assert_eq!(back.source_prefix(), 24);
    assert!(back.scope_prefix() > 0, "the answer depends on the subnet");
    // The same query without ECS goes by the source address (198.51.100.1: default region).
    let (_, m) = ask(&z, &query("demo.cdn.example.", RecordType::A));
    assert_eq!(addrs(&m), vec![ip("192.0.2.10"), ip("192.0.2.11")]);
}

#[test]
fn ecs_scope_is_zero_for_answers_that_do_not_depend_on_the_client() {
    let (z, _) = test_zone();
    let ecs = ClientSubnet::new(ip("203.0.113.0"), 24, 0);
    for (name, t) in [
        ("nope.cdn.example.", RecordType::A),
        ("cdn.example.", RecordType::SOA),
        ("other.example.", RecordType::A),
    ] {
        let (_, m) = ask(&z, &with_edns(query(name, t), 1232, Some(ecs)));
        let back = subnet(&m).expect("ECS echoed");
        assert_eq!(back.scope_prefix(), 0, "{name}");
        assert_eq!(back.source_prefix(), 24);
    }
    // SOURCE PREFIX-LENGTH 0: the source address decides, scope 0.
    let ecs0 = ClientSubnet::new(ip("0.0.0.0"), 0, 0);
    let (_, m) = ask(
        &z,
        &with_edns(query("demo.cdn.example.", RecordType::A), 1232, Some(ecs0)),
    );
    assert_eq!(subnet(&m).unwrap().scope_prefix(), 0);
    assert_eq!(addrs(&m), vec![ip("192.0.2.10"), ip("192.0.2.11")]);
}

fn with_raw_option(code: u16, data: &[u8]) -> Vec<u8> {
    let mut q = query("demo.cdn.example.", RecordType::A).to_vec().unwrap();
    q[11] = 1;
    q.extend_from_slice(&[0, 0, 41, 4, 0xD0, 0, 0, 0, 0]);
    q.extend_from_slice(&u16::try_from(4 + data.len()).unwrap().to_be_bytes());
    q.extend_from_slice(&code.to_be_bytes());
    q.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    q.extend_from_slice(data);
    q
}

#[test]
fn invalid_client_subnets_are_formerr() {
    let (z, _) = test_zone();
    for (what, data) in [
        (
            "bits beyond the source prefix",
            vec![0, 1, 24, 0, 203, 0, 113, 1],
        ),
        ("bits beyond a /23", vec![0, 1, 23, 0, 203, 0, 113]),
        ("source prefix over 32", vec![0, 1, 33, 0, 1, 2, 3, 4, 5]),
        ("source prefix over 128", vec![0, 2, 129, 0]),
        ("address longer than the prefix", vec![0, 1, 8, 0, 10, 0]),
        ("address shorter than the prefix", vec![0, 1, 24, 0, 10]),
        ("unknown family", vec![0, 3, 8, 0, 10]),
        ("cut short", vec![0, 1, 8]),
    ] {
        let q = with_raw_option(8, &data);
        let (o, out) = ask_bytes(&z, &q, Transport::Udp);
        let Outcome::Reply(r) = o else {
            panic!("{what}: dropped")
        };
        assert_eq!(r.rcode, Rcode::FormErr, "{what}");
        let m = Message::from_vec(&out).unwrap();
        assert!(m.edns.is_some(), "{what}: still an EDNS answer");
        assert!(subnet(&m).is_none());
    }
    // Unknown options are skipped.
    let (o, _) = ask_bytes(&z, &with_raw_option(65001, &[1, 2, 3]), Transport::Udp);
    assert!(matches!(
        o,
        Outcome::Reply(Reply {
            rcode: Rcode::NoError,
            ..
        })
    ));
}

#[test]
fn oversized_edns_payloads_are_capped_at_ours() {
    let (z, _) = test_zone();
    let (_, m) = ask(
        &z,
        &with_edns(
            query(
                "truncation-test-answers-of-sixteen-aaaax.cdn.example.",
                RecordType::AAAA,
            ),
            65535,
            None,
        ),
    );
    assert_eq!(m.edns.unwrap().max_payload(), OUR_UDP_PAYLOAD);
}

#[test]
fn unknown_classes_and_meta_types() {
    let (z, _) = test_zone();
    for class in [DNSClass::CH, DNSClass::HS, DNSClass::Unknown(999)] {
        let mut q = query("demo.cdn.example.", RecordType::A);
        q.queries[0].set_query_class(class);
        let (r, _) = ask(&z, &q);
        assert_eq!(r.rcode, Rcode::Refused, "{class:?}");
    }
    for (t, rcode) in [
        (RecordType::AXFR, Rcode::Refused),
        (RecordType::IXFR, Rcode::Refused),
        (RecordType::OPT, Rcode::FormErr),
        (RecordType::Unknown(254), Rcode::NotImp),
    ] {
        let (r, _) = ask(&z, &query("cdn.example.", t));
        assert_eq!(r.rcode, rcode, "{t}");
    }
}

#[test]
fn a_mapped_source_address_is_read_as_ipv4() {
    let q = Query {
        head: read_head(&[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap(),
        qname: Name::root(),
        qtype: 1,
        qclass: 1,
        edns: None,
    };
    let c = client(&q, ip("::ffff:203.0.113.9"));
    assert_eq!(c.addr, ip("203.0.113.9"));
    assert_eq!(c.source_prefix, 32);
}

#[test]
fn the_output_buffer_keeps_its_capacity() {
    let (z, _) = test_zone();
    let q = with_edns(query("demo.cdn.example.", RecordType::A), 1232, None)
        .to_vec()
        .unwrap();
    let mut out = Vec::with_capacity(MAX_MESSAGE);
    let before = out.as_ptr();
    for _ in 0..100 {
        answer(&z, &q, src(), Transport::Udp, &mut out);
    }
    assert_eq!(out.as_ptr(), before, "no reallocation");
}

#[test]
fn nodata_is_flagged_and_one_family_missing_is_not_empty() {
    let (z, _) = test_zone();
    // An IPv4-only service asked AAAA: NODATA, but the A query has an answer.
    let (r, m) = ask(&z, &query("four.cdn.example.", RecordType::AAAA));
    assert!(m.answers.is_empty());
    assert!(r.nodata && !r.empty, "{r:?}");
    let (r, _) = ask(&z, &query("four.cdn.example.", RecordType::A));
    assert!(!r.nodata && !r.empty, "{r:?}");
    // A type the service has no data of: NODATA, not an address query.
    let (r, _) = ask(&z, &query("demo.cdn.example.", RecordType::MX));
    assert!(r.nodata && !r.empty, "{r:?}");
    // The fallback CNAME is an answer.
    let (r, _) = ask(&z, &query("gone.cdn.example.", RecordType::AAAA));
    assert!(!r.nodata && !r.empty, "{r:?}");
    let (r, _) = ask(&z, &query("nope.cdn.example.", RecordType::A));
    assert!(!r.nodata && !r.empty && r.rcode == Rcode::NxDomain, "{r:?}");
}
