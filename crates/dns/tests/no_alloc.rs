//! The UDP hot path allocates nothing per query: `answer` over the common queries (steered
//! A/AAAA with and without ECS, NXDOMAIN, NODATA, SOA, NS with glue, CNAME, errors) with a
//! reused buffer makes no heap allocation, counted by a global allocator that tallies this
//! thread's allocations. (Names over 32 bytes of label data are the exception: hickory's
//! `Name` keeps 32 inline, so they cost 2 allocations.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use firebreak_dns::steer::Health;
use firebreak_dns::{answer, Outcome, Transport};
use hickory_proto::rr::rdata::opt::ClientSubnet;
use hickory_proto::rr::RecordType;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

#[test]
fn answering_allocates_nothing() {
    let health = Health::new();
    health.set_checked("dead", false);
    let zone = zone_from(&fleet(), 7, &health);
    let ecs = ClientSubnet::new(ip("203.0.113.0"), 24, 0);
    let queries: Vec<(&str, Vec<u8>)> = vec![
        (
            "A",
            query("demo.cdn.example.", RecordType::A).to_vec().unwrap(),
        ),
        (
            "AAAA",
            query("demo.cdn.example.", RecordType::AAAA)
                .to_vec()
                .unwrap(),
        ),
        (
            "A with ECS",
            with_edns(query("demo.cdn.example.", RecordType::A), 1232, Some(ecs))
                .to_vec()
                .unwrap(),
        ),
        (
            "NXDOMAIN",
            query("s1234.cdn.example.", RecordType::A).to_vec().unwrap(),
        ),
        (
            "NODATA",
            query("four.cdn.example.", RecordType::AAAA)
                .to_vec()
                .unwrap(),
        ),
        (
            "SOA",
            query("cdn.example.", RecordType::SOA).to_vec().unwrap(),
        ),
        (
            "NS + glue",
            query("cdn.example.", RecordType::NS).to_vec().unwrap(),
        ),
        (
            "CNAME",
            query("gone.cdn.example.", RecordType::A).to_vec().unwrap(),
        ),
        (
            "REFUSED",
            query("example.org.", RecordType::A).to_vec().unwrap(),
        ),
        (
            "FORMERR",
            vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1],
        ),
    ];
    let mut out = Vec::with_capacity(65_535);
    let src = ip("198.51.100.1");
    for (what, q) in &queries {
        // Once to warm up anything lazily initialised.
        answer(&zone, q, src, Transport::Udp, &mut out);
        let before = allocations();
        for _ in 0..100 {
            let o = answer(&zone, q, src, Transport::Udp, &mut out);
            assert!(matches!(o, Outcome::Reply(_)), "{what}");
        }
        assert_eq!(allocations() - before, 0, "{what} allocated");
    }
}
