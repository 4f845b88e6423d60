//! The boot journal: a small file in the data directory that tells a crash loop from a
//! restart. Every time the edge is about to serve a version (at boot, or when it activates a
//! new one) it records that version; a clean stop records that too. At the next boot, a last
//! record without a clean stop after it is a crash of that version. A version that crashed
//! `crashes` times within `window` is marked bad: the edge boots the previous kept version
//! instead, refuses the bad one and reports it (safe mode).
//!
//! A bad version is retried only when a target newer than the one it was refused under names
//! it again explicitly: the first target that names a bad version after it was marked is
//! recorded with it (`(epoch, seq)`, [`BootJournal::judge_bad`]); the same target sent again
//! (the control plane re-signs it for freshness) or an older one is refused; a newer one clears
//! the mark and the version is tried again.

use super::disk::write_atomic;
use firebreak_protocol::now_ms;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest journal file read.
const MAX_JOURNAL_BYTES: u64 = 64 * 1024;
/// Most records of each kind kept.
const MAX_RECORDS: usize = 32;

/// When safe mode steps in.
#[derive(Debug, Clone, Copy)]
pub struct SafeMode {
    /// Crashes of one version that make it bad.
    pub crashes: u32,
    /// Within this window.
    pub window: Duration,
}

impl Default for SafeMode {
    fn default() -> Self {
        Self {
            crashes: 3,
            window: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    version: u64,
    at_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    /// The version being served when the process last recorded anything.
    #[serde(default)]
    serving: Option<Record>,
    /// Whether the process stopped cleanly after that.
    #[serde(default)]
    clean: bool,
    /// Crashes seen at boot, newest last.
    #[serde(default)]
    crashes: Vec<Record>,
    /// Versions marked bad, newest last.
    #[serde(default)]
    bad: Vec<u64>,
    /// Per bad version, the `(epoch, seq)` of the target it was refused under.
    #[serde(default)]
    refused_at: std::collections::BTreeMap<u64, (u64, u64)>,
}

/// What to do with a version a target names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadVerdict {
    /// Not marked bad.
    Good,
    /// Marked bad and not named again by a newer target: refuse it.
    Refuse,
    /// Marked bad, named again by a newer target: the mark is cleared; try it.
    Retry,
}

/// The journal file.
pub struct BootJournal {
    path: PathBuf,
    policy: SafeMode,
    state: std::sync::Mutex<Journal>,
}

impl BootJournal {
    /// Opens the journal in `dir` and, if the last run ended without a clean stop, counts a
    /// crash of the version it was serving. Returns the journal and the version that has just
    /// been marked bad, if one has.
    pub fn open(dir: &Path, policy: SafeMode) -> (Self, Option<u64>) {
        let path = dir.join("boot-journal.json");
        let mut j: Journal = std::fs::metadata(&path)
            .ok()
            .filter(|m| m.len() <= MAX_JOURNAL_BYTES)
            .and_then(|_| std::fs::read(&path).ok())
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(j) => Some(j),
                Err(e) => {
                    tracing::warn!(error = %e, "boot journal unreadable; starting a new one");
                    None
                }
            })
            .unwrap_or_default();
        let now = now_ms();
        let mut newly_bad = None;
        if let (Some(last), false) = (j.serving, j.clean) {
            j.crashes.push(Record {
                version: last.version,
                at_ms: now,
            });
            let window = u64::try_from(policy.window.as_millis()).unwrap_or(u64::MAX);
            let recent = j
                .crashes
                .iter()
                .filter(|c| c.version == last.version && now.saturating_sub(c.at_ms) <= window)
                .count();
            tracing::warn!(
                version = last.version,
                recent,
                "the last run ended without a clean stop"
            );
            if recent >= policy.crashes as usize && !j.bad.contains(&last.version) {
                tracing::error!(
                    version = last.version,
                    "version crashed {recent} times within {:?}: marking it bad (safe mode)",
                    policy.window
                );
                j.bad.push(last.version);
                newly_bad = Some(last.version);
            }
        }
        trim(&mut j.crashes);
        if j.bad.len() > MAX_RECORDS {
            let extra = j.bad.len() - MAX_RECORDS;
            j.bad.drain(..extra);
        }
        let bad = j.bad.clone();
        j.refused_at.retain(|v, _| bad.contains(v));
        j.serving = None;
        j.clean = false;
        let journal = Self {
            path,
            policy,
            state: std::sync::Mutex::new(j),
        };
        journal.save();
        (journal, newly_bad)
    }

    fn save(&self) {
        let Ok(j) = self.state.lock() else { return };
        match serde_json::to_vec(&*j) {
            Ok(bytes) => {
                if let Err(e) = write_atomic(&self.path, &bytes) {
                    tracing::warn!(error = %e, "boot journal not written");
                }
            }
            Err(e) => tracing::warn!(error = %e, "boot journal not encoded"),
        }
    }

    /// Records that the process is about to serve `version`.
    pub fn serving(&self, version: u64) {
        if let Ok(mut j) = self.state.lock() {
            j.serving = Some(Record {
                version,
                at_ms: now_ms(),
            });
            j.clean = false;
        }
        self.save();
    }

    /// Records a clean stop.
    pub fn clean_stop(&self) {
        if let Ok(mut j) = self.state.lock() {
            j.clean = true;
        }
        self.save();
    }

    /// Versions marked bad.
    pub fn bad(&self) -> Vec<u64> {
        self.state.lock().map(|j| j.bad.clone()).unwrap_or_default()
    }

    /// Whether `version` is marked bad.
    pub fn is_bad(&self, version: u64) -> bool {
        self.state
            .lock()
            .map(|j| j.bad.contains(&version))
            .unwrap_or(false)
    }

    /// Judges `version`, named by the target ordered `order`: a bad version is refused, and
    /// the first target that names it is recorded; a target newer than that one clears the
    /// mark (the version is tried again).
    pub fn judge_bad(&self, version: u64, order: (u64, u64)) -> BadVerdict {
        let verdict = {
            let Ok(mut j) = self.state.lock() else {
                return BadVerdict::Refuse;
            };
            if !j.bad.contains(&version) {
                return BadVerdict::Good;
            }
            match j.refused_at.get(&version).copied() {
                Some(at) if order > at => {
                    j.bad.retain(|v| *v != version);
                    j.refused_at.remove(&version);
                    BadVerdict::Retry
                }
                Some(_) => return BadVerdict::Refuse,
                None => {
                    j.refused_at.insert(version, order);
                    BadVerdict::Refuse
                }
            }
        };
        self.save();
        verdict
    }

    /// The policy in force.
    pub fn policy(&self) -> SafeMode {
        self.policy
    }
}

fn trim(v: &mut Vec<Record>) {
    if v.len() > MAX_RECORDS {
        let extra = v.len() - MAX_RECORDS;
        v.drain(..extra);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fb-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn three_unclean_ends_on_one_version_mark_it_bad() {
        let d = dir("loop");
        let policy = SafeMode {
            crashes: 3,
            window: Duration::from_secs(60),
        };
        for i in 0..3 {
            let (j, bad) = BootJournal::open(&d, policy);
            assert_eq!(bad, if i == 3 { Some(7) } else { None });
            j.serving(6);
            j.serving(7); // activation of 7, then a crash
        }
        let (j, bad) = BootJournal::open(&d, policy);
        assert_eq!(bad, Some(7));
        assert!(j.is_bad(7));
        assert!(!j.is_bad(6));
        let _ = std::fs::remove_dir_all(&d); // kept when the test fails
    }

    #[test]
    fn bad_version_retried_only_when_a_newer_target_names_it() {
        let d = dir("retry");
        let policy = SafeMode {
            crashes: 1,
            window: Duration::from_secs(60),
        };
        let (j, _) = BootJournal::open(&d, policy);
        j.serving(7);
        let (j, bad) = BootJournal::open(&d, policy);
        assert_eq!(bad, Some(7));
        assert_eq!(j.judge_bad(6, (1, 5)), BadVerdict::Good);
        // The first target naming it is recorded; it and older ones are refused.
        assert_eq!(j.judge_bad(7, (1, 5)), BadVerdict::Refuse);
        assert_eq!(j.judge_bad(7, (1, 5)), BadVerdict::Refuse);
        assert_eq!(j.judge_bad(7, (1, 4)), BadVerdict::Refuse);
        // Kept across restarts.
        j.clean_stop();
        let (j, _) = BootJournal::open(&d, policy);
        assert_eq!(j.judge_bad(7, (1, 5)), BadVerdict::Refuse);
        // A newer target names it: tried again.
        assert_eq!(j.judge_bad(7, (1, 6)), BadVerdict::Retry);
        assert!(!j.is_bad(7));
        assert_eq!(j.judge_bad(7, (1, 6)), BadVerdict::Good);
        let _ = std::fs::remove_dir_all(&d); // kept when the test fails
    }

    #[test]
    fn clean_stops_are_not_crashes_and_garbage_is_survived() {
        let d = dir("clean");
        for _ in 0..5 {
            let (j, bad) = BootJournal::open(&d, SafeMode::default());
            assert_eq!(bad, None);
            j.serving(3);
            j.clean_stop();
        }
        std::fs::write(d.join("boot-journal.json"), b"{not json").unwrap();
        let (j, bad) = BootJournal::open(&d, SafeMode::default());
        assert_eq!(bad, None);
        assert!(j.bad().is_empty());
        let _ = std::fs::remove_dir_all(&d); // kept when the test fails
    }
}
