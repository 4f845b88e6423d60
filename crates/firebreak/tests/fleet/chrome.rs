//! Debian's Chromium, headless, driven over WebDriver: `chromedriver` started on a free
//! loopback port (killed by PID when dropped), one browser session with its own empty profile.
//!
//! The flags are the ones this machine needs: no sandbox (tests may run as root), no GPU, and
//! no background networking, component updates, sync or QUIC — without them Chromium keeps
//! dialling Google's hosts, which the closed network refuses.

use crate::harness::{free_port, temp_dir, KillOnDrop, TempDir};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where `.ci/run` installs them (Debian packages chromium and chromium-driver).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a page may take to show what a test waits for.
pub const PAGE_WAIT: Duration = Duration::from_secs(60);

/// A headless Chromium session; the driver process dies with it.
pub struct Browser {
    pub client: Client,
    _driver: KillOnDrop,
    pub dir: TempDir,
}

impl Browser {
    /// Starts chromedriver and opens a session. Fails (never skips) when Chromium is not
    /// installed: `.ci/run` installs it, so a missing browser is a broken machine.
    pub async fn start(name: &str) -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run .ci/run (it installs chromium and chromium-driver)"
            );
        }
        let dir = temp_dir(&format!("browser-{name}"));
        let port = free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).expect("driver log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::from(log.try_clone().expect("driver log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start chromedriver");
        let driver = KillOnDrop(child);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PAGE_WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen within {PAGE_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let profile = dir.join("profile");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session in headless Chromium");
        Self {
            client,
            _driver: driver,
            dir,
        }
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The page's text (what a reader sees), `body`'s inner text.
    pub async fn text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits (bounded) until the page's text contains `needle`; returns the text.
    pub async fn wait_text(&self, needle: &str) -> String {
        self.wait_page(needle, |t| t.contains(needle)).await
    }

    /// Waits (bounded) until the page's text satisfies `check`; returns the text.
    pub async fn wait_page(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let text = self.text().await;
            if check(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what:?} within {PAGE_WAIT:?}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's HTML source.
    pub async fn source(&self) -> String {
        self.client.source().await.unwrap_or_default()
    }

    /// Types `text` into the field `css` picks.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.expect(css);
        field.send_keys(text).await.expect("type");
    }

    /// Clicks what `css` picks.
    pub async fn click(&self, css: &str) {
        let el = self.client.find(Locator::Css(css)).await.expect(css);
        el.click().await.expect("click");
    }

    /// Runs `script` in the page; its return value.
    pub async fn run(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, Vec::new())
            .await
            .expect("script")
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Ends the session (the driver is killed when `self` drops).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// A test that fails never ends its session, and killing the driver leaves the browser
    /// running: end the processes started with this session's own profile directory.
    fn drop(&mut self) {
        let profile = format!("--user-data-dir={}", self.dir.join("profile").display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == profile.as_bytes())
            {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}
