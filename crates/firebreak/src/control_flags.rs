//! The control plane API's bounds as `firebreak control` flags, and the open-files limit
//! raised at start for `firebreak control` and `firebreak edge`.

use firebreak_control::ApiLimits;
use std::time::Duration;

/// Files kept for everything but API connections (store, key, logs, edges' admin calls).
const RESERVED_FILES: u64 = 256;

/// Bounds of the control plane's API listener.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiFlags {
    /// Most open API connections (each edge holds one for its long-poll); lowered to what
    /// the open-files limit allows.
    #[arg(long, default_value_t = firebreak_control::api::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most open API connections from one address (default: --max-connections).
    #[arg(long)]
    pub max_connections_per_address: Option<usize>,
    /// A connection must send a complete request head within this time (also from a head's
    /// first byte to its end); silent connections are closed after it.
    #[arg(long, default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// A request body must arrive within this time after its head, or the answer is 408.
    #[arg(long, default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// A connection with no request in progress is closed after this time (HTTP/1
    /// keep-alive, HTTP/2 without a stream).
    #[arg(long, default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// A client that takes no response bytes for this long is disconnected.
    #[arg(long, default_value_t = 60_000)]
    pub send_timeout_ms: u64,
    /// Interval of HTTP/2 PINGs, and the time one may go unanswered.
    #[arg(long, default_value_t = 20_000)]
    pub h2_keepalive_ms: u64,
    /// Bytes of request bodies being read at once over all connections (uploads beyond it
    /// wait, then get 503).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub body_budget_bytes: usize,
}

impl ApiFlags {
    /// The limits these flags set, with the connection bound lowered to `open_files` (the
    /// open-files limit in force, when known); checked.
    pub fn limits(&self, open_files: Option<u64>) -> Result<ApiLimits, String> {
        let mut max_connections = self.max_connections;
        if let Some(files) = open_files {
            let allowed = usize::try_from(files.saturating_sub(RESERVED_FILES))
                .unwrap_or(usize::MAX)
                .max(1);
            if max_connections > allowed {
                tracing::warn!(
                    requested = max_connections,
                    allowed,
                    open_files = files,
                    "--max-connections lowered to what the open-files limit (RLIMIT_NOFILE) allows"
                );
                max_connections = allowed;
            }
        }
        let per_address = self
            .max_connections_per_address
            .unwrap_or(max_connections)
            .min(max_connections);
        let limits = ApiLimits {
            max_connections,
            max_connections_per_address: per_address,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            send_timeout: Duration::from_millis(self.send_timeout_ms),
            h2_keepalive: Duration::from_millis(self.h2_keepalive_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            body_budget_bytes: self.body_budget_bytes,
            ..ApiLimits::default()
        };
        limits.validate().map_err(|e| format!("--{e}"))?;
        Ok(limits)
    }
}

/// Raises the soft open-files limit (RLIMIT_NOFILE) to the hard limit and logs the limit in
/// force; `None` if it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::info!(open_files = n, "open-files limit (RLIMIT_NOFILE)");
            Some(n)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-files limit (RLIMIT_NOFILE)");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        api: ApiFlags,
    }

    #[test]
    fn defaults_are_the_api_defaults() {
        let t = T::parse_from(["t"]);
        assert_eq!(t.api.limits(None).unwrap(), ApiLimits::default());
    }

    #[test]
    fn connections_are_lowered_to_the_open_files_limit() {
        let t = T::parse_from(["t", "--max-connections-per-address", "40000"]);
        let l = t.api.limits(Some(1024)).unwrap();
        assert_eq!(l.max_connections, 768);
        assert_eq!(l.max_connections_per_address, 768);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let t = T::parse_from(["t", "--body-timeout-ms", "0"]);
        assert!(t
            .api
            .limits(None)
            .unwrap_err()
            .starts_with("--body-timeout-ms"));
    }
}
