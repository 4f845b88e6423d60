//! The public status page end to end: a real control plane over TCP, the `firebreak` CLI
//! opening and resolving incidents, the page and the feed read without a token, the static
//! export (`firebreak status export`, `firebreak control --status-export`), and incidents
//! written straight into an export directory with no control plane running.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod procs;
use procs::binary::{get, Proc, BIN};
const TOKEN: &str = "status-test-operator-token";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fb-status-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn client(control: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("FIREBREAK_CONTROL", control)
        .env("FIREBREAK_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn incidents_opened_with_the_cli_show_on_the_page_the_feed_and_the_exports() {
    let dir = temp_dir("e2e");
    let live_export = dir.join("live-export");
    let mut control = Proc::spawn_with(
        &[
            "control",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.join("control").to_str().unwrap(),
            "--status-export",
            live_export.to_str().unwrap(),
        ],
        &[
            ("FIREBREAK_TOKEN", TOKEN),
            ("FIREBREAK_EDGE_TOKEN", "status-test-edge-token-xx"),
        ],
    );
    let addr = control.wait_for_addr("control plane listening");
    let url = format!("http://{addr}");

    // The page needs no token; with no incident every component is operational.
    let page = get(addr, "/status");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("All systems operational"), "{page}");
    assert!(page.contains("Last updated <time"), "{page}");
    // The operators' API does.
    assert!(get(addr, "/v1/incidents").starts_with("HTTP/1.1 401"));

    let (code, out, err) = client(
        &url,
        &[
            "incident",
            "open",
            "--title",
            "Slow <b>answers</b> in ams",
            "--component",
            "pop/ams",
            "--component",
            "api",
            "--text",
            "Looking into it.",
            "--impact",
            "outage",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("incident 1 opened"), "{out}");
    // Bounds are enforced and named.
    let long = "x".repeat(300);
    let (code, _, err) = client(
        &url,
        &["incident", "open", "--title", &long, "--component", "api"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("at most 200 characters"), "{err}");

    let page = get(addr, "/status");
    assert!(
        page.contains("Slow &#60;b&#62;answers&#60;/b&#62; in ams"),
        "{page}"
    );
    assert!(page.contains("Looking into it."), "{page}");
    assert!(
        page.contains("<td>API</td><td class=\"state outage\">outage</td>"),
        "{page}"
    );
    let feed = get(addr, "/status/feed.atom");
    assert!(feed.starts_with("HTTP/1.1 200"), "{feed}");
    assert!(feed.contains("application/atom+xml"), "{feed}");
    assert!(feed.contains("Slow &#60;b&#62;answers"), "{feed}");

    let (code, out, err) = client(&url, &["incident", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("investigating") && out.contains("Slow <b>answers</b>"),
        "{out}"
    );

    // `status export` writes the page as static files (no token needed).
    let export = dir.join("export");
    let out = Command::new(BIN)
        .args([
            "status",
            "export",
            export.to_str().unwrap(),
            "--control",
            &url,
        ])
        .env_remove("FIREBREAK_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["index.html", "feed.atom", "incidents.json"] {
        assert!(read(&export.join(name)).contains("answers"), "{name}");
    }
    assert!(read(&export.join("index.html")).contains("has stopped updating"));

    // `status export --watch` keeps the copy current.
    let watched = dir.join("watched");
    let _watch = Proc::spawn_with(
        &[
            "status",
            "export",
            watched.to_str().unwrap(),
            "--watch",
            "--interval-s",
            "1",
            "--control",
            &url,
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read(&watched.join("index.html")).contains("answers") {
        assert!(Instant::now() < deadline, "--watch never wrote the page");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Resolving it through the CLI: the page and the exports follow.
    let (code, out, err) = client(
        &url,
        &[
            "incident", "update", "1", "--text", "Fixed.", "--state", "resolved",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("incident 1 is resolved"), "{out}");
    let page = get(addr, "/status");
    assert!(page.contains("All systems operational"), "{page}");
    assert!(page.contains("Fixed."), "{page}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for copy in [&live_export, &watched] {
        while !read(&copy.join("index.html")).contains("Fixed.") {
            assert!(
                Instant::now() < deadline,
                "{} never showed the update",
                copy.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn incidents_are_written_into_an_export_without_a_control_plane() {
    let dir = temp_dir("offline");
    let export = dir.join("export");
    // Nothing listens at --control: the export directory alone is written.
    let (code, out, err) = client(
        "http://127.0.0.1:9",
        &[
            "incident",
            "open",
            "--export-dir",
            export.to_str().unwrap(),
            "--by",
            "alice",
            "--title",
            "Control plane unreachable",
            "--component",
            "control-plane",
            "--impact",
            "outage",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("incident 1 opened"), "{out}");
    let html = read(&export.join("index.html"));
    assert!(html.contains("Control plane unreachable"), "{html}");
    assert!(
        html.contains("<td>Control plane</td><td class=\"state outage\">outage</td>"),
        "{html}"
    );
    assert!(read(&export.join("feed.atom")).contains("Control plane unreachable"));
    let (code, out, err) = client(
        "http://127.0.0.1:9",
        &[
            "incident",
            "update",
            "1",
            "--export-dir",
            export.to_str().unwrap(),
            "--text",
            "Restored.",
            "--state",
            "resolved",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = client(
        "http://127.0.0.1:9",
        &["incident", "list", "--export-dir", export.to_str().unwrap()],
    );
    assert_eq!(code, 0);
    assert!(out.contains("resolved"), "{out}");
    assert!(read(&export.join("index.html")).contains("Restored."));
    std::fs::remove_dir_all(&dir).ok();
}
