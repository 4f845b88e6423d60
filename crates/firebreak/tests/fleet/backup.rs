//! Backup and restore of the store with real processes: a running control plane is backed up
//! over its API, stopped, its store wiped and restored with the CLI; the restarted control
//! plane serves the same versions and targets under a new epoch while edges keep serving.

use crate::harness::*;
use firebreak_protocol::keys::ControlKey;
use http::{Method, StatusCode};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};

fn start_control(data_dir: &Path, port: u16) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_firebreak"))
            .args(["control", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--token", OPERATOR, "--edge-token", EDGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn call(
    url: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    http_with(
        method,
        &format!("{url}{path}"),
        &[],
        body.map(|b| b.to_string()),
    )
    .await
}

async fn wait_up(url: &str) {
    eventually("the control plane answering", 30, || async {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let ok = client
            .get(format!("{url}/healthz").parse().unwrap())
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK);
        ok.then_some(())
    })
    .await
}

async fn release(url: &str, doc: &str) -> u64 {
    let (status, v) = call(
        url,
        Method::POST,
        "/v1/versions",
        Some(json!({"file": "f", "document": doc, "message": "m", "activate": true})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let version = v["version"].as_u64().unwrap();
    eventually("the rollout completing", 40, || async {
        let (_, view) = call(url, Method::GET, "/v1/rollout", None).await;
        let r = &view["rollout"];
        (r["version"].as_u64() == Some(version) && r["phase"] == "complete").then_some(())
    })
    .await;
    version
}

fn cli(args: &[&str], file: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn backup_and_restore_round_trip_redb() {
    let dir = temp_dir("backup-redb");
    let data = dir.join("control");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let control = start_control(&data, port);
    wait_up(&url).await;
    let origin = origin().await;
    let trust = ControlKey::load_or_create(&data.join("control.key"))
        .unwrap()
        .public();

    release(&url, &fleet_doc(origin, "v1")).await;
    let edge = edge_trusting(&url, trust, &dir.join("e1"), "e1").await;
    wait_applied(&edge, 1).await;
    let v2 = release(&url, &fleet_doc(origin, "v2")).await;
    wait_applied(&edge, v2).await;
    let (_, versions) = call(&url, Method::GET, "/v1/versions", None).await;
    let (_, target) = call(&url, Method::GET, "/v1/target", None).await;
    assert_eq!(versions.as_array().unwrap().len(), 2);

    // Backed up while it runs, over its API.
    let file = dir.join("backup.json");
    let (ok, out) = cli(
        &["control", "backup", "--control", &url, "--token", OPERATOR],
        &file,
    );
    assert!(ok, "{out}");
    let taken: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let old_epoch = taken["state"]["epoch"].as_u64().unwrap();

    // Stopped and wiped: the edge keeps serving what it runs.
    drop(control);
    std::fs::remove_file(data.join("control.redb")).unwrap();
    let (status, version, _) = through(addr(&edge), "a.test", "/page").await;
    assert_eq!((status, version.as_str()), (200, "v2"));

    let store = format!("redb:{}", data.join("control.redb").display());
    let (ok, out) = cli(&["control", "restore", "--store", &store], &file);
    assert!(ok, "{out}");
    // Restoring over a store that holds a history is refused.
    let (ok, out) = cli(&["control", "restore", "--store", &store], &file);
    assert!(!ok, "{out}");
    assert!(out.contains("not empty"), "{out}");
    {
        let s = firebreak_control::Store::open(&store).await.unwrap();
        let state = s.state().await.unwrap().unwrap();
        assert!(
            state.epoch > old_epoch,
            "epoch {} not above {old_epoch}",
            state.epoch
        );
        assert!(state.epoch >= taken["taken_at_ms"].as_u64().unwrap());
    }

    // Started again: the same versions and targets; the edge still serves v2.
    let _control = start_control(&data, port);
    wait_up(&url).await;
    let (_, again) = call(&url, Method::GET, "/v1/versions", None).await;
    assert_eq!(again, versions);
    let (_, target_again) = call(&url, Method::GET, "/v1/target", None).await;
    assert_eq!(target_again, target);
    let (_, bundle) = http_with(Method::GET, &format!("{url}/v1/versions/1"), &[], None).await;
    assert_eq!(bundle["version"], 1, "{bundle}");
    let (status, version, _) = through(addr(&edge), "a.test", "/other").await;
    assert_eq!((status, version.as_str()), (200, "v2"));
    // The restarted control plane hears from the edge again and still serves it v2.
    eventually(
        "the edge reporting to the restored control plane",
        30,
        || async {
            let (_, fleet) = call(&url, Method::GET, "/v1/fleet", None).await;
            fleet
                .as_array()
                .and_then(|a| a.iter().find(|e| e["id"] == "e1"))
                .filter(|e| e["report"]["applied_version"] == v2 || e["applied_version"] == v2)
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(edge.status().applied.as_ref().map(|a| a.version), Some(v2));
}
