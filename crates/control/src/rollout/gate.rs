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

use firebreak_config::GateConfig;
use firebreak_protocol::health::{Counts, ServiceHealth, LATENCY_BOUNDS_MS};
use serde::{Deserialize, Serialize};

/// Fewest requests on the wave's side before any proportion is judged.
pub const MIN_SAMPLE: u64 = 20;

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
    /// `total` or `service:NAME`.
    pub scope: String,
    /// `5xx`, `4xx`, `origin_share`, `p99_ms`.
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
    let wave_requests = e.wave.requests;
    let baseline_requests = baseline.map_or(0, |b| b.requests);
    if let Some(failed) = checks.iter().find(|c| c.failed) {
        let reason = format!(
            "{} {} {:.4} > threshold {:.4}{} (z = {}, n = {})",
            failed.scope,
            failed.metric,
            failed.wave,
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
            z_critical: z_crit,
            checks,
        };
    }
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
    GateReport {
        verdict,
        reason,
        wave_requests,
        baseline_requests,
        z_critical: z_crit,
        checks,
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
        let p = share(x, n);
        let (t, k, pb, nb) = match bx {
            Some((bx, bn)) => {
                let pb = share(bx, bn);
                let (t, k) = threshold(ratio, margin, pb);
                (t, k, Some(pb), bn)
            }
            None => match limit {
                Some(l) => (l, 0.0, None, 0),
                None => return,
            },
        };
        let t_var = (t * (1.0 - t)).max(1e-9) / n as f64;
        let b_var = match pb {
            Some(pb) if nb > 0 => k * k * pb * (1.0 - pb) / nb as f64,
            _ => 0.0,
        };
        let z = (p - t) / (t_var + b_var).sqrt();
        checks.push(Check {
            scope: scope.to_owned(),
            metric: metric.to_owned(),
            wave: p,
            baseline: pb,
            threshold: t,
            z: Some(z),
            n,
            failed: p > t && z > z_crit,
        });
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

fn latency(
    g: &GateConfig,
    scope: &str,
    wave: &Counts,
    base: Option<&Counts>,
    z_crit: f64,
    checks: &mut Vec<Check>,
) {
    let nw: u64 = wave.latency.iter().sum();
    if nw < MIN_SAMPLE.max(100) {
        return;
    }
    let p99 = percentile_ms(&wave.latency, 0.99);
    match base {
        Some(b) if b.latency.iter().sum::<u64>() >= MIN_SAMPLE => {
            let pb = percentile_ms(&b.latency, 0.99);
            let threshold = (pb * g.p99_ratio).max(pb + g.p99_min_ms as f64);
            let z = rank_z(&wave.latency, &b.latency);
            checks.push(Check {
                scope: scope.to_owned(),
                metric: "p99_ms".into(),
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
            metric: "p99_ms".into(),
            wave: p99,
            baseline: None,
            threshold: g.max_p99_ms as f64,
            z: None,
            n: nw,
            // The histogram's p99 is the bucket's upper bound; demand that the bucket below
            // the limit is exceeded too, and that 1% of a real sample is behind it.
            failed: p99 > g.max_p99_ms as f64 && nw >= 100,
        }),
    }
}

/// The upper bound (ms) of the bucket holding the `q` quantile.
pub fn percentile_ms(hist: &[u64], q: f64) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let want = (q * total as f64).ceil() as u64;
    let mut seen = 0;
    for (i, c) in hist.iter().enumerate() {
        seen += c;
        if seen >= want {
            return LATENCY_BOUNDS_MS
                .get(i)
                .map_or(2.0 * 32_768.0, |b| *b as f64);
        }
    }
    2.0 * 32_768.0
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
}
