//! Which of a request's fields the edge acts on are present, found in one pass over the names
//! when the request is routed ([`RequestFields::scan`]).
//!
//! Routing removes hop-by-hop fields, `Host`, another edge's tier credential and (from
//! clients that are not trusted proxies) forwarding fields, and rewrites `Accept-Encoding`;
//! a hit answers preconditions and ranges. Each of those is a hashed lookup in the request's
//! `HeaderMap` (the name hashed byte by byte: 80-100 instructions), made for every request
//! though most requests carry few of these fields. Asked of these flags instead, a request
//! pays for the fields it has, not for the ones it might have had.

use crate::http::headers::{is_client_forwarding, is_hop_by_hop, is_method_override};
use firebreak_protocol::tier::TIER_HEADER;
use http::{header, HeaderMap, HeaderName};

/// A kind of request field the edge acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `Host`.
    Host,
    /// `Accept-Encoding`.
    AcceptEncoding,
    /// A hop-by-hop field ([`is_hop_by_hop`]), which may name others in `Connection`.
    HopByHop,
    /// One of a client's forwarding fields ([`is_client_forwarding`]).
    Forwarding,
    /// A method override ([`is_method_override`]).
    MethodOverride,
    /// Another edge's tier credential ([`TIER_HEADER`]).
    TierCredential,
    /// A precondition: `If-None-Match`, `If-Modified-Since`, `If-Match`,
    /// `If-Unmodified-Since` or `If-Range`.
    Conditional,
    /// `Range`.
    Range,
}

impl Field {
    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The kinds of [`Field`] a request's header map held when it was scanned. Fields are only
/// removed after that (routing never adds one the client did not send, `Accept-Encoding`
/// is rewritten in place), so a kind not flagged is absent: its lookup can be skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFields(u8);

impl RequestFields {
    /// One pass over the names of `headers`.
    pub fn scan(headers: &HeaderMap) -> Self {
        Self(headers.keys().fold(0, |bits, name| bits | kind(name)))
    }

    /// Whether a field of this kind is present.
    pub fn has(self, field: Field) -> bool {
        self.0 & field.bit() != 0
    }
}

/// The kind of `name`, as a bit (0 when the edge does not act on it). A name is of one kind
/// at most; the first byte sorts most names out before any comparison.
fn kind(name: &HeaderName) -> u8 {
    let s = name.as_str();
    let hop = |name| {
        if is_hop_by_hop(name) {
            Field::HopByHop.bit()
        } else {
            0
        }
    };
    let forwarding = |s| {
        if is_client_forwarding(s) {
            Field::Forwarding.bit()
        } else {
            0
        }
    };
    match s.as_bytes().first() {
        Some(b'h') if name == header::HOST => Field::Host.bit(),
        Some(b'a') if name == header::ACCEPT_ENCODING => Field::AcceptEncoding.bit(),
        Some(b'r') if name == header::RANGE => Field::Range.bit(),
        Some(b'i')
            if name == header::IF_NONE_MATCH
                || name == header::IF_MODIFIED_SINCE
                || name == header::IF_MATCH
                || name == header::IF_UNMODIFIED_SINCE
                || name == header::IF_RANGE =>
        {
            Field::Conditional.bit()
        }
        Some(b'c' | b'u' | b'p' | b'k') => hop(name),
        Some(b't') => hop(name) | forwarding(s),
        Some(b'f') => forwarding(s),
        Some(b'x') if s == TIER_HEADER => Field::TierCredential.bit(),
        Some(b'x') if is_method_override(s) => Field::MethodOverride.bit(),
        Some(b'x') => forwarding(s),
        _ => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn scan(names: &[&str]) -> RequestFields {
        let mut map = HeaderMap::new();
        for n in names {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        RequestFields::scan(&map)
    }

    const ALL: [Field; 8] = [
        Field::Host,
        Field::AcceptEncoding,
        Field::HopByHop,
        Field::Forwarding,
        Field::MethodOverride,
        Field::TierCredential,
        Field::Conditional,
        Field::Range,
    ];

    /// The one kind `names` should give, as the predicates (and lookups) the scan stands in for
    /// say.
    fn expected(name: &str) -> Option<Field> {
        let header = HeaderName::from_bytes(name.as_bytes()).unwrap();
        let s = header.as_str();
        let conditional = [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
        ];
        if header == header::HOST {
            Some(Field::Host)
        } else if header == header::ACCEPT_ENCODING {
            Some(Field::AcceptEncoding)
        } else if header == header::RANGE {
            Some(Field::Range)
        } else if conditional.contains(&header) {
            Some(Field::Conditional)
        } else if is_hop_by_hop(&header) {
            Some(Field::HopByHop)
        } else if s == TIER_HEADER {
            Some(Field::TierCredential)
        } else if is_method_override(s) {
            Some(Field::MethodOverride)
        } else if is_client_forwarding(s) {
            Some(Field::Forwarding)
        } else {
            None
        }
    }

    #[test]
    fn each_name_is_its_kind_and_no_other() {
        let names = [
            "Host",
            "accept-encoding",
            "Range",
            "if-none-match",
            "If-Modified-Since",
            "if-match",
            "if-unmodified-since",
            "if-range",
            "connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
            "keep-alive",
            "proxy-connection",
            "x-firebreak-tier",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "forwarded",
            "x-forwarded-for",
            "X-Forwarded-Host",
            "true-client-ip",
            "front-end-https",
            "x-real-ip",
            // Not acted on, some sharing a first byte or a length with those that are.
            "accept",
            "accept-language",
            "cookie",
            "cache-control",
            "user-agent",
            "upgrade-insecure-requests",
            "priority",
            "pragma",
            "x-request-id",
            "if",
            "ranges",
            "hostname",
            "t",
            "x",
            "from",
            "referer",
        ];
        for name in names {
            let got = scan(&[name]);
            let want = expected(name);
            for field in ALL {
                assert_eq!(got.has(field), want == Some(field), "{name}: {field:?}");
            }
        }
        assert!(expected("x-real-ip") == Some(Field::Forwarding));
        assert!(expected("keep-alive") == Some(Field::HopByHop));
        assert!(expected("if-range") == Some(Field::Conditional));
    }

    #[test]
    fn a_map_has_the_union_of_its_names() {
        let got = scan(&[
            "host",
            "user-agent",
            "if-none-match",
            "x-forwarded-for",
            "range",
        ]);
        let want = [
            Field::Host,
            Field::Conditional,
            Field::Forwarding,
            Field::Range,
        ];
        for field in ALL {
            assert_eq!(got.has(field), want.contains(&field), "{field:?}");
        }
        assert_eq!(
            RequestFields::scan(&HeaderMap::new()),
            RequestFields::default()
        );
    }
}
