//! End-to-end tests: the real edge server on a loopback port in front of real origin servers
//! (hyper, or raw TCP for malformed answers), driven by a real HTTP client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod h3client;
mod test_ca;

mod admin;
mod bad_input;
mod caching;
mod coalescing;
mod disk_tier;
mod drills;
mod floods;
mod h2_floods;
mod http3;
mod http3_flood;
mod informational;
mod origin_faults;
mod origin_tls;
mod poisoning;
mod proxy_protocol;
mod proxying;
mod reload;
mod rfc9111_rest;
mod shield;
mod slices;
mod slow_clients;
mod slowloris;
mod smuggling;
mod stale;
mod tls;
mod variants;
