//! Firebreak configuration: the TOML model, its limits, and validation.
//!
//! A configuration file is hostile input. [`load_file`] and [`parse_str`] either return a
//! [`ValidConfig`] — every field checked, every size and count bounded — or a
//! [`ConfigRejected`] whose errors each name the file, line, column and field. Nothing is
//! half-applied: callers only ever see a complete, valid configuration or none at all.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

mod clients;
pub mod dns;
mod drills;
mod fetch;
mod forwarding;
pub mod http3;
mod limits;
mod load;
mod locate;
mod model;
pub mod origin_tls;
mod parts;
mod regexes;
mod rollout;
pub mod shield;
pub mod tls;
pub(crate) mod validate;

pub use clients::{ClientLimitsConfig, RateQuota, ServiceClientLimits};
pub use drills::{FaultAction, FaultConfig, SwitchAction, SwitchConfig};
pub use fetch::{BreakerConfig, FetchConfig, MAX_BREAKER_FAILURES};
pub use forwarding::{Cidr, ForwardingConfig, ServiceForwardingConfig};
pub use http3::Http3Config;
pub use limits::*;
pub use load::{
    load_file, load_file_as, parse_managed_str, parse_str, ConfigError, ConfigRejected, ValidConfig,
};
pub use model::*;
pub use parts::{check_fleet_document, check_service_document};
pub use rollout::*;
pub use shield::{ShieldConfig, ShieldMembersConfig, TierConfig};
pub use tls::{SecretPem, ServiceTlsConfig};
pub use validate::{compile_path_regex, valid_host_name, Mode};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]
mod dns_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]
mod tests;
