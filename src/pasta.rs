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
//! - `--foreground`: pasta stays our child, so the kernel can kill it when we die
//!   (`PR_SET_PDEATHSIG`, prctl(2)); a daemonized pasta would outlive a SIGKILLed activator
//!   until `cleanup` ran.
//!
//! Readiness: pasta configures the namespace's interface, addresses and routes first, then
//! writes its PID file and closes it, then enters its event loop (the same point at which it
//! would fork into the background without `--foreground`). We watch the PID file's directory
//! with inotify(7) and the process with a pidfd, so we wake exactly when it is ready or dies.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long pasta gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long pasta may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of the PID file in the scratch directory.
const PID_FILE: &str = "pasta.pid";

/// A running pasta, our child; `stop` (or drop) ends it and reaps it.
#[derive(Debug)]
pub struct Pasta {
    pid: i32,
    child: Option<Child>,
    pidfd: OwnedFd,
}

/// The exact arguments given to pasta, for the namespace descriptor `netns_fd`.
pub fn arguments(netns_fd: i32, pid_file: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--quiet",
        "--foreground",
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

/// An inotify instance watching one directory for files written and closed.
struct Watch(OwnedFd);

impl Watch {
    fn new(dir: &Path) -> Result<Watch> {
        // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        // SAFETY: the kernel just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .context("scratch directory path contains a NUL byte")?;
        // SAFETY: a valid descriptor and NUL-terminated path; the mask is a plain constant.
        let wd =
            unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_CLOSE_WRITE) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("inotify_add_watch {}", dir.display()));
        }
        Ok(Watch(fd))
    }

    /// Drain pending events; whether one of them names `file`.
    fn saw(&self, file: &str) -> bool {
        let mut buf = [0u8; 4096];
        let mut found = false;
        loop {
            let n = match nix::unistd::read(&self.0, &mut buf) {
                Ok(n) if n > 0 => n,
                Err(nix::errno::Errno::EINTR) => continue,
                _ => return found,
            };
            // Each event is a fixed header followed by `len` bytes of NUL-padded name.
            let header = std::mem::size_of::<libc::inotify_event>();
            let mut at = 0;
            while at + header <= n {
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes"));
                let name = &buf[at + header..(at + header + len as usize).min(n)];
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                found |= name == file.as_bytes();
                at += header + len as usize;
            }
        }
    }
}

/// Start `pasta` (absolute path) for the network namespace at `netns` (e.g.
/// `/proc/PID/ns/net`); returns once pasta is ready.
///
/// pasta is killed by the kernel when the calling *thread* ends (`PR_SET_PDEATHSIG` follows
/// the thread that forked it), so call this from a thread that outlives the session: the
/// activator's main thread.
pub fn start(pasta: &Path, netns: &Path, verbose: bool) -> Result<Pasta> {
    let ns = File::open(netns)
        .with_context(|| format!("cannot open network namespace {}", netns.display()))?;
    let ns_fd = ns.as_raw_fd();
    let scratch = ScratchDir::new()?;
    let pid_file = scratch.0.join(PID_FILE);
    let log_path = scratch.0.join("pasta.log");
    let log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    // Watch before pasta starts, so its write of the PID file cannot be missed.
    let watch = Watch::new(&scratch.0)?;
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
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: every call below is async-signal-safe and touches only this child's own state
    // and the namespace descriptor, which the parent keeps open (`ns`) until after spawn.
    unsafe {
        command.pre_exec(move || {
            // The activator blocks the signals it forwards, and a blocked mask survives exec:
            // pasta would never see our SIGTERM.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A session of its own: a ^C meant for the activator's process group must not
            // cut the sandbox off before the activator has forwarded it.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Die with the activator. If it already died, getppid shows the new parent and
            // the death signal will never come: give up instead.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // Let pasta inherit the namespace descriptor.
            if libc::fcntl(ns_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot run {}", pasta.display()))?;
    drop(ns);
    // Our unreaped child: its PID cannot be reused, so the pidfd names exactly it.
    let pidfd = match pidfd_open(child.id() as i32) {
        Ok(fd) => fd,
        Err(e) => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).context("pidfd_open on pasta");
        }
    };
    let mut pasta_proc = Pasta {
        pid: child.id() as i32,
        child: Some(child),
        pidfd,
    };

    let ready = wait_ready(&pasta_proc.pidfd, &watch);
    let output = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    match ready {
        Ok(true) => {}
        Ok(false) => {
            let status = pasta_proc.reap();
            bail!(
                "{} failed to attach to {} ({status}): {}",
                pasta.display(),
                netns.display(),
                output()
            );
        }
        Err(e) => {
            let _ = pasta_proc.stop_inner();
            return Err(e.context(format!(
                "{} did not get ready for {}: {}",
                pasta.display(),
                netns.display(),
                output()
            )));
        }
    }
    let text = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("cannot read pasta's PID file {}", pid_file.display()))?;
    let written: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("pasta's PID file holds {:?}", text.trim()))?;
    if written != pasta_proc.pid() as u32 {
        bail!(
            "pasta wrote PID {written} but runs as {}: did it fork into the background?",
            pasta_proc.pid()
        );
    }
    if verbose && !output().is_empty() {
        eprintln!("claude-chroot: pasta: {}", output());
    }
    Ok(pasta_proc)
}

/// Wait until pasta has written its PID file (`true`) or has exited (`false`).
fn wait_ready(pidfd: &OwnedFd, watch: &Watch) -> Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no PID file after {READY_TIMEOUT:?}");
        }
        let mut fds = [
            PollFd::new(watch.0.as_fd(), PollFlags::POLLIN),
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(
            &mut fds,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll for pasta's readiness"),
        }
        let readable = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let (written, exited) = (readable(&fds[0]), readable(&fds[1]));
        // The PID file first: pasta may have become ready and then failed, which the
        // caller sees on its next use anyway.
        if written && watch.saw(PID_FILE) {
            return Ok(true);
        }
        if exited {
            return Ok(false);
        }
    }
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

    /// Ask pasta to exit without waiting for it, so that it winds down while the caller
    /// does other work; [`Pasta::stop`] then only waits (and kills it if it must).
    pub fn terminate(&self) -> Result<()> {
        if self.child.is_some() {
            pidfd_signal(&self.pidfd, libc::SIGTERM)
                .with_context(|| format!("cannot signal pasta (PID {})", self.pid))?;
        }
        Ok(())
    }

    /// Reap the exited child; its status as text.
    fn reap(&mut self) -> String {
        match self.child.take().map(|mut c| c.wait()) {
            Some(Ok(status)) => status.to_string(),
            Some(Err(e)) => format!("cannot wait: {e}"),
            None => "already reaped".into(),
        }
    }

    fn stop_inner(&mut self) -> Result<()> {
        if self.child.is_none() {
            return Ok(());
        }
        let pid = self.pid;
        pidfd_signal(&self.pidfd, libc::SIGTERM)
            .with_context(|| format!("cannot signal pasta (PID {pid})"))?;
        if !pidfd_wait(&self.pidfd, STOP_GRACE)? {
            pidfd_signal(&self.pidfd, libc::SIGKILL)
                .with_context(|| format!("cannot kill pasta (PID {pid})"))?;
            if !pidfd_wait(&self.pidfd, STOP_GRACE)? {
                bail!("pasta (PID {pid}) did not exit after SIGKILL");
            }
        }
        self.reap();
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
            "--foreground",
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
