//! The one HTTP client wrapper: the CLI's, the edge agent's (to the control plane) and the
//! purge fan-out's (to edges' admin listeners). Pooled HTTP/1.1 keep-alive, a connect
//! timeout, and every exchange bounded: the whole exchange by a deadline, the answer by a
//! size (a `Content-Length` over it is refused before the body is read).

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection, or the connection failed before an answer.
    #[error("{0}")]
    Unreachable(String),
    /// The answer declared a body over the limit.
    #[error("answer of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The answer's body failed or was over the limit.
    #[error("reading the answer: {0}")]
    Reading(String),
    /// No complete answer within the deadline.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// A pooled HTTP/1.1 client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    /// A client whose connections must be established within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `req` and reads the answer's status and body (at most `limit` bytes), all within
    /// `timeout`.
    pub async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ClientError::Unreachable(format!("{e:#}")))?;
            let status = resp.status();
            if let Some(len) = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
            {
                if len > limit {
                    return Err(ClientError::TooLarge { len, limit });
                }
            }
            let bytes = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| ClientError::Reading(e.to_string()))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}
