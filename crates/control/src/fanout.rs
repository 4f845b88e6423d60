//! Purge fan-out: one signed admin request to every live edge at once, answered when all have
//! acknowledged or when the deadline passes, naming the edges that did not.
//!
//! Each edge gets its own signature: addressed to it (its id), with a random nonce and an
//! expiry a little after the deadline (never more than a minute away), so a captured request
//! cannot be replayed to the same edge, sent to another edge, or used later. The signatures
//! are made on a blocking thread (one per edge: thousands for a large fleet).

use bytes::Bytes;
use firebreak_protocol::api::{EdgeStatus, PurgeOutcome, Straggler};
use firebreak_protocol::keys::ControlKey;
use firebreak_protocol::signed::{
    sign_request, RequestAuth, AUDIENCE_HEADER, EXPIRES_HEADER, MAX_REQUEST_LIFE_MS, NONCE_HEADER,
    SIGNATURE_HEADER,
};
use http::{Method, Request};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Largest answer read from an edge.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An HTTP client for edges' admin listeners (pooled, keep-alive).
#[derive(Clone)]
pub struct Fanout {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Fanout {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self { client }
    }
}

impl Fanout {
    /// Sends `POST {admin_url}{path_and_query}`, signed with `key`, to every edge, waiting at
    /// most `deadline`.
    pub async fn purge(
        &self,
        key: &ControlKey,
        edges: Vec<EdgeStatus>,
        skipped: Vec<String>,
        path_and_query: &str,
        deadline: Duration,
    ) -> PurgeOutcome {
        let started = Instant::now();
        let life = u64::try_from(deadline.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(5_000)
            .min(MAX_REQUEST_LIFE_MS);
        let expires_at = firebreak_protocol::now_ms().saturating_add(life);
        let asked = edges.len();
        let signing = {
            let (key, pq) = (key.clone(), path_and_query.to_owned());
            tokio::task::spawn_blocking(move || {
                edges
                    .into_iter()
                    .map(|e| {
                        let auth = sign_request(&key, "POST", &pq, &e.id, expires_at);
                        (e, auth)
                    })
                    .collect::<Vec<_>>()
            })
        };
        let signed = match signing.await {
            Ok(signed) => signed,
            Err(e) => {
                tracing::error!(error = %e, "signing purge requests failed");
                Vec::new()
            }
        };
        let mut set = JoinSet::new();
        let mut stragglers = Vec::new();
        for (edge, auth) in signed {
            let auth = match auth {
                Ok(auth) => Arc::new(auth),
                Err(e) => {
                    stragglers.push(Straggler {
                        id: edge.id,
                        error: format!("request not signed: {e}"),
                    });
                    continue;
                }
            };
            let Some(base) = edge.report.admin_url.clone() else {
                stragglers.push(Straggler {
                    id: edge.id,
                    error: "has no admin listener".into(),
                });
                continue;
            };
            let client = self.client.clone();
            let uri = format!("{}{path_and_query}", base.trim_end_matches('/'));
            set.spawn(async move {
                let result = tokio::time::timeout(deadline, send(&client, &uri, &auth))
                    .await
                    .unwrap_or_else(|_| Err("no acknowledgement before the deadline".into()));
                (edge.id, result)
            });
        }
        let mut acknowledged = Vec::new();
        let mut purged = 0;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((id, Ok(n))) => {
                    purged += n;
                    acknowledged.push(id);
                }
                Ok((id, Err(error))) => stragglers.push(Straggler { id, error }),
                Err(e) => tracing::error!(error = %e, "purge task failed"),
            }
        }
        acknowledged.sort();
        stragglers.sort_by(|a, b| a.id.cmp(&b.id));
        PurgeOutcome {
            edges: asked,
            acknowledged,
            stragglers,
            skipped,
            purged,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &str,
    auth: &RequestAuth,
) -> Result<u64, String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(SIGNATURE_HEADER, &auth.signature)
        .header(AUDIENCE_HEADER, &auth.audience)
        .header(NONCE_HEADER, &auth.nonce)
        .header(EXPIRES_HEADER, auth.expires_at_ms.to_string())
        .body(Empty::new())
        .map_err(|e| format!("bad admin URL {uri}: {e}"))?;
    let resp = client.request(req).await.map_err(|e| format!("{e:#}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status.is_success() {
        Ok(value.get("purged").and_then(|v| v.as_u64()).unwrap_or(0))
    } else {
        let msg = value
            .get("error")
            .and_then(|v| v.as_str())
            .unwrap_or("no reason given");
        Err(format!("edge answered {status}: {msg}"))
    }
}
