//! The CLI's client for the control plane's API, and the exit codes scripts can rely on.

use bytes::Bytes;
use firebreak_protocol::api::ApiError;
use firebreak_protocol::client::{ClientError, HttpClient};
use http::{header, Method, Request, StatusCode};
use http_body_util::Full;
use std::path::Path;
use std::time::Duration;

/// Reads the CA bundle at `file` (at most [`firebreak_protocol::client::MAX_CA_BUNDLE_BYTES`]).
fn read_ca(file: &Path) -> Result<Vec<u8>, Failed> {
    use std::io::Read;
    let limit = firebreak_protocol::client::MAX_CA_BUNDLE_BYTES;
    let usage = |e: String| Failed::new(exit::USAGE, format!("--ca {}: {e}", file.display()));
    let mut pem = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut pem))
        .map_err(|e| usage(e.to_string()))?;
    if pem.len() > limit {
        return Err(usage(format!("larger than the limit of {limit} bytes")));
    }
    Ok(pem)
}

/// Exit codes of the client commands.
pub mod exit {
    /// The control plane refused the request (invalid configuration, unknown version, …).
    pub const REFUSED: u8 = 1;
    /// Wrong command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// Done in part: a purge some edges did not acknowledge.
    pub const PARTIAL: u8 = 3;
    /// The control plane could not be reached, or its store is unavailable.
    pub const UNAVAILABLE: u8 = 4;
}

/// A failed call: the message to print and the exit code.
pub struct Failed {
    /// What to print.
    pub message: String,
    /// Exit code.
    pub code: u8,
}

impl Failed {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
        }
    }
}

/// The API at one base URL with one bearer token.
pub struct Api {
    base: String,
    token: String,
    client: HttpClient,
}

/// Longest wait between two attempts of [`Api::call_idempotent`].
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The body of a 2xx answer, or a [`Failed`] naming the error (with every located
/// configuration error, one per line).
fn answer(status: StatusCode, bytes: Bytes) -> Result<Bytes, Failed> {
    if status.is_success() {
        return Ok(bytes);
    }
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE => exit::UNAVAILABLE,
        _ => exit::REFUSED,
    };
    let message = match serde_json::from_slice::<ApiError>(&bytes) {
        Ok(e) => {
            let mut m = e.error;
            for fe in &e.errors {
                m.push('\n');
                m.push_str(&fe.to_string());
            }
            m
        }
        Err(_) => format!("{status}: {}", String::from_utf8_lossy(&bytes)),
    };
    Err(Failed::new(code, message))
}

/// Largest answer read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// How long a connection to the control plane may take to establish.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Api {
    /// The API at `base`; an `https://` base is verified against webpki-roots.
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client: HttpClient::new(CONNECT_TIMEOUT),
        }
    }

    /// The API at `base`, an `https://` base verified against the CA bundle (PEM) in `ca`
    /// only (`--ca FILE`, `FIREBREAK_CA`), or webpki-roots without one.
    pub fn with_ca(base: &str, token: &str, ca: Option<&Path>) -> Result<Self, Failed> {
        let Some(file) = ca else {
            return Ok(Self::new(base, token));
        };
        let pem = read_ca(file)?;
        let client = HttpClient::with_ca(CONNECT_TIMEOUT, Some(&pem))
            .map_err(|e| Failed::new(exit::USAGE, format!("--ca {}: {e}", file.display())))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client,
        })
    }

    /// Sends a request; returns the body of a 2xx answer, or a [`Failed`] naming the error
    /// (with every located configuration error, one per line).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, Failed> {
        let (status, bytes) = self.exchange(method, path, body, None, MAX_ANSWER).await?;
        answer(status, bytes)
    }

    /// [`Api::call`] without a body, reading an answer of up to `limit` bytes.
    pub async fn call_limited(
        &self,
        method: Method,
        path: &str,
        limit: usize,
    ) -> Result<Bytes, Failed> {
        let (status, bytes) = self.exchange(method, path, None, None, limit).await?;
        answer(status, bytes)
    }

    /// One request and its answer; a transport failure (unreachable, no answer in time) is a
    /// [`Failed`] with [`exit::UNAVAILABLE`].
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), Failed> {
        let uri = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = idempotency_key {
            req = req.header("idempotency-key", key);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failed::new(exit::USAGE, format!("bad control-plane URL {uri}: {e}")))?;
        self.client
            .exchange(req, limit, Duration::from_secs(60))
            .await
            .map_err(|e| {
                let message = match e {
                    ClientError::Unreachable(e) => {
                        format!("control plane at {} unreachable: {e}", self.base)
                    }
                    ClientError::Timeout(_) => "control plane did not answer within 60 s".into(),
                    // Not worth a retry: the same certificate answers next time.
                    ClientError::Untrusted(e) => {
                        return Failed::new(
                            exit::REFUSED,
                            format!(
                                "control plane certificate not trusted: {e} (the fleet's CA: --ca FILE or FIREBREAK_CA)"
                            ),
                        )
                    }
                    ClientError::Tls(e) => {
                        return Failed::new(
                            exit::REFUSED,
                            format!("control plane at {}: TLS handshake failed: {e}", self.base),
                        )
                    }
                    other => other.to_string(),
                };
                Failed::new(exit::UNAVAILABLE, message)
            })
    }

    /// A write made safe to retry by an idempotency key: sent with `Idempotency-Key: key`
    /// and tried again, up to `retries` more times with exponential backoff and full jitter
    /// (`backoff`, doubling, at most [`MAX_BACKOFF`]), while the control plane is unreachable or
    /// answers 5xx. The control plane stores at most one version per key, so a retry of a write
    /// that was stored but whose answer was lost answers that version. Returns the status and
    /// body of the final 2xx answer and the number of attempts made.
    pub async fn call_idempotent(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        key: &str,
        retries: u32,
        backoff: Duration,
    ) -> Result<(StatusCode, Bytes, u32), Failed> {
        let mut attempt = 0u32;
        let mut wait = backoff;
        loop {
            attempt += 1;
            let outcome = self
                .exchange(
                    method.clone(),
                    path,
                    Some(body.clone()),
                    Some(key),
                    MAX_ANSWER,
                )
                .await;
            let retry = match &outcome {
                Err(f) => f.code == exit::UNAVAILABLE,
                Ok((status, _)) => status.is_server_error(),
            };
            if !retry || attempt > retries {
                let (status, bytes) = outcome?;
                return answer(status, bytes).map(|b| (status, b, attempt));
            }
            let why = match &outcome {
                Err(f) => f.message.clone(),
                Ok((status, _)) => status.to_string(),
            };
            let mut r = [0u8; 4];
            let _ = getrandom::fill(&mut r);
            let jittered = wait.mul_f64(f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX));
            eprintln!(
                "attempt {attempt} failed ({why}); retrying in {} ms with the same idempotency key",
                jittered.as_millis()
            );
            tokio::time::sleep(jittered).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }

    /// [`Api::call`] and parse JSON.
    pub async fn json<T: for<'de> serde::Deserialize<'de>>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, Failed> {
        let bytes = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Failed::new(exit::UNAVAILABLE, format!("unexpected answer: {e}")))
    }
}
