//! The control plane's operations, independent of HTTP: push (validate, split, sign, store),
//! versions and diffs, the target, the fleet registry and purge.

use crate::fanout::Fanout;
use crate::keys::ControlKeys;
use crate::rollout::health::HealthBook;
use crate::store::{FleetState, IdempotencyRecord, Inserted, Store, StoreError, StoredTarget};
use bytes::Bytes;
use firebreak_config::{parse_managed_str, ConfigRejected};
use firebreak_protocol::api::{
    EdgeReport, EdgeStatus, PurgeOutcome, PurgeRequest, PushRequest, VersionDetail, VersionInfo,
    MAX_LABEL_LEN,
};
use firebreak_protocol::binary::Binary;
use firebreak_protocol::bundle::{carry_geoip, Bundle};
use firebreak_protocol::document::{split, Documents};
use firebreak_protocol::keys::PublicKey;
use firebreak_protocol::now_ms;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How many times a push retries when another replica took the version number.
const PUSH_ATTEMPTS: usize = 8;
/// Edges not seen for this long are not asked to purge (they restart with an empty cache).
pub const EDGE_GONE_MS: u64 = 5 * 60 * 1000;
/// Default and largest purge deadline.
const PURGE_DEADLINE_MS: (u64, u64) = (2_000, 30_000);
/// Most versions listed at once.
pub const MAX_LIST: usize = 1_000;
/// Most edges the registry holds.
const MAX_EDGES: usize = 100_000;

/// What a push stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushOutcome {
    /// The version stored (now, or by the first attempt under the same idempotency key).
    #[serde(flatten)]
    pub info: VersionInfo,
    /// True when this answer repeats an earlier push with the same idempotency key: nothing
    /// new was stored.
    pub already_stored: bool,
    /// With `activate`: why the rollout did not start (the version is stored regardless).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_error: Option<String>,
    /// What the push accepted but an operator should know (a certificate not valid yet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// A forced push: why the DNS change guard would have refused it (also in the audit log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced_past: Option<String>,
}

/// How many versions back the DNS change guard looks for one it can read.
const GUARD_LOOKBACK: usize = 16;

/// Which version a push's DNS data is judged against ([`crate::dns_guard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DnsBaseline {
    /// The latest stored version: every push through the API.
    Latest,
    /// Not judged: a kill switch's version keeps the running version's `[dns]` unchanged.
    Unchanged,
}

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Idempotency keys: 1 to 128 of letters, digits, `.`, `_`, `-`, `:`.
fn idempotency_key(key: &str) -> Result<(), PlaneError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return Err(PlaneError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} letters, digits, '.', '_', '-' or ':'"
        )));
    }
    Ok(())
}

/// Why an operation was refused. Nothing was stored when an operation fails.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// The configuration did not validate.
    #[error("configuration refused")]
    Invalid(ConfigRejected),
    /// The request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// No such version or edge.
    #[error("{0}")]
    NotFound(String),
    /// It conflicts with the current state (going back without `rollback`).
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed (should not happen).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Timing of the control plane's own loops (shorter in tests).
#[derive(Debug, Clone)]
pub struct PlaneOptions {
    /// How often the rollout driver looks at the running rollout.
    pub tick: Duration,
    /// How long a target signature stays fresh (`--target-freshness-s`).
    pub target_freshness: Duration,
    /// The edge registry's settings (allowed networks, bound, pruning).
    pub edges: crate::registry::EdgeSettings,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(250),
            target_freshness: crate::freshness::DEFAULT_TARGET_FRESHNESS,
            edges: crate::registry::EdgeSettings::default(),
        }
    }
}

/// The control plane.
pub struct Plane {
    pub(crate) store: Store,
    /// The signing keys (signs with the current one; verifies with every key in the set).
    pub(crate) key: ControlKeys,
    /// The fleet state as last read or written (targets, rollout); long-polls watch it.
    pub(crate) state: watch::Sender<FleetState>,
    /// When each edge last polled this replica (ms since the epoch).
    polled: Mutex<HashMap<String, u64>>,
    fanout: Fanout,
    /// Edges' health reports, for the gates.
    pub(crate) health: HealthBook,
    /// The gate's latest judgement of each rollout (not stored: it changes every look).
    pub(crate) gate_view: Mutex<HashMap<u64, crate::rollout::gate::GateReport>>,
    /// The gate's looks at the newest rollout, for the dashboard's plots.
    pub(crate) gate_history: crate::rollout::history::GateHistory,
    /// The last hour of traffic from the edges' health reports, for the dashboard.
    pub(crate) traffic: crate::rollout::history::TrafficBook,
    /// When the gate last looked at each rollout's wave.
    pub(crate) looked: Mutex<HashMap<(u64, usize), std::time::Instant>>,
    /// When this replica started (ms since the epoch): the rollout driver counts an edge as
    /// seen no earlier than this, since it cannot have heard from it before.
    pub(crate) started_ms: u64,
    /// Fresh signatures of the stored targets, for long-poll answers.
    pub(crate) freshener: crate::freshness::Freshener,
    /// The edge registry's settings.
    pub(crate) edges: crate::registry::EdgeSettings,
    /// The live window of `GET /v1/pops` and the version it was read from (see
    /// [`crate::pops`]); versions never change, so it is read once per version.
    pub(crate) live_window: Mutex<Option<(u64, u64)>>,
    /// The public status page's data as last read, and when (see [`crate::status`]): anonymous
    /// readers cannot make the registry be read more than once per
    /// [`crate::status::SNAPSHOT_TTL`].
    pub(crate) status_cache: crate::status::SnapshotCache,
    /// What the status page's automatic incidents keep between looks (the running
    /// version's configuration, the DNS servers' last reports).
    pub(crate) status_inputs: tokio::sync::Mutex<crate::status::StatusInputs>,
    /// Edge registrations recently read (see [`crate::registry`]).
    pub(crate) identities:
        Mutex<HashMap<String, (crate::registry::EdgeIdentity, std::time::Instant)>>,
}

impl Plane {
    /// Starts a control plane over `store`, signing with `key` (one key, or the key ring of
    /// [`ControlKeys::open`]). Reads the current target and, for etcd, follows changes other
    /// replicas make.
    pub async fn new(store: Store, key: impl Into<ControlKeys>) -> Result<Arc<Self>, StoreError> {
        Self::with_options(store, key, PlaneOptions::default()).await
    }

    /// [`Plane::new`] with explicit timings. Also starts the rollout driver, which resumes a
    /// rollout stored in the middle of a wave.
    pub async fn with_options(
        store: Store,
        key: impl Into<ControlKeys>,
        options: PlaneOptions,
    ) -> Result<Arc<Self>, StoreError> {
        let key = key.into();
        let current = store.state().await?.unwrap_or_default();
        let (tx, _) = watch::channel(current);
        let plane = Arc::new(Self {
            store,
            key,
            state: tx,
            polled: Mutex::new(HashMap::new()),
            fanout: Fanout::default(),
            health: HealthBook::default(),
            gate_view: Mutex::new(HashMap::new()),
            gate_history: Default::default(),
            traffic: Default::default(),
            looked: Mutex::new(HashMap::new()),
            started_ms: now_ms(),
            freshener: crate::freshness::Freshener::new(options.target_freshness),
            edges: options.edges.clone(),
            identities: Mutex::new(HashMap::new()),
            live_window: Mutex::new(None),
            status_cache: Default::default(),
            status_inputs: Default::default(),
        });
        let weak = Arc::downgrade(&plane);
        let store = plane.store.clone();
        tokio::spawn(async move {
            store
                .watch_state(move |t| {
                    if let Some(plane) = weak.upgrade() {
                        plane.observe_state(t);
                    }
                })
                .await;
        });
        crate::rollout::driver::spawn(Arc::downgrade(&plane), options.tick);
        // Automatic incidents: a few looks a second at most (the registry is read each time).
        crate::status::auto::spawn(
            Arc::downgrade(&plane),
            options.tick.max(std::time::Duration::from_millis(500)),
        );
        crate::registry::spawn_pruner(Arc::downgrade(&plane), options.edges.prune_after);
        Ok(plane)
    }

    /// The key edges must trust (the one signing now).
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    pub(crate) fn observe_state(&self, t: FleetState) {
        self.state.send_if_modified(|cur| {
            if cur.seq < t.seq {
                *cur = t;
                true
            } else {
                false
            }
        });
    }

    /// The fleet state as this replica last saw it.
    pub fn fleet_state(&self) -> FleetState {
        self.state.borrow().clone()
    }

    /// Validates, splits, signs and stores a configuration as the next version.
    pub async fn push(&self, req: PushRequest, author: &str) -> Result<VersionInfo, PlaneError> {
        Ok(self.push_keyed(req, author, None).await?.info)
    }

    /// [`Plane::push`] with an idempotency key: the key is stored with the version in the
    /// same transaction, so a retry of the same request (same key, same body) answers the
    /// version the first attempt stored, whatever became of its answer, and never stores a
    /// second; the same key with a different body is refused. Keys are remembered for
    /// [`crate::store::IDEMPOTENCY_TTL_MS`] (at most [`crate::store::MAX_IDEMPOTENCY_KEYS`]).
    ///
    /// A version whose `[dns]` data removes too much of the latest stored version's is refused
    /// (409) unless `req.force` ([`crate::dns_guard`]); a forced push that overrode the guard
    /// is audited (`push-forced`) with the reason.
    pub async fn push_keyed(
        &self,
        req: PushRequest,
        author: &str,
        key: Option<&str>,
    ) -> Result<PushOutcome, PlaneError> {
        self.push_judged(req, author, key, DnsBaseline::Latest)
            .await
    }

    /// [`Plane::push_keyed`] with the DNS data judged against `baseline`.
    pub(crate) async fn push_judged(
        &self,
        req: PushRequest,
        author: &str,
        key: Option<&str>,
        baseline: DnsBaseline,
    ) -> Result<PushOutcome, PlaneError> {
        label("file", &req.file)?;
        label("message", &req.message)?;
        // The authenticated operator is the author; a name the client gives (`$USER`) only
        // follows it in parentheses, so a version's author cannot be made up.
        let author = match req.author.as_deref().map(str::trim) {
            Some(given) if !given.is_empty() && given != author => format!("{author} ({given})"),
            _ => author.to_owned(),
        };
        label("author", &author)?;
        let keyed = match key {
            Some(k) => {
                idempotency_key(k)?;
                let body =
                    serde_json::to_vec(&req).map_err(|e| PlaneError::Internal(e.to_string()))?;
                let sha = firebreak_protocol::sha256_hex(&body);
                if let Some(r) = self.store.idempotency(k).await? {
                    return self.replay(k, r, &sha).await;
                }
                Some((k, sha))
            }
            None => None,
        };
        let file = if req.file.is_empty() {
            "config.toml"
        } else {
            req.file.as_str()
        };
        let Prepared {
            docs,
            moved,
            warnings,
            dns: new_dns,
        } = prepare(file, &req.document, req.geoip.clone()).await?;
        if req.activate {
            if let Some(r) = self.fleet_state().running() {
                return Err(PlaneError::Conflict(format!(
                    "rollout {} of version {} is running; push without activate and deploy later (nothing was stored)",
                    r.id, r.version
                )));
            }
        }
        // Judged before anything is stored; judged again below if another push takes the
        // latest version meanwhile.
        let mut judged = match baseline {
            DnsBaseline::Latest => {
                let parent = self.store.latest_version().await?;
                Some((parent, self.dns_guard(parent, &new_dns, req.force).await?))
            }
            DnsBaseline::Unchanged => None,
        };
        // The keys moved out are stored before any version names them.
        self.store_secrets(&moved).await?;
        for _ in 0..PUSH_ATTEMPTS {
            let parent = self.store.latest_version().await?;
            let forced_past = match &judged {
                None => None,
                Some((p, why)) if *p == parent => why.clone(),
                Some(_) => {
                    let why = self.dns_guard(parent, &new_dns, req.force).await?;
                    judged = Some((parent, why.clone()));
                    why
                }
            };
            let version = parent.map_or(1, |p| p + 1);
            let bundle = Bundle {
                version,
                parent,
                created_at_ms: now_ms(),
                author: author.clone(),
                message: req.message.clone(),
                fleet: docs.fleet.clone(),
                services: docs.services.clone(),
                geoip: req.geoip.clone(),
            };
            let key = self.key.clone();
            let (sealed, info) = blocking(move || {
                let sealed = bundle
                    .seal(&key)
                    .map_err(|e| PlaneError::BadRequest(e.to_string()))?;
                let info = bundle.describe(&sealed);
                Ok((sealed, info))
            })
            .await?;
            let stored = match &keyed {
                None => self.store.insert_version(&info, &sealed).await?,
                Some((k, sha)) => {
                    let record = IdempotencyRecord {
                        version,
                        request_sha256: sha.clone(),
                        at_ms: now_ms(),
                    };
                    match self
                        .store
                        .insert_version_keyed(&info, &sealed, k, &record)
                        .await?
                    {
                        Inserted::Stored => true,
                        Inserted::NumberTaken => false,
                        Inserted::KeyTaken(r) => return self.replay(k, r, sha).await,
                    }
                }
            };
            if stored {
                tracing::info!(version, author = %author, "configuration version stored");
                if let Some(why) = &forced_past {
                    self.audit(crate::rollout::state::AuditEntry {
                        at_ms: now_ms(),
                        who: author.clone(),
                        action: "push-forced".into(),
                        version: Some(version),
                        rollout: None,
                        message: format!(
                            "version {version} stored with force past the DNS change guard, which refused it: {why}; {}",
                            req.message
                        ),
                        gate: None,
                    })
                    .await;
                }
                // The version is stored: whatever happens to the activation, the answer says
                // so (an error status here would invite a retry that stores a second one).
                let activation_error = if req.activate {
                    self.deploy(version, None, &author, &req.message)
                        .await
                        .err()
                        .map(|e| e.to_string())
                } else {
                    None
                };
                return Ok(PushOutcome {
                    info,
                    already_stored: false,
                    activation_error,
                    warnings,
                    forced_past,
                });
            }
        }
        Err(PlaneError::Conflict(
            "could not take a version number: too many concurrent pushes (nothing was stored)"
                .into(),
        ))
    }

    /// The answer to a push whose key is already stored.
    async fn replay(
        &self,
        key: &str,
        record: IdempotencyRecord,
        sha: &str,
    ) -> Result<PushOutcome, PlaneError> {
        if record.request_sha256 != sha {
            return Err(PlaneError::Conflict(format!(
                "idempotency key `{key}` was used for a different request (version {}); nothing was stored",
                record.version
            )));
        }
        let info = self.store.version(record.version).await?.ok_or_else(|| {
            PlaneError::NotFound(format!(
                "idempotency key `{key}` names version {}, which is gone",
                record.version
            ))
        })?;
        Ok(PushOutcome {
            info,
            already_stored: true,
            activation_error: None,
            warnings: Vec::new(),
            forced_past: None,
        })
    }

    /// The DNS change guard ([`crate::dns_guard`]) for a push of `new` after version `parent`:
    /// `Ok(None)` when it passes, `Ok(Some(why))` when it refuses but the push is forced, else
    /// the refusal (409). It compares with the newest version whose document can be read,
    /// looking back at most [`GUARD_LOOKBACK`] versions past unreadable ones (a version
    /// corrupted in the store must not block the push that replaces it); none readable is a
    /// refusal (the guard cannot tell what the push removes), which force overrides.
    async fn dns_guard(
        &self,
        parent: Option<u64>,
        new: &Option<firebreak_config::dns::DnsConfig>,
        force: bool,
    ) -> Result<Option<String>, PlaneError> {
        let Some(p) = parent else {
            return Ok(None);
        };
        let mut unreadable = Vec::new();
        let mut verdict = None;
        for v in (1..=p).rev().take(GUARD_LOOKBACK) {
            let read = match self.bundle(v).await {
                Err(e) => Err(e.to_string()),
                Ok(bytes) => {
                    blocking(move || {
                        // A comparison, not a trust decision: a version signed by a key since
                        // revoked is still compared with.
                        Ok(Bundle::open_unverified(&bytes)
                            .map_err(|e| e.to_string())
                            .and_then(|b| crate::dns_guard::dns_of_fleet(&b.fleet)))
                    })
                    .await?
                }
            };
            match read {
                Ok(old) => {
                    if !unreadable.is_empty() {
                        tracing::warn!(
                            unreadable = ?unreadable,
                            compared_with = v,
                            "DNS change guard: newer versions cannot be read; compared with an older one"
                        );
                    }
                    verdict = Some(crate::dns_guard::judge(v, old.as_ref(), new.as_ref()));
                    break;
                }
                Err(e) => unreadable.push(format!("version {v}: {e}")),
            }
        }
        let verdict = verdict.unwrap_or_else(|| {
            Err(format!(
                "no stored version can be read to compare with ({})",
                unreadable.join("; ")
            ))
        });
        match verdict {
            Ok(()) => Ok(None),
            Err(why) if force => Ok(Some(why)),
            Err(why) => Err(PlaneError::Conflict(crate::dns_guard::refusal(&why))),
        }
    }

    /// The newest versions, newest first.
    pub async fn versions(&self, limit: usize) -> Result<Vec<VersionInfo>, PlaneError> {
        Ok(self.store.versions(limit.min(MAX_LIST)).await?)
    }

    /// One version with its assembled configuration text.
    pub async fn version(&self, n: u64) -> Result<VersionDetail, PlaneError> {
        let info = self
            .store
            .version(n)
            .await?
            .ok_or_else(|| PlaneError::NotFound(format!("no version {n}")))?;
        let bundle = self.open(n).await?;
        Ok(VersionDetail {
            info,
            document: bundle.assembled(),
        })
    }

    /// Verifies and parses a stored bundle (up to 4 MiB of signature check and JSON) on the
    /// blocking pool.
    pub(crate) async fn open(&self, n: u64) -> Result<Bundle, PlaneError> {
        let bytes = self.bundle(n).await?;
        let keys = self.key.clone();
        blocking(move || {
            Bundle::open(&bytes, &keys)
                .map_err(|e| PlaneError::Store(StoreError::Corrupt(format!("version {n}: {e}"))))
        })
        .await
    }

    /// One version's sealed bundle, as edges download it.
    pub async fn bundle(&self, n: u64) -> Result<Bytes, PlaneError> {
        self.store
            .bundle(n)
            .await?
            .ok_or_else(|| PlaneError::NotFound(format!("no version {n}")))
    }

    /// A unified diff of two versions' configuration text.
    pub async fn diff(&self, a: u64, b: u64) -> Result<String, PlaneError> {
        let (x, y) = (self.open(a).await?, self.open(b).await?);
        // The MaxMind databases are not text: a change shows as their hashes.
        let geoip = |b: &Bundle| {
            b.geoip.as_ref().map_or("none".to_owned(), |g| {
                firebreak_protocol::sha256_hex(g.bytes())
            })
        };
        let geoip_note = (x.geoip != y.geoip).then(|| {
            format!(
                "# MaxMind database (dns.geoip_file): sha256 {} -> {}\n",
                geoip(&x),
                geoip(&y)
            )
        });
        // Two megabytes of text can take the diff's whole time bound: on the blocking pool.
        blocking(move || {
            // Certificates described, never shown as PEM (and no key, ever).
            let redact = firebreak_protocol::secrets::redact_certs;
            let (x, y) = (redact(&x.assembled()), redact(&y.assembled()));
            // Bounded: past the deadline `similar` falls back to a coarser (still correct) diff.
            let diff = similar::TextDiff::configure()
                .timeout(Duration::from_secs(2))
                .diff_lines(&x, &y);
            let text = diff
                .unified_diff()
                .context_radius(3)
                .header(&format!("version {a}"), &format!("version {b}"))
                .to_string();
            Ok(geoip_note.unwrap_or_default() + &text)
        })
        .await
    }

    /// The fleet-wide target, signed.
    pub fn target(&self) -> Option<StoredTarget> {
        self.state.borrow().default.clone()
    }

    /// Waits up to `wait` for a target for edge `id` in `cell` newer than `after` (the
    /// edge's `(epoch, seq)`; without an epoch, the state's), and answers it — or, when the
    /// wait ends without one, the edge's current target — signed afresh
    /// ([`crate::freshness`]); `None` if there is none.
    pub async fn wait_target(
        &self,
        id: &str,
        cell: &str,
        after: (Option<u64>, u64),
        wait: Duration,
    ) -> Option<StoredTarget> {
        let mut rx = self.state.subscribe();
        let (after_epoch, after_seq) = after;
        let newer = |s: &FleetState| {
            s.effective(id, cell)
                .is_some_and(|t| (s.epoch, t.seq) > (after_epoch.unwrap_or(s.epoch), after_seq))
        };
        // A newer target, or (the wait over without one) the current target: either way
        // signed afresh, so an edge whose target does not change still holds a fresh one.
        let effective = |s: &FleetState| s.effective(id, cell).map(|t| (s.epoch, t.clone()));
        let waited = tokio::time::timeout(wait, rx.wait_for(newer))
            .await
            .map(|r| r.map(|s| effective(&s)));
        let found = match waited {
            Ok(Ok(found)) => found,
            Ok(Err(_)) => return None,
            Err(_) => effective(&rx.borrow()),
        };
        let (epoch, t) = found?;
        Some(self.freshener.fresh(&self.key, epoch, &t, now_ms()))
    }

    /// Notes that an edge polled.
    pub fn touch(&self, id: &str) {
        if let Ok(mut polled) = self.polled.lock() {
            if polled.len() < MAX_EDGES || polled.contains_key(id) {
                polled.insert(id.to_owned(), now_ms());
            }
        }
    }

    pub(crate) fn forget_polled(&self, id: &str) {
        if let Ok(mut polled) = self.polled.lock() {
            polled.remove(id);
        }
    }

    /// When each edge was last seen (report or poll), in ms since the epoch.
    pub(crate) async fn last_seen(&self) -> Result<HashMap<String, u64>, StoreError> {
        let mut seen: HashMap<String, u64> = self
            .store
            .edges()
            .await?
            .into_iter()
            .map(|e| (e.id, e.last_seen_ms))
            .collect();
        if let Ok(polled) = self.polled.lock() {
            for (id, &t) in polled.iter() {
                let e = seen.entry(id.clone()).or_insert(0);
                *e = (*e).max(t);
            }
        }
        Ok(seen)
    }

    /// Records an edge's report.
    pub async fn report(&self, id: &str, mut report: EdgeReport) -> Result<(), PlaneError> {
        edge_id(id)?;
        // The admin URL is fixed at join: a report cannot move purges elsewhere.
        let registered = self
            .registration(id)
            .await?
            .ok_or_else(|| PlaneError::NotFound(format!("edge {id} has not joined")))?;
        report.admin_url = registered.admin_url;
        label("pop", &report.pop)?;
        label("cell", &report.cell)?;
        if let Some(url) = &report.admin_url {
            label("admin_url", url)?;
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(PlaneError::BadRequest(
                    "admin_url must be an http(s) URL".into(),
                ));
            }
        }
        if report.listen.len() > 16 || report.listen.iter().any(|l| l.len() > MAX_LABEL_LEN) {
            return Err(PlaneError::BadRequest(
                "listen: at most 16 short URLs".into(),
            ));
        }
        if let Some(stale) = &report.stale {
            label("stale", stale)?;
        }
        if report.bad_versions.len() > 64 {
            return Err(PlaneError::BadRequest("bad_versions: at most 64".into()));
        }
        if let Some(s) = &report.staged {
            if let Some(e) = &s.error {
                label("staged.error", e)?;
            }
        }
        if report.failed_services.len() > firebreak_config::MAX_SERVICES {
            return Err(PlaneError::BadRequest("too many failed services".into()));
        }
        self.touch(id);
        let status = EdgeStatus {
            id: id.to_owned(),
            report,
            last_seen_ms: now_ms(),
            cert_expiry_ms: None,
        };
        self.store.put_edge(&status).await?;
        Ok(())
    }

    /// Every known edge, with the latest "last seen" this replica knows.
    pub async fn fleet(&self) -> Result<Vec<EdgeStatus>, PlaneError> {
        let joined: std::collections::HashSet<String> = self
            .store
            .identities()
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        let mut edges = self.store.edges().await?;
        // An edge removed (or pruned) while its report was being written is not shown.
        edges.retain(|e| joined.contains(&e.id));
        if let Ok(polled) = self.polled.lock() {
            for e in &mut edges {
                if let Some(&t) = polled.get(&e.id) {
                    e.last_seen_ms = e.last_seen_ms.max(t);
                }
            }
        }
        for e in &mut edges {
            e.cert_expiry_ms = self.health.latest(&e.id).and_then(|h| h.cert_expiry_ms);
        }
        edges.sort_by(|a, b| (&a.report.pop, &a.id).cmp(&(&b.report.pop, &b.id)));
        Ok(edges)
    }

    /// Purges on every live edge.
    pub async fn purge(&self, req: PurgeRequest) -> Result<PurgeOutcome, PlaneError> {
        let path = purge_path(&req)?;
        let deadline = Duration::from_millis(
            req.deadline_ms
                .unwrap_or(PURGE_DEADLINE_MS.0)
                .clamp(1, PURGE_DEADLINE_MS.1),
        );
        let now = now_ms();
        // Only HTTP edges hold caches: DNS servers are not asked.
        let (live, gone): (Vec<_>, Vec<_>) = self
            .fleet()
            .await?
            .into_iter()
            .filter(|e| e.report.role.is_edge())
            .partition(|e| now.saturating_sub(e.last_seen_ms) <= EDGE_GONE_MS);
        let skipped = gone.into_iter().map(|e| e.id).collect();
        Ok(self
            .fanout
            .purge(&self.key, live, skipped, &path, deadline)
            .await)
    }
}

/// Runs blocking work (parsing and validating a megabyte of TOML, composing, signing, large
/// diffs) on tokio's blocking pool, off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PlaneError> + Send + 'static,
) -> Result<T, PlaneError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PlaneError::Internal(format!("blocking task failed: {e}")))?
}

/// Validates a pushed document as the operator wrote it (errors located in their file), its
/// MaxMind database ([`check_geoip`]), splits it, and validates the parts and the assembled
/// form exactly as every edge will load them ([`Bundle::validate`]). Runs on the blocking pool.
async fn prepare(
    file: &str,
    document: &str,
    geoip: Option<Binary>,
) -> Result<Prepared, PlaneError> {
    let (file, document) = (file.to_owned(), document.to_owned());
    blocking(move || {
        let config = parse_managed_str(&file, &document).map_err(PlaneError::Invalid)?;
        let dns = config.get().dns.clone();
        if dns.is_some() {
            // One truth: the DNS server's own compiler, a backstop behind validation.
            let health = firebreak_dns::Health::new();
            firebreak_dns::Steering::compile(config.get(), 1, None, &health).map_err(|e| {
                PlaneError::Invalid(ConfigRejected {
                    errors: vec![firebreak_config::ConfigError::at_field(
                        &file,
                        &document,
                        &["dns"],
                        format!("the DNS servers would refuse this data: {e}"),
                    )],
                })
            })?;
        }
        check_geoip(&file, &document, config, geoip.as_ref()).map_err(PlaneError::Invalid)?;
        let now_s = i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX);
        let warnings = crate::secrets::check_certificates(&file, &document, now_s)
            .map_err(PlaneError::Invalid)?;
        let docs = split(&document).map_err(PlaneError::BadRequest)?;
        let candidate = Bundle {
            version: 0,
            parent: None,
            created_at_ms: 0,
            author: String::new(),
            message: String::new(),
            fleet: docs.fleet,
            services: docs.services,
            geoip,
        };
        candidate.validate(&file).map_err(PlaneError::Invalid)?;
        // Validated whole with its keys; now the keys move out of what gets sealed.
        let (services, moved) = crate::secrets::extract(candidate.services)?;
        let docs = Documents {
            fleet: candidate.fleet,
            services,
        };
        Ok(Prepared {
            docs,
            moved,
            warnings,
            dns,
        })
    })
    .await
}

/// The MaxMind database a push carries: sent exactly when the document names one
/// (`dns.geoip_file`), within [`firebreak_config::MAX_GEOIP_BYTES`]
/// ([`firebreak_protocol::bundle::carry_geoip`], which every member runs too), and opened with
/// the DNS server's own code ([`firebreak_dns::GeoIp::from_bytes`]: the whole file verified,
/// and usable to place clients), so that a database a DNS server would refuse is refused here
/// first. Errors name the file and `dns.geoip_file`, located where the document names it.
fn check_geoip(
    file: &str,
    document: &str,
    config: firebreak_config::ValidConfig,
    geoip: Option<&Binary>,
) -> Result<(), ConfigRejected> {
    let config = carry_geoip(file, document, config, geoip)?;
    let (Some(bytes), Some(name)) = (
        config.geoip(),
        config.dns.as_ref().and_then(|d| d.geoip_file.as_deref()),
    ) else {
        return Ok(());
    };
    match firebreak_dns::GeoIp::from_bytes(bytes.to_vec()) {
        Ok(db) => {
            tracing::debug!(
                file,
                database_type = db.database_type(),
                "GeoIP database verified"
            );
            Ok(())
        }
        Err(e) => Err(ConfigRejected {
            errors: vec![firebreak_config::ConfigError::at_field(
                file,
                document,
                &["dns", "geoip_file"],
                format!("{name}: {e}"),
            )],
        }),
    }
}

/// A pushed document, validated and ready to seal.
struct Prepared {
    /// The fleet document and one document per service, keys moved out.
    docs: Documents,
    /// The private keys moved out of the service documents.
    moved: crate::secrets::Moved,
    /// What was accepted but is worth knowing.
    warnings: Vec<String>,
    /// Its `[dns]` data, for the DNS change guard.
    dns: Option<firebreak_config::dns::DnsConfig>,
}

/// Checks stored version `n`'s parts before it is rolled out: each service's document holds
/// only its own service and the fleet document no service ([`Bundle::check_documents`]), so a
/// version written by anything but [`Plane::push`] (an older control plane, a restored or
/// edited store) cannot smuggle fleet-wide settings or another tenant's service to the edges.
/// The rest (fields this control plane does not know, a bundle that does not verify) is left
/// to the edges' stage, which refuses it and stops the rollout.
pub(crate) async fn checked_version(plane: &Plane, n: u64) -> Result<(), PlaneError> {
    let bytes = plane.bundle(n).await?;
    let public = plane.key.public();
    blocking(move || {
        if let Ok(bundle) = Bundle::open(&bytes, &public) {
            bundle
                .check_documents(&format!("version {n}"))
                .map_err(PlaneError::Invalid)?;
        }
        Ok(())
    })
    .await
}

fn purge_path(req: &PurgeRequest) -> Result<String, PlaneError> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    let path = match (&req.url, &req.key, req.all) {
        (Some(url), None, false) => {
            label("url", url)?;
            q.append_pair("url", url);
            "/purge/url"
        }
        (None, Some(key), false) => {
            label("key", key)?;
            q.append_pair("key", key);
            "/purge/key"
        }
        (None, None, true) => "/purge/all",
        _ => {
            return Err(PlaneError::BadRequest(
                "give exactly one of url, key or all".into(),
            ))
        }
    };
    if path != "/purge/url" {
        let service = req
            .service
            .as_deref()
            .ok_or_else(|| PlaneError::BadRequest("service is required with key or all".into()))?;
        label("service", service)?;
        q.append_pair("service", service);
    }
    if req.soft {
        q.append_pair("soft", "true");
    }
    Ok(format!("{path}?{}", q.finish()))
}

/// Checks a free-text field: bounded, no control characters.
pub(crate) fn label_text(what: &str, value: &str) -> Result<(), PlaneError> {
    label(what, value)
}

fn label(what: &str, value: &str) -> Result<(), PlaneError> {
    if value.len() > MAX_LABEL_LEN * 16 || value.chars().any(char::is_control) {
        return Err(PlaneError::BadRequest(format!(
            "{what} must be at most {} characters without control characters",
            MAX_LABEL_LEN * 16
        )));
    }
    Ok(())
}

/// Edge ids: 1 to 128 of letters, digits, `.`, `_`, `-`.
pub fn edge_id(id: &str) -> Result<(), PlaneError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(PlaneError::BadRequest(
            "edge id must be 1 to 128 letters, digits, '.', '_' or '-'".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
#[path = "plane_geoip_tests.rs"]
mod geoip_tests;
