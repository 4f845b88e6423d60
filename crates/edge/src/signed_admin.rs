//! What the admin listener needs to accept requests signed by the control plane (purge
//! fan-out) only once, only for this edge, and only before they expire: this edge's id, and
//! the nonces of the signed requests it accepted, each kept until its request expires.
//!
//! The nonce set is bounded ([`MAX_NONCES`]): expired nonces are dropped first; when it is
//! still full, new signed requests are refused (`busy`) until some expire — a signed request
//! lives at most [`MAX_REQUEST_LIFE_MS`], so that lasts a minute at most and needs more than a
//! thousand genuine signed requests a second, while accepting one would open a replay.
//! Also carries the agent's staleness, shown on `/healthz`.

pub use firebreak_protocol::signed::MAX_REQUEST_LIFE_MS;
use firebreak_protocol::signed::{
    verify_request, Refusal, RequestAuth, AUDIENCE_HEADER, EXPIRES_HEADER, NONCE_HEADER,
    SIGNATURE_HEADER,
};
use http::HeaderMap;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Most nonces remembered at once.
pub const MAX_NONCES: usize = 65_536;

/// Nonces of accepted signed requests, each until its request's expiry.
#[derive(Debug)]
pub struct NonceCache {
    capacity: usize,
    inner: Mutex<Nonces>,
}

#[derive(Debug, Default)]
struct Nonces {
    by_nonce: HashMap<String, u64>,
    by_expiry: BTreeSet<(u64, String)>,
}

impl NonceCache {
    /// A cache holding at most `capacity` nonces.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Nonces::default()),
        }
    }

    /// Records `nonce` (valid until `expires_at_ms`) if it was not seen; refuses a replay, or
    /// any new nonce while the cache is full of unexpired ones.
    pub fn accept(&self, nonce: &str, expires_at_ms: u64, now_ms: u64) -> Result<(), Refusal> {
        let Ok(mut n) = self.inner.lock() else {
            return Err(Refusal::Busy);
        };
        while let Some(first) = n.by_expiry.first().cloned() {
            if first.0 > now_ms {
                break;
            }
            n.by_expiry.remove(&first);
            n.by_nonce.remove(&first.1);
        }
        if n.by_nonce.contains_key(nonce) {
            return Err(Refusal::Replay);
        }
        if n.by_nonce.len() >= self.capacity {
            return Err(Refusal::Busy);
        }
        n.by_nonce.insert(nonce.to_owned(), expires_at_ms);
        n.by_expiry.insert((expires_at_ms, nonce.to_owned()));
        Ok(())
    }

    /// Nonces held.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|n| n.by_nonce.len()).unwrap_or(0)
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// This edge as the control plane addresses it.
#[derive(Debug)]
pub struct ControlLink {
    /// The edge id signed requests must name.
    pub edge_id: String,
    nonces: NonceCache,
    stale: Mutex<Option<String>>,
}

/// A signed request, checked: `Ok` when it may proceed; `Err` when it carried a signature
/// that must be refused (and was counted). `None` when it carried no signature.
pub type Checked = Option<Result<(), Refusal>>;

impl ControlLink {
    /// A link for edge `edge_id`.
    pub fn new(edge_id: &str) -> Self {
        Self {
            edge_id: edge_id.to_owned(),
            nonces: NonceCache::new(MAX_NONCES),
            stale: Mutex::new(None),
        }
    }

    /// Checks a request signed by the control plane (`key`) against this edge: signature,
    /// audience, expiry, then its nonce (remembered on success). Refusals are counted in
    /// `firebreak_signed_refused_total{kind, reason}`.
    pub fn check(
        &self,
        key: &(impl firebreak_protocol::keyring::Verify + ?Sized),
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        now_ms: u64,
    ) -> Checked {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let signature = header(SIGNATURE_HEADER)?;
        let kind = if path_and_query.starts_with("/purge/") {
            "purge"
        } else {
            "admin"
        };
        let result = (|| {
            let auth = RequestAuth {
                audience: header(AUDIENCE_HEADER).unwrap_or("").to_owned(),
                nonce: header(NONCE_HEADER).unwrap_or("").to_owned(),
                expires_at_ms: header(EXPIRES_HEADER)
                    .and_then(|v| v.parse().ok())
                    .ok_or(Refusal::Signature)?,
                signature: signature.to_owned(),
            };
            verify_request(key, method, path_and_query, &auth, &self.edge_id, now_ms)?;
            self.nonces.accept(&auth.nonce, auth.expires_at_ms, now_ms)
        })();
        if let Err(reason) = result {
            tracing::warn!(kind, %reason, path = path_and_query, "signed admin request refused");
            crate::telemetry::signed_refused(kind, reason);
        }
        Some(result)
    }

    /// Why this edge's target is stale, if it is.
    pub fn stale(&self) -> Option<String> {
        self.stale.lock().ok().and_then(|s| s.clone())
    }

    /// Sets (or clears) why this edge's target is stale.
    pub fn set_stale(&self, why: Option<String>) {
        if let Ok(mut s) = self.stale.lock() {
            *s = why;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use firebreak_protocol::keys::ControlKey;
    use firebreak_protocol::signed::sign_request;
    use http::HeaderValue;

    #[test]
    fn nonces_are_single_use_until_expiry_and_bounded() {
        let c = NonceCache::new(3);
        assert_eq!(c.accept("a", 100, 0), Ok(()));
        assert_eq!(c.accept("a", 100, 50), Err(Refusal::Replay));
        assert_eq!(c.accept("b", 200, 50), Ok(()));
        assert_eq!(c.accept("c", 300, 50), Ok(()));
        assert_eq!(c.accept("d", 300, 50), Err(Refusal::Busy), "full: refused");
        assert_eq!(c.len(), 3);
        // `a` expired: forgotten (its request can no longer pass the expiry check), room made.
        assert_eq!(c.accept("d", 300, 100), Ok(()));
        assert_eq!(c.len(), 3);
        assert_eq!(c.accept("d", 300, 150), Err(Refusal::Replay));
        assert_eq!(c.accept("e", 400, 1_000), Ok(()));
        assert_eq!(c.len(), 1);
    }

    fn headers(auth: &firebreak_protocol::signed::RequestAuth) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        h.insert(SIGNATURE_HEADER, v(&auth.signature));
        h.insert(AUDIENCE_HEADER, v(&auth.audience));
        h.insert(NONCE_HEADER, v(&auth.nonce));
        h.insert(EXPIRES_HEADER, v(&auth.expires_at_ms.to_string()));
        h
    }

    #[test]
    fn link_refuses_replays_other_audiences_and_expired_requests() {
        let key = ControlKey::generate().unwrap();
        let p = key.public();
        let link = ControlLink::new("e1");
        let now = 1_000_000;
        let ok = sign_request(&key, "POST", "/purge/all?service=a", "e1", now + 10_000).unwrap();
        let check = |auth, at| link.check(&p, "POST", "/purge/all?service=a", &headers(auth), at);
        assert_eq!(check(&ok, now), Some(Ok(())));
        assert_eq!(check(&ok, now + 1), Some(Err(Refusal::Replay)));
        let other = sign_request(&key, "POST", "/purge/all?service=a", "e2", now + 10_000).unwrap();
        assert_eq!(check(&other, now), Some(Err(Refusal::Audience)));
        let old = sign_request(&key, "POST", "/purge/all?service=a", "e1", now - 1).unwrap();
        assert_eq!(check(&old, now), Some(Err(Refusal::Expired)));
        assert_eq!(
            link.check(&p, "POST", "/purge/all", &HeaderMap::new(), now),
            None
        );
    }
}
