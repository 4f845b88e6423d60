//! Scratch directories that clean up after a passing test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty directory `fb-{prefix}-{pid}-{name}-{n}` under the temporary directory,
/// removed with everything in it when dropped — unless the thread is panicking: a failing
/// test keeps its files (logs, stores, configs) for a look. Declare it before the processes
/// and servers that use it (as a struct field: after them), so that they are dropped
/// (stopped) first.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Makes the directory (emptied first, should an earlier process of the same PID have
    /// left it).
    pub fn new(prefix: &str, name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "fb-{prefix}-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
