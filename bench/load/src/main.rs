//! `fbload`: the load client for what Debian's wrk and h2load do not measure the way the
//! issue asks: full TLS handshakes per second (no resumption), and HTTPS keep-alive request
//! rates over HTTP/1.1 or h2 with a chosen number of streams per connection.
//!
//! ```text
//! fbload handshakes --addr 127.0.0.1:8443 --sni bench.test --ca ca.pem --conns 32 --duration 10
//! fbload https --addr 127.0.0.1:8443 --sni bench.test --ca ca.pem --path /static/1k.bin --h2 --streams 10
//! ```
//! Each run prints one human line and one `RESULT key=value ...` line for scripts.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(name = "fbload", about = "TLS handshake and HTTPS load client")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Server address.
    #[arg(long)]
    addr: SocketAddr,
    /// Server name sent as SNI (and Host).
    #[arg(long)]
    sni: String,
    /// PEM file of the CA that issued the server's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Offer TLS 1.2 only (default: TLS 1.3 only).
    #[arg(long)]
    tls12: bool,
}

#[derive(Subcommand)]
enum Mode {
    /// Full handshakes (resumption off): connect, handshake, close_notify, wait for the close.
    Handshakes(Target),
    /// Keep-alive GETs over TLS.
    Https {
        #[command(flatten)]
        target: Target,
        /// Path to GET.
        #[arg(long, default_value = "/")]
        path: String,
        /// HTTP/2 (ALPN h2) instead of HTTP/1.1.
        #[arg(long)]
        h2: bool,
        /// Concurrent streams per h2 connection.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn client_config(target: &Target, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, Failure> {
    let pem = std::fs::read(&target.ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in firebreak_protocol::tls::certs_from_pem(&pem)? {
        roots.add(cert)?;
    }
    let version = if target.tls12 {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    };
    let mut config =
        rustls::ClientConfig::builder_with_provider(firebreak_protocol::tls::provider())
            .with_protocol_versions(&[version])?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

async fn connect(
    target: &Target,
    config: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(target.sni.clone())?;
    Ok(tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?)
}

/// Counters shared by the workers of one run.
#[derive(Default)]
struct Tally {
    done: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
}

async fn handshakes(target: Target) -> Result<(), Failure> {
    let config = client_config(&target, &[b"http/1.1"])?;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..target.conns {
        let (target, config, tally, stop) =
            (target.clone(), config.clone(), tally.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match one_handshake(&target, &config).await {
                    Ok(()) => tally.done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if tally.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first handshake error: {e}");
                        }
                        0
                    }
                };
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(target.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let done = tally.done.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let rate = done as f64 / elapsed;
    println!(
        "{done} full handshakes in {elapsed:.2} s = {rate:.1}/s ({} conns, {}), {errors} errors",
        target.conns,
        if target.tls12 { "TLS 1.2" } else { "TLS 1.3" }
    );
    println!("RESULT mode=handshakes rate={rate:.1} errors={errors}");
    Ok(())
}

async fn one_handshake(target: &Target, config: &Arc<rustls::ClientConfig>) -> Result<(), Failure> {
    let mut stream = connect(target, config).await?;
    stream.shutdown().await?;
    let mut rest = [0u8; 256];
    // The server's close (after it read our Finished and close_notify) ends the exchange;
    // a server may close without its own close_notify (nginx does).
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await? {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

async fn https(target: Target, path: String, h2: bool, streams: usize) -> Result<(), Failure> {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let config = client_config(&target, alpn)?;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    // h2 takes the authority from the URI; HTTP/1.1 needs origin-form and a Host header.
    let uri: http::Uri = if h2 {
        format!("https://{}{}", target.sni, path).parse()?
    } else {
        path.parse()?
    };
    let host = http::HeaderValue::from_str(&target.sni)?;
    let mut workers = Vec::new();
    for _ in 0..target.conns {
        let stream = connect(&target, &config).await?;
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            for _ in 0..streams.max(1) {
                let (send, uri, tally, stop) =
                    (send.clone(), uri.clone(), tally.clone(), stop.clone());
                workers.push(tokio::spawn(async move {
                    let mut send = send;
                    request_loop(&mut |req| send.send_request(req), &uri, None, &tally, &stop).await
                }));
            }
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let (uri, host, tally, stop) = (uri.clone(), host.clone(), tally.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let host = Some(host);
                request_loop(&mut |req| send.send_request(req), &uri, host, &tally, &stop).await
            }));
        }
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(target.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let done = tally.done.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    let bytes = tally.bytes.load(Ordering::Relaxed);
    let mut latencies = Vec::new();
    for w in workers {
        if let Ok(mut l) = w.await {
            latencies.append(&mut l);
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    let rate = done as f64 / elapsed;
    println!(
        "{done} requests in {elapsed:.2} s = {rate:.1} req/s, {:.1} MiB/s, p50 {:.2} ms, p99 {:.2} ms, {errors} errors ({} conns, {})",
        bytes as f64 / elapsed / 1048576.0,
        pct(0.5),
        pct(0.99),
        target.conns,
        if h2 { format!("h2 x{streams}") } else { "HTTP/1.1".to_string() }
    );
    println!(
        "RESULT mode=https rate={rate:.1} p50_ms={:.3} p99_ms={:.3} errors={errors}",
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

/// GETs `uri` until `stop`; returns each request's latency in microseconds.
async fn request_loop<F, Fut>(
    send: &mut F,
    uri: &http::Uri,
    host: Option<http::HeaderValue>,
    tally: &Tally,
    stop: &AtomicBool,
) -> Vec<u32>
where
    F: FnMut(Request<Empty<Bytes>>) -> Fut,
    Fut: std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
{
    let mut latencies = Vec::with_capacity(1 << 16);
    while !stop.load(Ordering::Relaxed) {
        let mut builder = Request::get(uri.clone());
        if let Some(host) = &host {
            builder = builder.header(http::header::HOST, host.clone());
        }
        let Ok(req) = builder.body(Empty::<Bytes>::new()) else {
            break;
        };
        let start = Instant::now();
        let result = async {
            let resp = send(req).await?;
            let ok = resp.status().is_success();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((ok, body.len()))
        }
        .await;
        match result {
            Ok((true, len)) => {
                tally.done.fetch_add(1, Ordering::Relaxed);
                tally.bytes.fetch_add(len as u64, Ordering::Relaxed);
                latencies.push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Ok((false, _)) => {
                if tally.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("first request error: not a 2xx answer");
                }
            }
            Err(e) => {
                if tally.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("first request error: {e}");
                }
                break;
            }
        }
    }
    latencies
}

fn main() -> Result<(), Failure> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.mode {
            Mode::Handshakes(target) => handshakes(target).await,
            Mode::Https {
                target,
                path,
                h2,
                streams,
            } => https(target, path, h2, streams).await,
        }
    })
}
