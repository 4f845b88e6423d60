//! Forwarding headers and what a service adds to its cache key: the fleet-wide list of
//! trusted proxies (`[forwarding]`) and per-service header lists (`[service.forwarding]`).
//!
//! A client that is not a trusted proxy never decides what the origin reads as the original
//! host, scheme, client address or URL: the edge drops those headers and sets its own.

use crate::limits::{MAX_CACHE_KEY_HEADERS, MAX_STRIP_HEADERS, MAX_TRUSTED_PROXIES};
use crate::locate::PathSeg::{self, Index, Key};
use crate::validate::Checker;
use serde::Deserialize;
use std::net::IpAddr;

/// Fleet-wide forwarding settings (`[forwarding]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// Client addresses (CIDR blocks such as `10.0.0.0/8`, or single addresses) whose
    /// forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, ...) are kept and
    /// extended. Empty by default: every client's copies are dropped.
    pub trusted_proxies: Vec<String>,
}

/// Per-service header handling (`[service.forwarding]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceForwardingConfig {
    /// Extra request headers removed before the request reaches the cache or the origin
    /// (for example an application's own override header).
    pub strip_request_headers: Vec<String>,
    /// Request headers whose values become part of the cache key (each value separates
    /// cached copies). Purge by URL does not reach copies keyed by a header value; purge by
    /// key or service does.
    pub cache_key_headers: Vec<String>,
}

/// One trusted address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a single address.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("`{s}`: prefix length must be 0 to {max}")),
            },
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is inside this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Headers a service may neither strip nor key on: the proxy owns them (the framing and
/// hop-by-hop fields response header rules may not touch either, plus `Host` and `Expect`).
fn protected(name: &str) -> bool {
    matches!(name, "host" | "expect") || crate::validate::PROTECTED_HEADERS.contains(&name)
}

pub(crate) fn check(c: &mut Checker, f: &ForwardingConfig) {
    let base = [Key("forwarding"), Key("trusted_proxies")];
    if !c.count(
        &base,
        f.trusted_proxies.len(),
        0,
        MAX_TRUSTED_PROXIES,
        "trusted proxies",
    ) {
        return;
    }
    for (i, p) in f.trusted_proxies.iter().enumerate() {
        if let Err(e) = Cidr::parse(p) {
            c.fail(&[Key("forwarding"), Key("trusted_proxies"), Index(i)], e);
        }
    }
}

pub(crate) fn check_service(c: &mut Checker, base: &[PathSeg], f: &ServiceForwardingConfig) {
    let lists: [(&'static str, &[String], usize); 2] = [
        (
            "strip_request_headers",
            &f.strip_request_headers,
            MAX_STRIP_HEADERS,
        ),
        (
            "cache_key_headers",
            &f.cache_key_headers,
            MAX_CACHE_KEY_HEADERS,
        ),
    ];
    for (field, names, max) in lists {
        let at: Vec<PathSeg> = base.iter().cloned().chain([Key(field)]).collect();
        if !c.count(&at, names.len(), 0, max, "header names") {
            continue;
        }
        for (i, name) in names.iter().enumerate() {
            let mut p = at.clone();
            p.push(Index(i));
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Err(_) => c.fail(&p, format!("`{name}` is not a valid header name")),
                Ok(n) if protected(n.as_str()) => c.fail(
                    &p,
                    format!("`{name}` is managed by the proxy and cannot be listed here"),
                ),
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "x/8", "::/129", "10.0.0.0/-1"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
