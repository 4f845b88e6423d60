//! Cache-Control directive parsing (RFC 9111 §5.2), shared by `Cache-Control` and
//! `Surrogate-Control`. `CDN-Cache-Control` is a Structured Field and has its own parser
//! ([`super::cdn_cache_control`]).

use http::header::{GetAll, HeaderValue};

/// Largest delta-seconds value represented; RFC 9111 §1.2.2 says larger values and overflows
/// are treated as 2^31.
pub const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// Most directives read from one header; the rest are ignored so that a hostile header cannot
/// make parsing expensive.
const MAX_DIRECTIVES: usize = 64;

/// A directive that may apply to the whole response or only to named header fields
/// (`no-cache` and `private` with a field-name list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FieldScoped {
    /// Absent.
    #[default]
    Absent,
    /// Present without arguments: applies to the whole response.
    All,
    /// Present with a list of field names (lowercase): applies to those fields only.
    Fields(Vec<String>),
}

impl FieldScoped {
    /// Whether the directive is present in any form.
    pub fn is_present(&self) -> bool {
        !matches!(self, FieldScoped::Absent)
    }
}

/// The directives of one Cache-Control-like header, for requests and responses.
///
/// Delta-seconds values are `Some(n)`; a malformed value is recorded as `Some(0)` for
/// `max-age`/`s-maxage` (RFC 9111 §4.2.1: invalid freshness information means stale) and
/// ignored for the stale-* extensions (never more permissive than the header says).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `s-maxage`.
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`, optionally with field names.
    pub no_cache: FieldScoped,
    /// `private`, optionally with field names.
    pub private: FieldScoped,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<u64>,
    /// `only-if-cached` (request).
    pub only_if_cached: bool,
    /// Whether any directive was recognised at all.
    pub any: bool,
}

impl CacheControl {
    /// Parses every line of a header field, in order. First occurrence of a directive wins.
    pub fn parse_all(values: GetAll<'_, HeaderValue>) -> Self {
        let mut cc = CacheControl::default();
        let mut seen = 0usize;
        for value in values {
            let Ok(text) = value.to_str() else { continue };
            for (name, arg) in Directives::new(text) {
                seen += 1;
                if seen > MAX_DIRECTIVES {
                    return cc;
                }
                cc.apply(&name, arg.as_deref());
            }
        }
        cc
    }

    /// Parses a single header value (tests and callers with one string).
    pub fn parse_str(text: &str) -> Self {
        let mut cc = CacheControl::default();
        for (name, arg) in Directives::new(text).take(MAX_DIRECTIVES) {
            cc.apply(&name, arg.as_deref());
        }
        cc
    }

    fn apply(&mut self, name: &str, arg: Option<&str>) {
        self.any = true;
        match name {
            "max-age" => set_once(&mut self.max_age, Some(delta_or_zero(arg))),
            "s-maxage" => set_once(&mut self.s_maxage, Some(delta_or_zero(arg))),
            "stale-while-revalidate" => set_once(&mut self.stale_while_revalidate, delta(arg)),
            "stale-if-error" => set_once(&mut self.stale_if_error, delta(arg)),
            "no-store" => self.no_store = true,
            "no-cache" => merge_scoped(&mut self.no_cache, arg),
            "private" => merge_scoped(&mut self.private, arg),
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "only-if-cached" => self.only_if_cached = true,
            _ => {}
        }
    }
}

fn set_once(slot: &mut Option<u64>, value: Option<u64>) {
    if slot.is_none() {
        *slot = value;
    }
}

fn merge_scoped(slot: &mut FieldScoped, arg: Option<&str>) {
    let fields: Vec<String> = match arg {
        None => {
            *slot = FieldScoped::All;
            return;
        }
        Some(list) => list
            .split(',')
            .map(|f| f.trim().to_ascii_lowercase())
            .filter(|f| !f.is_empty())
            .take(MAX_DIRECTIVES)
            .collect(),
    };
    match slot {
        FieldScoped::All => {}
        FieldScoped::Absent if fields.is_empty() => *slot = FieldScoped::All,
        FieldScoped::Absent => *slot = FieldScoped::Fields(fields),
        FieldScoped::Fields(existing) => existing.extend(fields),
    }
}

/// Parses delta-seconds (RFC 9111 §1.2.2): digits only, saturating at 2^31.
pub fn parse_delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Any value with more than 10 digits exceeds 2^31 anyway.
    if s.len() > 10 {
        return Some(DELTA_SECONDS_MAX);
    }
    s.parse::<u64>().ok().map(|v| v.min(DELTA_SECONDS_MAX))
}

fn delta(arg: Option<&str>) -> Option<u64> {
    arg.and_then(parse_delta_seconds)
}

fn delta_or_zero(arg: Option<&str>) -> u64 {
    delta(arg).unwrap_or(0)
}

/// Iterator over `name[=value]` directives of one header value. Names are lowercased; quoted
/// values are unquoted (RFC 9110 §5.6.4), and commas inside quotes do not split.
struct Directives<'a> {
    rest: &'a str,
}

impl<'a> Directives<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text }
    }
}

impl Iterator for Directives<'_> {
    type Item = (String, Option<String>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = self.rest.trim_start_matches([' ', '\t', ',']);
            if text.is_empty() {
                self.rest = text;
                return None;
            }
            let name_end = text.find(['=', ',']).unwrap_or(text.len());
            let (name, after) = text.split_at(name_end);
            let name = name.trim().to_ascii_lowercase();
            let (arg, rest) = match after.strip_prefix('=') {
                None => (None, after),
                Some(v) => {
                    let v = v.trim_start();
                    if let Some(quoted) = v.strip_prefix('"') {
                        let (value, rest) = unquote(quoted);
                        (Some(value), rest)
                    } else {
                        let end = v.find(',').unwrap_or(v.len());
                        let (value, rest) = v.split_at(end);
                        (Some(value.trim().to_owned()), rest)
                    }
                }
            };
            self.rest = rest;
            if name.is_empty() {
                continue;
            }
            return Some((name, arg));
        }
    }
}

/// Reads a quoted-string body (after the opening quote); returns the value and the text
/// after the closing quote. An unterminated string takes the rest of the header.
fn unquote(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let rest = s.get(i + 1..).unwrap_or("");
                let rest = rest
                    .find(',')
                    .map(|p| rest.get(p..).unwrap_or(""))
                    .unwrap_or("");
                return (out, rest);
            }
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    out.push(escaped);
                }
            }
            c => out.push(c),
        }
    }
    (out, "")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_directives() {
        let cc = CacheControl::parse_str("public, max-age=60, s-maxage=120, must-revalidate");
        assert!(cc.public && cc.must_revalidate && cc.any);
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(120));
    }

    #[test]
    fn names_are_case_insensitive_and_whitespace_tolerated() {
        let cc = CacheControl::parse_str("  MAX-AGE=5 ,No-Store,,");
        assert_eq!(cc.max_age, Some(5));
        assert!(cc.no_store);
    }

    #[test]
    fn quoted_values_are_accepted() {
        let cc = CacheControl::parse_str("max-age=\"30\", private=\"set-cookie, x-a\"");
        assert_eq!(cc.max_age, Some(30));
        assert_eq!(
            cc.private,
            FieldScoped::Fields(vec!["set-cookie".into(), "x-a".into()])
        );
    }

    #[test]
    fn no_cache_with_and_without_fields() {
        assert_eq!(
            CacheControl::parse_str("no-cache").no_cache,
            FieldScoped::All
        );
        assert_eq!(
            CacheControl::parse_str("no-cache=\"Set-Cookie\"").no_cache,
            FieldScoped::Fields(vec!["set-cookie".into()])
        );
        assert_eq!(
            CacheControl::parse_str("no-cache=\"a\", no-cache").no_cache,
            FieldScoped::All
        );
    }

    #[test]
    fn invalid_max_age_means_stale_and_first_occurrence_wins() {
        assert_eq!(CacheControl::parse_str("max-age=abc").max_age, Some(0));
        assert_eq!(CacheControl::parse_str("max-age=-5").max_age, Some(0));
        assert_eq!(CacheControl::parse_str("max-age").max_age, Some(0));
        assert_eq!(
            CacheControl::parse_str("max-age=10, max-age=99").max_age,
            Some(10)
        );
        assert_eq!(
            CacheControl::parse_str("stale-if-error=x").stale_if_error,
            None
        );
    }

    #[test]
    fn huge_delta_seconds_saturate_at_2_pow_31() {
        let cc = CacheControl::parse_str("max-age=99999999999999999999999");
        assert_eq!(cc.max_age, Some(DELTA_SECONDS_MAX));
        assert_eq!(parse_delta_seconds("2147483649"), Some(DELTA_SECONDS_MAX));
        assert_eq!(parse_delta_seconds("1.5"), None);
    }

    #[test]
    fn unterminated_quote_does_not_panic() {
        let cc = CacheControl::parse_str("private=\"abc, max-age=5");
        assert!(cc.private.is_present());
        let _ = CacheControl::parse_str("=,=,\"\",max-age=\"");
    }

    #[test]
    fn multiple_header_lines_combine() {
        let mut h = http::HeaderMap::new();
        h.append("cache-control", HeaderValue::from_static("max-age=5"));
        h.append(
            "cache-control",
            HeaderValue::from_static("stale-while-revalidate=30"),
        );
        let cc = CacheControl::parse_all(h.get_all("cache-control"));
        assert_eq!(cc.max_age, Some(5));
        assert_eq!(cc.stale_while_revalidate, Some(30));
    }

    #[test]
    fn directive_count_is_bounded() {
        let many = "x,".repeat(10_000) + "max-age=5";
        assert_eq!(CacheControl::parse_str(&many).max_age, None);
    }
}
