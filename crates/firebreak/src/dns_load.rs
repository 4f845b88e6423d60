//! A small, bounded synthetic DNS load on loopback: `firebreak up` sends it to its DNS server
//! during bakes so that a DNS version's gate has queries to judge (SERVFAIL, empty and
//! fallback shares, answers per POP, latency). Queries for the given names, A and AAAA in
//! turn, each from a client subnet of the given list (EDNS Client Subnet) so that every region
//! is asked; answers are counted (a SERVFAIL, a malformed answer or none at all is a failure;
//! NOERROR, NXDOMAIN and NODATA are answers).

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// How long one query waits for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Counts of a DNS load.
#[derive(Debug, Default)]
pub struct DnsCounts {
    /// Queries answered (any rcode but SERVFAIL).
    pub answered: AtomicU64,
    /// SERVFAIL, malformed or missing answers.
    pub failed: AtomicU64,
}

/// A running DNS load.
pub struct DnsLoad {
    counts: Arc<DnsCounts>,
    task: JoinHandle<()>,
}

/// The wire form of every query the load sends, built once.
fn queries(names: &[String], subnets: &[(IpAddr, u8)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for name in names {
        let Ok(name) = Name::from_ascii(name) else {
            tracing::warn!(%name, "not a DNS name; not queried");
            continue;
        };
        for rtype in [RecordType::A, RecordType::AAAA] {
            for (i, (addr, prefix)) in subnets.iter().enumerate() {
                let id = u16::try_from(out.len() % 0xFFFF).unwrap_or(0);
                let mut m = Message::new(id, MessageType::Query, OpCode::Query);
                m.add_query(Query::query(name.clone(), rtype));
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                edns.options_mut()
                    .insert(EdnsOption::Subnet(ClientSubnet::new(*addr, *prefix, 0)));
                m.set_edns(edns);
                match m.to_vec() {
                    Ok(bytes) => out.push(bytes),
                    Err(e) => tracing::warn!(subnet = i, error = %e, "query not encoded"),
                }
            }
        }
    }
    out
}

impl DnsLoad {
    /// Starts `per_second` queries per second to `server` for `names`, from each of
    /// `subnets` in turn.
    pub fn start(
        server: SocketAddr,
        names: &[String],
        subnets: &[(IpAddr, u8)],
        per_second: u32,
    ) -> Self {
        let counts = Arc::new(DnsCounts::default());
        let wire = queries(names, subnets);
        let gap = Duration::from_micros(1_000_000 / u64::from(per_second.clamp(1, 1000)));
        let c = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            if wire.is_empty() {
                return;
            }
            let bind: SocketAddr = match server {
                SocketAddr::V4(_) => ([127, 0, 0, 1], 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
            };
            let socket = match UdpSocket::bind(bind).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS load: no socket");
                    return;
                }
            };
            let mut tick = tokio::time::interval(gap);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut buf = vec![0u8; 4096];
            for i in 0usize.. {
                tick.tick().await;
                let Some(query) = wire.get(i % wire.len()) else {
                    continue;
                };
                let answered = async {
                    socket.send_to(query, server).await.ok()?;
                    loop {
                        let (n, from) = socket.recv_from(&mut buf).await.ok()?;
                        // A late answer to an earlier query is skipped by its id.
                        if from == server && buf.get(..2) == query.get(..2) {
                            let m = Message::from_vec(buf.get(..n)?).ok()?;
                            return Some(m.metadata.response_code);
                        }
                    }
                };
                match tokio::time::timeout(ANSWER_TIMEOUT, answered).await {
                    Ok(Some(rcode)) if rcode != ResponseCode::ServFail => {
                        c.answered.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => c.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        Self { counts, task }
    }

    /// (answered, failed) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.counts.answered.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for DnsLoad {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_name_type_and_subnet_is_asked() {
        let subnets = [
            ("203.0.113.0".parse().unwrap(), 24),
            ("::1".parse().unwrap(), 128),
        ];
        let wire = queries(&["demo.cdn.localhost".into(), "bad..name".into()], &subnets);
        assert_eq!(wire.len(), 4);
        let m = Message::from_vec(&wire[1]).unwrap();
        assert_eq!(m.queries[0].name().to_ascii(), "demo.cdn.localhost.");
        assert!(m.edns.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_real_server_answers_the_load() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dns.toml"),
        )
        .unwrap();
        let valid = firebreak_config::parse_managed_str("dns.toml", &text).unwrap();
        let health = firebreak_dns::Health::new();
        let (zone, _) = crate::dns::compile(&valid, 1, &health, |_| unreachable!()).unwrap();
        let mut config = firebreak_dns::ServerConfig::new(([127, 0, 0, 1], 0).into());
        config.threads = 1;
        let server = firebreak_dns::DnsServer::start(config, zone).await.unwrap();
        let load = DnsLoad::start(
            server.udp_addr(),
            &["demo.cdn.localhost".into(), "nothing.cdn.localhost".into()],
            &[("203.0.113.0".parse().unwrap(), 24)],
            500,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while load.snapshot().0 < 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                load.snapshot()
            );
            // Polls the counters until the deadline.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(load.snapshot().1, 0);
        let totals = server.metrics().totals();
        assert!(totals.queries.values().sum::<u64>() >= 20, "{totals:?}");
        let nxdomain: u64 = totals
            .queries
            .iter()
            .filter(|((_, rcode), _)| *rcode == "NXDOMAIN")
            .map(|(_, n)| n)
            .sum();
        assert!(nxdomain > 0, "{totals:?}");
    }
}
