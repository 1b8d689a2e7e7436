//! pasta: userspace connectivity for the sandbox's network namespace.
//!
//! pasta runs on the host side, attached to the sandbox's namespace through a tap device, and
//! turns the sandbox's packets into ordinary host sockets. Nothing on the host changes (no
//! veth, route, bridge or host firewall rule), and the nftables table inside the namespace
//! decides what may leave.
//!
//! Options (pasta(1)); each closes a path around the allowlist:
//! - `--tcp-ports none --udp-ports none`: no port of the host is forwarded into the sandbox.
//! - `--tcp-ns none --udp-ns none`: the sandbox cannot reach the host's loopback ports (pasta's
//!   default for these is `auto`, which would forward every port bound on the host's loopback).
//! - `--no-map-gw`: the gateway address is not mapped to the host itself.
//! - `--dns none`: no DNS address is used or forwarded; names come from the pinned /etc/hosts.
//! - `--no-dhcp --no-dhcpv6`: `--config-net` sets addresses and routes directly, so these
//!   servers only add surface. NDP stays on: IPv6 needs it to reach the gateway.
//! - `--runas 0`: older pasta (Debian 12's) drops to `nobody` before joining the namespace and
//!   then cannot, because the namespace belongs to the initial user namespace. pasta still
//!   drops every capability but those it needs and confines itself with seccomp.
//! - `--netns /proc/self/fd/N --no-netns-quit`: the namespace is passed as an inherited
//!   descriptor, so pasta joins exactly the namespace we opened even if the PID behind the
//!   caller's path is reused; pasta must not watch that path for deletion, we stop it.
//!
//! Readiness: pasta forks into the background once it is set up and its first process exits
//! with 0 (after writing `--pid`), so waiting for that exit is the readiness signal.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How long pasta gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running pasta; `stop` (or drop) ends it and waits until it is gone.
#[derive(Debug)]
pub struct Pasta {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

/// The exact arguments given to pasta, for the namespace descriptor `netns_fd`.
pub fn arguments(netns_fd: i32, pid_file: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--quiet",
        "--runas",
        "0",
        "--netns-only",
        "--no-netns-quit",
        "--config-net",
        "--no-map-gw",
        "--tcp-ports",
        "none",
        "--udp-ports",
        "none",
        "--tcp-ns",
        "none",
        "--udp-ns",
        "none",
        "--dns",
        "none",
        "--no-dhcp",
        "--no-dhcpv6",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.push("--pid".into());
    args.push(pid_file.display().to_string());
    args.push("--netns".into());
    args.push(format!("/proc/self/fd/{netns_fd}"));
    args
}

/// A private directory for pasta's PID file and output, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<ScratchDir> {
        let base = if Path::new("/run").is_dir() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let template = base.join("claude-chroot-pasta.XXXXXX");
        let dir = nix::unistd::mkdtemp(&template)
            .with_context(|| format!("cannot create a directory like {}", template.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Start `pasta` (absolute path) for the network namespace at `netns` (e.g.
/// `/proc/PID/ns/net`); returns once pasta is ready.
pub fn start(pasta: &Path, netns: &Path, verbose: bool) -> Result<Pasta> {
    let ns = File::open(netns)
        .with_context(|| format!("cannot open network namespace {}", netns.display()))?;
    let ns_fd = ns.as_raw_fd();
    let scratch = ScratchDir::new()?;
    let pid_file = scratch.0.join("pasta.pid");
    let log_path = scratch.0.join("pasta.log");
    let log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let args = arguments(ns_fd, &pid_file);
    if verbose {
        eprintln!(
            "claude-chroot: starting {} {}",
            pasta.display(),
            args.join(" ")
        );
    }

    let mut command = Command::new(pasta);
    command
        .args(&args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("cannot duplicate pasta's log descriptor")?,
        )
        .stderr(log);
    // SAFETY: fcntl is async-signal-safe and touches only the namespace descriptor, which the
    // parent keeps open (`ns`) until after spawn; clearing FD_CLOEXEC in the child only lets
    // pasta inherit it.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(ns_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", pasta.display()))?;
    drop(ns);
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "{} failed to attach to {} ({status}): {}",
            pasta.display(),
            netns.display(),
            output.trim()
        );
    }
    if verbose && !output.trim().is_empty() {
        eprintln!("claude-chroot: pasta: {}", output.trim());
    }
    let text = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("pasta started but wrote no PID file {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("pasta's PID file holds {:?}", text.trim()))?;
    let pidfd = pidfd_open(pid).with_context(|| format!("pasta (PID {pid}) is not running"))?;
    Ok(Pasta {
        pid,
        pidfd: Some(pidfd),
    })
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal on a descriptor we own, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // ESRCH: already gone, which is what we want.
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// Wait up to `timeout` for the process behind `pidfd` to exit.
fn pidfd_wait(pidfd: &OwnedFd, timeout: Duration) -> Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, ms) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("cannot wait for pasta"),
        }
    }
}

impl Pasta {
    /// pasta's PID (in the caller's PID namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Stop pasta and wait until it has exited.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(pidfd) = self.pidfd.take() else {
            return Ok(());
        };
        pidfd_signal(&pidfd, libc::SIGTERM)
            .with_context(|| format!("cannot signal pasta (PID {})", self.pid))?;
        if !pidfd_wait(&pidfd, STOP_GRACE)? {
            pidfd_signal(&pidfd, libc::SIGKILL)
                .with_context(|| format!("cannot kill pasta (PID {})", self.pid))?;
            if !pidfd_wait(&pidfd, STOP_GRACE)? {
                bail!("pasta (PID {}) did not exit after SIGKILL", self.pid);
            }
        }
        // pasta daemonized, so it is normally not our child; but if this process is a child
        // subreaper it was reparented here and must be reaped. ECHILD means it was not ours.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(self.pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        Ok(())
    }
}

impl Drop for Pasta {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("claude-chroot: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_forward_no_ports_and_no_dns() {
        let args = arguments(7, Path::new("/run/x/pasta.pid"));
        let joined = args.join(" ");
        for needle in [
            "--tcp-ports none",
            "--udp-ports none",
            "--tcp-ns none",
            "--udp-ns none",
            "--no-map-gw",
            "--dns none",
            "--config-net",
            "--pid /run/x/pasta.pid",
            "--netns /proc/self/fd/7",
        ] {
            assert!(joined.contains(needle), "{needle} missing from {joined}");
        }
        assert!(
            !args
                .iter()
                .any(|a| a == "--dns-forward" || a == "-4" || a == "-6")
        );
    }
}
