//! The edge's last-known-good versions on local disk.
//!
//! `bundles/<version>.fbb` are sealed bundles exactly as downloaded (verified again when
//! read back); `applied.json` names the version running and, per service, the version whose
//! document it runs (they differ when a service's new document failed to load);
//! `target.json` is the signed target statement that version was applied for, exactly as
//! received: at start the edge verifies it with the trusted key and trusts `applied.json` only
//! when it matches it (a raised sequence number or another version in `applied.json` is
//! refused, with the file named). Every file is
//! written to a temporary name, flushed to disk and renamed, so a crash or a full disk leaves
//! the previous file, never half of a new one.

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest `applied.json` read.
const MAX_RECORD_BYTES: u64 = 1024 * 1024;

/// What is running, by version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedRecord {
    /// The version applied (its fleet document and every service that loaded).
    pub version: u64,
    /// The target sequence number it was applied for.
    pub seq: u64,
    /// Per service, the version whose document runs.
    pub services: Vec<ServicePin>,
}

/// A service and the version its document comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePin {
    /// Service name.
    pub name: String,
    /// Version of its document.
    pub version: u64,
}

/// The data directory.
pub struct LocalVersions {
    dir: PathBuf,
}

impl LocalVersions {
    /// Opens (creating) the directory and removes temporary files a crash may have left.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("bundles"))?;
        for sub in [dir.to_owned(), dir.join("bundles")] {
            for entry in std::fs::read_dir(&sub)?.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn bundle_path(&self, version: u64) -> PathBuf {
        self.dir.join("bundles").join(format!("{version:020}.fbb"))
    }

    /// Keeps a sealed bundle.
    pub fn save_bundle(&self, version: u64, bytes: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.bundle_path(version), bytes)
    }

    /// Reads a kept bundle, refusing files over `max` bytes.
    pub fn load_bundle(&self, version: u64, max: usize) -> std::io::Result<Vec<u8>> {
        read_bounded(&self.bundle_path(version), max as u64)
    }

    /// Versions kept, newest first.
    pub fn versions(&self) -> Vec<u64> {
        let mut out: Vec<u64> = std::fs::read_dir(self.dir.join("bundles"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".fbb")?.parse().ok()
            })
            .collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }

    /// Records what runs.
    pub fn save_applied(&self, record: &AppliedRecord) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join("applied.json"), &bytes)
    }

    /// What ran last, if recorded and readable.
    pub fn load_applied(&self) -> Option<AppliedRecord> {
        let bytes = read_bounded(&self.dir.join("applied.json"), MAX_RECORD_BYTES).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps the signed target statement the applied version came from.
    pub fn save_target(&self, signed: &firebreak_protocol::signed::Signed) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(signed).map_err(std::io::Error::other)?;
        write_atomic(&self.target_path(), &bytes)
    }

    /// The kept signed target statement (not verified: the caller verifies it).
    pub fn load_target(&self) -> Option<firebreak_protocol::signed::Signed> {
        let bytes = read_bounded(&self.target_path(), MAX_RECORD_BYTES).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Where the signed target is kept.
    pub fn target_path(&self) -> PathBuf {
        self.dir.join("target.json")
    }

    /// Where the applied record is kept.
    pub fn applied_path(&self) -> PathBuf {
        self.dir.join("applied.json")
    }

    /// Deletes all but the newest `keep` bundles, never one in `pinned`.
    pub fn prune(&self, keep: usize, pinned: &[u64]) {
        for v in self.versions().into_iter().skip(keep) {
            if !pinned.contains(&v) {
                let _ = std::fs::remove_file(self.bundle_path(v));
            }
        }
    }
}

pub(crate) fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Err(std::io::Error::other(format!(
            "{} is {len} bytes; the limit is {max}",
            path.display()
        )));
    }
    let mut out = Vec::with_capacity(len as usize);
    file.take(max + 1).read_to_end(&mut out)?;
    Ok(out)
}

pub use firebreak_protocol::durable::write_atomic;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_newest_and_pinned_and_cleans_temporaries() {
        let dir = std::env::temp_dir().join(format!("fb-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = LocalVersions::open(&dir).unwrap();
        for v in 1..=8 {
            d.save_bundle(v, &[v as u8; 10]).unwrap();
        }
        std::fs::write(dir.join("bundles/00000000000000000009.tmp"), b"half").unwrap();
        d.prune(3, &[2]);
        assert_eq!(d.versions(), vec![8, 7, 6, 2]);
        assert_eq!(d.load_bundle(7, 100).unwrap(), vec![7u8; 10]);
        assert!(d.load_bundle(7, 5).is_err());
        let rec = AppliedRecord {
            version: 8,
            seq: 3,
            services: vec![ServicePin {
                name: "a".into(),
                version: 2,
            }],
        };
        d.save_applied(&rec).unwrap();
        let d = LocalVersions::open(&dir).unwrap();
        assert_eq!(d.load_applied(), Some(rec));
        assert!(!dir.join("bundles/00000000000000000009.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
