//! Connection-level bounds and per-client fairness (`[limits.clients]`, `[service.clients]`,
//! `proxy_protocol` on `[[listener]]`): how long a connection may sit without sending, how
//! many connections and requests one client address may hold, and how many requests the edge
//! keeps in flight before it sheds.

use crate::limits::*;
use crate::locate::PathSeg::{self, Key};
use crate::validate::Checker;
use serde::Deserialize;

/// Fleet-wide client limits (`[limits.clients]`). Defaults follow nginx and Pingora: 10 s to
/// start and finish a request head, 60 s of keep-alive idleness.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimitsConfig {
    /// Time from accept to the first bytes of a connection (and, on a `proxy_protocol`
    /// listener, to the complete PROXY header, and to the bytes that tell HTTP/1 from h2).
    /// A connection that sends nothing is closed at this deadline.
    pub first_bytes_timeout_ms: u64,
    /// HTTP/1: an idle kept-alive connection (no request in progress, nothing sent) is closed
    /// after this long.
    pub keepalive_timeout_ms: u64,
    /// HTTP/2: a connection with no open stream for this long gets GOAWAY and is closed.
    pub h2_idle_timeout_ms: u64,
    /// HTTP/2: interval of keep-alive PINGs on a connection.
    pub h2_keepalive_interval_ms: u64,
    /// HTTP/2: a PING not acknowledged within this time closes the connection.
    pub h2_keepalive_timeout_ms: u64,
    /// A connection whose socket takes no bytes of a response for this long (the client
    /// stopped reading) is closed (nginx's `send_timeout`).
    pub send_timeout_ms: u64,
    /// Most concurrent connections from one client address (IPv6: one /64) on each client
    /// listener; checked before `limits.max_connections`, so one address cannot fill the edge.
    pub max_connections_per_address: usize,
    /// Most requests the edge works on at once (until their response head); beyond it new
    /// requests are answered 503 with `Retry-After` at once.
    pub max_requests_in_flight: usize,
    /// Requests per second one client address (IPv6: one /64) may send, per service (token
    /// bucket); 429 with `Retry-After` beyond it. 0 = no rate limit (the default).
    pub requests_per_second: u32,
    /// Bucket size: requests one address may send in a burst. 0 = one second's worth.
    pub burst: u32,
    /// A request over its rate is answered 429 after this delay (0 = at once): a client
    /// that keeps sending on its few allowed connections is slowed down to a trickle of
    /// cheap answers instead of taking the edge's CPU from everyone else.
    pub rate_limited_delay_ms: u64,
    /// Most client addresses whose rate state is kept per service; when full, the entry
    /// closest to a fresh bucket is forgotten.
    pub max_tracked_addresses: usize,
    /// Most bytes of a response waiting unsent in a client socket before the edge turns to
    /// other connections (`TCP_NOTSENT_LOWAT`): a large body is handed to the kernel in steps
    /// of about this size, so one download cannot fill the kernel's buffers while the others
    /// wait. Bytes already in flight to the client are not counted: it does not cap
    /// throughput. 0 = the kernel's setting (by default, no such bound).
    pub send_queue_bytes: u32,
}

impl Default for ClientLimitsConfig {
    fn default() -> Self {
        Self {
            first_bytes_timeout_ms: 10_000,
            keepalive_timeout_ms: 60_000,
            h2_idle_timeout_ms: 60_000,
            h2_keepalive_interval_ms: 20_000,
            h2_keepalive_timeout_ms: 20_000,
            send_timeout_ms: 60_000,
            max_connections_per_address: 1_000,
            max_requests_in_flight: 10_000,
            requests_per_second: 0,
            burst: 0,
            rate_limited_delay_ms: 250,
            max_tracked_addresses: 100_000,
            send_queue_bytes: DEFAULT_SEND_QUEUE_BYTES,
        }
    }
}

/// Per-service overrides of the fleet's client limits (`[service.clients]`); an unset field
/// takes the fleet's value.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceClientLimits {
    /// Requests per second per client address for this service; 0 = no rate limit.
    pub requests_per_second: Option<u32>,
    /// Burst for this service; 0 = one second's worth.
    pub burst: Option<u32>,
}

/// An effective token bucket: `rate` requests per second, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateQuota {
    /// Requests per second (at least 1).
    pub per_second: u32,
    /// Bucket size (at least 1).
    pub burst: u32,
}

impl ClientLimitsConfig {
    /// The token bucket a service gets: its own setting, else the fleet's; `None` when off.
    pub fn quota_for(&self, service: &ServiceClientLimits) -> Option<RateQuota> {
        let per_second = service
            .requests_per_second
            .unwrap_or(self.requests_per_second);
        if per_second == 0 {
            return None;
        }
        let burst = match service.burst.unwrap_or(self.burst) {
            0 => per_second,
            b => b,
        };
        Some(RateQuota { per_second, burst })
    }
}

pub(crate) fn check(c: &mut Checker, l: &ClientLimitsConfig) {
    let at = |k: &'static str| [Key("limits"), Key("clients"), Key(k)];
    for (name, ms) in [
        ("first_bytes_timeout_ms", l.first_bytes_timeout_ms),
        ("keepalive_timeout_ms", l.keepalive_timeout_ms),
        ("h2_idle_timeout_ms", l.h2_idle_timeout_ms),
        ("h2_keepalive_interval_ms", l.h2_keepalive_interval_ms),
        ("h2_keepalive_timeout_ms", l.h2_keepalive_timeout_ms),
        ("send_timeout_ms", l.send_timeout_ms),
    ] {
        c.timeout(&at(name), ms);
    }
    if l.max_connections_per_address == 0 || l.max_connections_per_address > MAX_CONNECTIONS_LIMIT {
        c.fail(
            &at("max_connections_per_address"),
            format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
        );
    }
    if l.max_requests_in_flight == 0 || l.max_requests_in_flight > MAX_REQUESTS_IN_FLIGHT_LIMIT {
        c.fail(
            &at("max_requests_in_flight"),
            format!("must be between 1 and {MAX_REQUESTS_IN_FLIGHT_LIMIT}"),
        );
    }
    if l.rate_limited_delay_ms > MAX_RATE_LIMITED_DELAY_MS {
        c.fail(
            &at("rate_limited_delay_ms"),
            format!("must be at most {MAX_RATE_LIMITED_DELAY_MS} ms (0 = answer at once)"),
        );
    }
    if l.send_queue_bytes != 0
        && !(MIN_SEND_QUEUE_BYTES..=MAX_SEND_QUEUE_BYTES).contains(&l.send_queue_bytes)
    {
        c.fail(
            &at("send_queue_bytes"),
            format!(
                "must be 0 (the kernel's setting) or between {MIN_SEND_QUEUE_BYTES} and {MAX_SEND_QUEUE_BYTES}"
            ),
        );
    }
    rate(c, &at("requests_per_second"), l.requests_per_second);
    rate(c, &at("burst"), l.burst);
    if !(MIN_TRACKED_ADDRESSES..=MAX_TRACKED_ADDRESSES).contains(&l.max_tracked_addresses) {
        c.fail(
            &at("max_tracked_addresses"),
            format!("must be between {MIN_TRACKED_ADDRESSES} and {MAX_TRACKED_ADDRESSES}"),
        );
    }
}

pub(crate) fn check_service(c: &mut Checker, base: &[PathSeg], s: &ServiceClientLimits) {
    let at = |k: &'static str| -> Vec<PathSeg> {
        base.iter()
            .cloned()
            .chain([Key("clients"), Key(k)])
            .collect()
    };
    if let Some(r) = s.requests_per_second {
        rate(c, &at("requests_per_second"), r);
    }
    if let Some(b) = s.burst {
        rate(c, &at("burst"), b);
    }
}

fn rate(c: &mut Checker, path: &[PathSeg], n: u32) {
    if n > MAX_RATE_PER_SECOND {
        c.fail(
            path,
            format!("must be at most {MAX_RATE_PER_SECOND} (0 = unlimited)"),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let text = r#"
[[listener]]
addr = "127.0.0.1:8080"
proxy_protocol = true

[limits.clients]
first_bytes_timeout_ms = 0
max_connections_per_address = 0

[[service]]
name = "a"
hosts = ["a.example"]
[service.origin]
servers = [{ addr = "127.0.0.1:9000" }]
[service.clients]
requests_per_second = 2000000
"#;
        let e = crate::parse_str("edge.toml", text).unwrap_err().to_string();
        for field in [
            "limits.clients.first_bytes_timeout_ms",
            "limits.clients.max_connections_per_address",
            "service[0].clients.requests_per_second",
        ] {
            assert!(e.contains(field), "{field} not named in:\n{e}");
        }
        let ok = text
            .replace("first_bytes_timeout_ms = 0", "first_bytes_timeout_ms = 1")
            .replace(
                "max_connections_per_address = 0",
                "max_connections_per_address = 1",
            )
            .replace("2000000", "5");
        let c = crate::parse_str("edge.toml", &ok).unwrap();
        assert!(c.listeners[0].proxy_protocol);
    }

    #[test]
    fn service_rate_overrides_the_fleet() {
        let fleet = ClientLimitsConfig {
            requests_per_second: 10,
            ..Default::default()
        };
        let none = ServiceClientLimits::default();
        assert_eq!(
            fleet.quota_for(&none),
            Some(RateQuota {
                per_second: 10,
                burst: 10
            })
        );
        let own = ServiceClientLimits {
            requests_per_second: Some(5),
            burst: Some(50),
        };
        assert_eq!(
            fleet.quota_for(&own),
            Some(RateQuota {
                per_second: 5,
                burst: 50
            })
        );
        let off = ServiceClientLimits {
            requests_per_second: Some(0),
            burst: None,
        };
        assert_eq!(fleet.quota_for(&off), None);
        assert_eq!(ClientLimitsConfig::default().quota_for(&none), None);
    }
}
