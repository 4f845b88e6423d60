//! Single byte-range requests answered from a stored full response (RFC 9110 §14).

use http::{header, HeaderMap, HeaderValue};

/// What to do with a `Range` header against a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// Ignore the header and send the full representation (absent, not `bytes`, multiple
    /// ranges, malformed, or `If-Range` does not match — all permitted by RFC 9110 §14.2).
    Full,
    /// Send bytes `start..end` (end exclusive) as a 206.
    Partial {
        /// First byte offset.
        start: u64,
        /// One past the last byte offset.
        end: u64,
    },
    /// 416: the range is syntactically valid but no byte of it exists.
    Unsatisfiable,
}

/// Evaluates `Range` and `If-Range` of a request against a stored response.
pub fn decide(request: &HeaderMap, stored: &HeaderMap, len: u64) -> RangeDecision {
    let Some(range) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeDecision::Full;
    };
    if let Some(if_range) = request.get(header::IF_RANGE) {
        if !if_range_matches(if_range, stored) {
            return RangeDecision::Full;
        }
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return RangeDecision::Full;
    };
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            None => RangeDecision::Full,
            Some(0) => RangeDecision::Unsatisfiable,
            Some(_) if len == 0 => RangeDecision::Unsatisfiable,
            Some(n) => RangeDecision::Partial {
                start: len.saturating_sub(n),
                end: len,
            },
        },
        (a, b) => {
            let Some(start) = num(a) else {
                return RangeDecision::Full;
            };
            let end_incl = if b.is_empty() {
                None
            } else {
                match num(b) {
                    Some(e) if e >= start => Some(e),
                    _ => return RangeDecision::Full,
                }
            };
            if start >= len {
                return RangeDecision::Unsatisfiable;
            }
            let end = end_incl
                .map(|e| e.saturating_add(1).min(len))
                .unwrap_or(len);
            RangeDecision::Partial { start, end }
        }
    }
}

/// `If-Range` matches with a strong ETag comparison or an exact Last-Modified date.
fn if_range_matches(if_range: &HeaderValue, stored: &HeaderMap) -> bool {
    let Ok(v) = if_range.to_str() else {
        return false;
    };
    let v = v.trim();
    if v.starts_with('"') {
        return stored
            .get(header::ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|e| !e.starts_with("W/") && e.trim() == v);
    }
    if v.starts_with("W/") {
        return false;
    }
    let lm = stored
        .get(header::LAST_MODIFIED)
        .and_then(|l| l.to_str().ok());
    match (
        lm.and_then(|l| httpdate::parse_http_date(l).ok()),
        httpdate::parse_http_date(v).ok(),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use RangeDecision::*;

    fn req(range: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static(range));
        h
    }

    #[test]
    fn single_ranges() {
        let s = HeaderMap::new();
        assert_eq!(
            decide(&req("bytes=0-9"), &s, 100),
            Partial { start: 0, end: 10 }
        );
        assert_eq!(
            decide(&req("bytes=90-"), &s, 100),
            Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            decide(&req("bytes=-10"), &s, 100),
            Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            decide(&req("bytes=-500"), &s, 100),
            Partial { start: 0, end: 100 }
        );
        assert_eq!(
            decide(&req("bytes=50-5000"), &s, 100),
            Partial {
                start: 50,
                end: 100
            }
        );
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        let s = HeaderMap::new();
        assert_eq!(decide(&req("bytes=100-"), &s, 100), Unsatisfiable);
        assert_eq!(decide(&req("bytes=-0"), &s, 100), Unsatisfiable);
        assert_eq!(decide(&req("bytes=5-1"), &s, 100), Full);
        assert_eq!(decide(&req("items=0-1"), &s, 100), Full);
        assert_eq!(decide(&req("bytes=0-1,5-6"), &s, 100), Full);
        assert_eq!(decide(&req("bytes=a-b"), &s, 100), Full);
        assert_eq!(
            decide(&req("bytes=99999999999999999999999-"), &s, 100),
            Full
        );
        assert_eq!(decide(&HeaderMap::new(), &s, 100), Full);
    }

    #[test]
    fn if_range() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let mut r = req("bytes=0-0");
        r.insert(header::IF_RANGE, HeaderValue::from_static("\"v1\""));
        assert_eq!(decide(&r, &stored, 10), Partial { start: 0, end: 1 });
        r.insert(header::IF_RANGE, HeaderValue::from_static("\"v2\""));
        assert_eq!(decide(&r, &stored, 10), Full);
    }
}
