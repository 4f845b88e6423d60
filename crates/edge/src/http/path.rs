//! Request path normalisation, done once in `proxy::route` before anything reads the path:
//! cache rules, the cache key and the request sent upstream all use the one normal form.
//!
//! The normal form (RFC 3986 §6.2.2):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
//!   percent-encoding is kept with uppercase hex digits; a `%` not followed by two hex digits
//!   is refused (400);
//! - runs of `/` are merged into one (`//private/me` is `/private/me`, as nginx's default
//!   `merge_slashes on` and most origin frameworks see it);
//! - dot segments are removed (§5.2.4); `..` never climbs above the root.
//!
//! `%2F` (and `%5C`) stay encoded in the key and upstream: an encoded slash is data, not a
//! separator (APIs put identifiers such as `group%2Fproject` in one segment), and decoding it
//! would send a different resource to origins that keep the distinction. But an origin may
//! decode it, so cache rules match on [`rule_view`], where they are separators: a bypass rule
//! for `/private/` also covers `/private%2Fme`.
//!
//! The query is left as it is: its encoding is the application's business.

use http::uri::PathAndQuery;
use std::borrow::Cow;

/// The path cannot be normalised (malformed percent-encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPath;

/// The normal form of a request target, or `None` when it already is normal (the common
/// case: one pass over the bytes, no allocation).
pub fn normalize(pq: &PathAndQuery) -> Result<Option<PathAndQuery>, BadPath> {
    let path = pq.path();
    if is_normal(path.as_bytes()) {
        return Ok(None);
    }
    let normal = normalize_path(path)?;
    let mut s = normal.into_owned();
    if let Some(q) = pq.query() {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s).map(Some).map_err(|_| BadPath)
}

/// The normal form of a path that starts with `/`.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = normalize_percent(path.as_bytes())?;
    Ok(Cow::Owned(remove_dots_and_merge(&decoded)))
}

/// The path as cache rules see it: the normal path with `%2F`/`%5C` read as `/`. Borrowed
/// (no allocation) unless the path holds one of them.
pub fn rule_view(normal_path: &str) -> Cow<'_, str> {
    if !normal_path.contains("%2F") && !normal_path.contains("%5C") {
        return Cow::Borrowed(normal_path);
    }
    let slashed = normal_path.replace("%2F", "/").replace("%5C", "/");
    match normalize_path(&slashed) {
        Ok(p) => Cow::Owned(p.into_owned()),
        // Cannot happen (the input was normal); the slashed form is still the safer view.
        Err(BadPath) => Cow::Owned(slashed),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` is already in normal form.
fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        match b {
            b'%' => {
                let (Some(&h), Some(&l)) = (path.get(i + 1), path.get(i + 2)) else {
                    return false;
                };
                let upper = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if !upper(h) || !upper(l) {
                    return false;
                }
                match (hex_value(h), hex_value(l)) {
                    (Some(h), Some(l)) if !is_unreserved(h << 4 | l) => {}
                    _ => return false,
                }
                i += 3;
                continue;
            }
            b'/' => {
                let rest = path.get(i + 1..).unwrap_or_default();
                let dot_segment = |r: &[u8]| matches!(r, [] | [b'/', ..]);
                match rest {
                    [b'/', ..] => return false,
                    [b'.', r @ ..] if dot_segment(r) => return false,
                    [b'.', b'.', r @ ..] if dot_segment(r) => return false,
                    _ => {}
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
}

/// Decodes unreserved characters, uppercases the hex of the others, refuses bad escapes.
fn normalize_percent(path: &[u8]) -> Result<Vec<u8>, BadPath> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let h = path
            .get(i + 1)
            .copied()
            .and_then(hex_value)
            .ok_or(BadPath)?;
        let l = path
            .get(i + 2)
            .copied()
            .and_then(hex_value)
            .ok_or(BadPath)?;
        let v = h << 4 | l;
        if is_unreserved(v) {
            out.push(v);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push(b'%');
            out.push(HEX.get(usize::from(h)).copied().unwrap_or(b'0'));
            out.push(HEX.get(usize::from(l)).copied().unwrap_or(b'0'));
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 dot-segment removal with empty segments (`//`) merged.
fn remove_dots_and_merge(path: &[u8]) -> String {
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    // The path starts with '/' (checked by the router); a relative one is treated as if it
    // did, so the result always does.
    let body = path.strip_prefix(b"/").unwrap_or(path);
    for seg in body.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => trailing_slash = true,
            b".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len() + 1);
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if segments.is_empty() || trailing_slash {
        out.push(b'/');
    }
    // Only ASCII was removed or decoded (to ASCII) from a valid `&str`.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> String {
        normalize_path(p).unwrap().into_owned()
    }

    #[test]
    fn normal_paths_are_returned_unchanged() {
        for p in [
            "/",
            "/a/b",
            "/a/b/",
            "/a.b/c..d/.e/..f",
            "/%20x",
            "/group%2Fproject",
            "/%C3%A9",
        ] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
            let pq = PathAndQuery::try_from(format!("{p}?x=%2e")).unwrap();
            assert_eq!(normalize(&pq), Ok(None), "{p}");
        }
    }

    #[test]
    fn web_cache_deception_forms() {
        assert_eq!(n("/x/../private/me"), "/private/me");
        assert_eq!(n("//private/me"), "/private/me");
        assert_eq!(n("/%70rivate/me"), "/private/me");
        assert_eq!(n("/./private/me"), "/private/me");
        assert_eq!(n("/private%2fme"), "/private%2Fme");
        assert_eq!(rule_view("/private%2Fme"), "/private/me");
        assert_eq!(rule_view("/a%2F..%2Fprivate/me"), "/private/me");
        assert_eq!(n("/%2e%2e/%2E/private/me"), "/private/me");
    }

    #[test]
    fn rfc3986_dot_segments() {
        for (input, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/..", "/"),
            ("/../..", "/"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a//", "/a/"),
            ("/.", "/"),
            ("///", "/"),
            ("/a/%7euser", "/a/~user"),
            ("/%41%2d%5f", "/A-_"),
            ("/%3f%23", "/%3F%23"),
            ("/%25", "/%25"),
        ] {
            assert_eq!(n(input), want, "{input}");
        }
    }

    #[test]
    fn query_is_kept_and_bad_escapes_refused() {
        let pq = PathAndQuery::from_static("/a/./%62?q=%2e/../x");
        assert_eq!(normalize(&pq).unwrap().unwrap().as_str(), "/a/b?q=%2e/../x");
        for bad in ["/%", "/%4", "/%zz", "/a%g1"] {
            assert_eq!(normalize_path(bad), Err(BadPath), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn idempotent_and_never_panics(segs in proptest::collection::vec(
            prop_oneof![
                Just("".to_owned()), Just(".".to_owned()), Just("..".to_owned()),
                Just("%2e".to_owned()), Just("%2F".to_owned()), Just("%2f".to_owned()),
                Just("%".to_owned()), Just("%7e".to_owned()), Just("%C3%A9".to_owned()),
                "[a-zA-Z0-9._~%-]{0,6}",
            ], 0..12)) {
            let path = format!("/{}", segs.join("/"));
            if let Ok(once) = normalize_path(&path) {
                let once = once.into_owned();
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//"), "{once}");
                let twice = normalize_path(&once).unwrap();
                prop_assert!(matches!(twice, Cow::Borrowed(_)), "not idempotent: {path} -> {once} -> {twice}");
                let view = rule_view(&once);
                prop_assert_eq!(normalize_path(&view).unwrap(), view.clone());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(s in "\\PC{0,40}") {
            let _ = normalize_path(&s);
            let _ = rule_view(&s);
        }
    }
}
