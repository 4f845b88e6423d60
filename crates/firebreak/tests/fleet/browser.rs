//! The operator dashboard in a real browser (headless Chromium over WebDriver, see
//! `chrome.rs`), against the drill fleet of `rollouts.rs`: a control plane, six edges in three
//! cells under a steady load, one origin. An operator signs in, sees every edge, watches a
//! good version's waves advance and a faulty version's gate turn red and roll it back — on
//! pages that update themselves —, the public status page and its static export show the
//! incident the gate opened, and a cross-site form is refused.
//!
//! Screenshots of the pages are taken on every run; with `FIREBREAK_SCREENSHOTS=DIR` they are
//! written there (README's pictures: `FIREBREAK_SCREENSHOTS=docs/screenshots cargo test -p
//! firebreak --test fleet browser`), else into the test's scratch directory.

use crate::chrome::Browser;
use crate::harness::OPERATOR;
use crate::rollouts::{even_mix, two, Fleet};
use http::{Method, StatusCode};
use serde_json::Value;
use std::path::PathBuf;

/// Where a screenshot named `name` goes.
fn shot(b: &Browser, name: &str) -> PathBuf {
    match std::env::var_os("FIREBREAK_SCREENSHOTS") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            // Relative to the repository (cargo runs tests in the crate's directory).
            let dir = if dir.is_relative() {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../..")
                    .join(dir)
            } else {
                dir
            };
            dir.join(format!("{name}.png"))
        }
        None => b.dir.join(format!("{name}.png")),
    }
}

/// A marker set in the page's JavaScript context: still there later means the page was
/// updated in place, not reloaded.
const MARK: &str = "window.fbNotReloaded = 'yes'; return true;";
const MARKED: &str = "return window.fbNotReloaded || 'reloaded';";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_a_rollout_and_a_rollback_in_the_dashboard() {
    let fleet = Fleet::start("browser", |o| two("v1", o, o, "")).await;
    let load = fleet.load(even_mix()).await;
    let b = Browser::start("dashboard").await;
    let base = fleet.c.url.clone();

    // Signed out, the dashboard asks for the token; the sign-in posts it (never in a URL).
    b.goto(&format!("{base}/ui/")).await;
    b.wait_text("Operator token").await;
    assert!(b.url().await.ends_with("/ui/login"), "{}", b.url().await);
    b.fill("input[name=token]", OPERATOR).await;
    b.click("form[action='/ui/login'] button[type=submit]")
        .await;

    // The fleet page: every edge of every cell, on version 1.
    let text = b.wait_text("c3-e2").await;
    for cell in ["c1", "c2", "c3"] {
        for i in 1..=2 {
            let id = format!("{cell}-e{i}");
            assert!(
                text.contains(&id),
                "edge {id} missing from the fleet page:\n{text}"
            );
        }
        assert!(text.contains(&format!("Cell {cell}")), "{text}");
    }
    assert!(!b.url().await.contains(OPERATOR));
    assert!(
        !b.source().await.contains(OPERATOR),
        "the token is in the page"
    );
    b.screenshot(&shot(&b, "fleet")).await;

    // A good version: its waves advance on the rollouts page, which updates itself.
    b.goto(&format!("{base}/ui/rollouts")).await;
    b.wait_text("Rollouts").await;
    assert_eq!(b.run(MARK).await, Value::Bool(true));
    let v2 = fleet.push(&two("v2", fleet.origin, fleet.origin, "")).await;
    let good = fleet.deploy(v2, "watched").await;
    let title = format!("Rollout {good} of v{v2}");
    let rolling = b
        .wait_page("the rollout's waves advancing", |t| {
            t.contains(&title) && t.contains("rolling out")
        })
        .await;
    assert!(rolling.contains("baking"), "{rolling}");
    let done = b.wait_text(&format!("{title}: complete")).await;
    assert!(!done.contains("not reached"), "{done}");
    assert_eq!(b.run(MARKED).await, Value::from("yes"), "the page reloaded");

    // The public status page is also written as static files, as it would be for hosting
    // elsewhere (`firebreak control --status-export DIR`).
    let export = b.dir.join("status-export");
    firebreak_control::status::export::spawn(
        std::sync::Arc::downgrade(&fleet.c.plane),
        export.clone(),
    );

    // A faulty version: the gate turns red in the canary wave and the rollout is rolled back,
    // on the same page, without a reload.
    let fault = "[[service.fault]]\naction = \"status\"\nstatus = 503\npercent = 50\n";
    let v3 = fleet
        .push(&two("v3", fleet.origin, fleet.origin, fault))
        .await;
    let bad = fleet.deploy(v3, "default").await;
    let text = b
        .wait_text(&format!("Rollout {bad} of v{v3}: rolled back"))
        .await;
    assert!(text.contains("failed; rolled back"), "{text}");
    b.wait_text(&format!("The fleet runs v{v2}.")).await;
    assert!(
        text.contains("fails"),
        "no failing gate check shown:\n{text}"
    );
    assert!(text.contains("5xx"), "{text}");
    assert_eq!(b.run(MARKED).await, Value::from("yes"), "the page reloaded");
    let red = b
        .run("return document.querySelectorAll('#live td.bad, #live span.bad').length;")
        .await;
    assert!(red.as_u64().unwrap_or(0) > 0, "nothing drawn red");
    b.screenshot(&shot(&b, "rollouts")).await;
    fleet.all_on(v2, "v2").await;

    // The gate's trip is an incident on the public status page (no sign-in), opened and
    // resolved by itself, and in the exported files.
    b.goto(&format!("{base}/status")).await;
    let page = b
        .wait_page("the gate's incident, resolved, on the status page", |t| {
            t.contains("Configuration change rolled back") && t.to_lowercase().contains("resolved")
        })
        .await;
    assert!(page.contains("Last updated"), "{page}");
    b.screenshot(&shot(&b, "status")).await;
    let file = format!("file://{}", export.join("index.html").display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let written = std::fs::read_to_string(export.join("index.html")).unwrap_or_default();
        if written.contains("Configuration change rolled back") && written.contains("resolved") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the export never showed the resolved incident:\n{written}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    b.goto(&file).await;
    let exported = b.wait_text("Configuration change rolled back").await;
    assert!(exported.contains("stopped updating"), "{exported}");
    let feed = std::fs::read_to_string(export.join("feed.atom")).unwrap();
    assert!(feed.contains("Configuration change rolled back"), "{feed}");

    // The operator tells the users: an incident opened and updated in the dashboard shows on
    // the public page.
    b.goto(&format!("{base}/ui/incidents")).await;
    b.wait_text("Configuration change rolled back").await;
    b.fill(
        "form[action='/ui/incidents'] input[name=title]",
        "Slow answers in pop-c2",
    )
    .await;
    b.fill(
        "form[action='/ui/incidents'] input[name=components]",
        "pop/pop-c2",
    )
    .await;
    b.fill(
        "form[action='/ui/incidents'] input[name=text]",
        "Looking into it.",
    )
    .await;
    b.click("form[action='/ui/incidents'] button[type=submit]")
        .await;
    let listed = b.wait_text("opened.").await;
    assert!(listed.contains("Slow answers in pop-c2"), "{listed}");
    b.fill(
        "form.actions input[name=text]",
        "Found it: a full disk; fixed.",
    )
    .await;
    b.click("form.actions button[type=submit]").await;
    b.wait_text("Found it: a full disk; fixed.").await;
    b.goto(&format!("{base}/status")).await;
    let public = b.wait_text("Slow answers in pop-c2").await;
    assert!(public.contains("Found it: a full disk; fixed."), "{public}");

    // A cross-site request forgery: a page elsewhere posts a rollback form into the
    // dashboard while the operator is signed in. Refused; the fleet stays where it is.
    let (_, audit_before) = fleet.c.call(Method::GET, "/v1/audit?limit=500", None).await;
    let attacker = attacker_page(&format!("{base}/ui/rollback")).await;
    b.goto(&attacker).await;
    let refused = b
        .wait_page("the forged form refused", |t| {
            t.contains("may only be sent from this dashboard")
                || t.contains("CSRF token is missing or wrong")
                || t.contains("not signed in")
        })
        .await;
    assert!(!refused.contains("rolled back to"), "{refused}");
    let (status, audit_after) = fleet.c.call(Method::GET, "/v1/audit?limit=500", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        audit_after.as_array().map(Vec::len),
        audit_before.as_array().map(Vec::len),
        "the forged form changed something: {audit_after:#}"
    );
    fleet.all_on(v2, "v2").await;

    // The other pages render for the signed-in operator.
    for (path, needle) in [
        ("/ui/versions", "v3"),
        ("/ui/audit", "rolled-back"),
        ("/ui/traffic", "c1"),
        ("/ui/dns", "DNS"),
    ] {
        b.goto(&format!("{base}{path}")).await;
        b.wait_text(needle).await;
        let name = path.trim_start_matches("/ui/");
        b.screenshot(&shot(&b, name)).await;
    }
    b.close().await;
    load.stop().await;
}

/// Serves, on another port of loopback, a page whose form posts a rollback to `target` as
/// soon as it loads (without the dashboard's CSRF token, which the attacker cannot read);
/// returns its URL.
async fn attacker_page(target: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = format!(
        "<!doctype html><title>win a prize</title>\
         <form id=f method=post action=\"{target}\">\
         <input type=hidden name=csrf value=guessed>\
         <input type=hidden name=version value=1>\
         <input type=hidden name=message value=forged></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    format!("http://{addr}/")
}
