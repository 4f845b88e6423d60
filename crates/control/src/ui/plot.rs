//! Small line plots as inline SVG, drawn on the server: a plot is its polylines' `points`
//! (numbers only) in a fixed view box, so templates place them without any script and
//! nothing from the data but numbers reaches the SVG.

/// Width of a plot's view box.
pub const WIDTH: f64 = 300.0;
/// Height of a plot's view box.
pub const HEIGHT: f64 = 80.0;
/// Most points drawn per line (longer series are thinned evenly).
pub const MAX_POINTS: usize = 300;

/// One plot: a value line and, optionally, a threshold line, scaled together.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// What is plotted (shown beside the plot, escaped by the template).
    pub title: String,
    /// The value line's `points`.
    pub value: String,
    /// The threshold line's `points` (empty: none).
    pub threshold: String,
    /// The latest value, formatted.
    pub last: String,
    /// The latest threshold, formatted (empty: none).
    pub limit: String,
    /// Whether the latest value fails (over its threshold).
    pub failed: bool,
}

/// Plots `values` (x: when, any unit; y: value) with `thresholds` (same length, or empty).
pub fn plot(title: &str, values: &[(f64, f64)], thresholds: &[f64], failed: bool) -> Plot {
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let step = values.len().div_ceil(MAX_POINTS).max(1);
    let picked: Vec<(f64, f64, Option<f64>)> = values
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == values.len())
        .map(|(i, (x, y))| {
            (
                finite(*x),
                finite(*y),
                thresholds.get(i).copied().map(finite),
            )
        })
        .collect();
    let (x0, x1) = picked.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let top = picked
        .iter()
        .map(|p| p.1.max(p.2.unwrap_or(0.0)))
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let span = if x1 > x0 { x1 - x0 } else { 1.0 };
    let at = |x: f64, y: f64| {
        let px = if picked.len() > 1 {
            (x - x0) / span * WIDTH
        } else {
            WIDTH / 2.0
        };
        let py = HEIGHT - (y.max(0.0) / top * HEIGHT);
        format!("{px:.1},{py:.1}")
    };
    let value = picked
        .iter()
        .map(|p| at(p.0, p.1))
        .collect::<Vec<_>>()
        .join(" ");
    let threshold = if picked.iter().all(|p| p.2.is_some()) && !thresholds.is_empty() {
        picked
            .iter()
            .map(|p| at(p.0, p.2.unwrap_or(0.0)))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        String::new()
    };
    Plot {
        title: title.to_owned(),
        value,
        threshold,
        last: values.last().map_or_else(String::new, |v| number(v.1)),
        limit: thresholds.last().map_or_else(String::new, |t| number(*t)),
        failed,
    }
}

/// A number as people read it: up to four significant decimals.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_owned();
    }
    if v == v.trunc() && v.abs() < 1e12 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_scaled_into_the_view_box() {
        let p = plot("t", &[(0.0, 0.0), (10.0, 5.0)], &[10.0, 10.0], false);
        assert_eq!(p.value, "0.0,80.0 300.0,43.6");
        assert_eq!(p.threshold, "0.0,7.3 300.0,7.3");
        assert_eq!(p.last, "5");
        assert_eq!(p.limit, "10");
    }

    #[test]
    fn odd_input_draws_something_harmless() {
        let p = plot("t", &[], &[], false);
        assert!(p.value.is_empty());
        let p = plot("t", &[(f64::NAN, f64::INFINITY)], &[], true);
        assert_eq!(p.value, "150.0,80.0");
        let many: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, 1.0)).collect();
        let p = plot("t", &many, &[], false);
        assert!(p.value.split(' ').count() <= MAX_POINTS + 1);
        assert_eq!(number(0.12345678), "0.1235");
        assert_eq!(number(f64::NAN), "–");
    }
}
