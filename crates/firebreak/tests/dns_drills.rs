//! DNS drills of issue 13 with real processes: `firebreak control`, `firebreak edge --control`
//! and `firebreak dns --control` started from the binary under test on loopback ports, each
//! with its own data directory; the test asks the DNS server over a real UDP socket (hickory-
//! proto messages, EDNS Client Subnet placing the client in a region).
//!
//! - every edge of a POP killed: the DNS server's own checks move the answers to the next POP
//!   of the region within a bound derived from the `[dns]` timings, never answering empty, and
//!   bring them back (after `healthy_after` good rounds) when the edges return;
//! - the control plane down: the DNS server keeps answering and keeps moving answers on its
//!   own checks, and a restarted DNS server answers from the version kept on disk;
//! - a push that removes most of the POPs is refused at the control plane unless forced.
//!
//! Deadlines are failure bounds (ten times what the configuration promises), not timing
//! assertions; the times measured are printed (`--nocapture`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod procs;
use procs::{free_dns_port, free_port, log_file, temp_dir, wait_for, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_firebreak");
const OPERATOR: &str = "dns-drill-operator-token-01";
const JOIN: &str = "dns-drill-join-token-234567";
/// Processes starting, versions arriving: not what the drills measure.
const START: Duration = Duration::from_secs(60);

/// The `[dns]` timings of the drills.
const TTL_S: u64 = 1;
const INTERVAL_MS: u64 = 250;
const TIMEOUT_MS: u64 = 200;
const UNHEALTHY_AFTER: u64 = 2;
const HEALTHY_AFTER: u64 = 2;

/// What the configuration promises for a POP leaving the answers: `unhealthy_after` rounds
/// (plus the round in progress and its timeout), then one TTL for caches. The drills wait ten
/// times that before failing.
fn leave_bound() -> Duration {
    Duration::from_millis(TTL_S * 1000 + INTERVAL_MS * (UNHEALTHY_AFTER + 1) + TIMEOUT_MS)
}

/// The same for a POP coming back: `healthy_after` good rounds.
fn return_bound() -> Duration {
    Duration::from_millis(TTL_S * 1000 + INTERVAL_MS * (HEALTHY_AFTER + 1) + TIMEOUT_MS)
}

/// `firebreak control` on 127.0.0.1:`port` over `dir` (plain HTTP).
struct ControlProc {
    url: String,
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl ControlProc {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let mut c = Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir: dir.to_owned(),
            proc: None,
        };
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(BIN)
            .args([
                "control",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                dir.to_str().unwrap(),
            ])
            .env("FIREBREAK_TOKEN", OPERATOR)
            .env("FIREBREAK_EDGE_TOKEN", JOIN)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, "control"))
            .spawn()
            .unwrap();
        c.proc = Some(Proc(child));
        wait_for("the control plane listening", START, || {
            (TcpStream::connect(("127.0.0.1", c.port)).is_ok() && c.trust().exists()).then_some(())
        });
        c
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        self.proc.take().expect("control plane not running").kill();
    }

    fn trust(&self) -> PathBuf {
        self.dir.join("control.pub")
    }

    /// `firebreak config push FILE -m MSG --activate [--force]`: (success, stdout, stderr).
    fn push(&self, doc: &str, name: &str, force: bool) -> (bool, String, String) {
        let file = self.dir.join(format!("{name}.toml"));
        std::fs::write(&file, doc).unwrap();
        let mut args = vec![
            "config",
            "push",
            file.to_str().unwrap(),
            "-m",
            name,
            "--activate",
            "--control",
            &self.url,
        ];
        if force {
            args.push("--force");
        }
        let out = Command::new(BIN)
            .args(&args)
            .env("FIREBREAK_TOKEN", OPERATOR)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Waits until `firebreak rollout status` says the latest rollout completed.
    fn wait_rollout_complete(&self) {
        wait_for("the rollout completing", START, || {
            let out = Command::new(BIN)
                .args(["rollout", "status", "--control", &self.url])
                .env("FIREBREAK_TOKEN", OPERATOR)
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .next()
                .is_some_and(|l| l.starts_with("rollout ") && l.ends_with(": complete"))
                .then_some(())
        });
    }

    /// `firebreak config versions`' output.
    fn versions(&self) -> String {
        let out = Command::new(BIN)
            .args(["config", "versions", "--control", &self.url])
            .env("FIREBREAK_TOKEN", OPERATOR)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// One `firebreak edge --control` process: its POP (also its cell), ports and data directory.
struct Edge {
    id: String,
    pop: String,
    listen: u16,
    admin: u16,
    data: PathBuf,
    proc: Option<Proc>,
}

impl Edge {
    fn new(dir: &Path, pop: &str, n: usize) -> Self {
        let id = format!("{pop}-{n}");
        Self {
            data: dir.join(&id),
            id,
            pop: pop.to_owned(),
            listen: free_port(),
            admin: free_port(),
            proc: None,
        }
    }

    fn healthz(&self) -> String {
        format!("http://127.0.0.1:{}/healthz", self.admin)
    }

    fn start(&mut self, control: &ControlProc) {
        std::fs::create_dir_all(&self.data).unwrap();
        let child = Command::new(BIN)
            .args([
                "edge",
                "--control",
                &control.url,
                "--trust",
                control.trust().to_str().unwrap(),
                "--data-dir",
                self.data.to_str().unwrap(),
                "--id",
                &self.id,
                "--pop",
                &self.pop,
                "--cell",
                &self.pop,
                "--listen",
                &format!("127.0.0.1:{}", self.listen),
                "--admin",
                &format!("127.0.0.1:{}", self.admin),
                "--heartbeat-ms",
                "300",
                "--health-interval-ms",
                "300",
            ])
            .env("FIREBREAK_EDGE_TOKEN", JOIN)
            .current_dir(&self.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&self.data, "edge"))
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
    }

    fn kill(&mut self) {
        self.proc.take().expect("edge not running").kill();
    }

    /// Whether its admin `/healthz` answers 200 now.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.admin)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.starts_with("HTTP/1.1 200")
    }

    fn wait_healthy(&self) {
        wait_for(&format!("edge {} healthy", self.id), START, || {
            self.healthy().then_some(())
        });
    }
}

/// One `firebreak dns --control` process; its stdout lines are collected by a thread.
struct DnsProc {
    udp: SocketAddr,
    dir: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    proc: Option<Proc>,
}

impl DnsProc {
    fn new(dir: &Path) -> Self {
        Self {
            udp: SocketAddr::from(([127, 0, 0, 1], free_dns_port())),
            dir: dir.join("dns"),
            lines: Arc::default(),
            proc: None,
        }
    }

    fn start(&mut self, control: &ControlProc) {
        std::fs::create_dir_all(&self.dir).unwrap();
        self.lines.lock().unwrap().clear();
        let mut child = Command::new(BIN)
            .args([
                "dns",
                "--control",
                &control.url,
                "--trust",
                control.trust().to_str().unwrap(),
                "--data-dir",
                self.dir.to_str().unwrap(),
                "--listen",
                &self.udp.to_string(),
                "--threads",
                "1",
                "--pop",
                "pa",
                "--id",
                "dns-1",
                "--heartbeat-ms",
                "300",
                "--health-interval-ms",
                "300",
            ])
            .env("FIREBREAK_EDGE_TOKEN", JOIN)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&self.dir, "dns"))
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let lines = Arc::clone(&self.lines);
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        self.proc = Some(Proc(child));
    }

    fn kill(&mut self) {
        self.proc.take().expect("dns not running").kill();
    }

    /// Waits for a stdout line containing `marker`; returns it.
    fn wait_line(&self, marker: &str) -> String {
        wait_for(
            &format!("dns printing {marker:?} (see {})", self.dir.display()),
            START,
            || {
                self.lines
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| l.contains(marker))
                    .cloned()
            },
        )
    }
}

/// What one answer for a service name held.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// A records.
    Addrs(Vec<IpAddr>),
    /// A CNAME (the service's fallback).
    Cname(String),
}

/// Asks `name` A from a client in `subnet` (EDNS Client Subnet, /24) over UDP. `None`: no
/// response within 2 s (the server not listening yet, or a lost datagram).
fn ask(to: SocketAddr, name: &str, subnet: &str) -> Option<Message> {
    let mut q = Message::new(0x1313, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(
            subnet.parse().unwrap(),
            24,
            0,
        )));
    q.set_edns(edns);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&q.to_vec().unwrap(), to).ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(Message::from_vec(&buf[..n]).unwrap())
}

/// The answer to `demo.cdn.test` A for a client of the region `near`. Panics on an answer
/// with neither an address nor a CNAME: the drills' invariant is that the service's name never
/// answers empty.
fn demo(to: SocketAddr) -> Option<Answer> {
    let m = ask(to, "demo.cdn.test.", NEAR)?;
    let addrs: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    if !addrs.is_empty() {
        return Some(Answer::Addrs(addrs));
    }
    let cname = m.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) => Some(c.0.to_ascii()),
        _ => None,
    });
    match cname {
        Some(c) => Some(Answer::Cname(c)),
        None => panic!("an empty answer for demo.cdn.test: {m:?}"),
    }
}

/// The client prefix of the region `near` (preference: pa, then pb).
const NEAR: &str = "198.51.100.0";
const PA: &str = "192.0.2.1";
const PB: &str = "192.0.2.2";
const PC: &str = "192.0.2.3";

/// The SOA serial the server answers.
fn serial(to: SocketAddr) -> u32 {
    let mut q = Message::new(1, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(
        Name::from_ascii("cdn.test.").unwrap(),
        RecordType::SOA,
    ));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(&q.to_vec().unwrap(), to).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    match &Message::from_vec(&buf[..n]).unwrap().answers[0].data {
        RData::SOA(s) => s.serial,
        other => panic!("{other:?}"),
    }
}

fn addrs(ip: &str) -> Answer {
    Answer::Addrs(vec![ip.parse().unwrap()])
}

/// A fleet document: services `demo` (in the zone `cdn.test`, with a fallback CNAME) on an
/// origin nobody calls; `pops` are (name, answer, check URLs); the region `near` (the test's
/// client prefix, and the default) prefers them in order. The rollout plan needs no traffic.
fn document(pops: &[(&str, &str, Vec<String>)]) -> String {
    let mut doc = format!(
        r#"
[rollout]
edge_gone_s = 10
stage_timeout_s = 20
[[rollout.plan]]
name = "default"
waves = [{{ percent = 100 }}]
bake_s = 1
interval_s = 1
min_requests = 0
max_wait_s = 30
activate_timeout_s = 30

[dns]
zone = "cdn.test"
default_region = "near"
ttl_s = {TTL_S}

[dns.checks]
interval_ms = {INTERVAL_MS}
timeout_ms = {TIMEOUT_MS}
unhealthy_after = {UNHEALTHY_AFTER}
healthy_after = {HEALTHY_AFTER}

[[dns.ns]]
name = "ns1.cdn.test"
addrs = ["127.0.0.1"]

[[dns.region]]
name = "near"
prefixes = ["{NEAR}/24"]
pops = [{}]

[[service]]
name = "demo"
hosts = ["demo.test"]
[service.origin]
servers = [{{ addr = "127.0.0.1:9" }}]
[service.dns]
fallback_cname = "demo.backup.example"
"#,
        pops.iter()
            .map(|(name, _, _)| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (name, answer, checks) in pops {
        let checks: Vec<String> = checks.iter().map(|c| format!("\"{c}\"")).collect();
        doc.push_str(&format!(
            "\n[[dns.pop]]\nname = \"{name}\"\nanswers = [\"{answer}\"]\nchecks = [{}]\n",
            checks.join(", ")
        ));
    }
    doc
}

/// A network for drills a and b: a control plane, POP `pa` of two edges and POP `pb` of one,
/// a DNS server checking them; the version pushed before anyone joins (so its rollout has
/// nobody to wait for) and taken by each member as it joins.
struct Net {
    control: ControlProc,
    pa: Vec<Edge>,
    pb: Vec<Edge>,
    dns: DnsProc,
    /// Last: removed after the processes above have stopped.
    dir: procs::TempDir,
}

impl Net {
    fn start(name: &str) -> Net {
        Net::start_checking(name, true)
    }

    /// `checks`: whether the DNS server checks the POPs itself; without, it steers by the
    /// control plane's view alone, which calls an edge gone after [`REPORTED_GONE_S`].
    fn start_checking(name: &str, checks: bool) -> Net {
        let dir = temp_dir("dns-drills", name);
        let control = ControlProc::start(&dir.join("control"));
        let mut pa = vec![Edge::new(&dir, "pa", 1), Edge::new(&dir, "pa", 2)];
        let mut pb = vec![Edge::new(&dir, "pb", 1)];
        let urls = |edges: &[Edge]| match checks {
            true => edges.iter().map(Edge::healthz).collect::<Vec<_>>(),
            false => Vec::new(),
        };
        let mut doc = document(&[("pa", PA, urls(&pa)), ("pb", PB, urls(&pb))]);
        if !checks {
            doc = doc.replace(
                "edge_gone_s = 10",
                &format!("edge_gone_s = {REPORTED_GONE_S}"),
            );
        }
        let (ok, out, err) = control.push(&doc, "v1", false);
        assert!(ok, "{out}{err}");
        for e in pa.iter_mut().chain(pb.iter_mut()) {
            e.start(&control);
        }
        let mut dns = DnsProc::new(&dir);
        dns.start(&control);
        dns.wait_line("listening on udp");
        for e in pa.iter().chain(&pb) {
            e.wait_healthy();
        }
        Net {
            dir,
            control,
            pa,
            pb,
            dns,
        }
    }

    /// Asks until the answer is `want`, asserting every answer on the way is non-empty;
    /// returns the time it took and how many answers were seen.
    fn until(&self, what: &str, want: &Answer, limit: Duration) -> (Duration, usize) {
        let started = Instant::now();
        let mut seen = 0;
        wait_for(what, limit, || {
            let got = demo(self.dns.udp)?;
            seen += 1;
            (got == *want).then_some(())
        });
        (started.elapsed(), seen)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for e in self.pa.iter_mut().chain(self.pb.iter_mut()) {
            e.proc.take();
        }
        self.dns.proc.take();
        self.control.proc.take();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Drill a: every edge of POP `pa` killed. The region `near` prefers pa, then pb: answers are
/// pa's, move to pb within the bound after the kill (the DNS server's own checks), never
/// empty, and come back to pa when its edges return (after `healthy_after` good rounds).
#[test]
fn killing_every_edge_of_a_pop_moves_its_answers_to_the_next_pop_and_back() {
    let mut net = Net::start("kill-pop");
    let (t, _) = net.until("answers from pa", &addrs(PA), START);
    eprintln!("answers from pa {t:?} after the edges were healthy");

    let killed = Instant::now();
    for e in &mut net.pa {
        e.kill();
    }
    let limit = leave_bound() * 10;
    let (t, n) = net.until("answers moving from pa to pb", &addrs(PB), limit);
    eprintln!(
        "pa's edges killed: answers moved to pb after {t:?} ({n} answers, none empty); the configuration's bound is {:?} (TTL {TTL_S} s + {} rounds of {INTERVAL_MS} ms + timeout {TIMEOUT_MS} ms), failure at {limit:?}",
        leave_bound(),
        UNHEALTHY_AFTER + 1
    );
    // They stay on pb while pa is down.
    for _ in 0..20 {
        assert_eq!(demo(net.dns.udp), Some(addrs(PB)));
    }

    for e in &mut net.pa {
        e.start(&net.control);
    }
    for e in &net.pa {
        e.wait_healthy();
    }
    let healthy = Instant::now();
    let limit = return_bound() * 10;
    let (t, n) = net.until("answers coming back to pa", &addrs(PA), limit);
    eprintln!(
        "pa's edges back (healthy {:?} after the kill): answers back on pa {t:?} later ({n} answers, none empty); bound {:?} ({HEALTHY_AFTER} good rounds + 1 + timeout + TTL), failure at {limit:?}",
        healthy - killed,
        return_bound()
    );
}

/// How long the control plane waits for an edge's report before it calls it gone (drill d).
const REPORTED_GONE_S: u64 = 2;

/// Drill d: no checks in the data, so the DNS server steers by the control plane's view of
/// each POP (`GET /v1/pops`, from the edges' reports) alone. pa's edges killed: once the
/// control plane calls them gone, answers move to pb, never empty; back on pa when its edges
/// report again.
#[test]
fn the_control_planes_view_of_a_pop_moves_answers_without_checks_of_its_own() {
    let mut net = Net::start_checking("reported", false);
    net.until("answers from pa", &addrs(PA), START);
    // The control plane reads the live window from the version the fleet runs; until the
    // first rollout completes it uses the default (60 s).
    net.control.wait_rollout_complete();
    let killed = Instant::now();
    for e in &mut net.pa {
        e.kill();
    }
    // Gone after REPORTED_GONE_S, seen at the next poll (300 ms), answered after the TTL.
    let bound = Duration::from_secs(REPORTED_GONE_S + TTL_S) + Duration::from_millis(300);
    let limit = bound * 10;
    let (t, n) = net.until("answers moving from pa to pb", &addrs(PB), limit);
    eprintln!(
        "pa's edges killed: the control plane's view moved answers to pb after {:?} ({n} answers, none empty); bound {bound:?}, failure at {limit:?}",
        killed.elapsed().max(t)
    );
    for e in &mut net.pa {
        e.start(&net.control);
    }
    let (t, n) = net.until("answers coming back to pa", &addrs(PA), START);
    eprintln!("pa's edges restarted: answers back on pa after {t:?} ({n} answers)");
}

/// Drill b: the control plane killed. The DNS server keeps answering, and its own checks
/// still move the answers (pa's edges killed one by one: one is enough to keep pa, none moves
/// it to pb). Restarted while the control plane is still down, the DNS server answers from
/// the version on disk, and its checks move pa out again.
#[test]
fn with_the_control_plane_down_dns_keeps_answering_and_checking_and_restarts_from_disk() {
    let mut net = Net::start("control-down");
    net.until("answers from pa", &addrs(PA), START);
    net.control.kill();
    for _ in 0..20 {
        assert_eq!(demo(net.dns.udp), Some(addrs(PA)), "control plane down");
    }

    // One of pa's two edges gone: pa still answers its checks, clients stay there. Wait for
    // the DNS server to have checked since (a round that could have failed, twice over).
    net.pa[0].kill();
    let gone = Instant::now();
    while gone.elapsed() < leave_bound() * 2 {
        assert_eq!(demo(net.dns.udp), Some(addrs(PA)), "one edge of pa is up");
    }

    net.pa[1].kill();
    let limit = leave_bound() * 10;
    let (t, n) = net.until(
        "answers moving to pb, control plane down",
        &addrs(PB),
        limit,
    );
    eprintln!(
        "control plane down, pa's last edge killed: answers moved to pb after {t:?} ({n} answers, none empty); bound {:?}, failure at {limit:?}",
        leave_bound()
    );

    // A new DNS process, the control plane still down: it serves the version kept on disk.
    net.dns.kill();
    let restarted = Instant::now();
    net.dns.start(&net.control);
    let serving = net.dns.wait_line("serving (serial");
    assert!(
        serving.starts_with("dns dns-1 serving (serial "),
        "{serving}"
    );
    let first = wait_for("an answer after the restart", START, || demo(net.dns.udp));
    eprintln!(
        "dns restarted with the control plane down: first answer {first:?} after {:?}",
        restarted.elapsed()
    );
    // POPs start healthy in a new process; its own checks move pa out again.
    let (t, n) = net.until(
        "answers moving to pb after the restart",
        &addrs(PB),
        START + limit,
    );
    eprintln!("after the restart: answers on pb after {t:?} ({n} answers, none empty)");
}

/// Drill c: a version whose `[dns]` removes two of three POPs (more than `max_removed_share`,
/// 0.5 by default) is refused at push: the CLI exits non-zero and names the reason, no
/// version is stored, the DNS server's answers do not change. Forced, it is stored, rolled
/// out, and the answers follow.
#[test]
fn a_push_removing_most_pops_is_refused_unless_forced() {
    let dir = temp_dir("dns-drills", "removal");
    let control = ControlProc::start(&dir.join("control"));
    let no_checks = Vec::new;
    let three = document(&[
        ("pa", PA, no_checks()),
        ("pb", PB, no_checks()),
        ("pc", PC, no_checks()),
    ]);
    let (ok, out, err) = control.push(&three, "three-pops", false);
    assert!(ok, "{out}{err}");
    let mut dns = DnsProc::new(&dir);
    dns.start(&control);
    dns.wait_line("listening on udp");
    wait_for("answers from pa", START, || {
        (demo(dns.udp)? == addrs(PA)).then_some(())
    });
    // Version 1's rollout ends before the next push (one at a time).
    control.wait_rollout_complete();
    let before = serial(dns.udp);
    let versions = control.versions();

    // Only pc left: pa and pb removed, 2 of 3 POPs.
    let one = document(&[("pc", PC, no_checks())]);
    let (ok, out, err) = control.push(&one, "only-pc", false);
    assert!(!ok, "a push removing 2 of 3 POPs was accepted: {out}");
    assert!(
        err.contains("max_removed_share") || err.contains("removes"),
        "the refusal does not say why: {err}"
    );
    eprintln!("push removing pa and pb refused: {}", err.trim());
    assert_eq!(
        control.versions(),
        versions,
        "a refused push stored a version"
    );
    for _ in 0..20 {
        assert_eq!(demo(dns.udp), Some(addrs(PA)), "answers after the refusal");
    }
    assert_eq!(
        serial(dns.udp),
        before,
        "the DNS data changed after a refused push"
    );

    // Forced: stored, rolled out, and the DNS server answers pc.
    let (ok, out, err) = control.push(&one, "only-pc-forced", true);
    assert!(ok, "the forced push was refused: {out}{err}");
    assert_ne!(control.versions(), versions);
    let started = Instant::now();
    wait_for("answers from pc after the forced push", START, || {
        (demo(dns.udp)? == addrs(PC)).then_some(())
    });
    eprintln!(
        "forced push: answers on pc {:?} after the push returned",
        started.elapsed()
    );
    drop(dns);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The MaxMind database travels in the signed version: a DNS server under the control plane
/// places a client that no prefix matches by the version's database (continent AS: the region
/// `asia`, POP pc), and still does after a restart from disk with the control plane down.
#[test]
fn a_dns_member_places_clients_with_the_versions_geoip_database() {
    let dir = temp_dir("dns-drills", "geoip");
    let mut control = ControlProc::start(&dir.join("control"));
    // `config push` reads the database next to the pushed file.
    let db = firebreak_dns::testing::MmdbWriter::new(128)
        .insert("203.0.113.0/24", Some("JP"), Some("AS"))
        .build();
    std::fs::write(control.dir.join("geo.mmdb"), &db).unwrap();
    let no_checks = Vec::new;
    let doc = document(&[("pa", PA, no_checks()), ("pc", PC, no_checks())]).replacen(
        "[dns]\n",
        "[dns]\ngeoip_file = \"geo.mmdb\"\n",
        1,
    ) + "\n[[dns.region]]\nname = \"asia\"\ncontinents = [\"AS\"]\npops = [\"pc\"]\n";
    let (ok, out, err) = control.push(&doc, "geoip", false);
    assert!(ok, "{out}{err}");
    let placed = |to: SocketAddr| -> Option<Vec<IpAddr>> {
        let m = ask(to, "demo.cdn.test.", "203.0.113.0")?;
        Some(
            m.answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect(),
        )
    };
    let pc: Vec<IpAddr> = vec![PC.parse().unwrap()];
    let mut dns = DnsProc::new(&dir);
    dns.start(&control);
    wait_for("a client of AS placed on pc by the database", START, || {
        (placed(dns.udp)? == pc).then_some(())
    });
    // The region table alone still places its own clients.
    assert_eq!(demo(dns.udp), Some(addrs(PA)));
    // Restarted with the control plane down: the database comes from the version on disk.
    control.kill();
    dns.kill();
    dns.start(&control);
    wait_for(
        "the database placing clients after a restart",
        START,
        || (placed(dns.udp)? == pc).then_some(()),
    );
    drop(dns);
    let _ = std::fs::remove_dir_all(&dir);
}
