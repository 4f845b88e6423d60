//! Injected faults and kill switches, compiled for serving (`[[service.fault]]`,
//! `[[switch]]`). A service without faults pays one emptiness check per request; switches are
//! resolved when the runtime is built, so most of them cost nothing per request.

use crate::error::ProxyError;
use firebreak_config::{Config, FaultAction, FaultConfig, SwitchAction};
use http::StatusCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// What an injected fault does to a request it affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer this status from the edge.
    Status(StatusCode),
    /// Wait, then continue normally.
    Delay(Duration),
    /// Panic in request handling.
    Panic,
}

/// Picks `percent` of the requests it is asked about, spread evenly: of any 100 consecutive
/// requests (counted from the first), exactly `percent` are picked. One relaxed increment per
/// request; none at 100 %.
#[derive(Debug)]
pub struct Sampler {
    percent: u64,
    seen: AtomicU64,
}

impl Sampler {
    /// A sampler picking `percent` (clamped to 0..=100) of the requests.
    pub fn new(percent: u32) -> Self {
        Self {
            percent: u64::from(percent.min(100)),
            seen: AtomicU64::new(0),
        }
    }

    /// Whether this request is picked.
    pub fn pick(&self) -> bool {
        if self.percent >= 100 {
            return true;
        }
        let n = self.seen.fetch_add(1, Relaxed) % 100;
        // Picked when the quota of picks so far, n·p/100 rounded down, grows at this request.
        (n + 1) * self.percent / 100 > n * self.percent / 100
    }
}

/// One per-request fault of a service.
#[derive(Debug)]
pub struct Fault {
    prefix: Option<String>,
    kind: FaultKind,
    sampler: Sampler,
}

impl Fault {
    /// The per-request faults of a service's configuration (`fail_build` and `crash_on_load`
    /// act on the runtime instead).
    pub fn compile(faults: &[FaultConfig]) -> Vec<Fault> {
        faults
            .iter()
            .filter_map(|f| {
                let kind = match f.action {
                    FaultAction::Status => FaultKind::Status(
                        StatusCode::from_u16(f.status.unwrap_or(500))
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    ),
                    FaultAction::Delay => {
                        FaultKind::Delay(Duration::from_millis(f.delay_ms.unwrap_or(0)))
                    }
                    FaultAction::Panic => FaultKind::Panic,
                    FaultAction::FailBuild | FaultAction::CrashOnLoad => return None,
                };
                Some(Fault {
                    prefix: f.path_prefix.clone(),
                    kind,
                    sampler: Sampler::new(f.percent()),
                })
            })
            .collect()
    }

    /// What this fault does to a request for `path`, if it matches and is sampled.
    pub fn on(&self, path: &str) -> Option<FaultKind> {
        let matches = self.prefix.as_deref().is_none_or(|p| path.starts_with(p));
        (matches && self.sampler.pick()).then_some(self.kind)
    }
}

/// The kill switches engaged (`on = true`) for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switches {
    /// Never look up or store.
    pub bypass_cache: bool,
    /// No stale-while-revalidate, stale-if-error or safety net.
    pub no_stale: bool,
    /// Cache rules with `path_regex` are ignored.
    pub no_regex_rules: bool,
    /// The service answers 503; the name of the switch that disabled it.
    pub disabled_by: Option<Arc<str>>,
}

impl Switches {
    /// The switches of `config` engaged for the service named `service`.
    pub fn for_service(config: &Config, service: &str) -> Self {
        let mut s = Switches::default();
        for sw in config
            .switches
            .iter()
            .filter(|s| s.on && s.service == service)
        {
            match sw.action {
                SwitchAction::BypassCache => s.bypass_cache = true,
                SwitchAction::NoStale => s.no_stale = true,
                SwitchAction::NoRegexRules => s.no_regex_rules = true,
                SwitchAction::DisableService => {
                    s.disabled_by.get_or_insert_with(|| sw.name.as_str().into());
                }
            }
        }
        s
    }
}

/// Applies a service's disable switch and per-request faults before the request is served:
/// an error answers the request from the edge; a delay waits here; a panic panics (the
/// request's `catch_unwind` in `proxy::handle` turns it into a 500).
pub(crate) async fn before_serving(
    svc: &crate::runtime::Service,
    path: &str,
) -> Result<(), ProxyError> {
    if let Some(name) = &svc.switches.disabled_by {
        return Err(ProxyError::SwitchedOff(name.clone()));
    }
    for fault in &svc.faults {
        match fault.on(path) {
            None => {}
            Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
            Some(FaultKind::Status(status)) => return Err(ProxyError::Fault(status)),
            Some(FaultKind::Panic) => drill_panic(&svc.name),
        }
    }
    Ok(())
}

/// The `panic` drill: a deliberate panic, to prove that request handling catches it.
#[allow(clippy::panic)]
fn drill_panic(service: &str) -> ! {
    panic!("injected fault `panic` in service `{service}` (drill)")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sampler_picks_exactly_percent_of_every_hundred_spread_out() {
        for percent in 1..=100u32 {
            let s = Sampler::new(percent);
            for round in 0..3 {
                let picks: Vec<bool> = (0..100).map(|_| s.pick()).collect();
                let n = picks.iter().filter(|p| **p).count();
                assert_eq!(n, percent as usize, "percent {percent}, round {round}");
                // Spread: no two picks closer than 100/percent - 1 apart (not bunched).
                let gap = 100 / percent as usize;
                let positions: Vec<usize> = picks
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| **p)
                    .map(|(i, _)| i)
                    .collect();
                for w in positions.windows(2) {
                    assert!(w[1] - w[0] + 1 >= gap, "percent {percent}: {positions:?}");
                }
            }
        }
        assert!(Sampler::new(0).pick().eq(&false));
        assert!(Sampler::new(500).pick());
    }

    #[test]
    fn fault_matches_its_prefix_only() {
        let f = Fault {
            prefix: Some("/x".into()),
            kind: FaultKind::Panic,
            sampler: Sampler::new(100),
        };
        assert_eq!(f.on("/x/1"), Some(FaultKind::Panic));
        assert_eq!(f.on("/y"), None);
    }
}
