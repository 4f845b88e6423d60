//! Storability and freshness (RFC 9111 §3 and §4.2, RFC 5861, RFC 9213).
//!
//! The edge's own caching directives come from the first of `CDN-Cache-Control` (RFC 9213),
//! `Surrogate-Control` and `Cache-Control` that carries any directive: the CDN-targeted fields
//! override `Cache-Control` for this cache only, as RFC 9213 §2.1 describes.

use super::cache_control::{parse_delta_seconds, CacheControl, FieldScoped};
use http::{header, HeaderMap, Method, StatusCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `CDN-Cache-Control` (RFC 9213).
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";
/// `Surrogate-Control` (Edge Architecture Specification 1.0).
pub const SURROGATE_CONTROL: &str = "surrogate-control";

/// Default bound of heuristic freshness, however old `Last-Modified` is.
pub const MAX_HEURISTIC_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Operator policy that shapes storability for one request (service config + matching rule).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CachePolicy {
    /// Lifetime for storable responses without freshness information (operator opt-in).
    pub default_ttl: Option<Duration>,
    /// Lifetime forced by a path rule, overriding the origin's freshness directives.
    pub forced_ttl: Option<Duration>,
    /// Allow RFC 9111 §4.2.2 heuristic freshness, at most this long (`None`: not allowed).
    pub heuristic: Option<Duration>,
}

/// How long a stored response is usable, computed once at store time (RFC 9111 §4.2.3).
///
/// Kept in every stored object, so packed into 24 bytes (88 with the standard types): the
/// response time as nanoseconds in a `u64` (it orders responses, so it keeps its precision;
/// an instant before 1970 reads as 1970) and the spans as whole seconds in `u32`s, the unit
/// RFC 9111 computes ages and lifetimes in. A span is cut to the whole second below — a
/// lifetime or a stale window gets shorter, never longer — and saturates at about 136 years
/// (`stale-if-error` at 68: its top bit is `must-revalidate`). [`FreshnessParts`] is the same
/// with the standard types, to build or adjust one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    response_time: u64,
    corrected_initial_age: u32,
    lifetime: u32,
    stale_while_revalidate: u32,
    /// `stale-if-error` seconds below [`MUST_REVALIDATE`], which is the flag.
    stale_if_error: u32,
}

/// The bit of [`Freshness::stale_if_error`] that holds `must-revalidate`.
const MUST_REVALIDATE: u32 = 1 << 31;

/// The parts of a [`Freshness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshnessParts {
    /// When the response was received (`response_time`).
    pub response_time: SystemTime,
    /// `corrected_initial_age`: the response's age when it was received.
    pub corrected_initial_age: Duration,
    /// Freshness lifetime.
    pub lifetime: Duration,
    /// `stale-while-revalidate` window past expiry.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` window past expiry.
    pub stale_if_error: Duration,
    /// `must-revalidate`, `proxy-revalidate` or `no-cache`: never used stale without a
    /// successful validation, not even when the origin fails.
    pub must_revalidate: bool,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whole seconds of `d`, at most `max`.
fn secs(d: Duration, max: u32) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX).min(max)
}

impl From<FreshnessParts> for Freshness {
    fn from(p: FreshnessParts) -> Self {
        let flag = if p.must_revalidate {
            MUST_REVALIDATE
        } else {
            0
        };
        Self {
            response_time: nanos(
                p.response_time
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
            corrected_initial_age: secs(p.corrected_initial_age, u32::MAX),
            lifetime: secs(p.lifetime, u32::MAX),
            stale_while_revalidate: secs(p.stale_while_revalidate, u32::MAX),
            stale_if_error: secs(p.stale_if_error, MUST_REVALIDATE - 1) | flag,
        }
    }
}

impl Freshness {
    /// The parts, to adjust one and build a new value.
    pub fn parts(&self) -> FreshnessParts {
        FreshnessParts {
            response_time: self.response_time(),
            corrected_initial_age: self.corrected_initial_age(),
            lifetime: self.lifetime(),
            stale_while_revalidate: self.stale_while_revalidate(),
            stale_if_error: self.stale_if_error(),
            must_revalidate: self.must_revalidate(),
        }
    }

    /// When the response was received (`response_time`).
    pub fn response_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.response_time)
    }

    /// `corrected_initial_age`: the response's age when it was received.
    pub fn corrected_initial_age(&self) -> Duration {
        Duration::from_secs(self.corrected_initial_age.into())
    }

    /// Freshness lifetime.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.lifetime.into())
    }

    /// `stale-while-revalidate` window past expiry.
    pub fn stale_while_revalidate(&self) -> Duration {
        Duration::from_secs(self.stale_while_revalidate.into())
    }

    /// `stale-if-error` window past expiry.
    pub fn stale_if_error(&self) -> Duration {
        Duration::from_secs((self.stale_if_error & !MUST_REVALIDATE).into())
    }

    /// `must-revalidate`, `proxy-revalidate` or `no-cache`: never used stale without a
    /// successful validation, not even when the origin fails.
    pub fn must_revalidate(&self) -> bool {
        self.stale_if_error & MUST_REVALIDATE != 0
    }

    /// The same freshness with its lifetime ending no later than `at` (a soft purge).
    pub fn expired_at(&self, at: SystemTime) -> Self {
        let mut p = self.parts();
        p.lifetime = p.lifetime.min(self.age(at));
        p.into()
    }

    /// `current_age` at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        let resident = now.duration_since(self.response_time()).unwrap_or_default();
        self.corrected_initial_age().saturating_add(resident)
    }

    /// Remaining freshness at `now`; `None` when stale.
    pub fn ttl(&self, now: SystemTime) -> Option<Duration> {
        let age = self.age(now);
        (self.lifetime() > age).then(|| self.lifetime() - age)
    }

    /// How long past expiry the response is at `now` (zero when fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.age(now).saturating_sub(self.lifetime())
    }

    /// Signed seconds of freshness left (negative when stale), for `Cache-Status: ttl=`.
    pub fn ttl_secs(&self, now: SystemTime) -> i64 {
        let age = self.age(now).as_secs() as i64;
        self.lifetime().as_secs() as i64 - age
    }

    /// May be served stale while one background revalidation runs.
    pub fn can_serve_while_revalidating(&self, now: SystemTime) -> bool {
        !self.must_revalidate() && self.staleness(now) <= self.stale_while_revalidate()
    }

    /// May be served stale because the origin failed: within `stale-if-error`, or within the
    /// operator's `safety_net` window.
    pub fn can_serve_on_error(&self, now: SystemTime, safety_net: Option<Duration>) -> bool {
        if self.must_revalidate() {
            return false;
        }
        let stale_by = self.staleness(now);
        stale_by <= self.stale_if_error() || safety_net.is_some_and(|max| stale_by <= max)
    }
}

/// Outcome of the storability check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storability {
    /// Store, with this freshness; the listed header fields must be dropped from the stored
    /// copy (`private="..."` / `no-cache="..."` field lists).
    Store {
        /// Freshness computed at store time.
        freshness: Freshness,
        /// Lowercase header names to remove before storing.
        strip_fields: Vec<String>,
    },
    /// Do not store; the reason appears in `Cache-Status: detail=`.
    NoStore(&'static str),
}

/// Status codes heuristically cacheable by default (RFC 9110 §15.1).
pub fn cacheable_by_default(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The directives that govern this cache: CDN-Cache-Control (a Structured Field, ignored as a
/// whole when invalid), else Surrogate-Control, else Cache-Control.
pub fn edge_directives(headers: &HeaderMap) -> CacheControl {
    if let Some(cc) = super::cdn_cache_control::parse_all(headers.get_all(CDN_CACHE_CONTROL)) {
        return cc;
    }
    let cc = CacheControl::parse_all(headers.get_all(SURROGATE_CONTROL));
    if cc.any {
        return cc;
    }
    CacheControl::parse_all(headers.get_all(header::CACHE_CONTROL))
}

/// Parses an HTTP date; `None` when absent or invalid.
pub fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    parse_date_lenient(headers.get(name)?.to_str().ok()?)
}

/// Longest date value looked at; the longest valid form (RFC 850 with a long weekday) is
/// about 40 characters.
const MAX_DATE_LEN: usize = 64;

/// Parses an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, and the obsolete RFC 850 and asctime
/// forms. As §5.6.7 allows, the recipient is lenient about letter case, runs of whitespace
/// and a one-digit day; anything else is invalid (`None`).
pub fn parse_date_lenient(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    if value.len() > MAX_DATE_LEN {
        return None;
    }
    if let Ok(t) = httpdate::parse_http_date(value) {
        return Some(t);
    }
    let mut tokens: Vec<String> = value.split_ascii_whitespace().map(title_case).collect();
    match tokens.as_mut_slice() {
        // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
        [wday, day, _, _, _, _] if wday.ends_with(',') && day.len() == 1 => day.insert(0, '0'),
        // asctime: `Sun Nov  6 08:49:37 1994`, the day padded with a space.
        [wday, _, day, _, _] if !wday.ends_with(',') && day.len() == 1 => day.insert(0, ' '),
        _ => {}
    }
    httpdate::parse_http_date(&tokens.join(" ")).ok()
}

/// `sUN,` → `Sun,`, `06-NOV-94` → `06-Nov-94`, `gmt` → `GMT`: each run of letters with the
/// case httpdate expects.
fn title_case(token: &str) -> String {
    if token.eq_ignore_ascii_case("gmt") {
        return "GMT".to_owned();
    }
    let mut out = String::with_capacity(token.len());
    let mut prev_alpha = false;
    for c in token.chars() {
        let alpha = c.is_ascii_alphabetic();
        out.push(if alpha && !prev_alpha {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        prev_alpha = alpha;
    }
    out
}

/// `age_value` (RFC 9111 §4.2.3): the `Age` field (§5.1, `Age = delta-seconds`). A value
/// that is not a non-negative integer, or several field values that disagree, is ignored
/// (RFC 9111 §1.2.2 and §4.2.3 leave the cache free to disregard it): it counts as no `Age`
/// at all rather than making the response unstorable or stale. Values past 2^31 are capped.
pub fn age_value(headers: &HeaderMap) -> Duration {
    let mut found: Option<u64> = None;
    for v in headers.get_all(header::AGE) {
        let Ok(s) = v.to_str() else {
            return Duration::ZERO;
        };
        for part in s.split(',') {
            match (parse_delta_seconds(part.trim()), found) {
                (None, _) => return Duration::ZERO,
                (Some(n), Some(prev)) if n != prev => return Duration::ZERO,
                (Some(n), _) => found = Some(n),
            }
        }
    }
    Duration::from_secs(found.unwrap_or(0))
}

/// Everything the storability decision looks at.
pub struct Exchange<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Request headers.
    pub request: &'a HeaderMap,
    /// Response status.
    pub status: StatusCode,
    /// Response headers.
    pub response: &'a HeaderMap,
    /// When the request was sent to the origin.
    pub request_time: SystemTime,
    /// When the response head arrived.
    pub response_time: SystemTime,
}

/// Decides whether a response may be stored by this shared cache and for how long.
pub fn evaluate(x: &Exchange<'_>, policy: &CachePolicy) -> Storability {
    use Storability::NoStore;
    if x.method != Method::GET {
        return NoStore("method");
    }
    let status = x.status;
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return NoStore("status");
    }
    let req_cc = CacheControl::parse_all(x.request.get_all(header::CACHE_CONTROL));
    if req_cc.no_store {
        return NoStore("request no-store");
    }
    let cc = edge_directives(x.response);
    if cc.no_store {
        return NoStore("no-store");
    }
    let mut strip_fields = Vec::new();
    match &cc.private {
        FieldScoped::All => return NoStore("private"),
        FieldScoped::Fields(f) => strip_fields.extend(f.iter().cloned()),
        FieldScoped::Absent => {}
    }
    if let FieldScoped::Fields(f) = &cc.no_cache {
        strip_fields.extend(f.iter().cloned());
    }
    if x.request.contains_key(header::AUTHORIZATION)
        && !(cc.must_revalidate || cc.public || cc.s_maxage.is_some())
    {
        return NoStore("authorization");
    }
    if x.response.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|f| f.trim() == "*"))
            .unwrap_or(true)
    }) {
        return NoStore("vary *");
    }
    if x.response.contains_key(header::SET_COOKIE)
        && !strip_fields.iter().any(|f| f == "set-cookie")
    {
        // RFC 9111 permits storing these, but sharing one user's cookie with everyone is the
        // classic CDN data leak; like Varnish and Fastly, never store them.
        return NoStore("set-cookie");
    }

    let date = http_date(x.response, header::DATE).unwrap_or(x.response_time);
    let no_cache_all = cc.no_cache == FieldScoped::All;
    let explicit_expires = x.response.contains_key(header::EXPIRES);
    let lifetime = if let Some(forced) = policy.forced_ttl {
        Some(forced)
    } else if no_cache_all {
        Some(Duration::ZERO)
    } else if let Some(s) = cc.s_maxage {
        Some(Duration::from_secs(s))
    } else if let Some(m) = cc.max_age {
        Some(Duration::from_secs(m))
    } else if explicit_expires {
        // An invalid Expires (for example "0") means already expired (RFC 9111 §5.3).
        let expires = http_date(x.response, header::EXPIRES);
        Some(
            expires
                .and_then(|e| e.duration_since(date).ok())
                .unwrap_or_default(),
        )
    } else if let Some(cap) = policy
        .heuristic
        .filter(|_| cacheable_by_default(status) || cc.public)
    {
        // RFC 9111 §4.2.2: a fraction (10%) of the time since Last-Modified, from Date.
        http_date(x.response, header::LAST_MODIFIED)
            .and_then(|lm| date.duration_since(lm).ok())
            .map(|since| (since / 10).min(cap))
            .or(policy.default_ttl)
    } else if cacheable_by_default(status) {
        policy.default_ttl
    } else {
        None
    };
    let Some(lifetime) = lifetime else {
        return NoStore("no freshness information");
    };
    let has_validator =
        x.response.contains_key(header::ETAG) || x.response.contains_key(header::LAST_MODIFIED);
    if lifetime.is_zero() && !has_validator {
        return NoStore("stale on arrival without validator");
    }

    // RFC 9111 §4.2.3 age calculation.
    let apparent_age = x.response_time.duration_since(date).unwrap_or_default();
    let response_delay = x
        .response_time
        .duration_since(x.request_time)
        .unwrap_or_default();
    let corrected_age_value = age_value(x.response).saturating_add(response_delay);
    let corrected_initial_age = apparent_age.max(corrected_age_value);

    let forced = policy.forced_ttl.is_some();
    Storability::Store {
        freshness: Freshness::from(FreshnessParts {
            response_time: x.response_time,
            corrected_initial_age,
            lifetime,
            stale_while_revalidate: Duration::from_secs(cc.stale_while_revalidate.unwrap_or(0)),
            stale_if_error: Duration::from_secs(cc.stale_if_error.unwrap_or(0)),
            must_revalidate: cc.must_revalidate || cc.proxy_revalidate || (no_cache_all && !forced),
        }),
        strip_fields,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn t0() -> SystemTime {
        httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap()
    }

    use super::super::cache_control::DELTA_SECONDS_MAX;
    use crate::testutil::headers;

    fn eval_with(
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
        policy: CachePolicy,
    ) -> Storability {
        let req = headers(req);
        let resp = headers(resp);
        evaluate(
            &Exchange {
                method: &Method::GET,
                request: &req,
                status: StatusCode::from_u16(status).unwrap(),
                response: &resp,
                request_time: t0(),
                response_time: t0(),
            },
            &policy,
        )
    }

    fn eval(resp: &[(&str, &str)]) -> Storability {
        eval_with(&[], 200, resp, CachePolicy::default())
    }

    fn fresh(s: Storability) -> Freshness {
        match s {
            Storability::Store { freshness, .. } => freshness,
            Storability::NoStore(why) => panic!("not stored: {why}"),
        }
    }

    const DATE: (&str, &str) = ("date", "Sun, 06 Nov 1994 08:49:37 GMT");

    #[test]
    fn s_maxage_beats_max_age_beats_expires() {
        let f = fresh(eval(&[
            DATE,
            ("cache-control", "max-age=10, s-maxage=20"),
            ("expires", "Sun, 06 Nov 1994 09:49:37 GMT"),
        ]));
        assert_eq!(f.lifetime(), Duration::from_secs(20));
        let f = fresh(eval(&[
            DATE,
            ("cache-control", "max-age=10"),
            ("expires", "Sun, 06 Nov 1994 09:49:37 GMT"),
        ]));
        assert_eq!(f.lifetime(), Duration::from_secs(10));
        let f = fresh(eval(&[DATE, ("expires", "Sun, 06 Nov 1994 09:49:37 GMT")]));
        assert_eq!(f.lifetime(), Duration::from_secs(3600));
    }

    /// RFC 9110 §5.6.7: recipients parse all three HTTP-date forms and may be lenient
    /// (letter case, whitespace); RFC 9111 §5.3: "A cache recipient MUST interpret invalid
    /// date formats, especially the value "0", as representing a time in the past".
    #[test]
    fn expires_forms_case_and_spacing() {
        let one_hour = Duration::from_secs(3600);
        for ok in [
            "Sun, 06 Nov 1994 09:49:37 GMT",
            "sun, 06 nov 1994 09:49:37 gmt",
            "SUN,  06 NOV 1994   09:49:37 GMT ",
            "Sun, 6 Nov 1994 09:49:37 GMT",
            "Sunday, 06-Nov-94 09:49:37 GMT",
            "SUNDAY, 06-nov-94 09:49:37 Gmt",
            "Sun Nov  6 09:49:37 1994",
            "sun nov 6 09:49:37 1994",
        ] {
            let f = fresh(eval(&[DATE, ("expires", ok)]));
            assert_eq!(f.lifetime(), one_hour, "{ok}");
        }
        for bad in [
            "0",
            "-1",
            "",
            "tomorrow",
            "Sun, 06 Nov 1994 09:49:37 UTC",
            "Sun, 32 Nov 1994 09:49:37 GMT",
            "Sun, 06 Nov 1994 09:49 GMT",
            "Sun, 06 Nov 1994 09:49:37 GMT GMT GMT GMT GMT GMT GMT GMT GMT GMT GMT",
        ] {
            let f = fresh(eval(&[DATE, ("expires", bad), ("etag", "\"v\"")]));
            assert_eq!(f.lifetime(), Duration::ZERO, "{bad}");
            assert_eq!(f.ttl(t0()), None, "{bad}");
        }
        assert_eq!(
            parse_date_lenient("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(t0())
        );
    }

    #[test]
    fn invalid_or_past_expires_is_stale_and_needs_a_validator() {
        // RFC 9111 §5.3: an invalid date, especially "0", means already expired.
        assert_eq!(
            eval(&[DATE, ("expires", "0")]),
            Storability::NoStore("stale on arrival without validator")
        );
        let f = fresh(eval(&[DATE, ("expires", "0"), ("etag", "\"v1\"")]));
        assert_eq!(f.lifetime(), Duration::ZERO);
        let f = fresh(eval(&[
            DATE,
            ("expires", "Sat, 05 Nov 1994 08:49:37 GMT"),
            ("etag", "\"v1\""),
        ]));
        assert_eq!(f.ttl(t0()), None);
    }

    #[test]
    fn no_freshness_information_is_not_stored_unless_operator_opts_in() {
        assert_eq!(
            eval(&[DATE]),
            Storability::NoStore("no freshness information")
        );
        let lm = ("last-modified", "Sun, 06 Oct 1994 08:49:37 GMT");
        assert_eq!(
            eval(&[DATE, lm]),
            Storability::NoStore("no freshness information")
        );
        let p = CachePolicy {
            default_ttl: Some(Duration::from_secs(7)),
            ..Default::default()
        };
        assert_eq!(
            fresh(eval_with(&[], 200, &[DATE], p)).lifetime(),
            Duration::from_secs(7)
        );
        // The default TTL applies only to statuses cacheable by default.
        assert!(matches!(
            eval_with(&[], 302, &[DATE], p),
            Storability::NoStore(_)
        ));
    }

    /// RFC 9111 §4.2.2: "a cache can assign a heuristic expiration time when an explicit
    /// time was not specified"; "If the response has a Last-Modified header field, caches
    /// are encouraged to use a heuristic expiration value that is no more than some fraction
    /// of the interval since that time. A typical setting of this fraction might be 10%."
    /// RFC 9110 §15.1 lists the heuristically cacheable statuses.
    #[test]
    fn heuristic_is_ten_percent_of_last_modified_age_when_enabled() {
        let p = CachePolicy {
            heuristic: Some(MAX_HEURISTIC_LIFETIME),
            ..Default::default()
        };
        let lm = ("last-modified", "Fri, 28 Oct 1994 08:49:37 GMT"); // 9 days before Date
        let f = fresh(eval_with(&[], 200, &[DATE, lm], p));
        assert_eq!(f.lifetime(), Duration::from_secs(9 * 86400 / 10));
        // Not for statuses that are not heuristically cacheable.
        assert!(matches!(
            eval_with(&[], 302, &[DATE, lm], p),
            Storability::NoStore(_)
        ));
        // Capped.
        let old = ("last-modified", "Thu, 06 Nov 1980 08:49:37 GMT");
        assert_eq!(
            fresh(eval_with(&[], 200, &[DATE, old], p)).lifetime(),
            MAX_HEURISTIC_LIFETIME
        );
        // Every heuristically cacheable status, and only those.
        for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            let f = fresh(eval_with(&[], status, &[DATE, lm], p));
            assert_eq!(
                f.lifetime(),
                Duration::from_secs(9 * 86400 / 10),
                "{status}"
            );
        }
        for status in [302, 307, 400, 403, 500, 502, 503] {
            assert!(
                matches!(
                    eval_with(&[], status, &[DATE, lm], p),
                    Storability::NoStore(_)
                ),
                "{status}"
            );
        }
        // The operator's cap.
        let short = CachePolicy {
            heuristic: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        assert_eq!(
            fresh(eval_with(&[], 200, &[DATE, lm], short)).lifetime(),
            Duration::from_secs(60)
        );
        // Explicit expiration wins: max-age, s-maxage, Expires, CDN-Cache-Control.
        for explicit in [
            ("cache-control", "max-age=5"),
            ("cache-control", "s-maxage=5"),
            ("expires", "Sun, 06 Nov 1994 08:49:42 GMT"),
            ("cdn-cache-control", "max-age=5"),
        ] {
            let f = fresh(eval_with(&[], 200, &[DATE, lm, explicit], p));
            assert_eq!(f.lifetime(), Duration::from_secs(5), "{explicit:?}");
        }
        // Without Date, the age of Last-Modified is taken at receipt ("now").
        let f = fresh(eval_with(&[], 200, &[lm], p));
        assert_eq!(f.lifetime(), Duration::from_secs(9 * 86400 / 10));
        // A Last-Modified in the future gives no heuristic lifetime.
        let future = ("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT");
        assert_eq!(
            eval_with(&[], 200, &[DATE, future], p),
            Storability::NoStore("no freshness information")
        );
    }

    #[test]
    fn explicit_freshness_makes_other_statuses_storable() {
        let f = fresh(eval_with(
            &[],
            302,
            &[DATE, ("cache-control", "max-age=5")],
            CachePolicy::default(),
        ));
        assert_eq!(f.lifetime(), Duration::from_secs(5));
        assert!(matches!(
            eval_with(
                &[],
                206,
                &[DATE, ("cache-control", "max-age=5")],
                CachePolicy::default()
            ),
            Storability::NoStore("status")
        ));
        assert!(matches!(
            eval_with(
                &[],
                304,
                &[DATE, ("cache-control", "max-age=5")],
                CachePolicy::default()
            ),
            Storability::NoStore("status")
        ));
    }

    #[test]
    fn no_store_private_and_request_no_store() {
        assert_eq!(
            eval(&[("cache-control", "max-age=5, no-store")]),
            Storability::NoStore("no-store")
        );
        assert_eq!(
            eval(&[("cache-control", "max-age=5, private")]),
            Storability::NoStore("private")
        );
        assert_eq!(
            eval_with(
                &[("cache-control", "no-store")],
                200,
                &[("cache-control", "max-age=5")],
                CachePolicy::default()
            ),
            Storability::NoStore("request no-store")
        );
    }

    #[test]
    fn private_and_no_cache_with_fields_strip_those_fields() {
        match eval(&[
            (
                "cache-control",
                "max-age=5, private=\"x-user\", no-cache=\"set-cookie\"",
            ),
            ("set-cookie", "a=b"),
        ]) {
            Storability::Store { strip_fields, .. } => {
                assert_eq!(strip_fields, vec!["x-user", "set-cookie"])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            eval(&[("cache-control", "max-age=5"), ("set-cookie", "a=b")]),
            Storability::NoStore("set-cookie")
        );
    }

    #[test]
    fn no_cache_means_store_but_always_revalidate() {
        let f = fresh(eval(&[
            ("cache-control", "no-cache, max-age=60"),
            ("etag", "\"a\""),
        ]));
        assert_eq!(f.lifetime(), Duration::ZERO);
        assert!(f.must_revalidate());
        assert!(!f.can_serve_on_error(t0(), Some(Duration::from_secs(3600))));
    }

    #[test]
    fn authorization_needs_public_s_maxage_or_must_revalidate() {
        let auth = [("authorization", "Bearer x")];
        let p = CachePolicy::default();
        assert_eq!(
            eval_with(&auth, 200, &[("cache-control", "max-age=5")], p),
            Storability::NoStore("authorization")
        );
        for cc in [
            "max-age=5, public",
            "s-maxage=5",
            "max-age=5, must-revalidate",
        ] {
            assert!(
                matches!(
                    eval_with(&auth, 200, &[("cache-control", cc)], p),
                    Storability::Store { .. }
                ),
                "{cc}"
            );
        }
    }

    #[test]
    fn vary_star_is_never_stored() {
        assert_eq!(
            eval(&[("cache-control", "max-age=5"), ("vary", "accept, *")]),
            Storability::NoStore("vary *")
        );
    }

    #[test]
    fn cdn_cache_control_and_surrogate_control_take_precedence() {
        let f = fresh(eval(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=300"),
        ]));
        assert_eq!(f.lifetime(), Duration::from_secs(300));
        let f = fresh(eval(&[
            ("cache-control", "max-age=5"),
            ("surrogate-control", "max-age=60"),
        ]));
        assert_eq!(f.lifetime(), Duration::from_secs(60));
        assert_eq!(
            eval(&[
                ("cache-control", "max-age=600"),
                ("cdn-cache-control", "no-store")
            ]),
            Storability::NoStore("no-store")
        );
        let f = fresh(eval(&[
            ("cdn-cache-control", "max-age=1"),
            ("surrogate-control", "max-age=2"),
        ]));
        assert_eq!(f.lifetime(), Duration::from_secs(1));
    }

    #[test]
    fn forced_ttl_overrides_origin_but_not_no_store() {
        let p = CachePolicy {
            forced_ttl: Some(Duration::from_secs(42)),
            ..Default::default()
        };
        assert_eq!(
            fresh(eval_with(&[], 200, &[("cache-control", "max-age=1")], p)).lifetime(),
            Duration::from_secs(42)
        );
        assert_eq!(
            fresh(eval_with(&[], 200, &[], p)).lifetime(),
            Duration::from_secs(42)
        );
        assert!(matches!(
            eval_with(&[], 200, &[("cache-control", "no-store")], p),
            Storability::NoStore(_)
        ));
    }

    #[test]
    fn age_calculation_follows_rfc_9111_4_2_3() {
        let req = headers(&[]);
        let resp = headers(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("age", "30"),
            ("cache-control", "max-age=100"),
        ]);
        let f = fresh(evaluate(
            &Exchange {
                method: &Method::GET,
                request: &req,
                status: StatusCode::OK,
                response: &resp,
                request_time: t0(),
                response_time: t0() + Duration::from_secs(2),
            },
            &CachePolicy::default(),
        ));
        // corrected_age_value = 30 + 2 (delay) beats apparent_age = 2.
        assert_eq!(f.corrected_initial_age(), Duration::from_secs(32));
        let later = t0() + Duration::from_secs(12);
        assert_eq!(f.age(later), Duration::from_secs(42));
        assert_eq!(f.ttl(later), Some(Duration::from_secs(58)));
        assert_eq!(f.ttl_secs(t0() + Duration::from_secs(100)), -30);
    }

    #[test]
    fn apparent_age_from_a_date_in_the_past() {
        let resp = [
            ("date", "Sun, 06 Nov 1994 08:48:37 GMT"),
            ("cache-control", "max-age=100"),
        ];
        let f = fresh(eval(&resp));
        assert_eq!(f.corrected_initial_age(), Duration::from_secs(60));
    }

    #[test]
    fn age_parsing_edge_cases() {
        assert_eq!(
            age_value(&headers(&[("age", "10")])),
            Duration::from_secs(10)
        );
        // The same value repeated is still that value.
        assert_eq!(
            age_value(&headers(&[("age", "10, 10")])),
            Duration::from_secs(10)
        );
        assert_eq!(age_value(&headers(&[])), Duration::ZERO);
        assert_eq!(
            age_value(&headers(&[("age", "99999999999999")])),
            Duration::from_secs(DELTA_SECONDS_MAX)
        );
    }

    /// RFC 9111 §5.1: `Age = delta-seconds`; §1.2.2: delta-seconds is a non-negative
    /// integer. A value that is not one (or two different values) is ignored: the response
    /// is neither unstorable nor stale because of it, while a valid `Age` still counts
    /// (§4.2.3).
    #[test]
    fn invalid_age_is_ignored_not_stale() {
        for bad in ["-5", "abc", "1.5", "", "10, 20", "5, x", " +3"] {
            assert_eq!(
                age_value(&headers(&[("age", bad)])),
                Duration::ZERO,
                "{bad}"
            );
            let f = fresh(eval(&[DATE, ("age", bad), ("cache-control", "max-age=60")]));
            assert_eq!(f.corrected_initial_age(), Duration::ZERO, "{bad}");
            assert_eq!(f.ttl(t0()), Some(Duration::from_secs(60)), "{bad}");
        }
        // Two field lines that disagree.
        let mut h = headers(&[("age", "10")]);
        h.append(header::AGE, http::HeaderValue::from_static("20"));
        assert_eq!(age_value(&h), Duration::ZERO);
        // A valid Age still ages the response.
        let f = fresh(eval(&[
            DATE,
            ("age", "50"),
            ("cache-control", "max-age=60"),
        ]));
        assert_eq!(f.ttl(t0()), Some(Duration::from_secs(10)));
    }

    #[test]
    fn stale_windows() {
        let f = fresh(eval(&[
            DATE,
            (
                "cache-control",
                "max-age=10, stale-while-revalidate=20, stale-if-error=100",
            ),
        ]));
        let at = |s| t0() + Duration::from_secs(s);
        assert!(f.ttl(at(5)).is_some());
        assert!(f.can_serve_while_revalidating(at(25)));
        assert!(!f.can_serve_while_revalidating(at(31)));
        assert!(f.can_serve_on_error(at(100), None));
        assert!(!f.can_serve_on_error(at(200), None));
        assert!(f.can_serve_on_error(at(200), Some(Duration::from_secs(3600))));
        let strict = fresh(eval(&[
            DATE,
            (
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=100",
            ),
        ]));
        assert!(!strict.can_serve_on_error(at(11), Some(Duration::from_secs(3600))));
        let proxy = fresh(eval(&[
            DATE,
            ("cache-control", "max-age=10, proxy-revalidate"),
        ]));
        assert!(!proxy.can_serve_while_revalidating(at(11)));
    }

    #[test]
    fn packed_freshness_keeps_the_instant_exact_and_whole_seconds_of_spans() {
        let parts = FreshnessParts {
            response_time: UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            corrected_initial_age: Duration::from_secs(3),
            lifetime: Duration::from_secs(3600 * 24 * 365 * 20),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(20),
            must_revalidate: true,
        };
        let f = Freshness::from(parts);
        assert_eq!(f.parts(), parts);
        assert_eq!(std::mem::size_of::<Freshness>(), 24);
        assert!(!Freshness::from(FreshnessParts {
            must_revalidate: false,
            ..parts
        })
        .must_revalidate());
        // Spans are cut to the second below: a lifetime or window only ever gets shorter.
        let cut = Freshness::from(FreshnessParts {
            corrected_initial_age: Duration::new(3, 999_999_999),
            lifetime: Duration::from_millis(1_999),
            stale_while_revalidate: Duration::from_millis(10),
            ..parts
        });
        assert_eq!(cut.corrected_initial_age(), Duration::from_secs(3));
        assert_eq!(cut.lifetime(), Duration::from_secs(1));
        assert_eq!(cut.stale_while_revalidate(), Duration::ZERO);
        // Out of range: an instant before 1970 reads as 1970, a span saturates, and a huge
        // stale-if-error never sets the must-revalidate bit.
        let odd = Freshness::from(FreshnessParts {
            response_time: UNIX_EPOCH - Duration::from_secs(1),
            lifetime: Duration::MAX,
            stale_if_error: Duration::MAX,
            must_revalidate: false,
            ..parts
        });
        assert_eq!(odd.response_time(), UNIX_EPOCH);
        assert_eq!(odd.lifetime(), Duration::from_secs(u32::MAX.into()));
        assert_eq!(
            odd.stale_if_error(),
            Duration::from_secs((MUST_REVALIDATE - 1).into())
        );
        assert!(!odd.must_revalidate());
        // A soft purge ends the lifetime at its instant (even mid-second), and keeps the rest.
        let at = parts.response_time + Duration::from_millis(60_500);
        let expired = f.expired_at(at);
        assert_eq!(expired.lifetime(), Duration::from_secs(63));
        assert!(expired.ttl(at).is_none());
        assert_eq!(expired.stale_if_error(), parts.stale_if_error);
        assert!(expired.must_revalidate());
    }
}
