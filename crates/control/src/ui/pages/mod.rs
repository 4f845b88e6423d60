//! The dashboard's pages and actions, one module per page. Each page's data is gathered into
//! a view (plain strings and numbers), then rendered by its askama template, which escapes
//! every string.

mod audit;
mod dns;
mod fleet;
mod incidents;
mod login;
mod purge;
mod rollouts;
mod traffic;
mod versions;

pub use audit::*;
pub use dns::*;
pub use fleet::*;
pub use incidents::*;
pub use login::*;
pub use purge::*;
pub use rollouts::*;
pub use traffic::*;
pub use versions::*;

use super::plot::{self, number, Plot};
use super::session::{self, Session};
use super::{action_form, checked_form, field, form_fields, redirect, render, Ui, UiError};
use crate::rollout::history::{p99_ms, TrafficBucket, TrafficCounts, TRAFFIC_BUCKET_MS};
use crate::rollout::state::{Phase, Rollout, RolloutKind};
use crate::rollout::RolloutView;
use askama::Template;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use firebreak_protocol::api::{EdgeStatus, PopHealthList, PurgeOutcome, PurgeRequest};
use firebreak_protocol::now_ms;
use std::collections::BTreeMap;

/// What every page's header shows.
pub struct Nav {
    /// The operator's name.
    pub operator: String,
    /// The operator's role.
    pub role: String,
    /// The session's CSRF token (the sign-out form).
    pub csrf: String,
    /// Whether action buttons are shown.
    pub can_act: bool,
    /// Which page this is.
    pub page: &'static str,
}

impl Nav {
    /// The header for `session` on `page`.
    pub fn new(session: &Session, page: &'static str) -> Self {
        Self {
            operator: session.operator.clone(),
            role: session.role.to_string(),
            csrf: session.csrf.clone(),
            can_act: session.can_act(),
            page,
        }
    }
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SSZ` (the protocol's RFC 3339 with a space,
/// easier to read in a table).
pub fn when(ms: u64) -> String {
    if ms == 0 {
        return "never".to_owned();
    }
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    firebreak_protocol::secrets::rfc3339(secs).replacen('T', " ", 1)
}

/// How long ago `ms` was, from `now`.
pub fn ago(ms: u64, now: u64) -> String {
    if ms == 0 {
        return "never".to_owned();
    }
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn version_text(v: Option<u64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("v{v}"))
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".to_owned()
    } else {
        format!("{:.2} %", part as f64 * 100.0 / whole as f64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testing {
    //! What the pages' tests share: a hostile string, a header, an edge.
    use super::*;
    use crate::auth::Role;
    pub use crate::rollout::{CellView, EdgeView};
    pub use firebreak_protocol::api::PopHealth;
    pub use serde_json::json;

    pub const HOSTILE: &str = "<script>alert(\"x\")</script>&'";

    pub fn nav() -> Nav {
        Nav::new(
            &Session {
                operator: "alice".into(),
                role: Role::ReadOnly,
                csrf: "c".repeat(64),
            },
            "fleet",
        )
    }

    pub fn assert_escaped(html: &str) {
        assert!(!html.contains("<script>alert"), "unescaped: {html}");
        assert!(html.contains("&#60;script&#62;alert("), "{html}");
    }

    pub fn edge(id: &str, pop: &str, cell: &str, error: Option<&str>) -> EdgeStatus {
        serde_json::from_value(json!({
            "id": id, "pop": pop, "cell": cell, "admin_url": null, "applied_version": 3,
            "applied_seq": 1, "error": error,
            "failed_services": [{"service": HOSTILE, "error": HOSTILE, "kept_version": 2}],
            "last_seen_ms": 1_000,
        }))
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(when(0), "never");
        assert_eq!(when(1_700_000_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(ago(1_000, 6_000), "5 s ago");
    }
}
