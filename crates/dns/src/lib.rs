//! Firebreak's authoritative DNS server: answers for the CDN zone, steering each client to
//! the nearest healthy POP (by EDNS Client Subnet or the resolver's address, a prefix table
//! and an optional GeoIP database), never answering empty.

pub mod geoip;
pub mod health;
pub mod steer;

pub use geoip::{GeoIp, GeoIpError, MAX_GEOIP_BYTES};
pub use health::{CheckRound, HealthChecker};
pub use steer::{Client, Family, Health, Locate, Location, Lookup, Source, Steered, Steering};
