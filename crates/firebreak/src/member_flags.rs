//! The flags every fleet member takes to run under a control plane (`firebreak edge --control`,
//! `firebreak dns --control`), and the agent options they make.

use firebreak_edge::agent::journal::SafeMode;
use firebreak_edge::agent::{control_ca, AgentOptions};
use firebreak_protocol::keys::PublicKey;
use std::path::PathBuf;
use std::time::Duration;

/// How a member joins and follows the control plane.
#[derive(clap::Args, Debug)]
pub(crate) struct MemberFlags {
    /// Control plane URL: the member takes its configuration from there.
    #[arg(long)]
    pub control: Option<String>,
    /// The fleet's join token: the member joins once with it and then uses its own
    /// credential (kept in the data directory).
    #[arg(
        long,
        visible_alias = "join-token",
        env = "FIREBREAK_EDGE_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub token: String,
    /// The fleet's CA bundle (PEM) for an `https://` control plane: kept in the data
    /// directory (`control-ca.pem`, replacing the one kept before), so restarts need no flag;
    /// the control plane is then verified against it only. Without one ever given, an
    /// `https://` control plane is verified against webpki-roots.
    #[arg(long, env = "FIREBREAK_CONTROL_CA", requires = "control")]
    pub control_ca: Option<PathBuf>,
    /// The control plane's public key (`ed25519:...`) or a file holding it.
    #[arg(long, requires = "control")]
    pub trust: Option<String>,
    /// POP (site) name.
    #[arg(long, default_value = "local")]
    pub pop: String,
    /// Cell (rollout group) name (default: `main` for edges, `dns` for DNS servers).
    #[arg(long)]
    pub cell: Option<String>,
    /// Member id, unique in the fleet (default: POP-CELL-PORT).
    #[arg(long)]
    pub id: Option<String>,
    /// Where the last good versions are kept.
    #[arg(long, requires = "control")]
    pub data_dir: Option<PathBuf>,
    /// Versions kept on disk.
    #[arg(long, default_value_t = 5)]
    pub keep: usize,
    /// Heartbeat to the control plane, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub heartbeat_ms: u64,
    /// How often health counts go to the control plane (what rollout gates judge), in ms.
    #[arg(long, default_value_t = 5_000)]
    pub health_interval_ms: u64,
    /// Safe mode: crashes of one version that make the member boot the previous one instead.
    #[arg(long, default_value_t = 3)]
    pub safe_mode_crashes: u32,
    /// Safe mode: the window those crashes must fall in, in seconds.
    #[arg(long, default_value_t = 300)]
    pub safe_mode_window_s: u64,
}

impl MemberFlags {
    /// The agent's options for a member in cell `default_cell` (unless `--cell`) listening on
    /// `port` (for the default id); installs `--control-ca` into the data directory. `None`
    /// without `--control`.
    pub fn options(self, default_cell: &str, port: u16) -> Result<Option<AgentOptions>, String> {
        let Some(control) = self.control else {
            return Ok(None);
        };
        let trust = self.trust.ok_or("--trust KEY is required with --control")?;
        let trust = PublicKey::from_arg(&trust).map_err(|e| e.to_string())?;
        let data_dir = self
            .data_dir
            .ok_or("--data-dir is required with --control")?;
        if let Some(file) = &self.control_ca {
            let pem = control_ca::read(file).map_err(|e| format!("--control-ca {e}"))?;
            control_ca::install(&data_dir, &pem).map_err(|e| format!("--control-ca: {e}"))?;
        }
        let cell = self.cell.unwrap_or_else(|| default_cell.to_owned());
        let id = self
            .id
            .unwrap_or_else(|| format!("{}-{}-{port}", self.pop, cell));
        let mut opts = AgentOptions::new(control, self.token, id, data_dir, trust);
        opts.pop = self.pop;
        opts.cell = cell;
        opts.keep = self.keep;
        opts.heartbeat = Duration::from_millis(self.heartbeat_ms.max(100));
        opts.health_interval = Duration::from_millis(self.health_interval_ms.max(100));
        opts.safe_mode = SafeMode {
            crashes: self.safe_mode_crashes.max(1),
            window: Duration::from_secs(self.safe_mode_window_s.max(1)),
        };
        Ok(Some(opts))
    }
}
