//! Safe-rollout drills: injected faults, kill switches, caught panics and the per-version
//! health counters the control plane's rollout gates read.

use crate::common::*;
use firebreak_protocol::health::{Counts, ServiceHealth};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn parse(toml: &str) -> firebreak_config::ValidConfig {
    firebreak_config::parse_str("drill.toml", toml).unwrap_or_else(|e| panic!("{e}"))
}

/// The counts of one service in `health`, or all zeros when it saw nothing.
fn counts_of(health: &(Counts, Vec<ServiceHealth>), service: &str) -> Counts {
    health
        .1
        .iter()
        .find(|s| s.service == service)
        .map(|s| s.counts.clone())
        .unwrap_or_default()
}

fn fault(table: &str) -> String {
    format!("\n[[service.fault]]\n{table}\n")
}

fn switch(name: &str, action: &str, on: bool) -> String {
    format!(
        "\n[[switch]]\nname = \"{name}\"\nservice = \"test\"\naction = \"{action}\"\non = {on}\n"
    )
}

#[tokio::test]
async fn a_status_fault_answers_from_the_edge_without_asking_the_origin() {
    let origin = TestOrigin::start(|_| Reply::ok("fine").cc("no-store")).await;
    let toml = config(origin.addr, "")
        + &fault("path_prefix = \"/broken\"\naction = \"status\"\nstatus = 503");
    let edge = start_edge(&toml).await;
    let r = edge.get("/broken/page").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-firebreak-fault"), Some("status"));
    let id = r.header("x-request-id").expect("request id").to_owned();
    assert!(r.text().contains(&id), "{}", r.text());
    assert_eq!(origin.count(), 0, "the origin is never asked");
    let ok = edge.get("/other").await;
    assert_eq!((ok.status.as_u16(), ok.text().as_str()), (200, "fine"));
    let health = edge.handle.health();
    let c = counts_of(&health, "test");
    assert_eq!((c.requests, c.status_2xx, c.status_5xx), (2, 1, 1));
    assert_eq!((c.edge_5xx, c.origin_5xx), (1, 0));
    assert_eq!((c.origin_requests, c.origin_errors, c.panics), (1, 0, 0));
    assert_eq!(health.0.requests, 2);
    assert!(c.is_plausible() && health.0.is_plausible());
}

#[tokio::test]
async fn a_status_fault_affects_its_percent_of_the_requests() {
    let origin = TestOrigin::start(|_| Reply::ok("fine").cc("no-store")).await;
    let toml = config(origin.addr, "") + &fault("action = \"status\"\nstatus = 500\npercent = 25");
    let edge = start_edge(&toml).await;
    let mut failed = 0;
    for i in 0..20 {
        if edge.get(&format!("/{i}")).await.status == 500 {
            failed += 1;
        }
    }
    assert_eq!(failed, 5, "25 % of 20 requests, spread evenly");
    assert_eq!(origin.count(), 15);
    assert_eq!(counts_of(&edge.handle.health(), "test").edge_5xx, 5);
}

#[tokio::test]
async fn a_delay_fault_holds_the_request_then_serves_it_normally() {
    let origin = TestOrigin::start(|_| Reply::ok("late").cc("no-store")).await;
    let toml = config(origin.addr, "") + &fault("action = \"delay\"\ndelay_ms = 5");
    let edge = start_edge(&toml).await;
    let r = edge.get("/").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "late"));
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn a_panic_is_caught_answered_500_and_counted_and_the_edge_keeps_serving() {
    let origin = TestOrigin::start(|_| Reply::ok("alive").cc("no-store")).await;
    let toml = config(origin.addr, "") + &fault("path_prefix = \"/boom\"\naction = \"panic\"");
    let edge = start_edge(&toml).await;
    for _ in 0..3 {
        let r = edge.get("/boom").await;
        assert_eq!(r.status, 500);
        let id = r.header("x-request-id").expect("request id").to_owned();
        assert!(r.text().contains(&id), "{}", r.text());
        // Other paths, on the same client (and connection pool), still work.
        let ok = edge.get("/fine").await;
        assert_eq!((ok.status.as_u16(), ok.text().as_str()), (200, "alive"));
    }
    let c = counts_of(&edge.handle.health(), "test");
    assert_eq!(
        (c.requests, c.panics, c.edge_5xx, c.status_5xx),
        (6, 3, 3, 3)
    );
    assert_eq!(c.origin_requests, 3);
    assert!(c.is_plausible());
    let metrics = firebreak_edge::telemetry::prometheus()
        .expect("recorder")
        .render();
    assert!(
        metrics.contains("firebreak_panics_total{service=\"test\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn fail_build_refuses_the_version_and_the_running_one_keeps_serving() {
    let origin = TestOrigin::start(|r| Reply::ok(r.uri.path().to_owned()).cc("no-store")).await;
    let good = config(origin.addr, "");
    let edge = start_edge(&good).await;
    let bad = good.clone() + &fault("action = \"fail_build\"");
    let err = edge.handle.reload(parse(&bad)).unwrap_err().to_string();
    assert!(err.contains("fail_build"), "{err}");
    let r = edge.get("/still").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "/still"));
    // A runtime carrying `crash_on_load` builds (staging works); only installing it aborts,
    // which is tested with real processes, not here.
    let staged = good + &fault("action = \"crash_on_load\"");
    let rt = firebreak_edge::runtime::Runtime::build(parse(&staged), None).unwrap();
    assert_eq!(rt.crash_on_load(), Some("test"));
}

#[tokio::test]
async fn disable_service_answers_503_from_the_edge_naming_the_switch() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let base = config(origin.addr, "");
    let edge = start_edge(&(base.clone() + &switch("kill-test", "disable_service", true))).await;
    let r = edge.get("/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-firebreak-switch"), Some("kill-test"));
    assert_eq!(origin.count(), 0);
    assert_eq!(counts_of(&edge.handle.health(), "test").edge_5xx, 1);
    // Switched off again: served.
    edge.handle
        .reload(parse(
            &(base + &switch("kill-test", "disable_service", false)),
        ))
        .unwrap();
    assert_eq!(edge.get("/").await.status, 200);
}

#[tokio::test]
async fn bypass_cache_sends_every_request_to_the_origin() {
    let origin = TestOrigin::start(|_| Reply::ok("cacheable").cc("max-age=600")).await;
    let base = config(origin.addr, "");
    let edge = start_edge(&(base.clone() + &switch("nocache", "bypass_cache", true))).await;
    for _ in 0..3 {
        let r = edge.get("/obj").await;
        assert_eq!(r.status, 200);
        assert!(
            r.cache_status().contains("fwd=bypass"),
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count(), 3);
    // Nothing was stored: with the switch off, the first request is a miss.
    edge.handle
        .reload(parse(&(base + &switch("nocache", "bypass_cache", false))))
        .unwrap();
    assert!(edge.get("/obj").await.cache_status().contains("fwd=miss"));
    assert!(edge
        .get_until_hit("/obj")
        .await
        .cache_status()
        .contains("hit"));
}

#[tokio::test]
async fn no_regex_rules_ignores_path_regex_rules_only() {
    let origin = TestOrigin::start(|_| Reply::ok("cacheable").cc("max-age=600")).await;
    let rules = "rules = [{ path_regex = \"^/r/\", bypass = true }, { path_prefix = \"/p/\", bypass = true }]";
    let base = config(origin.addr, rules);
    let edge = start_edge(&base).await;
    assert!(edge.get("/r/1").await.cache_status().contains("fwd=bypass"));
    edge.handle
        .reload(parse(&(base + &switch("plain", "no_regex_rules", true))))
        .unwrap();
    let r = edge.get_until_hit("/r/1").await;
    assert!(
        r.cache_status().contains("hit"),
        "regex rule ignored: {}",
        r.cache_status()
    );
    let p = edge.get("/p/1").await;
    assert!(
        p.cache_status().contains("fwd=bypass"),
        "prefix rule kept: {}",
        p.cache_status()
    );
}

#[tokio::test]
async fn no_stale_turns_off_stale_while_revalidate_and_stale_if_error() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let origin = TestOrigin::start(move |_| {
        if n2.fetch_add(1, Ordering::SeqCst) == 0 {
            // Stale on arrival, with every stale window open.
            Reply::ok("old")
                .cc("max-age=10, stale-while-revalidate=600, stale-if-error=600")
                .header("age", "20")
        } else {
            Reply::ok("broken").status(503)
        }
    })
    .await;
    let base = config(origin.addr, "");
    let edge = start_edge(&(base.clone() + &switch("fresh-only", "no_stale", true))).await;
    assert_eq!(edge.get("/s").await.text(), "old");
    // Stored but stale: neither served while revalidating nor instead of the 503.
    let r = edge.get("/s").await;
    assert_eq!(r.status, 503, "{}", r.cache_status());
    assert_eq!(origin.count(), 2);
    let c = counts_of(&edge.handle.health(), "test");
    assert_eq!((c.origin_5xx, c.edge_5xx, c.hits), (1, 0, 0));
    // Without the switch the same stale copy stands in for the failing origin.
    edge.handle.reload(parse(&base)).unwrap();
    let r = edge.get("/s").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "old"));
}

#[tokio::test]
async fn health_counts_restart_with_each_version_and_separate_services() {
    let origin = TestOrigin::start(|r| match r.uri.path() {
        "/down" => Reply::ok("origin says no").status(503),
        _ => Reply::ok("x").cc("max-age=600"),
    })
    .await;
    let second = format!(
        "\n[[service]]\nname = \"other\"\nhosts = [\"other.example\"]\n[service.origin]\nservers = [{{ addr = \"{}\" }}]\n",
        origin.addr
    );
    let toml = config(origin.addr, "") + &second;
    let edge = start_edge(&toml).await;
    edge.get("/a").await;
    let hit = edge.get_until_hit("/a").await;
    assert!(hit.cache_status().contains("hit"));
    let down = edge.get("/down").await;
    assert_eq!(down.status, 503);
    let other = edge.get_with("/b", &[("host", "other.example")]).await;
    assert_eq!(other.status, 200);
    // Refused before routing (the test service is the default one, so a malformed host is
    // what no service matches): counted in the total only.
    let unrouted = edge.get_with("/", &[("host", "exa/mple")]).await;
    assert_eq!(unrouted.status, 400);

    let health = edge.handle.health();
    let test = counts_of(&health, "test");
    let other = counts_of(&health, "other");
    assert!(test.requests >= 3, "{test:?}");
    assert!(test.hits >= 1, "{test:?}");
    assert_eq!((test.origin_5xx, test.edge_5xx, test.status_5xx), (1, 0, 1));
    assert_eq!(
        (other.requests, other.status_2xx, other.origin_requests),
        (1, 1, 1)
    );
    let total = &health.0;
    assert_eq!(total.requests, test.requests + other.requests + 1);
    assert_eq!(total.status_4xx, 1);
    assert_eq!(total.latency.iter().sum::<u64>(), total.requests);
    assert!(total.is_plausible());

    // A new version starts from zero; the origin pool (unchanged) is carried over, the
    // counters are not.
    edge.handle.reload(parse(&toml)).unwrap();
    let (total, services) = edge.handle.health();
    assert_eq!(total.requests, 0);
    assert!(services.is_empty(), "{services:?}");
    let again = edge.get("/a").await;
    assert!(again.cache_status().contains("hit"), "the cache is kept");
    let test = counts_of(&edge.handle.health(), "test");
    assert_eq!((test.requests, test.hits, test.origin_requests), (1, 1, 0));
}

#[tokio::test]
async fn an_unreachable_origin_is_an_edge_5xx_and_an_origin_error() {
    // A port nobody listens on any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let edge = start_edge(&config(addr, "")).await;
    let r = edge.get("/").await;
    assert_eq!(r.status, 502);
    let c = counts_of(&edge.handle.health(), "test");
    assert_eq!((c.edge_5xx, c.origin_5xx), (1, 0));
    assert!(
        c.origin_requests >= 1 && c.origin_errors == c.origin_requests,
        "{c:?}"
    );
}
