//! Drills of issue 9 that need real processes: `firebreak control` and `firebreak edge`
//! started from the binary under test, on loopback ports, with a data directory each. An edge
//! that crash-loops on a version must end up in safe mode and the rollout rolled back; a
//! control plane killed with SIGKILL in the middle of a rollout must resume it from the stored
//! wave when it comes back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

/// The fleet tests' harness (its origin), shared rather than copied. It loads
/// `procs/temp_dir.rs` for itself, as `procs` below does: two copies of one small guard type.
#[path = "fleet/harness.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod harness;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod procs;
use procs::{free_port, log_file, temp_dir, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_firebreak");
const OPERATOR: &str = "drill-operator-token-0123";
const EDGE: &str = "drill-edge-token-456789ab";

/// A fleet document: services `a` and `b` in front of `origin`, answering with
/// `x-version: <marker>`; `rollout` is the `[rollout]` section; `extra_a` goes into `a`.
fn document(origin: SocketAddr, marker: &str, rollout: &str, extra_a: &str) -> String {
    let mut doc = String::from("[cache]\nmax_bytes = 67108864\nmax_object_bytes = 1048576\n");
    doc.push_str(rollout);
    for (name, extra) in [("a", extra_a), ("b", "")] {
        doc.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n[[service.response_headers]]\nname = \"x-version\"\nop = \"set\"\nvalue = \"{marker}\"\n{extra}"
        ));
    }
    doc
}

/// A `firebreak control` process on 127.0.0.1:`port` over `dir`.
struct ControlProc {
    url: String,
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl ControlProc {
    fn start(dir: &Path, port: u16) -> Self {
        let mut c = Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir: dir.to_owned(),
            proc: None,
        };
        c.restart();
        c
    }

    /// Starts the process (again) and waits until it listens and has written its public key.
    fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new(BIN)
            .args([
                "control",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--data-dir",
                self.dir.to_str().unwrap(),
            ])
            .env("FIREBREAK_TOKEN", OPERATOR)
            .env("FIREBREAK_EDGE_TOKEN", EDGE)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, "control"))
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || !self.trust().exists()
        {
            assert!(
                Instant::now() < deadline,
                "control plane did not start; see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        let mut p = self.proc.take().expect("control plane not running");
        p.0.kill().unwrap();
        p.0.wait().unwrap();
    }

    /// The public key file the process wrote.
    fn trust(&self) -> PathBuf {
        self.dir.join("control.pub")
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {OPERATOR}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .expect("no answer from the control plane in 30 s")
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Stores `doc` as the next version; `activate` also rolls it out on the default plan.
    async fn push(&self, doc: &str, activate: bool) -> u64 {
        let (status, v) = self
            .call(
                Method::POST,
                "/v1/versions",
                Some(json!({"file": "fleet.toml", "document": doc, "message": "drill", "activate": activate})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["version"].as_u64().unwrap()
    }

    async fn deploy(&self, version: u64) -> u64 {
        let (status, r) = self
            .call(
                Method::POST,
                "/v1/rollouts",
                Some(json!({"version": version, "message": "drill"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        r["id"].as_u64().unwrap()
    }

    /// Waits until `GET /v1/rollout` satisfies `check`; returns the view.
    async fn wait_rollout(&self, what: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, view) = self.call(Method::GET, "/v1/rollout", None).await;
            if check(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "never saw {what}: {view:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `GET /v1/fleet` satisfies `check`; returns it.
    async fn wait_fleet(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, fleet) = self.call(Method::GET, "/v1/fleet", None).await;
            let rows = fleet.as_array().cloned().unwrap_or_default();
            if check(&rows) {
                return rows;
            }
            assert!(Instant::now() < deadline, "never saw {what}: {fleet:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn audit(&self, rollout: u64) -> Vec<Value> {
        // The audit entry of a rollout's last step is appended right after the step is
        // stored: wait (bounded) until the entries reach an ending action.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, log) = self.call(Method::GET, "/v1/audit?limit=500", None).await;
            assert_eq!(status, StatusCode::OK, "{log}");
            let entries: Vec<Value> = log
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["rollout"] == rollout)
                .cloned()
                .collect();
            let ended = entries.last().is_some_and(|e| {
                matches!(
                    e["action"].as_str(),
                    Some("complete" | "rolled-back" | "stage-failed" | "held")
                )
            });
            if ended || std::time::Instant::now() >= deadline {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How to start one edge process.
#[derive(Clone)]
struct EdgeSpec {
    id: String,
    cell: String,
    port: u16,
    data: PathBuf,
}

impl EdgeSpec {
    fn new(dir: &Path, cell: &str) -> Self {
        let id = format!("edge-{cell}");
        Self {
            data: dir.join(&id),
            id,
            cell: cell.to_owned(),
            port: free_port(),
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn spawn(&self, control: &str, trust: &Path) -> Child {
        std::fs::create_dir_all(&self.data).unwrap();
        Command::new(BIN)
            .args([
                "edge",
                "--control",
                control,
                "--trust",
                trust.to_str().unwrap(),
                "--data-dir",
                self.data.to_str().unwrap(),
                "--id",
                &self.id,
                "--pop",
                &format!("pop-{}", self.cell),
                "--cell",
                &self.cell,
                "--listen",
                &self.addr().to_string(),
                "--heartbeat-ms",
                "300",
                "--health-interval-ms",
                "300",
                "--safe-mode-crashes",
                "2",
                "--safe-mode-window-s",
                "60",
            ])
            .env("FIREBREAK_EDGE_TOKEN", EDGE)
            // An aborting edge may leave a core file: in its own directory, removed at the end.
            .current_dir(&self.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&self.data, "edge"))
            .spawn()
            .unwrap()
    }
}

/// Restarts edge processes that exit, as `firebreak up` (or systemd) would, and records every
/// exit. At most [`Supervisor::MAX_RESTARTS`] restarts per edge.
struct Supervisor {
    slots: Arc<Mutex<Vec<Slot>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Slot {
    spec: EdgeSpec,
    child: Child,
    exits: Vec<ExitStatus>,
}

impl Supervisor {
    const MAX_RESTARTS: usize = 10;

    fn start(control: &ControlProc, specs: &[EdgeSpec]) -> Self {
        let slots: Vec<Slot> = specs
            .iter()
            .map(|s| Slot {
                spec: s.clone(),
                child: s.spawn(&control.url, &control.trust()),
                exits: Vec::new(),
            })
            .collect();
        let slots = Arc::new(Mutex::new(slots));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (slots, stop) = (slots.clone(), stop.clone());
            let (url, trust) = (control.url.clone(), control.trust());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for slot in slots.lock().unwrap().iter_mut() {
                        if let Ok(Some(status)) = slot.child.try_wait() {
                            slot.exits.push(status);
                            if slot.exits.len() <= Self::MAX_RESTARTS {
                                slot.child = slot.spec.spawn(&url, &trust);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self {
            slots,
            stop,
            thread: Some(thread),
        }
    }

    /// Exits seen so far, per edge id.
    fn exits(&self) -> Vec<(String, Vec<ExitStatus>)> {
        self.slots
            .lock()
            .unwrap()
            .iter()
            .map(|s| (s.spec.id.clone(), s.exits.clone()))
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(mut slots) = self.slots.lock() {
            for s in slots.iter_mut() {
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
        }
    }
}

/// One GET through an edge: status and `x-version`, or why there was no answer.
async fn through(
    client: &Client<HttpConnector, Full<Bytes>>,
    edge: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let req = Request::get(format!("http://{edge}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let version = resp
            .headers()
            .get("x-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, version))
    })
    .await;
    answer.unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

/// Waits until every edge answers for both services with `marker`.
async fn all_serve(edges: &[EdgeSpec], marker: &str) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(30);
    for e in edges {
        for host in ["a.test", "b.test"] {
            loop {
                let got = through(&client, e.addr(), host, "/static/x").await;
                if got == Ok((200, marker.to_owned())) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "edge {} never served {marker} for {host}: {got:?}",
                    e.id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_on_load_version_triggers_safe_mode() {
    let dir = temp_dir("drills", "safe-mode");
    let origin = harness::origin().await;
    let control = ControlProc::start(&dir.join("control"), free_port());
    // The canary cell first, then every cell. No traffic is required for a verdict
    // (min_requests = 0): this drill is about the crash loop, not the gate's statistics. The
    // activation timeout is long so that safe mode, not the timeout, decides.
    let rollout = r#"
[rollout]
edge_gone_s = 10
stage_timeout_s = 20
[[rollout.plan]]
name = "default"
waves = [{ cells = 1 }, { percent = 100 }]
bake_s = 1
interval_s = 1
min_requests = 0
max_wait_s = 30
activate_timeout_s = 30
"#;
    // No edge yet: version 1's own rollout has nothing to judge and completes at once.
    assert_eq!(
        control
            .push(&document(origin, "v1", rollout, ""), true)
            .await,
        1
    );
    control
        .wait_rollout("version 1 complete", 20, |v| {
            v["rollout"]["version"] == 1 && v["rollout"]["phase"] == "complete"
        })
        .await;
    let edges: Vec<EdgeSpec> = ["c1", "c2", "c3"]
        .iter()
        .map(|c| EdgeSpec::new(&dir, c))
        .collect();
    let supervisor = Supervisor::start(&control, &edges);
    control
        .wait_fleet("three edges on version 1", |f| {
            f.len() == 3 && f.iter().all(|e| e["applied_version"] == 1)
        })
        .await;
    all_serve(&edges, "v1").await;

    // Version 2 carries a latent crash: building it (staging) works, serving it aborts.
    let crash = "[[service.fault]]\naction = \"crash_on_load\"\n";
    let v2 = control
        .push(&document(origin, "v2", rollout, crash), false)
        .await;
    let id = control.deploy(v2).await;
    let view = control
        .wait_rollout("the rollout rolled back", 60, |v| {
            v["rollout"]["id"] == id && v["rollout"]["phase"] == "rolled_back"
        })
        .await;
    let outcome = view["rollout"]["outcome"].as_str().unwrap();
    assert!(
        outcome.contains("edge edge-c1 crash-looped on version 2") && outcome.contains("safe mode"),
        "{outcome}"
    );
    assert_eq!(view["rollout"]["wave"], 0, "stopped in the canary wave");
    // The canary reports the version as bad and runs version 1; everyone runs version 1.
    let fleet = control
        .wait_fleet("every edge back on version 1", |f| {
            f.len() == 3 && f.iter().all(|e| e["applied_version"] == 1)
        })
        .await;
    for e in &fleet {
        let bad: Vec<u64> = serde_json::from_value(e["bad_versions"].clone()).unwrap();
        if e["id"] == "edge-c1" {
            assert_eq!(bad, [v2], "{e:#}");
        } else {
            assert!(bad.is_empty(), "{e:#}");
        }
    }
    all_serve(&edges, "v1").await;
    // Two crashes (the activation, and again after the first restart), then the safe-mode
    // boot that stays up. The other cells never took the version and never exited.
    for (edge, exits) in supervisor.exits() {
        if edge == "edge-c1" {
            assert_eq!(exits.len(), 2, "{edge}: {exits:?}");
            assert!(exits.iter().all(|s| !s.success()), "{exits:?}");
        } else {
            assert!(exits.is_empty(), "{edge} exited: {exits:?}");
        }
    }
    let actions: Vec<String> = control
        .audit(id)
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["deploy", "wave", "rolled-back"]);
    drop(supervisor);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the clients of one edge saw.
#[derive(Debug, Default, Clone)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_killed_mid_wave_resumes_on_restart() {
    let dir = temp_dir("drills", "resume");
    let origin = harness::origin().await;
    let mut control = ControlProc::start(&dir.join("control"), free_port());
    // Three waves of three seconds each. The load below is light; the plan states that no
    // traffic evidence is required (min_requests = 0) and judges only on clear failures, so
    // the drill is about where the rollout resumes, not about statistics.
    let rollout = r#"
[rollout]
edge_gone_s = 20
stage_timeout_s = 20
[[rollout.plan]]
name = "default"
waves = [{ cells = 1 }, { cells = 2 }, { percent = 100 }]
bake_s = 3
interval_s = 1
min_requests = 0
max_wait_s = 30
activate_timeout_s = 20
[rollout.plan.gate]
error_min = 0.5
max_error_rate = 0.5
p99_min_ms = 5000
"#;
    assert_eq!(
        control
            .push(&document(origin, "v1", rollout, ""), true)
            .await,
        1
    );
    control
        .wait_rollout("version 1 complete", 20, |v| {
            v["rollout"]["version"] == 1 && v["rollout"]["phase"] == "complete"
        })
        .await;
    let edges: Vec<EdgeSpec> = ["c1", "c2", "c3"]
        .iter()
        .map(|c| EdgeSpec::new(&dir, c))
        .collect();
    let _procs: Vec<Proc> = edges
        .iter()
        .map(|e| Proc(e.spawn(&control.url, &control.trust())))
        .collect();
    control
        .wait_fleet("three edges on version 1", |f| {
            f.len() == 3 && f.iter().all(|e| e["applied_version"] == 1)
        })
        .await;
    all_serve(&edges, "v1").await;

    // Steady load: ten uncached requests a second through every edge, for the whole drill.
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<Arc<Mutex<Tally>>> = edges.iter().map(|_| Arc::default()).collect();
    let load: Vec<_> = edges
        .iter()
        .zip(&tallies)
        .map(|(e, tally)| {
            let (addr, tally, stop) = (e.addr(), tally.clone(), stop.clone());
            tokio::spawn(async move {
                let client: Client<HttpConnector, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    n += 1;
                    let host = if n.is_multiple_of(2) {
                        "a.test"
                    } else {
                        "b.test"
                    };
                    let got = through(&client, addr, host, &format!("/nocache/{n}")).await;
                    let mut t = tally.lock().unwrap();
                    match got {
                        Ok((200, _)) => t.ok += 1,
                        other => t.failed.push(format!("{host} /nocache/{n}: {other:?}")),
                    }
                }
            })
        })
        .collect();
    let ok_counts = || -> Vec<u64> { tallies.iter().map(|t| t.lock().unwrap().ok).collect() };
    let wait_more_ok = |before: Vec<u64>, n: u64| {
        let tallies = tallies.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let now: Vec<u64> = tallies.iter().map(|t| t.lock().unwrap().ok).collect();
                if now.iter().zip(&before).all(|(a, b)| *a >= b + n) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the edges did not answer {n} more requests: {before:?} -> {now:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_more_ok(ok_counts(), 5).await;

    let v2 = control
        .push(&document(origin, "v2", rollout, ""), false)
        .await;
    let id = control.deploy(v2).await;
    // Into the second wave (`wave` is 0-based), then SIGKILL.
    let before = control
        .wait_rollout("the second wave", 30, |v| {
            v["rollout"]["id"] == id
                && v["rollout"]["phase"] == "wave"
                && v["rollout"]["wave"].as_u64().is_some_and(|w| w >= 1)
        })
        .await;
    control.kill();
    let wave = before["rollout"]["wave"].as_u64().unwrap();
    // The edges serve on without it.
    wait_more_ok(ok_counts(), 10).await;

    // Back on the same data directory and port: the rollout is where it was stored.
    control.restart();
    let (status, after) = control.call(Method::GET, "/v1/rollout", None).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    let r = &after["rollout"];
    assert_eq!(r["id"], id, "{after:#}");
    assert_eq!(
        r["started_ms"], before["rollout"]["started_ms"],
        "{after:#}"
    );
    assert_eq!(
        r["phase"], "wave",
        "resumed elsewhere than in a wave: {after:#}"
    );
    assert!(
        r["wave"].as_u64().unwrap() >= wave,
        "went back from wave {wave}: {after:#}"
    );
    assert_eq!(r["cells"], before["rollout"]["cells"], "{after:#}");
    let view = control
        .wait_rollout("the rollout complete", 60, |v| {
            v["rollout"]["id"] == id && v["rollout"]["phase"] != "wave"
        })
        .await;
    assert_eq!(view["rollout"]["phase"], "complete", "{view:#}");
    control
        .wait_fleet("every edge on version 2", |f| {
            f.len() == 3 && f.iter().all(|e| e["applied_version"] == v2)
        })
        .await;
    all_serve(&edges, "v2").await;
    wait_more_ok(ok_counts(), 5).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("a load task did not stop")
            .unwrap();
    }
    for (e, t) in edges.iter().zip(&tallies) {
        let t = t.lock().unwrap();
        assert!(t.failed.is_empty(), "edge {} failed requests: {t:?}", e.id);
    }
    // One deploy, each wave activated once (none again after the restart), one completion.
    let audit = control.audit(id).await;
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "deploy").count(),
        1,
        "{audit:#?}"
    );
    assert_eq!(
        actions,
        ["deploy", "wave", "wave", "wave", "complete"],
        "{audit:#?}"
    );
    for n in 1..=3 {
        let activated = format!("wave {n} of 3 activated");
        assert_eq!(
            audit
                .iter()
                .filter(|e| e["message"].as_str().unwrap().contains(&activated))
                .count(),
            1,
            "{activated}: {audit:#?}"
        );
    }
    drop(_procs);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `signal` (`STOP`, `CONT`) to a process this test started, by PID.
fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{signal} {}", child.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_back_from_a_long_outage_does_not_take_quiet_edges_for_gone() {
    // The control plane is down longer than `edge_gone_s`, and when it comes back the edges
    // have not reconnected yet (frozen here with SIGSTOP; in production: their back-off and
    // ten-second heartbeat). Every stored last-seen time is older than `edge_gone_s`; the
    // wave must not be judged as "no live edge" and passed on no evidence.
    let dir = temp_dir("drills", "quiet");
    let origin = harness::origin().await;
    let mut control = ControlProc::start(&dir.join("control"), free_port());
    let rollout = r#"
[rollout]
edge_gone_s = 3
stage_timeout_s = 20
[[rollout.plan]]
name = "default"
waves = [{ cells = 1 }, { percent = 100 }]
bake_s = 1
interval_s = 1
min_requests = 20
max_wait_s = 60
activate_timeout_s = 20
"#;
    control
        .push(&document(origin, "v1", rollout, ""), true)
        .await;
    control
        .wait_rollout("version 1 complete", 20, |v| {
            v["rollout"]["version"] == 1 && v["rollout"]["phase"] == "complete"
        })
        .await;
    let edges: Vec<EdgeSpec> = ["c1", "c2", "c3"]
        .iter()
        .map(|c| EdgeSpec::new(&dir, c))
        .collect();
    let procs: Vec<Proc> = edges
        .iter()
        .map(|e| Proc(e.spawn(&control.url, &control.trust())))
        .collect();
    control
        .wait_fleet("three edges on version 1", |f| {
            f.len() == 3 && f.iter().all(|e| e["applied_version"] == 1)
        })
        .await;
    let v2 = control
        .push(&document(origin, "v2", rollout, ""), false)
        .await;
    let id = control.deploy(v2).await;
    // The canary cell runs version 2; no traffic, so the wave waits for its 20 requests.
    control
        .wait_fleet("the canary on version 2", |f| {
            f.iter()
                .any(|e| e["id"] == "edge-c1" && e["applied_version"] == v2)
        })
        .await;
    control
        .wait_rollout("the canary wave", 20, |v| {
            v["rollout"]["id"] == id && v["rollout"]["phase"] == "wave"
        })
        .await;
    for p in &procs {
        signal(&p.0, "STOP");
    }
    control.kill();
    // Longer than edge_gone_s (3 s) since any edge was heard of: the clock has to pass.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    control.restart();
    // For a second the edges are still silent; the rollout stays in its first wave.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let (_, v) = control.call(Method::GET, "/v1/rollout", None).await;
        assert_eq!(v["rollout"]["id"], id, "{v:#}");
        assert_eq!(v["rollout"]["phase"], "wave", "{v:#}");
        assert_eq!(v["rollout"]["wave"], 0, "moved on without the edges: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in &procs {
        signal(&p.0, "CONT");
    }
    control
        .wait_fleet("the edges back", |f| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            f.len() == 3
                && f.iter().all(|e| {
                    e["last_seen_ms"]
                        .as_u64()
                        .is_some_and(|t| now.saturating_sub(t) < 1_000)
                })
        })
        .await;
    let (_, v) = control.call(Method::GET, "/v1/rollout", None).await;
    assert_eq!(v["rollout"]["phase"], "wave", "{v:#}");
    assert_eq!(v["rollout"]["wave"], 0, "{v:#}");
    let audit = control.audit(id).await;
    assert!(
        audit.iter().all(|e| !e["message"]
            .as_str()
            .unwrap()
            .contains("no live edge in this wave")),
        "{audit:#?}"
    );
    let (status, r) = control
        .call(
            Method::POST,
            "/v1/rollout/abort",
            Some(json!({"message": "end of drill"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    control
        .wait_fleet("every edge back on version 1", |f| {
            f.len() == 3 && f.iter().all(|e| e["applied_version"] == 1)
        })
        .await;
    drop(procs);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}
