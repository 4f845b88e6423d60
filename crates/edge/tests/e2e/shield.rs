//! Origin shield (tiered caching): real edges in two POPs in front of one origin. The outer
//! POP (`ams`) sends misses to the shield POP's (`pa`) edges, ordered by rendezvous hashing of
//! the object; the shield fetches from the origin.

use crate::common::*;
use firebreak_edge::tier::ShieldMembers;
use firebreak_edge::upstream::shield::{key_hash, rendezvous_order};
use firebreak_protocol::tier::{now_s, TierSecret, TIER_HEADER};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "8b2f3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7a8";

/// One service in front of `origin`, shielded by POP `pa`, on an edge of `pop` that knows
/// `shield_edges` as pa's edges. Extra TOML goes at the end of the service.
fn tier_config(origin: SocketAddr, pop: &str, shield_edges: &[SocketAddr], extra: &str) -> String {
    let members = if shield_edges.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = shield_edges.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "[[tier.shield]]\npop = \"pa\"\nedges = [{}]\n",
            list.join(", ")
        )
    };
    let tier = format!("[tier]\npop = \"{pop}\"\nsecret = \"{SECRET}\"\n{members}\n");
    config(origin, "").replacen("[[service]]", &format!("{tier}[[service]]"), 1)
        + &format!("\n[service.shield]\npop = \"pa\"\n\n{extra}\n")
}

async fn shield_edge(origin: &TestOrigin, extra: &str) -> Edge {
    start_edge(&tier_config(origin.addr, "pa", &[], extra)).await
}

/// Two edges of the shield POP, each knowing both (as the agent tells them).
async fn shield_pair(origin: &TestOrigin) -> (Edge, Edge) {
    let (a, b) = (shield_edge(origin, "").await, shield_edge(origin, "").await);
    for e in [&a, &b] {
        e.handle.state().tier.set_members(ShieldMembers::new([(
            "pa".to_owned(),
            vec![a.addr, b.addr],
        )]));
    }
    (a, b)
}

async fn outer_edge(origin: &TestOrigin, shields: &[SocketAddr]) -> Edge {
    start_edge(&tier_config(origin.addr, "ams", shields, "")).await
}

/// A loopback address nobody listens on.
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A path whose rendezvous order over `members` starts with `first`.
fn path_first_on(members: &[SocketAddr], first: SocketAddr, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("/{prefix}/{i}"))
        .find(|p| rendezvous_order(members, key_hash("test", "localhost", p))[0] == first)
        .expect("some path hashes first to that member")
}

fn cacheable(body: &'static str) -> Reply {
    Reply::ok(body).cc("max-age=300")
}

fn via_count(r: &Recorded) -> usize {
    r.headers
        .get_all("via")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .count()
}

#[tokio::test]
async fn misses_of_every_outer_edge_reach_the_origin_once_through_the_shield() {
    let origin = TestOrigin::start(|_| cacheable("object")).await;
    let (s1, s2) = shield_pair(&origin).await;
    let shields = [s1.addr, s2.addr];
    let outers = [
        outer_edge(&origin, &shields).await,
        outer_edge(&origin, &shields).await,
        outer_edge(&origin, &shields).await,
    ];
    for (i, o) in outers.iter().enumerate() {
        let r = o
            .get_with("/a", &[("x-forwarded-for", "203.0.113.9")])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "object");
        assert_eq!(origin.count(), 1, "outer edge {i} went past the shield");
    }
    // The shield POP's own edges: the home serves what it holds, the other asks the home.
    for s in [&s1, &s2] {
        assert_eq!(s.get("/a").await.text(), "object");
    }
    assert_eq!(
        origin.count(),
        1,
        "an edge of the shield POP went to the origin"
    );
    let seen = origin.requests.lock().unwrap()[0].clone();
    assert!(
        seen.header(TIER_HEADER).is_none(),
        "the tier credential never reaches the origin"
    );
    // The outer edge's forwarding headers crossed the tier (a valid credential is trusted);
    // the client's own forged one was dropped at the outer edge.
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1, 127.0.0.1"),
        "{:?}",
        seen.headers
    );
    assert_eq!(via_count(&seen), 2, "{:?}", seen.headers);
    // Several objects, from every edge of both POPs: each has one home, each costs one
    // origin request.
    let before = origin.count();
    for i in 0..20 {
        for e in outers.iter().chain([&s1, &s2]) {
            assert_eq!(e.get(&format!("/many/{i}")).await.status, 200);
        }
    }
    assert_eq!(origin.count() - before, 20);
}

#[tokio::test]
async fn a_dead_first_shield_edge_fails_over_to_the_next_then_to_the_origin() {
    let origin = TestOrigin::start(|_| cacheable("object")).await;
    let live = shield_edge(&origin, "").await;
    let dead = dead_addr().await;
    let members = [live.addr, dead];
    let outer = outer_edge(&origin, &members).await;
    let path = path_first_on(&members, dead, "failover");
    let r = outer.get(&path).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "object");
    assert_eq!(origin.count(), 1);
    assert_eq!(
        origin.last().header("x-forwarded-for"),
        Some("127.0.0.1, 127.0.0.1"),
        "fetched by the live shield edge, for the outer edge"
    );
    let held = live.get(&path).await;
    assert!(
        held.cache_status().contains("hit"),
        "{}",
        held.cache_status()
    );
    assert_eq!(origin.count(), 1);

    // Every shield edge down: the origin directly, without a credential.
    let outer = outer_edge(&origin, &[dead, dead_addr().await]).await;
    let r = outer.get("/direct").await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.count(), 2);
    let seen = origin.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(seen.header(TIER_HEADER).is_none());
    assert_eq!(via_count(&seen), 1);
    // Again, with the dead edges skipped for now: still answered.
    assert_eq!(outer.get("/direct2").await.status, 200);
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn the_home_asks_the_origin_and_a_tier_request_is_never_sent_on() {
    let origin = TestOrigin::start(|_| cacheable("object")).await;
    let (s1, s2) = shield_pair(&origin).await;
    let members = [s1.addr, s2.addr];
    // s1 is the home: it asks the origin itself.
    let home_s1 = path_first_on(&members, s1.addr, "home");
    assert_eq!(s1.get(&home_s1).await.status, 200);
    assert_eq!(origin.count(), 1);
    assert_eq!(via_count(&origin.last()), 1, "straight to the origin");
    // s2 is the home: s1 asks it, s2 asks the origin (the tier request is not sent on).
    let home_s2 = path_first_on(&members, s2.addr, "home");
    assert_eq!(s1.get(&home_s2).await.status, 200);
    assert_eq!(origin.count(), 2);
    assert_eq!(
        origin.last().header("x-forwarded-for"),
        Some("127.0.0.1, 127.0.0.1")
    );
    assert_eq!(via_count(&origin.last()), 2);
    assert!(s2.get(&home_s2).await.cache_status().contains("hit"));
    assert_eq!(origin.count(), 2);

    // An outer edge receiving a tier request (as if it were the shield) never sends it on.
    let outer = outer_edge(&origin, &members).await;
    let secret = TierSecret::from_hex(SECRET).unwrap();
    let credential = secret.sign("GET", "localhost", "/hop", now_s() + 30);
    let r = outer.get_with("/hop", &[(TIER_HEADER, &credential)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.count(), 3);
    assert_eq!(
        via_count(&origin.last()),
        1,
        "went to the origin, not through the shield"
    );
    // Neither shield edge saw /hop: each asks the origin (or the home, which does) now.
    assert_eq!(s1.get("/hop").await.status, 200);
    assert_eq!(origin.count(), 4, "the shield never saw /hop");
}

#[tokio::test]
async fn a_shield_that_does_not_serve_the_host_yet_sends_the_miss_to_the_origin() {
    let origin = TestOrigin::start(|_| cacheable("object")).await;
    // A shield edge on an older version: it serves another host only (421 for ours).
    let older = tier_config(origin.addr, "pa", &[], "").replace(
        "hosts = [\"localhost\", \"test.example\"]\ndefault = true",
        "hosts = [\"other.example\"]",
    );
    let shield = start_edge(&older).await;
    let outer = outer_edge(&origin, &[shield.addr]).await;
    let r = outer.get("/new-service").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "object");
    assert_eq!(origin.count(), 1);
    assert_eq!(via_count(&origin.last()), 1, "asked the origin directly");
}

#[tokio::test]
async fn forged_and_expired_credentials_make_an_ordinary_client() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let shield = shield_edge(&origin, "").await;
    let secret = TierSecret::from_hex(SECRET).unwrap();
    let forged = TierSecret::generate().unwrap();
    let cases = [
        (forged.sign("GET", "localhost", "/c", now_s() + 30), false),
        (secret.sign("GET", "localhost", "/c", now_s() - 1), false),
        (secret.sign("GET", "localhost", "/c", now_s() + 3600), false),
        (
            secret.sign("GET", "localhost", "/other", now_s() + 30),
            false,
        ),
        ("garbage".to_owned(), false),
        (secret.sign("GET", "localhost", "/c", now_s() + 30), true),
    ];
    for (credential, valid) in cases {
        let r = shield
            .get_with(
                "/c",
                &[
                    (TIER_HEADER, &credential),
                    ("x-forwarded-for", "203.0.113.9"),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        let seen = origin.last();
        let xff = seen.header("x-forwarded-for").unwrap_or("");
        if valid {
            assert_eq!(xff, "203.0.113.9, 127.0.0.1", "{credential}");
        } else {
            assert_eq!(xff, "127.0.0.1", "forwarding headers kept for {credential}");
        }
        assert!(seen.header(TIER_HEADER).is_none());
    }
}

#[tokio::test]
async fn tier_requests_are_exempt_from_per_client_rate_limits() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let shield = shield_edge(
        &origin,
        "[service.clients]\nrequests_per_second = 1\nburst = 1\n",
    )
    .await;
    assert_eq!(shield.get("/r").await.status, 200);
    assert_eq!(shield.get("/r").await.status, 429, "a client is limited");
    let secret = TierSecret::from_hex(SECRET).unwrap();
    for i in 0..10 {
        let path = format!("/r{i}");
        let credential = secret.sign("GET", "localhost", &path, now_s() + 30);
        let r = shield.get_with(&path, &[(TIER_HEADER, &credential)]).await;
        assert_eq!(r.status, 200, "tier request {i}");
    }
    let forged = TierSecret::generate()
        .unwrap()
        .sign("GET", "localhost", "/r", now_s() + 30);
    let r = shield.get_with("/r", &[(TIER_HEADER, &forged)]).await;
    assert_eq!(r.status, 429, "a forged credential is a client's");
}

#[tokio::test]
async fn coalescing_works_at_both_tiers() {
    let origin = TestOrigin::start(|_| cacheable("slow").delay(300)).await;
    let (s1, s2) = shield_pair(&origin).await;
    let shields = [s1.addr, s2.addr];
    let (o1, o2) = (
        outer_edge(&origin, &shields).await,
        outer_edge(&origin, &shields).await,
    );
    let edges = Arc::new([o1, o2, s1, s2]);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let edges = edges.clone();
        tasks.push(tokio::spawn(
            async move { edges[i % 4].get("/together").await },
        ));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "slow");
    }
    assert_eq!(
        origin.count(),
        1,
        "16 clients on four edges of two POPs: one origin request"
    );
}

#[tokio::test]
async fn stale_if_error_works_at_both_tiers() {
    let failing = Arc::new(AtomicBool::new(false));
    let fetched = Arc::new(AtomicUsize::new(0));
    let (f2, n2) = (failing.clone(), fetched.clone());
    let origin = TestOrigin::start(move |_| {
        n2.fetch_add(1, Ordering::SeqCst);
        if f2.load(Ordering::SeqCst) {
            Reply::ok("broken").status(503)
        } else {
            // Stale on arrival (Age > max-age), usable on error for ten minutes.
            Reply::ok("good")
                .cc("max-age=10, stale-if-error=600")
                .header("age", "20")
        }
    })
    .await;
    let shield = shield_edge(&origin, "").await;
    let outer = outer_edge(&origin, &[shield.addr]).await;
    assert_eq!(outer.get("/sie").await.text(), "good");
    assert_eq!(fetched.load(Ordering::SeqCst), 1);
    failing.store(true, Ordering::SeqCst);
    // The outer edge revalidates through the shield; the shield's origin fails and the shield
    // answers its stale copy; the client gets the object.
    let r = outer.get("/sie").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "good");
    assert_eq!(fetched.load(Ordering::SeqCst), 2);
    assert_eq!(
        origin.last().header("x-forwarded-for"),
        Some("127.0.0.1, 127.0.0.1"),
        "the shield asked the origin, for the outer edge"
    );
    // The shield gone too: the outer edge goes to the origin itself, which fails, and
    // serves its own stale copy.
    assert!(shield.handle.drain(Duration::from_secs(5)).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = outer.get("/sie").await;
        assert_eq!(r.status, 200, "{}", r.cache_status());
        assert_eq!(r.text(), "good");
        if r.cache_status().contains("detail=stale-if-error") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            r.cache_status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
