//! The edge's HTTP client for the control plane's API: long-poll the target, download a
//! bundle (size-bounded), report; read the POPs' health (for DNS servers).

use bytes::Bytes;
use firebreak_protocol::api::EdgeReport;
use firebreak_protocol::bundle::MAX_BUNDLE_BYTES;
use firebreak_protocol::client::{ClientError, HttpClient};
use firebreak_protocol::signed::{Signed, MAX_STATEMENT_BYTES};
use http::{header, Method, Request, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The target as the control plane sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct PolledTarget {
    /// Sequence number (unverified; the signed payload carries the trusted one).
    pub seq: u64,
    /// The signed statement.
    pub signed: Signed,
}

/// A client bound to one control plane and edge id.
#[derive(Clone)]
pub struct ControlClient {
    base: String,
    token: String,
    id: String,
    client: HttpClient,
    /// One report in flight at a time (shared by clones): see [`ControlClient::report_with`].
    report_turn: Arc<tokio::sync::Mutex<()>>,
    /// The edge's own credential (joined with `token`, the join token); without it every
    /// call carries `token` itself.
    identity: Option<Arc<super::identity::Identity>>,
}

impl ControlClient {
    /// A client for the API at `base` (`http://host:port`).
    pub fn new(base: &str, token: &str, id: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            id: id.to_owned(),
            client: HttpClient::new(Duration::from_secs(2)),
            report_turn: Arc::new(tokio::sync::Mutex::new(())),
            identity: None,
        }
    }

    /// Calls go through `client` (e.g. one trusting the fleet's CA: [`super::control_ca`]).
    pub fn with_http(mut self, client: HttpClient) -> Self {
        self.client = client;
        self
    }

    /// Calls carry the edge's own credential, joining first (see [`super::identity`]).
    pub fn with_identity(mut self, identity: super::identity::Identity) -> Self {
        self.identity = Some(Arc::new(identity));
        self
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let Some(identity) = &self.identity else {
            return self
                .call_as(&self.token, method, path, body, limit, timeout)
                .await;
        };
        let credential = identity.credential(self).await?;
        let answer = self
            .call_as(&credential, method, path, body, limit, timeout)
            .await?;
        if answer.0 == StatusCode::UNAUTHORIZED {
            identity.refused(&credential).await;
        }
        Ok(answer)
    }

    /// One exchange with `bearer` as the token.
    pub(crate) async fn call_as(
        &self,
        bearer: &str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let uri = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("bad control-plane URL {uri}: {e}"))?;
        self.client
            .exchange(req, limit, timeout)
            .await
            .map_err(|e| match e {
                ClientError::Unreachable(e) => format!("control plane unreachable: {e}"),
                ClientError::Untrusted(e) => {
                    format!("control plane certificate not trusted: {e}")
                }
                ClientError::Tls(e) => format!("control plane TLS handshake failed: {e}"),
                ClientError::Timeout(t) => {
                    format!("control plane did not answer within {} s", t.as_secs())
                }
                other => other.to_string(),
            })
    }

    /// Waits up to `wait` for a target for this edge (in `cell`) newer than `after` (the
    /// `(epoch, seq)` of the newest verified); at the end of the wait the control plane
    /// answers the current target, signed afresh.
    pub async fn poll(
        &self,
        after: (u64, u64),
        cell: &str,
        wait: Duration,
    ) -> Result<Option<PolledTarget>, String> {
        let cell: String = form_urlencoded::byte_serialize(cell.as_bytes()).collect();
        let (epoch, seq) = after;
        let path = format!(
            "/v1/edges/{}/target?after={seq}&epoch={epoch}&cell={cell}&wait_ms={}",
            self.id,
            wait.as_millis()
        );
        let (status, body) = self
            .call(
                Method::GET,
                &path,
                None,
                MAX_STATEMENT_BYTES * 2,
                wait + Duration::from_secs(10),
            )
            .await?;
        match status {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| format!("malformed target: {e}")),
            s => Err(format!(
                "control plane answered {s}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// Downloads a version's sealed bundle.
    pub async fn bundle(&self, version: u64) -> Result<Bytes, String> {
        let path = format!("/v1/versions/{version}/bundle");
        let (status, body) = self
            .call(
                Method::GET,
                &path,
                None,
                MAX_BUNDLE_BYTES,
                Duration::from_secs(30),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(format!(
                "downloading version {version}: control plane answered {status}"
            ));
        }
        Ok(body)
    }

    /// Sends `value` as JSON and expects a success status; `what` names it in errors.
    async fn send_json<T: serde::Serialize>(
        &self,
        method: Method,
        path: &str,
        value: &T,
        what: &str,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        let (status, body) = self
            .call(method, path, Some(body), 64 * 1024, Duration::from_secs(5))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "{what} refused ({status}): {}",
                String::from_utf8_lossy(&body)
            ))
        }
    }

    /// Sends the health counts of the running version.
    pub async fn health(
        &self,
        report: &firebreak_protocol::health::HealthReport,
    ) -> Result<(), String> {
        let path = format!("/v1/edges/{}/health", self.id);
        self.send_json(Method::POST, &path, report, "health report")
            .await
    }

    /// Sends the report `build` makes, built only once the previous report of this edge was
    /// answered. The control plane keeps the last report it received, so two reports in flight
    /// at once (a heartbeat and the report of a new version) could arrive in either order, and
    /// a heartbeat built before the change could overwrite the change's report until the next
    /// heartbeat; a rollout's wave then waits a whole heartbeat for an edge that already
    /// applied its version.
    pub async fn report_with(&self, build: impl FnOnce() -> EdgeReport) -> Result<(), String> {
        let _turn = self.report_turn.lock().await;
        self.report(&build()).await
    }

    /// The control plane's key-set statements newer than generation `after`, oldest first
    /// (unverified: see [`super::trust::TrustStore`]).
    pub async fn keys(
        &self,
        after: u64,
    ) -> Result<Vec<firebreak_protocol::keyring::KeySetStatement>, String> {
        use firebreak_protocol::keyring::{KeyChain, MAX_CHAIN, MAX_KEY_SET_BYTES};
        let path = format!("/v1/keys?after={after}");
        let limit = MAX_CHAIN * (MAX_KEY_SET_BYTES + 4096);
        let (status, body) = self
            .call(Method::GET, &path, None, limit, Duration::from_secs(10))
            .await?;
        if status != StatusCode::OK {
            return Err(format!(
                "key sets: control plane answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice::<KeyChain>(&body)
            .map(|c| c.chain)
            .map_err(|e| format!("malformed key chain: {e}"))
    }

    /// Sends a report (use [`ControlClient::report_with`] where reports may overlap).
    pub async fn report(&self, report: &EdgeReport) -> Result<(), String> {
        if let Some(identity) = &self.identity {
            // The admin URL purges go to is declared at (re-)join, never by a report.
            if let Err(e) = identity.declare(self, report).await {
                tracing::warn!(error = %e, "admin address not declared to the control plane");
            }
        }
        let path = format!("/v1/edges/{}", self.id);
        self.send_json(Method::PUT, &path, report, "report").await
    }
}

impl ControlClient {
    /// Each POP's health as the control plane sees it from its edges' reports
    /// (`GET /v1/pops`), read with this member's own credential; the answer is bounded to
    /// [`firebreak_protocol::api::MAX_POP_HEALTH_BYTES`]. DNS servers steer by it.
    pub async fn pop_health(&self) -> Result<firebreak_protocol::api::PopHealthList, String> {
        use firebreak_protocol::api::MAX_POP_HEALTH_BYTES;
        let (status, body) = self
            .call(
                Method::GET,
                "/v1/pops",
                None,
                MAX_POP_HEALTH_BYTES,
                Duration::from_secs(10),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(format!(
                "POP health: control plane answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("malformed POP health: {e}"))
    }

    /// The fleet's tier secret (`GET /v1/edges/{id}/tier`, this edge's own credential),
    /// bounded to [`firebreak_protocol::api::MAX_TIER_SECRET_ANSWER_BYTES`]. The answer's body
    /// is never put in an error.
    pub async fn tier_secret(&self) -> Result<firebreak_protocol::tier::TierSecret, String> {
        use firebreak_protocol::api::{TierSecretAnswer, MAX_TIER_SECRET_ANSWER_BYTES};
        let path = format!("/v1/edges/{}/tier", self.id);
        let (status, body) = self
            .call(
                Method::GET,
                &path,
                None,
                MAX_TIER_SECRET_ANSWER_BYTES,
                Duration::from_secs(10),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(format!("tier secret: control plane answered {status}"));
        }
        let answer: TierSecretAnswer =
            serde_json::from_slice(&body).map_err(|_| "malformed tier secret answer".to_owned())?;
        firebreak_protocol::tier::TierSecret::from_hex(&answer.secret)
    }

    /// Downloads a secret document (a private key, PEM) this edge's versions name, bounded to
    /// [`firebreak_protocol::secrets::MAX_KEY_PEM_BYTES`]. The answer's body is never put in
    /// an error.
    pub async fn secret(&self, sha256: &str) -> Result<Bytes, String> {
        let path = format!("/v1/edges/{}/secrets/{sha256}", self.id);
        let (status, body) = self
            .call(
                Method::GET,
                &path,
                None,
                firebreak_protocol::secrets::MAX_KEY_PEM_BYTES,
                Duration::from_secs(10),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(format!("control plane answered {status}"));
        }
        Ok(body)
    }
}
