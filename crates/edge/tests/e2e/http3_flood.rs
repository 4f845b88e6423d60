//! QUIC connection floods: Initials from spoofed source addresses (real client Initials made
//! by `quinn-proto`, sent from 127.0.0.2 … 127.0.0.200 and never followed up, as a spoofing
//! attacker's are) are answered with stateless Retries once `validate_addresses_above`
//! handshakes are in progress, so the edge keeps no per-connection state for them and real
//! clients (which follow the Retry) are still served; with `validate_addresses_above = 0`
//! every new address gets a Retry first; `max_connections` bounds open connections (also
//! across TLS listeners: ignored, the server counts per listener).

use crate::common::*;
use crate::h3client::*;
use http::StatusCode;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "test-admin-token-h3-flood";

fn flood_config(origin: SocketAddr, pair: &Pair, http3: &str, clients: &str) -> String {
    flood_config_on(1, origin, pair, http3, clients)
}

/// `listeners` TLS listeners (each with HTTP/3; on 127.0.0.1, 127.0.0.2, …), one service
/// `a`, an admin listener.
fn flood_config_on(
    listeners: usize,
    origin: SocketAddr,
    pair: &Pair,
    http3: &str,
    clients: &str,
) -> String {
    format!(
        r#"
{listeners}

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[http3]
{http3}

[limits.clients]
{clients}

[[service]]
name = "a"
hosts = ["a.example"]

[service.origin]
connect_timeout_ms = 1000
response_timeout_ms = 2000
servers = [{{ addr = "{origin}" }}]

[service.tls]
cert = '''
{cert}'''
key = '''
{key}'''
"#,
        listeners = (1..=listeners)
            .map(|i| format!("[[listener]]\naddr = \"127.0.0.{i}:0\"\ntls = true\n"))
            .collect::<String>(),
        cert = pair.cert,
        key = pair.key,
    )
}

const ACCEPT: &str = "firebreak_http3_initials_total{action=\"accept\"}";
const RETRY: &str = "firebreak_http3_initials_total{action=\"retry\"}";
const REFUSE: &str = "firebreak_http3_initials_total{action=\"refuse\"}";
const HANDSHAKES: &str = "firebreak_http3_handshakes";
const CONNECTIONS: &str = "firebreak_http3_connections";
const FAILURES: &str = "firebreak_http3_handshake_failures_total";

/// The HTTP/3 counters and gauges at one moment.
#[derive(Debug, Clone, Copy)]
struct Quic {
    accept: f64,
    retry: f64,
    refuse: f64,
    handshakes: f64,
    connections: f64,
    failures: f64,
}

impl Quic {
    async fn read(admin: SocketAddr) -> Self {
        let text = metrics(admin, TOKEN).await;
        Self {
            accept: sample(&text, ACCEPT),
            retry: sample(&text, RETRY),
            refuse: sample(&text, REFUSE),
            handshakes: sample(&text, HANDSHAKES),
            connections: sample(&text, CONNECTIONS),
            failures: sample(&text, FAILURES),
        }
    }

    /// Connection attempts the edge has decided on.
    fn decided(&self) -> f64 {
        self.accept + self.retry + self.refuse
    }

    /// Polls until `done` holds (at most 10 s); the last reading, or a failed test.
    async fn wait_until(admin: SocketAddr, what: &str, done: impl Fn(&Quic) -> bool) -> Quic {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let q = Self::read(admin).await;
            if done(&q) {
                return q;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never {what}: {q:?}"
            );
        }
    }
}

async fn ok_origin() -> TestOrigin {
    TestOrigin::start(|r| Reply::ok(format!("body of {}", r.uri.path())).cc("no-store")).await
}

#[tokio::test]
async fn spoofed_initials_get_stateless_retries_and_real_clients_are_still_served() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let origin = ok_origin().await;
    let pair = ca.leaf(&["a.example"]);
    let edge = start_edge(&flood_config(
        origin.addr,
        &pair,
        "validate_addresses_above = 2",
        // Handshakes the edge did start (the first two) expire soon.
        "first_bytes_timeout_ms = 500",
    ))
    .await;
    let admin = edge.handle.admin_addr().unwrap();
    // Other tests' QUIC connections (they hold the same lock) are gone or going: the gauges
    // are process-wide.
    let base = Quic::wait_until(admin, "idle", |q| {
        q.handshakes == 0.0 && q.connections == 0.0
    })
    .await;

    // One socket per spoofed source address; what the edge sends them is never read.
    let sources: Vec<UdpSocket> = (2..=200u8)
        .map(|last| UdpSocket::bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap())
        .collect();
    let mut forge = InitialForge::new(&ca.roots);
    // The gauges, sampled all along the flood.
    let peak_handshakes = Arc::new(AtomicU64::new(0));
    let peak_connections = Arc::new(AtomicU64::new(0));
    let sampling = {
        let (h, c) = (peak_handshakes.clone(), peak_connections.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
                let q = Quic::read(admin).await;
                h.fetch_max(q.handshakes as u64, Ordering::Relaxed);
                c.fetch_max(q.connections as u64, Ordering::Relaxed);
            }
        })
    };
    const FLOOD: usize = 400;
    const BATCH: usize = 50;
    let mut sent = 0usize;
    for batch in 0..FLOOD / BATCH {
        for i in 0..BATCH {
            let n = batch * BATCH + i;
            for datagram in forge.initial(edge.addr, "a.example") {
                sources[n % sources.len()]
                    .send_to(&datagram, edge.addr)
                    .unwrap();
            }
            sent += 1;
        }
        // Each batch decided before the next goes out: the test measures what the edge
        // does with Initials, not what a full socket buffer drops.
        let want = base.decided() + sent as f64;
        Quic::wait_until(admin, "the batch decided", |q| q.decided() >= want).await;
    }
    sampling.abort();
    let after = Quic::read(admin).await;
    let (accepted, retried) = (after.accept - base.accept, after.retry - base.retry);
    assert_eq!(
        after.decided() - base.decided(),
        FLOOD as f64,
        "one decision per Initial: {after:?} from {base:?}"
    );
    assert!(
        retried >= FLOOD as f64 * 0.9,
        "{retried} of {FLOOD} spoofed Initials got a Retry ({accepted} accepted)"
    );
    let peak = peak_handshakes
        .load(Ordering::Relaxed)
        .max(after.handshakes as u64);
    assert!(
        peak <= 2 + 2,
        "{peak} handshakes in progress, bound 2 (+2 slack)"
    );
    assert_eq!(
        peak_connections
            .load(Ordering::Relaxed)
            .max(after.connections as u64),
        0,
        "a spoofed source completed a handshake"
    );
    // What the edge did accept expires: no state is left from the flood.
    let expired = Quic::wait_until(admin, "the flood's handshakes expired", |q| {
        q.handshakes == 0.0
    })
    .await;
    assert_eq!(
        expired.failures - base.failures,
        accepted,
        "each accepted spoofed handshake ends as a failure (timed out)"
    );
    drop(sources);

    // A real client is served (quinn answers a Retry by itself).
    let mut client = Client::connect(Proto::H3, edge.addr, &ca.roots, "a.example").await;
    let r = client.get("a.example", "/after-the-flood").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "body of /after-the-flood");
    let q = Quic::read(admin).await;
    assert_eq!(q.connections, 1.0, "{q:?}");
}

#[tokio::test]
async fn max_connections_refuses_a_third_connection_while_two_stay_open_and_working() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let origin = ok_origin().await;
    let pair = ca.leaf(&["a.example"]);
    let edge = start_edge(&flood_config(origin.addr, &pair, "max_connections = 2", "")).await;
    let admin = edge.handle.admin_addr().unwrap();
    let base = Quic::wait_until(admin, "idle", |q| {
        q.handshakes == 0.0 && q.connections == 0.0
    })
    .await;
    let mut one = Client::connect(Proto::H3, edge.addr, &ca.roots, "a.example").await;
    let mut two = Client::connect(Proto::H3, edge.addr, &ca.roots, "a.example").await;
    assert_eq!(one.get("a.example", "/one").await.status, StatusCode::OK);
    assert_eq!(two.get("a.example", "/two").await.status, StatusCode::OK);
    Quic::wait_until(admin, "two connections", |q| q.connections == 2.0).await;

    // The third is refused (CONNECTION_REFUSED, or no answer until its short idle timeout).
    let third = quic_connect(
        edge.addr,
        &ca.roots,
        "a.example",
        Duration::from_millis(1000),
    )
    .await;
    assert!(third.is_err(), "a third connection was accepted");
    let q = Quic::wait_until(admin, "the refusal counted", |q| q.refuse > base.refuse).await;
    assert_eq!(q.connections, 2.0, "{q:?}");

    // The two open ones keep working.
    assert_eq!(
        one.get("a.example", "/one-again").await.status,
        StatusCode::OK
    );
    assert_eq!(
        two.get("a.example", "/two-again").await.status,
        StatusCode::OK
    );

    // The bound is on open connections: one closes, a new one gets in.
    one.h3().unwrap().conn.close(0u32.into(), b"done");
    drop(one);
    Quic::wait_until(admin, "one connection closed", |q| q.connections == 1.0).await;
    // quinn keeps a closed connection's slot for its draining period (3 PTO) after the
    // gauge has gone down: new attempts until one is accepted, for at most 10 s.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut three = loop {
        tick.tick().await;
        match Client::try_connect(Proto::H3, edge.addr, &ca.roots, "a.example").await {
            Ok(c) => break c,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no new connection after one closed: {e}"
            ),
        }
    };
    assert_eq!(
        three.get("a.example", "/three").await.status,
        StatusCode::OK
    );
    assert_eq!(
        two.get("a.example", "/two-last").await.status,
        StatusCode::OK
    );
}

/// `[http3] max_connections` is documented as the edge's bound ("open QUIC connections"),
/// but the server checks it per TLS listener (`endpoint.open_connections()` of each quinn
/// endpoint; `validate_addresses_above` likewise counts each endpoint's handshakes).
#[tokio::test]
async fn max_connections_is_one_bound_for_all_tls_listeners() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let origin = ok_origin().await;
    let pair = ca.leaf(&["a.example"]);
    let edge = start_edge(&flood_config_on(
        2,
        origin.addr,
        &pair,
        "max_connections = 2",
        "",
    ))
    .await;
    let [first, second] = edge.handle.http3_addrs() else {
        panic!("{:?}", edge.handle.http3_addrs())
    };
    let (first, second) = (*first, *second);
    let admin = edge.handle.admin_addr().unwrap();
    Quic::wait_until(admin, "idle", |q| {
        q.handshakes == 0.0 && q.connections == 0.0
    })
    .await;
    let mut one = Client::connect(Proto::H3, first, &ca.roots, "a.example").await;
    let mut two = Client::connect(Proto::H3, first, &ca.roots, "a.example").await;
    Quic::wait_until(admin, "two connections", |q| q.connections == 2.0).await;
    // The edge holds two QUIC connections: a third is refused on the other listener too.
    let third = quic_connect(second, &ca.roots, "a.example", Duration::from_millis(1000)).await;
    assert!(
        third.is_err(),
        "a third QUIC connection was accepted on the second TLS listener"
    );
    assert_eq!(one.get("a.example", "/one").await.status, StatusCode::OK);
    assert_eq!(two.get("a.example", "/two").await.status, StatusCode::OK);
}

#[tokio::test]
async fn with_validate_addresses_above_0_every_new_address_gets_a_retry_first() {
    let _quic = h3_metrics_lock().await;
    let ca = Ca::new();
    let origin = ok_origin().await;
    let pair = ca.leaf(&["a.example"]);
    let edge = start_edge(&flood_config(
        origin.addr,
        &pair,
        "validate_addresses_above = 0",
        "",
    ))
    .await;
    let admin = edge.handle.admin_addr().unwrap();
    let base = Quic::wait_until(admin, "idle", |q| {
        q.handshakes == 0.0 && q.connections == 0.0
    })
    .await;
    let source = UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut forge = InitialForge::new(&ca.roots);
    for _ in 0..10 {
        for datagram in forge.initial(edge.addr, "a.example") {
            source.send_to(&datagram, edge.addr).unwrap();
        }
    }
    let q = Quic::wait_until(admin, "ten decisions", |q| {
        q.decided() >= base.decided() + 10.0
    })
    .await;
    assert_eq!(q.retry - base.retry, 10.0, "{q:?} from {base:?}");
    assert_eq!(q.handshakes, 0.0, "{q:?}");
    // A real client: one Retry, then its validated Initial is accepted.
    let mut client = Client::connect(Proto::H3, edge.addr, &ca.roots, "a.example").await;
    assert_eq!(client.get("a.example", "/v").await.status, StatusCode::OK);
    let q = Quic::read(admin).await;
    assert_eq!(
        (q.retry - base.retry, q.accept - base.accept),
        (11.0, 1.0),
        "{q:?} from {base:?}"
    );
}
