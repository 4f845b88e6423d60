//! Hard limits on configuration sizes and counts. Each is a bound that keeps a bad or hostile
//! file from exhausting memory or CPU on every edge that loads it.

/// Largest configuration file accepted, in bytes. Real configurations are tens of KiB; a
/// megabyte leaves room for thousands of services while bounding parse time and memory.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Largest MaxMind (GeoIP) database (`dns.geoip_file`), in bytes: 32 MiB. A country database
/// (GeoLite2-Country is about 9 MiB) fits with room to grow, and so does a city database cut
/// down to the networks a CDN steers; a full GeoLite2-City (about 60 MiB) does not. The
/// database travels inside every signed version (base64, so a third larger) to every member,
/// and the DNS server reads a standalone `geoip_file` with the same bound: one bound for both.
pub const MAX_GEOIP_BYTES: u64 = 32 * 1024 * 1024;
/// Most listeners one edge process binds.
pub const MAX_LISTENERS: usize = 16;
/// Most services (tenants) in one file.
pub const MAX_SERVICES: usize = 1_000;
/// Most host names one service answers for.
pub const MAX_HOSTS_PER_SERVICE: usize = 100;
/// Longest host name (RFC 1035 limit on a full domain name).
pub const MAX_HOST_LEN: usize = 253;
/// Most origin servers in one pool.
pub const MAX_ORIGINS_PER_POOL: usize = 64;
/// Largest origin weight; keeps weighted selection arithmetic small.
pub const MAX_ORIGIN_WEIGHT: u32 = 1_000;
/// Most cache rules per service; rules are matched linearly on every miss.
pub const MAX_CACHE_RULES: usize = 256;
/// Most response header rules per service; applied on every response.
pub const MAX_HEADER_RULES: usize = 64;
/// Longest path prefix in a cache rule.
pub const MAX_PATH_PREFIX_LEN: usize = 1024;
/// Longest service name; it appears in logs, metrics labels and cache keys.
pub const MAX_SERVICE_NAME_LEN: usize = 64;
/// Longest configurable timeout: ten minutes. Longer waits are indistinguishable from hangs.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Longest TTL or stale window an operator can set: one year.
pub const MAX_TTL_S: u64 = 365 * 24 * 3600;
/// Largest request header block accepted from clients (bounds for `limits.max_header_bytes`).
pub const MAX_HEADER_BYTES_LIMIT: usize = 1024 * 1024;
/// Smallest allowed request header block limit: below this ordinary browsers fail.
pub const MIN_HEADER_BYTES_LIMIT: usize = 4 * 1024;
/// Smallest cache size: one MiB (zero disables caching per service instead).
pub const MIN_CACHE_BYTES: u64 = 1024 * 1024;
/// Largest cache size in memory: 1 TiB (guards against unit mistakes).
pub const MAX_CACHE_BYTES: u64 = 1 << 40;
/// Smallest disk tier.
pub const MIN_DISK_CACHE_BYTES: u64 = 1 << 20;
/// Largest disk tier (64 TiB).
pub const MAX_DISK_CACHE_BYTES: u64 = 1 << 46;
/// Most files of the disk tier kept open for reading (`cache.disk.open_files`).
pub const MAX_DISK_OPEN_FILES: u32 = 1 << 20;
/// Longest disk tier path.
pub const MAX_DISK_PATH_LEN: usize = 4096;
/// Most concurrent client connections per edge process (bounds for `limits.max_connections`).
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// `limits.clients.send_queue_bytes` by default: 128 KiB (measured: 4 MiB hits over
/// loopback 1.25x the throughput and half the p99 of no bound; 16 KiB and 256 KiB unchanged).
pub const DEFAULT_SEND_QUEUE_BYTES: u32 = 128 * 1024;
/// Least non-zero `limits.clients.send_queue_bytes`: below a TLS record, every record would
/// wait for a wakeup.
pub const MIN_SEND_QUEUE_BYTES: u32 = 16 * 1024;
/// Most `limits.clients.send_queue_bytes`.
pub const MAX_SEND_QUEUE_BYTES: u32 = 64 * 1024 * 1024;
/// Most `limits.connection_workers` (threads serving client connections).
pub const MAX_CONNECTION_WORKERS: usize = 1024;
/// Largest request body limit an operator can set: 64 GiB.
pub const MAX_REQUEST_BODY_LIMIT: u64 = 64 << 30;
/// Shortest admin token: 16 characters keeps guessing out of reach.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// Longest admin token.
pub const MAX_ADMIN_TOKEN_LEN: usize = 256;
/// Longest `path_regex` pattern.
pub const MAX_REGEX_LEN: usize = 1024;
/// Largest compiled program (and lazy-DFA cache) of one `path_regex`, in bytes. Bounds the
/// memory a rule costs on every edge; `\w{1000}{1000}`-style patterns are refused.
pub const MAX_REGEX_PROGRAM_BYTES: usize = 256 * 1024;
/// Most `path_regex` cache rules in the whole fleet (every service together). Each costs
/// compile time on every push and on every edge at every version; 4,096 took seconds to push
/// and to apply.
pub const MAX_FLEET_REGEX_RULES: usize = 512;
/// Largest compiled size of one service's `path_regex` rules taken together, in bytes.
pub const MAX_SERVICE_REGEX_BYTES: usize = 1024 * 1024;
/// Largest compiled size of the whole fleet's `path_regex` rules, in bytes.
pub const MAX_FLEET_REGEX_BYTES: usize = 8 * 1024 * 1024;
/// Deepest nesting of groups and repetitions in a `path_regex`.
pub const MAX_REGEX_NESTING: u32 = 32;
/// Most injected faults (`[[service.fault]]`) per service.
pub const MAX_FAULTS_PER_SERVICE: usize = 16;
/// Longest injected delay: one minute.
pub const MAX_FAULT_DELAY_MS: u64 = 60_000;
/// Most kill switches (`[[switch]]`) in one file.
pub const MAX_SWITCHES: usize = 64;
/// Longest kill switch name; it appears in a response header and in logs.
pub const MAX_SWITCH_NAME_LEN: usize = 64;
/// Most trusted proxy blocks (`forwarding.trusted_proxies`); checked linearly per miss.
pub const MAX_TRUSTED_PROXIES: usize = 256;
/// Most extra request headers a service strips (`service.forwarding.strip_request_headers`).
pub const MAX_STRIP_HEADERS: usize = 32;
/// Most request headers in a service's cache key (`service.forwarding.cache_key_headers`).
pub const MAX_CACHE_KEY_HEADERS: usize = 8;
/// Most requests in flight per edge (bounds for `limits.clients.max_requests_in_flight`).
pub const MAX_REQUESTS_IN_FLIGHT_LIMIT: usize = 10_000_000;
/// Highest per-address request rate or burst an operator can set.
pub const MAX_RATE_PER_SECOND: u32 = 1_000_000;
/// Fewest client addresses whose rate state is tracked per service.
pub const MIN_TRACKED_ADDRESSES: usize = 64;
/// Most client addresses whose rate state is tracked per service (about 40 bytes each).
pub const MAX_TRACKED_ADDRESSES: usize = 10_000_000;
/// Longest delay before a rate-limited request is answered.
pub const MAX_RATE_LIMITED_DELAY_MS: u64 = 10_000;
/// Most POPs (`[[dns.pop]]`) in the DNS data; each is a health-check task on every DNS server.
pub const MAX_DNS_POPS: usize = 1_000;
/// Most answer addresses per POP: a DNS answer must stay well within 512 bytes of UDP.
pub const MAX_DNS_ANSWERS_PER_POP: usize = 16;
/// Most health-check URLs per POP (each is fetched every check interval by every DNS server).
pub const MAX_DNS_CHECKS_PER_POP: usize = 8;
/// Most regions (`[[dns.region]]`).
pub const MAX_DNS_REGIONS: usize = 1_000;
/// Most client prefixes over all regions together (the compiled table is about 40 bytes each).
pub const MAX_DNS_PREFIXES: usize = 100_000;
/// Most tiers in one region's preference list.
pub const MAX_DNS_TIERS: usize = 64;
/// Most name servers (`[[dns.ns]]`) of the zone: they all go into every referral-sized answer.
pub const MAX_DNS_NAME_SERVERS: usize = 16;
/// Most addresses (glue) of one name server.
pub const MAX_DNS_NS_ADDRS: usize = 8;
/// Most fallback addresses of one service (`[service.dns] fallback_addrs`).
pub const MAX_DNS_FALLBACK_ADDRS: usize = 16;
/// Most country codes one region lists (ISO 3166 has fewer than 250).
pub const MAX_DNS_COUNTRIES_PER_REGION: usize = 300;
/// Longest health-check URL.
pub const MAX_DNS_CHECK_URL_LEN: usize = 2048;
/// Longest TTL of steered answers and of negative answers: one day.
pub const MAX_DNS_TTL_S: u32 = 86_400;
/// Longest TTL of the SOA, NS and glue records: seven days.
pub const MAX_DNS_ZONE_TTL_S: u32 = 7 * 86_400;
/// Shortest health-check interval or timeout.
pub const MIN_DNS_CHECK_MS: u64 = 100;
/// Most consecutive rounds `unhealthy_after` / `healthy_after` can ask for.
pub const MAX_DNS_CHECK_THRESHOLD: u32 = 100;
/// Largest POP weight; keeps weighted selection arithmetic small.
pub const MAX_DNS_POP_WEIGHT: u32 = 1_000;
/// Smallest slice (`service.cache.slice_bytes`): 64 KiB. Below it the per-slice cost (one
/// origin request, one cache entry with its head) outweighs what slicing saves.
pub const MIN_SLICE_BYTES: u64 = 64 * 1024;
/// Largest slice: 64 MiB. A slice is fetched and stored whole, so this bounds what one
/// range request of one byte can cost (the default `cache.max_object_bytes`).
pub const MAX_SLICE_BYTES: u64 = 64 * 1024 * 1024;
