//! Firebreak's authoritative DNS server: answers for the CDN zone, steering each client to
//! the nearest healthy POP (by EDNS Client Subnet or the resolver's address, a prefix table
//! and an optional GeoIP database), never answering empty.
//!
//! - [`steer`]: one compiled version of the DNS data (`Steering`) and POP health;
//! - [`answer`]: a query's bytes to a response's bytes (`answer`, `Zone`);
//! - [`server`]: UDP threads (`SO_REUSEPORT`), TCP and the admin listener (`DnsServer`);
//! - [`tcp`], [`admin`], [`metrics`]: their parts;
//! - [`geoip`]: the MaxMind-format database (`Locate`); [`health`]: the active POP checker.
#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod admin;
pub mod answer;
pub mod geoip;
pub mod health;
pub mod metrics;
pub mod server;
pub mod steer;
pub mod tcp;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use answer::{answer, Outcome, Transport, Zone};
pub use geoip::{GeoIp, GeoIpError, MAX_GEOIP_BYTES};
pub use health::{CheckRound, HealthChecker};
pub use server::{DnsServer, ServerConfig};
pub use steer::{Client, Family, Health, Locate, Location, Lookup, Source, Steered, Steering};
pub use tcp::TcpLimits;
