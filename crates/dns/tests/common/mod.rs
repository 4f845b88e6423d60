//! Shared by the end-to-end tests: a real server on 127.0.0.1 (port 0) and a client made of
//! hickory-proto messages over std sockets (every read has a deadline).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use firebreak_dns::steer::{Health, Steering};
use firebreak_dns::{DnsServer, ServerConfig, TcpLimits, Zone};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn fleet() -> String {
    let big: Vec<String> = (1..=16).map(|i| format!("\"2001:db8:2::{i:x}\"")).collect();
    include_str!("fleet.toml").replace("BIG", &big.join(", "))
}

pub fn zone_from(text: &str, serial: u32, health: &Arc<Health>) -> Zone {
    let valid = firebreak_config::parse_managed_str("fleet.toml", text).unwrap();
    Zone::new(Steering::compile(valid.get(), serial, None, health).unwrap())
}

/// A server and the runtime its TCP and admin listeners run on (dropped in this order).
pub struct TestServer {
    pub server: DnsServer,
    pub health: Arc<Health>,
    pub rt: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start(limits: TcpLimits, threads: usize) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let health = Health::new();
        health.set_checked("dead", false);
        let zone = zone_from(&fleet(), 7, &health);
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
        config.admin = Some("127.0.0.1:0".parse().unwrap());
        config.threads = threads;
        config.tcp_limits = limits;
        let server = rt.block_on(DnsServer::start(config, zone)).unwrap();
        TestServer { server, health, rt }
    }

    pub fn default() -> TestServer {
        Self::start(TcpLimits::default(), 2)
    }

    pub fn udp(&self) -> SocketAddr {
        self.server.udp_addr()
    }

    pub fn tcp(&self) -> SocketAddr {
        self.server.tcp_addr().unwrap()
    }

    /// `GET path` on the admin listener: (status line, body).
    pub fn admin_get(&self, path: &str) -> (String, String) {
        http_get(self.server.admin_addr().unwrap(), path)
    }

    /// The value of a metric line (`name{labels}` exactly), 0 if absent.
    pub fn metric(&self, series: &str) -> u64 {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0)
    }

    /// Polls `series` until it reaches `at_least` (scrapes are cheap), failing at the deadline.
    pub fn wait_metric(&self, series: &str, at_least: u64) -> u64 {
        let end = Instant::now() + DEADLINE;
        loop {
            let v = self.metric(series);
            if v >= at_least {
                return v;
            }
            assert!(Instant::now() < end, "{series} stayed at {v} < {at_least}");
            std::thread::yield_now();
        }
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: dns\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new(0xBEEF, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

pub fn with_edns(mut m: Message, payload: u16, ecs: Option<ClientSubnet>) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(payload);
    if let Some(c) = ecs {
        e.options_mut().insert(EdnsOption::Subnet(c));
    }
    m.set_edns(e);
    m
}

/// A UDP client socket with a receive deadline.
pub fn udp_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Sends raw bytes over UDP and returns the response (None at the deadline).
pub fn udp_raw(to: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let s = udp_socket();
    s.send_to(bytes, to).unwrap();
    let mut buf = vec![0; 65536];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

pub fn udp(to: SocketAddr, m: &Message) -> Message {
    let out = udp_raw(to, &m.to_vec().unwrap()).expect("a UDP response before the deadline");
    Message::from_vec(&out).unwrap()
}

/// Sends one length-prefixed message on `s` and reads one response.
pub fn tcp_exchange(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut out = vec![0; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut out)?;
    Ok(out)
}

pub fn tcp_connect(to: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

pub fn tcp(to: SocketAddr, m: &Message) -> Message {
    let mut s = tcp_connect(to);
    Message::from_vec(&tcp_exchange(&mut s, &m.to_vec().unwrap()).unwrap()).unwrap()
}

pub fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn subnet(m: &Message) -> Option<ClientSubnet> {
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some(*s),
        _ => None,
    }
}

/// Reads until the peer closes (Ok(0)) or resets; false at the deadline.
pub fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}
