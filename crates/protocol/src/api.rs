//! JSON bodies of the control plane's HTTP API (`/v1/...`). Shared by the server, the edges'
//! agent and the CLI so that all three agree by construction.

use serde::{Deserialize, Serialize};

/// Largest API request body the control plane reads (except a push, see
/// [`MAX_PUSH_BODY_BYTES`]).
pub const MAX_API_BODY_BYTES: usize = 2 * firebreak_config::MAX_CONFIG_BYTES as usize;
/// Largest body of a push (`POST /v1/versions`): the document's bound plus a MaxMind database
/// of [`firebreak_config::MAX_GEOIP_BYTES`] in base64 and a little room. Only a push gets it,
/// and only after the caller authenticated from the headers.
pub const MAX_PUSH_BODY_BYTES: usize = MAX_API_BODY_BYTES
    + crate::binary::base64_len(firebreak_config::MAX_GEOIP_BYTES as usize)
    + 64 * 1024;
/// Longest message, author, edge id, POP or cell name.
pub const MAX_LABEL_LEN: usize = 256;

/// `POST /v1/versions`: submit a configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The file's name, used in error messages.
    pub file: String,
    /// The configuration text.
    pub document: String,
    /// Why (shown in `config versions`).
    pub message: String,
    /// Who; defaults to the token's name.
    #[serde(default)]
    pub author: Option<String>,
    /// Also make it the target version at once.
    #[serde(default)]
    pub activate: bool,
    /// The MaxMind database the document's `dns.geoip_file` names (base64), read by the
    /// client next to the file: required when the document names one, refused otherwise. At
    /// most [`firebreak_config::MAX_GEOIP_BYTES`]; a push carrying it may be up to
    /// [`MAX_PUSH_BODY_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip: Option<crate::binary::Binary>,
    /// Store it even though the DNS change guard refuses it (it removes more than
    /// `dns.max_removed_share` of the POPs or answer addresses of the latest version, or all
    /// of its DNS data); the audit log records the push as forced, with the reason overridden.
    /// Left out of the JSON when false, so a request is written as before (and an older
    /// control plane, which does not know the field, refuses only a forced push).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// A stored version's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Version number.
    pub version: u64,
    /// The version it was made from.
    pub parent: Option<u64>,
    /// SHA-256 of the sealed bundle.
    pub sha256: String,
    /// Size of the sealed bundle in bytes.
    pub size: u64,
    /// Who pushed it.
    pub author: String,
    /// Why.
    pub message: String,
    /// When, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// SHA-256 of the fleet document.
    pub fleet_sha256: String,
    /// Each service and the SHA-256 of its document.
    pub services: Vec<ServiceHash>,
    /// SHA-256 of the MaxMind database the version carries (`dns.geoip_file`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip_sha256: Option<String>,
}

/// A service's name and document hash within a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHash {
    /// Service name.
    pub name: String,
    /// SHA-256 of its document.
    pub sha256: String,
}

/// `GET /v1/versions/{n}`: metadata and the assembled configuration text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionDetail {
    /// Metadata.
    #[serde(flatten)]
    pub info: VersionInfo,
    /// The configuration text as edges assemble it.
    pub document: String,
}

/// `PUT /v1/target`: choose the version the fleet runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTargetRequest {
    /// The version.
    pub version: u64,
    /// Must be true to choose a version older than the current target.
    #[serde(default)]
    pub rollback: bool,
}

/// One located configuration error (file, line, column, field, message).
pub use firebreak_config::ConfigError as FieldError;

/// Every error answer of the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// One-line summary.
    pub error: String,
    /// Located configuration errors, for a refused push.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// A service an edge kept at an older document because the new one did not load there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFailure {
    /// Service name.
    pub service: String,
    /// Why the new document was refused.
    pub error: String,
    /// The version whose document the edge still runs for it, if it had one.
    pub kept_version: Option<u64>,
}

/// What an edge tells the control plane after trying to apply a target, and on start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeReport {
    /// POP (site) name.
    pub pop: String,
    /// Cell (rollout group) name.
    pub cell: String,
    /// Base URL of the edge's admin listener (purge fan-out goes there).
    pub admin_url: Option<String>,
    /// The edge's client listeners (`http://addr`), for operators and drills.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Version it serves, if any.
    pub applied_version: Option<u64>,
    /// Target sequence number it last acted on.
    pub applied_seq: u64,
    /// Why the last target could not be applied, if it could not.
    pub error: Option<String>,
    /// Services kept at an older document.
    #[serde(default)]
    pub failed_services: Vec<ServiceFailure>,
    /// What became of the last version the edge was asked to stage.
    #[serde(default)]
    pub staged: Option<StageReport>,
    /// Versions this edge refuses to run again: it crash-looped on them and booted the
    /// previous version instead (safe mode).
    #[serde(default)]
    pub bad_versions: Vec<u64>,
    /// Why the edge holds no fresh target (its control plane unreachable, or answering without
    /// a fresh signature), while that lasts; it keeps serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
    /// What the member is: an HTTP edge (the default, and what older edges are) or an
    /// authoritative DNS server. DNS servers take versions through rollouts like edges, in
    /// their own cell, but do not count as a POP's edges.
    #[serde(default, skip_serializing_if = "MemberRole::is_edge")]
    pub role: MemberRole,
}

/// What kind of fleet member sends a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// An HTTP edge (caching reverse proxy).
    #[default]
    Edge,
    /// An authoritative DNS server (`firebreak dns --control`).
    Dns,
}

impl MemberRole {
    /// Whether this is an HTTP edge.
    pub fn is_edge(&self) -> bool {
        *self == MemberRole::Edge
    }

    /// `edge` or `dns`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MemberRole::Edge => "edge",
            MemberRole::Dns => "dns",
        }
    }
}

/// The outcome of staging a version (download, verify, build; not served).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageReport {
    /// The version.
    pub version: u64,
    /// `None` when staged; else why it cannot be.
    pub error: Option<String>,
}

/// The control plane's view of one edge (`GET /v1/fleet`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStatus {
    /// Edge id.
    pub id: String,
    /// Its last report.
    #[serde(flatten)]
    pub report: EdgeReport,
    /// When it last polled or reported, in ms since the Unix epoch.
    pub last_seen_ms: u64,
    /// The earliest certificate expiry of what it serves, from its latest health report (ms
    /// since the Unix epoch); `None` when unknown or without certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expiry_ms: Option<u64>,
}

/// `POST /v1/purge`: exactly one of `url`, `key` (with `service`) or `all` (with `service`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Full URL of the object, `http://host/path?query`.
    #[serde(default)]
    pub url: Option<String>,
    /// Surrogate key.
    #[serde(default)]
    pub key: Option<String>,
    /// Everything of the service.
    #[serde(default)]
    pub all: bool,
    /// The service, for `key` and `all`.
    #[serde(default)]
    pub service: Option<String>,
    /// Mark stale instead of removing.
    #[serde(default)]
    pub soft: bool,
    /// How long to wait for acknowledgements (default 2000 ms, at most 30000).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// The answer to a purge: who acknowledged, who did not and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeOutcome {
    /// Edges asked.
    pub edges: usize,
    /// Edges that acknowledged, by id.
    pub acknowledged: Vec<String>,
    /// Edges that did not acknowledge in time or failed.
    pub stragglers: Vec<Straggler>,
    /// Edges not asked because they have not been seen for over five minutes.
    pub skipped: Vec<String>,
    /// Objects purged, summed over the edges that answered.
    pub purged: u64,
    /// Time until the last acknowledgement or the deadline.
    pub elapsed_ms: u64,
}

/// An edge that did not acknowledge a purge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Straggler {
    /// Edge id.
    pub id: String,
    /// Why.
    pub error: String,
}

/// `POST /v1/rollouts`: roll a version out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The version.
    pub version: u64,
    /// The plan (default: `default`).
    #[serde(default)]
    pub plan: Option<String>,
    /// Why.
    #[serde(default)]
    pub message: String,
}

/// `POST /v1/rollout/{pause,resume,abort}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why.
    #[serde(default)]
    pub message: String,
}

/// `POST /v1/rollback`: set the whole fleet to a version it already ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version (default: the one the fleet ran before its current one).
    #[serde(default)]
    pub version: Option<u64>,
    /// Why.
    #[serde(default)]
    pub message: String,
}

/// `POST /v1/switches/{name}`: flip a kill switch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// The new state.
    pub on: bool,
    /// Why.
    #[serde(default)]
    pub message: String,
}

/// An edge joining the fleet (`POST /v1/edges/{id}/join`), with the join token (first join)
/// or its own credential (re-join: declares a new admin address, keeps the credential).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// POP (site) name.
    pub pop: String,
    /// Cell (rollout group) name.
    pub cell: String,
    /// Base URL of the edge's admin listener (`http://IP:port`), where the control plane sends
    /// purges; it must be inside the control plane's allowed edge networks. `None` until the
    /// edge has started its admin listener (it re-joins with it then).
    #[serde(default)]
    pub admin_url: Option<String>,
    /// The edge's client listeners (`http://addr`).
    #[serde(default)]
    pub listen: Vec<String>,
}

/// The control plane's answer to a join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// The edge id.
    pub id: String,
    /// The edge's new credential (a bearer token for every other edge route), on a first
    /// join only; `None` on a re-join (the credential presented stays valid). The control
    /// plane keeps only its SHA-256.
    #[serde(default)]
    pub credential: Option<String>,
    /// The admin URL the control plane will call back (fixed until the next join).
    #[serde(default)]
    pub admin_url: Option<String>,
}

/// Most POPs `GET /v1/pops` lists (as many as the DNS data may name).
pub const MAX_POP_HEALTH_POPS: usize = firebreak_config::MAX_DNS_POPS;
/// Most client listeners `GET /v1/pops` lists for one POP (its live serving edges'; the
/// shield's edges for tiered caching).
pub const MAX_POP_LISTENERS: usize = 64;
/// Longest listener URL listed (`http://[v6]:port` fits well within).
pub const MAX_LISTENER_URL_LEN: usize = 64;
/// Largest `GET /v1/pops` answer a client reads: [`MAX_POP_HEALTH_POPS`] entries with names
/// of at most [`MAX_LABEL_LEN`] bytes and [`MAX_POP_LISTENERS`] listeners each, with room to
/// spare.
pub const MAX_POP_HEALTH_BYTES: usize = MAX_POP_HEALTH_POPS
    * (MAX_LABEL_LEN + 256 + MAX_POP_LISTENERS * (MAX_LISTENER_URL_LEN + 3))
    + 4096;

/// `GET /v1/edges/{id}/tier`: the fleet's tier secret (the key of tier credentials, see
/// [`crate::tier`]), to an HTTP edge's own credential only; never to a DNS member or an
/// operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSecretAnswer {
    /// The secret, 64 hex digits.
    pub secret: String,
}

/// Largest `GET /v1/edges/{id}/tier` answer a client reads.
pub const MAX_TIER_SECRET_ANSWER_BYTES: usize = 1024;

/// `GET /v1/pops`: the health of each POP as the control plane sees it from its edges'
/// reports, for the DNS servers (which also check the POPs themselves). Readable with any
/// fleet member's own credential and by operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopHealthList {
    /// When the control plane computed it (ms since the Unix epoch).
    pub at_ms: u64,
    /// How long an edge may go unseen and still count as live, in ms (the fleet's
    /// `[rollout] edge_gone_s`).
    #[serde(default)]
    pub live_window_ms: u64,
    /// Every POP with at least one edge in the registry, by name; at most
    /// [`MAX_POP_HEALTH_POPS`]. A POP not listed has no edge the control plane knows of.
    pub pops: Vec<PopHealth>,
    /// True when POPs were left out to keep within [`MAX_POP_HEALTH_POPS`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One POP's health (`GET /v1/pops`). Only HTTP edges count (members reporting `role =
/// "edge"`), never DNS servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopHealth {
    /// The POP's name, as its edges report it (`firebreak edge --pop NAME`).
    pub pop: String,
    /// Edges of the POP in the registry.
    pub edges: u32,
    /// Edges seen (poll, report or health report) within the live window.
    pub live: u32,
    /// Live edges serving a version.
    #[serde(default)]
    pub healthy_edges: u32,
    /// Live edges reporting that they hold no fresh target (they keep serving their
    /// last-known-good version, so they still count as healthy).
    #[serde(default)]
    pub stale: u32,
    /// At least one edge of the POP is healthy (live and serving a version).
    pub healthy: bool,
    /// The plain-HTTP client listeners (`http://addr`) of the POP's healthy edges, sorted, at
    /// most [`MAX_POP_LISTENERS`]: where other POPs' edges send a shielded service's misses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
}
