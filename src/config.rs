//! `activate.json`: the only interface between the Nix half and the run-time half.
//!
//! Every field is documented in `docs/config.md`. Parsing is strict (unknown fields are
//! rejected, the version must match) so that a Nix/Rust mismatch fails loudly instead of
//! silently dropping a setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The only version this binary understands.
pub const CONFIG_VERSION: u32 = 1;

/// Where the wrapper and the NixOS module install the configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/claude-chroot/activate.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub version: u32,
    /// Root-owned directory holding sessions, sandbox homes, logs and the allowlist.
    pub state_dir: PathBuf,
    /// Store path (or, in tests, a directory) with `etc/` and `home/`.
    pub skeleton: PathBuf,
    pub user: User,
    /// Host paths bound into the sandbox, in order, besides the fixed ones.
    pub mounts: Vec<Mount>,
    pub environment: Environment,
    pub tools: Tools,
    pub managed_settings: ManagedSettings,
    pub network: Network,
    pub workspace: WorkspacePolicy,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Most processes and threads the session may have at once (a cgroup's `pids.max`);
    /// `null` sets no limit.
    pub pids: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct User {
    /// Login name inside the sandbox.
    pub name: String,
    /// Uid the agent runs as; `null` means the invoking user's.
    pub uid: Option<u32>,
    /// Gid the agent runs as; `null` means the invoking user's.
    pub gid: Option<u32>,
    /// Home directory inside the sandbox (the persistent sandbox home is bound here).
    pub home: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
    /// Read-write when true; read-only otherwise.
    #[serde(default)]
    pub writable: bool,
    /// Skip silently when the source does not exist; otherwise a missing source is an error.
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Environment {
    /// Names of variables passed from the invoker's environment when set there.
    pub pass: Vec<String>,
    /// Variables set inside (PATH, NIX_REMOTE, ...); they win over passed ones.
    pub set: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tools {
    /// Login shell inside the sandbox; runs the interactive session.
    pub shell: PathBuf,
    /// `nft` on the host, run as root to load the sandbox's ruleset.
    pub nft: PathBuf,
    /// `pasta` on the host, run as root to give the sandbox connectivity.
    pub pasta: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManagedSettings {
    /// Settings used when the invoking user has no custom file.
    pub default: PathBuf,
    /// Custom file, relative to the invoking user's home; wins over `default` when present.
    pub custom: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only.
    None,
    /// Connectivity through pasta, filtered to the vetted allowlist.
    Allowlist,
    /// Connectivity without the filter (debugging only).
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    pub mode: NetworkMode,
    /// Vetted allowlist in hosts format; `null` means `allowed-ips.conf` in the state directory.
    pub allowlist_file: Option<PathBuf>,
    /// Domains `sync-ips` resolves.
    pub domains: Vec<String>,
    /// TCP ports allowed to the allowlisted addresses.
    pub tcp_ports: Vec<u16>,
    /// UDP ports allowed to the allowlisted addresses.
    pub udp_ports: Vec<u16>,
    /// Nameservers (`ADDRESS` or `ADDRESS:PORT`) for `sync-ips`; empty means the host's.
    pub nameservers: Vec<String>,
    /// Per-query timeout of `sync-ips`, in milliseconds.
    pub resolve_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkspacePolicy {
    /// Workspace-relative paths that run code on the host and are read-only inside.
    pub protected_paths: Vec<PathBuf>,
    /// Move protected paths created during a session into the state directory for review.
    pub quarantine: bool,
}

impl Config {
    /// Read and validate the configuration at `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        // Check the version first so that an old or new config says so instead of
        // complaining about the first field it does not know.
        let raw: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
        match raw.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(CONFIG_VERSION) => {}
            Some(v) => bail!(
                "config version {v} is not supported (this claude-chroot-activate reads \
                 version {CONFIG_VERSION}): rebuild the configuration with the same claude-chroot"
            ),
            None => bail!("config has no numeric \"version\" field"),
        }
        let config: Config = serde_json::from_value(raw)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let absolute = |what: &str, p: &Path| -> Result<()> {
            if !p.is_absolute() {
                bail!("{what} must be an absolute path, not {}", p.display());
            }
            Ok(())
        };
        absolute("stateDir", &self.state_dir)?;
        if self.state_dir == Path::new("/") {
            bail!("stateDir must not be /");
        }
        absolute("skeleton", &self.skeleton)?;
        absolute("user.home", &self.user.home)?;
        absolute("tools.shell", &self.tools.shell)?;
        absolute("tools.nft", &self.tools.nft)?;
        absolute("tools.pasta", &self.tools.pasta)?;
        absolute("managedSettings.default", &self.managed_settings.default)?;
        if self.managed_settings.custom.is_absolute() {
            bail!("managedSettings.custom must be relative to the invoking user's home");
        }
        for m in &self.mounts {
            absolute("mounts[].source", &m.source)?;
            absolute("mounts[].target", &m.target)?;
            if m.target == Path::new("/") {
                bail!("mounts[].target must not be /");
            }
        }
        if let Some(f) = &self.network.allowlist_file {
            absolute("network.allowlistFile", f)?;
        }
        if self.user.name.is_empty()
            || !self
                .user
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("user.name {:?} is not a valid user name", self.user.name);
        }
        if self.user.uid == Some(0) || self.user.gid == Some(0) {
            bail!("user.uid and user.gid must not be 0: the agent never runs as root");
        }
        if let Some(n) = self.limits.pids
            && n < crate::cgroup::MIN_PIDS
        {
            bail!(
                "limits.pids is {n}: a session needs at least {} processes",
                crate::cgroup::MIN_PIDS
            );
        }
        for p in &self.workspace.protected_paths {
            if p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                bail!(
                    "workspace.protectedPaths entry {} must be a plain relative path",
                    p.display()
                );
            }
        }
        Ok(())
    }

    /// The vetted allowlist file.
    pub fn allowlist_file(&self) -> PathBuf {
        self.network
            .allowlist_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("allowed-ips.conf"))
    }
}
