//! `fbload h3`: keep-alive GETs over HTTP/3 with quinn + h3 + h3-quinn as the client.
//!
//! `--conns` QUIC connections, each from its own UDP socket (its own client endpoint, as
//! separate clients would be), each with `--streams` request streams in a loop: open a
//! bidirectional stream, send the GET and finish, read the response head and the whole body,
//! count, next. TLS 1.3 only with ALPN `h3`, the server verified against `--ca` for `--sni`.
//! Connections are opened at once; one that does not complete its handshake within
//! [`CONNECT_TIMEOUT`] counts as an error and the run goes on with the others (none at all:
//! a clear error, exit non-zero). A request that fails or takes longer than
//! [`REQUEST_TIMEOUT`] counts as an error; a stream error leaves the stream's loop going, a
//! connection error ends the loops of that connection.

use crate::{client_config, count_error, measure, Failure, Measured, Tally, Target};
use bytes::{Buf, Bytes};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a QUIC + TLS handshake and the HTTP/3 setup may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request (head and whole body) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC idle timeout offered by the client.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the closing connections may take to tell the server at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// H3_NO_ERROR: the application error code of a clean close.
const H3_NO_ERROR: u32 = 0x100;

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// One established HTTP/3 connection: its endpoint (socket) and what sends requests on it.
struct Client {
    endpoint: quinn::Endpoint,
    quic: quinn::Connection,
    send: SendRequest,
}

/// Runs the `h3` mode (see the module documentation) and prints its result.
pub(crate) async fn run(target: Target, path: String, streams: usize) -> Result<(), Failure> {
    let (measured, what) = load(&target, &path, streams).await?;
    measured.report("h3", &what)
}

/// Loads the server for the run's duration; what was measured, and the human description of
/// the run's shape.
async fn load(target: &Target, path: &str, streams: usize) -> Result<(Measured, String), Failure> {
    let duration = target.checked(streams)?;
    if target.tls12 {
        return Err("--tls12: HTTP/3 runs on QUIC, which is TLS 1.3 only".into());
    }
    let quic_config = quic_client_config(target)?;
    let uri: http::Uri = format!("https://{}{}", target.sni, path).parse()?;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));

    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..target.conns {
        let (addr, sni, config) = (target.addr, target.sni.clone(), quic_config.clone());
        connecting.spawn(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, connect(addr, &sni, config)).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "no HTTP/3 answer from {addr} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )
                .into()),
            }
        });
    }
    let mut clients = Vec::with_capacity(target.conns);
    let mut first_failure = None;
    while let Some(joined) = connecting.join_next().await {
        match joined {
            Ok(Ok(client)) => clients.push(client),
            Ok(Err(e)) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                first_failure.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if let Some(e) = &first_failure {
        if clients.is_empty() {
            return Err(format!("no HTTP/3 connection to {}: {e}", target.addr).into());
        }
        eprintln!(
            "{} of {} HTTP/3 connections failed, first: {e}",
            target.conns - clients.len(),
            target.conns
        );
    }

    let mut workers = Vec::with_capacity(clients.len() * streams);
    for client in &clients {
        for _ in 0..streams {
            let (send, uri, tally, stop) = (
                client.send.clone(),
                uri.clone(),
                tally.clone(),
                stop.clone(),
            );
            workers.push(tokio::spawn(async move {
                request_loop(send, &uri, &tally, &stop).await
            }));
        }
    }
    let established = clients.len();
    let measured = measure(duration, &tally, &stop, workers).await;
    close(clients).await;
    let what = if established == target.conns {
        format!("{established} conns, h3 x{streams}")
    } else {
        format!("{established} of {} conns, h3 x{streams}", target.conns)
    };
    Ok((measured, what))
}

/// quinn's client configuration: the TLS 1.3 client configuration of the other modes
/// (ring provider, `--ca` roots) with ALPN `h3`, and a bounded idle timeout.
fn quic_client_config(target: &Target) -> Result<quinn::ClientConfig, Failure> {
    let tls = client_config(target, &[b"h3"])?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into()?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Opens one QUIC connection from a fresh endpoint and sets up HTTP/3 on it; the h3
/// connection driver runs as its own task until the connection closes.
async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: quinn::ClientConfig,
) -> Result<Client, Failure> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(local)?;
    endpoint.set_default_client_config(config);
    let quic = endpoint.connect(addr, sni)?.await?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone())).await?;
    tokio::spawn(async move {
        let _closed = driver.wait_idle().await;
    });
    Ok(Client {
        endpoint,
        quic,
        send,
    })
}

/// What ended one request that did not succeed.
enum Failed {
    /// This request only: count it, send the next.
    Request(String),
    /// The connection is gone: count it, stop this stream's loop.
    Connection(String),
}

/// GETs `uri` on `send`'s connection until `stop`; returns each successful request's latency
/// in microseconds.
async fn request_loop(
    mut send: SendRequest,
    uri: &http::Uri,
    tally: &Tally,
    stop: &AtomicBool,
) -> Vec<u32> {
    let mut latencies = Vec::with_capacity(1 << 14);
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, one_request(&mut send, uri)).await
        {
            Ok(result) => result,
            Err(_) => Err(Failed::Request(format!(
                "no whole answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        };
        match result {
            Ok(len) => {
                tally.done.fetch_add(1, Ordering::Relaxed);
                tally.bytes.fetch_add(len, Ordering::Relaxed);
                latencies.push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Err(Failed::Request(e)) => count_error(tally, e),
            Err(Failed::Connection(e)) => {
                count_error(tally, e);
                break;
            }
        }
    }
    latencies
}

/// One GET: request head, finish, response head, whole body; the body's length when the
/// status is 2xx.
async fn one_request(send: &mut SendRequest, uri: &http::Uri) -> Result<u64, Failed> {
    let req = http::Request::get(uri.clone())
        .body(())
        .map_err(|e| Failed::Request(e.to_string()))?;
    let mut stream = send.send_request(req).await.map_err(classify)?;
    stream.finish().await.map_err(classify)?;
    let resp = stream.recv_response().await.map_err(classify)?;
    let mut len = 0u64;
    while let Some(chunk) = stream.recv_data().await.map_err(classify)? {
        len = len.saturating_add(chunk.remaining() as u64);
    }
    if resp.status().is_success() {
        Ok(len)
    } else {
        Err(Failed::Request(format!("status {}", resp.status())))
    }
}

/// Sorts an h3 stream error into one that ends only this request or the whole connection.
fn classify(e: h3::error::StreamError) -> Failed {
    match e {
        h3::error::StreamError::ConnectionError { .. }
        | h3::error::StreamError::RemoteClosing { .. } => Failed::Connection(e.to_string()),
        _ => Failed::Request(e.to_string()),
    }
}

/// Closes every connection (H3_NO_ERROR) and waits, bounded, for the close to be sent, so the
/// server does not keep them until its idle timeout.
async fn close(clients: Vec<Client>) {
    for client in &clients {
        client
            .quic
            .close(quinn::VarInt::from_u32(H3_NO_ERROR), b"done");
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        for client in &clients {
            client.endpoint.wait_idle().await;
        }
    })
    .await;
    drop(clients);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The client against a real HTTP/3 server in the test (quinn + h3, a self-signed
    //! certificate generated at run time), and against nothing.
    use super::*;
    use std::path::PathBuf;

    const BODY: usize = 1024;

    struct Server {
        addr: SocketAddr,
        ca: PathBuf,
        _dir: TempDir,
    }

    /// A directory removed on drop (no tempfile crate in the workspace).
    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// An HTTP/3 server on 127.0.0.1:0 answering every GET with `status` and BODY bytes.
    async fn server(status: http::StatusCode) -> Server {
        let certified = rcgen::generate_simple_self_signed(vec!["bench.test".to_string()]).unwrap();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fbload-h3-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let mut tls =
            rustls::ServerConfig::builder_with_provider(firebreak_protocol::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![certified.cert.der().clone()], key)
                .unwrap();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let Ok(mut h3) =
                        h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn))
                            .await
                    else {
                        return;
                    };
                    while let Ok(Some(resolver)) = h3.accept().await {
                        tokio::spawn(async move {
                            let Ok((_req, mut stream)) = resolver.resolve_request().await else {
                                return;
                            };
                            let resp = http::Response::builder().status(status).body(()).unwrap();
                            if stream.send_response(resp).await.is_ok()
                                && stream.send_data(Bytes::from(vec![7u8; BODY])).await.is_ok()
                            {
                                let _ = stream.finish().await;
                            }
                        });
                    }
                });
            }
        });
        Server {
            addr,
            ca,
            _dir: TempDir(dir),
        }
    }

    fn target(addr: SocketAddr, ca: PathBuf, conns: usize) -> Target {
        Target {
            addr,
            sni: "bench.test".to_string(),
            ca,
            conns,
            duration: 0.5,
            tls12: false,
        }
    }

    #[tokio::test]
    async fn counts_whole_bodies_over_several_connections_and_streams() {
        let server = server(http::StatusCode::OK).await;
        let (measured, what) = load(&target(server.addr, server.ca.clone(), 3), "/1k", 4)
            .await
            .unwrap();
        assert!(measured.done > 0, "no request succeeded");
        assert_eq!(measured.errors, 0);
        assert_eq!(measured.bytes, measured.done * BODY as u64);
        assert_eq!(what, "3 conns, h3 x4");
        measured.report("h3", &what).unwrap();
    }

    #[tokio::test]
    async fn a_non_2xx_answer_is_an_error_and_a_run_without_success_fails() {
        let server = server(http::StatusCode::NOT_FOUND).await;
        let (measured, what) = load(&target(server.addr, server.ca.clone(), 1), "/", 2)
            .await
            .unwrap();
        assert_eq!(measured.done, 0);
        assert!(measured.errors > 0);
        assert!(measured.report("h3", &what).is_err());
    }

    #[tokio::test]
    async fn no_server_is_a_clear_error_within_the_connect_timeout() {
        let server = server(http::StatusCode::OK).await;
        // A UDP port nobody serves: bind one, read its address, close it.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        drop(silent);
        // Returns (after CONNECT_TIMEOUT) instead of waiting for an answer that never comes.
        let err = load(&target(addr, server.ca.clone(), 2), "/", 1)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no HTTP/3 connection"), "{err}");
        assert!(err.contains("no HTTP/3 answer"), "{err}");
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_fails_the_connection() {
        let server = server(http::StatusCode::OK).await;
        let mut t = target(server.addr, server.ca.clone(), 1);
        t.sni = "other.test".to_string();
        let err = load(&t, "/", 1).await.err().unwrap().to_string();
        assert!(err.contains("no HTTP/3 connection"), "{err}");
    }
}
