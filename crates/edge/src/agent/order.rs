//! Which signed targets an edge acts on. Targets are ordered by `(epoch, seq)`, never by
//! version (a rollback is a newer target naming an older version):
//!
//! - addressed to another edge or cell: refused (`audience`);
//! - older than the newest target this edge verified: refused (`older`) — the edge keeps what
//!   it has and says why;
//! - the same target again (the control plane signs it afresh at the end of every long-poll):
//!   its freshness is noted;
//! - newer but past its freshness bound: refused (`expired`). An edge with nothing applied
//!   therefore cannot be fed an old target (a downgrade by replay to an empty data dir); an
//!   edge that serves keeps serving and reports itself stale;
//! - newer and fresh: acted on.
//!
//! Staleness: an edge is stale while it holds no fresh target — its control plane is down, or
//! answers without a fresh signature — never a reason to stop serving.

use firebreak_protocol::signed::{Refusal, Target};

/// What to do with a verified target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A newer, fresh target: act on it.
    Newer,
    /// The target already acted on, signed again: note its freshness.
    Same,
    /// Refused, with the reason (the metric label) and a message.
    Refused(Refusal, String),
}

/// Judges a verified `target` for edge `id` in `cell`, which has verified targets up to
/// `seen` and `serving` (something applied), at `now_ms`.
pub fn judge(
    target: &Target,
    id: &str,
    cell: &str,
    seen: (u64, u64),
    serving: bool,
    now_ms: u64,
) -> Verdict {
    let (epoch, seq) = target.order();
    if !target.addressed_to(id, cell) {
        return Verdict::Refused(
            Refusal::Audience,
            format!(
                "target {epoch}/{seq} is addressed to {}, not to edge {id} in cell {cell}; refused",
                target.audience
            ),
        );
    }
    if target.order() < seen {
        return Verdict::Refused(
            Refusal::Older,
            format!(
                "target {epoch}/{seq} (version {}) is older than target {}/{} already verified; kept what runs",
                target.version, seen.0, seen.1
            ),
        );
    }
    if target.order() == seen {
        return Verdict::Same;
    }
    if target.expired(now_ms) {
        let what = if serving {
            "kept serving what runs (stale)"
        } else {
            "an edge with nothing applied accepts only fresh targets (an old target replayed?)"
        };
        return Verdict::Refused(
            Refusal::Expired,
            format!(
                "target {epoch}/{seq} (version {}) expired {} ms ago; {what}",
                target.version,
                now_ms.saturating_sub(target.expires_at_ms)
            ),
        );
    }
    Verdict::Newer
}

/// Why an edge whose freshest verified target is fresh until `fresh_until_ms` is stale at
/// `now_ms`, if it is.
pub fn stale_reason(fresh_until_ms: u64, now_ms: u64) -> Option<String> {
    if now_ms < fresh_until_ms {
        return None;
    }
    Some(if fresh_until_ms == 0 {
        "no fresh target from the control plane yet; serving the kept version".to_owned()
    } else {
        format!(
            "no fresh target from the control plane for {} s past the last one's freshness bound; serving what runs",
            now_ms.saturating_sub(fresh_until_ms) / 1000
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(epoch: u64, seq: u64, version: u64, audience: &str, expires: u64) -> Target {
        Target {
            epoch,
            seq,
            expires_at_ms: expires,
            audience: audience.into(),
            version,
            bundle_sha256: String::new(),
            rollback: false,
            stage: None,
            rollout: None,
            set_at_ms: 0,
            set_by: String::new(),
        }
    }

    fn reason(v: Verdict) -> Option<Refusal> {
        match v {
            Verdict::Refused(r, _) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn orders_by_epoch_and_seq_not_version() {
        let now = 1_000;
        let seen = (5, 10);
        // A rollback (lower version) that is newer is acted on.
        assert_eq!(
            judge(&t(5, 11, 1, "*", 2_000), "e", "c", seen, true, now),
            Verdict::Newer
        );
        // A higher version that is older is refused.
        assert_eq!(
            reason(judge(&t(5, 9, 99, "*", 2_000), "e", "c", seen, true, now)),
            Some(Refusal::Older)
        );
        // A new history beats any seq of the old one; an old history loses to it.
        assert_eq!(
            judge(&t(6, 1, 1, "*", 2_000), "e", "c", seen, true, now),
            Verdict::Newer
        );
        assert_eq!(
            reason(judge(&t(4, 99, 1, "*", 2_000), "e", "c", seen, true, now)),
            Some(Refusal::Older)
        );
        assert_eq!(
            judge(&t(5, 10, 3, "*", 2_000), "e", "c", seen, true, now),
            Verdict::Same
        );
    }

    #[test]
    fn expired_targets_are_refused_and_audience_checked_first() {
        let now = 5_000;
        for serving in [false, true] {
            assert_eq!(
                reason(judge(&t(1, 2, 1, "*", now), "e", "c", (0, 0), serving, now)),
                Some(Refusal::Expired)
            );
        }
        // The same target past its bound is only a freshness note (the edge goes stale).
        assert_eq!(
            judge(&t(1, 2, 1, "*", 1), "e", "c", (1, 2), true, now),
            Verdict::Same
        );
        assert_eq!(
            reason(judge(
                &t(1, 3, 1, "edge:other", now + 1),
                "e",
                "c",
                (1, 2),
                true,
                now
            )),
            Some(Refusal::Audience)
        );
        assert_eq!(
            judge(&t(1, 3, 1, "cell:c", now + 1), "e", "c", (1, 2), true, now),
            Verdict::Newer
        );
    }

    #[test]
    fn stale_after_the_bound() {
        assert_eq!(stale_reason(10_000, 9_999), None);
        assert!(stale_reason(10_000, 10_000).is_some());
        assert!(stale_reason(0, 1).is_some_and(|r| r.contains("no fresh target")));
    }
}
