//! The health gate: does the wave's evidence show that the new version is worse than the
//! baseline by at least the plan's smallest effect worth acting on?
//!
//! For each proportion (5xx share, 4xx share, share of requests sent to origins) the gate
//! computes a one-sided two-proportion z statistic against the threshold
//! `t = max(ratio × p_base, p_base + margin)`: `z = (p_wave − t) / sqrt(t(1−t)/n_wave +
//! k² p_base(1−p_base)/n_base)` (variance under the null at the threshold, plus the baseline's
//! own uncertainty; `k` is the ratio when the ratio term is the larger). Latency distributions
//! are compared with a Mann-Whitney rank test on the histograms (ties corrected); a latency
//! failure needs both a significant rank test and a p99 above `p99_ratio` × the baseline's.
//!
//! Looking again and again during a bake inflates false alarms, so the plan's false-alarm
//! rate `α` is split over every look the wave may take (Bonferroni: `α / looks`), which keeps
//! the chance that a healthy wave fails by noise at most `α` however long it bakes. A wave
//! passes only when it has at least `min_requests` and the upper Wilson bound (95%) of its 5xx
//! share is under the threshold — a quiet canary with a handful of requests neither passes nor
//! fails; it waits (and holds for an operator when the wait runs out).
//!
//! With no baseline (the fleet's first version, or the last wave) only absolute limits apply.
//! With a baseline, only relative terms do: an origin outage that hits every cell raises the
//! baseline too, so a healthy version is not rolled back for it.
//!
//! DNS servers (reports carrying `dns`) are judged by their own checks, scope `dns`, with the
//! same machinery: the SERVFAIL share (the 5xx thresholds), the empty-answer share (always
//! absolute: at most [`DNS_EMPTY_MARGIN`], the never-empty guarantee), the share of answers
//! not from a healthy POP (fallback and last-healthy; `dns_fallback_*`), p99 query latency
//! (rank test and `p99_ratio`, margin `dns_p99_min_us`) and, per POP (`pop:NAME`), a share of
//! the POP answers that falls below `dns_pop_drop` × the baseline's (a version that silently
//! stops sending clients to a POP). A wave passes only when every kind it holds (HTTP edges,
//! DNS servers) has `min_requests` (requests, or queries) and a failure share confidently
//! under its threshold; a failure of either kind fails it.

use firebreak_config::GateConfig;
use firebreak_protocol::health::{
    Counts, DnsCounts, ServiceHealth, DNS_LATENCY_BOUNDS_US, LATENCY_BOUNDS_MS,
};
use serde::{Deserialize, Serialize};

/// Fewest requests on the wave's side before any proportion is judged.
pub const MIN_SAMPLE: u64 = 20;
/// Share of empty DNS answers the gate tolerates: zero, plus one in a million so that a
/// single empty answer among millions (a race at a reload) is judged by the z test rather
/// than failing outright; below ~75,000 queries one empty answer fails the wave.
pub const DNS_EMPTY_MARGIN: f64 = 1e-6;
/// Most passing per-POP checks kept in a report (every failing one is kept).
const MAX_POP_CHECKS_SHOWN: usize = 64;

/// The outcome of one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The evidence shows a regression at least as large as the plan's thresholds.
    Fail,
    /// Enough traffic, and confidently within the thresholds.
    Pass,
    /// Not enough evidence either way yet.
    Wait,
}

/// One comparison, with its numbers (kept in the audit log and shown by `deploy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `total`, `service:NAME`, `dns` or `dns:pop:NAME`.
    pub scope: String,
    /// `5xx`, `4xx`, `origin_share`, `p99_ms`; DNS: `servfail`, `empty`, `fallback_share`,
    /// `p99_us`, `pop_share` (a floor: fails below its threshold).
    pub metric: String,
    /// The wave's value.
    pub wave: f64,
    /// The baseline's value, if there is a baseline.
    pub baseline: Option<f64>,
    /// The value the wave must not exceed.
    pub threshold: f64,
    /// The test statistic (z), when one was computed.
    pub z: Option<f64>,
    /// Requests on the wave's side.
    pub n: u64,
    /// Whether this check failed.
    pub failed: bool,
}

/// The gate's judgement of one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// Pass, fail or wait.
    pub verdict: Verdict,
    /// Why, in one line.
    pub reason: String,
    /// Requests on the wave's side.
    pub wave_requests: u64,
    /// Requests on the baseline's side (0: no baseline).
    pub baseline_requests: u64,
    /// DNS queries on the wave's side (0: no DNS server in the wave).
    #[serde(default)]
    pub wave_queries: u64,
    /// DNS queries on the baseline's side.
    #[serde(default)]
    pub baseline_queries: u64,
    /// The z value a check must exceed to fail (after splitting the false-alarm rate).
    pub z_critical: f64,
    /// Every comparison made.
    pub checks: Vec<Check>,
}

/// What the gate sees: the wave's and the baseline's counts, in total and per service.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// The wave's edges, on the new version.
    pub wave: Counts,
    /// Per service.
    pub wave_services: Vec<ServiceHealth>,
    /// The baseline's edges, on the previous version, since the wave started (`None`: no
    /// baseline).
    pub baseline: Option<Counts>,
    /// Per service.
    pub baseline_services: Vec<ServiceHealth>,
    /// The wave's DNS servers' counts (`None`: no DNS server in the wave).
    pub wave_dns: Option<DnsCounts>,
    /// The baseline's DNS servers' counts since the wave started (`None`: none).
    pub baseline_dns: Option<DnsCounts>,
    /// Members of the wave on the new version that report HTTP counts (no `dns`): when
    /// there is DNS evidence, HTTP evidence is required only if there are such members (or
    /// requests).
    pub wave_http_members: usize,
}

/// Judges one look. `looks` is the most looks this wave may take (for the false-alarm split).
pub fn judge(g: &GateConfig, min_requests: u64, looks: u64, e: &Evidence) -> GateReport {
    let alpha = (g.false_alarm / looks.max(1) as f64).clamp(1e-12, 0.5);
    let z_crit = inverse_normal(1.0 - alpha);
    let mut checks = Vec::new();
    let baseline = e.baseline.as_ref().filter(|b| b.requests > 0);
    compare(g, "total", &e.wave, baseline, z_crit, &mut checks);
    for s in &e.wave_services {
        let base = baseline.and_then(|_| {
            e.baseline_services
                .iter()
                .find(|b| b.service == s.service)
                .map(|b| &b.counts)
                .filter(|b| b.requests > 0)
        });
        // A service the baseline never saw is judged on absolute limits.
        compare(
            g,
            &format!("service:{}", s.service),
            &s.counts,
            base,
            z_crit,
            &mut checks,
        );
    }
    let dns_base = e.baseline_dns.as_ref().filter(|b| b.queries > 0);
    if let Some(d) = &e.wave_dns {
        compare_dns(g, d, dns_base, alpha, z_crit, &mut checks);
    }
    let wave_requests = e.wave.requests;
    let baseline_requests = baseline.map_or(0, |b| b.requests);
    let wave_queries = e.wave_dns.as_ref().map_or(0, |d| d.queries);
    let baseline_queries = e.wave_dns.as_ref().and(dns_base).map_or(0, |b| b.queries);
    if let Some(failed) = checks.iter().find(|c| c.failed) {
        let reason = format!(
            "{} {} {:.4} {} threshold {:.4}{} (z = {}, n = {})",
            failed.scope,
            failed.metric,
            failed.wave,
            if failed.wave < failed.threshold {
                "<"
            } else {
                ">"
            },
            failed.threshold,
            failed
                .baseline
                .map(|b| format!(", baseline {b:.4}"))
                .unwrap_or_default(),
            failed.z.map_or("-".into(), |z| format!("{z:.2}")),
            failed.n
        );
        return GateReport {
            verdict: Verdict::Fail,
            reason,
            wave_requests,
            baseline_requests,
            wave_queries,
            baseline_queries,
            z_critical: z_crit,
            checks,
        };
    }
    let http_judged = e.wave_dns.is_none() || e.wave_http_members > 0 || wave_requests > 0;
    let mut kinds = Vec::with_capacity(2);
    if http_judged {
        kinds.push(http_verdict(g, min_requests, e, baseline));
    }
    if let Some(d) = &e.wave_dns {
        kinds.push(dns_verdict(g, min_requests, d, dns_base));
    }
    let (verdict, reason) = match kinds.iter().find(|(v, _)| *v == Verdict::Wait) {
        Some((v, reason)) => (*v, reason.clone()),
        None => (
            Verdict::Pass,
            kinds
                .iter()
                .map(|(_, r)| r.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    GateReport {
        verdict,
        reason,
        wave_requests,
        baseline_requests,
        wave_queries,
        baseline_queries,
        z_critical: z_crit,
        checks,
    }
}

/// Whether the HTTP side has enough evidence, confidently under its 5xx threshold.
fn http_verdict(
    g: &GateConfig,
    min_requests: u64,
    e: &Evidence,
    baseline: Option<&Counts>,
) -> (Verdict, String) {
    let wave_requests = e.wave.requests;
    // Pass: enough traffic and the 5xx share confidently under its threshold.
    let threshold = match baseline {
        Some(b) => error_threshold(g, share(b.status_5xx, b.requests)).0,
        None => g.max_error_rate,
    };
    let upper = wilson_upper(e.wave.status_5xx, e.wave.requests, 1.645);
    let (verdict, reason) = if min_requests == 0 && wave_requests < MIN_SAMPLE {
        // The plan says in so many words that this fleet needs no traffic evidence.
        (
            Verdict::Pass,
            format!("{wave_requests} requests; the plan requires none (min_requests = 0)"),
        )
    } else if wave_requests < min_requests.max(MIN_SAMPLE) {
        (
            Verdict::Wait,
            format!("{wave_requests} of {min_requests} requests needed to judge"),
        )
    } else if upper >= threshold {
        (
            Verdict::Wait,
            format!(
                "5xx share {:.4} not yet confidently under {threshold:.4} (upper bound {upper:.4})",
                share(e.wave.status_5xx, e.wave.requests)
            ),
        )
    } else {
        (
            Verdict::Pass,
            format!("{wave_requests} requests, 5xx share upper bound {upper:.4} < {threshold:.4}"),
        )
    };
    (verdict, reason)
}

/// Whether the DNS side has enough queries, its SERVFAIL share confidently under its
/// threshold (the 5xx one).
fn dns_verdict(
    g: &GateConfig,
    min_requests: u64,
    d: &DnsCounts,
    base: Option<&DnsCounts>,
) -> (Verdict, String) {
    let queries = d.queries;
    let threshold = match base {
        Some(b) => error_threshold(g, share(b.servfail, b.queries)).0,
        None => g.max_error_rate,
    };
    let upper = wilson_upper(d.servfail, queries, 1.645);
    if min_requests == 0 && queries < MIN_SAMPLE {
        (
            Verdict::Pass,
            format!("{queries} DNS queries; the plan requires none (min_requests = 0)"),
        )
    } else if queries < min_requests.max(MIN_SAMPLE) {
        (
            Verdict::Wait,
            format!("{queries} of {min_requests} DNS queries needed to judge"),
        )
    } else if upper >= threshold {
        (
            Verdict::Wait,
            format!(
                "DNS SERVFAIL share {:.4} not yet confidently under {threshold:.4} (upper bound {upper:.4})",
                share(d.servfail, queries)
            ),
        )
    } else {
        (
            Verdict::Pass,
            format!(
                "{queries} DNS queries, SERVFAIL share upper bound {upper:.4} < {threshold:.4}"
            ),
        )
    }
}

fn share(x: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        x as f64 / n as f64
    }
}

/// `(threshold, k)` for a proportion with baseline `p`.
fn threshold(ratio: f64, margin: f64, p: f64) -> (f64, f64) {
    let (a, b) = (ratio * p, p + margin);
    if a >= b {
        (a.min(1.0), ratio)
    } else {
        (b.min(1.0), 1.0)
    }
}

fn error_threshold(g: &GateConfig, p: f64) -> (f64, f64) {
    threshold(g.error_ratio, g.error_min, p)
}

fn compare(
    g: &GateConfig,
    scope: &str,
    wave: &Counts,
    base: Option<&Counts>,
    z_crit: f64,
    checks: &mut Vec<Check>,
) {
    let n = wave.requests;
    if n < MIN_SAMPLE {
        return;
    }
    let mut proportion = |metric: &str,
                          x: u64,
                          bx: Option<(u64, u64)>,
                          ratio: f64,
                          margin: f64,
                          limit: Option<f64>| {
        let rule = Rule {
            ratio,
            margin,
            limit,
        };
        if let Some(c) = proportion(scope, metric, (x, n), bx, rule, z_crit) {
            checks.push(c);
        }
    };
    let b = base.map(|b| b.requests);
    proportion(
        "5xx",
        wave.status_5xx,
        base.zip(b).map(|(c, n)| (c.status_5xx, n)),
        g.error_ratio,
        g.error_min,
        Some(g.max_error_rate),
    );
    proportion(
        "4xx",
        wave.status_4xx,
        base.zip(b).map(|(c, n)| (c.status_4xx, n)),
        g.client_error_ratio,
        g.client_error_min,
        None,
    );
    proportion(
        "origin_share",
        wave.origin_requests.min(n),
        base.zip(b).map(|(c, n)| (c.origin_requests.min(n), n)),
        g.origin_ratio,
        g.origin_min,
        None,
    );
    latency(g, scope, wave, base, z_crit, checks);
}

/// How a proportion is judged: relative to the baseline's (`threshold(ratio, margin, p)`), or
/// with no baseline against `limit` (no limit: not judged).
#[derive(Clone, Copy)]
struct Rule {
    ratio: f64,
    margin: f64,
    limit: Option<f64>,
}

/// One-sided z of "the wave's share `p` (of `n`) is above `t`", with `t` estimated from the
/// baseline's share `pb` (of `nb`) scaled by `k` (variance under the null at the threshold,
/// plus the baseline's own uncertainty).
fn z_above(p: f64, n: u64, t: f64, k: f64, base: Option<(f64, u64)>) -> f64 {
    let t_var = (t * (1.0 - t)).max(1e-9) / n.max(1) as f64;
    let b_var = match base {
        Some((pb, nb)) if nb > 0 => k * k * pb * (1.0 - pb) / nb as f64,
        _ => 0.0,
    };
    (p - t) / (t_var + b_var).sqrt()
}

/// The check of the wave's `x` of `n` against the baseline's `bx` of `bn` (or, with no
/// baseline, against `rule.limit`); `None` when there is nothing to compare with.
fn proportion(
    scope: &str,
    metric: &str,
    (x, n): (u64, u64),
    bx: Option<(u64, u64)>,
    rule: Rule,
    z_crit: f64,
) -> Option<Check> {
    let p = share(x, n);
    let (t, k, pb, nb) = match bx {
        Some((bx, bn)) => {
            let pb = share(bx, bn);
            let (t, k) = threshold(rule.ratio, rule.margin, pb);
            (t, k, Some(pb), bn)
        }
        None => (rule.limit?, 0.0, None, 0),
    };
    let z = z_above(p, n, t, k, pb.map(|pb| (pb, nb)));
    Some(Check {
        scope: scope.to_owned(),
        metric: metric.to_owned(),
        wave: p,
        baseline: pb,
        threshold: t,
        z: Some(z),
        n,
        failed: p > t && z > z_crit,
    })
}

/// How a latency histogram is judged.
struct LatencyRule<'a> {
    metric: &'a str,
    bounds: &'a [u64],
    ratio: f64,
    margin: f64,
    max: f64,
}

fn latency(
    g: &GateConfig,
    scope: &str,
    wave: &Counts,
    base: Option<&Counts>,
    z_crit: f64,
    checks: &mut Vec<Check>,
) {
    let rule = LatencyRule {
        metric: "p99_ms",
        bounds: &LATENCY_BOUNDS_MS,
        ratio: g.p99_ratio,
        margin: g.p99_min_ms as f64,
        max: g.max_p99_ms as f64,
    };
    let base = base.map(|b| b.latency.as_slice());
    latency_check(&rule, scope, &wave.latency, base, z_crit, checks);
}

fn latency_check(
    rule: &LatencyRule<'_>,
    scope: &str,
    wave: &[u64],
    base: Option<&[u64]>,
    z_crit: f64,
    checks: &mut Vec<Check>,
) {
    let nw: u64 = wave.iter().sum();
    if nw < MIN_SAMPLE.max(100) {
        return;
    }
    let p99 = percentile(wave, 0.99, rule.bounds);
    match base {
        Some(b) if b.iter().sum::<u64>() >= MIN_SAMPLE => {
            let pb = percentile(b, 0.99, rule.bounds);
            let threshold = (pb * rule.ratio).max(pb + rule.margin);
            let z = rank_z(wave, b);
            checks.push(Check {
                scope: scope.to_owned(),
                metric: rule.metric.into(),
                wave: p99,
                baseline: Some(pb),
                threshold,
                z: Some(z),
                n: nw,
                failed: p99 > threshold && z > z_crit,
            });
        }
        Some(_) => {}
        None => checks.push(Check {
            scope: scope.to_owned(),
            metric: rule.metric.into(),
            wave: p99,
            baseline: None,
            threshold: rule.max,
            z: None,
            n: nw,
            // The histogram's p99 is the bucket's upper bound; demand that the bucket below
            // the limit is exceeded too, and that 1% of a real sample is behind it.
            failed: p99 > rule.max && nw >= 100,
        }),
    }
}

/// The DNS checks (scope `dns`, and `dns:pop:NAME` per POP). `alpha` is the per-look
/// false-alarm rate: the per-POP checks split it again over the POPs judged.
fn compare_dns(
    g: &GateConfig,
    wave: &DnsCounts,
    base: Option<&DnsCounts>,
    alpha: f64,
    z_crit: f64,
    checks: &mut Vec<Check>,
) {
    let n = wave.queries;
    if n < MIN_SAMPLE {
        return;
    }
    let with_base = |f: fn(&DnsCounts) -> u64| base.map(|b| (f(b).min(b.queries), b.queries));
    let errors = Rule {
        ratio: g.error_ratio,
        margin: g.error_min,
        limit: Some(g.max_error_rate),
    };
    let empty = Rule {
        ratio: 1.0,
        margin: 0.0,
        limit: Some(DNS_EMPTY_MARGIN),
    };
    let fallback = Rule {
        ratio: g.dns_fallback_ratio,
        margin: g.dns_fallback_min,
        limit: Some(g.dns_max_fallback_share),
    };
    let not_healthy = |d: &DnsCounts| d.fallback.saturating_add(d.last_healthy);
    let judged = [
        proportion(
            "dns",
            "servfail",
            (wave.servfail.min(n), n),
            with_base(|d| d.servfail),
            errors,
            z_crit,
        ),
        // Always absolute: the baseline's empty answers excuse nothing.
        proportion("dns", "empty", (wave.empty.min(n), n), None, empty, z_crit),
        proportion(
            "dns",
            "fallback_share",
            (not_healthy(wave).min(n), n),
            with_base(not_healthy),
            fallback,
            z_crit,
        ),
    ];
    checks.extend(judged.into_iter().flatten());
    let rule = LatencyRule {
        metric: "p99_us",
        bounds: &DNS_LATENCY_BOUNDS_US,
        ratio: g.p99_ratio,
        margin: g.dns_p99_min_us as f64,
        max: g.dns_max_p99_us as f64,
    };
    let base_latency = base.map(|b| b.latency_us.as_slice());
    latency_check(&rule, "dns", &wave.latency_us, base_latency, z_crit, checks);
    if let Some(b) = base {
        pop_shares(g, wave, b, alpha, checks);
    }
}

/// Per POP: fails when the POP's share of the wave's POP answers is below `dns_pop_drop` ×
/// its share of the baseline's, significantly (the z test on the complementary share, the
/// false-alarm rate split over the POPs judged).
fn pop_shares(
    g: &GateConfig,
    wave: &DnsCounts,
    base: &DnsCounts,
    alpha: f64,
    checks: &mut Vec<Check>,
) {
    let (nw, nb) = (wave.pop_answers(), base.pop_answers());
    if g.dns_pop_drop <= 0.0 || nw < MIN_SAMPLE || nb < MIN_SAMPLE {
        return;
    }
    let judged: Vec<_> = base
        .answers_by_pop
        .iter()
        .filter(|p| p.answers >= MIN_SAMPLE)
        .collect();
    let z_crit = inverse_normal(1.0 - (alpha / judged.len().max(1) as f64).clamp(1e-15, 0.5));
    let wave_answers: std::collections::HashMap<&str, u64> = wave
        .answers_by_pop
        .iter()
        .map(|p| (p.pop.as_str(), p.answers))
        .collect();
    let mut shown = 0;
    for b in judged {
        let pb = share(b.answers, nb);
        let x = wave_answers
            .get(b.pop.as_str())
            .copied()
            .unwrap_or(0)
            .min(nw);
        let p = share(x, nw);
        let t = g.dns_pop_drop * pb;
        // "Below t" is "the complementary share above 1 - t".
        let z = z_above(1.0 - p, nw, 1.0 - t, g.dns_pop_drop, Some((pb, nb)));
        let failed = p < t && z > z_crit;
        if !failed && shown >= MAX_POP_CHECKS_SHOWN {
            continue;
        }
        shown += usize::from(!failed);
        checks.push(Check {
            scope: format!("dns:pop:{}", b.pop),
            metric: "pop_share".into(),
            wave: p,
            baseline: Some(pb),
            threshold: t,
            z: Some(z),
            n: nw,
            failed,
        });
    }
}

/// The upper bound (ms) of the bucket holding the `q` quantile.
pub fn percentile_ms(hist: &[u64], q: f64) -> f64 {
    percentile(hist, q, &LATENCY_BOUNDS_MS)
}

/// The upper bound of the bucket of `hist` (over `bounds`, plus an overflow bucket counted
/// as twice the last bound) holding the `q` quantile.
pub fn percentile(hist: &[u64], q: f64, bounds: &[u64]) -> f64 {
    let overflow = 2.0 * bounds.last().copied().unwrap_or(0) as f64;
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let want = (q * total as f64).ceil() as u64;
    let mut seen = 0;
    for (i, c) in hist.iter().enumerate() {
        seen += c;
        if seen >= want {
            return bounds.get(i).map_or(overflow, |b| *b as f64);
        }
    }
    overflow
}

/// Mann-Whitney z for "the wave is slower than the baseline", from two histograms over the
/// same buckets (ties within a bucket corrected).
pub fn rank_z(wave: &[u64], base: &[u64]) -> f64 {
    let len = wave.len().max(base.len());
    let get = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0) as f64;
    let (n1, n2) = (
        wave.iter().sum::<u64>() as f64,
        base.iter().sum::<u64>() as f64,
    );
    if n1 == 0.0 || n2 == 0.0 {
        return 0.0;
    }
    let mut u = 0.0;
    let mut below = 0.0;
    let mut ties = 0.0;
    for i in 0..len {
        let (w, b) = (get(wave, i), get(base, i));
        u += w * (below + 0.5 * b);
        below += b;
        let t = w + b;
        ties += t * t * t - t;
    }
    let n = n1 + n2;
    let mean = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)).max(1.0));
    if var <= 0.0 {
        return 0.0;
    }
    (u - mean) / var.sqrt()
}

/// Upper Wilson score bound of a proportion `x / n` at normal quantile `z`.
pub fn wilson_upper(x: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let (n, p) = (n as f64, x as f64 / n as f64);
    let z2 = z * z;
    ((p + z2 / (2.0 * n) + z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt()) / (1.0 + z2 / n))
        .min(1.0)
}

/// The standard normal quantile function (Acklam's rational approximation, relative error
/// below 1.2e-9).
pub fn inverse_normal(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-15, 1.0 - 1e-15);
    let low = 0.02425;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use firebreak_protocol::health::{latency_bucket, LATENCY_BUCKETS};

    fn counts(requests: u64, e5: u64, origin: u64, latency_ms: u64) -> Counts {
        let mut latency = vec![0; LATENCY_BUCKETS];
        latency[latency_bucket(latency_ms)] = requests;
        Counts {
            requests,
            status_2xx: requests - e5,
            status_5xx: e5,
            origin_requests: origin,
            latency,
            ..Counts::default()
        }
    }

    fn evidence(wave: Counts, base: Option<Counts>) -> Evidence {
        Evidence {
            wave,
            baseline: base,
            ..Evidence::default()
        }
    }

    #[test]
    fn normal_quantiles() {
        assert!((inverse_normal(0.975) - 1.959_964).abs() < 1e-5);
        assert!((inverse_normal(0.5)).abs() < 1e-9);
        assert!((inverse_normal(0.001) + 3.090_232).abs() < 1e-5);
    }

    #[test]
    fn a_broken_canary_fails_against_a_healthy_baseline() {
        let g = GateConfig::default();
        let r = judge(
            &g,
            100,
            60,
            &evidence(counts(200, 200, 200, 5), Some(counts(5000, 2, 500, 5))),
        );
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
    }

    #[test]
    fn a_handful_of_errors_on_a_quiet_canary_neither_passes_nor_fails() {
        let g = GateConfig::default();
        let r = judge(
            &g,
            100,
            60,
            &evidence(counts(30, 1, 3, 5), Some(counts(5000, 10, 500, 5))),
        );
        assert_eq!(r.verdict, Verdict::Wait, "{r:?}");
        let r = judge(
            &g,
            100,
            60,
            &evidence(counts(5, 5, 0, 5), Some(counts(5000, 10, 500, 5))),
        );
        assert_eq!(r.verdict, Verdict::Wait, "{r:?}");
    }

    #[test]
    fn a_healthy_canary_with_enough_traffic_passes() {
        let g = GateConfig::default();
        let r = judge(
            &g,
            500,
            60,
            &evidence(counts(2000, 1, 200, 5), Some(counts(8000, 6, 800, 5))),
        );
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
    }

    #[test]
    fn an_outage_that_hits_the_baseline_too_does_not_fail_the_canary() {
        let g = GateConfig::default();
        // Origin down everywhere: 60% errors on both sides.
        let r = judge(
            &g,
            100,
            60,
            &evidence(
                counts(1000, 600, 1000, 5),
                Some(counts(4000, 2400, 4000, 5)),
            ),
        );
        assert_ne!(r.verdict, Verdict::Fail, "{r:?}");
        // With no baseline the absolute limit applies.
        let r = judge(&g, 100, 60, &evidence(counts(1000, 600, 1000, 5), None));
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
    }

    #[test]
    fn one_broken_tenant_fails_the_gate_though_the_total_barely_moves() {
        let g = GateConfig::default();
        let mut wave = counts(10_000, 60, 1000, 5);
        let base = counts(30_000, 30, 3000, 5);
        wave.status_2xx -= 0;
        let e = Evidence {
            wave: wave.clone(),
            wave_services: vec![
                ServiceHealth {
                    service: "big".into(),
                    counts: counts(9_940, 0, 900, 5),
                },
                ServiceHealth {
                    service: "small".into(),
                    counts: counts(60, 60, 60, 5),
                },
            ],
            baseline: Some(base),
            baseline_services: vec![
                ServiceHealth {
                    service: "big".into(),
                    counts: counts(29_800, 30, 2900, 5),
                },
                ServiceHealth {
                    service: "small".into(),
                    counts: counts(200, 0, 100, 5),
                },
            ],
            ..Evidence::default()
        };
        let r = judge(&g, 100, 60, &e);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(r.reason.contains("service:small"), "{}", r.reason);
    }

    #[test]
    fn a_collapsed_hit_ratio_and_a_404_storm_fail() {
        let g = GateConfig::default();
        let r = judge(
            &g,
            100,
            60,
            &evidence(counts(1000, 0, 950, 5), Some(counts(4000, 0, 400, 5))),
        );
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        let mut wave = counts(1000, 0, 100, 5);
        wave.status_4xx = 400;
        let r = judge(&g, 100, 60, &evidence(wave, Some(counts(4000, 0, 400, 5))));
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
    }

    #[test]
    fn slower_latency_fails_only_when_the_rank_test_agrees() {
        let g = GateConfig::default();
        let r = judge(
            &g,
            100,
            60,
            &evidence(counts(1000, 0, 100, 900), Some(counts(4000, 0, 400, 5))),
        );
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(rank_z(&counts(100, 0, 0, 5).latency, &counts(100, 0, 0, 5).latency).abs() < 1e-9);
    }

    use firebreak_protocol::health::{dns_latency_bucket, PopAnswers, DNS_LATENCY_BUCKETS};

    /// DNS counts: `queries`, of which `servfail` failed and `fallback` came from a fallback;
    /// POP answers as given; every query timed at `us`.
    fn dns(queries: u64, servfail: u64, fallback: u64, pops: &[(&str, u64)], us: u64) -> DnsCounts {
        let mut latency_us = vec![0; DNS_LATENCY_BUCKETS];
        latency_us[dns_latency_bucket(us)] = queries;
        DnsCounts {
            queries,
            servfail,
            fallback,
            answers_by_pop: pops
                .iter()
                .map(|(pop, answers)| PopAnswers {
                    pop: (*pop).into(),
                    answers: *answers,
                })
                .collect(),
            latency_us,
            ..DnsCounts::default()
        }
    }

    fn healthy_wave() -> DnsCounts {
        dns(2_000, 0, 20, &[("fra", 1_000), ("ams", 980)], 50)
    }

    fn healthy_base() -> DnsCounts {
        dns(8_000, 1, 80, &[("fra", 4_000), ("ams", 3_920)], 50)
    }

    /// A wave of DNS servers only.
    fn dns_evidence(wave: DnsCounts, base: Option<DnsCounts>) -> Evidence {
        Evidence {
            wave_dns: Some(wave),
            baseline_dns: base,
            ..Evidence::default()
        }
    }

    fn fails_on(r: &GateReport, what: &str) {
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(r.reason.contains(what), "{}", r.reason);
    }

    #[test]
    fn a_healthy_dns_wave_passes_with_or_without_a_baseline() {
        let g = GateConfig::default();
        let r = judge(
            &g,
            1_000,
            60,
            &dns_evidence(healthy_wave(), Some(healthy_base())),
        );
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert_eq!(
            (r.wave_requests, r.wave_queries, r.baseline_queries),
            (0, 2_000, 8_000)
        );
        assert!(r.reason.contains("2000 DNS queries"), "{}", r.reason);
        for metric in ["servfail", "empty", "fallback_share", "p99_us"] {
            assert!(
                r.checks
                    .iter()
                    .any(|c| c.scope == "dns" && c.metric == metric),
                "{metric}: {r:?}"
            );
        }
        assert!(r.checks.iter().any(|c| c.scope == "dns:pop:ams"), "{r:?}");
        let r = judge(&g, 1_000, 60, &dns_evidence(healthy_wave(), None));
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
    }

    #[test]
    fn a_dns_wave_waits_for_enough_queries() {
        let g = GateConfig::default();
        let r = judge(
            &g,
            1_000,
            60,
            &dns_evidence(dns(10, 0, 0, &[("fra", 10)], 50), Some(healthy_base())),
        );
        assert_eq!(r.verdict, Verdict::Wait, "{r:?}");
        let r = judge(
            &g,
            1_000,
            60,
            &dns_evidence(
                dns(500, 0, 5, &[("fra", 250), ("ams", 245)], 50),
                Some(healthy_base()),
            ),
        );
        assert_eq!(r.verdict, Verdict::Wait, "{r:?}");
        assert!(r.reason.contains("500 of 1000 DNS queries"), "{}", r.reason);
    }

    #[test]
    fn a_servfail_rise_fails_a_dns_wave() {
        let g = GateConfig::default();
        let mut wave = healthy_wave();
        wave.servfail = 200;
        fails_on(
            &judge(
                &g,
                1_000,
                60,
                &dns_evidence(wave.clone(), Some(healthy_base())),
            ),
            "dns servfail",
        );
        // And with no baseline, by the absolute limit.
        fails_on(
            &judge(&g, 1_000, 60, &dns_evidence(wave, None)),
            "dns servfail",
        );
    }

    #[test]
    fn any_empty_answer_fails_a_dns_wave_whatever_the_baseline() {
        let g = GateConfig::default();
        let mut wave = healthy_wave();
        wave.empty = 1;
        fails_on(
            &judge(
                &g,
                1_000,
                60,
                &dns_evidence(wave.clone(), Some(healthy_base())),
            ),
            "dns empty",
        );
        let mut base = healthy_base();
        base.empty = 100;
        fails_on(
            &judge(&g, 1_000, 60, &dns_evidence(wave.clone(), Some(base))),
            "dns empty",
        );
        fails_on(
            &judge(&g, 1_000, 60, &dns_evidence(wave, None)),
            "dns empty",
        );
    }

    #[test]
    fn a_fallback_jump_fails_a_dns_wave() {
        let g = GateConfig::default();
        // Every query to the fallback (or the last-healthy set): no POP answers at all.
        let all = dns(2_000, 0, 1_900, &[], 50);
        let mut last = all.clone();
        last.fallback = 0;
        last.last_healthy = 1_900;
        for wave in [all, last] {
            fails_on(
                &judge(
                    &g,
                    1_000,
                    60,
                    &dns_evidence(wave.clone(), Some(healthy_base())),
                ),
                "dns fallback_share",
            );
            fails_on(
                &judge(&g, 1_000, 60, &dns_evidence(wave, None)),
                "dns fallback_share",
            );
        }
        // Every POP down everywhere: the baseline falls back as much, so the version is not blamed.
        let base = dns(8_000, 0, 7_600, &[("fra", 400)], 50);
        let wave = dns(2_000, 0, 1_900, &[("fra", 100)], 50);
        let r = judge(&g, 1_000, 60, &dns_evidence(wave, Some(base)));
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
    }

    #[test]
    fn a_pop_dropped_from_the_answers_fails_a_dns_wave() {
        let g = GateConfig::default();
        let wave = dns(2_000, 0, 20, &[("fra", 1_980)], 50);
        let r = judge(
            &g,
            1_000,
            60,
            &dns_evidence(wave.clone(), Some(healthy_base())),
        );
        fails_on(&r, "dns:pop:ams pop_share 0.0000 < threshold");
        // A small drift is no drop.
        let drift = dns(2_000, 0, 20, &[("fra", 1_080), ("ams", 900)], 50);
        let r = judge(&g, 1_000, 60, &dns_evidence(drift, Some(healthy_base())));
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        // Turned off for fleets whose DNS servers see different clients.
        let off = GateConfig {
            dns_pop_drop: 0.0,
            ..GateConfig::default()
        };
        let r = judge(&off, 1_000, 60, &dns_evidence(wave, Some(healthy_base())));
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert!(!r.checks.iter().any(|c| c.metric == "pop_share"), "{r:?}");
    }

    #[test]
    fn slower_dns_answers_fail() {
        let g = GateConfig::default();
        let slow = dns(2_000, 0, 20, &[("fra", 1_000), ("ams", 980)], 4_000);
        fails_on(
            &judge(&g, 1_000, 60, &dns_evidence(slow, Some(healthy_base()))),
            "dns p99_us",
        );
        let slower = dns(2_000, 0, 20, &[("fra", 1_000), ("ams", 980)], 100_000);
        fails_on(
            &judge(&g, 1_000, 60, &dns_evidence(slower, None)),
            "dns p99_us",
        );
    }

    #[test]
    fn a_mixed_wave_needs_both_kinds_and_fails_on_either() {
        let g = GateConfig::default();
        let mixed = |http: Counts, d: DnsCounts| Evidence {
            wave: http,
            baseline: Some(counts(8_000, 6, 800, 5)),
            wave_dns: Some(d),
            baseline_dns: Some(healthy_base()),
            wave_http_members: 2,
            ..Evidence::default()
        };
        let ok_http = counts(2_000, 1, 200, 5);
        let r = judge(&g, 500, 60, &mixed(ok_http.clone(), healthy_wave()));
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert!(
            r.reason.contains("requests") && r.reason.contains("DNS queries"),
            "{}",
            r.reason
        );
        // Too few DNS queries: waits, though HTTP has enough.
        let r = judge(
            &g,
            500,
            60,
            &mixed(
                ok_http.clone(),
                dns(100, 0, 1, &[("fra", 50), ("ams", 49)], 50),
            ),
        );
        assert_eq!(r.verdict, Verdict::Wait, "{r:?}");
        // HTTP edges in the wave that served nothing yet: waits, though DNS has enough.
        let r = judge(&g, 500, 60, &mixed(Counts::default(), healthy_wave()));
        assert_eq!(r.verdict, Verdict::Wait, "{r:?}");
        assert!(r.reason.contains("requests needed"), "{}", r.reason);
        // A failure of either kind fails the wave.
        let mut bad_dns = healthy_wave();
        bad_dns.empty = 3;
        fails_on(&judge(&g, 500, 60, &mixed(ok_http, bad_dns)), "dns empty");
        fails_on(
            &judge(
                &g,
                500,
                60,
                &mixed(counts(2_000, 2_000, 200, 5), healthy_wave()),
            ),
            "total 5xx",
        );
    }

    #[test]
    fn an_http_wave_is_judged_as_before() {
        let g = GateConfig::default();
        let r = judge(
            &g,
            500,
            60,
            &evidence(counts(2_000, 1, 200, 5), Some(counts(8_000, 6, 800, 5))),
        );
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert!(
            r.reason.starts_with("2000 requests, 5xx share upper bound"),
            "{}",
            r.reason
        );
        assert!(!r.reason.contains("DNS"), "{}", r.reason);
        assert_eq!((r.wave_queries, r.baseline_queries), (0, 0));
        assert!(
            r.checks.iter().all(|c| !c.scope.starts_with("dns")),
            "{r:?}"
        );
        // DNS servers in the baseline only do not change an HTTP wave's judgement.
        let mut e = evidence(counts(2_000, 1, 200, 5), Some(counts(8_000, 6, 800, 5)));
        e.baseline_dns = Some(healthy_base());
        e.wave_http_members = 3;
        assert_eq!(judge(&g, 500, 60, &e), r);
        // The old JSON of a report (no DNS fields) still parses.
        let mut json = serde_json::to_value(&r).unwrap();
        let obj = json.as_object_mut().unwrap();
        obj.remove("wave_queries");
        obj.remove("baseline_queries");
        let back: GateReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }
}
