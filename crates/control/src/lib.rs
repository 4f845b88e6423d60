//! The Firebreak control plane: versioned, validated, signed configuration; the target version
//! the fleet runs; the fleet registry; purge fan-out; and the HTTP API over all of it.
//!
//! - [`store`]: versions, target and edges in redb (embedded) or etcd (replicated).
//! - [`plane`]: the operations, independent of HTTP.
//! - [`rollout`]: staged rollouts over cells, health gates, automatic rollback, audit log.
//! - [`fanout`]: sending signed purge requests to every edge at once.
//! - [`api`]: the axum router, bearer-token auth, OpenAPI document.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod api;
pub mod backup;
pub mod fanout;
mod openapi;
pub mod plane;
pub mod rollout;
pub mod store;

pub use api::{serve, ControlServer, Tokens};
pub use plane::Plane;
pub use store::Store;
