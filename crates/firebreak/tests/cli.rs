//! The `firebreak` binary end to end: real processes, real sockets, real signals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::BufRead;
use std::net::{SocketAddr, TcpStream};

use std::process::Command;
use std::time::{Duration, Instant};

mod procs;
use procs::binary::{get, Proc, BIN};

fn temp_dir(name: &str) -> procs::TempDir {
    procs::temp_dir("cli", name)
}

fn edge_config(origin: SocketAddr, marker: &str) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[[service]]
name = "demo"
hosts = ["localhost"]
default = true

[service.origin]
servers = [{{ addr = "{origin}" }}]

[[service.response_headers]]
name = "x-config"
op = "set"
value = "{marker}"
"#
    )
}

#[test]
fn edge_process_caches_and_reloads_on_sighup() {
    let mut origin = Proc::spawn(&["origin", "--listen", "127.0.0.1:0"]);
    let origin_addr = origin.wait_for_addr("demo origin listening");
    let dir = temp_dir("edge");
    let path = dir.join("edge.toml");
    std::fs::write(&path, edge_config(origin_addr, "one")).unwrap();
    let log = dir.join("edge.log");
    let mut edge = Proc::spawn_logging(
        &["edge", "--config", path.to_str().unwrap()],
        &[],
        std::fs::File::create(&log).unwrap(),
    );
    let edge_addr = edge.wait_for_addr("edge listening");

    let miss = get(edge_addr, "/static/a.txt");
    assert!(miss.starts_with("HTTP/1.1 200"), "{miss}");
    assert!(miss.contains("cache-status: firebreak; fwd=miss"), "{miss}");
    let hit = get(edge_addr, "/static/a.txt");
    assert!(hit.contains("cache-status: firebreak; hit"), "{hit}");
    assert!(hit.contains("x-config: one"));
    let stats = get(origin_addr, "/__origin/stats");
    assert!(stats.contains("\"requests\":1"), "{stats}");

    let hup = |pid: u32| {
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(edge_addr, "/time");
            if r.contains(want) {
                return r;
            }
            assert!(Instant::now() < deadline, "never saw {want}: {r}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // A bad file is refused: the edge keeps serving the running configuration.
    std::fs::write(&path, "this is not toml = = =").unwrap();
    hup(edge.child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("configuration refused")
    {
        assert!(
            Instant::now() < deadline,
            "the edge never said it refused the bad file: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for("x-config: one");
    // A good one is applied.
    std::fs::write(&path, edge_config(origin_addr, "two")).unwrap();
    hup(edge.child.id());
    wait_for("x-config: two");
    // Cached objects survive the reload.
    assert!(get(edge_addr, "/static/a.txt").contains("firebreak; hit"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn up_runs_a_control_plane_three_pops_of_two_edges_and_the_origin_through_a_rollout() {
    // Also a DNS server under the control plane; the printed `dig` lines are run with the real
    // `dig` (bind9-dnsutils), which this test requires.
    // Ports below the range the OS hands out for outgoing connections (32768 and up).
    // Ports unlikely to be taken; the test is about `up`, not the ports.
    let port = 12_000 + (std::process::id() % 18_000) as u16;
    let data = temp_dir("up");
    let mut up = Proc::spawn(&[
        "up",
        "--port",
        &port.to_string(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    // The control API runs over HTTPS with a certificate from up's local CA.
    let mut line = String::new();
    while !line.contains("  control plane ") {
        line.clear();
        assert!(up.stdout.read_line(&mut line).unwrap() > 0);
    }
    let control = line
        .split("https://")
        .nth(1)
        .and_then(|u| u.split([' ', '/', '\n']).next())
        .unwrap_or_else(|| panic!("no https URL in {line:?}"))
        .to_owned();
    let mut edges = vec![up.wait_for_addr("  edge ams-1")];
    for id in ["ams-2", "nyc-1", "nyc-2", "sin-1", "sin-2"] {
        edges.push(up.wait_for_addr(&format!("  edge {id}")));
    }
    assert_eq!(edges[0].port(), port);
    for edge in &edges {
        let r = get(*edge, "/");
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("firebreak demo origin"),
            "{r}"
        );
        assert!(r.contains("x-served-by: firebreak"), "{r}");
    }
    // Each edge has its own disk tier under its data directory (`[cache.disk] path = "cache"`).
    for id in ["ams-1", "ams-2", "nyc-1", "nyc-2", "sin-1", "sin-2"] {
        let lock = data.join("edges").join(id).join("cache").join("lock");
        assert!(lock.exists(), "{} missing", lock.display());
    }
    // The DNS server (a fleet member in its own cell) is listed with its port.
    let mut line = String::new();
    let mut dns_line = None;
    while !line.contains("FIREBREAK_TOKEN=") {
        line.clear();
        assert!(up.stdout.read_line(&mut line).unwrap() > 0);
        if line.starts_with("  dns ") {
            dns_line = Some(line.clone());
        }
    }
    let dns_line = dns_line.expect("up printed no DNS server line");
    let dns_port: u16 = dns_line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no DNS port in {dns_line:?}"));
    let value = |name: &str| {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .to_owned()
    };
    let (token, ca) = (value("FIREBREAK_TOKEN"), value("FIREBREAK_CA"));
    assert!(std::path::Path::new(&ca).starts_with(&data), "{ca}");
    // Every edge serves HTTPS with the demo service's certificate from the same CA; its key
    // reached the edges through the control plane as a secret document. The printed curl
    // line works.
    let mut line = String::new();
    let mut digs = Vec::new();
    while !(line.contains("--cacert") && line.contains("https://localhost")) {
        line.clear();
        assert!(up.stdout.read_line(&mut line).unwrap() > 0);
        if line.trim_start().starts_with("dig ") {
            digs.push(line.clone());
        }
    }
    // The printed dig lines work (real dig): this machine's region gets ams, the client
    // subnet of america gets nyc; each line's comment names the address it answers.
    assert_eq!(digs.len(), 2, "{digs:?}");
    for (dig, want) in digs.iter().zip(["127.0.0.11", "127.0.0.12"]) {
        let (cmd, comment) = dig.split_once('#').unwrap_or((dig, ""));
        assert!(comment.trim_start().starts_with(want), "{dig}");
        assert!(cmd.contains(&format!("-p {dns_port} ")), "{dig}");
        let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        let out = match Command::new("dig").args(&args).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`dig` is not installed: install bind9-dnsutils (Debian; .ci/run installs it) to run this test"
            ),
            Err(e) => panic!("dig: {e}"),
        };
        let answer = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{dig}: {answer}");
        assert_eq!(answer.trim(), want, "{dig}");
    }
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("https://localhost"))
        .unwrap()
        .to_owned();
    let pem = std::fs::read(&ca).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = runtime.block_on(async {
        let client =
            firebreak_protocol::client::HttpClient::with_ca(Duration::from_secs(5), Some(&pem))
                .unwrap();
        let req = http::Request::get(url.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        client
            .exchange(req, 1 << 20, Duration::from_secs(10))
            .await
            .unwrap()
    });
    assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
    // Without the CA the CLI refuses the control plane's certificate.
    let out = Command::new(BIN)
        .args([
            "fleet",
            "--control",
            &format!("https://{control}"),
            "--token",
            &token,
        ])
        .env_remove("FIREBREAK_CA")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("control plane certificate not trusted"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args([
            "fleet",
            "--control",
            &format!("https://{control}"),
            "--token",
            &token,
        ])
        .env("FIREBREAK_CA", &ca)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // MEMBER ROLE POP CELL APPLIED ...: every edge, and the DNS server in its own cell.
    for (id, role, cell) in [
        ("ams-1", "edge", "ams"),
        ("ams-2", "edge", "ams"),
        ("nyc-1", "edge", "nyc"),
        ("nyc-2", "edge", "nyc"),
        ("sin-1", "edge", "sin"),
        ("sin-2", "edge", "sin"),
        ("dns-1", "dns", "dns"),
    ] {
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{text}"))
            .split_whitespace()
            .collect();
        assert_eq!(
            (row.get(1), row.get(3), row.get(4)),
            (Some(&role), Some(&cell), Some(&"1")),
            "{text}"
        );
    }
    // The first version came through a rollout: staged, then wave by wave, gated.
    let out = Command::new(BIN)
        .args([
            "audit",
            "--control",
            &format!("https://{control}"),
            "--token",
            &token,
            "--ca",
            &ca,
        ])
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(
        audit.contains("deploy") && audit.contains("wave") && audit.contains("complete"),
        "{audit}"
    );
    // SIGTERM (as Ctrl-C) stops the whole network: up exits, every edge port closes.
    let ok = Command::new("kill")
        .args(["-TERM", &up.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "up did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    for edge in &edges {
        assert!(
            TcpStream::connect(edge).is_err(),
            "edge {edge} still listening after up stopped"
        );
    }
    assert!(
        TcpStream::connect(control).is_err(),
        "control plane still listening"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", dns_port)).is_err(),
        "DNS server still listening after up stopped"
    );
    drop(up);
    std::fs::remove_dir_all(&data).ok();
}

#[test]
fn config_validate_exit_codes_and_messages() {
    let dir = temp_dir("validate");
    let good = dir.join("good.toml");
    std::fs::write(&good, edge_config("127.0.0.1:9".parse().unwrap(), "x")).unwrap();
    let out = Command::new(BIN)
        .args(["config", "validate", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        edge_config("127.0.0.1:9".parse().unwrap(), "x").replace("hosts =", "hostz ="),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "validate", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:7:1: service[0].hostz: unknown field `hostz`"),
        "{err}"
    );
    for (example, kind) in [
        ("firebreak.toml", "standalone edge file"),
        ("fleet.toml", "fleet document"),
    ] {
        let path = format!("{}/../../examples/{example}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(BIN)
            .args(["config", "validate", &path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(kind));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn one_origin_edge_without_a_file_and_sigterm_stops_it() {
    let mut origin = Proc::spawn(&["origin", "--listen", "127.0.0.1:0"]);
    let origin_addr = origin.wait_for_addr("demo origin listening");
    let mut edge = Proc::spawn(&[
        "edge",
        "--origin",
        &format!("http://{origin_addr}"),
        "--listen",
        "127.0.0.1:0",
        "--cache-mib",
        "16",
    ]);
    let edge_addr = edge.wait_for_addr("edge listening");
    get(edge_addr, "/static/x");
    assert!(get(edge_addr, "/static/x").contains("firebreak; hit"));
    let ok = Command::new("kill")
        .args(["-TERM", &edge.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = edge.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "edge did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a client command against `control`; returns exit code, stdout and stderr.
fn client(control: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("FIREBREAK_CONTROL", control)
        .env("FIREBREAK_TOKEN", "cli-test-operator-token")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_commands_exit_codes_scripts_can_rely_on() {
    let dir = temp_dir("client");
    // Nothing listening: exit 4.
    let (code, _, err) = client("http://127.0.0.1:9", &["config", "versions"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("unreachable"), "{err}");

    let mut control = Proc::spawn_with(
        &[
            "control",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.join("control").to_str().unwrap(),
        ],
        &[
            ("FIREBREAK_TOKEN", "cli-test-operator-token"),
            ("FIREBREAK_EDGE_TOKEN", "cli-test-edge-token-xx"),
        ],
    );
    let url = format!(
        "http://{}",
        control.wait_for_addr("control plane listening")
    );
    let fleet = dir.join("fleet.toml");
    let good = edge_config("127.0.0.1:9".parse().unwrap(), "one")
        .replace("[[listener]]\naddr = \"127.0.0.1:0\"\n", "");
    std::fs::write(&fleet, &good).unwrap();
    let (code, out, err) = client(
        &url,
        &[
            "config",
            "push",
            fleet.to_str().unwrap(),
            "-m",
            "first",
            "--activate",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("version 1 stored") && out.contains("rollout started"),
        "{out}"
    );
    // With no edges every wave is empty, so the rollout completes by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = client(&url, &["rollout", "status"]);
        assert_eq!(code, 0, "{err}");
        if out.contains(": complete") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first rollout never completed:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&fleet, good.replace("\"one\"", "\"two\"")).unwrap();
    assert_eq!(
        client(
            &url,
            &["config", "push", fleet.to_str().unwrap(), "-m", "second"]
        )
        .0,
        0
    );

    // A refused push: exit 1, every error located in the file, nothing stored.
    std::fs::write(&fleet, good.replace("hosts =", "hostz =")).unwrap();
    let (code, _, err) = client(
        &url,
        &["config", "push", fleet.to_str().unwrap(), "-m", "bad"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("fleet.toml:5:1: service[0].hostz: unknown field `hostz`"),
        "{err}"
    );
    let (code, out, _) = client(&url, &["config", "versions"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "header + two versions:\n{out}");
    assert!(
        out.lines().any(|l| l.starts_with("*") && l.contains(" 1 ")),
        "target marked:\n{out}"
    );

    let (code, out, _) = client(&url, &["config", "diff", "1", "2"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("-value = \"one\"") && out.contains("+value = \"two\""),
        "{out}"
    );
    // Setting the target at once is refused: versions travel by rollout.
    let (code, _, err) = client(&url, &["config", "target", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("rollout"), "{err}");
    let (code, out, err) = client(&url, &["deploy", "2", "-m", "second"]);
    assert_eq!(code, 0, "deploy follows the rollout to its end: {out}{err}");
    assert!(out.contains("complete"), "{out}");
    // A second deploy of what the fleet runs is refused.
    assert_eq!(client(&url, &["deploy", "2"]).0, 1);
    let (code, _, err) = client(&url, &["config", "target", "1"]);
    assert_eq!(code, 1, "going back needs --rollback: {err}");
    assert_eq!(client(&url, &["config", "target", "1", "--rollback"]).0, 0);
    let (code, out, err) = client(&url, &["rollback", "2", "-m", "forward again"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("version 2"), "{out}");
    assert_eq!(client(&url, &["rollback", "9"]).0, 1);
    assert_eq!(client(&url, &["rollout", "pause"]).0, 1, "nothing to pause");
    let (code, out, _) = client(&url, &["audit"]);
    assert_eq!(code, 0);
    for action in ["deploy", "complete", "rollback"] {
        assert!(out.contains(action), "audit lacks {action}:\n{out}");
    }
    assert_eq!(client(&url, &["config", "show", "9"]).0, 1);
    // No edges: a purge is trivially acknowledged by all of none.
    assert_eq!(client(&url, &["purge", "--all", "--service", "demo"]).0, 0);
    // Wrong token: refused.
    let out = Command::new(BIN)
        .args([
            "fleet",
            "--control",
            &url,
            "--token",
            "wrong-token-wrong-token",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // An edge whose listener is taken exits with the reason instead of waiting for ever.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(BIN)
        .args([
            "edge",
            "--control",
            &url,
            "--trust",
            dir.join("control/control.pub").to_str().unwrap(),
            "--data-dir",
            dir.join("edge").to_str().unwrap(),
            "--listen",
            &taken.local_addr().unwrap().to_string(),
        ])
        .env("FIREBREAK_EDGE_TOKEN", "cli-test-edge-token-xx")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
    drop(control);
    std::fs::remove_dir_all(&dir).ok();
}

/// A fleet document whose `[dns]` data names `pops` (one answer address each).
fn dns_fleet(pops: &[&str]) -> String {
    let mut doc = edge_config("127.0.0.1:9".parse().unwrap(), "dns")
        .replace("[[listener]]\naddr = \"127.0.0.1:0\"\n", "");
    doc.push_str(
        "\n[dns]\nzone = \"cdn.example\"\ndefault_region = \"eu\"\n[[dns.ns]]\nname = \"ns1.cdn.example\"\naddrs = [\"192.0.2.53\"]\n",
    );
    for (i, p) in pops.iter().enumerate() {
        doc.push_str(&format!(
            "[[dns.pop]]\nname = \"{p}\"\nanswers = [\"192.0.2.{}\"]\n",
            i + 1
        ));
    }
    let list: Vec<String> = pops.iter().map(|p| format!("\"{p}\"")).collect();
    doc.push_str(&format!(
        "[[dns.region]]\nname = \"eu\"\npops = [{}]\n",
        list.join(", ")
    ));
    doc
}

#[test]
fn config_push_refuses_emptying_dns_unless_forced() {
    let dir = temp_dir("dns-force");
    let mut control = Proc::spawn_with(
        &[
            "control",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.join("control").to_str().unwrap(),
        ],
        &[
            ("FIREBREAK_TOKEN", "cli-test-operator-token"),
            ("FIREBREAK_EDGE_TOKEN", "cli-test-edge-token-xx"),
        ],
    );
    let url = format!(
        "http://{}",
        control.wait_for_addr("control plane listening")
    );
    let fleet = dir.join("fleet.toml");
    let file = fleet.to_str().unwrap();
    std::fs::write(&fleet, dns_fleet(&["ams", "fra", "sin"])).unwrap();
    let (code, out, err) = client(&url, &["config", "push", file, "-m", "three"]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(&fleet, dns_fleet(&["ams"])).unwrap();
    let (code, out, err) = client(&url, &["config", "push", file, "-m", "one"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("removes 2 of 3 POPs (fra, sin)") && err.contains("--force"),
        "{err}"
    );
    let (code, out, err) = client(&url, &["config", "push", file, "-m", "one", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("version 2 stored"), "{out}");
    assert!(
        err.contains("forced past the DNS change guard") && err.contains("removes 2 of 3 POPs"),
        "{err}"
    );
    let (code, out, _) = client(&url, &["audit"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.contains("push-forced") && l.contains("removes 2 of 3 POPs")),
        "{out}"
    );
    drop(control);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_push_sends_the_geoip_database_the_file_names() {
    let dir = temp_dir("push-geoip");
    let mut control = Proc::spawn_with(
        &[
            "control",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.join("control").to_str().unwrap(),
        ],
        &[
            ("FIREBREAK_TOKEN", "cli-test-operator-token"),
            ("FIREBREAK_EDGE_TOKEN", "cli-test-edge-token-xx"),
        ],
    );
    let url = format!(
        "http://{}",
        control.wait_for_addr("control plane listening")
    );
    // The database sits next to the file, which names it relatively.
    let sub = dir.join("conf");
    std::fs::create_dir_all(&sub).unwrap();
    let db = firebreak_dns::testing::MmdbWriter::new(128)
        .insert("198.18.0.0/15", Some("NL"), Some("EU"))
        .build();
    std::fs::write(sub.join("geo.mmdb"), &db).unwrap();
    let fleet = sub.join("fleet.toml");
    let text = include_str!("../../../examples/dns.toml").replacen(
        "[dns]\n",
        "[dns]\ngeoip_file = \"geo.mmdb\"\n",
        1,
    );
    std::fs::write(&fleet, &text).unwrap();
    let push = |m: &str| client(&url, &["config", "push", fleet.to_str().unwrap(), "-m", m]);
    let (code, out, err) = push("with a database");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("version 1 stored"), "{out}");
    let (code, out, err) = client(&url, &["config", "show", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "MaxMind database dns.geoip_file names: sha256 {}",
            firebreak_protocol::sha256_hex(&db)
        )),
        "{out}"
    );
    // Not a database: the control plane refuses it, naming the file and the field.
    std::fs::write(sub.join("geo.mmdb"), b"junk").unwrap();
    let (code, _, err) = push("junk");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("fleet.toml:")
            && err.contains(": dns.geoip_file: geo.mmdb: not a valid MaxMind database"),
        "{err}"
    );
    // No file: refused before anything is sent.
    std::fs::remove_file(sub.join("geo.mmdb")).unwrap();
    let (code, _, err) = push("missing");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("dns.geoip_file") && err.contains("geo.mmdb: cannot read"),
        "{err}"
    );
    let (_, out, _) = client(&url, &["config", "versions"]);
    assert_eq!(out.lines().count(), 2, "header + one version:\n{out}");
    std::fs::remove_dir_all(&dir).ok();
}
