//! The control channel over HTTPS: a real control plane serving its API with a certificate
//! from a test CA (rcgen, generated here), real edges (in this process and as `firebreak edge`
//! processes) and the real CLI. An edge trusts only the fleet CA given at enrolment (kept in
//! its data directory); anything else is refused with a clear error and nothing is ever sent
//! in cleartext to an `https://` URL.

use crate::harness::*;
use firebreak_edge::agent::{control_ca, Agent, AgentOptions};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_firebreak");

/// A TCP forwarder to `to` that records the first byte each client sent on each connection.
async fn recording_forwarder(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first = Arc::new(Mutex::new(Vec::new()));
    let seen = first.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                if client.read_exact(&mut byte).await.is_err() {
                    return;
                }
                seen.lock().unwrap().push(byte[0]);
                let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                if tokio::io::AsyncWriteExt::write_all(&mut server, &byte)
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, first)
}

fn port_of(url: &str) -> SocketAddr {
    url.trim_start_matches("https://").parse().unwrap()
}

/// Starts an edge in this process under `url` (its first start waits for a version, so it
/// runs in a task); its admin address answers `/healthz` while it waits.
fn waiting_edge(
    url: &str,
    control: &HttpsControl,
    data: &Path,
    id: &str,
) -> (SocketAddr, tokio::task::JoinHandle<Agent>) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut opts = AgentOptions::new(
        url.to_owned(),
        EDGE.into(),
        id.into(),
        data.to_owned(),
        control.public(),
    );
    opts.listen = vec!["127.0.0.1:0".parse().unwrap()];
    opts.admin = Some(admin);
    opts.heartbeat = Duration::from_millis(500);
    opts.health_interval = Duration::from_millis(500);
    let task = tokio::spawn(async move { Agent::start(opts).await.unwrap() });
    (admin, task)
}

/// Waits until the waiting edge's `/healthz` names `what`; returns the body.
async fn healthz_says(admin: SocketAddr, what: &str) -> String {
    eventually(&format!("/healthz says {what}"), 20, || async {
        let (_, body) = get_plain(&format!("http://{admin}/healthz")).await?;
        body.contains(what).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_given_the_fleet_ca_joins_and_applies_over_https() {
    let dir = temp_dir("ctltls-joins");
    let ca = TestCa::new("fleet CA");
    let control = HttpsControl::start(&dir, &ca, &["127.0.0.1"]).await;
    assert!(control.url.starts_with("https://"));
    let origin = origin().await;
    let v = control.release(&fleet_doc(origin, "v1")).await;
    let data = dir.join("e1");
    control_ca::install(&data, ca.pem.as_bytes()).unwrap();
    let e1 = edge_trusting(&control.url, control.public(), &data, "e1").await;
    wait_applied(&e1, v).await;
    assert_eq!(through(addr(&e1), "a.test", "/x").await.1, "v1");
    assert_eq!(control.fleet_ids().await, vec!["e1".to_owned()]);
    // A purge travels the other way (control plane → edge admin) and still works.
    let (status, answer) = control
        .call(
            http::Method::POST,
            "/v1/purge",
            Some(serde_json::json!({"service": "a", "all": true})),
        )
        .await;
    assert!(status.is_success(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_trusting_another_ca_never_joins_and_sends_nothing_in_cleartext() {
    let dir = temp_dir("ctltls-other-ca");
    let ca = TestCa::new("fleet CA");
    let control = HttpsControl::start(&dir, &ca, &["127.0.0.1"]).await;
    let origin = origin().await;
    control.release(&fleet_doc(origin, "v1")).await;
    let (front, first_bytes) = recording_forwarder(port_of(&control.url)).await;
    let data = dir.join("e1");
    control_ca::install(&data, TestCa::new("someone else's CA").pem.as_bytes()).unwrap();
    let (admin, task) = waiting_edge(&format!("https://{front}"), &control, &data, "e1");
    let body = healthz_says(admin, "control plane certificate not trusted").await;
    assert!(body.contains("waiting for first configuration"), "{body}");
    // It keeps trying, and every connection it opens starts with a TLS handshake record.
    eventually("a few connection attempts", 20, || async {
        (first_bytes.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    let seen = first_bytes.lock().unwrap().clone();
    assert!(seen.iter().all(|b| *b == 0x16), "first bytes {seen:?}");
    assert!(control.fleet_ids().await.is_empty(), "the edge joined");
    assert!(!task.is_finished(), "the edge started without a version");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_certificate_for_another_name_is_refused() {
    let dir = temp_dir("ctltls-wrong-name");
    let ca = TestCa::new("fleet CA");
    // Issued by the right CA, but not for the address the edge dials.
    let control = HttpsControl::start(&dir, &ca, &["control.example"]).await;
    let data = dir.join("e1");
    control_ca::install(&data, ca.pem.as_bytes()).unwrap();
    let (admin, task) = waiting_edge(&control.url, &control, &data, "e1");
    let body = healthz_says(admin, "control plane certificate not trusted").await;
    assert!(body.contains("not valid for name"), "{body}");
    task.abort();
}

fn cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("FIREBREAK_CA")
        .env_remove("FIREBREAK_CONTROL")
        .env_remove("FIREBREAK_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_verifies_the_control_plane_against_its_ca() {
    let dir = temp_dir("ctltls-cli");
    let ca = TestCa::new("fleet CA");
    let ca_file = ca.write(&dir, "ca.pem");
    let other_file = TestCa::new("other").write(&dir, "other.pem");
    let control = HttpsControl::start(&dir, &ca, &["127.0.0.1"]).await;
    let url = control.url.clone();
    let ca_arg = ca_file.display().to_string();
    let other_arg = other_file.display().to_string();
    let (with_flag, with_env, without, other) = tokio::task::spawn_blocking(move || {
        let base = ["fleet", "--control", url.as_str(), "--token", OPERATOR];
        let with_flag = cli(&[&base[..], &["--ca", ca_arg.as_str()]].concat(), &[]);
        let with_env = cli(&base, &[("FIREBREAK_CA", ca_arg.as_str())]);
        let without = cli(&base, &[]);
        let other = cli(&[&base[..], &["--ca", other_arg.as_str()]].concat(), &[]);
        (with_flag, with_env, without, other)
    })
    .await
    .unwrap();
    for (what, out) in [("--ca", &with_flag), ("FIREBREAK_CA", &with_env)] {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (what, out) in [("no CA", &without), ("another CA", &other)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains("control plane certificate not trusted"),
            "{what}: {stderr}"
        );
    }
}

/// A `firebreak edge` process under `url`.
fn edge_process(
    url: &str,
    trust: &str,
    data: &Path,
    listen: u16,
    ca: Option<&Path>,
    log: &Path,
) -> KillOnDrop {
    let mut cmd = Command::new(BIN);
    cmd.args(["edge", "--control", url, "--trust", trust, "--id", "e1"])
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--heartbeat-ms", "500", "--health-interval-ms", "500"])
        .env_remove("FIREBREAK_CONTROL_CA")
        .env("FIREBREAK_EDGE_TOKEN", EDGE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(ca) = ca {
        cmd.arg("--control-ca").arg(ca);
    }
    KillOnDrop(cmd.spawn().unwrap())
}

async fn serves(listen: u16, marker: &str) {
    let edge: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    eventually(&format!("the edge serves {marker}"), 30, || async {
        let connected = tokio::net::TcpStream::connect(edge).await.is_ok();
        if !connected {
            return None;
        }
        (through(edge, "a.test", "/x").await.1 == marker).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_restarted_without_the_flag_trusts_the_ca_kept_in_its_data_dir() {
    let dir = temp_dir("ctltls-restart");
    let ca = TestCa::new("fleet CA");
    let ca_file = ca.write(&dir, "ca.pem");
    let control = HttpsControl::start(&dir, &ca, &["127.0.0.1"]).await;
    let origin = origin().await;
    control.release(&fleet_doc(origin, "v1")).await;
    let trust = control.public().to_string();
    let data = dir.join("e1");
    let listen = free_port();
    let first = edge_process(
        &control.url,
        &trust,
        &data,
        listen,
        Some(&ca_file),
        &dir.join("edge-1.log"),
    );
    serves(listen, "v1").await;
    assert_eq!(
        std::fs::read_to_string(data.join(control_ca::CONTROL_CA_FILE)).unwrap(),
        ca.pem,
        "the CA is kept in the data directory"
    );
    drop(first);
    control.release(&fleet_doc(origin, "v2")).await;
    let _second = edge_process(
        &control.url,
        &trust,
        &data,
        listen,
        None,
        &dir.join("edge-2.log"),
    );
    // v2 can only come from the control plane, over HTTPS, verified with the kept CA.
    serves(listen, "v2").await;
}
