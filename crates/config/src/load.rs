//! Reading, parsing and validating a configuration file into a [`ValidConfig`].

use crate::limits::MAX_CONFIG_BYTES;
use crate::locate::{line_col, locate, PathSeg};
use crate::model::Config;
use crate::validate::{validate, Mode};
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// A configuration that passed every check. Only [`parse_str`] and [`load_file`] make one, so
/// holding a `ValidConfig` proves the file was validated.
///
/// Under a control plane it also carries the version's MaxMind database (`dns.geoip_file`) as
/// bytes ([`ValidConfig::geoip`]): this crate does not read the format; the control plane
/// verified the bytes with the DNS server's own code before it signed the version, and a DNS
/// server opens them again when it applies the version.
#[derive(Clone, PartialEq)]
pub struct ValidConfig(pub(crate) Config, pub(crate) Option<Arc<[u8]>>);

impl fmt::Debug for ValidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = f.debug_tuple("ValidConfig");
        t.field(&self.0);
        if let Some(g) = &self.1 {
            t.field(&format_args!("geoip: {} bytes", g.len()));
        }
        t.finish()
    }
}

impl ValidConfig {
    /// The validated configuration.
    pub fn get(&self) -> &Config {
        &self.0
    }

    /// The MaxMind database the version carries for `dns.geoip_file` (under a control plane;
    /// `None` for a file loaded from disk, whose `geoip_file` the DNS server reads itself).
    pub fn geoip(&self) -> Option<&Arc<[u8]>> {
        self.1.as_ref()
    }

    /// The configuration carrying `bytes` as its MaxMind database (set by the edge agent's
    /// compose from the version's bundle, which checked that the fleet document names one).
    pub fn with_geoip(mut self, bytes: Arc<[u8]>) -> Self {
        self.1 = Some(bytes);
        self
    }
}

impl ValidConfig {
    /// Resolves a relative `[cache.disk] path` against `base` (an edge's data directory),
    /// so that every edge of a fleet sharing one document gets its own cache directory.
    pub fn with_disk_base(mut self, base: &std::path::Path) -> Self {
        if let Some(disk) = self.0.cache.disk.as_mut() {
            if std::path::Path::new(&disk.path).is_relative() {
                disk.path = base.join(&disk.path).to_string_lossy().into_owned();
            }
        }
        self
    }

    /// Completes a fleet document (validated with [`parse_managed_str`]) with one edge's own
    /// addresses. Without an `[admin]` table in the document, the admin listener gets
    /// `fallback_token`, so only requests signed by the control plane and `/healthz` pass.
    pub fn localize(
        mut self,
        listeners: &[SocketAddr],
        admin: Option<SocketAddr>,
        fallback_token: impl FnOnce() -> String,
    ) -> Self {
        self.0.listeners = listeners
            .iter()
            .map(|&addr| crate::model::ListenerConfig {
                addr,
                proxy_protocol: false,
                tls: false,
            })
            .collect();
        self.0.admin = match (admin, self.0.admin.take()) {
            (None, _) => None,
            (Some(listen), Some(doc)) => Some(crate::model::AdminConfig {
                listen: Some(listen),
                token: doc.token,
                token_sha256: doc.token_sha256,
            }),
            (Some(listen), None) => Some(crate::model::AdminConfig {
                listen: Some(listen),
                token: Some(fallback_token()),
                token_sha256: None,
            }),
        };
        self
    }
}

impl std::ops::Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.0
    }
}

/// One problem in a configuration file, located precisely enough to fix it. Serialisable:
/// the control plane's API returns these as they are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigError {
    /// File name as given by the caller.
    pub file: String,
    /// 1-based line, 0 when the problem is not tied to a place (for example the file size).
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Dotted path of the field, for example `service[0].origin.servers[1].weight`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = if self.field.is_empty() {
            "(file)"
        } else {
            &self.field
        };
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, field, self.message
        )
    }
}

/// A refused configuration: every error found. The running configuration stays untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRejected {
    /// The errors, in file order where known.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigRejected {}

impl ConfigError {
    /// An error about `field` (a dotted path of keys, for example `["dns", "geoip_file"]`),
    /// located in `text` at the field (or its deepest ancestor present; line 0 if none).
    pub fn at_field(file: &str, text: &str, field: &[&'static str], message: String) -> Self {
        let path: Vec<PathSeg> = field.iter().map(|k| PathSeg::Key(k)).collect();
        let (line, column) = toml_edit::Document::parse(text)
            .ok()
            .and_then(|doc| locate(&doc, &path))
            .map_or((0, 0), |at| line_col(text, at));
        Self {
            file: file.to_owned(),
            line,
            column,
            field: PathSeg::display(&path),
            message,
        }
    }
}

impl ConfigRejected {
    fn one(file: &str, line: usize, column: usize, field: &str, message: String) -> Self {
        Self {
            errors: vec![ConfigError {
                file: file.to_owned(),
                line,
                column,
                field: field.to_owned(),
                message,
            }],
        }
    }
}

/// Reads and validates a standalone edge's configuration file. The size is checked before the
/// file is read.
pub fn load_file(path: &Path) -> Result<ValidConfig, ConfigRejected> {
    load_file_as(path, Mode::Standalone)
}

/// Reads and validates a configuration file for `mode`.
pub fn load_file_as(path: &Path, mode: Mode) -> Result<ValidConfig, ConfigRejected> {
    let name = path.display().to_string();
    let io_err =
        |e: std::io::Error| ConfigRejected::one(&name, 0, 0, "", format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(too_big(&name, len));
    }
    let mut text = String::new();
    // `take` bounds the read even if the file grows between the size check and the read.
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    parse(&name, &text, mode, path.parent())
}

fn too_big(name: &str, len: u64) -> ConfigRejected {
    ConfigRejected::one(
        name,
        0,
        0,
        "",
        format!("file is {len} bytes; the limit is {MAX_CONFIG_BYTES}"),
    )
}

/// Parses and validates configuration text for a standalone edge. `file` names it in error
/// messages; files it references (`cert_file`, `key_file`) are relative to `file`'s directory.
pub fn parse_str(file: &str, text: &str) -> Result<ValidConfig, ConfigRejected> {
    parse(file, text, Mode::Standalone, Path::new(file).parent())
}

/// Parses and validates a fleet document: configuration given to the control plane, which
/// must not name per-edge addresses. The control plane and the edges both use this, so a
/// document is judged the same way in both places.
pub fn parse_managed_str(file: &str, text: &str) -> Result<ValidConfig, ConfigRejected> {
    parse(file, text, Mode::Managed, None)
}

fn parse(
    file: &str,
    text: &str,
    mode: Mode,
    base: Option<&Path>,
) -> Result<ValidConfig, ConfigRejected> {
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big(file, text.len() as u64));
    }
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        ConfigRejected::one(file, line, column, "", e.message().to_owned())
    })?;
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        let inner = e.into_inner();
        let (line, column) = inner
            .span()
            .map(|s| line_col(text, s.start))
            .unwrap_or((0, 0));
        ConfigRejected::one(file, line, column, &field, inner.message().to_owned())
    })?;
    let mut problems = crate::tls::load_files(&mut config, base, mode);
    problems.extend(crate::origin_tls::read_ca_files(&mut config, base, mode));
    problems.extend(validate(&config, mode));
    if problems.is_empty() {
        return Ok(ValidConfig(config, None));
    }
    let doc = toml_edit::Document::parse(text).ok();
    let mut errors: Vec<ConfigError> = problems
        .into_iter()
        .map(|p| {
            let (line, column) = doc
                .as_ref()
                .and_then(|d| locate(d, &p.path))
                .map(|offset| line_col(text, offset))
                .unwrap_or((0, 0));
            ConfigError {
                file: file.to_owned(),
                line,
                column,
                field: PathSeg::display(&p.path),
                message: p.message,
            }
        })
        .collect();
    errors.sort_by_key(|e| (e.line, e.column));
    Err(ConfigRejected { errors })
}
