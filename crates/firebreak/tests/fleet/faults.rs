//! Faults that need a real process or a real outage: etcd down, the control plane killed with
//! SIGKILL in the middle of pushes, an edge whose disk is full.

use crate::harness::*;
use http::{Method, StatusCode};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_firebreak");

/// A child process, killed by PID when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn control_process(dir: &std::path::Path, port: u16) -> Proc {
    let child = Command::new(BIN)
        .args([
            "control",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .env("FIREBREAK_TOKEN", OPERATOR)
        .env("FIREBREAK_EDGE_TOKEN", EDGE)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "control plane did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

async fn call(
    url: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let (s, b) = http(
        method,
        &format!("{url}{path}"),
        OPERATOR,
        body.map(|b| b.to_string()),
    )
    .await;
    (s, serde_json::from_slice(&b).unwrap_or_default())
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unavailable_refuses_writes_and_the_edge_keeps_serving() {
    let mut etcd = Etcd::start();
    let dir = temp_dir("etcd-down");
    let origin = origin().await;
    let c = Control::start(&etcd.endpoint, &dir).await;
    c.release(&fleet_doc(origin, "v1")).await;
    let e = edge(&c, &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;
    etcd.kill();
    let (status, body) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(json!({"file": "f", "document": fleet_doc(origin, "v2"), "message": "m"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("configuration store unavailable"),
        "{body}"
    );
    for _ in 0..10 {
        assert_eq!(through(addr(&e), "a.test", "/").await.1, "v1");
    }
    assert_eq!(e.status().applied.unwrap().version, 1);
    assert!(e.status().last_error.is_none());
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_mid_push_loses_nothing_committed_and_edges_keep_serving() {
    let dir = temp_dir("kill9");
    let origin = origin().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut control = control_process(&dir.join("control"), port);
    let push = |marker: String| {
        let url = url.clone();
        async move {
            let doc = fleet_doc(origin, &marker);
            call(
                &url,
                Method::POST,
                "/v1/versions",
                Some(json!({"file": "f", "document": doc, "message": marker, "activate": true})),
            )
            .await
        }
    };
    assert_eq!(push("v1".into()).await.0, StatusCode::CREATED);
    let trust = firebreak_protocol::keys::PublicKey::from_arg(
        dir.join("control/control.pub").to_str().unwrap(),
    )
    .unwrap();
    let e = edge_trusting(&url, trust, &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;
    // Pushes in a tight loop; SIGKILL lands in the middle of one of them, once a few have
    // been acknowledged.
    let (acked, mut acks) = tokio::sync::mpsc::unbounded_channel::<()>();
    let pusher = tokio::spawn(async move {
        let mut ok = 0;
        for i in 2..500 {
            let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let doc = fleet_doc(origin, &format!("v{i}"));
            let body = json!({"file": "f", "document": doc, "message": "loop"}).to_string();
            let req = http::Request::post(format!("http://127.0.0.1:{port}/v1/versions"))
                .header("authorization", format!("Bearer {OPERATOR}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            match client.request(req).await {
                Ok(r) if r.status() == StatusCode::CREATED => {
                    ok += 1;
                    let _ = acked.send(());
                }
                _ => break,
            }
        }
        ok
    });
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(30), acks.recv())
            .await
            .expect("pushes not acknowledged within 30 s")
            .expect("the pusher stopped before three pushes were acknowledged");
    }
    control.0.kill().unwrap();
    control.0.wait().unwrap();
    let acknowledged = pusher.await.unwrap();
    assert!(acknowledged > 0, "no push went through before the kill");
    // The edge serves through the outage, and knows why it hears nothing.
    wait_for(&e, "control plane outage noted", |s| {
        s.control_error
            .as_deref()
            .is_some_and(|m| m.contains("unreachable"))
    })
    .await;
    for _ in 0..10 {
        assert_eq!(through(addr(&e), "a.test", "/").await.0, 200);
    }
    // Restarted on the same data directory: every acknowledged version is there, numbers are
    // contiguous, every bundle verifies, the target names a stored version.
    let _control = control_process(&dir.join("control"), port);
    let (status, list) = call(&url, Method::GET, "/v1/versions?limit=1000", None).await;
    assert_eq!(status, StatusCode::OK);
    let numbers: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert!(
        numbers.len() as u64 > acknowledged,
        "acknowledged {acknowledged}, stored {numbers:?}"
    );
    let expected: Vec<u64> = (1..=numbers.len() as u64).rev().collect();
    assert_eq!(numbers, expected);
    for n in &numbers {
        let (status, v) = call(&url, Method::GET, &format!("/v1/versions/{n}"), None).await;
        assert_eq!(status, StatusCode::OK, "version {n}: {v}");
    }
    // The first rollout may have been mid-wave when the process died: it resumes from the
    // stored state and the fleet-wide target names a stored version.
    let deadline = Instant::now() + Duration::from_secs(20);
    let version = loop {
        let (status, target) = call(&url, Method::GET, "/v1/target", None).await;
        assert_eq!(status, StatusCode::OK, "{target}");
        let payload: serde_json::Value =
            serde_json::from_str(target["signed"]["payload"].as_str().unwrap()).unwrap();
        let version = payload["version"].as_u64().unwrap();
        if numbers.contains(&version) {
            break version;
        }
        assert!(
            Instant::now() < deadline,
            "target never named a stored version: {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_applied(&e, version).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_edge_keeps_the_running_version_and_says_why() {
    let dir = temp_dir("fulldisk");
    let origin = origin().await;
    let c = Control::start(
        &format!("redb:{}", dir.join("control.redb").display()),
        &dir,
    )
    .await;
    c.release(&fleet_doc(origin, "v1")).await;
    // The edge runs in its own mount namespace with a 64 KiB tmpfs as its data directory.
    let data = dir.join("edge-data");
    std::fs::create_dir_all(&data).unwrap();
    let (port, admin) = (free_port(), free_port());
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {data} && exec {BIN} edge --control {url} --trust {key} --data-dir {data} --id full --listen 127.0.0.1:{port} --admin 127.0.0.1:{admin} --heartbeat-ms 500",
        data = data.display(),
        url = c.url,
        key = c.public(),
    );
    let _edge = Proc(
        Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .env("FIREBREAK_EDGE_TOKEN", EDGE)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) is needed"),
    );
    let edge: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let fleet_row = || async {
        let (_, f) = c.call(Method::GET, "/v1/fleet", None).await;
        f.as_array()
            .and_then(|a| a.first().cloned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet_row().await["applied_version"] != 1 {
        assert!(
            Instant::now() < deadline,
            "edge never applied version 1 (unshare/mount need root)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(through(edge, "a.test", "/").await.1, "v1");
    // Version 2 is ~200 KiB (a long comment): it cannot be kept on the 64 KiB disk.
    let big = format!(
        "{}\n# {}\n",
        fleet_doc(origin, "v2"),
        "padding ".repeat(25_000)
    );
    let (status, v) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(
                json!({"file": "fleet.toml", "document": big, "message": "big", "activate": true}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    // Staging finds out: the rollout stops before any edge serves version 2.
    c.wait_rollout(2, "stage_failed").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = fleet_row().await;
        if let Some(err) = row["staged"]["error"].as_str() {
            assert!(
                err.contains("No space left on device") && err.contains("version 2"),
                "{err}"
            );
            assert_eq!(row["applied_version"], 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "edge never reported the full disk: {row}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(through(edge, "a.test", "/").await.1, "v1");
    }
    std::fs::remove_dir_all(&dir).ok();
}
