//! Fleet simulator (issue 9, "Scale"): N lightweight simulated edges in one process, speaking
//! the real edge API to a real control plane process (`firebreak control`, redb or etcd).
//!
//! Every simulated edge does what `crates/edge/src/agent` does, minus serving traffic:
//! joins with the join token (`POST /v1/edges/{id}/join`) and uses the credential it receives
//! for everything else, registers (`PUT /v1/edges/{id}`), long-polls its target (`GET /v1/edges/{id}/target`),
//! verifies the signed target with the control plane's public key and checks its audience,
//! stages what it is asked to stage (downloads the bundle itself, checks hash and signature,
//! parses it, keeps it in memory as a real edge keeps it on disk, reports `staged`), applies
//! the version its target names (from the staged copy, verified again, as a real edge takes it
//! from disk; reports `applied_version`/`applied_seq`), heartbeats, and sends health counts
//! (a steady synthetic request rate, no errors) so that the rollout gates pass.
//!
//! For each store and fleet size: start etcd (for `etcd`) and the control plane, start the
//! edges and wait until all registered, push v1 and roll it out (the fleet's first version),
//! let it idle, then push v2 and roll it out — the measured rollout. Measured from the edges'
//! own events: time from the deploy request until every edge has staged; for every wave, time
//! from the wave's start (the `set_at_ms` of the signed cell targets the wave's step wrote)
//! until every edge that joined in that wave reported the version applied; the rollout's
//! total time; the control plane's CPU time (`/proc/PID/stat`) and memory (`VmRSS`, `VmHWM`).
//!
//! ```text
//! cargo run --release -p firebreak --features etcd --example fleet_sim -- \
//!     --edges 100,250,500,1000 --store redb,etcd --out bench/FLEET_RESULTS.md
//! ```
//!
//! Everything has a timeout; a run stops by itself and kills what it started.
#![allow(clippy::indexing_slicing)] // a measuring tool, not the product: its own fixed data

use bytes::Bytes;
use clap::Parser;
use firebreak_protocol::api::{EdgeReport, StageReport};
use firebreak_protocol::bundle::Bundle;
use firebreak_protocol::health::{Counts, HealthReport, ServiceHealth, LATENCY_BUCKETS};
use firebreak_protocol::keys::PublicKey;
use firebreak_protocol::signed::{Signed, Target};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const TOKEN: &str = "fleet-sim-operator-token-0123";
const EDGE_TOKEN: &str = "fleet-sim-edge-token-012345";
/// How long one long-poll waits (as the real agent).
const POLL_WAIT_MS: u64 = 25_000;

#[derive(Parser, Debug, Clone)]
#[command(about = "Simulate a fleet of edges against a real control plane and measure rollouts")]
struct Args {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    edges: Vec<usize>,
    /// Stores, comma-separated: `redb`, `etcd`.
    #[arg(long, value_delimiter = ',', default_value = "redb")]
    store: Vec<String>,
    /// Edges per cell.
    #[arg(long, default_value_t = 10)]
    per_cell: usize,
    /// Cells per POP.
    #[arg(long, default_value_t = 5)]
    cells_per_pop: usize,
    /// Heartbeat (a report even when nothing changed), ms; the real edge's default.
    #[arg(long, default_value_t = 10_000)]
    heartbeat_ms: u64,
    /// Health report interval, ms (the real edge's default is 5000; the plan looks every 1 s).
    #[arg(long, default_value_t = 1_000)]
    health_ms: u64,
    /// Simulated requests per second per edge (what health reports count).
    #[arg(long, default_value_t = 200)]
    rps: u64,
    /// Idle time measured between the two rollouts, s.
    #[arg(long, default_value_t = 5)]
    idle_s: u64,
    /// Longest a rollout may take, s.
    #[arg(long, default_value_t = 180)]
    rollout_timeout_s: u64,
    /// The firebreak binary (built with `--features etcd` for the etcd store).
    #[arg(long, default_value = "target/release/firebreak")]
    bin: PathBuf,
    /// etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Write a Markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The command line to print in the report (default: reconstructed).
    #[arg(long)]
    command: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Time, processes, /proc

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// A child process killed (and reaped) when dropped.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the pid of a child we started and have not reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("{} did not stop on SIGTERM; killing it", self.name);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU time (user + system) and memory of a process.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
    rss_kb: u64,
    hwm_kb: u64,
}

fn usage(pid: u32) -> Usage {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may contain spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> f64 {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let cpu_s = (field(14) + field(15)) / tick;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        cpu_s,
        rss_kb: kb("VmRSS:"),
        hwm_kb: kb("VmHWM:"),
    }
}

fn self_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn fd_limit() -> u64 {
    // SAFETY: as above.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur
        } else {
            0
        }
    }
}

fn wait_port(port: u16, limit: Duration, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not listen on port {port} within {limit:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_etcd(bin: &Path, dir: &Path) -> Result<(Proc, String), String> {
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
    let data = dir.join("etcd-data");
    let child = Command::new(bin)
        .args(["--name", "sim", "--data-dir"])
        .arg(&data)
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("sim={peer_url}"),
            "--max-request-bytes",
            "8388608",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let p = Proc {
        child,
        name: "etcd",
    };
    wait_port(client, Duration::from_secs(20), "etcd")?;
    Ok((p, format!("etcd://127.0.0.1:{client}")))
}

fn start_control(bin: &Path, dir: &Path, store: &str) -> Result<(Proc, String, PublicKey), String> {
    let port = free_port()?;
    let data = dir.join("control");
    let log = std::fs::File::create(dir.join("control.log")).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .args([
            "control",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .args(["--store", store])
        .env("FIREBREAK_TOKEN", TOKEN)
        .env("FIREBREAK_EDGE_TOKEN", EDGE_TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let p = Proc {
        child,
        name: "control plane",
    };
    wait_port(port, Duration::from_secs(30), "control plane")?;
    let pub_path = data.join("control.pub");
    let deadline = Instant::now() + Duration::from_secs(10);
    let key = loop {
        if let Ok(k) = PublicKey::from_arg(&pub_path.display().to_string()) {
            break k;
        }
        if Instant::now() > deadline {
            return Err(format!("no public key in {}", pub_path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((p, format!("http://127.0.0.1:{port}"), key))
}

// ---------------------------------------------------------------------------------------------
// HTTP

type Http = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> Http {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(usize::MAX)
        .build(c)
}

async fn call(
    http: &Http,
    method: Method,
    url: &str,
    token: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = http
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e:#}"))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), 16 << 20)
            .collect()
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

/// An operator call that must succeed; returns the JSON answer.
async fn operator(
    http: &Http,
    method: Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let body = body.map(|b| b.to_string().into_bytes());
    let (status, bytes) = call(http, method, url, TOKEN, body, Duration::from_secs(30)).await?;
    if !status.is_success() {
        return Err(format!(
            "{url}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Simulated edges

/// What the simulated edges record (the measurements come from these).
#[derive(Debug, Clone)]
enum Event {
    /// The first report was accepted.
    Registered,
    /// A target asking to stage `version` arrived (the long-poll woke).
    StageAsked { version: u64, at_us: u64 },
    /// The bundle of a staged `version` was downloaded and verified.
    StageVerified { version: u64, at_us: u64 },
    /// A `staged` report for `version` was accepted.
    Staged {
        edge: usize,
        version: u64,
        at_us: u64,
    },
    /// A report naming `version` applied (from another version) was accepted.
    Applied {
        edge: usize,
        version: u64,
        /// When the control plane signed the target that said so (ms since the epoch).
        set_at_ms: u64,
        audience: String,
        at_us: u64,
    },
}

#[derive(Default)]
struct Counters {
    http_errors: u64,
    /// The last HTTP failure, for the log.
    last_error: Option<String>,
    refused_targets: u64,
    bundle_downloads: u64,
    bundle_bytes: u64,
    reports: u64,
    health_reports: u64,
    polls: u64,
}

struct Shared {
    http: Http,
    base: String,
    key: PublicKey,
    health_every: Duration,
    heartbeat_every: Duration,
    rps: u64,
    events: Mutex<Vec<Event>>,
    counters: Mutex<Counters>,
}

impl Shared {
    fn event(&self, e: Event) {
        if let Ok(mut v) = self.events.lock() {
            v.push(e);
        }
    }

    fn failed(&self, e: String) {
        self.count(|c| {
            c.http_errors += 1;
            c.last_error = Some(e);
        });
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        if let Ok(mut c) = self.counters.lock() {
            f(&mut c);
        }
    }
}

#[derive(Default)]
struct EdgeState {
    applied: Option<u64>,
    applied_seq: u64,
    seen_seq: u64,
    staged: Option<StageReport>,
    /// Verified bundles kept (a real edge keeps them on disk), by version: (sha256, bytes).
    kept: HashMap<u64, (String, Bytes)>,
    serving_since_ms: u64,
    error: Option<String>,
}

struct SimEdge {
    idx: usize,
    id: String,
    pop: String,
    cell: String,
    shared: Arc<Shared>,
    state: Mutex<EdgeState>,
    /// One report in flight at a time, built when its turn comes (as the real agent's
    /// `ControlClient::report_with`): a heartbeat never overtakes a newer report.
    report_turn: tokio::sync::Mutex<()>,
    /// The edge's own credential, from its join.
    credential: std::sync::OnceLock<String>,
}

impl SimEdge {
    fn credential(&self) -> &str {
        self.credential.get().map_or("", String::as_str)
    }

    /// Joins with the join token; keeps the credential answered.
    async fn join(&self) -> Result<(), String> {
        let url = format!("{}/v1/edges/{}/join", self.shared.base, self.id);
        let body = serde_json::json!({"pop": self.pop, "cell": self.cell}).to_string();
        let (status, bytes) = call(
            &self.shared.http,
            Method::POST,
            &url,
            EDGE_TOKEN,
            Some(body.into_bytes()),
            Duration::from_secs(5),
        )
        .await?;
        if status != StatusCode::CREATED {
            return Err(format!(
                "join refused: {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        let answer: firebreak_protocol::api::JoinAnswer =
            serde_json::from_slice(&bytes).map_err(|e| format!("join answer: {e}"))?;
        let credential = answer
            .credential
            .ok_or("join answer without a credential")?;
        let _ = self.credential.set(credential);
        Ok(())
    }

    fn report_body(&self) -> Vec<u8> {
        let s = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return Vec::new(),
        };
        let r = EdgeReport {
            pop: self.pop.clone(),
            cell: self.cell.clone(),
            admin_url: None,
            listen: Vec::new(),
            applied_version: s.applied,
            applied_seq: s.applied_seq,
            error: s.error.clone(),
            failed_services: Vec::new(),
            staged: s.staged.clone(),
            bad_versions: Vec::new(),
            stale: None,
            role: Default::default(),
        };
        serde_json::to_vec(&r).unwrap_or_default()
    }

    async fn report(&self) -> Result<(), String> {
        let _turn = self.report_turn.lock().await;
        let url = format!("{}/v1/edges/{}", self.shared.base, self.id);
        let out = call(
            &self.shared.http,
            Method::PUT,
            &url,
            self.credential(),
            Some(self.report_body()),
            Duration::from_secs(5),
        )
        .await;
        self.shared.count(|c| c.reports += 1);
        match out {
            Ok((s, _)) if s.is_success() => Ok(()),
            Ok((s, b)) => Err(format!(
                "report refused: {s}: {}",
                String::from_utf8_lossy(&b)
            )),
            Err(e) => Err(e),
        }
    }

    async fn register(&self) {
        let mut backoff = Duration::from_millis(100);
        while self.credential.get().is_none() {
            if self.join().await.is_err() {
                self.shared.count(|c| c.http_errors += 1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        loop {
            match self.report().await {
                Ok(()) => {
                    self.shared.event(Event::Registered);
                    return;
                }
                Err(_) => {
                    self.shared.count(|c| c.http_errors += 1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn heartbeat(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.shared.heartbeat_every).await;
            if let Err(e) = self.report().await {
                self.shared.failed(format!("heartbeat: {e}"));
            }
        }
    }

    /// Health counts: a steady `rps`, 90% cache hits, no errors, a fixed latency spread.
    fn counts(&self, since_ms: u64) -> Counts {
        let elapsed_ms = firebreak_protocol::now_ms().saturating_sub(since_ms);
        let requests = self.shared.rps * elapsed_ms / 1000;
        let origin = requests / 10;
        let mut latency = vec![0u64; LATENCY_BUCKETS];
        // 60% ≤1 ms, 20% ≤2, 10% ≤4, 6% ≤8, 3% ≤16, 1% ≤32 (rest of rounding in the first).
        let shares = [60u64, 20, 10, 6, 3, 1];
        let mut placed = 0;
        for (i, s) in shares.iter().enumerate().skip(1) {
            latency[i] = requests * s / 100;
            placed += latency[i];
        }
        latency[0] = requests - placed;
        Counts {
            requests,
            status_2xx: requests,
            origin_requests: origin,
            hits: requests - origin,
            latency,
            ..Counts::default()
        }
    }

    async fn health(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.shared.health_every).await;
            let (version, since) = match self.state.lock() {
                Ok(s) => match s.applied {
                    Some(v) => (v, s.serving_since_ms),
                    None => continue,
                },
                Err(_) => continue,
            };
            let total = self.counts(since);
            let report = HealthReport {
                version,
                since_ms: since,
                services: vec![ServiceHealth {
                    service: "demo".into(),
                    counts: total.clone(),
                }],
                total,
                cert_expiry_ms: None,
                dns: None,
            };
            let body = serde_json::to_vec(&report).unwrap_or_default();
            let url = format!("{}/v1/edges/{}/health", self.shared.base, self.id);
            let out = call(
                &self.shared.http,
                Method::POST,
                &url,
                self.credential(),
                Some(body),
                Duration::from_secs(5),
            )
            .await;
            self.shared.count(|c| c.health_reports += 1);
            match out {
                Ok((s, _)) if s.is_success() => {}
                Ok((s, b)) => self
                    .shared
                    .failed(format!("health: {s}: {}", String::from_utf8_lossy(&b))),
                Err(e) => self.shared.failed(format!("health: {e}")),
            }
        }
    }

    /// The bundle of `version` with hash `sha`: the kept copy (verified again), else a
    /// download, verified (hash, size, signature, parse) and kept.
    async fn bundle(&self, version: u64, sha: &str) -> Result<Bytes, String> {
        let kept = self.state.lock().ok().and_then(|s| {
            s.kept
                .get(&version)
                .filter(|(h, _)| h == sha)
                .map(|(_, b)| b.clone())
        });
        let bytes = match kept {
            Some(b) => b,
            None => {
                let url = format!("{}/v1/versions/{version}/bundle", self.shared.base);
                let (status, bytes) = call(
                    &self.shared.http,
                    Method::GET,
                    &url,
                    self.credential(),
                    None,
                    Duration::from_secs(30),
                )
                .await?;
                if status != StatusCode::OK {
                    return Err(format!("downloading version {version}: {status}"));
                }
                self.shared.count(|c| {
                    c.bundle_downloads += 1;
                    c.bundle_bytes += bytes.len() as u64;
                });
                bytes
            }
        };
        let bundle = Bundle::open_expecting(&bytes, &self.shared.key, sha)
            .map_err(|e| format!("version {version}: {e}"))?;
        if bundle.version != version {
            return Err(format!(
                "bundle is version {} not {version}",
                bundle.version
            ));
        }
        if let Ok(mut s) = self.state.lock() {
            s.kept.insert(version, (sha.to_owned(), bytes.clone()));
            // Keep the newest few, as the real edge prunes its disk.
            if s.kept.len() > 3 {
                if let Some(oldest) = s.kept.keys().min().copied() {
                    s.kept.remove(&oldest);
                }
            }
        }
        Ok(bytes)
    }

    /// One target, as `Worker::apply` handles it.
    async fn apply(&self, signed: &Signed) -> Result<Option<(u64, Target)>, String> {
        let target: Target = signed
            .open(&self.shared.key)
            .map_err(|e| format!("target refused: {e}"))?;
        if !target.addressed_to(&self.id, &self.cell) {
            self.shared.count(|c| c.refused_targets += 1);
            return Err(format!("target addressed to {}; refused", target.audience));
        }
        let (seen, current) = match self.state.lock() {
            Ok(s) => (s.seen_seq, s.applied),
            Err(_) => return Err("poisoned".into()),
        };
        if target.seq <= seen {
            return Ok(None);
        }
        if let Some(stage) = &target.stage {
            let already = self
                .state
                .lock()
                .ok()
                .and_then(|s| s.staged.clone())
                .is_some_and(|s| s.version == stage.version && s.error.is_none());
            if current != Some(stage.version) && !already {
                self.shared.event(Event::StageAsked {
                    version: stage.version,
                    at_us: now_us(),
                });
                let outcome = self.bundle(stage.version, &stage.bundle_sha256).await;
                if outcome.is_ok() {
                    self.shared.event(Event::StageVerified {
                        version: stage.version,
                        at_us: now_us(),
                    });
                }
                if let Ok(mut s) = self.state.lock() {
                    s.staged = Some(StageReport {
                        version: stage.version,
                        error: outcome.err(),
                    });
                }
                match self.report().await {
                    Ok(()) => self.shared.event(Event::Staged {
                        edge: self.idx,
                        version: stage.version,
                        at_us: now_us(),
                    }),
                    Err(_) => self.shared.count(|c| c.http_errors += 1),
                }
            }
        }
        let mut changed = None;
        if target.version != 0 {
            if let Some(cur) = current {
                if target.version < cur && !target.rollback {
                    return Err(format!(
                        "target version {} older than {cur} and not a rollback",
                        target.version
                    ));
                }
            }
            if current != Some(target.version) {
                self.bundle(target.version, &target.bundle_sha256).await?;
                changed = Some((target.version, target.clone()));
            }
            if let Ok(mut s) = self.state.lock() {
                if s.applied != Some(target.version) {
                    s.serving_since_ms = firebreak_protocol::now_ms();
                }
                s.applied = Some(target.version);
                s.applied_seq = target.seq;
                s.error = None;
            }
        }
        if let Ok(mut s) = self.state.lock() {
            s.seen_seq = s.seen_seq.max(target.seq);
        }
        Ok(changed)
    }

    async fn follow(self: Arc<Self>) {
        let cell = self.cell.clone(); // names are [a-z0-9-]: nothing to escape
        let mut backoff = Duration::from_millis(200);
        loop {
            let after = self.state.lock().map(|s| s.seen_seq).unwrap_or(0);
            let url = format!(
                "{}/v1/edges/{}/target?after={after}&cell={cell}&wait_ms={POLL_WAIT_MS}",
                self.shared.base, self.id
            );
            let polled = call(
                &self.shared.http,
                Method::GET,
                &url,
                self.credential(),
                None,
                Duration::from_millis(POLL_WAIT_MS + 10_000),
            )
            .await;
            self.shared.count(|c| c.polls += 1);
            match polled {
                Ok((StatusCode::OK, body)) => {
                    #[derive(Deserialize)]
                    struct Polled {
                        signed: Signed,
                    }
                    let result = match serde_json::from_slice::<Polled>(&body) {
                        Ok(p) => self.apply(&p.signed).await,
                        Err(e) => Err(format!("malformed target: {e}")),
                    };
                    let failed = result.is_err();
                    let changed = match result {
                        Ok(c) => c,
                        Err(e) => {
                            if let Ok(mut s) = self.state.lock() {
                                s.error = Some(e);
                            }
                            None
                        }
                    };
                    match self.report().await {
                        Ok(()) => {
                            if let Some((version, t)) = changed {
                                self.shared.event(Event::Applied {
                                    edge: self.idx,
                                    version,
                                    set_at_ms: t.set_at_ms,
                                    audience: t.audience,
                                    at_us: now_us(),
                                });
                            }
                        }
                        Err(e) => self.shared.failed(format!("report: {e}")),
                    }
                    if failed {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    } else {
                        backoff = Duration::from_millis(200);
                    }
                }
                Ok((StatusCode::NO_CONTENT, _)) => backoff = Duration::from_millis(200),
                Ok((s, b)) => {
                    self.shared
                        .failed(format!("poll: {s}: {}", String::from_utf8_lossy(&b)));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    self.shared.failed(format!("poll: {e}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One run

const DOCUMENT: &str = r#"[[service]]
name = "demo"
hosts = ["demo.test"]
default = true

[service.origin]
servers = [{ addr = "127.0.0.1:9" }]

[[service.response_headers]]
name = "x-version"
op = "set"
value = "MARKER"

[rollout]
edge_gone_s = 120
stage_timeout_s = 120

[[rollout.plan]]
name = "default"
waves = [{ cells = 1 }, { percent = 10 }, { percent = 50 }, { percent = 100 }]
bake_s = 1
interval_s = 1
min_requests = 100
max_wait_s = 60
activate_timeout_s = 30
"#;

#[derive(Debug, Clone, Default)]
struct WaveResult {
    wave: usize,
    new_cells: usize,
    edges: usize,
    /// Wave start to the last of its edges reporting the version applied (ms).
    max_ms: f64,
    p50_ms: f64,
    /// The wave's bake: start to the next wave's start (or completion), ms.
    length_ms: f64,
}

#[derive(Debug, Clone, Default)]
struct RunResult {
    store: String,
    edges: usize,
    cells: usize,
    register_ms: f64,
    first_rollout_ms: f64,
    staged_p50_ms: f64,
    staged_max_ms: f64,
    /// Deploy to the stage target's arrival (long-poll wake-up), p50 and max.
    asked_ms: (f64, f64),
    /// Deploy to the bundle downloaded and verified, p50 and max.
    verified_ms: (f64, f64),
    /// Deploy to wave 1's start (the control plane noticing that every edge staged).
    stage_phase_ms: f64,
    waves: Vec<WaveResult>,
    rollout_ms: f64,
    cp_cpu_rollout_s: f64,
    cp_cpu_idle_pct: f64,
    cp_rss_base_mib: f64,
    cp_rss_idle_mib: f64,
    cp_hwm_mib: f64,
    etcd_cpu_rollout_s: Option<f64>,
    etcd_rss_mib: Option<f64>,
    sim_cpu_rollout_s: f64,
    reports: u64,
    downloads: u64,
    bundle_bytes: u64,
    http_errors: u64,
    refused: u64,
    outcome: String,
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

/// Waits for the running rollout to end; returns the final `rollout` object.
async fn wait_rollout(
    http: &Http,
    base: &str,
    id: u64,
    limit: Duration,
) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + limit;
    loop {
        let view = operator(http, Method::GET, &format!("{base}/v1/rollout"), None).await?;
        let r = view.get("rollout").cloned().unwrap_or_default();
        if r.get("id").and_then(|v| v.as_u64()) == Some(id) {
            let phase = r.get("phase").and_then(|v| v.as_str()).unwrap_or("");
            if let Some(held) = r.get("held").and_then(|v| v.as_str()) {
                return Err(format!("rollout {id} held: {held}"));
            }
            if !matches!(phase, "staging" | "wave") {
                return Ok(r);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("rollout {id} did not end within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn push_and_deploy(http: &Http, base: &str, marker: &str) -> Result<(u64, u64, u64), String> {
    let doc = DOCUMENT.replace("MARKER", marker);
    let v = operator(
        http,
        Method::POST,
        &format!("{base}/v1/versions"),
        Some(serde_json::json!({"file": "fleet.toml", "document": doc, "message": marker})),
    )
    .await?;
    let version = v
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or("push answered no version")?;
    let sent_us = now_us();
    let r = operator(
        http,
        Method::POST,
        &format!("{base}/v1/rollouts"),
        Some(serde_json::json!({"version": version, "message": marker})),
    )
    .await?;
    let id = r
        .get("id")
        .and_then(|v| v.as_u64())
        .ok_or("deploy answered no rollout id")?;
    Ok((version, id, sent_us))
}

/// Parses `… wave K of N activated: cells [a, b] edges [...]` from an audit message.
fn wave_cells(message: &str) -> Option<(usize, Vec<String>)> {
    let at = message
        .rfind("; wave ")
        .map(|i| i + 2)
        .or_else(|| message.find("wave "))?;
    let rest = &message[at + 5..];
    let k: usize = rest.split_whitespace().next()?.parse().ok()?;
    let cells_at = rest.find("cells [")? + 7;
    let end = rest[cells_at..].find(']')? + cells_at;
    let cells = rest[cells_at..end]
        .split(", ")
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    Some((k, cells))
}

async fn run(args: &Args, store: &str, n: usize, http: &Http) -> Result<RunResult, String> {
    let dir = std::env::temp_dir().join(format!("fb-fleet-sim-{}-{store}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = run_in(args, store, n, http, &dir).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("logs kept in {}", dir.display());
    }
    result
}

async fn run_in(
    args: &Args,
    store: &str,
    n: usize,
    http: &Http,
    dir: &Path,
) -> Result<RunResult, String> {
    let mut etcd = None;
    let spec = match store {
        "redb" => "redb".to_owned(),
        "etcd" => {
            let (p, endpoint) = start_etcd(&args.etcd, dir)?;
            etcd = Some(p);
            endpoint
        }
        other => return Err(format!("unknown store {other}")),
    };
    let (mut control, base, key) = start_control(&args.bin, dir, &spec)?;
    let pid = control.pid();
    let etcd_pid = etcd.as_ref().map(Proc::pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_usage = usage(pid);

    let shared = Arc::new(Shared {
        http: http.clone(),
        base: base.clone(),
        key,
        health_every: Duration::from_millis(args.health_ms),
        heartbeat_every: Duration::from_millis(args.heartbeat_ms),
        rps: args.rps,
        events: Mutex::new(Vec::new()),
        counters: Mutex::new(Counters::default()),
    });
    let per_cell = args.per_cell.max(1);
    let cells = n.div_ceil(per_cell);
    let edges: Vec<Arc<SimEdge>> = (0..n)
        .map(|i| {
            let c = i / per_cell;
            Arc::new(SimEdge {
                idx: i,
                id: format!("sim-{i:05}"),
                pop: format!("pop-{:03}", c / args.cells_per_pop.max(1)),
                cell: format!("cell-{c:04}"),
                shared: shared.clone(),
                state: Mutex::new(EdgeState::default()),
                report_turn: tokio::sync::Mutex::new(()),
                credential: std::sync::OnceLock::new(),
            })
        })
        .collect();

    // Register every edge, then follow, heartbeat and report health.
    let t_reg = Instant::now();
    let mut tasks = JoinSet::new();
    for e in &edges {
        let e = e.clone();
        tasks.spawn(async move {
            e.register().await;
            let mut inner = JoinSet::new();
            inner.spawn(e.clone().heartbeat());
            inner.spawn(e.clone().health());
            e.follow().await;
        });
    }
    let registered = |shared: &Shared| {
        shared
            .events
            .lock()
            .map(|v| v.iter().filter(|e| matches!(e, Event::Registered)).count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while registered(&shared) < n {
        if Instant::now() > deadline || !control.alive() {
            return Err(format!(
                "only {} of {n} edges registered in 60 s",
                registered(&shared)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let register_ms = t_reg.elapsed().as_secs_f64() * 1000.0;

    // v1: the fleet's first version.
    let t1 = Instant::now();
    let (_, id1, _) = push_and_deploy(http, &base, "v1").await?;
    let r1 = wait_rollout(
        http,
        &base,
        id1,
        Duration::from_secs(args.rollout_timeout_s),
    )
    .await?;
    if r1.get("phase").and_then(|v| v.as_str()) != Some("complete") {
        return Err(format!(
            "first rollout ended {}",
            r1.get("outcome").unwrap_or(&serde_json::Value::Null)
        ));
    }
    let first_rollout_ms = t1.elapsed().as_secs_f64() * 1000.0;

    // Idle: every edge long-polls, heartbeats and reports health.
    let idle0 = (usage(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    let idle1 = usage(pid);
    let cp_cpu_idle_pct =
        100.0 * (idle1.cpu_s - idle0.0.cpu_s) / idle0.1.elapsed().as_secs_f64().max(0.001);
    let before = usage(pid);
    let etcd_before = etcd_pid.map(usage);
    let sim_before = self_cpu_s();
    let events_before = shared.events.lock().map(|v| v.len()).unwrap_or(0);
    let counters_before = shared
        .counters
        .lock()
        .map(|c| {
            (
                c.reports,
                c.bundle_downloads,
                c.bundle_bytes,
                c.http_errors,
                c.refused_targets,
            )
        })
        .unwrap_or_default();

    // v2: the measured rollout.
    let (v2, id2, deploy_us) = push_and_deploy(http, &base, "v2").await?;
    let r2 = wait_rollout(
        http,
        &base,
        id2,
        Duration::from_secs(args.rollout_timeout_s),
    )
    .await?;
    let done_us = now_us();
    let after = usage(pid);
    let etcd_after = etcd_pid.map(usage);
    let sim_cpu = self_cpu_s() - sim_before;
    let outcome = r2
        .get("outcome")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let phase = r2
        .get("phase")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let audit = operator(
        http,
        Method::GET,
        &format!("{base}/v1/audit?limit=200"),
        None,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let end = usage(pid);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    control.stop();
    drop(etcd);
    if let Some(e) = shared
        .counters
        .lock()
        .ok()
        .and_then(|c| c.last_error.clone())
    {
        eprintln!("   last HTTP error of the simulated edges: {e}");
    }

    let events: Vec<Event> = shared
        .events
        .lock()
        .map(|v| v[events_before..].to_vec())
        .unwrap_or_default();
    let counters = shared
        .counters
        .lock()
        .map(|c| {
            (
                c.reports,
                c.bundle_downloads,
                c.bundle_bytes,
                c.http_errors,
                c.refused_targets,
            )
        })
        .unwrap_or_default();

    // Staging: deploy request sent → each edge's accepted `staged` report.
    let mut staged: HashMap<usize, u64> = HashMap::new();
    for e in &events {
        if let Event::Staged {
            edge,
            version,
            at_us,
        } = e
        {
            if *version == v2 {
                staged.entry(*edge).or_insert(*at_us);
            }
        }
    }
    if staged.len() != n {
        return Err(format!(
            "only {} of {n} edges staged version {v2}",
            staged.len()
        ));
    }
    let since_deploy = |want: fn(&Event) -> Option<(u64, u64)>| -> Vec<f64> {
        let mut v: Vec<f64> = events
            .iter()
            .filter_map(want)
            .filter(|(version, _)| *version == v2)
            .map(|(_, at)| at.saturating_sub(deploy_us) as f64 / 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let asked = since_deploy(|e| match e {
        Event::StageAsked { version, at_us, .. } => Some((*version, *at_us)),
        _ => None,
    });
    let verified = since_deploy(|e| match e {
        Event::StageVerified { version, at_us, .. } => Some((*version, *at_us)),
        _ => None,
    });
    let mut stage_ms: Vec<f64> = staged
        .values()
        .map(|t| t.saturating_sub(deploy_us) as f64 / 1000.0)
        .collect();
    stage_ms.sort_by(f64::total_cmp);

    // Waves: the audit log names each wave's (cumulative) cells.
    let mut wave_cells_list: BTreeMap<usize, (Vec<String>, u64)> = BTreeMap::new();
    for entry in audit.as_array().cloned().unwrap_or_default() {
        if entry.get("rollout").and_then(|v| v.as_u64()) != Some(id2) {
            continue;
        }
        if entry.get("action").and_then(|v| v.as_str()) != Some("wave") {
            continue;
        }
        let msg = entry.get("message").and_then(|v| v.as_str()).unwrap_or("");
        let at = entry.get("at_ms").and_then(|v| v.as_u64()).unwrap_or(0);
        if let Some((k, cells)) = wave_cells(msg) {
            wave_cells_list.insert(k, (cells, at));
        }
    }
    let complete_ms = r2
        .get("ended_ms")
        .and_then(|v| v.as_u64())
        .unwrap_or(done_us / 1000);
    let mut applied: HashMap<usize, (u64, u64)> = HashMap::new(); // edge → (set_at_ms, at_us)
    for e in &events {
        if let Event::Applied {
            edge,
            version,
            set_at_ms,
            audience,
            at_us,
            ..
        } = e
        {
            if *version == v2 && audience.starts_with("cell:") {
                applied.entry(*edge).or_insert((*set_at_ms, *at_us));
            }
        }
    }
    let mut waves = Vec::new();
    let mut seen_cells: HashSet<String> = HashSet::new();
    let starts: Vec<(usize, u64)> = wave_cells_list
        .iter()
        .map(|(k, (_, at))| (*k, *at))
        .collect();
    for (k, (cells, _)) in &wave_cells_list {
        let new: HashSet<&String> = cells.iter().filter(|c| !seen_cells.contains(*c)).collect();
        let members: Vec<usize> = edges
            .iter()
            .filter(|e| new.contains(&e.cell))
            .map(|e| e.idx)
            .collect();
        let mut times: Vec<f64> = Vec::new();
        let mut start_ms = u64::MAX;
        for m in &members {
            if let Some((set_at, _)) = applied.get(m) {
                start_ms = start_ms.min(*set_at);
            }
        }
        for m in &members {
            if let Some((_, at)) = applied.get(m) {
                times.push((*at as f64 / 1000.0) - start_ms as f64);
            }
        }
        if times.len() != members.len() {
            return Err(format!(
                "wave {k}: only {} of {} edges reported version {v2} applied",
                times.len(),
                members.len()
            ));
        }
        times.sort_by(f64::total_cmp);
        // The wave lasts until the next wave's audit entry (or the end).
        let next = starts
            .iter()
            .find(|(j, _)| *j == k + 1)
            .map(|(_, at)| *at)
            .unwrap_or(complete_ms);
        let this_start = if start_ms == u64::MAX {
            starts
                .iter()
                .find(|(j, _)| j == k)
                .map(|(_, at)| *at)
                .unwrap_or(0)
        } else {
            start_ms
        };
        waves.push(WaveResult {
            wave: *k,
            new_cells: new.len(),
            edges: members.len(),
            max_ms: times.last().copied().unwrap_or(f64::NAN),
            p50_ms: pct(&times, 50.0),
            length_ms: next.saturating_sub(this_start) as f64,
        });
        seen_cells.extend(cells.iter().cloned());
    }
    let wave1_start = wave_cells_list.get(&1).map(|(_, at)| *at);
    let first_set_at = waves
        .first()
        .and(applied.values().map(|(s, _)| *s).min())
        .or(wave1_start)
        .unwrap_or(0);
    let started_ms = r2
        .get("started_ms")
        .and_then(|v| v.as_u64())
        .unwrap_or(deploy_us / 1000);
    Ok(RunResult {
        store: store.to_owned(),
        edges: n,
        cells,
        register_ms,
        first_rollout_ms,
        staged_p50_ms: pct(&stage_ms, 50.0),
        staged_max_ms: stage_ms.last().copied().unwrap_or(f64::NAN),
        asked_ms: (pct(&asked, 50.0), asked.last().copied().unwrap_or(f64::NAN)),
        verified_ms: (
            pct(&verified, 50.0),
            verified.last().copied().unwrap_or(f64::NAN),
        ),
        stage_phase_ms: (first_set_at as f64) - deploy_us as f64 / 1000.0,
        waves,
        rollout_ms: complete_ms.saturating_sub(started_ms) as f64,
        cp_cpu_rollout_s: after.cpu_s - before.cpu_s,
        cp_cpu_idle_pct,
        cp_rss_base_mib: mib(base_usage.rss_kb),
        cp_rss_idle_mib: mib(idle1.rss_kb),
        cp_hwm_mib: mib(end.hwm_kb.max(after.hwm_kb)),
        etcd_cpu_rollout_s: etcd_before.zip(etcd_after).map(|(b, a)| a.cpu_s - b.cpu_s),
        etcd_rss_mib: etcd_after.map(|a| mib(a.rss_kb)),
        sim_cpu_rollout_s: sim_cpu,
        reports: counters.0 - counters_before.0,
        downloads: counters.1 - counters_before.1,
        bundle_bytes: counters.2 - counters_before.2,
        http_errors: counters.3 - counters_before.3,
        refused: counters.4 - counters_before.4,
        outcome: format!("{phase}: {outcome}"),
    })
}

// ---------------------------------------------------------------------------------------------
// Report

fn ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

fn summary_table(results: &[RunResult]) -> String {
    let mut s = String::new();
    let max_waves = results.iter().map(|r| r.waves.len()).max().unwrap_or(0);
    let _ = write!(
        s,
        "| store | edges | cells | all staged (p50 / max) | stage phase |"
    );
    for w in 1..=max_waves {
        let _ = write!(s, " wave {w} activated (edges) |");
    }
    let _ = writeln!(
        s,
        " rollout total | CP CPU in rollout | CP CPU idle | CP RSS start / idle / peak | etcd CPU / RSS |"
    );
    let _ = write!(s, "|---|---:|---:|---|---:|");
    for _ in 1..=max_waves {
        let _ = write!(s, "---|");
    }
    let _ = writeln!(s, "---:|---:|---:|---|---|");
    for r in results {
        let _ = write!(
            s,
            "| {} | {} | {} | {} / {} | {} |",
            r.store,
            r.edges,
            r.cells,
            ms(r.staged_p50_ms),
            ms(r.staged_max_ms),
            ms(r.stage_phase_ms)
        );
        for w in 0..max_waves {
            match r.waves.get(w) {
                Some(w) if w.edges > 0 => {
                    let _ = write!(s, " {} ({}) |", ms(w.max_ms), w.edges);
                }
                Some(_) => {
                    let _ = write!(s, " no new cells |");
                }
                None => {
                    let _ = write!(s, " – |");
                }
            }
        }
        let _ = writeln!(
            s,
            " {} | {:.2} s | {:.1} % | {:.1} / {:.1} / {:.1} MiB | {} |",
            ms(r.rollout_ms),
            r.cp_cpu_rollout_s,
            r.cp_cpu_idle_pct,
            r.cp_rss_base_mib,
            r.cp_rss_idle_mib,
            r.cp_hwm_mib,
            match (r.etcd_cpu_rollout_s, r.etcd_rss_mib) {
                (Some(c), Some(m)) => format!("{c:.2} s / {m:.0} MiB"),
                _ => "–".into(),
            }
        );
    }
    s
}

fn detail_table(results: &[RunResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| store | edges | register all | first rollout (v1) | stage: target arrived, bundle verified, staged reported (p50 / max) | wave: new cells, edges, activation p50 / max, wave length | reports in rollout | bundle downloads (bytes) | sim CPU in rollout | HTTP errors | refused targets | outcome |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---|---|---:|---|---:|---:|---:|---|"
    );
    for r in results {
        let waves: Vec<String> = r
            .waves
            .iter()
            .map(|w| {
                format!(
                    "{}: {}c {}e {} / {}, {}",
                    w.wave,
                    w.new_cells,
                    w.edges,
                    ms(w.p50_ms),
                    ms(w.max_ms),
                    ms(w.length_ms)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} / {}, {} / {}, {} / {} | {} | {} | {} ({}) | {:.2} s | {} | {} | {} |",
            r.store,
            r.edges,
            ms(r.register_ms),
            ms(r.first_rollout_ms),
            ms(r.asked_ms.0),
            ms(r.asked_ms.1),
            ms(r.verified_ms.0),
            ms(r.verified_ms.1),
            ms(r.staged_p50_ms),
            ms(r.staged_max_ms),
            waves.join("; "),
            r.reports,
            r.downloads,
            r.bundle_bytes,
            r.sim_cpu_rollout_s,
            r.http_errors,
            r.refused,
            r.outcome.replace('|', "/")
        );
    }
    s
}

/// Least-squares slope and intercept of y over x.
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in points {
        num += (x - mx) * (y - my);
        den += (x - mx) * (x - mx);
    }
    if den == 0.0 {
        return None;
    }
    let slope = num / den;
    Some((slope, my - slope * mx))
}

fn growth(results: &[RunResult]) -> String {
    let mut s = String::new();
    let mut stores: Vec<&str> = results.iter().map(|r| r.store.as_str()).collect();
    stores.dedup();
    for store in stores {
        let rs: Vec<&RunResult> = results.iter().filter(|r| r.store == store).collect();
        let mem: Vec<(f64, f64)> = rs
            .iter()
            .map(|r| (r.edges as f64, r.cp_rss_idle_mib - r.cp_rss_base_mib))
            .collect();
        let peak: Vec<(f64, f64)> = rs
            .iter()
            .map(|r| (r.edges as f64, r.cp_hwm_mib - r.cp_rss_base_mib))
            .collect();
        let cpu: Vec<(f64, f64)> = rs
            .iter()
            .map(|r| (r.edges as f64, r.cp_cpu_rollout_s))
            .collect();
        let idle: Vec<(f64, f64)> = rs
            .iter()
            .map(|r| (r.edges as f64, r.cp_cpu_idle_pct))
            .collect();
        let line = |what: &str, pts: &[(f64, f64)], unit: &str, scale: f64| -> String {
            match fit(pts) {
                Some((a, b)) => {
                    let worst = pts
                        .iter()
                        .map(|(x, y)| (y - (a * x + b)).abs())
                        .fold(0.0, f64::max);
                    format!(
                        "- {store}: {what} ≈ {:.1} {unit} + {:.2} {unit} per {scale} edges (largest deviation from the line {:.1} {unit})\n",
                        b,
                        a * scale,
                        worst
                    )
                }
                None => String::new(),
            }
        };
        s.push_str(&line(
            "RSS after registration, above the empty process",
            &mem,
            "MiB",
            1000.0,
        ));
        s.push_str(&line(
            "peak RSS above the empty process",
            &peak,
            "MiB",
            1000.0,
        ));
        s.push_str(&line("CPU time of one rollout", &cpu, "s", 1000.0));
        s.push_str(&line("CPU while idle", &idle, "%", 1000.0));
    }
    s
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| format!(", {:.1} GiB RAM", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{n} CPUs ({cpu}){mem}")
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match real_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet_sim: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> Result<(), String> {
    let args = Args::parse();
    raise_fd_limit();
    let biggest = args.edges.iter().copied().max().unwrap_or(0) as u64;
    // Each edge may hold a long-poll, a report and a health report at once.
    if fd_limit() < biggest * 3 + 256 {
        return Err(format!(
            "the open-file limit {} is too low for {biggest} edges (raise `ulimit -n`)",
            fd_limit()
        ));
    }
    if !args.bin.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p firebreak --features etcd",
            args.bin.display()
        ));
    }
    let http = http_client();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for store in &args.store {
        for &n in &args.edges {
            eprintln!("== {store}, {n} edges");
            let started = Instant::now();
            // A run is bounded: registration, two rollouts, idle time and shutdown.
            let limit = Duration::from_secs(120 + 2 * args.rollout_timeout_s + args.idle_s);
            match tokio::time::timeout(limit, run(&args, store, n, &http)).await {
                Ok(Ok(r)) => {
                    eprintln!(
                        "   staged all {} · waves {} · rollout {} · CP CPU {:.2} s · RSS {:.1}→{:.1} MiB (peak {:.1}) · {:.0} s",
                        ms(r.staged_max_ms),
                        r.waves
                            .iter()
                            .map(|w| ms(w.max_ms))
                            .collect::<Vec<_>>()
                            .join(", "),
                        ms(r.rollout_ms),
                        r.cp_cpu_rollout_s,
                        r.cp_rss_base_mib,
                        r.cp_rss_idle_mib,
                        r.cp_hwm_mib,
                        started.elapsed().as_secs_f64()
                    );
                    results.push(r);
                }
                Ok(Err(e)) => {
                    eprintln!("   failed: {e}");
                    failures.push(format!("{store}, {n} edges: {e}"));
                }
                Err(_) => {
                    eprintln!("   timed out after {limit:?}");
                    failures.push(format!("{store}, {n} edges: timed out after {limit:?}"));
                }
            }
        }
    }
    let summary = summary_table(&results);
    println!("\n{summary}");
    println!("{}", detail_table(&results));
    println!("{}", growth(&results));
    for f in &failures {
        println!("FAILED: {f}");
    }
    if let Some(out) = &args.out {
        let command = args.command.clone().unwrap_or_else(|| {
            let argv: Vec<String> = std::env::args().skip(1).collect();
            format!(
                "cargo run --release -p firebreak --features etcd --example fleet_sim -- {}",
                argv.join(" ")
            )
        });
        let mut md = String::new();
        let _ = writeln!(md, "# Fleet simulator: rollouts to 100–1,000 edges\n");
        let _ = writeln!(
            md,
            "{} UTC, commit {}, {}.\n`{command}`\n",
            chrono_like_now(),
            git(&["rev-parse", "--short", "HEAD"]),
            machine()
        );
        md.push_str(&summary);
        md.push('\n');
        md.push_str(&detail_table(&results));
        md.push_str("\nGrowth (least-squares line over the fleet sizes):\n\n");
        md.push_str(&growth(&results));
        for f in &failures {
            let _ = writeln!(md, "\nFAILED: {f}");
        }
        std::fs::write(out, md).map_err(|e| format!("{}: {e}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} run(s) failed", failures.len()))
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) without a date crate.
fn chrono_like_now() -> String {
    let secs = firebreak_protocol::now_ms() / 1000;
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
}
