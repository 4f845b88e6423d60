//! Firebreak edge: an RFC 9111 caching reverse proxy.
//!
//! The request path lives in [`proxy`], one module per phase; HTTP semantics independent of
//! connections in [`http`]; storage behind the [`store::Storage`] trait; origins in
//! [`upstream`]; listeners and reloads in [`server`].
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod admin;
pub mod agent;
pub mod body;
pub mod client_body;
pub mod coalesce;
pub mod conn;
pub mod drills;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod http3;
pub mod proxy;
pub mod ratelimit;
pub mod runtime;
pub mod server;
pub mod signed_admin;
pub mod slice_body;
pub mod store;
pub mod telemetry;
pub mod tier;
pub mod tls;
pub mod upstream;

pub use server::{EdgeHandle, EdgeServer};

/// Helpers shared by unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testutil {
    use http::{HeaderMap, HeaderName, HeaderValue};

    /// A header map from name/value pairs (repeated names append).
    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }
}
