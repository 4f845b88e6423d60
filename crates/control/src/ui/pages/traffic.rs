//! Traffic over the last hour per POP and per service, from the edges' health reports.

use super::*;

/// One POP's or service's traffic over the last hour.
pub struct TrafficRow {
    /// POP or service.
    pub name: String,
    /// Requests per second, averaged over the last full minute.
    pub rps_now: String,
    /// Requests per second over the hour.
    pub rps_hour: String,
    /// Hit ratio.
    pub hit_ratio: String,
    /// 5xx share.
    pub share_5xx: String,
    /// p99 latency (ms, bucket upper bound).
    pub p99: String,
    /// Requests per second per minute.
    pub plot: Plot,
}

/// A table of the traffic page.
pub struct TrafficSection {
    /// `Per POP` or `Per service`.
    pub heading: &'static str,
    /// Its rows.
    pub rows: Vec<TrafficRow>,
}

/// The traffic page.
#[derive(Template)]
#[template(path = "ui/traffic.html")]
pub struct TrafficPage {
    /// Header.
    pub nav: Nav,
    /// Per POP, then per service.
    pub sections: Vec<TrafficSection>,
    /// Minutes covered.
    pub minutes: usize,
}

fn traffic_rows(
    buckets: &[TrafficBucket],
    pick: fn(&TrafficBucket) -> &BTreeMap<String, TrafficCounts>,
) -> Vec<TrafficRow> {
    let mut names: Vec<&String> = buckets.iter().flat_map(|b| pick(b).keys()).collect();
    names.sort();
    names.dedup();
    let per_s = |c: Option<&TrafficCounts>| {
        c.map_or(0.0, |c| {
            c.requests as f64 * 1000.0 / TRAFFIC_BUCKET_MS as f64
        })
    };
    names
        .into_iter()
        .map(|name| {
            let mut sum = TrafficCounts::default();
            for b in buckets {
                if let Some(c) = pick(b).get(name) {
                    sum.requests = sum.requests.saturating_add(c.requests);
                    sum.hits = sum.hits.saturating_add(c.hits);
                    sum.status_5xx = sum.status_5xx.saturating_add(c.status_5xx);
                    if sum.latency.len() < c.latency.len() {
                        sum.latency.resize(c.latency.len(), 0);
                    }
                    for (a, n) in sum.latency.iter_mut().zip(&c.latency) {
                        *a = a.saturating_add(*n);
                    }
                }
            }
            let values: Vec<(f64, f64)> = buckets
                .iter()
                .map(|b| (b.start_ms as f64 / 1000.0, per_s(pick(b).get(name))))
                .collect();
            // The last full minute (the newest bucket is still filling).
            let now = buckets.len().checked_sub(2).and_then(|i| buckets.get(i));
            let minutes = buckets.len().max(1) as f64;
            TrafficRow {
                name: name.clone(),
                rps_now: now.map_or_else(|| "–".to_owned(), |b| number(per_s(pick(b).get(name)))),
                rps_hour: number(per_s(Some(&sum)) / minutes),
                hit_ratio: share(sum.hits, sum.requests),
                share_5xx: share(sum.status_5xx, sum.requests),
                p99: if sum.requests == 0 {
                    "–".to_owned()
                } else {
                    format!("{} ms", number(p99_ms(&sum.latency)))
                },
                plot: plot::plot(name, &values, &[], false),
            }
        })
        .collect()
}

/// `GET /ui/traffic`: the last hour from the edges' health reports.
pub async fn traffic(State(ui): State<Ui>, Extension(s): Extension<Session>) -> Response {
    let buckets = ui.plane.traffic.last_hour(now_ms());
    render(&TrafficPage {
        nav: Nav::new(&s, "traffic"),
        sections: vec![
            TrafficSection {
                heading: "Per POP",
                rows: traffic_rows(&buckets, |b| &b.pops),
            },
            TrafficSection {
                heading: "Per service",
                rows: traffic_rows(&buckets, |b| &b.services),
            },
        ],
        minutes: buckets.len(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ui::pages::testing::*;

    #[test]
    fn traffic_rows_add_up_the_hour_and_the_last_full_minute() {
        let bucket = |start_ms: u64, requests: u64| {
            let counts = TrafficCounts {
                requests,
                hits: requests / 2,
                status_5xx: requests / 10,
                latency: vec![requests],
            };
            TrafficBucket {
                start_ms,
                pops: BTreeMap::from([(HOSTILE.to_owned(), counts.clone())]),
                services: BTreeMap::from([("www".to_owned(), counts)]),
            }
        };
        let buckets = vec![bucket(0, 600), bucket(60_000, 1200), bucket(120_000, 60)];
        let rows = traffic_rows(&buckets, |b| &b.pops);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].rps_now, "20", "the last full minute: 1200 / 60 s");
        assert_eq!(rows[0].hit_ratio, "50.00 %");
        assert_eq!(rows[0].share_5xx, "10.00 %");
        assert_eq!(rows[0].plot.value.split(' ').count(), 3);
        let html = TrafficPage {
            nav: nav(),
            sections: vec![TrafficSection {
                heading: "Per POP",
                rows,
            }],
            minutes: 3,
        }
        .render()
        .unwrap();
        assert_escaped(&html);
    }
}
