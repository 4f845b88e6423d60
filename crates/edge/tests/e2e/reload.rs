//! Configuration reloads: atomic swap, in-flight requests keep their version, bad files refused.

use crate::common::*;
use std::sync::Arc;
use std::time::Duration;

fn with_marker(base: &str, marker: &str) -> String {
    format!("{base}\n[[service.response_headers]]\nname = \"x-config\"\nop = \"set\"\nvalue = \"{marker}\"\n")
}

#[tokio::test]
async fn reload_swaps_atomically_and_in_flight_requests_finish_on_their_version() {
    let origin = TestOrigin::start(|r| match r.uri.path() {
        "/slow" => Reply::ok("slow").cc("no-store").delay(500),
        _ => Reply::ok("fast").cc("no-store"),
    })
    .await;
    let base = config(origin.addr, "");
    let edge = Arc::new(start_edge(&with_marker(&base, "v1")).await);
    let e2 = edge.clone();
    let in_flight = tokio::spawn(async move { e2.get("/slow").await });
    origin.wait_for_requests(1).await;
    let v2 = firebreak_config::parse_str("v2.toml", &with_marker(&base, "v2")).unwrap();
    edge.handle.reload(v2).unwrap();
    assert_eq!(edge.get("/fast").await.header("x-config"), Some("v2"));
    assert_eq!(in_flight.await.unwrap().header("x-config"), Some("v1"));
}

#[tokio::test]
async fn a_bad_file_is_refused_and_the_running_config_stays() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let base = config(origin.addr, "");
    let edge = start_edge(&with_marker(&base, "good")).await;
    let dir = std::env::temp_dir().join(format!("fb-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("edge.toml");
    std::fs::write(
        &path,
        with_marker(&base, "bad").replace("name = \"test\"", "name = \"test\"\ncolour = 1"),
    )
    .unwrap();
    let err = edge.handle.reload_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("edge.toml:") && err.contains("unknown field `colour`"),
        "{err}"
    );
    assert_eq!(edge.get("/").await.header("x-config"), Some("good"));
    std::fs::write(&path, with_marker(&base, "new")).unwrap();
    edge.handle.reload_file(&path).unwrap();
    assert_eq!(edge.get("/").await.header("x-config"), Some("new"));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn reload_keeps_warm_origin_connections_when_the_pool_is_unchanged() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let base = config(origin.addr, "");
    let edge = start_edge(&with_marker(&base, "a")).await;
    edge.get("/1").await;
    let before = pool_of(&edge);
    edge.handle
        .reload(firebreak_config::parse_str("b.toml", &with_marker(&base, "b")).unwrap())
        .unwrap();
    let after = pool_of(&edge);
    assert!(
        Arc::ptr_eq(&before, &after),
        "unchanged pool is carried over"
    );
    edge.get("/2").await;
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // A changed pool is rebuilt.
    let changed =
        with_marker(&base, "c").replace("connect_timeout_ms = 1000", "connect_timeout_ms = 900");
    edge.handle
        .reload(firebreak_config::parse_str("c.toml", &changed).unwrap())
        .unwrap();
    let rebuilt = pool_of(&edge);
    assert!(!Arc::ptr_eq(&before, &rebuilt));
}

#[tokio::test]
async fn drain_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let origin = TestOrigin::start(|_| Reply::ok("finished").cc("no-store").delay(300)).await;
    let edge = Arc::new(start_edge(&config(origin.addr, "")).await);
    let e2 = edge.clone();
    let in_flight = tokio::spawn(async move { e2.get("/slow").await });
    origin.wait_for_requests(1).await;
    assert!(
        edge.handle.drain(Duration::from_secs(5)).await,
        "all connections closed"
    );
    let r = in_flight.await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "finished"));
    assert!(
        tokio::net::TcpStream::connect(edge.addr).await.is_err(),
        "listener closed"
    );
}

/// The origin pool the running configuration uses for service `test`.
fn pool_of(edge: &Edge) -> Arc<firebreak_edge::upstream::OriginPool> {
    edge.handle
        .state()
        .runtime
        .load()
        .service("test")
        .unwrap()
        .pool
        .clone()
}
