//! Header rewriting at the proxy boundary: hop-by-hop fields (RFC 9110 §7.6.1), `Via`,
//! `X-Forwarded-For` and `Forwarded`.

use http::{header, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

/// Hop-by-hop fields that never cross the proxy, whatever `Connection` says.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Non-standard hop-by-hop fields still seen in the wild.
const HOP_BY_HOP_LEGACY: &[&str] = &["keep-alive", "proxy-connection"];

/// Most names honoured from `Connection`; a longer list is ignored beyond this.
const MAX_CONNECTION_TOKENS: usize = 32;

/// Removes hop-by-hop fields, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .take(MAX_CONNECTION_TOKENS)
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in HOP_BY_HOP_LEGACY {
        headers.remove(*name);
    }
}

/// This proxy's `Via` entry (RFC 9110 §7.6.3).
pub fn via_value(version: http::Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        http::Version::HTTP_2 => "2 firebreak",
        http::Version::HTTP_10 => "1.0 firebreak",
        _ => "1.1 firebreak",
    })
}

/// Appends this hop to `Via`.
pub fn append_via(headers: &mut HeaderMap, version: http::Version) {
    headers.append(header::VIA, via_value(version));
}

/// Adds `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239) for the client.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, host: &str) {
    let ip = client.to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let node = match client {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => format!("\"[{ip}]\""),
    };
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
    let element = if host_ok {
        format!("for={node};host=\"{host}\";proto=http")
    } else {
        format!("for={node};proto=http")
    };
    if let Ok(v) = HeaderValue::from_str(&element) {
        headers.append(header::FORWARDED, v);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn strips_standard_and_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, X-Secret, bad header"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "example.com");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(
            h["forwarded"],
            "for=127.0.0.1;host=\"example.com\";proto=http"
        );
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "::1".parse().unwrap(), "");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
    }
}
