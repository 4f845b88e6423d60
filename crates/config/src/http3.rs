//! HTTP/3 on the TLS listeners (`[http3]`, and `alt_svc` on `[[service]]`): every TLS listener
//! also serves HTTP/3 over QUIC on the same port number (UDP) unless `enabled = false`.
//!
//! The bounds are the QUIC counterparts of the TCP listeners' ones: connections, request
//! streams per connection, idle time, and address validation. A QUIC Initial can come from a
//! spoofed address; answering it with a handshake costs the edge state and amplifies traffic
//! towards the victim. Above `validate_addresses_above` handshakes in progress, an Initial
//! from an address that has not proved itself gets a Retry (a stateless token round trip)
//! instead, so a flood of spoofed Initials costs one small packet each and no memory.

use crate::locate::PathSeg::Key;
use crate::validate::Checker;
use serde::Deserialize;

/// Most concurrent QUIC connections an edge can be configured for.
pub const MAX_HTTP3_CONNECTIONS: usize = 1_000_000;
/// Most concurrent request streams per connection an edge can be configured for.
pub const MAX_HTTP3_STREAMS: u32 = 10_000;
/// Most queued connection attempts (Initials not yet accepted or refused).
pub const MAX_HTTP3_PENDING: usize = 1_000_000;
/// Longest `Alt-Svc` max-age: one year.
pub const MAX_ALT_SVC_MAX_AGE_S: u64 = 365 * 24 * 3600;

/// Fleet-wide HTTP/3 settings (`[http3]`). Changes take effect on restart.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http3Config {
    /// Serve HTTP/3 on UDP, on the port of every TLS listener.
    pub enabled: bool,
    /// Most concurrent QUIC connections (handshakes in progress included); a connection
    /// attempt beyond it is refused (CONNECTION_REFUSED) without keeping state.
    pub max_connections: usize,
    /// Most concurrent request streams a client may open on one connection (QUIC stream
    /// credit: further requests wait on the client's side).
    pub max_streams_per_connection: u32,
    /// A connection with no packets for this long is closed (QUIC idle timeout). The
    /// handshake must complete within `limits.clients.first_bytes_timeout_ms`.
    pub idle_timeout_ms: u64,
    /// Handshakes in progress above which a new Initial from an address that has not been
    /// validated gets a Retry (stateless address validation) instead of a handshake.
    /// 0 = validate every address first.
    pub validate_addresses_above: usize,
    /// Connection attempts queued before the edge accepts, retries or refuses them; beyond
    /// it further Initials are dropped.
    pub max_pending: usize,
    /// `ma` (seconds) of the `Alt-Svc` header advertising HTTP/3 on HTTP/1.1 and h2
    /// responses over TLS.
    pub alt_svc_max_age_s: u64,
}

impl Default for Http3Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_connections: 10_000,
            max_streams_per_connection: 100,
            idle_timeout_ms: 30_000,
            validate_addresses_above: 64,
            max_pending: 4_096,
            alt_svc_max_age_s: 86_400,
        }
    }
}

/// `serde` default of `[[service]] alt_svc`.
pub(crate) fn advertise_by_default() -> bool {
    true
}

pub(crate) fn check(c: &mut Checker, h: &Http3Config) {
    let at = |k: &'static str| [Key("http3"), Key(k)];
    if h.max_connections == 0 || h.max_connections > MAX_HTTP3_CONNECTIONS {
        c.fail(
            &at("max_connections"),
            format!("must be between 1 and {MAX_HTTP3_CONNECTIONS}"),
        );
    }
    if h.max_streams_per_connection == 0 || h.max_streams_per_connection > MAX_HTTP3_STREAMS {
        c.fail(
            &at("max_streams_per_connection"),
            format!("must be between 1 and {MAX_HTTP3_STREAMS}"),
        );
    }
    c.timeout(&at("idle_timeout_ms"), h.idle_timeout_ms);
    if h.validate_addresses_above > MAX_HTTP3_CONNECTIONS {
        c.fail(
            &at("validate_addresses_above"),
            format!("must be at most {MAX_HTTP3_CONNECTIONS} (0 = always validate)"),
        );
    }
    if h.max_pending == 0 || h.max_pending > MAX_HTTP3_PENDING {
        c.fail(
            &at("max_pending"),
            format!("must be between 1 and {MAX_HTTP3_PENDING}"),
        );
    }
    if h.alt_svc_max_age_s == 0 || h.alt_svc_max_age_s > MAX_ALT_SVC_MAX_AGE_S {
        c.fail(
            &at("alt_svc_max_age_s"),
            format!("must be between 1 and {MAX_ALT_SVC_MAX_AGE_S} (turn advertising off per service with `alt_svc = false`)"),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    const SERVICE: &str = r#"
[[listener]]
addr = "127.0.0.1:8443"

[[service]]
name = "a"
hosts = ["a.example"]
[service.origin]
servers = [{ addr = "127.0.0.1:9000" }]
"#;

    #[test]
    fn defaults_serve_http3_and_advertise_it() {
        let c = crate::parse_str("edge.toml", SERVICE).unwrap();
        assert!(c.http3.enabled);
        assert_eq!(c.http3.max_streams_per_connection, 100);
        assert!(c.services[0].alt_svc);
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let text = format!(
            "[http3]\nmax_connections = 0\nmax_streams_per_connection = 0\nidle_timeout_ms = 0\nmax_pending = 0\nalt_svc_max_age_s = 0\nbogus = 1\n{SERVICE}"
        );
        let e = crate::parse_str("edge.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let text = text.replace("bogus = 1\n", "");
        let e = crate::parse_str("edge.toml", &text)
            .unwrap_err()
            .to_string();
        for field in [
            "http3.max_connections",
            "http3.max_streams_per_connection",
            "http3.idle_timeout_ms",
            "http3.max_pending",
            "http3.alt_svc_max_age_s",
        ] {
            assert!(e.contains(field), "{field} not named in {e}");
        }
        assert!(e.starts_with("edge.toml:"), "{e}");
    }

    #[test]
    fn a_service_can_stop_advertising_http3() {
        let text = SERVICE.replace("hosts = [", "alt_svc = false\nhosts = [");
        let c = crate::parse_str("edge.toml", &text).unwrap();
        assert!(!c.services[0].alt_svc);
    }
}
