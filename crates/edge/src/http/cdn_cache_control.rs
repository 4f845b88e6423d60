//! `CDN-Cache-Control` (RFC 9213) as a Structured Field Dictionary (RFC 8941 / RFC 9651 §3.2),
//! parsed with the `sfv` crate.
//!
//! RFC 9213 §2.1: "Targeted fields are Dictionary Structured Fields ... Each member of the
//! Dictionary is an HTTP cache response directive (Section 5.2.2 of [HTTP-CACHING]) and, if
//! applicable, its value." Unlike `Cache-Control` (not a structured field; see
//! [`super::cache_control`]), the field is all or nothing: a field that does not parse, or a
//! known directive whose value has the wrong type, is ignored as a whole and the response falls
//! back to the next field (`Surrogate-Control`, then `Cache-Control`). RFC 9213 §2.1: "If a
//! targeted field in a given response is empty, or a parsing error is encountered, that field
//! SHOULD be ignored by the cache"; and "Implementations SHOULD NOT consume values that violate
//! these inferred constraints" (the types of §2.1: `max-age` an Integer, `no-store` a Boolean
//! true, `no-cache` Boolean true or a String of field names). Ignoring the whole field rather
//! than the one directive is this edge's reading: a field with a bad `max-age` may be meant to
//! forbid what the rest of it allows.
//!
//! Parameters on members are ignored (RFC 9213 §2.1: "Parameters received on cache directives
//! are to be ignored, unless other handling is explicitly specified"), and so are unknown
//! directives, one by one. Cache directives are case sensitive (§2.1), and Dictionary keys are
//! lowercase by grammar.

use super::cache_control::{CacheControl, FieldScoped, DELTA_SECONDS_MAX};
use http::header::{GetAll, HeaderValue};
use sfv::{BareItem, Dictionary, ListEntry, Parser};

/// Largest combined field value parsed; a longer one is ignored as a whole. The origin's
/// header block is already bounded by the HTTP client; this keeps the joined copy small too.
const MAX_FIELD_BYTES: usize = 8 * 1024;

/// Most Dictionary members read; a field with more is ignored as a whole.
const MAX_MEMBERS: usize = 64;

/// The directives of a `CDN-Cache-Control` field, all of its field lines combined.
///
/// `None` when the field is absent, empty, does not parse as a Dictionary, or carries a known
/// directive with a value of the wrong type: the caller then falls back to the other fields.
pub fn parse_all(values: GetAll<'_, HeaderValue>) -> Option<CacheControl> {
    // RFC 8941 §4.2: "When parsing from HTTP fields that were split across multiple field
    // lines, implementations MUST combine them into one comma-separated field-value".
    let mut joined = String::new();
    for (i, value) in values.iter().enumerate() {
        let text = value.to_str().ok()?;
        if i > 0 {
            joined.push_str(", ");
        }
        joined.push_str(text);
        if joined.len() > MAX_FIELD_BYTES {
            return None;
        }
    }
    parse_str(&joined)
}

/// Parses one field value (tests and callers with one string); see [`parse_all`].
pub fn parse_str(text: &str) -> Option<CacheControl> {
    if text.len() > MAX_FIELD_BYTES {
        return None;
    }
    let dict: Dictionary = Parser::new(text).parse().ok()?;
    if dict.is_empty() || dict.len() > MAX_MEMBERS {
        return None;
    }
    let mut cc = CacheControl {
        any: true,
        ..CacheControl::default()
    };
    for (key, entry) in &dict {
        // An inner list is never a valid value of a known directive.
        let item = match entry {
            ListEntry::Item(item) => Some(&item.bare_item),
            ListEntry::InnerList(_) => None,
        };
        match key.as_str() {
            "max-age" => cc.max_age = Some(delta(item)?),
            "s-maxage" => cc.s_maxage = Some(delta(item)?),
            "stale-while-revalidate" => cc.stale_while_revalidate = Some(delta(item)?),
            "stale-if-error" => cc.stale_if_error = Some(delta(item)?),
            "no-store" => cc.no_store = boolean(item)?,
            "public" => cc.public = boolean(item)?,
            "must-revalidate" => cc.must_revalidate = boolean(item)?,
            "proxy-revalidate" => cc.proxy_revalidate = boolean(item)?,
            "no-cache" => cc.no_cache = scoped(item)?,
            "private" => cc.private = scoped(item)?,
            _ => {}
        }
    }
    Some(cc)
}

/// A delta-seconds directive: a non-negative Integer, saturating at 2^31 (RFC 9111 §1.2.2).
fn delta(item: Option<&BareItem>) -> Option<u64> {
    match item {
        Some(BareItem::Integer(n)) => {
            let n = u64::try_from(i64::from(*n)).ok()?;
            Some(n.min(DELTA_SECONDS_MAX))
        }
        _ => None,
    }
}

/// A directive without a value: a Boolean (a bare key is `true`; `?0` turns it off).
fn boolean(item: Option<&BareItem>) -> Option<bool> {
    match item {
        Some(BareItem::Boolean(b)) => Some(*b),
        _ => None,
    }
}

/// `no-cache` / `private`: Boolean true for the whole response, or a String with a
/// comma-separated list of field names (RFC 9213 §2.1, RFC 9111 §5.2.2.4 and §5.2.2.7).
fn scoped(item: Option<&BareItem>) -> Option<FieldScoped> {
    match item {
        Some(BareItem::Boolean(true)) => Some(FieldScoped::All),
        Some(BareItem::Boolean(false)) => Some(FieldScoped::Absent),
        Some(BareItem::String(s)) => {
            let fields: Vec<String> = s
                .as_str()
                .split(',')
                .map(|f| f.trim().to_ascii_lowercase())
                .filter(|f| !f.is_empty())
                .take(MAX_MEMBERS)
                .collect();
            Some(if fields.is_empty() {
                FieldScoped::All
            } else {
                FieldScoped::Fields(fields)
            })
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn parse(text: &str) -> Option<CacheControl> {
        parse_str(text)
    }

    /// RFC 9213 §2.1: "the max-age directive ... has an integer value; no-store ... always
    /// has a Boolean true value; and no-cache ... has a value that can be either Boolean true
    /// or a String containing a comma-delimited list of field names."
    #[test]
    fn valid_dictionary() {
        let cc =
            parse("max-age=60, stale-while-revalidate=30, stale-if-error=600, must-revalidate")
                .unwrap();
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.stale_while_revalidate, Some(30));
        assert_eq!(cc.stale_if_error, Some(600));
        assert!(cc.must_revalidate);
        assert!(!cc.no_store);
        assert!(cc.any);

        let cc = parse("no-store").unwrap();
        assert!(cc.no_store);
        let cc = parse("no-store=?0, max-age=5").unwrap();
        assert!(!cc.no_store);
        assert_eq!(cc.max_age, Some(5));

        let cc = parse(r#"no-cache="Set-Cookie, x-a", private"#).unwrap();
        assert_eq!(
            cc.no_cache,
            FieldScoped::Fields(vec!["set-cookie".into(), "x-a".into()])
        );
        assert_eq!(cc.private, FieldScoped::All);
        // RFC 9111 §1.2.2: values past 2^31 are taken as 2^31.
        assert_eq!(
            parse("max-age=999999999999999").unwrap().max_age,
            Some(DELTA_SECONDS_MAX)
        );
    }

    /// RFC 9213 §2.1: "Implementations SHOULD NOT consume values that violate these inferred
    /// constraints. For example, a consuming implementation that coerces a max-age with a
    /// decimal value into an integer would behave differently than other implementations."
    /// This edge ignores such a field as a whole.
    #[test]
    fn wrong_type_ignores_the_whole_field() {
        for text in [
            r#"max-age="60""#,
            "max-age=60.0",
            "max-age=sixty",
            "max-age=-1",
            "max-age=?1",
            "max-age=(60)",
            "max-age=:AAA=:",
            "s-maxage=1.5",
            r#"stale-while-revalidate="30""#,
            "stale-if-error=tok",
            "max-age",
            "no-store=1",
            r#"no-store="yes""#,
            "must-revalidate=x",
            "no-cache=1",
            "private=(a b)",
            "max-age=60, no-store=2",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }

    /// RFC 9213 §2.1: "If a targeted field in a given response is empty, or a parsing error is
    /// encountered, that field SHOULD be ignored by the cache".
    #[test]
    fn parse_failure_or_empty_ignores_the_whole_field() {
        for text in [
            "",
            "   ",
            "max-age=60,,",
            "max-age=60,",
            "Max-Age=60",
            "max-age = 60",
            r#"no-cache="unterminated"#,
            "max-age=60 no-store",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }

    /// RFC 8941 §4.2: "When parsing from HTTP fields that were split across multiple field
    /// lines, implementations MUST combine them into one comma-separated field-value".
    #[test]
    fn field_lines_are_combined() {
        let mut h = HeaderMap::new();
        h.append("cdn-cache-control", HeaderValue::from_static("max-age=60"));
        h.append("cdn-cache-control", HeaderValue::from_static("no-store"));
        let cc = parse_all(h.get_all("cdn-cache-control")).unwrap();
        assert_eq!(cc.max_age, Some(60));
        assert!(cc.no_store);
        // A bad line spoils the combined field.
        h.append(
            "cdn-cache-control",
            HeaderValue::from_static(r#"max-age="1""#),
        );
        assert_eq!(parse_all(h.get_all("cdn-cache-control")), None);
        // Absent.
        assert_eq!(
            parse_all(HeaderMap::new().get_all("cdn-cache-control")),
            None
        );
        // RFC 8941 §3.2: a later duplicate key overrides the earlier value.
        let mut h = HeaderMap::new();
        h.append("cdn-cache-control", HeaderValue::from_static("max-age=60"));
        h.append("cdn-cache-control", HeaderValue::from_static("max-age=5"));
        assert_eq!(
            parse_all(h.get_all("cdn-cache-control")).unwrap().max_age,
            Some(5)
        );
    }

    /// RFC 9213 §2.1: "Parameters received on cache directives are to be ignored, unless
    /// other handling is explicitly specified." Unknown directives are ignored one by one.
    #[test]
    fn parameters_and_unknown_directives_are_ignored() {
        let cc = parse(r#"max-age=60;foo="bar";n=1, no-store;x, ext-thing="anything""#).unwrap();
        assert_eq!(cc.max_age, Some(60));
        assert!(cc.no_store);
        // `;` starts a parameter, not a directive: `no-store` here is a parameter of
        // `max-age` and is ignored.
        let cc = parse("max-age=60; no-store").unwrap();
        assert_eq!(cc.max_age, Some(60));
        assert!(!cc.no_store);
        // A field of unknown directives only still governs (RFC 9213 §2.2 selects the first
        // field with a valid, non-empty value).
        let cc = parse("ext=(1 2 3), other=@1659578233").unwrap();
        assert!(cc.any);
        assert_eq!(cc.max_age, None);
    }

    #[test]
    fn oversized_fields_are_ignored() {
        let long = format!("max-age=1, x=\"{}\"", "a".repeat(MAX_FIELD_BYTES));
        assert_eq!(parse(&long), None);
        let many: Vec<String> = (0..=MAX_MEMBERS).map(|i| format!("k{i}")).collect();
        assert_eq!(parse(&many.join(", ")), None);
    }
}
