//! Origin shield with real processes: `firebreak up` (a control plane, three POPs of two edge
//! processes, the demo origin; the demo service shielded by POP sin). A cold object requested
//! from every edge of every POP costs the origin exactly one request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod procs;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_firebreak");

/// `firebreak up`, stopped with SIGTERM (by its PID) at the end, killed if still running.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Up {
    fn start(port: u16, data: &std::path::Path) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "up",
                "--port",
                &port.to_string(),
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Lines up to and including the first containing `marker` (within `limit`).
    fn until(&self, marker: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(marker);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("up never printed {marker:?} within {limit:?}; printed {seen:#?}"),
            }
        }
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One GET; the head and body as text.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// How many `Via` hops a response names (an answer through the shield has two).
fn via_hops(response: &str) -> usize {
    response
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.to_ascii_lowercase().starts_with("via:"))
        .flat_map(|l| l.split(','))
        .count()
}

fn origin_requests(origin: SocketAddr, path: &str) -> u64 {
    let r = get(origin, &format!("/__origin/stats?path={path}"));
    let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {r}"));
    v["path_requests"].as_u64().unwrap()
}

fn addr_after(line: &str, prefix: &str) -> SocketAddr {
    line.split(prefix)
        .nth(1)
        .and_then(|u| u.split(['/', ' ']).next())
        .unwrap_or_else(|| panic!("no {prefix} address in {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn a_cold_object_from_every_edge_of_every_pop_costs_one_origin_request() {
    // Below the ephemeral range (32768+), where outgoing connections take their ports.
    let port = 10_000 + (std::process::id() % 8_000) as u16;
    let data = procs::temp_dir("shield", "up");
    let mut up = Up::start(port, &data);
    // Printed once the example configuration has rolled out through every wave.
    let lines = up.until("  demo origin ", Duration::from_secs(240));
    let mut edges: Vec<(String, SocketAddr)> = lines
        .iter()
        .filter(|l| l.starts_with("  edge "))
        .map(|l| {
            let id = l.split_whitespace().nth(1).unwrap().to_owned();
            (id, addr_after(l, "http://"))
        })
        .collect();
    assert_eq!(edges.len(), 6, "{lines:#?}");
    let origin = addr_after(lines.last().unwrap(), "http://");
    edges.sort();

    // Edges learn the shield's edges and the tier secret from the control plane every health
    // interval: wait until every edge outside sin answers a miss through the shield (two Via
    // hops), each with objects of its own.
    for (id, edge) in edges.iter().filter(|(id, _)| !id.starts_with("sin-")) {
        procs::wait_for(
            &format!("edge {id} answers misses through the shield"),
            Duration::from_secs(60),
            {
                let mut n = 0;
                move || {
                    n += 1;
                    let r = get(*edge, &format!("/static/warm-{id}-{n}"));
                    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
                    (via_hops(&r) == 2).then_some(())
                }
            },
        );
    }

    // The measurement: one cold object, asked of all six edges in turn.
    let path = format!("/static/cold-{}.txt", std::process::id());
    assert_eq!(origin_requests(origin, &path), 0);
    for (id, edge) in &edges {
        let r = get(*edge, &path);
        assert!(r.starts_with("HTTP/1.1 200"), "{id}: {r}");
        assert!(r.contains("static object"), "{id}: {r}");
    }
    let n = origin_requests(origin, &path);
    println!("origin requests for one cold object asked of 6 edges in 3 POPs: {n}");
    assert_eq!(n, 1, "a cold object cost the origin {n} requests");

    // The same, all at once: concurrent misses coalesce at both tiers.
    let path = format!("/static/together-{}.txt", std::process::id());
    let threads: Vec<_> = edges
        .iter()
        .flat_map(|(_, edge)| [*edge, *edge])
        .map(|edge| {
            let path = path.clone();
            std::thread::spawn(move || get(edge, &path))
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    let n = origin_requests(origin, &path);
    println!("origin requests for one cold object asked twice at once of each of 6 edges: {n}");
    assert_eq!(
        n, 1,
        "concurrent cold requests cost the origin {n} requests"
    );
    up.stop();
    std::fs::remove_dir_all(&data).ok();
}
