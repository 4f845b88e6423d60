//! Slices for large objects (`[service.cache] slice_bytes`), end to end against real
//! origins that honour `Range` (or not): what the origin is asked (count and `Range`
//! headers), byte-exact assembly, no mixing of two versions, and RFC 9111 §3.3–3.4 (stored
//! partial responses combined for later range requests).

use crate::common::*;
use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SLICE: u64 = 65_536;
/// Five slices, the last one short.
const TOTAL: u64 = 300_000;

/// Byte `i` of version `v`: depends on the position, so a misplaced or repeated slice shows.
fn byte(v: u64, i: u64) -> u8 {
    ((i % 251) as u8) ^ ((i / 65_536) as u8) ^ (v as u8).wrapping_mul(61)
}

fn object(v: u64, start: u64, end: u64) -> Vec<u8> {
    (start..end).map(|i| byte(v, i)).collect()
}

/// `bytes=a-b` or `bytes=a-` of a request, as (first, last inclusive).
fn asked_range(r: &Recorded) -> Option<(u64, Option<u64>)> {
    let spec = r.header("range")?.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()))
}

/// An origin for an object of `TOTAL` bytes whose version is read from `version` at each
/// request: 206 for a range (416 past the end), 200 for the whole.
async fn sliced_origin(version: Arc<AtomicU64>, cc: &'static str) -> TestOrigin {
    TestOrigin::start(move |r| {
        let v = version.load(Ordering::SeqCst);
        let etag = format!("\"v{v}\"");
        match asked_range(r) {
            Some((first, _)) if first >= TOTAL => Reply::ok("")
                .status(416)
                .header("content-range", format!("bytes */{TOTAL}")),
            Some((first, last)) => {
                let last = last.unwrap_or(TOTAL - 1).min(TOTAL - 1);
                Reply::ok(object(v, first, last + 1))
                    .status(206)
                    .header("content-range", format!("bytes {first}-{last}/{TOTAL}"))
                    .header("etag", etag)
                    .cc(cc)
            }
            None => Reply::ok(object(v, 0, TOTAL)).header("etag", etag).cc(cc),
        }
    })
    .await
}

async fn sliced_edge(origin: &TestOrigin) -> Edge {
    start_edge(&config(origin.addr, &format!("slice_bytes = {SLICE}"))).await
}

/// The `Range` headers the origin saw, in order.
fn ranges_seen(origin: &TestOrigin) -> Vec<String> {
    origin
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.header("range").unwrap_or("-").to_owned())
        .collect()
}

fn slice_range(n: u64) -> String {
    let first = n * SLICE;
    format!("bytes={first}-{}", first + SLICE - 1)
}

/// A GET whose body may fail: `Err` when the response was cut off.
async fn get_result(edge: &Edge, path: &str) -> Result<(u16, Bytes), String> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = format!("http://{}{path}", edge.addr).parse().unwrap();
    req.headers_mut()
        .insert("host", HeaderValue::from_static("localhost"));
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("edge did not answer within 10 s")
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body did not end within 10 s")
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}

/// A range in the middle of the object costs exactly the slices covering it, each asked
/// with its own `Range`; the same range again costs nothing.
#[tokio::test]
async fn a_middle_range_fetches_only_the_covering_slices() {
    let origin = sliced_origin(Arc::new(AtomicU64::new(1)), "max-age=600").await;
    let edge = sliced_edge(&origin).await;
    let r = edge
        .get_with("/big", &[("range", "bytes=100000-200000")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100000-200000/{TOTAL}").as_str())
    );
    assert_eq!(r.body, object(1, 100_000, 200_001));
    assert_eq!(
        ranges_seen(&origin),
        [slice_range(1), slice_range(2), slice_range(3)]
    );
    let again = edge
        .get_with("/big", &[("range", "bytes=100000-200000")])
        .await;
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    assert_eq!(again.body, r.body);
    assert_eq!(origin.count(), 3);
}

/// A full GET is assembled from every slice in order, byte-exact, with the whole length
/// and no `Content-Range`; then it is a hit.
#[tokio::test]
async fn a_full_request_is_assembled_byte_exact_then_hits() {
    let origin = sliced_origin(Arc::new(AtomicU64::new(1)), "max-age=600").await;
    let edge = sliced_edge(&origin).await;
    let r = edge.get("/big").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("300000"));
    assert_eq!(r.header("content-range"), None);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert!(r.header("surrogate-key").is_none(), "internal tag leaked");
    assert_eq!(r.body, object(1, 0, TOTAL));
    assert_eq!(
        ranges_seen(&origin),
        (0..5).map(slice_range).collect::<Vec<_>>()
    );
    let hit = edge.get("/big").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(hit.body, object(1, 0, TOTAL));
    assert_eq!(origin.count(), 5);
}

/// The object changes at the origin after slice 0 was sent: the response is cut off (never
/// completed with bytes of two versions), and the next request starts clean with the new
/// version, byte-exact.
#[tokio::test]
async fn a_change_between_slices_cuts_the_response_and_never_mixes() {
    let version = Arc::new(AtomicU64::new(1));
    let v = version.clone();
    // Version 2 from the origin's second request on.
    let seen = Arc::new(AtomicU64::new(0));
    let origin = TestOrigin::start({
        let seen = seen.clone();
        move |r| {
            if seen.fetch_add(1, Ordering::SeqCst) == 1 {
                v.store(2, Ordering::SeqCst);
            }
            let v = v.load(Ordering::SeqCst);
            let (first, last) = asked_range(r).unwrap();
            let last = last.unwrap().min(TOTAL - 1);
            Reply::ok(object(v, first, last + 1))
                .status(206)
                .header("content-range", format!("bytes {first}-{last}/{TOTAL}"))
                .header("etag", format!("\"v{v}\""))
                .cc("max-age=600")
        }
    })
    .await;
    let edge = sliced_edge(&origin).await;
    let first = get_result(&edge, "/big").await;
    match &first {
        Err(_) => {}
        Ok((status, body)) => panic!(
            "a mixed response completed: {status}, {} bytes, v1 = {}, v2 = {}",
            body.len(),
            *body == object(1, 0, TOTAL),
            *body == object(2, 0, TOTAL)
        ),
    }
    assert_eq!(version.load(Ordering::SeqCst), 2);
    let second = edge.get("/big").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("etag"), Some("\"v2\""));
    assert_eq!(second.body, object(2, 0, TOTAL));
}

/// Before the head is sent a change starts the request over: a suffix range (head slice 0
/// stored as v1, the object now v2) is answered whole from v2.
#[tokio::test]
async fn a_change_found_before_the_head_is_sent_starts_over() {
    let version = Arc::new(AtomicU64::new(1));
    let origin = sliced_origin(version.clone(), "max-age=600").await;
    let edge = sliced_edge(&origin).await;
    let r = edge.get_with("/big", &[("range", "bytes=0-9")]).await;
    assert_eq!(r.body, object(1, 0, 10));
    version.store(2, Ordering::SeqCst);
    let r = edge.get_with("/big", &[("range", "bytes=-1000")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("etag"), Some("\"v2\""));
    assert_eq!(r.body, object(2, TOTAL - 1000, TOTAL));
    let seen = ranges_seen(&origin);
    assert_eq!(
        seen.first().map(String::as_str),
        Some(slice_range(0).as_str())
    );
    // Slice 4 found v2 → slices purged → slice 0 and slice 4 again.
    assert_eq!(seen[1..], [slice_range(4), slice_range(0), slice_range(4)]);
}

/// An origin that ignores `Range` (200 with the whole body): the client gets the 200 and
/// it is stored as an ordinary object, which answers later ranges itself.
#[tokio::test]
async fn an_origin_ignoring_range_is_stored_as_an_ordinary_object() {
    let body = object(1, 0, 100_000);
    let b2 = body.clone();
    let origin = TestOrigin::start(move |_| {
        Reply::ok(b2.clone())
            .cc("max-age=600")
            .header("etag", "\"w\"")
    })
    .await;
    let edge = sliced_edge(&origin).await;
    let r = edge.get_with("/small", &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    assert!(
        r.cache_status().contains("range-ignored"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.last().header("range"), Some(slice_range(0).as_str()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = edge.get_with("/small", &[("range", "bytes=10-19")]).await;
        if r.cache_status().contains("hit") {
            assert_eq!(r.status, 206);
            assert_eq!(r.body, body[10..20]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never a hit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.count(), 1);
}

/// RFC 9111 §3.3–3.4: stored 206 slices with the same strong validator are combined to
/// answer a later range request, including one across a slice boundary, with no origin
/// request.
#[tokio::test]
async fn stored_partial_responses_answer_a_later_range_across_slices() {
    let origin = sliced_origin(Arc::new(AtomicU64::new(1)), "max-age=600").await;
    let edge = sliced_edge(&origin).await;
    edge.get_with("/big", &[("range", "bytes=0-99")]).await;
    edge.get_with("/big", &[("range", "bytes=70000-70099")])
        .await;
    assert_eq!(ranges_seen(&origin), [slice_range(0), slice_range(1)]);
    let r = edge
        .get_with("/big", &[("range", "bytes=65000-66000")])
        .await;
    assert_eq!(r.status, 206);
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.body, object(1, 65_000, 66_001));
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 65000-66000/{TOTAL}").as_str())
    );
    assert_eq!(origin.count(), 2);
}

/// HEAD, `If-None-Match` and an unsatisfiable range are answered from the slices'
/// metadata: HEAD fetches slice 0 only; the 304 and the 416 ask the origin nothing.
#[tokio::test]
async fn head_conditionals_and_416_from_slice_metadata() {
    let origin = sliced_origin(Arc::new(AtomicU64::new(1)), "max-age=600").await;
    let edge = sliced_edge(&origin).await;
    let head = edge.send(Method::HEAD, "/big", &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("300000"));
    assert_eq!(head.header("etag"), Some("\"v1\""));
    assert!(head.body.is_empty());
    assert_eq!(ranges_seen(&origin), [slice_range(0)]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let not_modified = loop {
        let r = edge.get_with("/big", &[("if-none-match", "\"v1\"")]).await;
        if r.cache_status().contains("hit") {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slice 0 never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    let unsatisfiable = edge.get_with("/big", &[("range", "bytes=400000-")]).await;
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(
        unsatisfiable.header("content-range"),
        Some(format!("bytes */{TOTAL}").as_str())
    );
    assert_eq!(origin.count(), 1);
    // A validator that does not match: the whole object, assembled.
    let full = edge.get_with("/big", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body, object(1, 0, TOTAL));
}

/// Purge by URL reaches every slice of the URL.
#[tokio::test]
async fn purge_by_url_removes_every_slice() {
    let origin = sliced_origin(Arc::new(AtomicU64::new(1)), "max-age=600").await;
    let toml = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"test-admin-token-0123\"\n",
        config(origin.addr, &format!("slice_bytes = {SLICE}"))
    );
    let edge = start_edge(&toml).await;
    edge.get("/big").await;
    assert_eq!(origin.count(), 5);
    let admin = edge.handle.admin_addr().unwrap();
    let status = admin_request(
        admin,
        "/purge/url?url=http%3A%2F%2Flocalhost%2Fbig",
        "test-admin-token-0123",
    )
    .await;
    assert_eq!(status, 200);
    let r = edge
        .get_with("/big", &[("range", "bytes=200000-200009")])
        .await;
    assert_eq!(r.body, object(1, 200_000, 200_010));
    assert!(!r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(origin.count(), 6);
}

/// Concurrent full requests for a cold object: each slice is fetched once (the `Coalescer`
/// per slice), and every client gets the object byte-exact.
#[tokio::test]
async fn concurrent_requests_fetch_each_slice_once() {
    let origin = sliced_origin(Arc::new(AtomicU64::new(1)), "max-age=600").await;
    let edge = Arc::new(sliced_edge(&origin).await);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let edge = edge.clone();
            tokio::spawn(async move { edge.get("/big").await })
        })
        .collect();
    for c in clients {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, object(1, 0, TOTAL));
    }
    assert_eq!(
        ranges_seen(&origin),
        (0..5).map(slice_range).collect::<Vec<_>>()
    );
}

/// RFC 9111 §4.3.1–4.3.4 for slices: a stale head slice is revalidated with a conditional
/// range request; a 304 keeps every stored slice. A new validator makes a new head and the
/// stored slices of the old version are fetched again, never combined with it.
#[tokio::test]
async fn a_stale_head_is_revalidated_and_a_new_version_replaces_every_slice() {
    let version = Arc::new(AtomicU64::new(1));
    let v = version.clone();
    let origin = TestOrigin::start(move |r| {
        let v = v.load(Ordering::SeqCst);
        let etag = format!("\"v{v}\"");
        if r.header("if-none-match") == Some(etag.as_str()) {
            return Reply::ok("")
                .status(304)
                .header("etag", etag)
                .cc("max-age=0");
        }
        let (first, last) = asked_range(r).unwrap();
        let last = last.unwrap().min(TOTAL - 1);
        Reply::ok(object(v, first, last + 1))
            .status(206)
            .header("content-range", format!("bytes {first}-{last}/{TOTAL}"))
            .header("etag", etag)
            .cc("max-age=0")
    })
    .await;
    let edge = sliced_edge(&origin).await;
    assert_eq!(edge.get("/big").await.body, object(1, 0, TOTAL));
    assert_eq!(origin.count(), 5);
    let again = edge.get("/big").await;
    assert_eq!(again.body, object(1, 0, TOTAL));
    assert!(
        again.cache_status().contains("fwd-status=304"),
        "{}",
        again.cache_status()
    );
    assert_eq!(origin.count(), 6);
    let revalidation = origin.last();
    assert_eq!(revalidation.header("range"), Some(slice_range(0).as_str()));
    assert_eq!(revalidation.header("if-none-match"), Some("\"v1\""));
    version.store(2, Ordering::SeqCst);
    let new = edge.get("/big").await;
    assert_eq!(new.header("etag"), Some("\"v2\""));
    assert_eq!(new.body, object(2, 0, TOTAL));
    assert_eq!(
        ranges_seen(&origin)[6..],
        (0..5).map(slice_range).collect::<Vec<_>>()
    );
}

/// Slices without a validator cannot be combined (RFC 9111 §3.4): a request the head slice
/// alone covers is answered from it, a larger one is forwarded as it came; nothing is stored.
#[tokio::test]
async fn slices_without_validator_are_never_combined_nor_stored() {
    let origin = TestOrigin::start(|r| match asked_range(r) {
        Some((first, last)) => {
            let last = last.unwrap_or(TOTAL - 1).min(TOTAL - 1);
            Reply::ok(object(1, first, last + 1))
                .status(206)
                .header("content-range", format!("bytes {first}-{last}/{TOTAL}"))
                .cc("max-age=600")
        }
        None => Reply::ok(object(1, 0, TOTAL)).cc("max-age=600"),
    })
    .await;
    let edge = sliced_edge(&origin).await;
    let small = edge.get_with("/big", &[("range", "bytes=10-19")]).await;
    assert_eq!(small.status, 206);
    assert_eq!(small.body, object(1, 10, 20));
    let full = edge.get("/big").await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body, object(1, 0, TOTAL));
    assert!(
        full.cache_status().contains("slice-no-validator"),
        "{}",
        full.cache_status()
    );
    assert_eq!(
        ranges_seen(&origin),
        [slice_range(0), slice_range(0), "-".to_owned()]
    );
}

/// An empty object: the origin answers slice 0 with 416 (`bytes */0`); the edge asks again
/// without `Range` and stores the empty 200 as an ordinary object.
#[tokio::test]
async fn an_empty_object_is_fetched_whole_and_stored_ordinarily() {
    let origin = TestOrigin::start(|r| match asked_range(r) {
        Some(_) => Reply::ok("")
            .status(416)
            .header("content-range", "bytes */0"),
        None => Reply::ok("").cc("max-age=600").header("etag", "\"e\""),
    })
    .await;
    let edge = sliced_edge(&origin).await;
    let r = edge.get("/empty").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(ranges_seen(&origin), [slice_range(0), "-".to_owned()]);
    let hit = edge.get_until_hit("/empty").await;
    assert_eq!(hit.status, 200);
    assert_eq!(origin.count(), 2);
}

/// Slice n+1 is asked for only once slice n has gone to the client: while the origin holds
/// back slice 2's body, it has seen no request for slice 3 (an object is never read ahead,
/// let alone held whole).
#[tokio::test]
async fn the_next_slice_is_fetched_only_after_the_previous_one_is_sent() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let held = std::sync::Mutex::new(Some(rx));
    let origin = TestOrigin::start(move |r| {
        let (first, last) = asked_range(r).unwrap();
        let last = last.unwrap().min(TOTAL - 1);
        let reply = if first == 2 * SLICE {
            Reply::streamed(held.lock().unwrap().take().expect("slice 2 asked twice"))
        } else {
            Reply::ok(object(1, first, last + 1))
        };
        reply
            .status(206)
            .header("content-range", format!("bytes {first}-{last}/{TOTAL}"))
            .header("etag", "\"v1\"")
            .cc("max-age=600")
    })
    .await;
    let edge = Arc::new(sliced_edge(&origin).await);
    let e2 = edge.clone();
    let client = tokio::spawn(async move { e2.get("/big").await });
    origin.wait_for_requests(3).await;
    assert_eq!(
        ranges_seen(&origin),
        [slice_range(0), slice_range(1), slice_range(2)]
    );
    tx.send(Ok(Bytes::from(object(1, 2 * SLICE, 3 * SLICE))))
        .await
        .unwrap();
    drop(tx);
    let r = client.await.unwrap();
    assert_eq!(r.body, object(1, 0, TOTAL));
    assert_eq!(
        ranges_seen(&origin),
        (0..5).map(slice_range).collect::<Vec<_>>()
    );
}

/// §4.4 invalidation (an unsafe method answered 2xx) removes every slice of the URL.
#[tokio::test]
async fn an_unsafe_method_invalidates_every_slice() {
    let origin = sliced_origin(Arc::new(AtomicU64::new(1)), "max-age=600").await;
    let edge = sliced_edge(&origin).await;
    edge.get("/big").await;
    assert_eq!(origin.count(), 5);
    let post = edge
        .send(Method::POST, "/big", &[], Bytes::from_static(b"x"))
        .await;
    assert_eq!(post.status, 200);
    let r = edge
        .get_with("/big", &[("range", "bytes=200000-200009")])
        .await;
    assert_eq!(r.body, object(1, 200_000, 200_010));
    assert_eq!(origin.count(), 7, "{:?}", ranges_seen(&origin));
}

/// An origin whose slice body is shorter than its `Content-Range` says: the response is
/// cut off, and the short slice is never served from the cache (asked again next time).
#[tokio::test]
async fn a_slice_shorter_than_its_content_range_is_never_served() {
    let short_once = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let origin = TestOrigin::start(move |r| {
        let (first, last) = asked_range(r).unwrap();
        let last = last.unwrap().min(TOTAL - 1);
        let mut body = object(1, first, last + 1);
        if first == SLICE && short_once.swap(false, Ordering::SeqCst) {
            body.truncate(1000);
            // Chunked: no Content-Length to catch the lie.
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.try_send(Ok(Bytes::from(body))).unwrap();
            return Reply::streamed(rx)
                .status(206)
                .header("content-range", format!("bytes {first}-{last}/{TOTAL}"))
                .header("etag", "\"v1\"")
                .cc("max-age=600");
        }
        Reply::ok(body)
            .status(206)
            .header("content-range", format!("bytes {first}-{last}/{TOTAL}"))
            .header("etag", "\"v1\"")
            .cc("max-age=600")
    })
    .await;
    let edge = sliced_edge(&origin).await;
    assert!(get_result(&edge, "/big").await.is_err());
    let r = edge.get("/big").await;
    assert_eq!(r.body, object(1, 0, TOTAL));
    let seen = ranges_seen(&origin);
    assert_eq!(seen[..2], [slice_range(0), slice_range(1)]);
    assert!(seen[2..].contains(&slice_range(1)), "{seen:?}");
}

/// Slices are objects like any: with a disk tier they survive a restart and are served as
/// hits, byte-exact, read from the disk tier; a purge by URL reaches every slice on disk
/// too, and stays done across the next restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_on_the_disk_tier_survive_a_restart_and_purge_by_url_reaches_them() {
    let origin = sliced_origin(Arc::new(AtomicU64::new(1)), "max-age=3600").await;
    let dir = temp_dir("slices");
    let token = "slices-disk-test-token";
    let cfg = with_disk(
        config(origin.addr, &format!("slice_bytes = {SLICE}")),
        &dir,
        token,
    );
    {
        let edge = start_edge(&cfg).await;
        edge.disk_holds(0).await;
        assert_eq!(edge.get("/big").await.body, object(1, 0, TOTAL));
        edge.disk_holds(5).await;
        edge.handle.shutdown();
    }
    assert_eq!(origin.count(), 5);
    {
        let edge = start_edge(&cfg).await;
        edge.disk_holds(5).await;
        let full = edge.get("/big").await;
        assert!(
            full.cache_status().contains("hit"),
            "{}",
            full.cache_status()
        );
        assert_eq!(full.body, object(1, 0, TOTAL));
        let part = edge
            .get_with("/big", &[("range", "bytes=65000-140000")])
            .await;
        assert_eq!(part.status, 206);
        assert_eq!(part.body, object(1, 65_000, 140_001));
        assert_eq!(
            origin.count(),
            5,
            "nothing went to the origin after the restart"
        );
        let admin = edge.handle.admin_addr().unwrap();
        let status = admin_request(admin, "/purge/url?url=http://localhost/big", token).await;
        assert_eq!(status, 200);
        edge.handle.shutdown();
    }
    let edge = start_edge(&cfg).await;
    edge.disk_holds(0).await;
    let r = edge
        .get_with("/big", &[("range", "bytes=200000-200009")])
        .await;
    assert!(!r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.body, object(1, 200_000, 200_010));
    assert_eq!(ranges_seen(&origin)[5..], [slice_range(3)]);
}
