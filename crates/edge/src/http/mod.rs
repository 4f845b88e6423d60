//! HTTP semantics the edge needs that are independent of any connection: Cache-Control
//! parsing, freshness arithmetic, validators, ranges and hop-by-hop header rules.

pub mod accept_encoding;
pub mod cache_control;
pub mod cdn_cache_control;
pub mod conditional;
pub mod freshness;
pub mod headers;
pub mod path;
pub mod range;
pub mod request_fields;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod properties;
