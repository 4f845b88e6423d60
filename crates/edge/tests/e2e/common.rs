//! Test harness: a scriptable origin, an edge started from TOML, and a client.

use bytes::Bytes;
use firebreak_edge::{EdgeHandle, EdgeServer};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Barrier};
use tokio::task::JoinHandle;

/// A request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type OriginBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// What the scripted origin answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: OriginBody,
    pub delay: Duration,
    pub barrier: Option<Arc<Barrier>>,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: Full::new(body.into())
                .map_err(|never| match never {})
                .boxed_unsync(),
            delay: Duration::ZERO,
            barrier: None,
        }
    }
    pub fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }
    pub fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_owned(), v.into()));
        self
    }
    pub fn cc(self, v: &str) -> Self {
        self.header("cache-control", v)
    }
    pub fn delay(mut self, ms: u64) -> Self {
        self.delay = Duration::from_millis(ms);
        self
    }
    pub fn barrier(mut self, b: Arc<Barrier>) -> Self {
        self.barrier = Some(b);
        self
    }
    /// A body fed from a channel: the test decides when each frame (or an error) goes out.
    pub fn streamed(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Self {
        let stream = futures_stream(rx);
        let mut r = Self::ok("");
        r.body = StreamBody::new(stream).boxed_unsync();
        r
    }
}

/// A `Stream` of whatever a channel carries: request or response bodies fed by the test.
pub struct ChannelStream<T>(pub mpsc::Receiver<T>);

impl<T> futures_core::Stream for ChannelStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Forwards body chunks as data frames.
fn futures_stream(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> ChannelStream<Result<Frame<Bytes>, std::io::Error>> {
    let (tx, frames) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            if tx.send(item.map(Frame::data)).await.is_err() {
                return;
            }
        }
    });
    ChannelStream(frames)
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A real HTTP origin on a loopback port that answers with a closure and records requests.
pub struct TestOrigin {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub connections: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TestOrigin {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), handler).await
    }

    pub async fn start_on(
        addr: SocketAddr,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (req2, conn2, tasks2) = (requests.clone(), connections.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conn2.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let requests = req2.clone();
                let t = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let requests = requests.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            };
                            requests.lock().unwrap().push(rec.clone());
                            let reply = handler(&rec);
                            if let Some(b) = &reply.barrier {
                                b.wait().await;
                            }
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut resp = Response::new(reply.body);
                            *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                            for (k, v) in reply.headers {
                                resp.headers_mut().append(
                                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    HeaderValue::from_str(&v).unwrap(),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                tasks2.lock().unwrap().push(t);
            }
        });
        tasks.lock().unwrap().push(accept);
        Self {
            addr,
            requests,
            connections,
            tasks,
        }
    }

    /// Requests seen so far.
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Waits (up to 10 s) until the origin has seen `n` requests; fails the test if it
    /// never does.
    pub async fn wait_for_requests(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.count() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the origin saw {} requests, never {n}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn last(&self) -> Recorded {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("origin saw no request")
    }

    /// Stops accepting and closes every connection: the origin is down.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A raw TCP "origin" that answers every connection with fixed bytes, then closes.
pub async fn raw_origin(answer: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            c2.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count, task)
}

/// Configuration for one default service in front of `origin`, with extra TOML for the
/// service's `[service.cache]` table and the top-level `[cache]` table.
pub fn config(origin: SocketAddr, service_cache: &str) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[cache]
max_bytes = 67108864
max_object_bytes = 16777216
coalesce_wait_ms = 5000

[[service]]
name = "test"
hosts = ["localhost", "test.example"]
default = true

[service.origin]
connect_timeout_ms = 1000
response_timeout_ms = 2000
servers = [{{ addr = "{origin}" }}]

[service.cache]
{service_cache}
"#
    )
}

pub async fn start_edge(toml: &str) -> Edge {
    let valid = firebreak_config::parse_str("test.toml", toml).unwrap_or_else(|e| panic!("{e}"));
    let handle = EdgeServer::start(valid).await.unwrap();
    let addr = handle.local_addrs()[0];
    Edge {
        handle,
        addr,
        client: client(),
    }
}

/// An edge in front of `origin` with default settings.
pub async fn edge_for(origin: &TestOrigin) -> Edge {
    start_edge(&config(origin.addr, "")).await
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Edge {
    pub handle: EdgeHandle,
    pub addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `ttl=` of this cache's Cache-Status entry.
    pub fn ttl(&self) -> i64 {
        let cs = self.cache_status();
        cs.split("ttl=")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ttl in {cs:?}"))
    }
}

impl Edge {
    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Resp {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = format!("http://{}{}", self.addr, path).parse().unwrap();
        // `localhost` unless the test names the host itself.
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.headers_mut()
                .insert("host", HeaderValue::from_static("localhost"));
        }
        for (k, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("edge did not answer within 10 s")
            .expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body failed").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// GETs `path` until it is a cache hit (the fill task may store just after the client has
    /// the last byte), for at most 10 s; returns the hit, or fails the test.
    pub async fn get_until_hit(&self, path: &str) -> Resp {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut r = self.get(path).await;
        while !r.cache_status().contains("hit") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never became a cache hit: {}",
                r.cache_status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            r = self.get(path).await;
        }
        r
    }

    /// Sends raw bytes on a new connection and returns everything read until close (or 5 s).
    pub async fn raw(&self, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// An origin that accepts connections and never answers (nor closes them); counts accepted
/// connections.
pub async fn silent_origin() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            c2.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, count, task)
}

/// Reads from a raw connection until the end of a response head; `None` if the connection
/// closed or nothing complete came within `limit`.
pub async fn read_head(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            out.extend_from_slice(&buf[..n]);
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(String::from_utf8_lossy(&out[..end]).into_owned());
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

/// Sends an admin request with a bearer token; returns the status.
pub async fn admin_request(addr: SocketAddr, path_and_query: &str, token: &str) -> StatusCode {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path_and_query}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("admin did not answer within 10 s")
        .unwrap();
    resp.status()
}

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8), so that a
/// test can play several client addresses. Fails after 5 s (a full accept queue drops SYNs).
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Whether the peer closes `stream` (end of stream or reset) within `limit`; whatever it sends
/// first is read and dropped.
pub async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Sends raw `request` on a new connection from `from` to `to` and returns everything the
/// edge sent until it closed (None if it sent nothing or did not close within 10 s).
pub async fn exchange_from(from: &str, to: SocketAddr, request: &[u8]) -> Option<String> {
    let mut s = connect_from(from, to).await.ok()?;
    s.write_all(request).await.ok()?;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    match read {
        Ok(Ok(_)) if !out.is_empty() => Some(String::from_utf8_lossy(&out).into_owned()),
        _ => None,
    }
}

/// GETs `path` (Host: localhost) on a new connection from `from` to `to`: the whole answer.
pub async fn get_from(from: &str, to: SocketAddr, path: &str) -> Option<String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    exchange_from(from, to, req.as_bytes()).await
}

/// The status code of a raw HTTP/1.1 answer.
pub fn status_of(answer: &Option<String>) -> Option<u16> {
    answer
        .as_deref()?
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()
}

/// GETs `path` on a new connection from `from`: the status (None if no answer).
pub async fn status_from(from: &str, to: SocketAddr, path: &str) -> Option<u16> {
    status_of(&get_from(from, to, path).await)
}

/// `base` with `[limits]` and `[limits.clients]` tables added.
pub fn with_limits(base: &str, limits: &str, clients: &str) -> String {
    format!("{base}\n[limits]\n{limits}\n\n[limits.clients]\n{clients}\n")
}

/// A fresh directory under the system's temporary directory, removed when the test ends.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new `TempDir` named after the test.
pub fn temp_dir(name: &str) -> TempDir {
    let mut r = [0u8; 6];
    getrandom::fill(&mut r).unwrap();
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    TempDir(std::env::temp_dir().join(format!("fb-e2e-{name}-{hex}")))
}

/// `config` with a disk tier in `dir` and an admin listener taking `token`.
pub fn with_disk(config: String, dir: &TempDir, token: &str) -> String {
    config.replace(
        "coalesce_wait_ms = 5000\n",
        &format!(
            "coalesce_wait_ms = 5000\n\n[cache.disk]\npath = \"{}\"\nmax_bytes = 268435456\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n",
            dir.0.display()
        ),
    )
}

impl Edge {
    /// Waits until the edge's disk tier has recovered and indexes at least `n` objects.
    pub async fn disk_holds(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let d = self.handle.state().store.stats().disk.expect("a disk tier");
            if d.keys >= n && !d.recovering {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "disk tier holds {d:?}, want {n} objects"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The body [`sized_origin`] serves for `/n/<len>`: `len` bytes that differ per length.
pub fn sized_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + len) as u8).collect()
}

/// An origin that answers `/n/<len>` with [`sized_body`]`(len)`, cacheable for a minute.
pub async fn sized_origin() -> TestOrigin {
    TestOrigin::start(|r| {
        let len = r
            .uri
            .path()
            .strip_prefix("/n/")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Reply::ok(sized_body(len)).cc("max-age=60")
    })
    .await
}

/// Forty streams at once on one h2 connection to an edge in front of [`sized_origin`]
/// (`base` is the scheme and authority), twice (misses, then hits), for bodies from empty to
/// well past one TLS record: each must arrive whole, with its own bytes. The edge gathers
/// what one poll of the connection writes and sends it after the poll; this is what that
/// must not mix up or hold back.
pub async fn many_streams_get_their_own_bytes(
    send: hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    base: &str,
) {
    let lens = [0usize, 1, 300, 1024, 5000, 16_384, 16_385, 70_000, 300_000];
    for round in 0..2 {
        let mut asks = Vec::new();
        for (i, &len) in lens.iter().cycle().take(40).enumerate() {
            let mut send = send.clone();
            let uri = format!("{base}/n/{len}");
            asks.push(tokio::spawn(async move {
                send.ready().await.unwrap();
                let req = Request::get(uri)
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "stream {i}");
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), len, "stream {i}, round {round}");
                assert!(body == sized_body(len), "stream {i}: wrong bytes");
            }));
        }
        for ask in asks {
            tokio::time::timeout(Duration::from_secs(10), ask)
                .await
                .expect("every stream is answered within 10 s")
                .expect("and has the right body");
        }
    }
}
