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

/// Whether `name` is hop-by-hop whatever `Connection` says ([`HOP_BY_HOP`] and the legacy
/// `Keep-Alive` and `Proxy-Connection`).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || HOP_BY_HOP_LEGACY.contains(&name.as_str())
}

/// Removes hop-by-hop fields, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: most requests carry none (and without `Connection`
    // nothing else is named), which spares nine hashed removals per request.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
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
/// `Cache-Status` (RFC 9211): this cache's entry for a response.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

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

/// Headers through which a client could tell the origin what host, scheme, port, address or
/// URL the request "really" had. Only a trusted proxy may send them; anyone else's copies are
/// dropped (they reach the origin unkeyed: one request would poison a cached page).
const CLIENT_FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-original-url",
    "x-original-uri",
    "x-original-host",
    "x-rewrite-url",
    "x-host",
    "x-http-host-override",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "x-url-scheme",
    "front-end-https",
];

/// Method overrides: on a cacheable GET/HEAD they would make the origin answer another
/// method under the GET's key. Kept on other methods (APIs use them with POST).
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether `name` (lowercase) is one of a client's forwarding headers ([`CLIENT_FORWARDING`]).
pub fn is_client_forwarding(name: &str) -> bool {
    // Every listed name starts with `x-`, `f` or `t`: most browser headers are skipped on
    // their first byte.
    matches!(name.as_bytes().first(), Some(b'x' | b'f' | b't')) && CLIENT_FORWARDING.contains(&name)
}

/// Whether `name` (lowercase) is a method override ([`METHOD_OVERRIDES`]).
pub fn is_method_override(name: &str) -> bool {
    name.starts_with("x-") && METHOD_OVERRIDES.contains(&name)
}

/// Removes a client's forwarding headers ([`CLIENT_FORWARDING`], and for GET/HEAD the method
/// overrides). One pass over the names; nothing is removed (no hashing) when none is present.
pub fn strip_client_forwarding(headers: &mut HeaderMap, cacheable_method: bool) {
    let present = headers.keys().any(|k| {
        let k = k.as_str();
        is_client_forwarding(k) || (cacheable_method && is_method_override(k))
    });
    if !present {
        return;
    }
    for name in CLIENT_FORWARDING {
        headers.remove(*name);
    }
    if cacheable_method {
        for name in METHOD_OVERRIDES {
            headers.remove(*name);
        }
    }
}

/// Adds `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto` and `Forwarded`
/// (RFC 7239) for the client. `host` is the normalised host the request was routed by. From a
/// trusted proxy (`trusted`), its `X-Forwarded-For` and `Forwarded` are extended and its
/// `X-Forwarded-Host`/`-Proto` kept; from anyone else they were dropped by
/// [`strip_client_forwarding`] and are set here.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, host: &str, trusted: bool) {
    let ip = client.to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if trusted && !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if !(trusted && headers.contains_key("x-forwarded-proto")) {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
    if host_ok && !(trusted && headers.contains_key("x-forwarded-host")) {
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert("x-forwarded-host", v);
        }
    }
    if !trusted {
        headers.remove(header::FORWARDED);
    }
    let node = match client {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => format!("\"[{ip}]\""),
    };
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
    fn forwarded_headers_append_only_for_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-host", HeaderValue::from_static("lb.example"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "example.com", true);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "lb.example");
        let fwd: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(
            fwd,
            [
                "for=10.0.0.1",
                "for=127.0.0.1;host=\"example.com\";proto=http"
            ]
        );

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "example.com", false);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h.get_all("forwarded").iter().count(), 1);
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "::1".parse().unwrap(), "", false);
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn client_forwarding_headers_are_stripped() {
        let mut h = HeaderMap::new();
        for name in [
            "x-forwarded-host",
            "x-original-url",
            "x-host",
            "forwarded",
            "x-real-ip",
        ] {
            h.insert(name, HeaderValue::from_static("evil.example"));
        }
        h.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut post = h.clone();
        strip_client_forwarding(&mut h, true);
        assert_eq!(h.len(), 1, "{h:?}");
        strip_client_forwarding(&mut post, false);
        assert_eq!(post.len(), 2, "{post:?}");
        assert!(post.contains_key("x-http-method-override"));
    }
}
