//! Proxy behaviour: protocols, connection reuse, header rewriting, routing, errors, streaming.

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

#[tokio::test]
async fn http1_keep_alive_serves_several_requests_on_one_connection() {
    let origin = TestOrigin::start(|r| Reply::ok(r.uri.path().to_string()).cc("max-age=60")).await;
    let edge = edge_for(&origin).await;
    let out = edge
        .raw(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\nGET /two HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(out.contains("/one") && out.contains("/two"));
}

#[tokio::test]
async fn many_h2c_streams_at_once_each_get_their_own_bytes() {
    let origin = sized_origin().await;
    let edge = edge_for(&origin).await;
    let tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    many_streams_get_their_own_bytes(send, &format!("http://localhost:{}", edge.addr.port())).await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let origin = TestOrigin::start(|_| Reply::ok("over h2").cc("max-age=60")).await;
    let edge = edge_for(&origin).await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    for expect in ["fwd=miss", "hit"] {
        let req = Request::get(format!("http://localhost:{}/h2", edge.addr.port()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let cs = resp.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(cs.contains(expect), "{cs}");
        assert_eq!(resp.headers()["via"], "2 firebreak");
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            "over h2"
        );
    }
    // The origin still speaks HTTP/1.1 and saw the host from :authority (normalised: port
    // dropped, as in the cache key).
    assert_eq!(origin.last().header("host"), Some("localhost"));
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_kept_alive() {
    let origin = TestOrigin::start(|_| Reply::ok("x").cc("no-store")).await;
    let edge = edge_for(&origin).await;
    for i in 0..10 {
        assert_eq!(edge.get(&format!("/p{i}")).await.status, 200);
    }
    assert_eq!(origin.count(), 10);
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_added() {
    let origin = TestOrigin::start(|_| {
        Reply::ok("x")
            .cc("no-store")
            .header("connection", "x-origin-private")
            .header("x-origin-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "1")
    })
    .await;
    let edge = edge_for(&origin).await;
    let r = edge
        .get_with(
            "/hop",
            &[
                ("connection", "x-client-private"),
                ("x-client-private", "1"),
                ("proxy-authorization", "Basic abc"),
                ("te", "trailers"),
                ("x-forwarded-for", "192.0.2.7"),
                ("x-end-to-end", "kept"),
            ],
        )
        .await;
    let seen = origin.last();
    for h in ["x-client-private", "proxy-authorization", "te"] {
        assert!(seen.header(h).is_none(), "{h} reached the origin");
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    // Not a trusted proxy: its X-Forwarded-For is replaced, not extended.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("via"), Some("1.1 firebreak"));
    assert_eq!(
        seen.header("forwarded"),
        Some("for=127.0.0.1;host=\"localhost\";proto=http")
    );
    assert!(r.header("x-origin-private").is_none());
    assert!(r.header("keep-alive").is_none());
    assert_eq!(r.header("x-kept"), Some("1"));
    assert_eq!(r.header("via"), Some("1.1 firebreak"));
}

#[tokio::test]
async fn unknown_host_gets_421_without_a_default_service() {
    let origin = TestOrigin::start(|_| Reply::ok("x")).await;
    let cfg = config(origin.addr, "").replace("default = true", "");
    let edge = start_edge(&cfg).await;
    let out = edge
        .raw(b"GET / HTTP/1.1\r\nHost: unknown.example\r\nConnection: close\r\n\r\n")
        .await;
    assert!(out.starts_with("HTTP/1.1 421"), "{out}");
    assert!(
        out.contains("unknown.example") && out.contains("Request id"),
        "{out}"
    );
    let known = edge
        .raw(b"GET / HTTP/1.1\r\nHost: TEST.example:8080\r\nConnection: close\r\n\r\n")
        .await;
    assert!(known.starts_with("HTTP/1.1 200"), "{known}");
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn unreachable_origin_is_a_502_with_request_id() {
    // Bind then drop, so nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let edge = start_edge(&config(port, "")).await;
    let r = edge.get("/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let id = r.header("x-request-id").unwrap().to_owned();
    assert!(r.text().contains(&id));
    assert!(
        !r.text().contains("127.0.0.1"),
        "origin details stay in the logs"
    );
}

#[tokio::test]
async fn slow_origin_is_a_504_not_a_hang() {
    let origin = TestOrigin::start(|_| Reply::ok("late").delay(5_000)).await;
    let cfg =
        config(origin.addr, "").replace("response_timeout_ms = 2000", "response_timeout_ms = 200");
    let edge = start_edge(&cfg).await;
    let r = edge.get("/slow").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn failover_to_the_next_origin_and_to_backups() {
    let good = TestOrigin::start(|_| Reply::ok("backup answered").cc("no-store")).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = config(dead, "").replace(
        &format!("servers = [{{ addr = \"{dead}\" }}]"),
        &format!(
            "servers = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\", backup = true }}]",
            good.addr
        ),
    );
    let edge = start_edge(&cfg).await;
    for _ in 0..3 {
        let r = edge.get("/f").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "backup answered");
    }
}

#[tokio::test]
async fn first_byte_reaches_the_client_before_the_origin_finishes() {
    let (tx, rx) = mpsc::channel(4);
    let rx = std::sync::Mutex::new(Some(rx));
    let origin = TestOrigin::start(move |_| {
        Reply::streamed(rx.lock().unwrap().take().expect("one request only")).cc("max-age=60")
    })
    .await;
    let edge = edge_for(&origin).await;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    tx.send(Ok(Bytes::from_static(b"first;"))).await.unwrap();
    let req = Request::get(format!("http://{}/stream", edge.addr))
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk must arrive while the origin is still sending")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "first;");
    tx.send(Ok(Bytes::from_static(b"second"))).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    // The same bytes went into the cache.
    let hit = edge.get_until_hit("/stream").await;
    assert_eq!(hit.text(), "first;second");
    assert!(hit.cache_status().contains("hit"));
}

#[tokio::test]
async fn large_object_is_teed_to_client_and_cache() {
    let big = Bytes::from(vec![7u8; 8 * 1024 * 1024]);
    let b2 = big.clone();
    let origin = TestOrigin::start(move |_| Reply::ok(b2.clone()).cc("max-age=60")).await;
    let edge = edge_for(&origin).await;
    let first = edge.get("/big").await;
    assert_eq!(first.body.len(), big.len());
    let second = edge.get_until_hit("/big").await;
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(second.body, big);
    assert!(origin.count() <= 2, "{}", origin.count());
}

#[tokio::test]
async fn objects_over_the_size_limit_pass_through_uncached() {
    let origin = TestOrigin::start(|r| {
        let n = if r.uri.path() == "/chunked" {
            0
        } else {
            2 * 1024 * 1024
        };
        if n == 0 {
            // No Content-Length: the limit is found while streaming.
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(async move {
                for _ in 0..40 {
                    let _ = tx.send(Ok(Bytes::from(vec![1u8; 64 * 1024]))).await;
                }
            });
            Reply::streamed(rx).cc("max-age=60")
        } else {
            Reply::ok(vec![0u8; n]).cc("max-age=60")
        }
    })
    .await;
    let cfg = config(origin.addr, "")
        .replace("max_object_bytes = 16777216", "max_object_bytes = 1048576");
    let edge = start_edge(&cfg).await;
    for path in ["/sized", "/chunked"] {
        let a = edge.get(path).await;
        assert_eq!(
            a.body.len(),
            if path == "/sized" {
                2 * 1024 * 1024
            } else {
                40 * 64 * 1024
            }
        );
        let b = edge.get(path).await;
        assert!(
            !b.cache_status().contains("hit"),
            "{path}: {}",
            b.cache_status()
        );
    }
    assert_eq!(origin.count(), 4);
}

type FrameStream = ChannelStream<Result<Frame<Bytes>, std::io::Error>>;

#[tokio::test]
async fn request_bodies_stream_to_the_origin() {
    // The origin answers after the first chunk; the client sends the second chunk only after
    // the origin has seen the first. A proxy that buffered whole bodies would deadlock here.
    let first_seen = Arc::new(Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    let notify = first_seen.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let notify = notify.clone();
            async move {
                let mut body = req.into_body();
                let mut total = 0;
                while let Some(frame) = body.frame().await {
                    let data = frame.unwrap().into_data().unwrap_or_default();
                    if total == 0 && !data.is_empty() {
                        notify.notify_one();
                    }
                    total += data.len();
                }
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    format!("got {total}"),
                ))))
            }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await;
    });
    let edge = start_edge(&config(origin_addr, "")).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    let body = StreamBody::new(ChannelStream(rx));
    let client: Client<HttpConnector, StreamBody<FrameStream>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/upload", edge.addr))
        .header("host", "localhost")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { client.request(req).await });
    tx.send(Ok(Frame::data(Bytes::from(vec![1u8; 1000]))))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), first_seen.notified())
        .await
        .expect("origin must see the first chunk before the client finishes");
    tx.send(Ok(Frame::data(Bytes::from(vec![2u8; 500]))))
        .await
        .unwrap();
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "got 1500"
    );
}

#[tokio::test]
async fn response_header_rules_apply() {
    let origin = TestOrigin::start(|_| {
        Reply::ok("x")
            .cc("max-age=60")
            .header("server", "origin/1.0")
            .header("x-a", "1")
    })
    .await;
    let cfg = format!(
        "{}\n[[service.response_headers]]\nname = \"server\"\nop = \"remove\"\n\
         [[service.response_headers]]\nname = \"x-a\"\nop = \"add\"\nvalue = \"2\"\n\
         [[service.response_headers]]\nname = \"x-edge\"\nop = \"set\"\nvalue = \"yes\"\n",
        config(origin.addr, "")
    );
    let edge = start_edge(&cfg).await;
    for _ in 0..2 {
        let r = edge.get("/x").await;
        assert!(r.header("server").is_none());
        assert_eq!(r.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(r.header("x-edge"), Some("yes"));
    }
}

#[tokio::test]
async fn objects_of_hundreds_of_mib_are_streamed_stored_in_chunks_and_served() {
    const SIZE: usize = 256 * 1024 * 1024;
    let big = Bytes::from(vec![42u8; SIZE]);
    let b2 = big.clone();
    let origin = TestOrigin::start(move |_| Reply::ok(b2.clone()).cc("max-age=600")).await;
    let cfg = config(origin.addr, "")
        .replace("max_bytes = 67108864", "max_bytes = 1073741824")
        .replace(
            "max_object_bytes = 16777216",
            "max_object_bytes = 536870912",
        );
    let edge = start_edge(&cfg).await;
    let first = edge.get("/huge").await;
    assert_eq!(first.body.len(), SIZE);
    let hit = edge.get_until_hit("/huge").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(hit.body.len(), SIZE);
    assert!(hit.body.iter().all(|b| *b == 42));
    // Stored as the chunks it arrived in, not one contiguous copy.
    let key = firebreak_edge::store::CacheKey::new("test", "localhost", "/huge");
    let stored = edge.handle.state().store.get(&key).unwrap();
    assert!(
        stored.objects()[0].body.chunks().map_or(0, |c| c.len()) > 1,
        "{} chunks",
        stored.objects()[0].body.chunks().map_or(0, |c| c.len())
    );
}

/// Bodies from `cache.zero_copy_min_bytes` up are kept in zero-copy pages and sent with
/// sendfile on plain connections: every protocol and range still gets the exact bytes.
/// (Freeing and reusing pages under bytes still in flight is tested in `firebreak-zerocopy`.)
#[tokio::test]
async fn zero_copy_bodies_are_served_exactly() {
    // 20,000 bytes: not a whole number of pages; 300,000: many.
    let bodies: Vec<Bytes> = [20_000usize, 300_000]
        .iter()
        .map(|n| Bytes::from((0..*n).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))
        .collect();
    let served = bodies.clone();
    let origin = TestOrigin::start(move |r| {
        let body = match r.uri.path() {
            "/small" => served[0].clone(),
            _ => served[1].clone(),
        };
        Reply::ok(body).cc("max-age=600")
    })
    .await;
    let edge = edge_for(&origin).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let arena = firebreak_zerocopy::arena().unwrap();
    for (path, body) in [("/small", &bodies[0]), ("/large", &bodies[1])] {
        assert_eq!(&edge.get(path).await.body, body);
        let hit = edge.get_until_hit(path).await;
        assert_eq!(&hit.body, body, "{path} over HTTP/1.1");
        let key = firebreak_edge::store::CacheKey::new("test", "localhost", path);
        let stored = edge.handle.state().store.get(&key).unwrap();
        let chunks = stored.objects()[0].body.chunks().unwrap().to_vec();
        assert_eq!(chunks.len(), 1);
        assert!(
            arena.locate(&chunks[0]).is_some(),
            "{path} not in zero-copy pages"
        );
        drop((stored, chunks));
        // A range is a slice of the pages.
        let part = edge.get_with(path, &[("range", "bytes=4097-9999")]).await;
        assert_eq!(part.status, 206);
        assert_eq!(part.body, body.slice(4097..10_000));
        // h2c: the DATA frames' payloads come from the pages too.
        let req = Request::get(format!("http://localhost:{}{path}", edge.addr.port()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = h2.request(req).await.unwrap();
        assert!(resp.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit"));
        assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes(), body);
    }
    // Smaller bodies stay in ordinary memory.
    let origin_small = TestOrigin::start(|_| Reply::ok("tiny").cc("max-age=600")).await;
    let small_edge = edge_for(&origin_small).await;
    small_edge.get_until_hit("/tiny").await;
    let key = firebreak_edge::store::CacheKey::new("test", "localhost", "/tiny");
    let stored = small_edge.handle.state().store.get(&key).unwrap();
    assert!(arena
        .locate(&stored.objects()[0].body.chunks().unwrap()[0])
        .is_none());
}
