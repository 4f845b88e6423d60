//! `Accept-Encoding` reduced to a few classes before anything keys on it.
//!
//! Browsers send a handful of spellings (`gzip, deflate, br, zstd`, `gzip, deflate`, ...), and
//! a client can send any number of others (`gzip;q=0.999`, `x-junk-1, gzip`, ...). A response
//! with `Vary: Accept-Encoding` is stored once per distinct value, so raw values let one
//! client fill a URL's variant slots and push out the popular copy. The edge therefore
//! rewrites the field, once, at routing, to the set of the codings a cache can tell apart —
//! which of `zstd`, `br` and `gzip` the client accepts (RFC 9110 §12.5.3, with q-values and
//! `*`) — written in one canonical spelling, or removes it when none is accepted (identity).
//! The origin sees the same canonical value the variant is keyed on, so what it answers is
//! right for every client of that class. At most 8 classes exist per URL.

use http::{header, HeaderMap, HeaderValue};

/// Most comma-separated elements read; the rest are ignored (browsers send fewer than 10).
const MAX_ELEMENTS: usize = 32;

const ZSTD: u8 = 1;
const BR: u8 = 2;
const GZIP: u8 = 4;

/// Canonical values, indexed by the set of accepted codings.
const CLASSES: [Option<&str>; 8] = [
    None,
    Some("zstd"),
    Some("br"),
    Some("zstd, br"),
    Some("gzip"),
    Some("zstd, gzip"),
    Some("br, gzip"),
    Some("zstd, br, gzip"),
];

/// Rewrites `Accept-Encoding` to its canonical class (see the module documentation); the
/// field is removed when the client accepts none of the codings the edge distinguishes.
pub fn normalise(headers: &mut HeaderMap) {
    let set = match headers.get(header::ACCEPT_ENCODING) {
        None => return,
        Some(_) => accepted(headers),
    };
    match CLASSES.get(usize::from(set)).copied().flatten() {
        Some(class) => {
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(class));
        }
        None => {
            headers.remove(header::ACCEPT_ENCODING);
        }
    }
}

/// The set (bits) of `zstd`, `br` and `gzip` the request's `Accept-Encoding` lines accept.
fn accepted(headers: &HeaderMap) -> u8 {
    // Explicit verdicts per coding (bit set = listed; value bit = acceptable), and `*`.
    let mut listed = 0u8;
    let mut ok = 0u8;
    let mut star: Option<bool> = None;
    let elements = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .take(MAX_ELEMENTS);
    for element in elements {
        let mut parts = element.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let acceptable = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
            })
            .next()
            .is_none_or(|q| !is_zero_q(q));
        let bit = if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            GZIP
        } else if coding.eq_ignore_ascii_case("br") {
            BR
        } else if coding.eq_ignore_ascii_case("zstd") {
            ZSTD
        } else {
            if coding == "*" {
                star = Some(acceptable);
            }
            continue;
        };
        if listed & bit == 0 {
            listed |= bit;
            if acceptable {
                ok |= bit;
            }
        }
    }
    if star == Some(true) {
        ok |= !listed & (ZSTD | BR | GZIP);
    }
    ok
}

/// Whether a q-value is zero (`0`, `0.`, `0.000`); anything unparsable counts as non-zero,
/// the way a lenient origin would read it.
fn is_zero_q(q: &str) -> bool {
    match q.as_bytes().split_first() {
        Some((b'0', [])) => true,
        Some((b'0', [b'.', digits @ ..])) => digits.len() <= 3 && digits.iter().all(|&d| d == b'0'),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn class(values: &[&str]) -> Option<String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        normalise(&mut h);
        assert!(h.get_all(header::ACCEPT_ENCODING).iter().count() <= 1);
        h.get(header::ACCEPT_ENCODING)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn browsers_land_in_a_few_classes() {
        assert_eq!(
            class(&["gzip, deflate, br, zstd"]).as_deref(),
            Some("zstd, br, gzip")
        );
        assert_eq!(class(&["gzip, deflate, br"]).as_deref(), Some("br, gzip"));
        assert_eq!(class(&["gzip, deflate"]).as_deref(), Some("gzip"));
        assert_eq!(class(&["GZIP"]).as_deref(), Some("gzip"));
        assert_eq!(class(&["gzip", "br"]).as_deref(), Some("br, gzip"));
        assert_eq!(class(&["identity"]), None);
        assert_eq!(class(&[""]), None);
        assert_eq!(class(&["deflate, compress"]), None);
    }

    #[test]
    fn q_values_and_star() {
        assert_eq!(class(&["gzip;q=0, br"]).as_deref(), Some("br"));
        assert_eq!(class(&["gzip; q=0.000"]), None);
        assert_eq!(class(&["gzip;q=0.5"]).as_deref(), Some("gzip"));
        assert_eq!(class(&["gzip;q=0.001"]).as_deref(), Some("gzip"));
        assert_eq!(class(&["*"]).as_deref(), Some("zstd, br, gzip"));
        assert_eq!(class(&["*;q=0"]), None);
        assert_eq!(class(&["br;q=0, *"]).as_deref(), Some("zstd, gzip"));
        assert_eq!(class(&["br, *;q=0"]).as_deref(), Some("br"));
        // The first verdict for a coding is the one that counts.
        assert_eq!(class(&["gzip;q=0, gzip"]), None);
    }

    #[test]
    fn junk_cannot_make_new_classes() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..500 {
            let junk = format!("x-junk-{i}, gzip;q=0.{i:03}, br;foo={i}");
            seen.insert(class(&[&junk]));
        }
        assert!(seen.len() <= CLASSES.len(), "{seen:?}");
        let long = vec!["gzip"; 1000].join(",");
        assert_eq!(class(&[&long]).as_deref(), Some("gzip"));
    }
}
