//! Client commands: configuration versions, target, fleet, purge — each one API call, with
//! plain output and the exit codes in [`crate::api_client::exit`].

use crate::api_client::{exit, Api, Failed};
use firebreak_protocol::api::{
    EdgeStatus, PurgeOutcome, PurgeRequest, PushRequest, SetTargetRequest, VersionDetail,
    VersionInfo,
};
use firebreak_protocol::signed::Target;
use http::Method;
use std::path::Path;

/// Latest time an HTTP date can name: 9999-12-31 23:59:59.999 UTC, in ms since the epoch.
const LAST_HTTP_DATE_MS: u64 = 253_402_300_799_999;

/// `ms` since the epoch as an HTTP date; a time past year 9999 (which `httpdate` cannot
/// format, and panics on) is refused and shown as such.
pub(crate) fn time(ms: u64) -> String {
    if ms > LAST_HTTP_DATE_MS {
        return format!("(invalid time: {ms} ms is past year 9999)");
    }
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms)) {
        Some(t) => httpdate::fmt_http_date(t),
        None => format!("(invalid time: {ms} ms)"),
    }
}

/// `POST /v1/versions`'s answer: what was stored.
#[derive(serde::Deserialize)]
struct PushAnswer {
    #[serde(flatten)]
    info: VersionInfo,
    #[serde(default)]
    already_stored: bool,
    #[serde(default)]
    activation_error: Option<String>,
    /// Accepted, but worth knowing (a certificate not valid yet).
    #[serde(default)]
    warnings: Vec<String>,
    /// A forced push: what the DNS change guard refused.
    #[serde(default)]
    forced_past: Option<String>,
}

/// How long until a certificate expires, for `fleet`: `23d`, `5h`, `EXPIRED`, or `-`.
pub(crate) fn cert_expiry(expiry_ms: Option<u64>, now_ms: u64) -> String {
    match expiry_ms {
        None => "-".into(),
        Some(t) if t <= now_ms => "EXPIRED".into(),
        Some(t) => {
            let left = t - now_ms;
            let days = left / 86_400_000;
            if days > 0 {
                format!("{days}d")
            } else {
                format!("{}h", left / 3_600_000)
            }
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Failed> {
    serde_json::to_vec(v).map_err(|e| Failed::new(exit::REFUSED, e.to_string()))
}

/// The MaxMind database the document's `dns.geoip_file` names, read relative to the file
/// (at most [`firebreak_config::MAX_GEOIP_BYTES`], checked before reading and bounded while
/// reading): it is sent with the document, and the control plane verifies it. A document that
/// does not parse is sent as it is, for the control plane to locate its errors.
fn read_geoip(
    file: &Path,
    document: &str,
) -> Result<Option<firebreak_protocol::binary::Binary>, Failed> {
    use std::io::Read;
    let Some(name) = toml::from_str::<toml::Table>(document)
        .ok()
        .and_then(|t| t.get("dns")?.get("geoip_file")?.as_str().map(str::to_owned))
    else {
        return Ok(None);
    };
    let path = file.parent().unwrap_or(Path::new(".")).join(&name);
    let refused = |why: String| {
        Failed::new(
            exit::REFUSED,
            format!(
                "{}: dns.geoip_file: {}: {why}",
                file.display(),
                path.display()
            ),
        )
    };
    let limit = firebreak_config::MAX_GEOIP_BYTES;
    let f = std::fs::File::open(&path).map_err(|e| refused(format!("cannot read: {e}")))?;
    let len = f
        .metadata()
        .map_err(|e| refused(format!("cannot read: {e}")))?
        .len();
    if len > limit {
        return Err(refused(format!("{len} bytes; the limit is {limit}")));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refused(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(refused(format!("over {limit} bytes (it grew while read)")));
    }
    Ok(Some(bytes.into()))
}

/// How `config push` sends a file.
pub struct PushOptions {
    /// Also start rolling it out.
    pub activate: bool,
    /// Store it even though the DNS change guard refuses it (audited).
    pub force: bool,
    /// Further attempts while the control plane is unreachable or answers 5xx.
    pub retries: u32,
}

/// [`push_with`], not forced.
pub async fn push(
    api: &Api,
    file: &Path,
    message: &str,
    activate: bool,
    retries: u32,
) -> Result<(), Failed> {
    let options = PushOptions {
        activate,
        force: false,
        retries,
    };
    push_with(api, file, message, options).await
}

/// `config push FILE -m MSG [--activate] [--force] [--retries N]`: sent with a random
/// idempotency key and retried with it while the control plane is unreachable or answers 5xx,
/// so at most one version is stored however many attempts it takes.
pub async fn push_with(
    api: &Api,
    file: &Path,
    message: &str,
    options: PushOptions,
) -> Result<(), Failed> {
    let PushOptions {
        activate,
        force,
        retries,
    } = options;
    let meta = std::fs::metadata(file)
        .map_err(|e| Failed::new(exit::REFUSED, format!("{}: {e}", file.display())))?;
    if meta.len() > firebreak_config::MAX_CONFIG_BYTES {
        return Err(Failed::new(
            exit::REFUSED,
            format!(
                "{}:0:0: (file): file is {} bytes; the limit is {}",
                file.display(),
                meta.len(),
                firebreak_config::MAX_CONFIG_BYTES
            ),
        ));
    }
    let document = std::fs::read_to_string(file)
        .map_err(|e| Failed::new(exit::REFUSED, format!("{}: {e}", file.display())))?;
    let geoip = read_geoip(file, &document)?;
    let req = PushRequest {
        file: file.display().to_string(),
        document,
        message: message.to_owned(),
        author: std::env::var("USER").ok(),
        activate,
        geoip,
        force,
    };
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw)
        .map_err(|e| Failed::new(exit::UNAVAILABLE, format!("no randomness for a key: {e}")))?;
    let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let key = format!("cli-{key}");
    let (_, bytes, attempts) = api
        .call_idempotent(
            Method::POST,
            "/v1/versions",
            to_json(&req)?,
            &key,
            retries,
            std::time::Duration::from_millis(250),
        )
        .await?;
    let outcome: PushAnswer = serde_json::from_slice(&bytes)
        .map_err(|e| Failed::new(exit::UNAVAILABLE, format!("unexpected answer: {e}")))?;
    let info = outcome.info;
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(why) = &outcome.forced_past {
        eprintln!("warning: forced past the DNS change guard (recorded in the audit log): {why}");
    }
    if outcome.already_stored {
        out!(
            "version {} was already stored by an earlier attempt (idempotency key {key}); nothing new stored",
            info.version
        );
    }
    if attempts > 1 {
        eprintln!("{attempts} attempts");
    }
    if let Some(e) = outcome.activation_error {
        out!(
            "version {} stored ({} bytes, sha256 {}); the rollout did not start: {e}",
            info.version,
            info.size,
            info.sha256.get(..16).unwrap_or(&info.sha256)
        );
        return Err(Failed::new(
            exit::REFUSED,
            format!("rollout not started: {e}"),
        ));
    }
    if outcome.already_stored {
        return Ok(());
    }
    out!(
        "version {} stored ({} bytes, sha256 {}){}",
        info.version,
        info.size,
        info.sha256.get(..16).unwrap_or(&info.sha256),
        if activate {
            "; rollout started (`firebreak rollout status`)"
        } else {
            ""
        }
    );
    Ok(())
}

/// `config versions`.
pub async fn versions(api: &Api, limit: usize) -> Result<(), Failed> {
    let list: Vec<VersionInfo> = api
        .json(Method::GET, &format!("/v1/versions?limit={limit}"), None)
        .await?;
    let target: Option<Target> = current_target(api).await?;
    out!(
        "{:>7}  {:>6}  {:<29}  {:<12}  MESSAGE",
        "VERSION",
        "PARENT",
        "CREATED",
        "AUTHOR"
    );
    for v in list {
        let mark = if target.as_ref().is_some_and(|t| t.version == v.version) {
            "*"
        } else {
            " "
        };
        out!(
            "{mark}{:>6}  {:>6}  {:<29}  {:<12}  {}",
            v.version,
            v.parent
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            time(v.created_at_ms),
            v.author,
            v.message
        );
    }
    Ok(())
}

async fn current_target(api: &Api) -> Result<Option<Target>, Failed> {
    #[derive(serde::Deserialize)]
    struct Stored {
        signed: firebreak_protocol::signed::Signed,
    }
    match api.json::<Stored>(Method::GET, "/v1/target", None).await {
        Ok(s) => Ok(serde_json::from_str(&s.signed.payload).ok()),
        Err(e) if e.code == exit::REFUSED => Ok(None),
        Err(e) => Err(e),
    }
}

/// `config show N`.
pub async fn show(api: &Api, version: u64) -> Result<(), Failed> {
    let d: VersionDetail = api
        .json(Method::GET, &format!("/v1/versions/{version}"), None)
        .await?;
    out!(
        "# version {} by {} at {}: {}",
        d.info.version,
        d.info.author,
        time(d.info.created_at_ms),
        d.info.message
    );
    if let Some(sha) = &d.info.geoip_sha256 {
        out!("# with the MaxMind database dns.geoip_file names: sha256 {sha}");
    }
    outp!("{}", d.document);
    Ok(())
}

/// `config diff A B`.
pub async fn diff(api: &Api, a: u64, b: u64) -> Result<(), Failed> {
    let text = api
        .call(Method::GET, &format!("/v1/diff?from={a}&to={b}"), None)
        .await?;
    outp!("{}", String::from_utf8_lossy(&text));
    Ok(())
}

/// `config target [N] [--rollback]`.
pub async fn target(api: &Api, version: Option<u64>, rollback: bool) -> Result<(), Failed> {
    match version {
        None => match current_target(api).await? {
            Some(t) => out!(
                "target version {} (seq {}, set by {} at {}{})",
                t.version,
                t.seq,
                t.set_by,
                time(t.set_at_ms),
                if t.rollback { ", rollback" } else { "" }
            ),
            None => out!("no target set"),
        },
        Some(version) => {
            let req = SetTargetRequest { version, rollback };
            let t: firebreak_control::store::StoredTarget = api
                .json(Method::PUT, "/v1/target", Some(to_json(&req)?))
                .await?;
            out!("fleet rolled back to version {} (seq {})", t.version, t.seq);
        }
    }
    Ok(())
}

/// `fleet`.
pub async fn fleet(api: &Api, json: bool) -> Result<(), Failed> {
    let edges: Vec<EdgeStatus> = api.json(Method::GET, "/v1/fleet", None).await?;
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&edges).unwrap_or_default()
        );
        return Ok(());
    }
    let now = firebreak_protocol::now_ms();
    out!(
        "{:<24} {:<4} {:<8} {:<8} {:>7}  {:>11}  {:>9}  ERROR",
        "MEMBER",
        "ROLE",
        "POP",
        "CELL",
        "APPLIED",
        "CERT EXPIRY",
        "LAST SEEN"
    );
    for e in edges {
        let mut error = e.report.error.clone().unwrap_or_default();
        for f in &e.report.failed_services {
            if !error.is_empty() {
                error.push_str("; ");
            }
            error.push_str(&format!(
                "service {} kept at {:?}: {}",
                f.service, f.kept_version, f.error
            ));
        }
        out!(
            "{:<24} {:<4} {:<8} {:<8} {:>7}  {:>11}  {:>8}s  {}",
            e.id,
            e.report.role.as_str(),
            e.report.pop,
            e.report.cell,
            e.report
                .applied_version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            cert_expiry(e.cert_expiry_ms, now),
            now.saturating_sub(e.last_seen_ms) / 1000,
            error
        );
    }
    Ok(())
}

/// `fleet remove EDGE`: forgets the edge and its credential.
pub async fn remove_edge(api: &Api, edge: &str, message: &str) -> Result<(), Failed> {
    let id: String = form_urlencoded::byte_serialize(edge.as_bytes()).collect();
    let message: String = form_urlencoded::byte_serialize(message.as_bytes()).collect();
    api.call(
        Method::DELETE,
        &format!("/v1/edges/{id}?message={message}"),
        None,
    )
    .await?;
    out!("edge {edge} removed with its credential; it must join again to come back");
    Ok(())
}

/// `purge URL | --key K --service S | --all --service S`.
pub async fn purge(api: &Api, req: PurgeRequest) -> Result<(), Failed> {
    let out: PurgeOutcome = api
        .json(Method::POST, "/v1/purge", Some(to_json(&req)?))
        .await?;
    out!(
        "purged {} object(s); {}/{} edges acknowledged in {} ms",
        out.purged,
        out.acknowledged.len(),
        out.edges,
        out.elapsed_ms
    );
    for s in &out.stragglers {
        out!("  straggler {}: {}", s.id, s.error);
    }
    for id in &out.skipped {
        out!("  skipped {id}: not seen for over five minutes");
    }
    if out.stragglers.is_empty() {
        Ok(())
    } else {
        Err(Failed::new(
            exit::PARTIAL,
            format!("{} edge(s) did not acknowledge", out.stragglers.len()),
        ))
    }
}

/// `control backup` and `control restore`.
pub async fn control_action(action: crate::ControlAction) -> Result<(), Failed> {
    use firebreak_control::backup::{Backup, MAX_BACKUP_BYTES};
    let unavailable = |e: String| Failed::new(exit::UNAVAILABLE, e);
    match action {
        crate::ControlAction::Backup {
            store,
            control,
            token,
            ca,
            file,
        } => {
            let bytes = match (store, control) {
                (Some(spec), None) => {
                    let store = firebreak_control::Store::open(&spec)
                        .await
                        .map_err(|e| unavailable(e.to_string()))?;
                    let taken = firebreak_control::backup::backup(&store)
                        .await
                        .map_err(|e| unavailable(e.to_string()))?;
                    serde_json::to_vec(&taken).map_err(|e| unavailable(e.to_string()))?
                }
                (None, Some(url)) => Api::with_ca(&url, &token, ca.as_deref())?
                    .call_limited(Method::POST, "/v1/backup", MAX_BACKUP_BYTES)
                    .await?
                    .to_vec(),
                _ => {
                    return Err(Failed::new(
                        exit::USAGE,
                        "give exactly one of --store and --control",
                    ))
                }
            };
            let taken: Backup = serde_json::from_slice(&bytes)
                .map_err(|e| unavailable(format!("not a backup: {e}")))?;
            firebreak_protocol::durable::write_atomic(&file, &bytes)
                .map_err(|e| Failed::new(exit::REFUSED, format!("{}: {e}", file.display())))?;
            out!(
                "backup of {} versions written to {} ({} bytes)",
                taken.versions.len(),
                file.display(),
                bytes.len()
            );
            Ok(())
        }
        crate::ControlAction::Restore { store, file } => {
            let meta = std::fs::metadata(&file)
                .map_err(|e| Failed::new(exit::REFUSED, format!("{}: {e}", file.display())))?;
            if meta.len() > MAX_BACKUP_BYTES as u64 {
                return Err(Failed::new(
                    exit::REFUSED,
                    format!("{}: larger than {MAX_BACKUP_BYTES} bytes", file.display()),
                ));
            }
            let bytes = std::fs::read(&file)
                .map_err(|e| Failed::new(exit::REFUSED, format!("{}: {e}", file.display())))?;
            let backup: Backup = serde_json::from_slice(&bytes).map_err(|e| {
                Failed::new(
                    exit::REFUSED,
                    format!("{}: not a backup: {e}", file.display()),
                )
            })?;
            let versions = backup.versions.len();
            let store = firebreak_control::Store::open(&store)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let epoch = firebreak_control::backup::restore(&store, backup)
                .await
                .map_err(|e| Failed::new(exit::REFUSED, e.to_string()))?;
            out!("restored {versions} versions; new fleet epoch {epoch}");
            Ok(())
        }
    }
}
