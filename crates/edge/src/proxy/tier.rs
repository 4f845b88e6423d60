//! Where a fill's request goes: the object's home among the service's shield POP's edges
//! when the service has a shield and this edge is not that home, else the origin. The fetch calls [`RequestCtx::send_fill`] for the origin
//! request of a fill and for revalidations alike, so stale-* and coalescing work the same
//! at both tiers (each edge runs its own).
//!
//! Order: the object's rendezvous order over the shield's live edges (unreachable ones
//! skipped for a while), at most `MAX_SHIELD_ATTEMPTS`, then the origin directly. Only a
//! shield edge that cannot be asked (no connection, no answer in time, a broken answer) moves
//! the request on; an answer, 5xx included, is the shield's answer (it went to the origin
//! for it; asking the origin again would double the load on a failing origin), and
//! stale-if-error applies to it here as to an origin's. Except 421: a shield edge that does not
//! serve the host (still on the previous version during a rollout, see
//! `control::rollout::shield`) sends the miss to the origin directly.

use super::RequestCtx;
use crate::error::ProxyError;
use crate::tier::ShieldRoute;
use crate::upstream::shield::key_hash;
use crate::upstream::UpstreamRequest;
use hyper::body::Incoming;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl RequestCtx {
    /// Sends a fill's (or revalidation's) request: to the shield, or to the origin.
    pub(crate) async fn send_fill(
        &self,
        req: &UpstreamRequest,
    ) -> Result<hyper::Response<Incoming>, ProxyError> {
        let route = self
            .svc
            .shield
            .as_deref()
            .and_then(|pop| self.state.tier.shield_for(&self.runtime, pop, self.tier));
        let Some(route) = route else {
            return self.send_upstream(req, None).await;
        };
        match self.ask_shield(req, &route).await {
            Some(resp) => Ok(resp),
            None => {
                metrics::counter!("firebreak_shield_origin_fallback_total", "service" => self.svc.name.clone())
                    .increment(1);
                self.send_upstream(req, None).await
            }
        }
    }

    /// Tries the shield's edges in the object's order; `None` when none could be asked.
    async fn ask_shield(
        &self,
        req: &UpstreamRequest,
        route: &ShieldRoute,
    ) -> Option<hyper::Response<Incoming>> {
        let client = &self.state.shield_client;
        let key = key_hash(&self.svc.name, &self.host, self.path_and_query.as_str());
        // The shield may itself wait for a coalesced fetch, then for the origin.
        let head_timeout = self.svc.pool.idle_timeout()
            + Duration::from_millis(self.runtime.config.cache.coalesce_wait_ms);
        for edge in client.attempts(&route.edges, &route.own, key) {
            let started = Instant::now();
            let result = client
                .send(edge, req, &self.host, &route.secret, head_timeout)
                .await;
            self.trace
                .origin_us
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            match result {
                // The shield does not serve this host (yet): during a rollout its edges run
                // the previous version until the last wave, which may not have the service.
                Ok(resp) if resp.status() == http::StatusCode::MISDIRECTED_REQUEST => {
                    metrics::counter!("firebreak_shield_requests_total", "service" => self.svc.name.clone(), "result" => "misdirected")
                        .increment(1);
                    return None;
                }
                Ok(mut resp) => {
                    if resp.headers().contains_key(http::header::TRANSFER_ENCODING) {
                        resp.headers_mut().remove(http::header::CONTENT_LENGTH);
                    }
                    *resp.version_mut() = http::Version::HTTP_11;
                    self.svc.health.origin(true);
                    metrics::counter!("firebreak_shield_requests_total", "service" => self.svc.name.clone(), "result" => "answered")
                        .increment(1);
                    return Some(resp);
                }
                Err(e) => {
                    client.eject(edge);
                    metrics::counter!("firebreak_shield_requests_total", "service" => self.svc.name.clone(), "result" => "failed")
                        .increment(1);
                    tracing::warn!(
                        request_id = %self.id,
                        service = %self.svc.name,
                        shield = %route.pop,
                        %edge,
                        error = %e,
                        "shield edge failed; trying the next"
                    );
                }
            }
        }
        None
    }
}
