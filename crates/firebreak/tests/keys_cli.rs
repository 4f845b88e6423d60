//! `firebreak control rotate-key | revoke-key | keys` against a real control-plane process:
//! the key ring is kept (0600) beside the key file and survives a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_firebreak");
const OPERATOR: &str = "operator-token-0123456789";
const EDGE: &str = "edge-token-0123456789abcd";

/// A control-plane process, killed by PID when dropped.
struct ControlProc(Child);

impl Drop for ControlProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `firebreak control` on an ephemeral port; returns it and its URL once it listens.
fn control(dir: &Path) -> (ControlProc, String) {
    let mut child = Command::new(BIN)
        .args([
            "control",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .env("FIREBREAK_TOKEN", OPERATOR)
        .env("FIREBREAK_EDGE_TOKEN", EDGE)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let proc = ControlProc(child);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "control plane exited before listening"
        );
        if let Some(url) = line.strip_prefix("control plane listening on ") {
            return (proc, url.trim().to_owned());
        }
    }
}

fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FIREBREAK_CONTROL", url)
        .env("FIREBREAK_TOKEN", OPERATOR)
        .output()
        .unwrap()
}

fn ring(url: &str) -> serde_json::Value {
    let out = cli(url, &["control", "keys", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn rotated_and_revoked_keys_survive_a_control_plane_restart() {
    let dir = std::env::temp_dir().join(format!("fb-keys-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (proc, url) = control(&dir);
    let before = ring(&url);
    assert_eq!(before["generation"], 0);
    let first = before["current"].as_str().unwrap().to_owned();

    // No other key yet: revoking the only key is refused (exit 1), nothing changes.
    let out = cli(&url, &["control", "revoke-key", &first, "--after", "now"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A bad time is a usage error.
    let out = cli(
        &url,
        &["control", "revoke-key", &first, "--after", "yesterday"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let out = cli(
        &url,
        &["control", "rotate-key", "--overlap-s", "0", "-m", "yearly"],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SIGNING"), "{text}");
    let rotated = ring(&url);
    assert_eq!(rotated["generation"], 1);
    let second = rotated["current"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let out = cli(
        &url,
        &["control", "revoke-key", &first, "--after", "now-1s"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("REVOKED"));

    let ring_file = dir.join("control.key.ring");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ring_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the ring holds secret keys");
    }

    // Restarted, the control plane signs with the second key and says so in control.pub.
    drop(proc);
    let (_proc, url) = control(&dir);
    let after = ring(&url);
    assert_eq!(after["generation"], 2);
    assert_eq!(after["current"], serde_json::json!(second));
    let pub_text = std::fs::read_to_string(dir.join("control.pub")).unwrap();
    let second_public = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == serde_json::json!(second))
        .unwrap()["public"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(pub_text.trim(), second_public);
    let _ = std::fs::remove_dir_all(&dir);
}
