//! Active health checks: the DNS server GETs each POP's `checks` URLs itself, so that a
//! control-plane outage does not freeze stale health.
//!
//! One task per POP with checks runs a round every `dns.checks.interval_ms`: every URL of the
//! POP is fetched at once (HTTP/1.1, a new connection each time, `timeout_ms` for the whole
//! exchange, the response head and at most [`MAX_CHECK_BODY_BYTES`] of body read); the round
//! is good when at least one URL answered 2xx. Hysteresis: a healthy POP is marked down
//! ([`Health::set_checked`]) after `unhealthy_after` consecutive bad rounds, a POP that is
//! down comes back after `healthy_after` consecutive good rounds, so one lost check does not
//! move clients and a flapping POP stays out. POPs start healthy.
//!
//! New DNS data ([`HealthChecker::apply`]) stops the old tasks and starts new ones; the state
//! (up or down, the current streak) is kept by POP name, so a reload neither forgets that a
//! POP is down nor restarts its count. A POP that leaves the data, or loses all its checks,
//! is marked healthy as far as checks go (the control plane's reports still apply).
//!
//! Metrics: `firebreak_dns_pop_healthy{pop}` (1 when clients are sent to the POP, after each
//! round) and `firebreak_dns_checks_total{pop,result}` (`result`: `ok`, `status` for a
//! non-2xx answer, `timeout`, `error` for connection and protocol failures).

use crate::steer::Health;
use bytes::Bytes;
use firebreak_config::dns::{parse_check_url, DnsChecksConfig, DnsConfig};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};

/// Body bytes of a check response read at most; the status decides, the rest is dropped.
pub const MAX_CHECK_BODY_BYTES: usize = 64 * 1024;
/// Largest response head a check accepts (hyper's smallest read buffer).
const MAX_CHECK_HEAD_BYTES: usize = 8 * 1024;
/// Rounds buffered for subscribers ([`HealthChecker::subscribe`]); a slow one loses the
/// oldest rounds, never blocks the checks.
const EVENTS: usize = 1024;

/// Name of the gauge of a POP's health.
pub const POP_HEALTHY: &str = "firebreak_dns_pop_healthy";
/// Name of the counter of checks by POP and result.
pub const CHECKS_TOTAL: &str = "firebreak_dns_checks_total";

/// One finished round of one POP's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRound {
    /// The POP.
    pub pop: String,
    /// Whether at least one URL answered 2xx.
    pub good: bool,
    /// The checker's verdict after this round (with hysteresis).
    pub healthy: bool,
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Status,
    Timeout,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Status => "status",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

/// One check URL, parsed once.
#[derive(Debug)]
struct Target {
    /// Host without brackets: an IP address or a name to resolve.
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// Path and query.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let uri = parse_check_url(url)?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        let port = authority
            .port_u16()
            .ok_or_else(|| format!("`{url}` has no port"))?;
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(Target {
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// The round timing and thresholds, clamped to what the configuration's validation allows.
#[derive(Debug, Clone, Copy)]
struct Timing {
    interval: Duration,
    timeout: Duration,
    unhealthy_after: u32,
    healthy_after: u32,
}

impl From<&DnsChecksConfig> for Timing {
    fn from(c: &DnsChecksConfig) -> Self {
        Timing {
            interval: Duration::from_millis(c.interval_ms.max(1)),
            timeout: Duration::from_millis(c.timeout_ms.max(1)),
            unhealthy_after: c.unhealthy_after.max(1),
            healthy_after: c.healthy_after.max(1),
        }
    }
}

/// What the checker knows of one POP, kept across reloads.
#[derive(Debug)]
struct PopState {
    up: bool,
    good_streak: u32,
    bad_streak: u32,
    /// The `apply` whose task may update this entry; older tasks stop at their next round.
    generation: u64,
}

struct Shared {
    health: Arc<Health>,
    pops: Mutex<HashMap<String, PopState>>,
    events: broadcast::Sender<CheckRound>,
}

impl Shared {
    /// Counts a round; false when the task belongs to an older `apply` and must stop.
    fn record(&self, pop: &str, generation: u64, good: bool, timing: Timing) -> bool {
        let Ok(mut pops) = self.pops.lock() else {
            return false;
        };
        let Some(state) = pops.get_mut(pop) else {
            return false;
        };
        if state.generation != generation {
            return false;
        }
        if good {
            state.good_streak = state.good_streak.saturating_add(1);
            state.bad_streak = 0;
        } else {
            state.bad_streak = state.bad_streak.saturating_add(1);
            state.good_streak = 0;
        }
        let was_up = state.up;
        if state.up && state.bad_streak >= timing.unhealthy_after {
            state.up = false;
        } else if !state.up && state.good_streak >= timing.healthy_after {
            state.up = true;
        }
        if state.up != was_up {
            self.health.set_checked(pop, state.up);
            tracing::info!(
                pop,
                healthy = state.up,
                "active checks changed a POP's health"
            );
        }
        let healthy = state.up;
        drop(pops);
        gauge(&self.health, pop);
        // Nobody listening is fine.
        let _ = self.events.send(CheckRound {
            pop: pop.to_owned(),
            good,
            healthy,
        });
        true
    }
}

fn gauge(health: &Health, pop: &str) {
    let value = if health.is_healthy(pop) { 1.0 } else { 0.0 };
    metrics::gauge!(POP_HEALTHY, "pop" => pop.to_owned()).set(value);
}

/// Runs the active checks of the POPs of the current DNS data.
pub struct HealthChecker {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    tasks: Vec<JoinHandle<()>>,
    generation: u64,
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("tasks", &self.tasks.len())
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl HealthChecker {
    /// A checker writing `health`, spawning its tasks on `runtime`. Nothing runs until
    /// [`apply`](Self::apply).
    pub fn new(health: Arc<Health>, runtime: tokio::runtime::Handle) -> HealthChecker {
        let (events, _) = broadcast::channel(EVENTS);
        HealthChecker {
            shared: Arc::new(Shared {
                health,
                pops: Mutex::new(HashMap::new()),
                events,
            }),
            runtime,
            tasks: Vec::new(),
            generation: 0,
        }
    }

    /// Every finished round from now on (for logs and tests).
    pub fn subscribe(&self) -> broadcast::Receiver<CheckRound> {
        self.shared.events.subscribe()
    }

    /// Checks the POPs of `dns` from now on: stops the tasks of the previous data and starts
    /// one per POP with check URLs, keeping each POP's state by name. Returns the check URLs
    /// that could not be used (validation refuses them first; listed for the log).
    pub fn apply(&mut self, dns: &DnsConfig) -> Vec<String> {
        self.stop();
        self.generation = self.generation.wrapping_add(1);
        let timing = Timing::from(&dns.checks);
        let mut unusable = Vec::new();
        let mut checked: Vec<(String, Arc<[Target]>)> = Vec::new();
        for pop in &dns.pops {
            let targets: Vec<Target> = pop
                .checks
                .iter()
                .filter_map(|url| match Target::parse(url) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        unusable.push(format!("dns.pop `{}`: {e}", pop.name));
                        None
                    }
                })
                .collect();
            if !targets.is_empty() {
                checked.push((pop.name.clone(), targets.into()));
            }
        }
        let names: HashSet<&str> = checked.iter().map(|(n, _)| n.as_str()).collect();
        if let Ok(mut pops) = self.shared.pops.lock() {
            let gone: Vec<String> = pops
                .keys()
                .filter(|k| !names.contains(k.as_str()))
                .cloned()
                .collect();
            for name in gone {
                // No checks any more: the checks no longer hold the POP out.
                if pops.remove(&name).is_some_and(|s| !s.up) {
                    self.shared.health.set_checked(&name, true);
                }
                gauge(&self.shared.health, &name);
            }
            for (name, _) in &checked {
                let state = pops.entry(name.clone()).or_insert(PopState {
                    up: true,
                    good_streak: 0,
                    bad_streak: 0,
                    generation: 0,
                });
                state.generation = self.generation;
            }
        }
        for (name, targets) in checked {
            gauge(&self.shared.health, &name);
            let task = run(
                Arc::clone(&self.shared),
                name,
                targets,
                timing,
                self.generation,
            );
            self.tasks.push(self.runtime.spawn(task));
        }
        unusable
    }

    /// Stops every check task (state is kept for the next `apply`).
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One POP's rounds, until aborted or superseded.
async fn run(
    shared: Arc<Shared>,
    pop: String,
    targets: Arc<[Target]>,
    timing: Timing,
    generation: u64,
) {
    let mut ticker = tokio::time::interval(timing.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut checks = JoinSet::new();
        for i in 0..targets.len() {
            let targets = Arc::clone(&targets);
            checks.spawn(async move {
                match targets.get(i) {
                    Some(t) => check(t, timing.timeout).await,
                    None => Outcome::Error,
                }
            });
        }
        let mut good = false;
        while let Some(done) = checks.join_next().await {
            let outcome = done.unwrap_or(Outcome::Error);
            metrics::counter!(CHECKS_TOTAL, "pop" => pop.clone(), "result" => outcome.label())
                .increment(1);
            good |= outcome == Outcome::Ok;
        }
        if !shared.record(&pop, generation, good, timing) {
            return;
        }
    }
}

/// One GET, bounded by `timeout` from the first connection attempt to the last body byte read.
async fn check(target: &Target, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, exchange(target)).await {
        Err(_) => Outcome::Timeout,
        Ok(Err(())) => Outcome::Error,
        Ok(Ok(status)) if status.is_success() => Outcome::Ok,
        Ok(Ok(_)) => Outcome::Status,
    }
}

async fn exchange(target: &Target) -> Result<http::StatusCode, ()> {
    let stream = connect(target).await?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_CHECK_HEAD_BYTES)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|_| ())?;
    let request = http::Request::get(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::USER_AGENT, "firebreak-dns-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|_| ())?;
    let response = async move {
        let response = sender.send_request(request).await.map_err(|_| ())?;
        let status = response.status();
        let mut body = response.into_body();
        let mut read = 0usize;
        while read < MAX_CHECK_BODY_BYTES {
            match body.frame().await {
                None => break,
                Some(Err(_)) => return Err(()),
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            }
        }
        Ok(status)
    };
    // The connection is driven here, not in a task of its own: when the exchange ends (or
    // its deadline passes) everything is dropped together.
    tokio::pin!(response);
    tokio::pin!(conn);
    tokio::select! {
        biased;
        r = &mut response => return r,
        _ = &mut conn => {}
    }
    response.await
}

async fn connect(target: &Target) -> Result<tokio::net::TcpStream, ()> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|_| ())?
            .take(4)
            .collect(),
    };
    for addr in addrs {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            let _ = stream.set_nodelay(true);
            return Ok(stream);
        }
    }
    Err(())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::expect_used
)]
mod tests {
    use super::*;
    use firebreak_config::dns::PopConfig;
    use std::collections::VecDeque;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the test server answers to one request.
    #[derive(Debug, Clone, Copy)]
    enum Reply {
        Status(u16),
        /// Accepts the request and never answers.
        Hang,
        /// 200 with a body that never ends.
        Endless,
    }

    /// An HTTP/1.1 server on 127.0.0.1 answering from a script, then `then` forever.
    struct Server {
        url: String,
        script: Arc<Mutex<(VecDeque<Reply>, Reply)>>,
        task: JoinHandle<()>,
    }

    impl Server {
        async fn start(script: &[Reply], then: Reply) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/healthz", listener.local_addr().unwrap());
            let script = Arc::new(Mutex::new((
                script.iter().copied().collect::<VecDeque<_>>(),
                then,
            )));
            let shared = Arc::clone(&script);
            let task = tokio::spawn(async move {
                loop {
                    let (mut conn, _) = listener.accept().await.unwrap();
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let reply = {
                            let mut s = shared.lock().unwrap();
                            let then = s.1;
                            s.0.pop_front().unwrap_or(then)
                        };
                        match reply {
                            Reply::Status(code) => {
                                let text = format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                                let _ = conn.write_all(text.as_bytes()).await;
                            }
                            Reply::Hang => {
                                // Until the checker gives up and closes.
                                let _ = conn.read(&mut buf).await;
                            }
                            Reply::Endless => {
                                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                                if conn.write_all(head.as_bytes()).await.is_err() {
                                    return;
                                }
                                let chunk = format!("2000\r\n{}\r\n", "x".repeat(0x2000));
                                while conn.write_all(chunk.as_bytes()).await.is_ok() {}
                            }
                        }
                    });
                }
            });
            Server { url, script, task }
        }

        fn then(&self, reply: Reply) {
            let mut s = self.script.lock().unwrap();
            s.0.clear();
            s.1 = reply;
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A URL where nothing listens.
    async fn dead_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/healthz", listener.local_addr().unwrap())
    }

    fn data(pops: &[(&str, Vec<String>)], unhealthy_after: u32, healthy_after: u32) -> DnsConfig {
        DnsConfig {
            zone: "cdn.example".into(),
            ttl_s: 30,
            zone_ttl_s: 3600,
            negative_ttl_s: 30,
            hostmaster: None,
            default_region: "eu".into(),
            max_removed_share: 0.5,
            // Short rounds, with a timeout generous enough for a loaded test machine: a
            // spurious timeout would change the exact sequences the tests expect.
            checks: DnsChecksConfig {
                interval_ms: 200,
                timeout_ms: 190,
                unhealthy_after,
                healthy_after,
            },
            name_servers: Vec::new(),
            pops: pops
                .iter()
                .map(|(name, checks)| PopConfig {
                    name: (*name).into(),
                    answers: vec!["192.0.2.1".parse().unwrap()],
                    weight: 1,
                    checks: checks.clone(),
                })
                .collect(),
            regions: Vec::new(),
            geoip_file: None,
        }
    }

    /// The next round of `pop` (others skipped), within a deadline.
    async fn next(events: &mut broadcast::Receiver<CheckRound>, pop: &str) -> CheckRound {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let round = events.recv().await.unwrap();
                if round.pop == pop {
                    return round;
                }
            }
        })
        .await
        .expect("no check round within 10 s")
    }

    /// Rounds of `pop` until one satisfies `f` (within a deadline); returns it.
    async fn until(
        events: &mut broadcast::Receiver<CheckRound>,
        pop: &str,
        f: impl Fn(&CheckRound) -> bool,
    ) -> CheckRound {
        loop {
            let round = next(events, pop).await;
            if f(&round) {
                return round;
            }
        }
    }

    fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
        static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
            std::sync::OnceLock::new();
        HANDLE.get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).unwrap();
            handle
        })
    }

    #[tokio::test]
    async fn hysteresis_follows_the_rounds_exactly() {
        use Reply::Status;
        let script = [
            Status(200),
            Status(503),
            Status(200),
            Status(503),
            Status(500),
            Status(200),
            Status(204),
            Status(404),
            Status(200),
            Status(200),
            Status(200),
        ];
        let server = Server::start(&script, Status(200)).await;
        let health = Health::new();
        let mut checker =
            HealthChecker::new(Arc::clone(&health), tokio::runtime::Handle::current());
        let mut events = checker.subscribe();
        checker.apply(&data(&[("flap", vec![server.url.clone()])], 2, 3));
        // (good, healthy) per round: down after 2 bad in a row, up after 3 good in a row.
        let expected = [
            (true, true),
            (false, true),
            (true, true),
            (false, true),
            (false, false),
            (true, false),
            (true, false),
            (false, false),
            (true, false),
            (true, false),
            (true, true),
        ];
        for (i, want) in expected.into_iter().enumerate() {
            let round = next(&mut events, "flap").await;
            assert_eq!((round.good, round.healthy), want, "round {i}");
            // The steering's view is updated before the round is announced.
            assert_eq!(health.is_healthy("flap"), want.1, "round {i}");
        }
    }

    #[tokio::test]
    async fn one_good_url_keeps_a_pop_in_and_none_takes_it_out() {
        let handle = metrics();
        let server = Server::start(&[], Reply::Status(200)).await;
        let health = Health::new();
        let mut checker =
            HealthChecker::new(Arc::clone(&health), tokio::runtime::Handle::current());
        let mut events = checker.subscribe();
        checker.apply(&data(
            &[("half", vec![dead_url().await, server.url.clone()])],
            2,
            2,
        ));
        for _ in 0..3 {
            let round = next(&mut events, "half").await;
            assert_eq!((round.good, round.healthy), (true, true));
        }
        server.then(Reply::Status(503));
        until(&mut events, "half", |r| !r.good).await;
        let round = next(&mut events, "half").await;
        assert_eq!((round.good, round.healthy), (false, false));
        assert!(!health.is_healthy("half"));
        let text = handle.render();
        for line in [
            "firebreak_dns_checks_total{pop=\"half\",result=\"ok\"}",
            "firebreak_dns_checks_total{pop=\"half\",result=\"error\"}",
            "firebreak_dns_checks_total{pop=\"half\",result=\"status\"}",
            "firebreak_dns_pop_healthy{pop=\"half\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        server.then(Reply::Status(200));
        until(&mut events, "half", |r| r.healthy).await;
        assert!(health.is_healthy("half"));
        assert!(handle
            .render()
            .contains("firebreak_dns_pop_healthy{pop=\"half\"} 1"));
    }

    #[tokio::test]
    async fn a_pop_that_never_answers_times_out_and_leaves() {
        let handle = metrics();
        let server = Server::start(&[], Reply::Hang).await;
        let health = Health::new();
        let mut checker =
            HealthChecker::new(Arc::clone(&health), tokio::runtime::Handle::current());
        let mut events = checker.subscribe();
        checker.apply(&data(&[("hang", vec![server.url.clone()])], 1, 1));
        let round = next(&mut events, "hang").await;
        assert_eq!((round.good, round.healthy), (false, false));
        assert!(!health.is_healthy("hang"));
        let text = handle.render();
        assert!(
            text.contains("firebreak_dns_checks_total{pop=\"hang\",result=\"timeout\"}"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_endless_body_is_read_only_up_to_the_bound() {
        // Without the bound the check would read until its timeout and count as bad.
        let server = Server::start(&[], Reply::Endless).await;
        let health = Health::new();
        let mut checker =
            HealthChecker::new(Arc::clone(&health), tokio::runtime::Handle::current());
        let mut events = checker.subscribe();
        let mut dns = data(&[("endless", vec![server.url.clone()])], 1, 1);
        dns.checks.timeout_ms = 2_000;
        dns.checks.interval_ms = 3_000;
        checker.apply(&dns);
        let round = next(&mut events, "endless").await;
        assert_eq!((round.good, round.healthy), (true, true));
    }

    #[tokio::test]
    async fn a_reload_keeps_state_by_pop_name_and_releases_pops_it_drops() {
        let a = Server::start(&[], Reply::Status(503)).await;
        let b = Server::start(&[], Reply::Status(200)).await;
        let health = Health::new();
        let mut checker =
            HealthChecker::new(Arc::clone(&health), tokio::runtime::Handle::current());
        let mut events = checker.subscribe();
        checker.apply(&data(&[("a", vec![a.url.clone()])], 1, 2));
        until(&mut events, "a", |r| !r.healthy).await;

        // New data: `a` is still down at once, and needs two good rounds (its new threshold)
        // to come back; `b` is new and starts healthy.
        a.then(Reply::Status(200));
        let both = data(
            &[("a", vec![a.url.clone()]), ("b", vec![b.url.clone()])],
            1,
            2,
        );
        checker.apply(&both);
        assert!(
            !health.is_healthy("a"),
            "a reload does not forget a POP is down"
        );
        assert!(health.is_healthy("b"));
        let first = until(&mut events, "a", |r| r.good).await;
        assert!(!first.healthy, "one good round is not enough");
        let second = next(&mut events, "a").await;
        assert_eq!((second.good, second.healthy), (true, true));

        // `a` down again, then dropped from the data: released at once, no more rounds.
        a.then(Reply::Status(503));
        until(&mut events, "a", |r| !r.healthy).await;
        checker.apply(&data(&[("b", vec![b.url.clone()])], 1, 2));
        assert!(
            health.is_healthy("a"),
            "a POP without checks is not held out by them"
        );
        for _ in 0..3 {
            let round = events.recv().await.unwrap();
            assert_eq!(round.pop, "b", "rounds of a dropped POP after the reload");
        }
        // Stopping ends every task: they let go of the shared state.
        checker.stop();
        tokio::time::timeout(Duration::from_secs(10), async {
            while Arc::strong_count(&checker.shared) > 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("check tasks still running 10 s after stop");
    }
}
