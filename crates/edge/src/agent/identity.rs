//! The edge's identity with the control plane: it joins once with the fleet's join token
//! (`POST /v1/edges/{id}/join`) and keeps the per-edge credential it receives in
//! `DATA_DIR/credential` (mode 0600, written atomically); every other call carries that
//! credential. When the admin listener's address changes (it is known only once the edge
//! serves, and a restart may bind another port) the edge re-joins with its credential to
//! declare it: the control plane sends purges only to the address declared at (re-)join.
//! A credential the control plane no longer knows (the edge was pruned or removed) is
//! forgotten and the edge joins again with the join token.

use super::client::ControlClient;
use firebreak_protocol::api::{EdgeReport, JoinAnswer, JoinRequest};
use http::{Method, StatusCode};
use std::path::{Path, PathBuf};

/// File name of the credential in the data directory.
pub const CREDENTIAL_FILE: &str = "credential";
/// Largest credential file read.
const MAX_CREDENTIAL_BYTES: u64 = 4096;

/// What the edge last declared at (re-)join.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Declared {
    pop: String,
    cell: String,
    admin_url: Option<String>,
    listen: Vec<String>,
}

struct State {
    credential: Option<String>,
    /// `None` until a (re-)join succeeded in this process.
    declared: Option<Declared>,
}

/// The edge's credential and what it declared, shared by every clone of the client.
pub struct Identity {
    path: PathBuf,
    id: String,
    join_token: String,
    pop: String,
    cell: String,
    state: tokio::sync::Mutex<State>,
}

impl Identity {
    /// The identity of edge `id` (in `pop`, `cell`) kept in `data_dir`, joining with
    /// `join_token` when it has no credential yet.
    pub fn new(data_dir: &Path, id: &str, join_token: &str, pop: &str, cell: &str) -> Self {
        let path = data_dir.join(CREDENTIAL_FILE);
        let credential = read_credential(&path, id);
        Self {
            path,
            id: id.to_owned(),
            join_token: join_token.to_owned(),
            pop: pop.to_owned(),
            cell: cell.to_owned(),
            state: tokio::sync::Mutex::new(State {
                credential,
                declared: None,
            }),
        }
    }

    /// The credential to send, joining first if there is none.
    pub(crate) async fn credential(&self, client: &ControlClient) -> Result<String, String> {
        let mut state = self.state.lock().await;
        if let Some(c) = &state.credential {
            return Ok(c.clone());
        }
        let declared = state.declared.clone().unwrap_or_else(|| Declared {
            pop: self.pop.clone(),
            cell: self.cell.clone(),
            admin_url: None,
            listen: Vec::new(),
        });
        self.join(client, &mut state, declared).await
    }

    /// Before a report: re-joins if the admin URL or listeners differ from what was declared.
    pub(crate) async fn declare(
        &self,
        client: &ControlClient,
        report: &EdgeReport,
    ) -> Result<(), String> {
        let wanted = Declared {
            pop: report.pop.clone(),
            cell: report.cell.clone(),
            admin_url: report.admin_url.clone(),
            listen: report.listen.clone(),
        };
        let mut state = self.state.lock().await;
        if state.declared.as_ref() == Some(&wanted) {
            return Ok(());
        }
        let Some(credential) = state.credential.clone() else {
            return self.join(client, &mut state, wanted).await.map(|_| ());
        };
        let (status, body) = self.post_join(client, &credential, &wanted).await?;
        match status {
            StatusCode::OK | StatusCode::CREATED => {
                state.declared = Some(wanted);
                Ok(())
            }
            StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND => {
                tracing::warn!(edge = %self.id, "the control plane no longer knows this edge's credential; joining again");
                self.drop_credential(&mut state).await;
                self.join(client, &mut state, wanted).await.map(|_| ())
            }
            s => Err(format!(
                "re-join refused ({s}): {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// Called when the control plane answered 401 to `credential`: it is forgotten (the next
    /// call joins again).
    pub(crate) async fn refused(&self, credential: &str) {
        let mut state = self.state.lock().await;
        if state.credential.as_deref() == Some(credential) {
            tracing::warn!(edge = %self.id, "credential refused by the control plane; will join again");
            self.drop_credential(&mut state).await;
        }
    }

    async fn drop_credential(&self, state: &mut State) {
        state.credential = None;
        state.declared = None;
        let path = self.path.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
    }

    async fn post_join(
        &self,
        client: &ControlClient,
        bearer: &str,
        d: &Declared,
    ) -> Result<(StatusCode, bytes::Bytes), String> {
        let body = serde_json::to_vec(&JoinRequest {
            pop: d.pop.clone(),
            cell: d.cell.clone(),
            admin_url: d.admin_url.clone(),
            listen: d.listen.clone(),
        })
        .map_err(|e| e.to_string())?;
        client
            .call_as(
                bearer,
                Method::POST,
                &format!("/v1/edges/{}/join", self.id),
                Some(body),
                64 * 1024,
                std::time::Duration::from_secs(10),
            )
            .await
    }

    /// First join, with the join token: keeps the credential on disk before using it.
    async fn join(
        &self,
        client: &ControlClient,
        state: &mut State,
        declared: Declared,
    ) -> Result<String, String> {
        let (status, body) = self.post_join(client, &self.join_token, &declared).await?;
        if status != StatusCode::CREATED {
            return Err(format!(
                "joining the fleet as {} refused ({status}): {}",
                self.id,
                String::from_utf8_lossy(&body)
            ));
        }
        let answer: JoinAnswer =
            serde_json::from_slice(&body).map_err(|e| format!("malformed join answer: {e}"))?;
        let credential = answer
            .credential
            .filter(|c| credential_fits(c, &self.id))
            .ok_or("the join answer carries no credential for this edge")?;
        let (path, kept) = (self.path.clone(), credential.clone());
        tokio::task::spawn_blocking(move || {
            firebreak_protocol::durable::write_private(&path, kept.as_bytes())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            format!(
                "cannot keep the edge credential in {}: {e}",
                self.path.display()
            )
        })?;
        tracing::info!(edge = %self.id, "joined the fleet; credential kept in {}", self.path.display());
        state.credential = Some(credential.clone());
        state.declared = Some(declared);
        Ok(credential)
    }
}

/// A credential names its edge: `edge:ID:SECRET`.
fn credential_fits(credential: &str, id: &str) -> bool {
    credential
        .strip_prefix("edge:")
        .and_then(|r| r.rsplit_once(':'))
        .is_some_and(|(i, s)| i == id && !s.is_empty())
        && credential.bytes().all(|b| b.is_ascii_graphic())
}

/// The kept credential, if the file holds one for `id`.
fn read_credential(path: &Path, id: &str) -> Option<String> {
    let bytes = super::disk::read_bounded(path, MAX_CREDENTIAL_BYTES).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let c = text.trim();
    if credential_fits(c, id) {
        Some(c.to_owned())
    } else {
        tracing::warn!(path = %path.display(), "the kept credential is not this edge's ({id}); joining again");
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_kept_private_and_read_back_for_its_edge_only() {
        let dir = std::env::temp_dir().join(format!("fb-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CREDENTIAL_FILE);
        let c = format!("edge:e1:{}", "ab".repeat(32));
        firebreak_protocol::durable::write_private(&path, c.as_bytes()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(read_credential(&path, "e1"), Some(c));
        assert_eq!(read_credential(&path, "e2"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
