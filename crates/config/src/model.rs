//! The configuration file's shape. Every struct denies unknown fields so that a typo is an
//! error, not a silently ignored setting.

use serde::Deserialize;
use std::net::SocketAddr;

/// A whole edge configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses the edge accepts client traffic on (`[[listener]]`).
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Process-wide cache settings (`[cache]`).
    #[serde(default)]
    pub cache: CacheConfig,
    /// Process-wide protocol limits (`[limits]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Services (tenants), matched by the request's host (`[[service]]`).
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// The admin listener: purge, metrics, health (`[admin]`). Off when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Structured access log (`[access_log]`). Off when absent.
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    /// How new versions roll out through the fleet (`[rollout]`); read by the control plane.
    #[serde(default)]
    pub rollout: crate::rollout::RolloutConfig,
    /// Kill switches (`[[switch]]`), each acting on one service.
    #[serde(default, rename = "switch")]
    pub switches: Vec<crate::drills::SwitchConfig>,
    /// Trusted proxies for forwarding headers (`[forwarding]`).
    #[serde(default)]
    pub forwarding: crate::forwarding::ForwardingConfig,
    /// The origin/fill path: upload and client timeouts, fill memory (`[fetch]`).
    #[serde(default)]
    pub fetch: crate::fetch::FetchConfig,
    /// HTTP/3 on the TLS listeners (`[http3]`).
    #[serde(default)]
    pub http3: crate::http3::Http3Config,
    /// Authoritative DNS steering data (`[dns]`); read by DNS servers.
    #[serde(default)]
    pub dns: Option<crate::dns::DnsConfig>,
    /// A standalone edge's POP, tier secret and shield edges (`[tier]`); see
    /// [`crate::shield`].
    #[serde(default)]
    pub tier: Option<crate::shield::TierConfig>,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Socket address, for example `127.0.0.1:9080`. Keep it off the public interface.
    /// Required for a standalone edge; an edge run by the control plane takes it from its
    /// command line (`firebreak edge --admin`) instead.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Bearer token required on every admin request except `/healthz` (16 to 256 printable
    /// ASCII characters). Standalone edges only: a fleet document travels to every edge, so it
    /// gives `token_sha256` instead.
    #[serde(default)]
    pub token: Option<String>,
    /// Lower-case hex SHA-256 of the bearer token (`firebreak hash-token`): the edge compares
    /// the digest of the token it is given. Give this or `token`, not both.
    #[serde(default)]
    pub token_sha256: Option<String>,
}

/// The access log: one JSON object per request and line.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// File to append to, or `-` for standard output.
    pub path: String,
}

/// One client-facing listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Socket address, for example `127.0.0.1:8080` or `[::1]:8080`.
    pub addr: SocketAddr,
    /// Connections start with a PROXY protocol header (v2, or v1 text) from a load balancer;
    /// its source address is the client's. A connection without a valid header is closed.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Terminate TLS on this listener (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`); the
    /// certificate is the one of the service whose hosts match the client's SNI
    /// (`[service.tls]`).
    #[serde(default)]
    pub tls: bool,
}

/// Process-wide cache settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Memory budget for cached objects, bodies and metadata, in bytes.
    pub max_bytes: u64,
    /// Largest single object stored; larger responses stream through uncached.
    pub max_object_bytes: u64,
    /// How long a coalesced request waits for the in-flight fetch of the same object before it
    /// goes to the origin itself.
    pub coalesce_wait_ms: u64,
    /// Bodies of at least this many bytes are kept in shared-memory pages that plain
    /// (non-TLS) responses send with `sendfile`, without copying the body into the socket;
    /// each such body occupies whole 4 KiB pages. 0 keeps every body in ordinary memory.
    /// At least 4096 when set. Read at start.
    pub zero_copy_min_bytes: u64,
    /// The disk tier behind the memory tier; none by default. Read at start only (a change
    /// takes effect on restart, like `[limits]`).
    pub disk: Option<DiskCacheConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_object_bytes: 64 * 1024 * 1024,
            coalesce_wait_ms: 10_000,
            zero_copy_min_bytes: 16 * 1024,
            disk: None,
        }
    }
}

/// The disk tier (`[cache.disk]`): every object stored in memory is also written to disk in
/// the background; a memory miss is looked up on disk; the index is recovered at start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskCacheConfig {
    /// The cache directory (created if missing; one edge per directory). A relative path is
    /// resolved against the edge's data directory when it runs under a control plane, else
    /// against the working directory.
    pub path: String,
    /// Bytes the tier may hold on disk (bodies, heads and checksums).
    pub max_bytes: u64,
    /// Largest object kept on disk. An object larger than `cache.max_object_bytes` (the
    /// memory tier's bound) and at most this is written to disk as it arrives, never held
    /// whole in memory. Default: an eighth of `max_bytes`, at least `cache.max_object_bytes`.
    #[serde(default)]
    pub max_object_bytes: Option<u64>,
    /// Bytes of objects queued for writing at most; beyond, new objects are not written
    /// (counted). Default 64 MiB.
    #[serde(default = "default_disk_write_queue_bytes")]
    pub write_queue_bytes: u64,
    /// After a write fails (disk full, I/O error), how long the tier stays memory-only before
    /// it tries again. Default 30 s.
    #[serde(default = "default_disk_retry_ms")]
    pub retry_ms: u64,
    /// Files of stored objects kept open for reading once read (as nginx's
    /// `open_file_cache`): a disk hit then costs a read, not an open, a read and a close.
    /// Lowered at start to what the open-files limit (RLIMIT_NOFILE) leaves once
    /// `limits.max_connections` and 1024 other files are set aside (never below a quarter of
    /// the limit); 0 opens the file on every read. Default 16384.
    #[serde(default = "default_disk_open_files")]
    pub open_files: u32,
}

impl DiskCacheConfig {
    /// The largest object the tier keeps (see `max_object_bytes`), given the memory tier's
    /// bound.
    pub fn max_object(&self, memory_max_object: u64) -> u64 {
        self.max_object_bytes
            .unwrap_or(self.max_bytes / 8)
            .max(memory_max_object)
    }
}

fn default_disk_write_queue_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_disk_open_files() -> u32 {
    16_384
}

fn default_disk_retry_ms() -> u64 {
    30_000
}

/// Process-wide protocol limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request header block (HTTP/1.1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Time a client has to send its complete request head.
    pub header_read_timeout_ms: u64,
    /// Most concurrent client connections; further connections wait in the accept queue.
    pub max_connections: usize,
    /// Largest request body forwarded to an origin (413 beyond it).
    pub max_request_body_bytes: u64,
    /// Threads serving client connections over HTTP/1.1 and h2, each with its own runtime
    /// (a connection stays on one); 0, the default, is one per core.
    /// Takes effect on restart.
    pub connection_workers: usize,
    /// Connection deadlines and per-client limits (`[limits.clients]`).
    pub clients: crate::clients::ClientLimitsConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout_ms: 10_000,
            max_connections: 10_000,
            max_request_body_bytes: 100 * 1024 * 1024,
            connection_workers: 0,
            clients: Default::default(),
        }
    }
}

/// One service (tenant): the hosts it answers for, its origins and its cache policy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name: lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// Host names this service answers for (without port, case-insensitive).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Whether this service answers requests whose host matches no service. At most one.
    #[serde(default)]
    pub default: bool,
    /// The origin pool requests are forwarded to.
    pub origin: OriginPoolConfig,
    /// Cache policy overrides.
    #[serde(default)]
    pub cache: ServiceCacheConfig,
    /// Header rules applied to every response sent to clients.
    #[serde(default)]
    pub response_headers: Vec<HeaderRule>,
    /// Injected faults for drills (`[[service.fault]]`); none by default.
    #[serde(default, rename = "fault")]
    pub faults: Vec<crate::drills::FaultConfig>,
    /// Extra request headers to strip or to key on (`[service.forwarding]`).
    #[serde(default)]
    pub forwarding: crate::forwarding::ServiceForwardingConfig,
    /// Per-client rate limit overrides (`[service.clients]`).
    #[serde(default)]
    pub clients: crate::clients::ServiceClientLimits,
    /// The service's certificate and key for TLS listeners (`[service.tls]`).
    #[serde(default)]
    pub tls: Option<crate::tls::ServiceTlsConfig>,
    /// Advertise HTTP/3 (`Alt-Svc: h3=":port"`) on this service's HTTP/1.1 and h2 responses
    /// over TLS, when the edge serves HTTP/3.
    #[serde(default = "crate::http3::advertise_by_default")]
    pub alt_svc: bool,
    /// The service's host name in the DNS zone and its fallback (`[service.dns]`).
    #[serde(default)]
    pub dns: Option<crate::dns::ServiceDnsConfig>,
    /// The service's origin shield: a POP whose edges other POPs ask before the origin
    /// (`[service.shield]`).
    #[serde(default)]
    pub shield: Option<crate::shield::ShieldConfig>,
}

/// An origin pool: servers, failover and connection settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OriginPoolConfig {
    /// Origin servers. Primaries share traffic by weight; backups are used only when every
    /// primary has failed.
    pub servers: Vec<OriginServerConfig>,
    /// Time allowed to open a TCP connection to one origin server.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed from sending the request to receiving the response head.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Time an idle pooled connection to an origin is kept open.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Most idle pooled connections kept per origin server.
    #[serde(default = "default_max_idle_per_server")]
    pub max_idle_per_server: usize,
    /// Host header sent to the origin; by default the client's host is forwarded.
    #[serde(default)]
    pub host_header: Option<String>,
    /// Circuit breaker per server (`breaker = { failures = 5, open_ms = 10000 }`).
    #[serde(default)]
    pub breaker: crate::fetch::BreakerConfig,
    /// Speak TLS to the origin servers (HTTPS), verified against webpki-roots plus `ca`;
    /// never falls back to cleartext. See [`crate::origin_tls`].
    #[serde(default)]
    pub tls: bool,
    /// Name sent as SNI and checked against the origin's certificate. Default: `host_header`
    /// (without its port) when set, else each server's host (which must then be a name).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Extra trusted CA certificates (PEM, inline), added to webpki-roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// Extra trusted CA certificates from a PEM file, relative to the configuration file.
    /// Standalone edges only: files do not travel with a fleet document.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The contents of `ca_file`, read when the configuration was loaded (not a setting: a
    /// changed file gives a changed pool on reload).
    #[serde(skip)]
    pub ca_file_pem: Option<String>,
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_response_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_idle_per_server() -> usize {
    64
}

/// One origin server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OriginServerConfig {
    /// `host:port` of the origin, for example `127.0.0.1:9000` or `origin.example.com:80`.
    pub addr: String,
    /// Share of traffic relative to the other primaries.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Only used when every primary server has failed.
    #[serde(default)]
    pub backup: bool,
}

fn default_weight() -> u32 {
    1
}

/// Per-service cache policy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceCacheConfig {
    /// Whether this service caches at all.
    pub enabled: bool,
    /// Freshness lifetime given to storable responses that carry no freshness information.
    /// Off unless the operator opts in: by default such responses are not cached.
    pub default_ttl_s: Option<u64>,
    /// RFC 9111 §4.2.2 heuristic freshness: a response with `Last-Modified`, no explicit
    /// expiration and a heuristically cacheable status (RFC 9110 §15.1) is fresh for 10% of
    /// the time since `Last-Modified`. On by default.
    pub heuristic_freshness: bool,
    /// Upper bound of a heuristic freshness lifetime, in seconds (1 to one year).
    pub heuristic_freshness_max_s: u64,
    /// When the origin fails (unreachable, timeout, 5xx) serve a stale cached copy instead of
    /// an error, if one exists that is no older than `max_stale_on_failure_s` past expiry.
    pub serve_stale_on_origin_failure: bool,
    /// How long past expiry a stored response remains usable when the origin is failing.
    pub max_stale_on_failure_s: u64,
    /// Remove `CDN-Cache-Control` (RFC 9213) before responses leave the edge. Off by default:
    /// a downstream CDN needs the field. `Surrogate-Control` is always removed.
    pub strip_cdn_cache_control: bool,
    /// Path-prefix rules, first match wins.
    pub rules: Vec<CacheRule>,
    /// Fetch and store objects in slices of this many bytes (`Range: bytes=a-b` to the
    /// origin, one cache entry per slice), as nginx's slice module does: a range request
    /// costs only the slices it covers, a full request is assembled slice by slice. Off
    /// (`None`) by default; between `MIN_SLICE_BYTES` and `MAX_SLICE_BYTES`, and at most
    /// `cache.max_object_bytes`.
    pub slice_bytes: Option<u64>,
}

impl Default for ServiceCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_ttl_s: None,
            heuristic_freshness: true,
            heuristic_freshness_max_s: 86_400,
            serve_stale_on_origin_failure: true,
            max_stale_on_failure_s: 86_400,
            strip_cdn_cache_control: false,
            rules: Vec::new(),
            slice_bytes: None,
        }
    }
}

/// A path cache rule: bypass the cache, or force a freshness lifetime. A rule matches by
/// `path_prefix` or by `path_regex`, exactly one of the two.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// Request paths starting with this prefix match (case-sensitive, must start with `/`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Request paths this regular expression matches (anywhere unless anchored). The syntax is
    /// the `regex` crate's: matching takes time linear in the path, so look-around and
    /// backreferences are refused, and the compiled program's size is bounded.
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Never look up or store matching requests.
    #[serde(default)]
    pub bypass: bool,
    /// Freshness lifetime for matching storable responses, overriding the origin's
    /// max-age/s-maxage/Expires/no-cache (but never `no-store` or `private`).
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// A response header rule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    /// Header name.
    pub name: String,
    /// What to do with it.
    pub op: HeaderOp,
    /// Value for `set` and `add`.
    #[serde(default)]
    pub value: Option<String>,
}

/// Operation of a [`HeaderRule`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HeaderOp {
    /// Replace any existing values.
    Set,
    /// Append a value.
    Add,
    /// Remove every value.
    Remove,
}
