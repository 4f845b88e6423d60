//! The status page as static files, for hosting on infrastructure that shares nothing with
//! the network: `index.html`, `feed.atom` and `incidents.json` (the [`StatusSnapshot`] they
//! were rendered from). Each file is written atomically (temporary file, fsync, rename), so a
//! web server never serves half a page.
//!
//! `incidents.json` lets an incident be written straight into the directory while the control
//! plane is down ([`open_offline`], [`update_offline`]): it is read, changed and everything
//! rendered again; the page then says the component states are as last observed. Offline
//! writers take turns on `DIR/.lock` (flock), so none loses another's change.

use super::incidents::{IncidentBook, NewIncident, NewUpdate, MAX_BOOK_BYTES};
use super::page::{self, Flavour, HEARTBEAT_MS};
use super::{Incident, StatusSnapshot};
use firebreak_protocol::durable::write_atomic;
use std::io::Read;
use std::path::Path;

/// Largest `incidents.json` read: the incident log's bound and room for the components.
pub const MAX_SNAPSHOT_BYTES: u64 = MAX_BOOK_BYTES as u64 + 512 * 1024;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading or writing the directory.
    #[error("{0}")]
    Io(String),
    /// `incidents.json` is not a snapshot.
    #[error("{0}: {1}")]
    Unreadable(String, String),
    /// Rendering failed.
    #[error("rendering the page: {0}")]
    Render(String),
    /// The incident change was refused.
    #[error(transparent)]
    Incident(#[from] super::IncidentError),
}

/// Writes `index.html`, `feed.atom` and `incidents.json` for `snapshot` into `dir` (created
/// if missing).
pub fn write(dir: &Path, snapshot: &StatusSnapshot) -> Result<(), ExportError> {
    let render = |e: askama::Error| ExportError::Render(e.to_string());
    let html = page::render(snapshot, Flavour::Exported).map_err(render)?;
    let feed = super::feed::render(snapshot, "index.html").map_err(render)?;
    let json = serde_json::to_vec_pretty(snapshot).map_err(|e| ExportError::Io(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| ExportError::Io(format!("{}: {e}", dir.display())))?;
    for (name, bytes) in [
        ("incidents.json", json.as_slice()),
        ("feed.atom", feed.as_bytes()),
        ("index.html", html.as_bytes()),
    ] {
        let path = dir.join(name);
        write_atomic(&path, bytes)
            .map_err(|e| ExportError::Io(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Reads the snapshot an export directory holds; `None` if it has none yet.
pub fn read(dir: &Path) -> Result<Option<StatusSnapshot>, ExportError> {
    let path = dir.join("incidents.json");
    let shown = path.display().to_string();
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ExportError::Io(format!("{shown}: {e}"))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_SNAPSHOT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ExportError::Io(format!("{shown}: {e}")))?;
    if bytes.len() as u64 > MAX_SNAPSHOT_BYTES {
        return Err(ExportError::Unreadable(
            shown,
            format!("larger than {MAX_SNAPSHOT_BYTES} bytes"),
        ));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ExportError::Unreadable(shown, e.to_string()))
}

/// Applies `change` to the export in `dir` (a new one: the fixed components, no incidents)
/// and writes it again, made now.
fn change_offline<T>(
    dir: &Path,
    change: impl FnOnce(&mut IncidentBook, u64) -> Result<T, super::IncidentError>,
) -> Result<(T, StatusSnapshot), ExportError> {
    std::fs::create_dir_all(dir).map_err(|e| ExportError::Io(format!("{}: {e}", dir.display())))?;
    // Two offline writers at once would each read, change and write back, losing one change:
    // they take turns on the directory's lock file (released when `_lock` is dropped).
    let lock_path = dir.join(".lock");
    let _lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ExportError::Io(format!("{}: {e}", lock_path.display())))?;
    rustix::fs::flock(&_lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| ExportError::Io(format!("{}: {e}", lock_path.display())))?;
    let now = firebreak_protocol::now_ms();
    let mut snapshot = read(dir)?.unwrap_or_else(|| StatusSnapshot {
        generated_ms: now,
        observed_ms: now,
        components: StatusSnapshot::fixed_components(),
        incidents: IncidentBook::default(),
    });
    let out = change(&mut snapshot.incidents, now)?;
    snapshot.incidents.seq = snapshot.incidents.seq.saturating_add(1);
    snapshot.generated_ms = now;
    write(dir, &snapshot)?;
    Ok((out, snapshot))
}

/// Opens an incident straight in an export directory (no control plane).
pub fn open_offline(dir: &Path, new: NewIncident, by: &str) -> Result<Incident, ExportError> {
    let (id, snapshot) = change_offline(dir, |book, now| book.open(new, by, None, now))?;
    find(&snapshot, id)
}

/// Adds an update to an incident straight in an export directory (no control plane).
pub fn update_offline(
    dir: &Path,
    id: u64,
    update: NewUpdate,
    by: &str,
) -> Result<Incident, ExportError> {
    let ((), snapshot) = change_offline(dir, |book, now| book.update(id, update, by, now))?;
    find(&snapshot, id)
}

fn find(s: &StatusSnapshot, id: u64) -> Result<Incident, ExportError> {
    s.incidents
        .incidents
        .iter()
        .find(|i| i.id == id)
        .cloned()
        .ok_or(ExportError::Incident(super::IncidentError::NotFound(id)))
}

/// Decides when an export is written: when what it shows changed, and at least every
/// [`HEARTBEAT_MS`] so that its "last updated" shows it is alive.
#[derive(Debug, Default)]
pub struct Exporter {
    last: Option<(StatusSnapshot, u64)>,
}

impl Exporter {
    /// Writes `snapshot` into `dir` if due; returns whether it wrote.
    pub fn offer(&mut self, dir: &Path, snapshot: &StatusSnapshot) -> Result<bool, ExportError> {
        let same = |a: &StatusSnapshot, b: &StatusSnapshot| {
            a.components == b.components && a.incidents.incidents == b.incidents.incidents
        };
        if let Some((last, at)) = &self.last {
            if same(last, snapshot) && snapshot.generated_ms.saturating_sub(*at) < HEARTBEAT_MS {
                return Ok(false);
            }
        }
        write(dir, snapshot)?;
        self.last = Some((snapshot.clone(), snapshot.generated_ms));
        Ok(true)
    }
}

/// How often the control plane's own exporter looks (`firebreak control --status-export`).
const EXPORT_TICK: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes the page into `dir` whenever it changes (and every [`HEARTBEAT_MS`]) until the plane
/// is dropped; failures are logged and tried again.
pub fn spawn(plane: std::sync::Weak<crate::plane::Plane>, dir: std::path::PathBuf) {
    tokio::spawn(async move {
        let mut exporter = Some(Exporter::default());
        loop {
            let Some(p) = plane.upgrade() else { return };
            let snapshot = p.status_snapshot().await;
            drop(p);
            match snapshot {
                Ok(s) => {
                    let (dir2, mut e) = (dir.clone(), exporter.take().unwrap_or_default());
                    match tokio::task::spawn_blocking(move || (e.offer(&dir2, &s), e)).await {
                        Ok((r, e)) => {
                            exporter = Some(e);
                            if let Err(err) = r {
                                tracing::warn!(error = %err, dir = %dir.display(), "status export not written");
                            }
                        }
                        Err(err) => tracing::warn!(error = %err, "status export failed"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "status export: no snapshot"),
            }
            tokio::time::sleep(EXPORT_TICK).await;
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::status::{Impact, IncidentState};

    #[test]
    fn incidents_are_written_offline_and_rendered() {
        let dir = std::env::temp_dir().join(format!("fb-status-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opened = open_offline(
            &dir,
            NewIncident {
                title: "Control plane down".into(),
                components: vec!["control-plane".into()],
                text: "We are on it.".into(),
                state: None,
                impact: Impact::Outage,
            },
            "alice",
        )
        .unwrap();
        let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
        assert!(html.contains("Control plane down"));
        assert!(html.contains("<td>Control plane</td><td class=\"state outage\">outage</td>"));
        update_offline(
            &dir,
            opened.id,
            NewUpdate {
                text: "Back.".into(),
                state: Some(IncidentState::Resolved),
            },
            "alice",
        )
        .unwrap();
        let s = read(&dir).unwrap().unwrap();
        assert_eq!(s.incidents.incidents[0].state, IncidentState::Resolved);
        assert!(std::fs::read_to_string(dir.join("feed.atom"))
            .unwrap()
            .contains("Back."));
        // Unchanged: written again only after the heartbeat.
        let mut exporter = Exporter::default();
        assert!(exporter.offer(&dir, &s).unwrap());
        assert!(!exporter.offer(&dir, &s).unwrap());
        let mut later = s.clone();
        later.generated_ms += HEARTBEAT_MS;
        assert!(exporter.offer(&dir, &later).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
