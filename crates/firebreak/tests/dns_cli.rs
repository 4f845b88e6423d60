//! `firebreak dns` as a process: serves a fleet document's `[dns]` data over UDP and TCP,
//! prints its addresses, reloads on SIGHUP and keeps its data when the new file is refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_firebreak");
const DEADLINE: Duration = Duration::from_secs(10);

struct Proc {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    /// Reads stdout until a line contains `marker`; returns the rest of that line.
    fn wait_line(&mut self, marker: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "process exited before printing {marker:?}");
            if let Some((_, rest)) = line.split_once(marker) {
                return rest.trim().to_owned();
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

fn fleet(answer: &str) -> String {
    format!(
        r#"
[dns]
zone = "cdn.example"
default_region = "eu"

[[dns.ns]]
name = "ns1.cdn.example"
addrs = ["192.0.2.53"]

[[dns.pop]]
name = "ams"
answers = ["{answer}"]

[[dns.region]]
name = "eu"
pops = ["ams"]

[[service]]
name = "demo"
hosts = ["demo.localhost"]
[service.origin]
servers = [{{ addr = "127.0.0.1:9" }}]
[service.dns]
name = "demo"
"#
    )
}

fn ask(to: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.send_to(&q.to_vec().unwrap(), to).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn ask_tcp(to: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut q = Message::new(8, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let q = q.to_vec().unwrap();
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut framed = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut out = vec![0; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut out).unwrap();
    Message::from_vec(&out).unwrap()
}

fn serial(to: SocketAddr) -> u32 {
    match &ask(to, "cdn.example.", RecordType::SOA).answers[0].data {
        RData::SOA(s) => s.serial,
        other => panic!("{other:?}"),
    }
}

fn a(to: SocketAddr) -> Vec<IpAddr> {
    ask(to, "demo.cdn.example.", RecordType::A)
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

fn hup(pid: u32) {
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn dns_serves_a_fleet_document_and_reloads_on_sighup() {
    let dir = std::env::temp_dir().join(format!("fb-dns-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fleet.toml");
    std::fs::write(&path, fleet("192.0.2.10")).unwrap();
    let log = dir.join("dns.log");
    let mut child = Command::new(BIN)
        .args([
            "dns",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--serial",
            "5",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut p = Proc { child, stdout };
    let udp: SocketAddr = p.wait_line("dns listening on udp").parse().unwrap();
    let tcp: SocketAddr = p.wait_line("dns listening on tcp").parse().unwrap();
    let admin = p.wait_line("dns admin on http://");
    assert_eq!(udp, tcp, "TCP defaults to the UDP address");
    assert!(!admin.is_empty());

    assert_eq!(serial(udp), 5);
    assert_eq!(a(udp), vec!["192.0.2.10".parse::<IpAddr>().unwrap()]);
    let m = ask_tcp(tcp, "demo.cdn.example.", RecordType::A);
    assert_eq!(m.answers.len(), 1);
    assert!(m.metadata.authoritative);

    // A file that does not validate is refused; the running data stays.
    std::fs::write(&path, "[dns]\nzone = 3\n").unwrap();
    hup(p.child.id());
    wait_logged(&log, "dns data refused", "no refusal logged");
    assert_eq!(serial(udp), 5);
    assert_eq!(a(udp), vec!["192.0.2.10".parse::<IpAddr>().unwrap()]);

    // A file replacing every answer at once removes more than `max_removed_share` (0.5):
    // refused, the running data stays.
    std::fs::write(&path, fleet("192.0.2.20")).unwrap();
    hup(p.child.id());
    wait_logged(&log, "removes 1 of 1 answer", "no removal refusal logged");
    assert_eq!(serial(udp), 5);
    assert_eq!(a(udp), vec!["192.0.2.10".parse::<IpAddr>().unwrap()]);

    // The same change with the guard raised in the file (the operator's force) is applied
    // with the next serial.
    let forced = fleet("192.0.2.20").replace(
        "default_region = \"eu\"",
        "default_region = \"eu\"\nmax_removed_share = 1.0",
    );
    std::fs::write(&path, forced).unwrap();
    hup(p.child.id());
    let deadline = Instant::now() + DEADLINE;
    while serial(udp) != 6 {
        assert!(Instant::now() < deadline, "the new data never came");
        std::thread::yield_now();
    }
    assert_eq!(a(udp), vec!["192.0.2.20".parse::<IpAddr>().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn dns_refuses_a_document_without_dns_data() {
    let dir = std::env::temp_dir().join(format!("fb-dns-cli-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        "[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\n[service.origin]\nservers = [{ addr = \"127.0.0.1:9\" }]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "dns",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[dns]"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The POP checker's series reach the DNS server's own `/metrics`: a POP whose only check
/// URL refuses connections is counted and shown unhealthy there.
#[test]
fn dns_admin_metrics_show_the_pop_checks() {
    let dir = std::env::temp_dir().join(format!("fb-dns-cli-checks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fleet.toml");
    // A port nothing listens on: bind one, note it, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let text = fleet("192.0.2.10")
        .replace(
            "answers = [\"192.0.2.10\"]",
            &format!("answers = [\"192.0.2.10\"]\nchecks = [\"http://{dead_addr}/healthz\"]"),
        )
        .replace(
            "[[dns.ns]]",
            "[dns.checks]\ninterval_ms = 200\ntimeout_ms = 100\nunhealthy_after = 1\n\n[[dns.ns]]",
        );
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "dns",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut p = Proc { child, stdout };
    let admin: SocketAddr = p.wait_line("dns admin on http://").parse().unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut conn = TcpStream::connect(admin).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: dns\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        if text.contains("firebreak_dns_pop_healthy{pop=\"ams\"} 0")
            && text.contains("firebreak_dns_checks_total{pop=\"ams\",result=\"error\"}")
        {
            assert!(text.contains("firebreak_dns_queries_total"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "checks never shown:\n{text}");
        std::thread::yield_now();
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Waits (up to [`DEADLINE`]) until the log file `log` holds `needle`; fails with `what`.
fn wait_logged(log: &std::path::Path, needle: &str, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::yield_now();
    }
}
