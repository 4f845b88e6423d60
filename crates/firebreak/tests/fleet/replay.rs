//! Signed statements cannot be replayed, no downgrade, local state checked: attacks on the
//! statements between control plane and edges, with a real control plane, real edges and, where
//! the attack needs one, a real man in the middle (an HTTP server between edge and control
//! plane that forwards everything but can answer target polls with a captured statement).

use crate::harness::*;
use bytes::Bytes;
use firebreak_edge::agent::{Agent, AgentOptions};
use firebreak_protocol::signed::{
    sign_request, RequestAuth, Target, AUDIENCE_HEADER, EXPIRES_HEADER, NONCE_HEADER,
    SIGNATURE_HEADER,
};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn redb(dir: &Path) -> String {
    format!("redb:{}", dir.join("control.redb").display())
}

/// Something on the path between edges and the control plane: forwards every request, except
/// that while `replay` holds a captured target answer, target polls get it at once.
struct Mitm {
    url: String,
    replay: Arc<Mutex<Option<String>>>,
    target_polls: Arc<AtomicUsize>,
    bundles: Arc<AtomicUsize>,
}

impl Mitm {
    async fn start(control: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let replay: Arc<Mutex<Option<String>>> = Arc::default();
        let (target_polls, bundles): (Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (Arc::default(), Arc::default());
        let control = control.to_owned();
        let (r, t, b) = (replay.clone(), target_polls.clone(), bundles.clone());
        tokio::spawn(async move {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, t, b, control, client) = (
                    r.clone(),
                    t.clone(),
                    b.clone(),
                    control.clone(),
                    client.clone(),
                );
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (r, t, b, control, client) = (
                                r.clone(),
                                t.clone(),
                                b.clone(),
                                control.clone(),
                                client.clone(),
                            );
                            async move {
                                let path = req.uri().path().to_owned();
                                if path.ends_with("/target") && path.starts_with("/v1/edges/") {
                                    t.fetch_add(1, Ordering::SeqCst);
                                    let captured = r.lock().unwrap().clone();
                                    if let Some(body) = captured {
                                        return Ok::<_, std::convert::Infallible>(
                                            http::Response::builder()
                                                .header("content-type", "application/json")
                                                .body(Full::new(Bytes::from(body)))
                                                .unwrap(),
                                        );
                                    }
                                }
                                if path.ends_with("/bundle") {
                                    b.fetch_add(1, Ordering::SeqCst);
                                }
                                let pq = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.as_str().to_owned())
                                    .unwrap_or_default();
                                let mut fwd = Request::builder()
                                    .method(req.method().clone())
                                    .uri(format!("{control}{pq}"));
                                for (k, v) in req.headers() {
                                    if k != "host" {
                                        fwd = fwd.header(k, v);
                                    }
                                }
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let resp = client.request(fwd.body(Full::new(body)).unwrap()).await;
                                let out = match resp {
                                    Ok(resp) => {
                                        let status = resp.status();
                                        let body =
                                            resp.into_body().collect().await.unwrap().to_bytes();
                                        http::Response::builder()
                                            .status(status)
                                            .header("content-type", "application/json")
                                            .body(Full::new(body))
                                            .unwrap()
                                    }
                                    Err(_) => http::Response::builder()
                                        .status(502)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                };
                                Ok(out)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            replay,
            target_polls,
            bundles,
        }
    }

    fn replay(&self, captured: Option<String>) {
        *self.replay.lock().unwrap() = captured;
    }
}

/// The target the control plane answers an edge in cell c1 now (JSON as sent), and it: asked
/// by a probe edge that joins for it (`{id}-probe-N`), as anyone on the path could see it.
async fn capture_target(c: &Control, id: &str) -> (String, Target) {
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let probe = format!("{id}-probe-{}", PROBES.fetch_add(1, Ordering::SeqCst));
    let (status, joined) = join(c, &probe, EDGE, None).await;
    assert_eq!(status, StatusCode::CREATED, "{joined}");
    let credential = joined["credential"].as_str().unwrap().to_owned();
    let (status, body) = http(
        Method::GET,
        &format!(
            "{}/v1/edges/{probe}/target?after=0&cell=c1&wait_ms=0",
            c.url
        ),
        &credential,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body = String::from_utf8(body.to_vec()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let signed: firebreak_protocol::signed::Signed =
        serde_json::from_value(v["signed"].clone()).unwrap();
    let target: Target = signed.open(&c.public()).unwrap();
    (body, target)
}

fn options(
    control: &str,
    trust: firebreak_protocol::keys::PublicKey,
    dir: &Path,
    id: &str,
    admin: SocketAddr,
) -> AgentOptions {
    AgentOptions {
        control: control.to_owned(),
        token: EDGE.into(),
        id: id.into(),
        pop: "pop1".into(),
        cell: "c1".into(),
        data_dir: dir.to_owned(),
        trust,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        listen_tls: Vec::new(),
        admin: Some(admin),
        keep: 3,
        heartbeat: Duration::from_millis(500),
        health_interval: Duration::from_millis(500),
        safe_mode: Default::default(),
    }
}

fn free_admin() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

async fn healthz(admin: SocketAddr) -> Option<(StatusCode, String)> {
    get_plain(&format!("http://{admin}/healthz")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_target_replayed_to_fresh_edge_is_refused() {
    let dir = temp_dir("replay-fresh");
    let origin = origin().await;
    let c = Control::start_with_freshness(&redb(&dir), &dir, Duration::from_secs(2)).await;
    c.release(&fleet_doc(origin, "v1")).await;
    // Captured on the path; once its freshness bound has passed it is an old target.
    let (captured, target) = capture_target(&c, "fresh").await;
    eventually("the captured target expires", 10, || async {
        (firebreak_protocol::now_ms() > target.expires_at_ms).then_some(())
    })
    .await;
    let mitm = Mitm::start(&c.url).await;
    mitm.replay(Some(captured));
    let admin = free_admin();
    let start = tokio::spawn(Agent::start(options(
        &mitm.url,
        c.public(),
        &dir.join("fresh"),
        "fresh",
        admin,
    )));
    // The edge with an empty data dir refuses it, says why on /healthz, and keeps asking.
    let body = eventually("the fresh edge refuses the expired target", 20, || async {
        healthz(admin)
            .await
            .filter(|(s, b)| *s == StatusCode::SERVICE_UNAVAILABLE && b.contains("expired"))
            .map(|(_, b)| b)
    })
    .await;
    assert!(body.contains("waiting for first configuration"), "{body}");
    eventually("the edge asks again", 20, || async {
        (mitm.target_polls.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    assert_eq!(mitm.bundles.load(Ordering::SeqCst), 0, "nothing downloaded");
    assert!(!start.is_finished(), "the edge applied the replayed target");
    // The real control plane's fresh target is applied.
    mitm.replay(None);
    let agent = tokio::time::timeout(Duration::from_secs(30), start)
        .await
        .expect("the edge never took the fresh target")
        .unwrap()
        .unwrap();
    wait_applied(&agent, 1).await;
    assert!(agent.status().refused_expired >= 1);
    agent.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_target_than_verified_is_ignored() {
    let dir = temp_dir("replay-older");
    let origin = origin().await;
    // A short freshness bound keeps the edge's long-polls short (half the remaining
    // freshness), so the replay reaches it within the wait below; the old statement is judged
    // older before its expiry is looked at.
    let c = Control::start_with_freshness(&redb(&dir), &dir, Duration::from_secs(10)).await;
    c.release(&fleet_doc(origin, "v1")).await;
    let (old, _) = capture_target(&c, "e").await;
    let mitm = Mitm::start(&c.url).await;
    let e = edge_trusting(&mitm.url, c.public(), &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;
    c.release(&fleet_doc(origin, "v2")).await;
    wait_applied(&e, 2).await;
    // The target for version 1 (still fresh, validly signed) replayed: older than the newest
    // verified, so kept what runs, said why, counted.
    mitm.replay(Some(old));
    wait_for(&e, "older target refused", |s| {
        s.refused_older >= 1 && s.last_error.as_deref().is_some_and(|m| m.contains("older"))
    })
    .await;
    assert_eq!(through(addr(&e), "a.test", "/").await.1, "v2");
    assert_eq!(e.status().applied.unwrap().version, 2);
    e.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_target_is_reported_not_fatal() {
    let dir = temp_dir("replay-stale");
    let origin = origin().await;
    let c = Control::start_with_freshness(&redb(&dir), &dir, Duration::from_secs(2)).await;
    c.release(&fleet_doc(origin, "v1")).await;
    let mitm = Mitm::start(&c.url).await;
    let e = edge_trusting(&mitm.url, c.public(), &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;
    let admin = e.member.admin_addr().unwrap();
    // The control plane keeps answering, but never with a fresh signature again.
    let (same, _) = capture_target(&c, "e").await;
    mitm.replay(Some(same));
    wait_for(&e, "edge reports itself stale", |s| s.stale.is_some()).await;
    let (status, body) = eventually("healthz says stale", 10, || async {
        healthz(admin).await.filter(|(_, b)| b.contains("stale"))
    })
    .await;
    assert_eq!(status, StatusCode::OK, "a stale edge is healthy: it serves");
    // It keeps serving, and tells the control plane.
    assert_eq!(
        through(addr(&e), "a.test", "/").await,
        (200, "v1".into(), "origin says /".into())
    );
    eventually("the fleet view shows the edge stale", 20, || async {
        let (_, v) = c.call(Method::GET, "/v1/fleet", None).await;
        v.as_array()?
            .iter()
            .find(|x| x["id"] == "e" && x["stale"].is_string())
            .map(|_| ())
    })
    .await;
    // Fresh targets again: no longer stale.
    mitm.replay(None);
    wait_for(&e, "edge fresh again", |s| s.stale.is_none()).await;
    assert!(!body.is_empty());
    e.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_applied_state_is_refused_and_converges() {
    let dir = temp_dir("replay-tamper");
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    c.release(&fleet_doc(origin, "v1")).await;
    let data = dir.join("e");
    let e = edge(&c, &data, "e").await;
    wait_applied(&e, 1).await;
    c.release(&fleet_doc(origin, "v2")).await;
    wait_applied(&e, 2).await;
    // The edge has taken the final target (and written it down) before it stops.
    let last = c.plane.target().unwrap().seq;
    wait_for(&e, "final target taken", |s| s.seen_seq >= last).await;
    e.shutdown();
    drop(e);
    // Someone with the data dir raises the sequence number (so that the edge would ignore
    // every later target) and points it back at version 1.
    let path = data.join("applied.json");
    let mut applied: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    applied["version"] = json!(1);
    applied["seq"] = json!(1_000_000_000u64);
    for s in applied["services"].as_array_mut().unwrap() {
        s["version"] = json!(1);
    }
    std::fs::write(&path, serde_json::to_vec(&applied).unwrap()).unwrap();
    let e = edge(&c, &data, "e").await;
    // Refused, naming the file; the version of the signed target kept beside it serves.
    let s = e.status();
    let why = s.state_refused.clone().unwrap_or_default();
    assert!(why.contains("applied.json"), "{s:?}");
    assert_eq!(s.applied.as_ref().unwrap().version, 2, "{s:?}");
    assert_eq!(through(addr(&e), "a.test", "/").await.1, "v2");
    // And it follows the control plane's next target.
    c.release(&fleet_doc(origin, "v3")).await;
    wait_applied(&e, 3).await;
    e.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_version_not_retried_until_named_again() {
    let dir = temp_dir("replay-safe");
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    c.release(&fleet_doc(origin, "v1")).await;
    let (status, v) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(
                json!({"file": "fleet.toml", "document": fleet_doc(origin, "v2"), "message": "v2"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let data = dir.join("e");
    let e = edge(&c, &data, "e").await;
    wait_applied(&e, 1).await;
    e.shutdown();
    drop(e);
    // This edge crash-looped on version 2 (the boot journal marks it bad).
    std::fs::write(data.join("boot-journal.json"), br#"{"bad":[2]}"#).unwrap();
    c.force_target(2, false).await;
    let e = edge(&c, &data, "e").await;
    wait_for(&e, "version 2 refused (safe mode)", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|m| m.contains("safe mode"))
    })
    .await;
    assert_eq!(e.status().applied.unwrap().version, 1);
    // The same target again (after a restart) is not a reason to retry it.
    e.shutdown();
    drop(e);
    let e = edge(&c, &data, "e").await;
    wait_for(&e, "version 2 refused again", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|m| m.contains("safe mode"))
    })
    .await;
    assert_eq!(e.status().applied.unwrap().version, 1);
    assert_eq!(e.status().bad_versions, vec![2]);
    // A newer target names it again explicitly: tried again.
    c.force_target(2, false).await;
    wait_applied(&e, 2).await;
    assert!(e.status().bad_versions.is_empty());
    e.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}

/// A signed admin request to `admin`, as the control plane's fan-out sends it.
async fn signed(
    admin: SocketAddr,
    method: Method,
    pq: &str,
    auth: &RequestAuth,
) -> (StatusCode, serde_json::Value) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{pq}"))
        .header(SIGNATURE_HEADER, &auth.signature)
        .header(AUDIENCE_HEADER, &auth.audience)
        .header(NONCE_HEADER, &auth.nonce)
        .header(EXPIRES_HEADER, auth.expires_at_ms.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(json!(String::from_utf8_lossy(&body))),
    )
}

const PURGE: &str = "/purge/all?service=a";

async fn purge_fixture(name: &str) -> (TempDir, Control, Agent) {
    let dir = temp_dir(name);
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    c.release(&fleet_doc(origin, "v1")).await;
    let e = edge(&c, &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;
    (dir, c, e)
}

/// The edge's metrics, read with a signed request.
async fn refused_metric(c: &Control, admin: SocketAddr, reason: &str) -> bool {
    let auth = sign_request(
        &c.key(),
        "GET",
        "/metrics",
        "e",
        firebreak_protocol::now_ms() + 30_000,
    )
    .unwrap();
    let (status, body) = signed(admin, Method::GET, "/metrics", &auth).await;
    status == StatusCode::OK
        && body.as_str().unwrap_or("").contains(&format!(
            "firebreak_signed_refused_total{{kind=\"purge\",reason=\"{reason}\"}}"
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_purge_replayed_is_refused() {
    let (dir, c, e) = purge_fixture("replay-purge").await;
    let admin = e.member.admin_addr().unwrap();
    let auth = sign_request(
        &c.key(),
        "POST",
        PURGE,
        "e",
        firebreak_protocol::now_ms() + 30_000,
    )
    .unwrap();
    let (status, v) = signed(admin, Method::POST, PURGE, &auth).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // The same request again, captured on the path, within its expiry.
    let (status, v) = signed(admin, Method::POST, PURGE, &auth).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["reason"], "replay", "{v}");
    assert!(refused_metric(&c, admin, "replay").await);
    // The control plane's own fan-out (a new nonce each time) still purges.
    let (status, v) = c
        .call(
            Method::POST,
            "/v1/purge",
            Some(json!({"service": "a", "all": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["acknowledged"], json!(["e"]), "{v}");
    e.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_purge_for_another_edge_is_refused() {
    let (dir, c, e) = purge_fixture("replay-audience").await;
    let admin = e.member.admin_addr().unwrap();
    let auth = sign_request(
        &c.key(),
        "POST",
        PURGE,
        "other",
        firebreak_protocol::now_ms() + 30_000,
    )
    .unwrap();
    let (status, v) = signed(admin, Method::POST, PURGE, &auth).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["reason"], "audience", "{v}");
    assert!(refused_metric(&c, admin, "audience").await);
    e.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_signed_purge_is_refused() {
    let (dir, c, e) = purge_fixture("replay-expired").await;
    let admin = e.member.admin_addr().unwrap();
    let now = firebreak_protocol::now_ms();
    let auth = sign_request(&c.key(), "POST", PURGE, "e", now - 1).unwrap();
    let (status, v) = signed(admin, Method::POST, PURGE, &auth).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["reason"], "expired", "{v}");
    // One valid far longer than a minute is refused too.
    let auth = sign_request(&c.key(), "POST", PURGE, "e", now + 3_600_000).unwrap();
    let (status, v) = signed(admin, Method::POST, PURGE, &auth).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["reason"], "too_long", "{v}");
    assert!(refused_metric(&c, admin, "expired").await);
    e.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_waiting_for_first_config_answers_health() {
    let dir = temp_dir("replay-waiting");
    // No control plane at all.
    let lonely = free_admin();
    let key = firebreak_protocol::keys::ControlKey::generate().unwrap();
    let alone = tokio::spawn(Agent::start(options(
        "http://127.0.0.1:9",
        key.public(),
        &dir.join("alone"),
        "alone",
        lonely,
    )));
    let (_, body) = eventually(
        "healthz answers while the control plane is unreachable",
        10,
        || async {
            healthz(lonely)
                .await
                .filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        },
    )
    .await;
    assert!(body.contains("waiting for first configuration"), "{body}");
    alone.abort();
    // A control plane without a version yet: waiting, then healthy once one applies.
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    let admin = free_admin();
    let start = tokio::spawn(Agent::start(options(
        &c.url,
        c.public(),
        &dir.join("e"),
        "e",
        admin,
    )));
    eventually("healthz says waiting", 10, || async {
        healthz(admin).await.filter(|(s, b)| {
            *s == StatusCode::SERVICE_UNAVAILABLE && b.contains("waiting for first configuration")
        })
    })
    .await;
    c.release(&fleet_doc(origin, "v1")).await;
    let agent = tokio::time::timeout(Duration::from_secs(30), start)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (status, _) = eventually("healthz healthy", 10, || async {
        healthz(admin).await.filter(|(s, _)| *s == StatusCode::OK)
    })
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(agent.member.admin_addr(), Some(admin));
    agent.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}
