//! Fleet-wide bounds on `path_regex` rules. Each rule is bounded on its own
//! ([`crate::compile_path_regex`]); these bound the whole set, which is what a push and every
//! edge pay for: the count first (checked before anything is compiled, so a huge set is refused
//! in milliseconds), then the compiled size of each service's rules taken together (compiled
//! as one multi-pattern program, the way a `RegexSet` would be) and of the whole fleet.

use crate::limits::{MAX_FLEET_REGEX_BYTES, MAX_FLEET_REGEX_RULES, MAX_SERVICE_REGEX_BYTES};
use crate::locate::PathSeg::{self, Index, Key};
use crate::model::ServiceConfig;
use crate::validate::Checker;

fn rule_path(service: usize, rule: usize) -> Vec<PathSeg> {
    vec![
        Key("service"),
        Index(service),
        Key("cache"),
        Key("rules"),
        Index(rule),
        Key("path_regex"),
    ]
}

/// Counts the fleet's `path_regex` rules. Over [`MAX_FLEET_REGEX_RULES`]: fails at the first
/// rule past the bound and returns `false` (the caller then compiles none of them).
pub(crate) fn check_count(c: &mut Checker, services: &[ServiceConfig]) -> bool {
    let mut seen = 0usize;
    let total: usize = services
        .iter()
        .map(|s| {
            s.cache
                .rules
                .iter()
                .filter(|r| r.path_regex.is_some())
                .count()
        })
        .sum();
    if total <= MAX_FLEET_REGEX_RULES {
        return true;
    }
    for (i, s) in services.iter().enumerate() {
        for (j, r) in s.cache.rules.iter().enumerate() {
            if r.path_regex.is_some() {
                seen += 1;
                if seen > MAX_FLEET_REGEX_RULES {
                    c.fail(
                        &rule_path(i, j),
                        format!(
                            "the fleet has {total} path_regex rules; the limit is {MAX_FLEET_REGEX_RULES} for the whole fleet (use path_prefix rules, or fewer, broader patterns)"
                        ),
                    );
                    return false;
                }
            }
        }
    }
    false
}

/// Compiles each service's `path_regex` rules together, bounded by
/// [`MAX_SERVICE_REGEX_BYTES`], and sums the compiled sizes against [`MAX_FLEET_REGEX_BYTES`].
/// Call only when every rule compiled on its own.
pub(crate) fn check_size(c: &mut Checker, services: &[ServiceConfig]) {
    let mut total = 0usize;
    for (i, s) in services.iter().enumerate() {
        let patterns: Vec<&str> = s
            .cache
            .rules
            .iter()
            .filter_map(|r| r.path_regex.as_deref())
            .collect();
        if patterns.is_empty() {
            continue;
        }
        let at = [Key("service"), Index(i), Key("cache"), Key("rules")];
        let left = MAX_FLEET_REGEX_BYTES.saturating_sub(total);
        let limit = MAX_SERVICE_REGEX_BYTES.min(left);
        match compiled_size(&patterns, limit) {
            Ok(size) => total = total.saturating_add(size),
            Err(_) if limit < MAX_SERVICE_REGEX_BYTES => {
                c.fail(
                    &at,
                    format!(
                        "the fleet's path_regex rules compile to more than {MAX_FLEET_REGEX_BYTES} bytes (this service's would take more than the {left} left); the limit is {MAX_FLEET_REGEX_BYTES} bytes for the whole fleet"
                    ),
                );
                return;
            }
            Err(e) => c.fail(
                &at,
                format!(
                    "this service's {} path_regex rules compiled together exceed {MAX_SERVICE_REGEX_BYTES} bytes (the limit per service): {e}",
                    patterns.len()
                ),
            ),
        }
    }
}

/// The heap size of `patterns` compiled as one multi-pattern regex, refused past `limit`.
pub fn compiled_size(patterns: &[&str], limit: usize) -> Result<usize, String> {
    use regex_automata::meta;
    let re = meta::Builder::new()
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(limit))
                .onepass_size_limit(Some(limit))
                .dfa_size_limit(Some(limit))
                .hybrid_cache_capacity(limit.max(2 * (1 << 10))),
        )
        .syntax(
            regex_automata::util::syntax::Config::new()
                .nest_limit(crate::limits::MAX_REGEX_NESTING),
        )
        .build_many(patterns)
        .map_err(|e| {
            let text = e.to_string();
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        })?;
    let size = re.memory_usage();
    if size > limit {
        return Err(format!("compiled size {size} bytes"));
    }
    Ok(size)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn compiled_size_grows_with_the_set_and_is_bounded() {
        let one = ["^/r0/[a-z0-9_]{1,40}/(img|css|js)/[a-z0-9_.-]{1,80}\\.(png|jpg|css|js)$"];
        let a = compiled_size(&one, MAX_SERVICE_REGEX_BYTES).unwrap();
        let many: Vec<String> = (0..16)
            .map(|i| {
                format!(
                    "^/r{i}/[a-z0-9_]{{1,40}}/(img|css|js)/[a-z0-9_.-]{{1,80}}\\.(png|jpg|css|js)$"
                )
            })
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let b = compiled_size(&many, MAX_SERVICE_REGEX_BYTES).unwrap();
        eprintln!("one rule {a} bytes, 16 rules {b} bytes");
        assert!(b > a);
        assert!(compiled_size(&many, b / 2).is_err());
        assert!(compiled_size(&["\\w{100}"], MAX_SERVICE_REGEX_BYTES).is_err());
    }
}
