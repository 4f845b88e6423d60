//! PROXY protocol (HAProxy's spec, v2 binary and v1 text) as read by a listener configured
//! with `proxy_protocol = true`: the load balancer in front of the edge states the client's
//! address in a header before the first HTTP byte.
//!
//! Parsing works on what has been read so far and says whether more bytes are needed, so the
//! caller reads exactly under its first-bytes deadline. Everything is bounded: the address
//! block is at most 216 bytes, v1 lines at most 107 bytes; v2 TLVs (up to 64 KiB) are skipped
//! without being kept in memory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Fixed part of a v2 header: signature, version/command, family/transport, length.
const V2_FIXED: usize = 16;
/// Longest v1 line, CRLF included (the spec's bound).
pub const V1_MAX: usize = 107;
/// The largest v2 address block this parser reads (AF_UNIX: 2 × 108 bytes).
const V2_MAX_ADDRESS: usize = 216;

/// What a parse of the bytes read so far found.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (at least this many in total) before anything can be said.
    Need(usize),
    /// A complete header: the client's address (`None` for `LOCAL`, `UNKNOWN` and non-IP
    /// families: use the connection's own peer), the header's length in bytes, of which
    /// `skip` bytes beyond what was given (v2 TLVs) still have to be read and dropped.
    Done {
        /// Source address stated by the proxy.
        source: Option<SocketAddr>,
        /// Bytes of `buf` the header occupies.
        consumed: usize,
        /// Header bytes not yet read (only v2 TLVs); to be read and discarded.
        skip: usize,
    },
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection does not start with a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// A v2 header with an unknown version, command, family or transport, or a length too
    /// short for its addresses.
    #[error("malformed PROXY v2 header")]
    BadV2,
    /// A v1 line that does not follow the grammar.
    #[error("malformed PROXY v1 header")]
    BadV1,
}

/// Parses a PROXY header (v2 or v1) at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    const V1_PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..n) == V2_SIGNATURE.get(..n) {
        return if buf.len() < V2_FIXED {
            Ok(Parsed::Need(V2_FIXED))
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf.get(..n) == V1_PREFIX.get(..n) {
        return parse_v1(buf);
    }
    Err(ProxyHeaderError::Missing)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let byte = |i: usize| buf.get(i).copied().ok_or(ProxyHeaderError::BadV2);
    let version_command = byte(12)?;
    let family_transport = byte(13)?;
    let len = usize::from(u16::from_be_bytes([byte(14)?, byte(15)?]));
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::BadV2);
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyHeaderError::BadV2),
    };
    let (family, transport) = (family_transport >> 4, family_transport & 0x0f);
    if transport > 2 || family > 3 {
        return Err(ProxyHeaderError::BadV2);
    }
    let address_len = match family {
        1 => 12,
        2 => 36,
        3 => V2_MAX_ADDRESS,
        _ => 0,
    };
    if len < address_len {
        return Err(ProxyHeaderError::BadV2);
    }
    // Only the address block is needed in memory; TLVs after it are skipped.
    let wanted = V2_FIXED + address_len;
    if buf.len() < wanted {
        return Ok(Parsed::Need(wanted));
    }
    let addr = buf.get(V2_FIXED..wanted).ok_or(ProxyHeaderError::BadV2)?;
    let source = match family {
        _ if local => None,
        // UNSPEC, UNIX: no IP to use; DGRAM makes no sense in front of HTTP over TCP.
        1 | 2 if transport != 1 => return Err(ProxyHeaderError::BadV2),
        1 => {
            let ip: [u8; 4] = addr
                .get(0..4)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyHeaderError::BadV2)?;
            let port = port_at(addr, 8)?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        2 => {
            let ip: [u8; 16] = addr
                .get(0..16)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyHeaderError::BadV2)?;
            let port = port_at(addr, 32)?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    };
    let total = V2_FIXED + len;
    let consumed = total.min(buf.len());
    Ok(Parsed::Done {
        source,
        consumed,
        skip: total - consumed,
    })
}

fn port_at(addr: &[u8], at: usize) -> Result<u16, ProxyHeaderError> {
    match addr.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(ProxyHeaderError::BadV2),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let window = buf.get(..buf.len().min(V1_MAX)).unwrap_or(buf);
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyHeaderError::BadV1)
        } else {
            Ok(Parsed::Need(buf.len() + 1))
        };
    };
    let line = window
        .get(..end)
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or(ProxyHeaderError::BadV1)?;
    let mut fields = line.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(ProxyHeaderError::BadV1);
    }
    let source = match fields.next() {
        // The proxy cannot say (e.g. its own health check): keep the peer's address.
        Some("UNKNOWN") => None,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                return Err(ProxyHeaderError::BadV1);
            };
            let src: IpAddr = src.parse().map_err(|_| ProxyHeaderError::BadV1)?;
            let dst: IpAddr = dst.parse().map_err(|_| ProxyHeaderError::BadV1)?;
            if (proto == "TCP4") != (src.is_ipv4() && dst.is_ipv4())
                || src.is_ipv4() != dst.is_ipv4()
            {
                return Err(ProxyHeaderError::BadV1);
            }
            let port = |p: &str| {
                // No sign, no leading zeros (the spec's grammar).
                if p.is_empty() || (p.len() > 1 && p.starts_with('0')) || p.starts_with('+') {
                    return Err(ProxyHeaderError::BadV1);
                }
                p.parse::<u16>().map_err(|_| ProxyHeaderError::BadV1)
            };
            let sport = port(sport)?;
            port(dport)?;
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(ProxyHeaderError::BadV1),
    };
    Ok(Parsed::Done {
        source,
        consumed: end + 2,
        skip: 0,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn v2(command: u8, family: u8, addr: &[u8], tlv: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = (addr.len() + tlv.len()) as u16;
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addr);
        h.extend_from_slice(tlv);
        h
    }

    fn v4_block() -> Vec<u8> {
        let mut a = vec![192, 0, 2, 7, 10, 0, 0, 1];
        a.extend_from_slice(&4242u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a
    }

    #[test]
    fn v2_ipv4_with_tlvs() {
        let h = v2(1, 0x11, &v4_block(), &[0x04, 0, 1, 9]);
        let mut bytes = h.clone();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&bytes).unwrap(),
            Parsed::Done {
                source: Some("192.0.2.7:4242".parse().unwrap()),
                consumed: h.len(),
                skip: 0
            }
        );
        // Given only the address block, the TLVs are left to skip.
        assert_eq!(
            parse(&h[..28]).unwrap(),
            Parsed::Done {
                source: Some("192.0.2.7:4242".parse().unwrap()),
                consumed: 28,
                skip: 4
            }
        );
        assert_eq!(parse(&h[..20]).unwrap(), Parsed::Need(28));
        assert_eq!(parse(&h[..5]).unwrap(), Parsed::Need(16));
    }

    #[test]
    fn v2_ipv6_and_local() {
        let mut a = vec![0x20, 0x01, 0x0d, 0xb8];
        a.extend_from_slice(&[0; 12]);
        a.extend_from_slice(&[0; 16]);
        a.extend_from_slice(&80u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        let h = v2(1, 0x21, &a, &[]);
        assert_eq!(
            parse(&h).unwrap(),
            Parsed::Done {
                source: Some("[2001:db8::]:80".parse().unwrap()),
                consumed: h.len(),
                skip: 0
            }
        );
        let local = v2(0, 0x00, &[], &[]);
        assert_eq!(
            parse(&local).unwrap(),
            Parsed::Done {
                source: None,
                consumed: 16,
                skip: 0
            }
        );
    }

    #[test]
    fn v2_malformed_is_refused() {
        // Version 1 in the v2 layout, unknown command, DGRAM, length shorter than addresses.
        let mut bad = v2(1, 0x11, &v4_block(), &[]);
        bad[12] = 0x11;
        assert_eq!(parse(&bad), Err(ProxyHeaderError::BadV2));
        assert_eq!(
            parse(&v2(2, 0x11, &v4_block(), &[])),
            Err(ProxyHeaderError::BadV2)
        );
        assert_eq!(
            parse(&v2(1, 0x12, &v4_block(), &[])),
            Err(ProxyHeaderError::BadV2)
        );
        assert_eq!(
            parse(&v2(1, 0x11, &[1, 2, 3], &[])),
            Err(ProxyHeaderError::BadV2)
        );
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 198.51.100.1 10.0.0.1 56324 443\r\nGET /";
        assert_eq!(
            parse(line).unwrap(),
            Parsed::Done {
                source: Some("198.51.100.1:56324".parse().unwrap()),
                consumed: 44,
                skip: 0
            }
        );
        assert_eq!(
            parse(b"PROXY TCP6 ::1 ::1 1 2\r\n").unwrap(),
            Parsed::Done {
                source: Some("[::1]:1".parse().unwrap()),
                consumed: 24,
                skip: 0
            }
        );
        assert!(matches!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Parsed::Done { source: None, .. }
        ));
        assert_eq!(parse(b"PROXY TCP4 1.2").unwrap(), Parsed::Need(15));
        assert_eq!(parse(b"PRO").unwrap(), Parsed::Need(4));
        for bad in [
            &b"PROXY TCP4 ::1 ::1 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(parse(bad), Err(ProxyHeaderError::BadV1), "{bad:?}");
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert_eq!(parse(&long), Err(ProxyHeaderError::BadV1));
    }

    #[test]
    fn http_is_not_a_header() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
        assert_eq!(parse(b"PRI * HTTP/2.0"), Err(ProxyHeaderError::Missing));
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Parsed::Done { consumed, .. }) = parse(&bytes) {
                prop_assert!(consumed <= bytes.len());
            }
            if let Ok(Parsed::Need(n)) = parse(&bytes) {
                prop_assert!(n > bytes.len() && n <= V2_FIXED + V2_MAX_ADDRESS);
            }
        }

        #[test]
        fn v2_prefixes_need_more(cut in 0usize..28) {
            let h = v2(1, 0x11, &v4_block(), &[]);
            prop_assert!(matches!(parse(&h[..cut]), Ok(Parsed::Need(_))));
        }
    }
}
