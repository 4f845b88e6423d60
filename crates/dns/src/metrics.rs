//! The DNS server's counters, rendered in the Prometheus text format on `GET /metrics`.
//!
//! Every UDP thread counts into its own [`Shard`] (one `Mutex` that only that thread and the
//! scrape ever lock, so the hot path takes an uncontended lock on its own cache line and
//! never shares a counter with another thread); TCP connections share one shard. A scrape
//! sums the shards.
//!
//! - `firebreak_dns_queries_total{qtype,rcode}` — every response sent;
//! - `firebreak_dns_answers_total{service,pop,source}` — steered answers (A/AAAA/ANY/CNAME at
//!   a service's name), `source` = `healthy`, `last_healthy` or `fallback`, `pop` empty for a
//!   fallback;
//! - `firebreak_dns_truncated_total` — UDP responses sent with TC=1;
//! - `firebreak_dns_empty_total` — address queries for a service's name answered with
//!   nothing in either family (the never-empty guarantee broken: a bug);
//! - `firebreak_dns_dropped_total{reason}` — queries not answered (`short`, `response`) and
//!   TCP connections closed by a bound (`tcp_full`, `tcp_evicted`, `tcp_timeout`,
//!   `tcp_too_many_queries`) and queries whose answering panicked (`panic`, a bug).

use crate::answer::{Dropped, Outcome, Zone};
use crate::steer::Source;
use firebreak_protocol::health::{
    dns_latency_bucket, DnsCounts, PopAnswers, DNS_LATENCY_BUCKETS, MAX_POP_NAME, MAX_REPORTED_POPS,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Query types with their own label; the rest are `OTHER`.
const QTYPES: [(u16, &str); 11] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (65, "HTTPS"),
    (255, "ANY"),
];
const N_QTYPE: usize = QTYPES.len() + 1;
const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS",
];

fn qtype_index(qtype: u16) -> usize {
    QTYPES
        .iter()
        .position(|(t, _)| *t == qtype)
        .unwrap_or(QTYPES.len())
}

fn qtype_name(i: usize) -> &'static str {
    QTYPES.get(i).map(|(_, n)| *n).unwrap_or("OTHER")
}

fn rcode_index(r: crate::answer::Rcode) -> usize {
    use crate::answer::Rcode;
    match r {
        Rcode::NoError => 0,
        Rcode::FormErr => 1,
        Rcode::NxDomain => 2,
        Rcode::NotImp => 3,
        Rcode::Refused => 4,
        Rcode::BadVers => 5,
    }
}

/// Why a query or a connection got nothing (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// See [`Dropped::Short`].
    Short,
    /// See [`Dropped::Response`].
    Response,
    /// A TCP connection refused: every slot busy with a query in progress.
    TcpFull,
    /// An idle TCP connection closed to make room for a new one.
    TcpEvicted,
    /// A TCP connection closed because it sent nothing (or too slowly) within its timeout.
    TcpTimeout,
    /// A TCP connection closed after its allowed number of queries.
    TcpTooManyQueries,
    /// A query whose answering panicked (a bug): dropped, the thread serves on.
    Panic,
    /// A TCP connection refused: its client address (IPv6: its /64) holds its share already.
    TcpAddressFull,
}

const DROPS: [&str; 8] = [
    "short",
    "response",
    "tcp_full",
    "tcp_evicted",
    "tcp_timeout",
    "tcp_too_many_queries",
    "panic",
    "tcp_address_full",
];

impl DropReason {
    fn index(self) -> usize {
        match self {
            DropReason::Short => 0,
            DropReason::Response => 1,
            DropReason::TcpFull => 2,
            DropReason::TcpEvicted => 3,
            DropReason::TcpTimeout => 4,
            DropReason::TcpTooManyQueries => 5,
            DropReason::Panic => 6,
            DropReason::TcpAddressFull => 7,
        }
    }
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Healthy => "healthy",
        Source::LastHealthy => "last_healthy",
        Source::Fallback => "fallback",
    }
}

fn source_code(s: Source) -> u8 {
    match s {
        Source::Healthy => 0,
        Source::LastHealthy => 1,
        Source::Fallback => 2,
    }
}

const SOURCES: [Source; 3] = [Source::Healthy, Source::LastHealthy, Source::Fallback];

/// A steered answer's key within one zone version: (service, pop + 1 or 0, source).
type AnswerKey = (u32, u32, u8);

/// A multiplicative hash for the small integer keys of the answers map: SipHash's
/// flooding resistance is not needed (the keys are indices into our own data) and it
/// would be most of the cost of counting an answer.
#[derive(Default, Clone, Copy)]
struct IndexHasher(u64);

impl std::hash::Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IndexMap = HashMap<AnswerKey, u64, std::hash::BuildHasherDefault<IndexHasher>>;
/// A steered answer's labels: (service, pop or "", source).
type AnswerLabels = (String, String, &'static str);

#[derive(Default)]
struct Counts {
    queries: [[u64; RCODES.len()]; N_QTYPE],
    truncated: u64,
    nodata: u64,
    empty: u64,
    /// Receive-to-send time of answered queries, by `DNS_LATENCY_BOUNDS_US` bucket.
    latency_us: [u64; DNS_LATENCY_BUCKETS],
    dropped: [u64; DROPS.len()],
    /// Steered answers of `zone`, by index (names resolved at scrape or when the zone changes).
    answers: IndexMap,
    zone: Option<Arc<Zone>>,
    /// Steered answers of zone versions this shard no longer serves, by name.
    retired: HashMap<AnswerLabels, u64>,
}

fn labels(zone: &Zone, (service, pop, source): AnswerKey) -> AnswerLabels {
    let st = zone.steering();
    let service = st.service_name(service as usize).to_owned();
    let pop = match pop {
        0 => String::new(),
        p => st.pop_name((p - 1) as usize).to_owned(),
    };
    let source = SOURCES
        .iter()
        .find(|s| source_code(**s) == source)
        .map(|s| source_name(*s))
        .unwrap_or("healthy");
    (service, pop, source)
}

impl Counts {
    /// Moves the indexed answers into `retired` (by name) when the zone changes.
    fn follow(&mut self, zone: &Arc<Zone>) {
        if self.zone.as_ref().is_some_and(|z| Arc::ptr_eq(z, zone)) {
            return;
        }
        if let Some(old) = self.zone.take() {
            for (k, v) in self.answers.drain() {
                *self.retired.entry(labels(&old, k)).or_default() += v;
            }
        }
        self.zone = Some(Arc::clone(zone));
    }
}

/// One thread's counters (or the TCP connections').
#[derive(Default)]
pub struct Shard {
    counts: Mutex<Counts>,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        // A panic while holding it cannot leave counters half-updated in a harmful way.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one query's outcome, answered from `zone` in `elapsed` (from receiving the
    /// query to sending the response; only replies are timed).
    pub fn record(&self, zone: &Arc<Zone>, outcome: &Outcome, elapsed: Duration) {
        let mut c = self.lock();
        match outcome {
            Outcome::Drop(d) => {
                let d = match d {
                    Dropped::Short => DropReason::Short,
                    Dropped::Response => DropReason::Response,
                };
                if let Some(n) = c.dropped.get_mut(d.index()) {
                    *n += 1;
                }
            }
            Outcome::Reply(r) => {
                if let Some(n) = c
                    .queries
                    .get_mut(qtype_index(r.qtype))
                    .and_then(|row| row.get_mut(rcode_index(r.rcode)))
                {
                    *n += 1;
                }
                if r.truncated {
                    c.truncated += 1;
                }
                if r.nodata {
                    c.nodata += 1;
                }
                if r.empty {
                    c.empty += 1;
                }
                let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                if let Some(n) = c.latency_us.get_mut(dns_latency_bucket(us)) {
                    *n += 1;
                }
                if let Some(s) = r.steered {
                    c.follow(zone);
                    let key = (
                        u32::try_from(s.service).unwrap_or(u32::MAX),
                        s.pop
                            .map(|p| u32::try_from(p).unwrap_or(u32::MAX - 1) + 1)
                            .unwrap_or(0),
                        source_code(s.source),
                    );
                    *c.answers.entry(key).or_default() += 1;
                }
            }
        }
    }

    /// Counts a connection closed by a bound.
    pub fn dropped(&self, reason: DropReason) {
        if let Some(n) = self.lock().dropped.get_mut(reason.index()) {
            *n += 1;
        }
    }
}

/// Renders more metrics for the same scrape (e.g. the process's `metrics` recorder, which
/// holds the POP checker's series).
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Every shard of one server.
#[derive(Default)]
pub struct Metrics {
    shards: Mutex<Vec<Arc<Shard>>>,
    extra: std::sync::OnceLock<ExtraMetrics>,
}

/// The counters summed over shards (what a scrape shows).
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// (qtype, rcode) → count.
    pub queries: BTreeMap<(&'static str, &'static str), u64>,
    /// (service, pop, source) → count.
    pub answers: BTreeMap<AnswerLabels, u64>,
    /// TC responses.
    pub truncated: u64,
    /// NODATA responses.
    pub nodata: u64,
    /// Empty answers (see [`crate::answer::Reply::empty`]).
    pub empty: u64,
    /// Receive-to-send time by `DNS_LATENCY_BOUNDS_US` bucket.
    pub latency_us: Vec<u64>,
    /// reason → count.
    pub dropped: BTreeMap<&'static str, u64>,
}

impl Metrics {
    /// A new, empty set.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Appends what `extra` renders to every scrape (set once; later calls are ignored).
    pub fn set_extra(&self, extra: ExtraMetrics) {
        let _ = self.extra.set(extra);
    }

    /// A new shard, counted in every scrape from now on.
    pub fn shard(&self) -> Arc<Shard> {
        let s = Arc::new(Shard::default());
        self.shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&s));
        s
    }

    /// The sums.
    pub fn totals(&self) -> Totals {
        let shards: Vec<Arc<Shard>> = self
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut t = Totals {
            latency_us: vec![0; DNS_LATENCY_BUCKETS],
            ..Totals::default()
        };
        for shard in shards {
            let c = shard.lock();
            t.nodata += c.nodata;
            t.empty += c.empty;
            for (a, b) in t.latency_us.iter_mut().zip(&c.latency_us) {
                *a += b;
            }
            for (qi, row) in c.queries.iter().enumerate() {
                for (ri, n) in row.iter().enumerate() {
                    if *n > 0 {
                        let rcode = RCODES.get(ri).copied().unwrap_or("OTHER");
                        *t.queries.entry((qtype_name(qi), rcode)).or_default() += n;
                    }
                }
            }
            t.truncated += c.truncated;
            for (i, n) in c.dropped.iter().enumerate() {
                if let Some(reason) = DROPS.get(i) {
                    *t.dropped.entry(reason).or_default() += n;
                }
            }
            for (k, n) in &c.retired {
                *t.answers.entry(k.clone()).or_default() += n;
            }
            if let Some(zone) = &c.zone {
                for (k, n) in &c.answers {
                    *t.answers.entry(labels(zone, *k)).or_default() += n;
                }
            }
        }
        t
    }

    /// The counts a DNS server's health report carries, since the server started: the
    /// member subtracts the snapshot taken when it began serving a version
    /// ([`DnsCounts::since`]). `servfail` counts queries whose answering panicked (this
    /// server never sends SERVFAIL; to a resolver a dropped query is the same failure).
    /// With more than [`MAX_REPORTED_POPS`] POPs, those with the most answers are kept.
    pub fn dns_counts(&self) -> DnsCounts {
        let t = self.totals();
        let rcode = |want: &str| -> u64 {
            t.queries
                .iter()
                .filter(|((_, r), _)| *r == want)
                .map(|(_, n)| *n)
                .sum()
        };
        let panics = t.dropped.get("panic").copied().unwrap_or(0);
        let mut by_pop: HashMap<&str, u64> = HashMap::new();
        let (mut fallback, mut last_healthy) = (0u64, 0u64);
        for ((_, pop, source), n) in &t.answers {
            match *source {
                "fallback" => fallback += n,
                "last_healthy" => last_healthy += n,
                _ => {}
            }
            if !pop.is_empty() && pop.len() <= MAX_POP_NAME {
                *by_pop.entry(pop.as_str()).or_default() += n;
            }
        }
        let mut answers_by_pop: Vec<PopAnswers> = by_pop
            .into_iter()
            .map(|(pop, answers)| PopAnswers {
                pop: pop.to_owned(),
                answers,
            })
            .collect();
        answers_by_pop.sort_by(|a, b| b.answers.cmp(&a.answers).then(a.pop.cmp(&b.pop)));
        answers_by_pop.truncate(MAX_REPORTED_POPS);
        answers_by_pop.sort_by(|a, b| a.pop.cmp(&b.pop));
        DnsCounts {
            queries: t.queries.values().sum::<u64>() + panics,
            servfail: panics,
            refused: rcode("REFUSED"),
            nxdomain: rcode("NXDOMAIN"),
            nodata: t.nodata,
            empty: t.empty,
            fallback,
            last_healthy,
            answers_by_pop,
            latency_us: t.latency_us,
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let t = self.totals();
        let mut s = String::with_capacity(4096);
        s.push_str("# HELP firebreak_dns_queries_total DNS responses sent, by query type and response code.\n");
        s.push_str("# TYPE firebreak_dns_queries_total counter\n");
        for ((qtype, rcode), n) in &t.queries {
            let _ = writeln!(
                s,
                "firebreak_dns_queries_total{{qtype=\"{qtype}\",rcode=\"{rcode}\"}} {n}"
            );
        }
        s.push_str(
            "# HELP firebreak_dns_answers_total Steered answers, by service, POP and source.\n",
        );
        s.push_str("# TYPE firebreak_dns_answers_total counter\n");
        for ((service, pop, source), n) in &t.answers {
            let _ = writeln!(
                s,
                "firebreak_dns_answers_total{{service=\"{}\",pop=\"{}\",source=\"{source}\"}} {n}",
                escape(service),
                escape(pop)
            );
        }
        s.push_str("# HELP firebreak_dns_truncated_total UDP responses sent truncated (TC=1).\n");
        s.push_str("# TYPE firebreak_dns_truncated_total counter\n");
        let _ = writeln!(s, "firebreak_dns_truncated_total {}", t.truncated);
        s.push_str("# HELP firebreak_dns_empty_total Address queries for a service answered with nothing (never-empty broken).\n");
        s.push_str("# TYPE firebreak_dns_empty_total counter\n");
        let _ = writeln!(s, "firebreak_dns_empty_total {}", t.empty);
        s.push_str("# HELP firebreak_dns_dropped_total Queries not answered and TCP connections closed by a bound.\n");
        s.push_str("# TYPE firebreak_dns_dropped_total counter\n");
        for (reason, n) in &t.dropped {
            let _ = writeln!(s, "firebreak_dns_dropped_total{{reason=\"{reason}\"}} {n}");
        }
        if let Some(extra) = self.extra.get() {
            s.push_str(&extra());
        }
        s
    }
}

/// Escapes a Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::answer::tests::test_zone;
    use crate::answer::{Rcode, Reply, SteeredAnswer};

    fn reply(rcode: Rcode, qtype: u16, steered: Option<SteeredAnswer>, truncated: bool) -> Outcome {
        Outcome::Reply(Reply {
            rcode,
            qtype,
            steered,
            truncated,
            nodata: false,
            empty: false,
        })
    }

    const US: Duration = Duration::from_micros(20);

    #[test]
    fn shards_are_summed_and_rendered() {
        let (zone, _) = test_zone();
        let zone = Arc::new(zone);
        let m = Metrics::new();
        let (a, b) = (m.shard(), m.shard());
        let demo = SteeredAnswer {
            service: 0,
            pop: Some(0),
            source: Source::Healthy,
        };
        a.record(&zone, &reply(Rcode::NoError, 1, Some(demo), false), US);
        b.record(&zone, &reply(Rcode::NoError, 1, Some(demo), false), US);
        b.record(&zone, &reply(Rcode::NxDomain, 28, None, false), US);
        b.record(&zone, &reply(Rcode::NoError, 99, None, true), US);
        a.record(&zone, &Outcome::Drop(Dropped::Short), US);
        b.dropped(DropReason::TcpTimeout);
        let t = m.totals();
        assert_eq!(t.queries[&("A", "NOERROR")], 2);
        assert_eq!(t.queries[&("AAAA", "NXDOMAIN")], 1);
        assert_eq!(t.queries[&("OTHER", "NOERROR")], 1);
        assert_eq!(t.truncated, 1);
        assert_eq!(t.dropped["short"], 1);
        assert_eq!(t.dropped["tcp_timeout"], 1);
        let name = zone.steering().service_name(0).to_owned();
        let pop = zone.steering().pop_name(0).to_owned();
        assert_eq!(t.answers[&(name.clone(), pop.clone(), "healthy")], 2);
        let text = m.render();
        assert!(text.contains("firebreak_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"} 2\n"));
        assert!(text.contains(&format!(
            "firebreak_dns_answers_total{{service=\"{name}\",pop=\"{pop}\",source=\"healthy\"}} 2\n"
        )));
        assert!(text.contains("firebreak_dns_truncated_total 1\n"));
        assert!(text.contains("firebreak_dns_dropped_total{reason=\"short\"} 1\n"));
    }

    #[test]
    fn answers_survive_a_zone_change() {
        let (z1, _) = test_zone();
        let (z2, _) = test_zone();
        let (z1, z2) = (Arc::new(z1), Arc::new(z2));
        let m = Metrics::new();
        let s = m.shard();
        let fallback = SteeredAnswer {
            service: 2,
            pop: None,
            source: Source::Fallback,
        };
        s.record(&z1, &reply(Rcode::NoError, 1, Some(fallback), false), US);
        s.record(&z2, &reply(Rcode::NoError, 1, Some(fallback), false), US);
        let t = m.totals();
        let name = z2.steering().service_name(2).to_owned();
        assert_eq!(t.answers[&(name, String::new(), "fallback")], 2);
    }

    #[test]
    fn dns_counts_sum_what_a_health_report_needs() {
        let (zone, _) = test_zone();
        let zone = Arc::new(zone);
        let m = Metrics::new();
        let (a, b) = (m.shard(), m.shard());
        let at = |pop: Option<usize>, source| {
            Some(SteeredAnswer {
                service: 0,
                pop,
                source,
            })
        };
        for _ in 0..3 {
            a.record(
                &zone,
                &reply(Rcode::NoError, 1, at(Some(0), Source::Healthy), false),
                US,
            );
        }
        b.record(
            &zone,
            &reply(Rcode::NoError, 1, at(Some(1), Source::Healthy), false),
            US,
        );
        b.record(
            &zone,
            &reply(Rcode::NoError, 1, at(Some(1), Source::LastHealthy), false),
            US,
        );
        b.record(
            &zone,
            &reply(Rcode::NoError, 1, at(None, Source::Fallback), false),
            Duration::from_millis(3),
        );
        a.record(&zone, &reply(Rcode::NxDomain, 1, None, false), US);
        a.record(&zone, &reply(Rcode::Refused, 1, None, false), US);
        let mut nodata = Reply {
            rcode: Rcode::NoError,
            qtype: 28,
            steered: None,
            truncated: false,
            nodata: true,
            empty: false,
        };
        b.record(&zone, &Outcome::Reply(nodata), US);
        nodata.empty = true;
        b.record(&zone, &Outcome::Reply(nodata), US);
        a.record(&zone, &Outcome::Drop(Dropped::Short), US);
        a.dropped(DropReason::Panic);
        let d = m.dns_counts();
        assert!(d.is_plausible(), "{d:?}");
        let (p0, p1) = (
            zone.steering().pop_name(0).to_owned(),
            zone.steering().pop_name(1).to_owned(),
        );
        assert_eq!(d.queries, 11, "10 answered + 1 panic, the short one not");
        assert_eq!((d.servfail, d.refused, d.nxdomain), (1, 1, 1));
        assert_eq!((d.nodata, d.empty), (2, 1));
        assert_eq!((d.fallback, d.last_healthy), (1, 1));
        let mut want = vec![
            PopAnswers {
                pop: p0,
                answers: 3,
            },
            PopAnswers {
                pop: p1,
                answers: 2,
            },
        ];
        want.sort_by(|a, b| a.pop.cmp(&b.pop));
        assert_eq!(d.answers_by_pop, want);
        assert_eq!(d.latency_us.len(), DNS_LATENCY_BUCKETS);
        assert_eq!(d.latency_us[dns_latency_bucket(20)], 9);
        assert_eq!(d.latency_us[dns_latency_bucket(3_000)], 1);
        // What the member reports: the counts since a snapshot.
        let snapshot = d;
        b.record(
            &zone,
            &reply(Rcode::NoError, 1, at(Some(1), Source::Healthy), false),
            US,
        );
        let since = m.dns_counts().since(&snapshot);
        assert_eq!(since.queries, 1);
        assert_eq!(since.answers_by_pop.len(), 1);
        assert_eq!(since.answers_by_pop[0].answers, 1);
        assert_eq!(since.latency_us.iter().sum::<u64>(), 1);
        assert!(m.render().contains("firebreak_dns_empty_total 1\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
