//! Keeping targets fresh: every signed target carries `expires_at_ms`, and edges that have
//! nothing yet refuse an expired one (an old target replayed to an empty data directory), while
//! serving edges report themselves stale. The control plane therefore answers every long-poll
//! with its current target signed afresh — including a poll that ends without a change, so an
//! edge whose target does not change still sees a fresh signature every `POLL_WAIT`.
//!
//! Signing per answer would cost one ed25519 signature per edge per poll; instead each stored
//! statement's fresh copy is kept here and signed again only when half of its freshness bound
//! has passed, so 2,000 edges long-polling one target cost one signature per half bound.

use crate::store::StoredTarget;
use firebreak_protocol::signed::{Signed, Target};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Default freshness bound of a target signature: one hour. Long enough to cover clock skew
/// between control plane and edges and a control-plane restart without any edge reporting
/// stale; short enough that a captured target is useless to a replay against a fresh edge
/// after an hour, and that an edge cut off from fresh targets says so within the hour.
pub const DEFAULT_TARGET_FRESHNESS: Duration = Duration::from_secs(3600);
/// Shortest freshness bound accepted.
pub const MIN_TARGET_FRESHNESS: Duration = Duration::from_millis(500);
/// Most fresh copies kept (one per stored statement: the default, cells, edge overrides).
const MAX_FRESH: usize = 4096;

/// Fresh copies of stored target statements, keyed by the stored signature.
pub struct Freshener {
    bound_ms: u64,
    fresh: Mutex<HashMap<String, (u64, StoredTarget)>>,
}

impl Freshener {
    /// Targets signed to stay fresh for `bound`.
    pub fn new(bound: Duration) -> Self {
        Self {
            bound_ms: u64::try_from(bound.max(MIN_TARGET_FRESHNESS).as_millis())
                .unwrap_or(u64::MAX),
            fresh: Mutex::new(HashMap::new()),
        }
    }

    /// The freshness bound, ms.
    pub fn bound_ms(&self) -> u64 {
        self.bound_ms
    }

    /// `stored`, signed again with `epoch` (the state's) and a new expiry when its fresh copy
    /// has used half of its bound. The stored statement is the control plane's own, so its
    /// payload is parsed without verifying. On any failure the stored statement is returned.
    pub fn fresh(
        &self,
        key: &(impl firebreak_protocol::keyring::Sign + ?Sized),
        epoch: u64,
        stored: &StoredTarget,
        now_ms: u64,
    ) -> StoredTarget {
        let half = self.bound_ms / 2;
        let Ok(mut cache) = self.fresh.lock() else {
            return stored.clone();
        };
        if let Some((expires, copy)) = cache.get(&stored.signed.signature) {
            if expires.saturating_sub(now_ms) > half {
                return copy.clone();
            }
        }
        let Ok(mut target) = serde_json::from_str::<Target>(&stored.signed.payload) else {
            return stored.clone();
        };
        if target.epoch == epoch && target.expires_at_ms.saturating_sub(now_ms) > half {
            return stored.clone();
        }
        target.epoch = epoch;
        target.expires_at_ms = now_ms.saturating_add(self.bound_ms);
        let Ok(signed) = Signed::sign(&target, key) else {
            return stored.clone();
        };
        let copy = StoredTarget {
            seq: stored.seq,
            version: stored.version,
            signed,
        };
        if cache.len() >= MAX_FRESH {
            cache.clear();
        }
        cache.insert(
            stored.signed.signature.clone(),
            (target.expires_at_ms, copy.clone()),
        );
        copy
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use firebreak_protocol::keys::ControlKey;
    use firebreak_protocol::signed::EVERYONE;

    fn stored(key: &ControlKey, epoch: u64, expires: u64) -> StoredTarget {
        let t = Target {
            epoch,
            seq: 4,
            expires_at_ms: expires,
            audience: EVERYONE.into(),
            version: 2,
            bundle_sha256: "x".into(),
            rollback: false,
            stage: None,
            rollout: None,
            set_at_ms: 0,
            set_by: "t".into(),
        };
        StoredTarget {
            seq: 4,
            version: 2,
            signed: Signed::sign(&t, key).unwrap(),
        }
    }

    #[test]
    fn re_signs_only_after_half_the_bound_and_with_the_state_epoch() {
        let key = ControlKey::generate().unwrap();
        let f = Freshener::new(Duration::from_secs(10));
        let s = stored(&key, 1, 10_000);
        // Fresh enough as stored.
        assert_eq!(f.fresh(&key, 1, &s, 1_000), s);
        // Past half its bound: signed again, verified, same decision.
        let a = f.fresh(&key, 1, &s, 6_000);
        let t: Target = a.signed.open(&key.public()).unwrap();
        assert_eq!(
            (t.epoch, t.seq, t.version, t.expires_at_ms),
            (1, 4, 2, 16_000)
        );
        // The copy is reused until half of its own bound has passed.
        assert_eq!(f.fresh(&key, 1, &s, 9_000), a);
        let b = f.fresh(&key, 1, &s, 12_000);
        assert_ne!(b, a);
        // Another epoch (a restored store): signed with it.
        let c = f.fresh(&key, 9, &stored(&key, 1, 100_000), 0);
        assert_eq!(c.signed.open::<Target>(&key.public()).unwrap().epoch, 9);
    }
}
