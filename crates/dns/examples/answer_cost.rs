//! CPU cost of `answer` alone (no sockets), on the benchmark's zone and query mix:
//!   python3 ../shared/bench-dns/tools/genzone.py /tmp/z   # writes cdn.test.zone, queries.txt
//!   bench/dns-candidate.sh writes the fleet document next to the zone; or give one:
//!   cargo run --release -p firebreak-dns --example answer_cost -- FLEET.toml QUERIES.txt [ECS]
//! Prints nanoseconds per query over the whole query file, repeated for about 2 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use firebreak_dns::{answer, Health, Steering, Transport, Zone};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (fleet, queries) = (&args[1], &args[2]);
    let ecs = args.get(3).is_some();
    let text = std::fs::read_to_string(fleet).unwrap();
    let valid = firebreak_config::parse_managed_str(fleet, &text).unwrap();
    let zone = Zone::new(Steering::compile(valid.get(), 1, None, &Health::new()).unwrap());
    let wire: Vec<Vec<u8>> = std::fs::read_to_string(queries)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (name, t) = l.split_once(' ')?;
            let t = if t == "AAAA" {
                RecordType::AAAA
            } else {
                RecordType::A
            };
            let mut m = Message::new(1, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(Name::from_ascii(name).ok()?, t));
            if ecs {
                let mut e = Edns::new();
                e.set_max_payload(1232);
                e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                    "203.0.113.0".parse().unwrap(),
                    24,
                    0,
                )));
                m.set_edns(e);
            }
            m.to_vec().ok()
        })
        .collect();
    let src = "127.0.0.1".parse().unwrap();
    let mut out = Vec::with_capacity(65_535);
    let start = Instant::now();
    let mut n: u64 = 0;
    let mut bytes = 0usize;
    while start.elapsed() < Duration::from_secs(2) {
        for q in &wire {
            answer(&zone, q, src, Transport::Udp, &mut out);
            bytes += out.len();
            n += 1;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{n} queries, {ns:.0} ns/query ({bytes} bytes out)");
}
