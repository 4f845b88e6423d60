//! What the process-level tests share: children killed by PID when dropped, scratch
//! directories, free ports, log files and a deadline-bound poll.
#![allow(dead_code)] // Each test crate uses a part.

pub mod binary;
mod temp_dir;

pub use temp_dir::TempDir;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A child process, killed by PID (`Child::kill`) and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Kills and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh, empty directory `fb-{prefix}-{pid}-{name}-{n}` under the temporary directory,
/// removed when dropped unless the test is failing ([`TempDir`]).
pub fn temp_dir(prefix: &str, name: &str) -> TempDir {
    TempDir::new(prefix, name)
}

/// A TCP port free on 127.0.0.1 now, and never handed out before in this test process: the
/// kernel may give a released port again, and two processes of one test told the same port
/// collide (a DNS server once lost its port to an edge started after it was chosen).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A port free for both UDP and TCP (a DNS server listens on both).
pub fn free_dns_port() -> u16 {
    loop {
        let port = free_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `dir/name.log`, appended to.
pub fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap()
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `limit` with `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?} (a failure bound)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
