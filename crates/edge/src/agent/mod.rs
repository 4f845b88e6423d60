//! The edge under a control plane: last-known-good versions on disk, target watch, verified
//! download, per-service apply, reports.
//!
//! Start: the newest good configuration on disk is loaded and served before the control plane
//! is asked anything, so an edge restarts and serves even while the control plane is down.
//! With nothing on disk, the edge waits for its first version (it never serves an empty
//! configuration; its admin address answers `/healthz` 503 meanwhile: [`waiting`]). Then,
//! forever: long-poll the target; verify its signature; judge it ([`order`]: audience, then
//! `(epoch, seq)` against the newest verified, then freshness); download the bundle, check its
//! hash, size and signature; compose it service by service ([`compose`]); keep it and the
//! signed target on disk; swap it in; report. Any failure leaves the running version in place
//! and is reported with its reason. The kept state is verified at start: `applied.json` is
//! used only when it matches the signed `target.json` beside it.

pub mod client;
pub mod compose;
pub mod control_ca;
pub mod disk;
pub mod identity;
pub mod journal;
pub mod member;
pub mod order;
pub mod secrets;
pub mod tier;
pub mod trust;
pub mod waiting;

use crate::server::{EdgeHandle, ServerError};
use crate::signed_admin::ControlLink;
use crate::telemetry;
use client::{ControlClient, PolledTarget};
use compose::{compose, Applied};
use disk::LocalVersions;
use firebreak_config::ValidConfig;
use firebreak_protocol::api::{EdgeReport, ServiceFailure, StageReport};
use firebreak_protocol::bundle::{Bundle, MAX_BUNDLE_BYTES};
use firebreak_protocol::keys::PublicKey;
use firebreak_protocol::signed::{Refusal, Signed, Stage, Target};
use journal::{BadVerdict, BootJournal, SafeMode};
use member::{ControlContext, EdgeLauncher, Launcher, Member};
use order::Verdict;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use trust::TrustStore;
use waiting::WaitingHealth;

/// How long one long-poll waits.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// Shortest long-poll (when the target is about to go stale, or is).
const MIN_POLL_WAIT: Duration = Duration::from_millis(500);
/// Longest pause between attempts while the control plane fails, before jitter (which adds
/// up to as much again).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First pause after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// How often the edge checks whether its target went stale.
const STALE_CHECK: Duration = Duration::from_millis(250);

/// Pauses between attempts while the control plane fails: exponential with jitter (`backon`),
/// so a fleet that lost its control plane does not come back in lockstep.
fn backoff() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn pause(backoff: &mut backon::ExponentialBackoff) {
    tokio::time::sleep(backoff.next().unwrap_or(MAX_BACKOFF)).await;
}

/// How to run an edge under a control plane.
#[derive(Clone)]
pub struct AgentOptions {
    /// Control plane base URL, `http://host:port` or `https://host:port` (verified against
    /// the CA kept in `data_dir`: [`control_ca`]).
    pub control: String,
    /// The fleet's join token: used once to join (`POST /v1/edges/{id}/join`); every other
    /// call carries the edge's own credential, kept in `data_dir` ([`identity`]).
    pub token: String,
    /// This edge's id (unique in the fleet).
    pub id: String,
    /// POP (site) name.
    pub pop: String,
    /// Cell (rollout group) name.
    pub cell: String,
    /// Where the last good versions are kept.
    pub data_dir: PathBuf,
    /// The control plane's public key.
    pub trust: PublicKey,
    /// Client listeners.
    pub listen: Vec<SocketAddr>,
    /// Client listeners terminating TLS (`--listen-tls`): certificates from the services.
    pub listen_tls: Vec<SocketAddr>,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// How many versions to keep on disk.
    pub keep: usize,
    /// How often the edge reports even when nothing changed (the fleet view's "last seen").
    pub heartbeat: Duration,
    /// How often the edge sends its health counts (what rollout gates judge).
    pub health_interval: Duration,
    /// When a crash-looping version is given up (safe mode).
    pub safe_mode: SafeMode,
}

impl AgentOptions {
    /// Options with the default timings: heartbeat 10 s, health every 5 s, safe mode after 3
    /// crashes of one version within 5 minutes.
    pub fn new(
        control: String,
        token: String,
        id: String,
        data_dir: PathBuf,
        trust: PublicKey,
    ) -> Self {
        Self {
            control,
            token,
            id,
            pop: "local".into(),
            cell: "main".into(),
            data_dir,
            trust,
            listen: Vec::new(),
            listen_tls: Vec::new(),
            admin: None,
            keep: 5,
            heartbeat: Duration::from_secs(10),
            health_interval: Duration::from_secs(5),
            safe_mode: SafeMode::default(),
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory is unusable.
    #[error("data directory {dir}: {source}")]
    DataDir {
        /// The directory.
        dir: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The edge server did not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The kept control-plane CA ([`control_ca`]) cannot be used.
    #[error("control-plane CA: {0}")]
    ControlCa(#[from] control_ca::ControlCaError),
}

/// What the agent knows about itself, for reports and tests.
#[derive(Debug, Clone, Default)]
pub struct AgentStatus {
    /// What runs.
    pub applied: Option<Applied>,
    /// Why the last target could not be applied (cleared on success).
    pub last_error: Option<String>,
    /// Services kept at an older document.
    pub failed_services: Vec<ServiceFailure>,
    /// Why the control plane cannot be reached, while it cannot (the edge keeps serving).
    pub control_error: Option<String>,
    /// The last version staged (or that failed to stage).
    pub staged: Option<StageReport>,
    /// Versions this edge crash-looped on and refuses (safe mode).
    pub bad_versions: Vec<u64>,
    /// The newest target sequence number acted on (applied, staged, or nothing to do).
    pub seen_seq: u64,
    /// The epoch of that target (targets order by `(epoch, seq)`).
    pub seen_epoch: u64,
    /// Until when (ms since the epoch) the freshest verified target of what runs is fresh.
    pub fresh_until_ms: u64,
    /// Why this edge is stale (no fresh target), while it is; it keeps serving.
    pub stale: Option<String>,
    /// Targets refused because they were older than the newest verified.
    pub refused_older: u64,
    /// Targets refused because they had expired.
    pub refused_expired: u64,
    /// Why the kept state was refused at start, if it was.
    pub state_refused: Option<String>,
    /// When the running version started serving (ms since the epoch).
    pub serving_since_ms: u64,
    /// Targets refused because they were addressed to another edge or cell.
    pub misaddressed: u64,
    /// The generation of the control plane's key set this edge trusts (0: only `--trust`).
    pub key_generation: u64,
}

/// A running member (by default an HTTP edge) under a control plane.
pub struct Agent<M: Member = EdgeHandle> {
    /// The member: the edge server, or another kind started by its [`Launcher`].
    pub member: Arc<M>,
    status: Arc<Mutex<AgentStatus>>,
    journal: Arc<BootJournal>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent<EdgeHandle> {
    /// An HTTP edge on `opts`' listeners: see [`Agent::start_with`].
    pub async fn start(opts: AgentOptions) -> Result<Self, AgentError> {
        let launcher = EdgeLauncher {
            listen: opts.listen.clone(),
            listen_tls: opts.listen_tls.clone(),
            admin: opts.admin,
            data_dir: opts.data_dir.clone(),
        };
        Agent::start_with(opts, launcher).await
    }
}

impl<M: Member> Agent<M> {
    /// Loads the last good version from disk (or waits for the first from the control plane),
    /// starts the member `launcher` builds, and follows the control plane in the background.
    pub async fn start_with<L: Launcher<Member = M>>(
        opts: AgentOptions,
        launcher: L,
    ) -> Result<Self, AgentError> {
        let disk = LocalVersions::open(&opts.data_dir).map_err(|source| AgentError::DataDir {
            dir: opts.data_dir.display().to_string(),
            source,
        })?;
        let disk = Arc::new(disk);
        let (journal, newly_bad) = BootJournal::open(&opts.data_dir, opts.safe_mode);
        let journal = Arc::new(journal);
        let http = control_ca::client(&opts.control, &opts.data_dir)?;
        let client = ControlClient::new(&opts.control, &opts.token, &opts.id)
            .with_http(http)
            .with_identity(identity::Identity::new(
                &opts.data_dir,
                &opts.id,
                &opts.token,
                &opts.pop,
                &opts.cell,
            ));
        let trust = Arc::new(TrustStore::open(&opts.data_dir, opts.trust));
        let status = Arc::new(Mutex::new(AgentStatus {
            bad_versions: journal.bad(),
            key_generation: trust.generation(),
            ..AgentStatus::default()
        }));
        let keys = {
            let (trust, status) = (trust.clone(), status.clone());
            let client = client.clone();
            let every = opts.heartbeat.max(Duration::from_millis(100));
            tokio::spawn(async move {
                loop {
                    match trust.refresh(&client).await {
                        Err(e) if e.starts_with("key set refused") => {
                            tracing::warn!(error = %e, "control-plane key set not updated");
                        }
                        // Unreachable control plane: the target poll reports it already.
                        Err(e) => tracing::debug!(error = %e, "key sets not fetched"),
                        Ok(_) => {}
                    }
                    if let Ok(mut s) = status.lock() {
                        s.key_generation = trust.generation();
                    }
                    tokio::time::sleep(every).await;
                }
            })
        };
        let link = Arc::new(ControlLink::new(&opts.id));
        let mut worker = Worker {
            launcher: Arc::new(launcher),
            opts: opts.clone(),
            disk,
            client,
            status: status.clone(),
            member: None,
            fatal: None,
            journal: journal.clone(),
            trust: trust.clone(),
            waiting: None,
        };
        if let Some(bad) = newly_bad {
            worker.set_error(format!(
                "version {bad} crashed this edge {} times within {:?}; booted the previous version and refuse {bad} (safe mode)",
                opts.safe_mode.crashes, opts.safe_mode.window
            ));
        }
        let kept = worker.verified_target();
        if let Some((t, _)) = &kept {
            if let Ok(mut s) = status.lock() {
                (s.seen_epoch, s.seen_seq) = t.order();
                s.fresh_until_ms = t.expires_at_ms;
            }
        }
        match worker.restore(kept.as_ref().map(|(t, _)| t)) {
            Some((applied, config)) => {
                tracing::info!(
                    version = applied.version,
                    "serving the last good version from disk"
                );
                let version = applied.version;
                worker.set_applied(applied, Vec::new(), None);
                journal.serving(version);
                worker.member = Some(Arc::new(worker.launcher.start(config).await?));
            }
            None => {
                tracing::info!("no version on disk; waiting for the control plane");
                worker.wait_for_first().await?;
            }
        }
        let Some(member) = worker.member.clone() else {
            return Err(AgentError::Server(ServerError::Config(
                "no configuration".into(),
            )));
        };
        worker.launcher.attach(
            &member,
            ControlContext {
                trust: opts.trust,
                keys: trust.clone(),
                link: link.clone(),
                client: worker.client.clone(),
                pop: opts.pop.clone(),
                every: opts.health_interval.max(Duration::from_millis(100)),
            },
        );
        let stale = {
            let status = status.clone();
            tokio::spawn(async move {
                loop {
                    let why = match status.lock() {
                        Ok(mut s) => {
                            s.stale =
                                order::stale_reason(s.fresh_until_ms, firebreak_protocol::now_ms());
                            s.stale.clone()
                        }
                        Err(_) => None,
                    };
                    if why.is_some() && link.stale().is_none() {
                        tracing::warn!(why = ?why, "target stale; still serving");
                    }
                    telemetry::target_stale(why.is_some());
                    link.set_stale(why);
                    tokio::time::sleep(STALE_CHECK).await;
                }
            })
        };
        let heartbeat = {
            let (client, status, report) =
                (worker.client.clone(), status.clone(), worker.reporter());
            let every = opts.heartbeat.max(Duration::from_millis(100));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = client.report_with(|| report(&status)).await {
                        tracing::debug!(error = %e, "heartbeat not delivered");
                    }
                }
            })
        };
        let health = {
            let (client, status, member) = (worker.client.clone(), status.clone(), member.clone());
            let every = opts.health_interval.max(Duration::from_millis(100));
            let mut expiry = secrets::Expiry::default();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let (version, since_ms, cert_expiry_ms) = match status.lock() {
                        Ok(s) => match &s.applied {
                            Some(a) => (a.version, s.serving_since_ms, expiry.of(a)),
                            None => continue,
                        },
                        Err(_) => continue,
                    };
                    let counted = member.health();
                    let report = firebreak_protocol::health::HealthReport {
                        version,
                        since_ms,
                        total: counted.total,
                        services: counted.services,
                        cert_expiry_ms,
                        dns: counted.dns,
                    };
                    if let Err(e) = client.health(&report).await {
                        tracing::debug!(error = %e, "health report not delivered");
                    }
                }
            })
        };
        let watcher = tokio::spawn(async move { worker.follow().await });
        Ok(Self {
            member,
            status,
            journal,
            tasks: vec![watcher, heartbeat, health, keys, stale],
        })
    }

    /// A snapshot of the agent's status.
    pub fn status(&self) -> AgentStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops following the control plane and stops the member; records a clean stop in the
    /// boot journal (so that this stop is not counted as a crash).
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.member.shutdown();
        self.journal.clean_stop();
    }
}

impl<M: Member> Drop for Agent<M> {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Worker<L: Launcher> {
    /// Builds and starts the member from configurations.
    launcher: Arc<L>,
    opts: AgentOptions,
    disk: Arc<LocalVersions>,
    client: ControlClient,
    status: Arc<Mutex<AgentStatus>>,
    /// What runs, once a version has started it.
    member: Option<Arc<L::Member>>,
    /// An error that ends the agent's start (a listener that cannot be bound).
    fatal: Option<ServerError>,
    journal: Arc<BootJournal>,
    /// The control-plane keys this edge trusts.
    trust: Arc<TrustStore>,
    /// The admin address's health answer while there is no configuration.
    waiting: Option<WaitingHealth>,
}

impl<L: Launcher> Worker<L> {
    fn localize(&self, config: ValidConfig) -> ValidConfig {
        self.launcher.localize(config)
    }

    fn admin_url(&self) -> Option<String> {
        self.member
            .as_ref()
            .and_then(|e| e.admin_addr())
            .map(|a| format!("http://{a}"))
    }

    fn reporter(&self) -> impl Fn(&Mutex<AgentStatus>) -> EdgeReport + Send + 'static {
        let (pop, cell, admin_url, role) = (
            self.opts.pop.clone(),
            self.opts.cell.clone(),
            self.admin_url(),
            self.launcher.role(),
        );
        let listen: Vec<String> = self
            .member
            .as_ref()
            .map(|e| e.local_urls())
            .unwrap_or_default();
        move |status| {
            let s = status.lock().map(|s| s.clone()).unwrap_or_default();
            EdgeReport {
                pop: pop.clone(),
                cell: cell.clone(),
                admin_url: admin_url.clone(),
                listen: listen.clone(),
                applied_version: s.applied.as_ref().map(|a| a.version),
                applied_seq: s.applied.as_ref().map_or(0, |a| a.seq),
                error: s.last_error.or(s.control_error),
                failed_services: s.failed_services,
                staged: s.staged,
                bad_versions: s.bad_versions,
                stale: s.stale,
                role,
            }
        }
    }

    fn current(&self) -> Option<Applied> {
        self.status.lock().ok().and_then(|s| s.applied.clone())
    }

    fn set_applied(&self, applied: Applied, failures: Vec<ServiceFailure>, error: Option<String>) {
        if let Ok(mut s) = self.status.lock() {
            if s.applied.as_ref().map(|a| a.version) != Some(applied.version) {
                s.serving_since_ms = firebreak_protocol::now_ms();
            }
            s.applied = Some(applied);
            s.failed_services = failures;
            s.last_error = error;
        }
    }

    fn set_control_error(&self, error: Option<String>) {
        if let Ok(mut s) = self.status.lock() {
            s.control_error = error;
        }
    }

    fn set_error(&self, error: String) {
        tracing::warn!(%error, "target not applied; still serving the current version");
        if let Ok(mut s) = self.status.lock() {
            s.last_error = Some(error);
        }
    }

    /// The signed target kept in `target.json`, verified with the trusted key and addressed to
    /// this edge; `None` (logged, naming the file) when missing or refused.
    fn verified_target(&self) -> Option<(Target, Signed)> {
        let path = self.disk.target_path();
        let signed = self.disk.load_target()?;
        let refused = |why: String| {
            tracing::warn!(file = %path.display(), "{why}; not trusted");
            if let Ok(mut s) = self.status.lock() {
                s.state_refused = Some(format!("{}: {why}", path.display()));
            }
            None
        };
        match signed.open::<Target>(&*self.trust) {
            Ok(t) if t.addressed_to(&self.opts.id, &self.opts.cell) => Some((t, signed)),
            Ok(t) => refused(format!("kept target is addressed to {}", t.audience)),
            Err(e) => refused(format!("kept target refused: {e}")),
        }
    }

    /// The newest good configuration on disk. `applied.json` is used only when it matches the
    /// verified signed target `kept` (version and sequence number); otherwise it is refused
    /// (logged, naming the file) and the kept target's version is rebuilt whole from its
    /// verified bundle; failing that, the newest kept bundle that loads on its own (the control
    /// plane's current target follows).
    fn restore(&self, kept: Option<&Target>) -> Option<(Applied, ValidConfig)> {
        let key = self.trust.clone();
        let mut bundles: HashMap<u64, Bundle> = HashMap::new();
        let mut open = |v: u64| -> Option<Bundle> {
            if let Some(b) = bundles.get(&v) {
                return Some(b.clone());
            }
            let bytes = self.disk.load_bundle(v, MAX_BUNDLE_BYTES).ok()?;
            match Bundle::open(&bytes, &key) {
                Ok(b) if b.version == v => {
                    // Its private keys from the data directory (no control plane needed).
                    let b = secrets::from_disk(&self.opts.data_dir, b)?;
                    bundles.insert(v, b.clone());
                    Some(b)
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(version = v, "kept bundle does not verify; ignoring it");
                    None
                }
            }
        };
        let bad = self.journal.bad();
        let record = self.disk.load_applied().filter(|r| {
            let matches = kept.is_some_and(|t| t.version == r.version && t.seq == r.seq);
            if !matches {
                let why = match kept {
                    Some(t) => format!(
                        "version {} seq {} does not match the signed target kept beside it (version {} seq {})",
                        r.version, r.seq, t.version, t.seq
                    ),
                    None => format!(
                        "version {} seq {} has no verified signed target beside it",
                        r.version, r.seq
                    ),
                };
                let path = self.disk.applied_path();
                tracing::warn!(file = %path.display(), "{why}; refused");
                if let Ok(mut s) = self.status.lock() {
                    s.state_refused = Some(format!("{}: {why}; refused", path.display()));
                }
            }
            matches
        });
        if let Some(record) = record.filter(|r| {
            !bad.contains(&r.version) && !r.services.iter().any(|p| bad.contains(&p.version))
        }) {
            let rebuilt = (|| {
                let main = open(record.version)?;
                let mut services = Vec::new();
                for pin in &record.services {
                    let b = open(pin.version)?;
                    let doc = b.services.iter().find(|s| s.name == pin.name)?.clone();
                    services.push((pin.version, doc));
                }
                Some(Applied {
                    version: record.version,
                    seq: record.seq,
                    fleet: main.fleet,
                    services,
                    geoip: main.geoip,
                })
            })();
            if let Some(applied) = rebuilt {
                if let Ok(config) = applied.config() {
                    return Some((applied, self.localize(config)));
                }
            }
            tracing::warn!("applied.json does not rebuild; trying kept versions");
        }
        if let Some(t) = kept.filter(|t| t.version != 0 && !bad.contains(&t.version)) {
            if let Some(b) = open(t.version) {
                if let Ok(c) = compose(&b, t.seq, None) {
                    let config = self.localize(c.config);
                    return Some((c.applied, config));
                }
            }
        }
        for v in self.disk.versions() {
            if bad.contains(&v) {
                continue;
            }
            if let Some(b) = open(v) {
                if let Ok(c) = compose(&b, 0, None) {
                    let config = self.localize(c.config);
                    return Some((c.applied, config));
                }
            }
        }
        None
    }

    /// Before the first version: poll until one applies, then start the server.
    async fn wait_for_first(&mut self) -> Result<(), AgentError> {
        // Register at once, so that the fleet view shows an edge waiting for its first version.
        if let Ok(mut s) = self.status.lock() {
            s.last_error = Some("waiting for the first version".into());
        }
        if let Some(admin) = self.opts.admin {
            match WaitingHealth::start(admin).await {
                Ok(w) => self.waiting = Some(w),
                Err(e) => {
                    tracing::warn!(%admin, error = %e, "cannot answer /healthz while waiting")
                }
            }
        }
        let report = self.reporter();
        if let Err(e) = self.client.report_with(|| report(&self.status)).await {
            tracing::warn!(error = %e, "cannot register with the control plane yet");
            self.note_waiting(&e);
        }
        let mut backoff = backoff();
        loop {
            let after = self.seen();
            let asked = std::time::Instant::now();
            match self
                .client
                .poll(after, &self.opts.cell, self.poll_wait())
                .await
            {
                Ok(Some(polled)) => match self.apply(polled).await {
                    Ok(()) if self.member.is_some() => return Ok(()),
                    Ok(()) => {
                        self.note_waiting("the control plane has no version for this edge yet");
                        if self.seen() == after && asked.elapsed() < MIN_POLL_WAIT / 2 {
                            pause(&mut backoff).await;
                        }
                        let report = self.reporter();
                        if let Err(e) = self.client.report_with(|| report(&self.status)).await {
                            tracing::warn!(error = %e, "report not delivered");
                        }
                    }
                    Err(e) => {
                        if let Some(fatal) = self.fatal.take() {
                            if let Some(w) = self.waiting.take() {
                                w.stop().await;
                            }
                            return Err(AgentError::Server(fatal));
                        }
                        self.note_waiting(&e);
                        self.set_error(e);
                        pause(&mut backoff).await;
                    }
                },
                Ok(None) => self.note_waiting("the control plane has no version for this edge yet"),
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for the control plane");
                    self.note_waiting(&e);
                    pause(&mut backoff).await;
                }
            }
        }
    }

    fn note_waiting(&self, why: &str) {
        if let Some(w) = &self.waiting {
            w.note(why);
        }
    }

    /// Follows the target for ever.
    async fn follow(&mut self) {
        let report = self.reporter();
        let _ = self.client.report_with(|| report(&self.status)).await;
        let mut backoff = backoff();
        loop {
            let after = self.seen();
            let asked = std::time::Instant::now();
            let polled = self
                .client
                .poll(after, &self.opts.cell, self.poll_wait())
                .await;
            if polled.is_ok() {
                self.set_control_error(None);
            }
            match polled {
                Ok(Some(polled)) => {
                    let result = self.apply(polled).await;
                    let failed = result.is_err();
                    let changed = self.seen() != after;
                    if let Err(e) = result {
                        self.set_error(e);
                    }
                    if failed || changed {
                        if let Err(e) = self.client.report_with(|| report(&self.status)).await {
                            tracing::warn!(error = %e, "report not delivered");
                        }
                    }
                    if failed || (!changed && asked.elapsed() < MIN_POLL_WAIT / 2) {
                        // A refused target, or an answer at once with nothing new (a control
                        // plane, or something in its place, that does not wait): pause.
                        pause(&mut backoff).await;
                    } else {
                        backoff = self::backoff();
                    }
                }
                Ok(None) => backoff = self::backoff(),
                Err(e) => {
                    tracing::warn!(error = %e, "control plane unreachable; serving the current version");
                    self.set_control_error(Some(e));
                    pause(&mut backoff).await;
                }
            }
        }
    }

    /// How long to long-poll: half the time the current target stays fresh (so a fresh
    /// signature arrives before it goes stale), within [`MIN_POLL_WAIT`]..[`POLL_WAIT`].
    fn poll_wait(&self) -> Duration {
        let (until, serving) = self
            .status
            .lock()
            .map(|s| (s.fresh_until_ms, s.applied.is_some()))
            .unwrap_or((0, false));
        if !serving {
            return POLL_WAIT;
        }
        let left = until.saturating_sub(firebreak_protocol::now_ms()) / 2;
        Duration::from_millis(left).clamp(MIN_POLL_WAIT, POLL_WAIT)
    }

    /// The `(epoch, seq)` of the newest target verified and acted on.
    fn seen(&self) -> (u64, u64) {
        self.status
            .lock()
            .map(|s| (s.seen_epoch, s.seen_seq))
            .unwrap_or((0, 0))
    }

    /// Notes that `target` was acted on: its order, and its freshness.
    fn note_seen(&self, target: &Target) {
        if let Ok(mut s) = self.status.lock() {
            if target.order() > (s.seen_epoch, s.seen_seq) {
                (s.seen_epoch, s.seen_seq) = target.order();
                s.fresh_until_ms = target.expires_at_ms;
            }
        }
    }

    /// Notes a fresh signature of the target already acted on.
    fn note_fresh(&self, target: &Target) {
        if let Ok(mut s) = self.status.lock() {
            s.fresh_until_ms = s.fresh_until_ms.max(target.expires_at_ms);
        }
    }

    /// Verifies one target, judges it ([`order::judge`]), stages what it asks to stage, and
    /// applies the version it names. On error nothing changed.
    async fn apply(&mut self, polled: PolledTarget) -> Result<(), String> {
        let target: Target = polled.signed.open(&*self.trust).map_err(|e| {
            telemetry::signed_refused("target", Refusal::Signature);
            format!("target refused: {e}")
        })?;
        let serving = self.current().is_some();
        let now = firebreak_protocol::now_ms();
        match order::judge(
            &target,
            &self.opts.id,
            &self.opts.cell,
            self.seen(),
            serving,
            now,
        ) {
            Verdict::Newer => {}
            Verdict::Same => {
                self.note_fresh(&target);
                return Ok(());
            }
            Verdict::Refused(reason, message) => {
                telemetry::signed_refused("target", reason);
                if let Ok(mut s) = self.status.lock() {
                    match reason {
                        Refusal::Audience => s.misaddressed += 1,
                        Refusal::Older => s.refused_older += 1,
                        Refusal::Expired => s.refused_expired += 1,
                        _ => {}
                    }
                }
                if reason == Refusal::Audience {
                    metrics::counter!("firebreak_targets_refused_total", "reason" => "audience")
                        .increment(1);
                }
                return Err(message);
            }
        }
        // Safe mode: a bad version is tried again only when a target newer than the one it was
        // refused under names it.
        let named = std::iter::once(target.version).chain(target.stage.as_ref().map(|s| s.version));
        for v in named.filter(|v| *v != 0) {
            if self.journal.judge_bad(v, target.order()) == BadVerdict::Retry {
                tracing::warn!(
                    version = v,
                    epoch = target.epoch,
                    seq = target.seq,
                    "a newer target names version {v} again: trying it again (safe mode lifted for it)"
                );
                if let Ok(mut s) = self.status.lock() {
                    s.bad_versions = self.journal.bad();
                }
            }
        }
        if let Some(stage) = &target.stage {
            self.stage(stage).await;
        }
        if target.version == 0 {
            // Nothing to run yet (a first version being staged).
            self.note_seen(&target);
            return Ok(());
        }
        if self.journal.is_bad(target.version) {
            self.note_seen(&target);
            return Err(format!(
                "version {} crash-looped on this edge; refused until a newer target names it (safe mode)",
                target.version
            ));
        }
        self.activate(&target, &polled.signed).await?;
        self.note_seen(&target);
        Ok(())
    }

    /// The sealed bundle of `version`: the copy kept on disk when its hash matches, else a
    /// download.
    async fn fetch(&self, version: u64, sha256: &str) -> Result<bytes::Bytes, String> {
        if let Ok(kept) = self.disk.load_bundle(version, MAX_BUNDLE_BYTES) {
            if firebreak_protocol::sha256_hex(&kept) == sha256 {
                return Ok(bytes::Bytes::from(kept));
            }
        }
        self.client.bundle(version).await
    }

    /// Downloads, verifies and builds `stage.version` without serving it, keeps it on disk,
    /// and records the outcome for the next report.
    async fn stage(&mut self, stage: &Stage) {
        let current = self.current();
        if current.as_ref().is_some_and(|c| c.version == stage.version) {
            return;
        }
        let already = self
            .status
            .lock()
            .ok()
            .and_then(|s| s.staged.clone())
            .is_some_and(|s| s.version == stage.version && s.error.is_none());
        if already {
            return;
        }
        let outcome = self.try_stage(stage, current.as_ref()).await;
        if let Err(e) = &outcome {
            tracing::warn!(version = stage.version, error = %e, "cannot stage version");
        } else {
            tracing::info!(version = stage.version, "version staged");
        }
        if let Ok(mut s) = self.status.lock() {
            s.staged = Some(StageReport {
                version: stage.version,
                error: outcome.err(),
            });
        }
        let report = self.reporter();
        if let Err(e) = self.client.report_with(|| report(&self.status)).await {
            tracing::warn!(error = %e, "stage report not delivered");
        }
    }

    async fn try_stage(&self, stage: &Stage, current: Option<&Applied>) -> Result<(), String> {
        if self.journal.is_bad(stage.version) {
            return Err(format!(
                "version {} crash-looped on this edge (safe mode)",
                stage.version
            ));
        }
        let bytes = self.fetch(stage.version, &stage.bundle_sha256).await?;
        let bundle = Bundle::open_expecting(&bytes, &*self.trust, &stage.bundle_sha256)
            .map_err(|e| format!("version {}: {e}", stage.version))?;
        if bundle.version != stage.version {
            return Err(format!(
                "bundle is version {} but {} was asked for",
                bundle.version, stage.version
            ));
        }
        let bundle = secrets::ready(&self.opts.data_dir, &self.client, bundle).await?;
        let composed = compose(&bundle, 0, current)
            .map_err(|e| format!("version {} does not load: {e}", stage.version))?;
        if let Some(f) = composed.failures.first() {
            return Err(format!(
                "service `{}` of version {} does not load: {}",
                f.service, stage.version, f.error
            ));
        }
        let config = self.localize(composed.config);
        self.launcher
            .check(&config)
            .map_err(|e| format!("version {} cannot be built: {e}", stage.version))?;
        self.disk
            .save_bundle(bundle.version, &bytes)
            .map_err(|e| format!("cannot keep version {} on disk: {e}", bundle.version))?;
        Ok(())
    }

    /// Downloads (or takes from disk), composes, keeps and serves the target's version.
    /// The target is newer by `(epoch, seq)` — a rollback is such a target naming an older
    /// version. `signed` is kept beside `applied.json` as the proof of what runs.
    async fn activate(&mut self, target: &Target, signed: &Signed) -> Result<(), String> {
        let current = self.current();
        if let Some(cur) = &current {
            if target.version == cur.version {
                let mut same = cur.clone();
                same.seq = target.seq;
                let failures = self
                    .status
                    .lock()
                    .map(|s| s.failed_services.clone())
                    .unwrap_or_default();
                let error = self.keep_state(&same, signed);
                self.set_applied(same, failures, error);
                return Ok(());
            }
        }
        let bytes = self.fetch(target.version, &target.bundle_sha256).await?;
        let bundle = Bundle::open_expecting(&bytes, &*self.trust, &target.bundle_sha256)
            .map_err(|e| format!("version {}: {e}", target.version))?;
        if bundle.version != target.version {
            return Err(format!(
                "bundle is version {} but the target is {}",
                bundle.version, target.version
            ));
        }
        let bundle = secrets::ready(&self.opts.data_dir, &self.client, bundle).await?;
        let composed = compose(&bundle, target.seq, current.as_ref())
            .map_err(|e| format!("version {} does not load: {e}", target.version))?;
        self.disk.save_bundle(bundle.version, &bytes).map_err(|e| {
            format!(
                "cannot keep version {} on disk: {e}; not applied",
                bundle.version
            )
        })?;
        let config = self.localize(composed.config);
        // Recorded before the swap: if serving this version crashes the process, the next
        // boot knows which version did it.
        self.journal.serving(bundle.version);
        let swapped = match &self.member {
            Some(edge) => edge
                .reload(config)
                .map_err(|e| format!("version {} not applied: {e}", bundle.version)),
            None => match self.start_server(config).await {
                Ok(edge) => {
                    self.member = Some(Arc::new(edge));
                    Ok(())
                }
                Err(e) => {
                    let message = format!("cannot start serving version {}: {e}", bundle.version);
                    if matches!(e, ServerError::Bind { .. }) {
                        // A listener that cannot be bound will not bind on a retry either.
                        self.fatal = Some(e);
                    }
                    Err(message)
                }
            },
        };
        if let Err(e) = swapped {
            if let Some(cur) = &current {
                self.journal.serving(cur.version);
            }
            return Err(e);
        }
        let applied = composed.applied;
        let error = self.keep_state(&applied, signed);
        self.disk.prune(self.opts.keep.max(1), &applied.pinned());
        for f in &composed.failures {
            tracing::warn!(service = %f.service, kept = ?f.kept_version, error = %f.error, "service kept at its previous version");
        }
        tracing::info!(
            version = applied.version,
            seq = applied.seq,
            "version applied"
        );
        self.set_applied(applied, composed.failures, error);
        Ok(())
    }
}

impl<L: Launcher> Worker<L> {
    /// Keeps what runs on disk: the signed target first, then `applied.json` matching it (a
    /// crash between the two leaves a mismatch, which the next start refuses and rebuilds from
    /// the target). Returns the error to report, if any.
    fn keep_state(&self, applied: &Applied, signed: &Signed) -> Option<String> {
        let kept = self
            .disk
            .save_target(signed)
            .and_then(|()| self.disk.save_applied(&applied.record()));
        kept.err().map(|e| {
            format!(
                "version {} applied but not recorded on disk: {e}",
                applied.version
            )
        })
    }

    /// Starts the edge server for the first configuration, after closing the waiting health
    /// listener (the server binds the same admin address); reopens it if the start fails.
    async fn start_server(&mut self, config: ValidConfig) -> Result<L::Member, ServerError> {
        if let Some(w) = self.waiting.take() {
            w.stop().await;
        }
        let started = self.launcher.start(config).await;
        if let (Err(e), Some(admin)) = (&started, self.opts.admin) {
            if !matches!(e, ServerError::Bind { .. }) {
                self.waiting = WaitingHealth::start(admin).await.ok();
            }
        }
        started
    }
}

/// A random admin token for edges whose configuration has none: only requests signed by the
/// control plane (and `/healthz`) pass then.
pub fn random_token() -> String {
    let mut bytes = [0u8; 24];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: a token nobody can send (HTTP header values cannot contain NUL).
        return "\0no-token".to_owned();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
