//! The drills of issue 9, end to end over loopback: a fleet of six edges in three cells (two
//! per cell) under one control plane and one origin, with a steady client load on every edge,
//! and a bad version deployed through the normal rollout path. Each test is named after the
//! attack or accident it drills; each checks what the gate decided (and on which numbers),
//! where every edge ended up, and which clients saw failures — only the canary's, never the
//! other cells'.

use crate::harness::*;
use bytes::Bytes;
use firebreak_edge::agent::Agent;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Cells, in rollout order (the canary cell is the first by name).
const CELLS: [&str; 3] = ["c1", "c2", "c3"];
/// Edges per cell.
const PER_CELL: usize = 2;
/// One request per edge every this many ms (40 requests per second and edge).
const PERIOD_MS: u64 = 25;

/// Rollout settings of the drill fleet. `default` is what a deploy uses: the canary edge, its
/// cell, every cell; one-second bakes and looks, enough requests for a verdict in a second or
/// two of the load, at most 20 s of waiting. `hold` activates a whole cell first and bakes for
/// a minute (for the replay drill, which pauses it in its first wave). `watched` is `default`
/// with three-second bakes, so that a page polled every two seconds sees each wave
/// (`browser.rs`).
const PLANS: &str = r#"
[rollout]
edge_gone_s = 10
stage_timeout_s = 15

[[rollout.plan]]
name = "default"
waves = [{ edges = 1 }, { cells = 1 }, { percent = 100 }]
bake_s = 1
interval_s = 1
min_requests = 30
max_wait_s = 20
activate_timeout_s = 10

[[rollout.plan]]
name = "watched"
waves = [{ edges = 1 }, { cells = 1 }, { percent = 100 }]
bake_s = 3
interval_s = 1
min_requests = 30
max_wait_s = 20
activate_timeout_s = 10

[[rollout.plan]]
name = "hold"
waves = [{ cells = 1 }, { percent = 100 }]
bake_s = 60
interval_s = 1
min_requests = 30
max_wait_s = 60
activate_timeout_s = 10
"#;

/// One service of a drill document: name (host `NAME.test`), origin, and extra TOML inside
/// the service (faults).
struct Svc<'a> {
    name: &'a str,
    origin: SocketAddr,
    extra: &'a str,
}

/// A fleet document whose services answer with `x-version: <marker>`.
fn document(marker: &str, services: &[Svc<'_>]) -> String {
    let mut doc = String::from("[cache]\nmax_bytes = 67108864\nmax_object_bytes = 1048576\n");
    doc.push_str(PLANS);
    for s in services {
        doc.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n[[service.response_headers]]\nname = \"x-version\"\nop = \"set\"\nvalue = \"{marker}\"\n{extra}",
            name = s.name,
            origin = s.origin,
            extra = s.extra,
        ));
    }
    doc
}

/// Services `a` and `b` in front of `origin`, `extra_a` added to `a`.
pub(crate) fn two(marker: &str, origin: SocketAddr, a_origin: SocketAddr, extra_a: &str) -> String {
    document(
        marker,
        &[
            Svc {
                name: "a",
                origin: a_origin,
                extra: extra_a,
            },
            Svc {
                name: "b",
                origin,
                extra: "",
            },
        ],
    )
}

/// What one edge's clients saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    /// 2xx–4xx answers.
    ok: u64,
    /// 5xx answers, and requests with no answer within 5 s.
    failed: u64,
    /// 5xx answers carrying `x-request-id`.
    failed_with_request_id: u64,
    /// Answers by status (0: no answer).
    statuses: BTreeMap<u16, u64>,
    /// Failed requests by host.
    failed_hosts: BTreeMap<String, u64>,
    /// `x-version` values seen.
    versions: BTreeSet<String>,
    /// The first few failures, described.
    failures: Vec<String>,
    /// When the first and the last failure happened.
    first_failure: Option<Instant>,
    last_failure: Option<Instant>,
}

/// Which requests a load sends, in turn: (host, cached path?).
pub(crate) type Mix = Vec<(&'static str, bool)>;

/// Both services, cached and uncached paths, in equal parts.
pub(crate) fn even_mix() -> Mix {
    vec![
        ("a.test", true),
        ("a.test", false),
        ("b.test", true),
        ("b.test", false),
    ]
}

/// A steady, bounded client load: one task per edge, one request every [`PERIOD_MS`] (never
/// more than one in flight per edge).
pub(crate) struct Load {
    seen: Vec<(String, Arc<Mutex<Seen>>)>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(targets: &[(String, SocketAddr)], mix: Mix) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mix = Arc::new(mix);
        let mut seen = Vec::new();
        let mut tasks = Vec::new();
        for (id, addr) in targets {
            let s = Arc::new(Mutex::new(Seen::default()));
            seen.push((id.clone(), s.clone()));
            tasks.push(tokio::spawn(drive(*addr, mix.clone(), s, stop.clone())));
        }
        Self { seen, stop, tasks }
    }

    fn snapshot(&self) -> BTreeMap<String, Seen> {
        self.seen
            .iter()
            .map(|(id, s)| (id.clone(), s.lock().unwrap().clone()))
            .collect()
    }

    /// Waits until every edge answered `n` more requests successfully than in `since`.
    async fn wait_ok(&self, since: &BTreeMap<String, Seen>, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.snapshot();
            if now
                .iter()
                .all(|(id, s)| s.ok >= since.get(id).map_or(0, |b| b.ok) + n)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the load did not get {n} good answers from every edge: {now:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every task (each ends after its request in flight) and returns what was seen.
    pub(crate) async fn stop(mut self) -> BTreeMap<String, Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("a load task did not stop within 10 s")
                .unwrap();
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn drive(edge: SocketAddr, mix: Arc<Mix>, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(Duration::from_millis(PERIOD_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (host, cached) = mix[(n % mix.len() as u64) as usize];
        let path = if cached {
            format!("/static/{}", n % 8)
        } else {
            format!("/nocache/{n}")
        };
        n += 1;
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
                .map(str::to_owned);
            let has_id = resp.headers().contains_key("x-request-id");
            resp.into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            Ok::<_, String>((status, version, has_id))
        })
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()));
        let mut s = seen.lock().unwrap();
        match answer {
            Ok((status, version, has_id)) => {
                *s.statuses.entry(status).or_default() += 1;
                if let Some(v) = version {
                    s.versions.insert(v);
                }
                if status >= 500 {
                    s.failed += 1;
                    s.failed_with_request_id += u64::from(has_id);
                    *s.failed_hosts.entry(host.to_owned()).or_default() += 1;
                    if s.failures.len() < 10 {
                        s.failures.push(format!("{host}{path}: {status}"));
                    }
                    s.first_failure.get_or_insert_with(Instant::now);
                    s.last_failure = Some(Instant::now());
                } else {
                    s.ok += 1;
                }
            }
            Err(e) => {
                *s.statuses.entry(0).or_default() += 1;
                s.failed += 1;
                *s.failed_hosts.entry(host.to_owned()).or_default() += 1;
                if s.failures.len() < 10 {
                    s.failures.push(format!("{host}{path}: {e}"));
                }
                s.first_failure.get_or_insert_with(Instant::now);
                s.last_failure = Some(Instant::now());
            }
        }
    }
}

struct Member {
    id: String,
    cell: String,
    agent: Agent,
}

/// The drill fleet: a control plane in this process (redb), six edges in three cells, one
/// origin.
pub(crate) struct Fleet {
    pub(crate) origin: SocketAddr,
    pub(crate) c: Control,
    edges: Vec<Member>,
    /// Last: removed after the control plane and the edges have stopped.
    dir: TempDir,
}

impl Fleet {
    /// Releases `v1` (made from the origin's address) as version 1, then starts the edges and
    /// waits until every one serves it and the control plane lists all six.
    pub(crate) async fn start(name: &str, v1: impl FnOnce(SocketAddr) -> String) -> Self {
        let dir = temp_dir(name);
        let origin = origin().await;
        let c = Control::start(
            &format!("redb:{}", dir.join("control.redb").display()),
            &dir,
        )
        .await;
        // No edge yet: the first rollout has nothing to judge and completes at once.
        assert_eq!(c.release(&v1(origin)).await, 1);
        let mut edges = Vec::new();
        for cell in CELLS {
            for i in 1..=PER_CELL {
                let id = format!("{cell}-e{i}");
                let agent = edge_in(&c, &dir.join(&id), &id, &format!("pop-{cell}"), cell).await;
                edges.push(Member {
                    id,
                    cell: cell.to_owned(),
                    agent,
                });
            }
        }
        let fleet = Self {
            dir,
            origin,
            c,
            edges,
        };
        for m in &fleet.edges {
            wait_applied(&m.agent, 1).await;
        }
        fleet
            .wait_view("every edge listed on version 1", |cells| {
                cells.len() == CELLS.len()
                    && cells.iter().all(|c| {
                        c["edges"].as_array().is_some_and(|e| {
                            e.len() == PER_CELL && e.iter().all(|e| e["applied"] == 1)
                        })
                    })
            })
            .await;
        fleet
    }

    pub(crate) fn targets(&self) -> Vec<(String, SocketAddr)> {
        self.edges
            .iter()
            .map(|m| (m.id.clone(), addr(&m.agent)))
            .collect()
    }

    /// Starts the load and waits until every edge answered a few requests (so that every edge
    /// has sent health counts on version 1 before anything is deployed).
    pub(crate) async fn load(&self, mix: Mix) -> Load {
        let load = Load::start(&self.targets(), mix);
        load.wait_ok(&BTreeMap::new(), 40).await;
        load
    }

    /// Stores `doc` as the next version (not rolled out); returns its number.
    pub(crate) async fn push(&self, doc: &str) -> u64 {
        let (status, v) = self
            .c
            .call(
                Method::POST,
                "/v1/versions",
                Some(json!({"file": "fleet.toml", "document": doc, "message": "drill"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["version"].as_u64().unwrap()
    }

    /// Deploys `version` through the normal rollout path on `plan`; returns the rollout id.
    pub(crate) async fn deploy(&self, version: u64, plan: &str) -> u64 {
        let (status, r) = self
            .c
            .call(
                Method::POST,
                "/v1/rollouts",
                Some(json!({"version": version, "plan": plan, "message": "drill"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        r["id"].as_u64().unwrap()
    }

    /// Waits until the `cells` of `GET /v1/rollout` satisfy `check`; returns the view.
    async fn wait_view(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, view) = self.c.call(Method::GET, "/v1/rollout", None).await;
            assert_eq!(status, StatusCode::OK, "{view}");
            if view["cells"].as_array().is_some_and(|c| check(c)) {
                return view;
            }
            assert!(Instant::now() < deadline, "never saw {what}: {view:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every edge runs `version`, as the edges and the control plane see it, and
    /// answers for both services with its marker.
    pub(crate) async fn all_on(&self, version: u64, marker: &str) {
        for m in &self.edges {
            wait_applied(&m.agent, version).await;
        }
        self.wait_view(&format!("every edge on version {version}"), |cells| {
            cells.iter().all(|c| {
                c["edges"]
                    .as_array()
                    .is_some_and(|e| e.iter().all(|e| e["applied"] == version))
            })
        })
        .await;
        for m in &self.edges {
            for host in ["a.test", "b.test"] {
                let (status, v, _) = through(addr(&m.agent), host, "/static/check").await;
                assert_eq!((status, v.as_str()), (200, marker), "edge {} {host}", m.id);
            }
        }
    }

    /// The audit entries of rollout `id`, oldest first.
    async fn audit(&self, id: u64) -> Vec<Value> {
        // The audit entry of a rollout's last step is appended right after the step is
        // stored: wait (bounded) until the entries reach an ending action.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, log) = self.c.call(Method::GET, "/v1/audit?limit=500", None).await;
            assert_eq!(status, StatusCode::OK, "{log}");
            let entries: Vec<Value> = log
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["rollout"] == id)
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

    fn cell_of(&self, id: &str) -> &str {
        &self.edges.iter().find(|m| m.id == id).unwrap().cell
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for m in &self.edges {
            m.agent.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a drill that the gate catches must show: the rollout of `version` (rollout `id`)
/// ended rolled back on a failed gate, and its outcome names the failing check; every edge is
/// back on version 1 and serves it; only the canary edge ever served the version, only its
/// clients saw failures (none in the other cells, none on its cell's other edge), and the
/// audit log tells the story with the gate's numbers. Returns the failing check and what the
/// canary's clients saw.
async fn caught(fleet: &Fleet, load: Load, version: u64, id: u64) -> (Value, Seen) {
    let view = fleet.c.wait_rollout(version, "rolled_back").await;
    let r = &view["rollout"];
    assert_eq!(r["id"], id, "{view:#}");
    let outcome = r["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("rolled back to version 1: gate failed in wave 1"),
        "{outcome}"
    );
    let gate = &r["last_gate"];
    assert_eq!(gate["verdict"], "fail", "{view:#}");
    assert_eq!(view["gate"]["verdict"], "fail", "{view:#}");
    let failing = gate["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["failed"] == true)
        .cloned()
        .unwrap_or_else(|| panic!("no failed check in {gate:#}"));
    let named = format!(
        "{} {}",
        failing["scope"].as_str().unwrap(),
        failing["metric"].as_str().unwrap()
    );
    assert!(outcome.contains(&named), "{outcome} does not name {named}");
    // A failure needs no `min_requests`, only the gate's smallest sample (20 requests).
    assert!(gate["wave_requests"].as_u64().unwrap() >= 20, "{gate:#}");
    assert!(gate["baseline_requests"].as_u64().unwrap() > 0, "{gate:#}");
    // The wave was the canary edge alone, in the first cell.
    assert_eq!(r["cells"], json!(CELLS), "{view:#}");
    let canary = r["canary_edges"][0].as_str().unwrap().to_owned();
    assert_eq!(canary, "c1-e1");
    assert_eq!(r["wave"], 0, "{view:#}");

    fleet.all_on(1, "v1").await;
    gate_incident(fleet, id).await;
    // The load keeps going a little on version 1 everywhere, then stops.
    let after = load.snapshot();
    load.wait_ok(&after, 20).await;
    let seen = load.stop().await;
    for (edge, s) in &seen {
        if *edge == canary {
            assert!(s.failed > 0, "the canary's clients saw no failure: {s:#?}");
            assert!(s.versions.contains("v2"), "{s:#?}");
            // Its failures ended with the rollback.
            let tail = &after[edge];
            assert_eq!(
                s.failed, tail.failed,
                "the canary failed requests after it was back on version 1: {s:#?}"
            );
        } else {
            assert_eq!(
                s.failed,
                0,
                "edge {edge} (cell {}) failed requests during the drill: {s:#?}",
                fleet.cell_of(edge)
            );
            assert_eq!(
                s.versions,
                BTreeSet::from(["v1".to_owned()]),
                "edge {edge} served another version: {s:#?}"
            );
        }
    }
    // The audit log: deploy, the canary wave, the rollback with the gate's numbers.
    let entries = fleet.audit(id).await;
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["deploy", "wave", "rolled-back"], "{entries:#?}");
    assert!(entries[1]["message"]
        .as_str()
        .unwrap()
        .contains("edges [c1-e1]"));
    let rolled = &entries[2];
    assert_eq!(rolled["who"], "gate", "{rolled:#}");
    assert_eq!(rolled["message"], outcome, "{rolled:#}");
    assert_eq!(rolled["gate"]["verdict"], "fail", "{rolled:#}");
    assert!(rolled["gate"]["wave_requests"].as_u64().unwrap() > 0);
    assert!(rolled["gate"]["z_critical"].as_f64().unwrap() > 0.0);
    assert!(rolled["gate"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["failed"] == true && c["z"].as_f64().unwrap() > 0.0));
    (failing, seen[&canary].clone())
}

/// The tripped gate opened an incident on the public status page by itself (one, naming the
/// canary's POP), which resolves by itself once every edge is back on the fleet's version.
async fn gate_incident(fleet: &Fleet, rollout: u64) {
    let condition = format!("gate/{rollout}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, book) = fleet.c.call(Method::GET, "/v1/incidents", None).await;
        assert_eq!(status, StatusCode::OK, "{book:#}");
        let mine: Vec<&Value> = book["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["automatic"] == condition.as_str())
            .collect();
        assert!(mine.len() <= 1, "one incident per gate trip: {book:#}");
        let Some(incident) = mine.first() else {
            // Opened just after the rollback is stored: not yet.
            assert!(Instant::now() < deadline, "the gate opened no incident");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        assert!(
            incident["components"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c.as_str().unwrap().starts_with("pop/")),
            "{incident:#}"
        );
        if incident["state"] == "resolved" {
            assert_eq!(incident["updates"][0]["by"], "firebreak", "{incident:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gate's incident was never resolved: {incident:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The public page shows it in its history, without a token.
    let (status, page) = http(Method::GET, &format!("{}/status", fleet.c.url), "", None).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("Configuration change rolled back"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_pointing_at_a_closed_port_stays_in_the_canary_and_is_rolled_back() {
    let fleet = Fleet::start("closed-port", |o| two("v1", o, o, "")).await;
    let load = fleet.load(even_mix()).await;
    // Version 2 differs only in service a's origin: a port nothing listens on.
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let v2 = fleet.push(&two("v2", fleet.origin, closed, "")).await;
    let id = fleet.deploy(v2, "default").await;
    let (failing, canary) = caught(&fleet, load, v2, id).await;
    assert!(
        failing["scope"] == "total" || failing["scope"] == "service:a",
        "{failing:#}"
    );
    // Only service a failed on the canary.
    assert_eq!(
        canary.failed_hosts.keys().collect::<Vec<_>>(),
        ["a.test"],
        "{canary:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_503_fault_is_caught_by_the_gate() {
    let fleet = Fleet::start("fault-503", |o| two("v1", o, o, "")).await;
    let load = fleet.load(even_mix()).await;
    let fault = "[[service.fault]]\naction = \"status\"\nstatus = 503\npercent = 50\n";
    let v2 = fleet
        .push(&two("v2", fleet.origin, fleet.origin, fault))
        .await;
    let id = fleet.deploy(v2, "default").await;
    let (failing, canary) = caught(&fleet, load, v2, id).await;
    assert_eq!(failing["metric"], "5xx", "{failing:#}");
    assert_eq!(
        canary
            .statuses
            .keys()
            .filter(|s| **s >= 500)
            .collect::<Vec<_>>(),
        [&503],
        "{canary:#?}"
    );
    assert_eq!(canary.failed_with_request_id, canary.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_cannot_be_built_stops_at_stage() {
    let fleet = Fleet::start("fail-build", |o| two("v1", o, o, "")).await;
    let load = fleet.load(even_mix()).await;
    let fault = "[[service.fault]]\naction = \"fail_build\"\n";
    let v2 = fleet
        .push(&two("v2", fleet.origin, fleet.origin, fault))
        .await;
    let id = fleet.deploy(v2, "default").await;
    let view = fleet.c.wait_rollout(v2, "stage_failed").await;
    let outcome = view["rollout"]["outcome"].as_str().unwrap();
    let named: Vec<&str> = fleet
        .edges
        .iter()
        .map(|m| m.id.as_str())
        .filter(|id| outcome.contains(&format!("edge {id} cannot stage version {v2}")))
        .collect();
    assert_eq!(named.len(), 1, "the outcome names no edge: {outcome}");
    assert!(outcome.contains("fail_build"), "no reason in: {outcome}");
    // Nothing was ever activated: no cell or edge override, no edge on version 2.
    assert_eq!(view["fleet_version"], 1, "{view:#}");
    fleet.all_on(1, "v1").await;
    let state = fleet.c.store.state().await.unwrap().unwrap();
    assert!(
        state.cells.is_empty() && state.edges.is_empty(),
        "{state:?}"
    );
    let after = load.snapshot();
    load.wait_ok(&after, 10).await;
    let seen = load.stop().await;
    for (edge, s) in &seen {
        assert_eq!(s.failed, 0, "edge {edge} failed requests: {s:#?}");
        assert_eq!(
            s.versions,
            BTreeSet::from(["v1".to_owned()]),
            "{edge}: {s:#?}"
        );
    }
    for m in &fleet.edges {
        let s = m.agent.status();
        assert_eq!(s.applied.unwrap().version, 1, "{}", m.id);
        let staged = s.staged.unwrap();
        assert_eq!(staged.version, v2, "{}", m.id);
        assert!(
            staged
                .error
                .as_deref()
                .is_some_and(|e| e.contains("fail_build")),
            "{}: {staged:?}",
            m.id
        );
    }
    let actions: Vec<String> = fleet
        .audit(id)
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["deploy", "stage-failed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_panics_every_request_is_caught_and_rolled_back() {
    let fleet = Fleet::start("panic", |o| two("v1", o, o, "")).await;
    let load = fleet.load(even_mix()).await;
    let fault = "[[service.fault]]\naction = \"panic\"\n";
    let v2 = fleet
        .push(&two("v2", fleet.origin, fleet.origin, fault))
        .await;
    let id = fleet.deploy(v2, "default").await;
    let (failing, canary) = caught(&fleet, load, v2, id).await;
    assert_eq!(failing["metric"], "5xx", "{failing:#}");
    // Every panic was answered: a 500 with a request id, never a dropped connection.
    assert_eq!(
        canary
            .statuses
            .keys()
            .filter(|s| **s >= 500 || **s == 0)
            .collect::<Vec<_>>(),
        [&500],
        "{canary:#?}"
    );
    assert_eq!(canary.failed_with_request_id, canary.failed, "{canary:#?}");
    assert_eq!(canary.failed_hosts.keys().collect::<Vec<_>>(), ["a.test"]);
    // The canary edge lives on and serves both services.
    let canary_edge = &fleet.edges[0];
    assert_eq!(canary_edge.id, "c1-e1");
    for host in ["a.test", "b.test"] {
        assert_eq!(
            through(addr(&canary_edge.agent), host, "/nocache/after").await,
            (200, "v1".into(), "origin says /nocache/after".into())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_tenant_trips_the_gate_while_the_fleet_barely_moves() {
    // Service a is the big tenant (nine requests in ten), b the small one. Version 2 makes a
    // fifth of b's requests fail: 2% of all traffic — under the total's threshold (1 point
    // above the baseline's 0) for hundreds of requests, but plain in b's own numbers.
    let fleet = Fleet::start("tenant", |o| two("v1", o, o, "")).await;
    let mut mix: Mix = Vec::new();
    for i in 0..9 {
        mix.push(("a.test", i % 2 == 0));
    }
    mix.push(("b.test", false));
    let load = fleet.load(mix).await;
    let fault = "[[service.fault]]\naction = \"status\"\nstatus = 503\npercent = 20\n";
    let v2 = fleet
        .push(&document(
            "v2",
            &[
                Svc {
                    name: "a",
                    origin: fleet.origin,
                    extra: "",
                },
                Svc {
                    name: "b",
                    origin: fleet.origin,
                    extra: fault,
                },
            ],
        ))
        .await;
    let id = fleet.deploy(v2, "default").await;
    let (failing, canary) = caught(&fleet, load, v2, id).await;
    assert_eq!(failing["scope"], "service:b", "{failing:#}");
    assert_eq!(failing["metric"], "5xx", "{failing:#}");
    let view = fleet.c.wait_rollout(v2, "rolled_back").await;
    let checks = view["rollout"]["last_gate"]["checks"]
        .as_array()
        .unwrap()
        .clone();
    let total = checks
        .iter()
        .find(|c| c["scope"] == "total" && c["metric"] == "5xx")
        .unwrap();
    assert_eq!(total["failed"], false, "{checks:#?}");
    assert!(total["wave"].as_f64().unwrap() < 0.05, "{total:#}");
    // The big tenant never failed anywhere; the canary's clients saw only b's 503s.
    assert_eq!(
        canary.failed_hosts.keys().collect::<Vec<_>>(),
        ["b.test"],
        "{canary:#?}"
    );
    let total_requests: u64 = canary.statuses.values().sum();
    assert!(
        canary.failed * 10 < total_requests,
        "the fleet moved too much: {canary:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_target_cannot_be_replayed_to_another_cell() {
    let fleet = Fleet::start("replay", |o| two("v1", o, o, "")).await;
    let v2 = fleet.push(&two("v2", fleet.origin, fleet.origin, "")).await;
    // The `hold` plan activates cell c1 first and bakes for a minute; pause it there.
    fleet.deploy(v2, "hold").await;
    fleet.c.wait_rollout(v2, "wave").await;
    for m in fleet.edges.iter().filter(|m| m.cell == "c1") {
        wait_applied(&m.agent, v2).await;
    }
    let (status, r) = fleet
        .c
        .call(
            Method::POST,
            "/v1/rollout/pause",
            Some(json!({"message": "replay drill"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    // The signed statement that moved cell c1 to version 2, served to cell c2 as its own
    // override (as a compromised or buggy store or replica might).
    let mut state = fleet.c.store.state().await.unwrap().unwrap();
    let stolen = state
        .cells
        .get("c1")
        .cloned()
        .expect("no target for cell c1");
    assert_eq!(stolen.version, v2);
    assert!(!state.cells.contains_key("c2"), "{state:?}");
    let previous = state.seq;
    state.seq += 1;
    state.cells.insert("c2".into(), stolen);
    assert!(fleet.c.store.set_state(previous, &state).await.unwrap());
    for m in fleet.edges.iter().filter(|m| m.cell == "c2") {
        wait_for(&m.agent, "the replayed target refused", |s| {
            s.misaddressed > 0
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("addressed to cell:c1"))
        })
        .await;
        let s = m.agent.status();
        assert_eq!(s.applied.unwrap().version, 1, "{}", m.id);
        for host in ["a.test", "b.test"] {
            assert_eq!(through(addr(&m.agent), host, "/").await.1, "v1");
        }
    }
    // The control plane shows why: the edges report the refusal.
    fleet
        .wait_view("cell c2 reporting the refusal", |cells| {
            cells.iter().filter(|c| c["cell"] == "c2").all(|c| {
                c["edges"].as_array().unwrap().iter().all(|e| {
                    e["applied"] == 1 && e["error"].as_str().is_some_and(|m| m.contains("refused"))
                })
            })
        })
        .await;
    // Cell c3 never saw anything; c1 serves version 2.
    for m in &fleet.edges {
        let s = m.agent.status();
        let want = if m.cell == "c1" { v2 } else { 1 };
        assert_eq!(s.applied.unwrap().version, want, "{}", m.id);
        if m.cell == "c3" {
            assert_eq!(s.misaddressed, 0);
        }
    }
    // Aborting puts everyone back on version 1.
    let (status, r) = fleet
        .c
        .call(
            Method::POST,
            "/v1/rollout/abort",
            Some(json!({"message": "end of drill"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    fleet.c.wait_rollout(v2, "rolled_back").await;
    fleet.all_on(1, "v1").await;
}
