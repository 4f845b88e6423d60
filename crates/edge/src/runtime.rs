//! The runtime form of a validated configuration: services indexed by host, origin pools
//! built, header rules parsed. A `Runtime` is immutable; reloads build a new one and swap it.

use crate::drills::{Fault, Switches};
use crate::health::HealthCounters;
use crate::http::freshness::CachePolicy;
use crate::upstream::OriginPool;
use firebreak_config::{
    compile_path_regex, Cidr, Config, FaultAction, HeaderOp, ServiceConfig, ValidConfig,
};
use firebreak_protocol::health::{Counts, ServiceHealth};
use http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What a path rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Skip the cache entirely.
    Bypass,
    /// Force this freshness lifetime.
    ForceTtl(Duration),
}

/// A compiled response header rule.
#[derive(Debug, Clone)]
pub struct HeaderRule {
    /// Header name.
    pub name: HeaderName,
    /// Operation.
    pub op: HeaderOp,
    /// Value for set/add.
    pub value: Option<HeaderValue>,
}

/// How a cache rule matches a request path.
#[derive(Debug)]
pub enum PathMatch {
    /// The path starts with this prefix.
    Prefix(String),
    /// The (linear-time, size-bounded) regex matches the path.
    Regex(regex::Regex),
}

impl PathMatch {
    /// Whether the rule applies to `path`.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Self::Regex(re) => re.is_match(path),
        }
    }
}

/// One service ready to serve.
pub struct Service {
    /// Unique name (also the cache key namespace).
    pub name: Arc<str>,
    /// Origin pool; shared with the previous runtime when its configuration is unchanged, so
    /// a reload keeps warm connections and health state.
    pub pool: Arc<OriginPool>,
    /// Whether the cache is used at all.
    pub cache_enabled: bool,
    /// Operator defaults for storability.
    pub policy: CachePolicy,
    /// Serve stale on origin failure up to this long past expiry.
    pub safety_net: Option<Duration>,
    /// Remove CDN-Cache-Control on the way out (Surrogate-Control always goes).
    pub strip_cdn_cache_control: bool,
    /// Path rules, first match wins.
    pub rules: Vec<(PathMatch, RuleAction)>,
    /// Response header rules.
    pub header_rules: Vec<HeaderRule>,
    /// Pre-registered metric handles for the hit path.
    pub counters: crate::telemetry::ServiceCounters,
    /// What this service served under this runtime's version (never carried over).
    pub health: HealthCounters,
    /// Injected per-request faults (drills), in configuration order.
    pub faults: Vec<Fault>,
    /// Kill switches engaged for this service.
    pub switches: Switches,
    /// Extra request headers removed at routing (`[service.forwarding]`).
    pub strip_headers: Vec<HeaderName>,
    /// Request headers whose values are part of the cache key (`[service.forwarding]`).
    pub key_headers: Vec<HeaderName>,
    /// Advertise HTTP/3 in `Alt-Svc` on HTTP/1.1 and h2 responses over TLS.
    pub alt_svc: bool,
    /// Objects are fetched and stored in slices of this many bytes (`proxy::slice`).
    pub slice_bytes: Option<u64>,
    /// The shield POP asked before the origin (`[service.shield]`), if any.
    pub shield: Option<Arc<str>>,
}

impl Service {
    /// The first rule matching `path`, which must be the normalised path
    /// ([`crate::http::path`]). Rules see encoded slashes (`%2F`) as separators, since an
    /// origin may: a `/private/` rule covers `/private%2Fme`.
    pub fn rule_for(&self, path: &str) -> Option<RuleAction> {
        if self.rules.is_empty() {
            return None;
        }
        let view = crate::http::path::rule_view(path);
        self.rules
            .iter()
            .find(|(m, _)| m.matches(&view))
            .map(|(_, a)| *a)
    }

    fn build(
        c: &ServiceConfig,
        fleet: &Config,
        previous: Option<&Runtime>,
    ) -> Result<Self, String> {
        if c.faults.iter().any(|f| f.action == FaultAction::FailBuild) {
            return Err("injected fault `fail_build` (drill): this version cannot be built".into());
        }
        let switches = Switches::for_service(fleet, &c.name);
        let reused = previous
            .and_then(|rt| rt.services.iter().find(|s| *s.name == *c.name))
            .filter(|s| s.pool.config() == &c.origin)
            .map(|s| s.pool.clone());
        let pool = match reused {
            Some(pool) => pool,
            None => Arc::new(OriginPool::new(&c.origin, &c.name)?),
        };
        let rules = c
            .cache
            .rules
            .iter()
            .filter(|r| !(switches.no_regex_rules && r.path_regex.is_some()))
            .map(|r| {
                let action = match r.ttl_s {
                    Some(ttl) if !r.bypass => RuleAction::ForceTtl(Duration::from_secs(ttl)),
                    _ => RuleAction::Bypass,
                };
                let matcher = match (&r.path_prefix, &r.path_regex) {
                    (Some(prefix), _) => PathMatch::Prefix(prefix.clone()),
                    (None, Some(pattern)) => PathMatch::Regex(compile_path_regex(pattern)?),
                    (None, None) => return Err("a cache rule matches nothing".to_owned()),
                };
                Ok((matcher, action))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let header_rules = c
            .response_headers
            .iter()
            .map(|r| {
                Ok(HeaderRule {
                    name: HeaderName::from_bytes(r.name.as_bytes()).map_err(|e| e.to_string())?,
                    op: r.op,
                    value: match &r.value {
                        Some(v) => Some(HeaderValue::from_str(v).map_err(|e| e.to_string())?),
                        None => None,
                    },
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let header_names = |names: &[String]| {
            names
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("{n}: {e}")))
                .collect::<Result<Vec<_>, String>>()
        };
        let strip_headers = header_names(&c.forwarding.strip_request_headers)?;
        let key_headers = header_names(&c.forwarding.cache_key_headers)?;
        let name: Arc<str> = c.name.as_str().into();
        Ok(Self {
            strip_headers,
            key_headers,
            alt_svc: c.alt_svc,
            slice_bytes: c.cache.slice_bytes,
            shield: c.shield.as_ref().map(|s| Arc::from(s.pop.as_str())),
            counters: crate::telemetry::ServiceCounters::new(&name),
            name,
            pool,
            cache_enabled: c.cache.enabled && !switches.bypass_cache,
            policy: CachePolicy {
                default_ttl: c.cache.default_ttl_s.map(Duration::from_secs),
                forced_ttl: None,
                heuristic: c
                    .cache
                    .heuristic_freshness
                    .then(|| Duration::from_secs(c.cache.heuristic_freshness_max_s)),
            },
            safety_net: (c.cache.serve_stale_on_origin_failure && !switches.no_stale)
                .then(|| Duration::from_secs(c.cache.max_stale_on_failure_s)),
            strip_cdn_cache_control: c.cache.strip_cdn_cache_control,
            rules,
            header_rules,
            health: HealthCounters::default(),
            faults: Fault::compile(&c.faults),
            switches,
        })
    }
}

/// A complete runtime configuration.
pub struct Runtime {
    /// The configuration it was built from.
    pub config: ValidConfig,
    services: Vec<Arc<Service>>,
    by_host: HashMap<String, usize>,
    /// Wildcard hosts (`*.example.com`) by the part after `*.`.
    by_wildcard: HashMap<String, usize>,
    default: Option<usize>,
    /// The services' certificates for TLS listeners.
    pub tls: crate::tls::CertTable,
    /// Requests no service matched (refused before routing), under this version.
    pub unrouted: HealthCounters,
    /// Client addresses whose forwarding headers are trusted (`forwarding.trusted_proxies`).
    trusted_proxies: Vec<Cidr>,
}

impl Runtime {
    /// Builds every service. Any failure rejects the whole configuration. Origin pools whose
    /// settings did not change are carried over from `previous`; health counters are not
    /// (they start at zero: they belong to this version). A `fail_build` fault fails here;
    /// a `crash_on_load` fault does not (see [`Runtime::crash_on_load`]).
    pub fn build(config: ValidConfig, previous: Option<&Runtime>) -> Result<Self, String> {
        let mut services = Vec::with_capacity(config.services.len());
        let mut by_host = HashMap::new();
        let mut by_wildcard = HashMap::new();
        let mut default = None;
        for (i, s) in config.services.iter().enumerate() {
            services.push(Arc::new(
                Service::build(s, &config, previous)
                    .map_err(|e| format!("service `{}`: {e}", s.name))?,
            ));
            for h in &s.hosts {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix("*.") {
                    Some(suffix) => by_wildcard.insert(suffix.to_owned(), i),
                    None => by_host.insert(h, i),
                };
            }
            if s.default {
                default = Some(i);
            }
        }
        for sw in config.switches.iter().filter(|sw| sw.on) {
            if !config.services.iter().any(|s| s.name == sw.service) {
                tracing::warn!(switch = %sw.name, service = %sw.service, "switch names no service here; it has no effect");
            }
        }
        let trusted_proxies = config
            .forwarding
            .trusted_proxies
            .iter()
            .map(|p| Cidr::parse(p))
            .collect::<Result<Vec<_>, String>>()?;
        let tls = crate::tls::CertTable::build(&config);
        Ok(Self {
            trusted_proxies,
            config,
            services,
            by_host,
            by_wildcard,
            default,
            tls,
            unrouted: HealthCounters::default(),
        })
    }

    /// The service carrying a `crash_on_load` fault, if any: installing this runtime for
    /// serving must abort the process (a drill of a latent crash bug).
    pub fn crash_on_load(&self) -> Option<&str> {
        self.config
            .services
            .iter()
            .find(|s| {
                s.faults
                    .iter()
                    .any(|f| f.action == FaultAction::CrashOnLoad)
            })
            .map(|s| s.name.as_str())
    }

    /// What this version served: the total (requests no service matched included) and each
    /// service that saw requests.
    pub fn health(&self) -> (Counts, Vec<ServiceHealth>) {
        let mut total = self.unrouted.snapshot();
        let mut services = Vec::new();
        for svc in &self.services {
            let counts = svc.health.snapshot();
            total.add(&counts);
            if counts.requests > 0 || counts.origin_requests > 0 {
                services.push(ServiceHealth {
                    service: svc.name.to_string(),
                    counts,
                });
            }
        }
        (total, services)
    }

    /// Whether `client` is a trusted proxy whose forwarding headers are kept.
    pub fn trusts(&self, client: std::net::IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|c| c.contains(client))
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| *s.name == *name)
    }

    /// The service for a (lowercased, port-less) host, or the default service.
    pub fn route(&self, host: &str) -> Option<&Arc<Service>> {
        let idx = self.host_index(host).or(self.default)?;
        self.services.get(idx)
    }

    /// The index of the service whose hosts match `host` (lowercased): an exact host first,
    /// else a wildcard host one label up (`*.example.com` for `a.example.com`).
    pub fn host_index(&self, host: &str) -> Option<usize> {
        self.by_host.get(host).copied().or_else(|| {
            let (label, parent) = host.split_once('.')?;
            (!label.is_empty())
                .then(|| self.by_wildcard.get(parent).copied())
                .flatten()
        })
    }

    /// The index of a service (`Arc` identity) in this runtime.
    pub fn service_index(&self, svc: &Arc<Service>) -> Option<usize> {
        self.services.iter().position(|s| Arc::ptr_eq(s, svc))
    }
}
