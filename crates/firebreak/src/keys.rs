//! `firebreak control rotate-key | revoke-key | keys`: the control plane's signing keys,
//! each one API call (admin role).

use crate::api_client::{exit, Failed};
use crate::ApiArgs;
use firebreak_control::keys::{RevokeRequest, RingView, RotateRequest};
use http::Method;

/// Key subcommands of `firebreak control`.
#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Make a new signing key. The current key keeps signing for the overlap while edges
    /// fetch the key set endorsing the new one; then the new key signs and the old retires.
    RotateKey {
        /// Overlap in seconds (default: the control plane's `--key-overlap-s`, 7 days).
        #[arg(long)]
        overlap_s: Option<u64>,
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a (compromised) key: edges refuse everything it signs from now on, and every
    /// bundle it sealed after TIME. Signed by another good key (rotate first if it is the
    /// only one); the stored targets are signed again with a good key.
    RevokeKey {
        /// The key id (16 hex digits; `firebreak control keys` lists them).
        key_id: String,
        /// From when its signatures are refused: `now`, `now-DURATION` (`now-2h`), an RFC 3339
        /// time (`2026-11-30T16:00:00Z`) or ms since the Unix epoch.
        #[arg(long)]
        after: String,
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the signing keys: which signs now, validity, retirement, revocation.
    Keys {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn usage(message: impl Into<String>) -> Failed {
    Failed::new(exit::USAGE, message)
}

/// Reads `--after`.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(now_ms);
    }
    if let Some(ago) = text.strip_prefix("now-") {
        let d = humantime::parse_duration(ago).map_err(|e| format!("--after {text}: {e}"))?;
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        return Ok(now_ms.saturating_sub(ms));
    }
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!(
            "--after {text}: {e} (give now, now-2h, 2026-11-30T16:00:00Z or ms since the epoch)"
        )
    })?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("--after {text}: before 1970"))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn print(view: &RingView) {
    out!("key set generation {}", view.generation);
    for k in &view.keys {
        let e = &k.entry;
        let mut notes = Vec::new();
        if k.signing {
            notes.push("SIGNING".to_owned());
        } else if let Some(from) = k
            .signs_from_ms
            .filter(|f| *f > firebreak_protocol::now_ms())
        {
            notes.push(format!("signs from {}", time(from)));
        }
        notes.push(format!("valid from {}", time(e.valid_from_ms)));
        if let Some(r) = e.retire_after_ms {
            notes.push(format!("retires after {}", time(r)));
        }
        if let Some(r) = e.revoked_at_ms {
            notes.push(format!("REVOKED after {}", time(r)));
        }
        out!("{}  {}  {}", e.id, e.public, notes.join(", "));
    }
}

/// Runs one key subcommand.
pub async fn run(command: KeyCommand) -> Result<(), Failed> {
    match command {
        KeyCommand::RotateKey {
            overlap_s,
            message,
            api,
        } => {
            let req = RotateRequest {
                overlap_ms: overlap_s.map(|s| s.saturating_mul(1000)),
                message,
            };
            let body = serde_json::to_vec(&req).map_err(|e| usage(e.to_string()))?;
            let view: RingView = api
                .api()?
                .json(Method::POST, "/v1/keys/rotate", Some(body))
                .await?;
            print(&view);
            Ok(())
        }
        KeyCommand::RevokeKey {
            key_id,
            after,
            message,
            api,
        } => {
            let after_ms = parse_time(&after, firebreak_protocol::now_ms()).map_err(usage)?;
            let req = RevokeRequest { after_ms, message };
            let body = serde_json::to_vec(&req).map_err(|e| usage(e.to_string()))?;
            let path = format!(
                "/v1/keys/{}/revoke",
                form_path_segment(&key_id).map_err(usage)?
            );
            let view: RingView = api.api()?.json(Method::POST, &path, Some(body)).await?;
            print(&view);
            Ok(())
        }
        KeyCommand::Keys { json, api } => {
            let view: RingView = api.api()?.json(Method::GET, "/v1/keys/ring", None).await?;
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&view).map_err(|e| usage(e.to_string()))?
                );
            } else {
                print(&view);
            }
            Ok(())
        }
    }
}

fn form_path_segment(id: &str) -> Result<&str, String> {
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        Err(format!("{id:?} is not a key id (16 hex digits)"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn revocation_times_are_read() {
        let now = 1_800_000_000_000;
        assert_eq!(super::parse_time("now", now).unwrap(), now);
        assert_eq!(super::parse_time("now-2h", now).unwrap(), now - 7_200_000);
        assert_eq!(super::parse_time("12345", now).unwrap(), 12345);
        assert_eq!(
            super::parse_time("2026-11-30T16:00:00Z", now).unwrap(),
            1_796_054_400_000
        );
        assert!(super::parse_time("yesterday", now).is_err());
    }
}
