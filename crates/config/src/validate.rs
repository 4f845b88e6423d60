//! Semantic checks that serde cannot express: counts, ranges, uniqueness, cross-references.

use crate::limits::*;
use crate::locate::PathSeg::{self, Index, Key};
use crate::model::*;
use std::collections::HashMap;

/// One semantic problem and where it is.
pub struct Problem {
    pub path: Vec<PathSeg>,
    pub message: String,
}

/// Collects problems; shared with the checks of sibling modules (`drills`).
pub(crate) struct Checker {
    pub(crate) problems: Vec<Problem>,
    /// Set when the fleet has more `path_regex` rules than allowed: none is compiled then.
    pub(crate) skip_regexes: bool,
}

impl Checker {
    pub(crate) fn fail(&mut self, path: &[PathSeg], message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_vec(),
            message: message.into(),
        });
    }

    pub(crate) fn count(
        &mut self,
        path: &[PathSeg],
        n: usize,
        min: usize,
        max: usize,
        what: &str,
    ) -> bool {
        if n < min {
            self.fail(path, format!("at least {min} {what} required, found {n}"));
            false
        } else if n > max {
            self.fail(path, format!("at most {max} {what} allowed, found {n}"));
            false
        } else {
            true
        }
    }

    pub(crate) fn timeout(&mut self, path: &[PathSeg], ms: u64) {
        if ms == 0 || ms > MAX_TIMEOUT_MS {
            self.fail(
                path,
                format!("must be between 1 and {MAX_TIMEOUT_MS} ms, got {ms}"),
            );
        }
    }

    fn ttl(&mut self, path: &[PathSeg], s: u64) {
        if s > MAX_TTL_S {
            self.fail(
                path,
                format!("must be at most {MAX_TTL_S} s (one year), got {s}"),
            );
        }
    }
}

/// Where a configuration is going to be used: the checks differ only in per-edge settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A file an edge loads itself: it names its listeners and admin address.
    Standalone,
    /// A document given to the control plane for the whole fleet: listener and admin
    /// addresses are per edge (its command line), so the document must not name them.
    Managed,
}

const PER_EDGE: &str = "is set per edge (`firebreak edge --listen/--admin`); remove it from configuration given to the control plane";

/// Returns every problem found; empty means valid.
pub fn validate(config: &Config, mode: Mode) -> Vec<Problem> {
    let mut c = Checker {
        problems: Vec::new(),
        skip_regexes: false,
    };
    match mode {
        Mode::Standalone => listeners(&mut c, &config.listeners),
        Mode::Managed if !config.listeners.is_empty() => c.fail(&[Key("listener")], PER_EDGE),
        Mode::Managed => {}
    }
    if mode == Mode::Managed && config.services.is_empty() {
        c.fail(
            &[Key("service")],
            "a fleet document needs at least one [[service]]; an empty one would stop all traffic",
        );
    }
    crate::rollout::check(&mut c, &config.rollout);
    cache(&mut c, &config.cache);
    crate::fetch::check(&mut c, &config.fetch, &config.cache);
    limits(&mut c, &config.limits);
    c.skip_regexes = !crate::regexes::check_count(&mut c, &config.services);
    let before = c.problems.len();
    services(&mut c, &config.services);
    slice_sizes(&mut c, config);
    if !c.skip_regexes && c.problems.len() == before {
        crate::regexes::check_size(&mut c, &config.services);
    }
    crate::origin_tls::check(&mut c, &config.services, mode);
    crate::drills::check_switches(&mut c, &config.switches, &config.services);
    crate::forwarding::check(&mut c, &config.forwarding);
    crate::http3::check(&mut c, &config.http3);
    crate::dns::check(&mut c, config);
    crate::shield::check(&mut c, config, mode);
    crate::tls::check(&mut c, config, mode);
    if let Some(admin) = &config.admin {
        match (&admin.token, &admin.token_sha256) {
            (Some(_), Some(_)) => c.fail(
                &[Key("admin"), Key("token_sha256")],
                "give token or token_sha256, not both",
            ),
            (None, None) => c.fail(
                &[Key("admin")],
                "needs token_sha256 (the SHA-256 of the admin token: firebreak hash-token) or, on a standalone edge, token",
            ),
            (Some(_), None) if mode == Mode::Managed => c.fail(
                &[Key("admin"), Key("token")],
                "a fleet document is sent to every edge, so it must not carry the admin token: write token_sha256 = \"<hex SHA-256 of the token>\" instead (firebreak hash-token prints it)",
            ),
            (Some(token), None) => {
                let len = token.len();
                if !(MIN_ADMIN_TOKEN_LEN..=MAX_ADMIN_TOKEN_LEN).contains(&len)
                    || !token.bytes().all(|b| b.is_ascii_graphic())
                {
                    c.fail(
                        &[Key("admin"), Key("token")],
                        format!(
                            "must be {MIN_ADMIN_TOKEN_LEN} to {MAX_ADMIN_TOKEN_LEN} printable ASCII characters without spaces"
                        ),
                    );
                }
            }
            (None, Some(hash)) => {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    c.fail(
                        &[Key("admin"), Key("token_sha256")],
                        "must be 64 hex digits: the SHA-256 of the admin token (firebreak hash-token)",
                    );
                }
            }
        }
        match (mode, admin.listen) {
            (Mode::Standalone, None) => c.fail(
                &[Key("admin"), Key("listen")],
                "is required (the address of the admin listener)",
            ),
            (Mode::Standalone, Some(listen)) => {
                if listen.port() != 0 && config.listeners.iter().any(|l| l.addr == listen) {
                    c.fail(
                        &[Key("admin"), Key("listen")],
                        "must differ from every [[listener]] address",
                    );
                }
            }
            (Mode::Managed, Some(_)) => c.fail(&[Key("admin"), Key("listen")], PER_EDGE),
            (Mode::Managed, None) => {}
        }
    }
    if let Some(log) = &config.access_log {
        if log.path.is_empty() || log.path.len() > 4096 || log.path.contains('\0') {
            c.fail(
                &[Key("access_log"), Key("path")],
                "must be `-` or a file path",
            );
        }
    }
    c.problems
}

fn listeners(c: &mut Checker, listeners: &[ListenerConfig]) {
    let path = [Key("listener")];
    if !c.count(&path, listeners.len(), 1, MAX_LISTENERS, "listeners") {
        return;
    }
    let mut seen = HashMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if let Some(first) = seen.insert(l.addr, i) {
            c.fail(
                &[Key("listener"), Index(i), Key("addr")],
                format!("address {} is already used by listener[{first}]", l.addr),
            );
        }
    }
}

fn cache(c: &mut Checker, cache: &CacheConfig) {
    if !(MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(&cache.max_bytes) {
        c.fail(
            &[Key("cache"), Key("max_bytes")],
            format!("must be between {MIN_CACHE_BYTES} and {MAX_CACHE_BYTES}"),
        );
    }
    if cache.max_object_bytes == 0 || cache.max_object_bytes > cache.max_bytes {
        c.fail(
            &[Key("cache"), Key("max_object_bytes")],
            "must be at least 1 and at most cache.max_bytes",
        );
    }
    c.timeout(
        &[Key("cache"), Key("coalesce_wait_ms")],
        cache.coalesce_wait_ms,
    );
    if (1..4096).contains(&cache.zero_copy_min_bytes) {
        c.fail(
            &[Key("cache"), Key("zero_copy_min_bytes")],
            "must be 0 (off) or at least 4096 (a page)",
        );
    }
    if let Some(disk) = &cache.disk {
        let at = |field| [Key("cache"), Key("disk"), Key(field)];
        if disk.path.trim().is_empty() || disk.path.len() > MAX_DISK_PATH_LEN {
            c.fail(
                &at("path"),
                format!("must be a directory path of 1 to {MAX_DISK_PATH_LEN} bytes"),
            );
        }
        if !(MIN_DISK_CACHE_BYTES..=MAX_DISK_CACHE_BYTES).contains(&disk.max_bytes) {
            c.fail(
                &at("max_bytes"),
                format!("must be between {MIN_DISK_CACHE_BYTES} and {MAX_DISK_CACHE_BYTES}"),
            );
        } else if cache.max_object_bytes > disk.max_bytes / 2 {
            c.fail(
                &at("max_bytes"),
                format!(
                    "must hold two objects of cache.max_object_bytes ({}), got {}",
                    cache.max_object_bytes, disk.max_bytes
                ),
            );
        } else if let Some(m) = disk.max_object_bytes {
            if m == 0 || m > disk.max_bytes / 2 {
                c.fail(
                    &at("max_object_bytes"),
                    format!(
                        "must be between 1 and half of cache.disk.max_bytes ({}), got {m}",
                        disk.max_bytes / 2
                    ),
                );
            }
        }
        if !(cache.max_object_bytes..=MAX_CACHE_BYTES).contains(&disk.write_queue_bytes) {
            c.fail(
                &at("write_queue_bytes"),
                format!(
                    "must be between cache.max_object_bytes ({}) and {MAX_CACHE_BYTES}",
                    cache.max_object_bytes
                ),
            );
        }
        c.timeout(&at("retry_ms"), disk.retry_ms);
        if disk.open_files > MAX_DISK_OPEN_FILES {
            c.fail(
                &at("open_files"),
                format!("must be at most {MAX_DISK_OPEN_FILES}"),
            );
        }
    }
}

fn limits(c: &mut Checker, limits: &LimitsConfig) {
    if !(MIN_HEADER_BYTES_LIMIT..=MAX_HEADER_BYTES_LIMIT).contains(&limits.max_header_bytes) {
        c.fail(
            &[Key("limits"), Key("max_header_bytes")],
            format!("must be between {MIN_HEADER_BYTES_LIMIT} and {MAX_HEADER_BYTES_LIMIT}"),
        );
    }
    c.timeout(
        &[Key("limits"), Key("header_read_timeout_ms")],
        limits.header_read_timeout_ms,
    );
    if limits.max_request_body_bytes > MAX_REQUEST_BODY_LIMIT {
        c.fail(
            &[Key("limits"), Key("max_request_body_bytes")],
            format!("must be at most {MAX_REQUEST_BODY_LIMIT}"),
        );
    }
    if limits.max_connections == 0 || limits.max_connections > MAX_CONNECTIONS_LIMIT {
        c.fail(
            &[Key("limits"), Key("max_connections")],
            format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
        );
    }
    if limits.connection_workers > MAX_CONNECTION_WORKERS {
        c.fail(
            &[Key("limits"), Key("connection_workers")],
            format!("must be at most {MAX_CONNECTION_WORKERS} (0: one per core)"),
        );
    }
    crate::clients::check(c, &limits.clients);
}

fn services(c: &mut Checker, services: &[ServiceConfig]) {
    if !c.count(
        &[Key("service")],
        services.len(),
        1,
        MAX_SERVICES,
        "services",
    ) {
        return;
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut hosts: HashMap<String, usize> = HashMap::new();
    let mut default_service: Option<usize> = None;
    for (i, s) in services.iter().enumerate() {
        let base = [Key("service"), Index(i)];
        let at = |rest: &[PathSeg]| -> Vec<PathSeg> { base.iter().chain(rest).cloned().collect() };
        if !valid_service_name(&s.name) {
            c.fail(
                &at(&[Key("name")]),
                format!(
                    "`{}` is not a valid name: use 1 to {MAX_SERVICE_NAME_LEN} of a-z, 0-9, '-', '_'",
                    s.name
                ),
            );
        } else if let Some(first) = names.insert(&s.name, i) {
            c.fail(
                &at(&[Key("name")]),
                format!(
                    "service name `{}` is already used by service[{first}]",
                    s.name
                ),
            );
        }
        if s.default {
            if let Some(first) = default_service {
                c.fail(
                    &at(&[Key("default")]),
                    format!("only one default service is allowed; service[{first}] is already the default"),
                );
            }
            default_service = Some(i);
        } else if s.hosts.is_empty() {
            c.fail(
                &at(&[Key("hosts")]),
                "a service needs at least one host name unless it is the default service",
            );
        }
        if c.count(
            &at(&[Key("hosts")]),
            s.hosts.len(),
            0,
            MAX_HOSTS_PER_SERVICE,
            "hosts",
        ) {
            for (j, h) in s.hosts.iter().enumerate() {
                let p = at(&[Key("hosts"), Index(j)]);
                if !valid_host_name(h) && !crate::tls::valid_wildcard_host(h) {
                    c.fail(
                        &p,
                        format!("`{h}` is not a valid host name (no port, no scheme; a wildcard is `*.` and a name)"),
                    );
                    continue;
                }
                if let Some(first) = hosts.insert(h.to_ascii_lowercase(), i) {
                    let owner = services.get(first).map(|s| s.name.as_str()).unwrap_or("?");
                    c.fail(
                        &p,
                        format!(
                            "host `{h}` is already claimed by service `{owner}` (service[{first}])"
                        ),
                    );
                }
            }
        }
        origin(c, &at(&[Key("origin")]), &s.origin);
        service_cache(c, &at(&[Key("cache")]), &s.cache);
        header_rules(c, &at(&[Key("response_headers")]), &s.response_headers);
        crate::drills::check_faults(c, &at(&[Key("fault")]), &s.faults);
        crate::forwarding::check_service(c, &at(&[Key("forwarding")]), &s.forwarding);
        crate::clients::check_service(c, &base, &s.clients);
    }
}

fn origin(c: &mut Checker, base: &[PathSeg], o: &OriginPoolConfig) {
    let at = |rest: &[PathSeg]| -> Vec<PathSeg> { base.iter().chain(rest).cloned().collect() };
    if c.count(
        &at(&[Key("servers")]),
        o.servers.len(),
        1,
        MAX_ORIGINS_PER_POOL,
        "origin servers",
    ) {
        let mut primaries = 0;
        for (i, s) in o.servers.iter().enumerate() {
            if !valid_authority(&s.addr) {
                c.fail(
                    &at(&[Key("servers"), Index(i), Key("addr")]),
                    format!("`{}` is not host:port (for example 127.0.0.1:9000)", s.addr),
                );
            }
            if s.weight == 0 || s.weight > MAX_ORIGIN_WEIGHT {
                c.fail(
                    &at(&[Key("servers"), Index(i), Key("weight")]),
                    format!("must be between 1 and {MAX_ORIGIN_WEIGHT}"),
                );
            }
            if !s.backup {
                primaries += 1;
            }
        }
        if primaries == 0 {
            c.fail(
                &at(&[Key("servers")]),
                "at least one server must not be a backup",
            );
        }
    }
    c.timeout(&at(&[Key("connect_timeout_ms")]), o.connect_timeout_ms);
    c.timeout(&at(&[Key("response_timeout_ms")]), o.response_timeout_ms);
    c.timeout(&at(&[Key("idle_timeout_ms")]), o.idle_timeout_ms);
    crate::fetch::check_breaker(c, &at(&[Key("breaker")]), &o.breaker);
    if o.max_idle_per_server > 10_000 {
        c.fail(&at(&[Key("max_idle_per_server")]), "must be at most 10000");
    }
    if let Some(h) = &o.host_header {
        if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
            c.fail(&at(&[Key("host_header")]), "not a valid Host header value");
        }
    }
}

/// `service.cache.slice_bytes`: bounded, and no larger than the largest object stored (a
/// slice that can never be stored would send every request to the origin).
fn slice_sizes(c: &mut Checker, config: &Config) {
    for (i, s) in config.services.iter().enumerate() {
        let Some(n) = s.cache.slice_bytes else {
            continue;
        };
        let at = [Key("service"), Index(i), Key("cache"), Key("slice_bytes")];
        if !(MIN_SLICE_BYTES..=MAX_SLICE_BYTES).contains(&n) {
            c.fail(
                &at,
                format!("must be between {MIN_SLICE_BYTES} (64 KiB) and {MAX_SLICE_BYTES} (64 MiB), got {n}"),
            );
        } else if n > config.cache.max_object_bytes {
            c.fail(
                &at,
                format!(
                    "must be at most cache.max_object_bytes ({}), got {n}",
                    config.cache.max_object_bytes
                ),
            );
        }
    }
}

fn service_cache(c: &mut Checker, base: &[PathSeg], sc: &ServiceCacheConfig) {
    let at = |rest: &[PathSeg]| -> Vec<PathSeg> { base.iter().chain(rest).cloned().collect() };
    if let Some(ttl) = sc.default_ttl_s {
        c.ttl(&at(&[Key("default_ttl_s")]), ttl);
    }
    c.ttl(
        &at(&[Key("max_stale_on_failure_s")]),
        sc.max_stale_on_failure_s,
    );
    let max = at(&[Key("heuristic_freshness_max_s")]);
    if sc.heuristic_freshness_max_s == 0 {
        c.fail(
            &max,
            "must be at least 1 (set heuristic_freshness = false to turn it off)",
        );
    }
    c.ttl(&max, sc.heuristic_freshness_max_s);
    if !c.count(
        &at(&[Key("rules")]),
        sc.rules.len(),
        0,
        MAX_CACHE_RULES,
        "cache rules",
    ) {
        return;
    }
    for (i, r) in sc.rules.iter().enumerate() {
        let p = at(&[Key("rules"), Index(i)]);
        match (&r.path_prefix, &r.path_regex) {
            (Some(prefix), None) => {
                if !prefix.starts_with('/') || prefix.len() > MAX_PATH_PREFIX_LEN {
                    let mut q = p.clone();
                    q.push(Key("path_prefix"));
                    c.fail(
                        &q,
                        format!("must start with '/' and be at most {MAX_PATH_PREFIX_LEN} bytes"),
                    );
                }
            }
            (None, Some(_)) if c.skip_regexes => {}
            (None, Some(pattern)) => {
                if let Err(e) = compile_path_regex(pattern) {
                    let mut q = p.clone();
                    q.push(Key("path_regex"));
                    c.fail(&q, e);
                }
            }
            _ => c.fail(
                &p,
                "a rule needs exactly one of `path_prefix` and `path_regex`",
            ),
        }
        match (r.bypass, r.ttl_s) {
            (true, Some(_)) => c.fail(&p, "set either `bypass = true` or `ttl_s`, not both"),
            (false, None) => c.fail(&p, "a rule needs `bypass = true` or `ttl_s`"),
            (false, Some(ttl)) => {
                let mut q = p.clone();
                q.push(Key("ttl_s"));
                c.ttl(&q, ttl);
            }
            (true, None) => {}
        }
    }
}

/// Compiles a cache rule's `path_regex` with the bounds every edge applies: pattern length,
/// compiled program size and lazy-DFA cache size. The `regex` crate only offers constructs it
/// can match in linear time, so look-around and backreferences are refused here. The edge
/// compiles rules with this same function.
pub fn compile_path_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!(
            "is {} bytes; the limit is {MAX_REGEX_LEN}",
            pattern.len()
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_PROGRAM_BYTES)
        .dfa_size_limit(MAX_REGEX_PROGRAM_BYTES)
        .nest_limit(MAX_REGEX_NESTING)
        .build()
        .map_err(|e| {
            // The crate's message spans several lines with a caret diagram; keep it on one.
            let text = e.to_string();
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("not accepted by the linear-time regex engine: {text}")
        })
}

/// Headers a rule may not touch: hop-by-hop fields and framing are the proxy's business.
pub(crate) const PROTECTED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-range",
    // The body's coding: setting or removing it leaves the body unreadable for clients.
    "content-encoding",
];

fn header_rules(c: &mut Checker, base: &[PathSeg], rules: &[HeaderRule]) {
    let at = |rest: &[PathSeg]| -> Vec<PathSeg> { base.iter().chain(rest).cloned().collect() };
    if !c.count(base, rules.len(), 0, MAX_HEADER_RULES, "header rules") {
        return;
    }
    for (i, r) in rules.iter().enumerate() {
        match http::HeaderName::from_bytes(r.name.as_bytes()) {
            Err(_) => c.fail(
                &at(&[Index(i), Key("name")]),
                format!("`{}` is not a valid header name", r.name),
            ),
            Ok(n) if PROTECTED_HEADERS.contains(&n.as_str()) => c.fail(
                &at(&[Index(i), Key("name")]),
                format!(
                    "`{}` is managed by the proxy and cannot be changed by a rule",
                    r.name
                ),
            ),
            Ok(_) => {}
        }
        match (r.op, &r.value) {
            (HeaderOp::Remove, Some(_)) => {
                c.fail(&at(&[Index(i), Key("value")]), "`remove` takes no value")
            }
            (HeaderOp::Set | HeaderOp::Add, None) => {
                c.fail(&at(&[Index(i)]), "`set` and `add` need a `value`")
            }
            (HeaderOp::Set | HeaderOp::Add, Some(v)) => {
                if http::HeaderValue::from_str(v).is_err() {
                    c.fail(&at(&[Index(i), Key("value")]), "not a valid header value");
                }
            }
            (HeaderOp::Remove, None) => {}
        }
    }
}

fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A DNS name or IP literal, as it appears in a Host header without the port.
pub fn valid_host_name(host: &str) -> bool {
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    // One pass (the edge checks every request's host): labels of 1..=63 letters, digits,
    // `-` or `_`, separated by single dots, none empty.
    let mut label = 0usize;
    for b in host.bytes() {
        if b == b'.' {
            if label == 0 {
                return false;
            }
            label = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label += 1;
            if label > 63 {
                return false;
            }
        } else {
            return false;
        }
    }
    label > 0
}

fn valid_authority(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().map(|p| p != 0).unwrap_or(false);
    port_ok && valid_host_name(host)
}
