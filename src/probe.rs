//! The escape attempts of `selftest`, run inside a real session as the sandbox user.
//!
//! The activator binary is bound read-only at [`INSIDE_PATH`] and started as
//! `probe --plan JSON --out FILE`: it tries what an agent trying to break out would try,
//! and writes one [`Finding`] per probe to FILE in the workspace. The runner on the host
//! ([`crate::selftest`]) adds what only the host can see and prints the table.
//!
//! A probe decides from the kernel's answer alone where it can: "refused with EPERM",
//! "no such file", "connected". Network attempts refused by a remote-looking error
//! (a reset, an unreachable) are [`Outcome::Unconfirmed`]: the runner settles them with the
//! session's blocked-destination counters, so an attempt counts as held only when the
//! sandbox's own filter refused it. No attempt is aimed at a third party: the addresses are
//! reserved documentation addresses, the user's allowlist and the user's nameservers.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use crate::config::NetworkMode;

mod fs;
mod kernel;
mod net;
mod privileges;
mod process;

use fs::{read_host_path, settings, write_etc, write_nix_store, write_skeleton};
use kernel::{kernel_log, kernel_module, keyring, nftables};
use net::network;
use privileges::{
    chroot_probe, mount_probe, nix_daemon, pivot_root_probe, privileges, setuid, userns_settings,
};
use process::{detach_child, host_process, leave_process, pids_limit, ptrace_probe, tiocsti};

/// Where `enter --probe-binary` binds the activator inside the sandbox.
pub const INSIDE_PATH: &str = "/run/claude-chroot-probe";

/// How long a network attempt waits for an answer.
const NET_TIMEOUT: Duration = Duration::from_millis(1500);

/// Reserved documentation addresses (RFC 5737, RFC 3849): never a real destination.
pub const DOC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const DOC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const DOC_DNS4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

/// A name that no allowlist names and that resolves in the public DNS (RFC 2606).
pub const OUTSIDE_NAME: &str = "example.com";

/// What the runner tells the probe about the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Per-run marker, also in the names of the processes the probe leaves running.
    pub nonce: String,
    pub mode: NetworkMode,
    /// Host files and directories that must not be reachable inside.
    pub host_paths: Vec<HostPath>,
    /// The skeleton's host path (a store path on NixOS, visible read-only there).
    pub skeleton: PathBuf,
    /// A process of the invoking user on the host, and its name.
    pub host_pid: i32,
    pub host_name: String,
    /// The runner's own pid (root, host side).
    pub runner_pid: i32,
    /// TCP listeners of the runner on the host's loopback.
    pub loopback4: Option<u16>,
    pub loopback6: Option<u16>,
    /// An abstract unix socket the runner listens on in the host's network namespace.
    pub abstract_socket: String,
    /// Allowed addresses from the user's allowlist.
    pub allowed4: Option<Ipv4Addr>,
    pub allowed6: Option<Ipv6Addr>,
    /// A port the allowlist does not open, for the allowed addresses.
    pub closed_port: u16,
    /// The first allowed TCP and UDP ports (the address alone must decide).
    pub tcp_port: u16,
    pub udp_port: u16,
    /// The user's nameservers (configured, else the host's).
    pub nameservers: Vec<IpAddr>,
    /// The session's pids limit, if the configuration sets one.
    pub pids_limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostPath {
    pub id: String,
    pub threat: String,
    pub path: PathBuf,
    /// Identity of the host object, so that a same-named path inside is not mistaken for it.
    pub dev: u64,
    pub ino: u64,
    /// Why there is nothing to probe (the host has no such path); the probe is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Held,
    Broken,
    Skipped,
    /// Refused, but possibly by something outside the sandbox: the runner decides.
    Unconfirmed,
}

/// A destination the sandbox's filter must have counted for an attempt to count as held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub address: IpAddr,
    pub protocol: String,
    pub port: Option<u16>,
}

/// One probe's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub threat: String,
    pub tried: String,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unconfirmed: Vec<Destination>,
}

impl Finding {
    fn new(id: &str, threat: &str, tried: impl Into<String>) -> Finding {
        Finding {
            id: id.into(),
            threat: threat.into(),
            tried: tried.into(),
            outcome: Outcome::Held,
            detail: String::new(),
            unconfirmed: Vec::new(),
        }
    }

    fn held(mut self, detail: impl Into<String>) -> Finding {
        self.outcome = Outcome::Held;
        self.detail = detail.into();
        self
    }

    fn broken(mut self, detail: impl Into<String>) -> Finding {
        self.outcome = Outcome::Broken;
        self.detail = detail.into();
        self
    }

    fn skipped(mut self, reason: impl Into<String>) -> Finding {
        self.outcome = Outcome::Skipped;
        self.detail = reason.into();
        self
    }

    /// Held if no attempt got through; broken with the list of those that did.
    fn judge(self, attempts: &[(String, std::result::Result<String, String>)]) -> Finding {
        let through: Vec<String> = attempts
            .iter()
            .filter_map(|(what, r)| r.as_ref().err().map(|e| format!("{what}: {e}")))
            .collect();
        if through.is_empty() {
            let refusals: Vec<String> = attempts
                .iter()
                .map(|(what, r)| format!("{what}: {}", r.as_ref().unwrap_or(&String::new())))
                .collect();
            self.held(refusals.join("; "))
        } else {
            self.broken(through.join("; "))
        }
    }
}

/// What a single attempt gave: `Ok(how it was refused)` or `Err(what got through)`.
type Attempt = std::result::Result<String, String>;

fn refused_unless(r: std::result::Result<(), Errno>, got_through: &str) -> Attempt {
    match r {
        Ok(()) => Err(got_through.to_string()),
        Err(e) => Ok(errno_name(e)),
    }
}

fn errno_name(e: Errno) -> String {
    format!("{e:?}")
}

/// `probe`: refuse outside a sandbox, run every probe, write the findings to `out`.
pub fn run(plan_json: &str, out: &Path) -> Result<()> {
    ensure_inside()?;
    let plan: Plan = serde_json::from_str(plan_json).context("parse the probe plan")?;
    set_name(&format!("ccr-p{}", plan.nonce))?;
    let findings = all(&plan);
    let json = serde_json::to_vec_pretty(&findings).context("serialize the findings")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("create {}", out.display()))?;
    f.write_all(&json)
        .with_context(|| format!("write {}", out.display()))?;
    Ok(())
}

/// `probe --hold`: leave a detached process behind, say so in `out`, then wait to be killed
/// with the session.
pub fn hold(nonce: &str, out: &Path) -> Result<()> {
    ensure_inside()?;
    set_name(&format!("ccr-p{nonce}"))?;
    detach_child(&format!("ccr-d{nonce}"))?;
    std::fs::write(out, b"ready\n").with_context(|| format!("write {}", out.display()))?;
    std::thread::sleep(Duration::from_secs(120));
    Ok(())
}

/// The probes try real escapes (mounts, netlink, module loading): refuse to run anywhere
/// but from the sandbox's bind of the activator.
fn ensure_inside() -> Result<()> {
    let exe = std::fs::read_link("/proc/self/exe").context("read /proc/self/exe")?;
    let host = nix::unistd::gethostname().context("gethostname")?;
    if exe != Path::new(INSIDE_PATH) || host != "claude-chroot" {
        bail!("probe runs only inside a claude-chroot session started by selftest");
    }
    Ok(())
}

fn set_name(name: &str) -> Result<()> {
    let c = CString::new(name)?;
    nix::sys::prctl::set_name(&c).context("prctl(PR_SET_NAME)")
}

/// Every probe, in the order of the table.
pub fn all(plan: &Plan) -> Vec<Finding> {
    let mut f = Vec::new();
    for hp in &plan.host_paths {
        f.push(read_host_path(hp));
    }
    f.push(write_etc(plan));
    f.push(write_nix_store(plan));
    f.push(write_skeleton(plan));
    f.push(settings(plan));
    f.push(privileges());
    f.push(setuid());
    f.push(mount_probe(plan));
    f.push(chroot_probe());
    f.push(pivot_root_probe());
    f.push(userns_settings(plan));
    f.push(nix_daemon());
    f.push(host_process(plan));
    f.push(ptrace_probe(plan));
    f.push(tiocsti());
    f.push(keyring());
    f.push(kernel_log());
    f.push(kernel_module());
    f.push(nftables(plan));
    f.extend(network(plan));
    f.push(leave_process(plan));
    f.push(pids_limit(plan));
    f
}

fn io_errno(e: &std::io::Error) -> String {
    e.raw_os_error()
        .map(|n| errno_name(Errno::from_raw(n)))
        .unwrap_or_else(|| e.to_string())
}

/// Read the findings file the probe wrote, bounded in size.
pub fn read_findings(file: std::fs::File) -> Result<Vec<Finding>> {
    let mut text = Vec::new();
    file.take(1 << 20)
        .read_to_end(&mut text)
        .context("read the probe's findings")?;
    serde_json::from_slice(&text).context("parse the probe's findings")
}
