//! The `firebreak` binary as a child process that prints its addresses on stdout: what the
//! process-level tests of the CLI and of the status page share.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_firebreak");

/// A child process killed (by PID, via `Child::kill`) when the test ends.
pub struct Proc {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with(args, &[])
    }

    pub fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_logging(args, env, Stdio::null())
    }

    /// Spawns with stderr (the log) going to `stderr`.
    pub fn spawn_logging(args: &[&str], env: &[(&str, &str)], stderr: impl Into<Stdio>) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdout }
    }

    /// Reads stdout lines until one contains `marker`; returns the address after `http://`.
    pub fn wait_for_addr(&mut self, marker: &str) -> SocketAddr {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "process exited before printing {marker:?}");
            if line.contains(marker) {
                let url = line.split("http://").nth(1).unwrap();
                let addr = url.split(['/', ' ', '\n']).next().unwrap();
                return addr.parse().unwrap();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET without a token over a fresh connection: status line, headers and body.
pub fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
