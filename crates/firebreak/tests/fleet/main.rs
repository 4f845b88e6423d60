//! The control plane and edges under it, end to end: real API server (axum), real stores
//! (redb, and etcd started by the test), real edges with data directories, real processes
//! where the fault needs one (kill -9, a full disk).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod api;
mod backup;
mod browser;
mod chrome;
mod control_tls;
mod dashboard;
mod dns_plane;
mod edges;
mod faults;
mod geoip;
mod harness;
mod identity;
mod keys;
mod replay;
mod rollouts;
mod secrets;
mod shield;
mod tls_edge;
mod validation;
mod writes;
