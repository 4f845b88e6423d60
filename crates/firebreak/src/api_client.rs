//! The CLI's client for the control plane's API, and the exit codes scripts can rely on.

use bytes::Bytes;
use firebreak_protocol::api::ApiError;
use firebreak_protocol::client::{ClientError, HttpClient};
use http::{header, Method, Request, StatusCode};
use http_body_util::Full;
use std::time::Duration;

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

/// Largest answer read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client: HttpClient::new(Duration::from_secs(3)),
        }
    }

    /// Sends a request; returns the body of a 2xx answer, or a [`Failed`] naming the error
    /// (with every located configuration error, one per line).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, Failed> {
        let uri = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failed::new(exit::USAGE, format!("bad control-plane URL {uri}: {e}")))?;
        let (status, bytes) = self
            .client
            .exchange(req, MAX_ANSWER, Duration::from_secs(60))
            .await
            .map_err(|e| {
                let message = match e {
                    ClientError::Unreachable(e) => {
                        format!("control plane at {} unreachable: {e}", self.base)
                    }
                    ClientError::Timeout(_) => "control plane did not answer within 60 s".into(),
                    other => other.to_string(),
                };
                Failed::new(exit::UNAVAILABLE, message)
            })?;
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
