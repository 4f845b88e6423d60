//! Purge fan-out: one signed admin request to every live edge at once, answered when all have
//! acknowledged or when the deadline passes, naming the edges that did not.
//!
//! Each edge gets its own signature: addressed to it (its id), with a random nonce and an
//! expiry a little after the deadline (never more than a minute away), so a captured request
//! cannot be replayed to the same edge, sent to another edge, or used later. The signatures
//! are made on a blocking thread (one per edge: thousands for a large fleet).

use firebreak_protocol::api::{EdgeStatus, PurgeOutcome, Straggler};
use firebreak_protocol::client::{ClientError, HttpClient};
use firebreak_protocol::keyring::Sign;
use firebreak_protocol::signed::{
    sign_request, RequestAuth, AUDIENCE_HEADER, EXPIRES_HEADER, MAX_REQUEST_LIFE_MS, NONCE_HEADER,
    SIGNATURE_HEADER,
};
use http::{Method, Request};
use http_body_util::Full;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Largest answer read from an edge.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An HTTP client for edges' admin listeners (pooled, keep-alive).
#[derive(Clone)]
pub struct Fanout {
    client: HttpClient,
}

impl Default for Fanout {
    fn default() -> Self {
        Self {
            client: HttpClient::new(Duration::from_secs(2)),
        }
    }
}

impl Fanout {
    /// Sends `POST {admin_url}{path_and_query}`, signed with `key`, to every edge, waiting at
    /// most `deadline`.
    pub async fn purge(
        &self,
        key: &(impl Sign + Clone + Send + 'static),
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
                let result = send(&client, &uri, &auth, deadline).await;
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
    client: &HttpClient,
    uri: &str,
    auth: &RequestAuth,
    deadline: Duration,
) -> Result<u64, String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(SIGNATURE_HEADER, &auth.signature)
        .header(AUDIENCE_HEADER, &auth.audience)
        .header(NONCE_HEADER, &auth.nonce)
        .header(EXPIRES_HEADER, auth.expires_at_ms.to_string())
        .body(Full::default())
        .map_err(|e| format!("bad admin URL {uri}: {e}"))?;
    let (status, body) = client
        .exchange(req, MAX_ANSWER_BYTES, deadline)
        .await
        .map_err(|e| match e {
            ClientError::Timeout(_) => "no acknowledgement before the deadline".to_owned(),
            other => other.to_string(),
        })?;
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
