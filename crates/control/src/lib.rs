//! The Firebreak control plane: versioned, validated, signed configuration; the target version
//! the fleet runs; the fleet registry; purge fan-out; and the HTTP API over all of it.
//!
//! - [`store`]: versions, target and edges in redb (embedded) or etcd (replicated).
//! - [`plane`]: the operations, independent of HTTP.
//! - [`rollout`]: staged rollouts over cells, health gates, automatic rollback, audit log.
//! - [`keys`]: the signing keys: current, previous, rotation with an overlap, revocation.
//! - [`fanout`]: sending signed purge requests to every edge at once.
//! - [`api`]: the axum router, OpenAPI document.
//! - [`auth`]: who calls (operator by name and role, edge by its credential, a joining edge)
//!   and what each route allows, checked from the headers before any body is read.
//! - [`dns_guard`]: a push whose DNS data removes too many POPs or answers at once is refused
//!   unless forced; [`pops`]: each POP's health from its edges (`GET /v1/pops`), for DNS servers.
//! - [`registry`]: edge identity: join token → per-edge credential, bounded registry,
//!   pruning, removal.
//! - [`secrets`]: services' private keys moved out of bundles into secret documents,
//!   served only to edges that may run a version naming them; certificate expiry at push.
//! - [`listener`]: serving the API within its bounds ([`ApiLimits`]); [`bounded_body`]: request
//!   bodies read with size, time and memory bounds, errors as JSON; [`https`]: the API's
//!   certificate (`--tls-cert`, `--tls-key`).
//! - [`ui`]: the operator dashboard at `/ui/` (sign-in, sessions, CSRF; fleet, rollouts,
//!   versions, audit, purge, DNS, traffic pages), server-rendered from askama templates.
//! - [`status`]: the public status page (`/status`, Atom feed), incidents opened by hand or
//!   automatically (gate trips, unhealthy POPs, DNS fallbacks), and its static export.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod api;
pub mod auth;
pub mod backup;
pub mod bounded_body;
pub mod dns_guard;
mod failure;
pub mod fanout;
pub mod freshness;
pub mod https;
pub mod keys;
pub mod listener;
mod openapi;
pub mod plane;
pub mod pops;
pub mod registry;
pub mod rollout;
pub mod secrets;
pub mod status;
pub mod steering;
pub mod store;
pub mod tier;
pub mod ui;

pub use api::{serve, ControlServer, Tokens};
pub use listener::{serve_maybe_tls, serve_with, ApiLimits};
pub use plane::Plane;
pub use store::Store;
