//! `fbload`: the load client for what Debian's wrk and h2load do not measure the way the
//! issue asks: full TLS handshakes per second (no resumption), HTTPS keep-alive request
//! rates over HTTP/1.1 or h2 with a chosen number of streams per connection, and the same
//! over HTTP/3 (QUIC, with quinn + h3 + h3-quinn as the client; module [`h3`]).
//!
//! ```text
//! fbload handshakes --addr 127.0.0.1:8443 --sni bench.test --ca ca.pem --conns 32 --duration 10
//! fbload https --addr 127.0.0.1:8443 --sni bench.test --ca ca.pem --path /static/1k.bin --h2 --streams 10
//! fbload h3 --addr 127.0.0.1:8443 --sni bench.test --ca ca.pem --path /static/1k.bin --conns 16 --streams 10
//! ```
//! Each run prints one human line and one `RESULT key=value ...` line for scripts
//! (`mode`, `rate` per second, `errors`; for request modes also `p50_ms`/`p99_ms`, the
//! successful `requests` and the `bytes` of their bodies). A failed request is counted as an error, never a panic; a request run in
//! which no request succeeded exits non-zero.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

mod h3;

/// Upper bounds of the command line: connections, streams per connection, seconds.
const MAX_CONNS: usize = 10_000;
const MAX_STREAMS: usize = 1_000;
const MAX_DURATION_S: f64 = 3_600.0;
/// Bytes read of the `--ca` file.
const CA_READ_LIMIT: u64 = firebreak_protocol::tls::MAX_CERTS_PEM_BYTES as u64 + 1;

#[derive(Parser)]
#[command(name = "fbload", about = "TLS handshake, HTTPS and HTTP/3 load client")]
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
    /// Offer TLS 1.2 only (default: TLS 1.3 only; not for h3, QUIC is TLS 1.3).
    #[arg(long)]
    tls12: bool,
}

impl Target {
    /// The run's length, once the command line is known to be within bounds.
    fn checked(&self, streams: usize) -> Result<Duration, Failure> {
        if self.conns == 0 || self.conns > MAX_CONNS {
            return Err(format!("--conns must be 1..={MAX_CONNS}").into());
        }
        if streams == 0 || streams > MAX_STREAMS {
            return Err(format!("--streams must be 1..={MAX_STREAMS}").into());
        }
        if !(self.duration > 0.0 && self.duration <= MAX_DURATION_S) {
            return Err(format!("--duration must be in (0, {MAX_DURATION_S}] seconds").into());
        }
        Ok(Duration::try_from_secs_f64(self.duration)?)
    }
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
    /// Keep-alive GETs over HTTP/3 (QUIC, ALPN h3, TLS 1.3): `--conns` QUIC connections,
    /// each with `--streams` request streams in a loop (request, whole body, next).
    H3 {
        #[command(flatten)]
        target: Target,
        /// Path to GET.
        #[arg(long, default_value = "/")]
        path: String,
        /// Concurrent request streams per QUIC connection.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn client_config(target: &Target, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, Failure> {
    let ca = target.ca.display();
    let mut pem = Vec::new();
    std::fs::File::open(&target.ca)
        // One byte more than certs_from_pem accepts: a larger file is refused there.
        .and_then(|f| f.take(CA_READ_LIMIT).read_to_end(&mut pem))
        .map_err(|e| format!("--ca {ca}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        firebreak_protocol::tls::certs_from_pem(&pem).map_err(|e| format!("--ca {ca}: {e}"))?
    {
        roots.add(cert).map_err(|e| format!("--ca {ca}: {e}"))?;
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
    let duration = target.checked(1)?;
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
    tokio::time::sleep(duration).await;
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
    let duration = target.checked(streams)?;
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
            for _ in 0..streams {
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
    let run = measure(duration, &tally, &stop, workers).await;
    let what = if h2 {
        format!("{} conns, h2 x{streams}", target.conns)
    } else {
        format!("{} conns, HTTP/1.1", target.conns)
    };
    run.report("https", &what)
}

/// What a request run measured once its time was up.
struct Measured {
    elapsed: f64,
    done: u64,
    errors: u64,
    bytes: u64,
    /// Every successful request's latency in microseconds, sorted.
    latencies: Vec<u32>,
}

/// Lets `workers` run for `duration`, then raises `stop`, reads the tally and collects the
/// workers' latencies (each worker finishes the request it has in flight).
async fn measure(
    duration: Duration,
    tally: &Tally,
    stop: &AtomicBool,
    workers: Vec<JoinHandle<Vec<u32>>>,
) -> Measured {
    let started = Instant::now();
    tokio::time::sleep(duration).await;
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
    Measured {
        elapsed,
        done,
        errors,
        bytes,
        latencies,
    }
}

impl Measured {
    /// The `p` quantile (0..=1) of the latencies, in milliseconds (0 when none).
    fn percentile_ms(&self, p: f64) -> f64 {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }

    /// Prints the human line and the `RESULT` line; an error when no request succeeded.
    fn report(&self, mode: &str, what: &str) -> Result<(), Failure> {
        let Measured {
            elapsed,
            done,
            errors,
            bytes,
            ..
        } = *self;
        let (p50, p99) = (self.percentile_ms(0.5), self.percentile_ms(0.99));
        let rate = done as f64 / elapsed;
        println!(
            "{done} requests in {elapsed:.2} s = {rate:.1} req/s, {:.1} MiB/s, p50 {p50:.2} ms, p99 {p99:.2} ms, {errors} errors ({what})",
            bytes as f64 / elapsed / 1048576.0,
        );
        println!(
            "RESULT mode={mode} rate={rate:.1} p50_ms={p50:.3} p99_ms={p99:.3} errors={errors} requests={done} bytes={bytes}"
        );
        if done == 0 {
            return Err(format!("no request succeeded ({errors} errors)").into());
        }
        Ok(())
    }
}

/// Counts one failed request; prints the first failure of the run.
fn count_error(tally: &Tally, what: impl std::fmt::Display) {
    if tally.errors.fetch_add(1, Ordering::Relaxed) == 0 {
        eprintln!("first request error: {what}");
    }
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
            Ok((false, _)) => count_error(tally, "not a 2xx answer"),
            Err(e) => {
                count_error(tally, e);
                break;
            }
        }
    }
    latencies
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fbload: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
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
            Mode::H3 {
                target,
                path,
                streams,
            } => h3::run(target, path, streams).await,
        }
    })
}
