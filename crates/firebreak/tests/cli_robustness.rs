//! The CLI never panics (issue 11): a stdout closed early (`firebreak audit | head`) ends it
//! quietly, and an answer naming a time past year 9999 is refused, not a panic. The control
//! plane is a small fake over real TCP answering every request with one JSON document.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_firebreak");

/// Serves `body` (JSON) to every request on a loopback port, in a background thread.
fn fake_control(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = s.write_all(body.as_bytes());
        }
    });
    url
}

fn audit_entries(n: usize, at_ms: u64) -> String {
    let entry = format!(
        r#"{{"at_ms":{at_ms},"who":"operator","action":"deploy","version":7,"rollout":3,"message":"a line long enough to fill the pipe quickly"}}"#
    );
    format!("[{}]", vec![entry; n].join(","))
}

/// Waits for `child` to exit, at most `limit`; its stderr.
fn wait(mut child: std::process::Child, limit: Duration) -> (ExitStatus, String) {
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        let status = child.wait().unwrap();
        let _ = tx.send((status, err));
    });
    rx.recv_timeout(limit)
        .expect("the CLI did not exit in time")
}

/// `firebreak audit | head -1`: the reader goes away after one line; the CLI exits quietly
/// (before: "failed printing to stdout: Broken pipe", a panic, exit 101).
#[test]
fn stdout_closed_early_exits_quietly() {
    let url = fake_control(audit_entries(20_000, 1_700_000_000_000));
    let mut child = Command::new(BIN)
        .args(["audit", "--limit", "20000", "--control", &url])
        .env("FIREBREAK_TOKEN", "cli-robustness-token-0123")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert!(first.contains("deploy"), "{first}");
    // The reader (and with it the pipe's read end) is gone here.
    let (status, stderr) = wait(child, Duration::from_secs(60));
    assert!(
        !stderr.contains("panicked") && !stderr.contains("failed printing"),
        "{stderr}"
    );
    assert!(status.success(), "{status}: {stderr}");
}

/// An audit entry dated past year 9999 (which no HTTP date can say) is shown as invalid; the
/// CLI neither panics nor fails (before: httpdate panicked).
#[test]
fn http_date_past_year_9999_is_refused_not_a_panic() {
    for at_ms in [u64::MAX, 253_402_300_800_000] {
        let url = fake_control(audit_entries(1, at_ms));
        let out = Command::new(BIN)
            .args(["audit", "--control", &url])
            .env("FIREBREAK_TOKEN", "cli-robustness-token-0123")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.status.success(), "{}: {stderr}", out.status);
        assert!(stdout.contains("past year 9999"), "{stdout}");
    }
    // The last representable time still prints as a date.
    let url = fake_control(audit_entries(1, 253_402_300_799_999));
    let out = Command::new(BIN)
        .args(["audit", "--control", &url])
        .env("FIREBREAK_TOKEN", "cli-robustness-token-0123")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("9999"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
