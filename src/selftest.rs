//! `selftest`: prove the sandbox on this machine, with this kernel and this configuration.
//!
//! ```text
//! runner (root, host)                     temporary workspace, host-side targets
//!  └─ claude-chroot-activate enter ...    a real session, on a pseudo-terminal of ours
//!      └─ /run/claude-chroot-probe probe  the escape attempts, as the sandbox user
//! ```
//!
//! The runner starts what the probes aim at (TCP listeners on the host's loopback, an
//! abstract unix socket, a process of the invoking user), runs one session with the probes
//! and reads their findings from the workspace as the invoking user. Then it checks what
//! only the host can see: that nothing the probes started is still running, that the
//! session's state is gone, that nothing was injected into its terminal, that the network
//! attempts were refused by the sandbox's own filter; and it runs a second session whose
//! activator it kills, to see the agent die with it and `cleanup` remove the rest.

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

use crate::allowlist::Allowlist;
use crate::config::{Config, NetworkMode};
use crate::identity::{self, Identity};
use crate::probe::{self, Destination, Finding, HostPath, Outcome, Plan};
use crate::weaken;

mod after;
use after::{Reaper, activator_death, leftovers};

/// Ports tried on allowed addresses, the first one the configuration does not open.
pub const CLOSED_PORTS: [u16; 5] = [8443, 8080, 8000, 9443, 2222];

/// How long a session of the selftest may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);

/// What the command line asks of `selftest`.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub network: Option<NetworkMode>,
    pub json: bool,
}

/// The report, also the `--json` output.
#[derive(Debug, Serialize)]
pub struct Report {
    pub verdict: &'static str,
    pub mode: NetworkMode,
    pub findings: Vec<Finding>,
}

/// Run the selftest; the process exit status (0 only if every probe held).
pub fn run(opts: &Options) -> Result<u8> {
    identity::require_root()?;
    let config = Config::load(&opts.config)?;
    let mode = opts.network.unwrap_or(config.network.mode);
    let identity = Identity::resolve(&config.user)?;
    let exe = std::env::current_exe().context("find the activator's own path")?;

    let workspace = TempWorkspace::create(&identity)?;
    let nonce = nonce()?;
    let _reaper = Reaper::for_nonce(&nonce);
    let targets = Targets::start(&identity, &nonce)?;
    let plan = plan(&config, mode, &identity, &nonce, &targets)?;
    eprintln!(
        "claude-chroot: selftest: running the probes in a session on {} (network: {})",
        workspace.path.display(),
        mode_name(mode)
    );

    // Run the probes in a real session on a terminal of ours.
    let plan_json = serde_json::to_string(&plan)?;
    let probe_args = [
        "probe",
        "--plan",
        &plan_json,
        "--out",
        "/workspace/.results.json",
    ];
    let session = run_on_terminal(&enter_command(opts, &exe, &workspace.path, &probe_args)?)?;
    let results = workspace.path.join(".results.json");
    let mut probed = match read_as(&identity, &results) {
        Ok(f) => f,
        Err(e) => bail!(
            "the selftest session did not produce results (exit status {}): {e:#}\n{}",
            session.status,
            session.output.trim_end()
        ),
    };
    if session.status != 0 {
        bail!(
            "the selftest session ended with status {}:\n{}",
            session.status,
            session.output.trim_end()
        );
    }

    // Settle the network attempts with what the sandbox's filter counted.
    let blocked = blocked_destinations(&config.state_dir, session.pid);
    for f in &mut probed {
        settle(f, &blocked);
    }

    // Check on the host what the probes cannot see.
    for f in &mut probed {
        match f.id.as_str() {
            "leftover" if f.outcome == Outcome::Held => {
                *f = leftovers(f.clone(), &nonce, &config.state_dir, session.pid);
            }
            "tiocsti" if session.pending_input > 0 => {
                f.outcome = Outcome::Broken;
                f.detail = format!(
                    "{} bytes were waiting on the invoking terminal after the session",
                    session.pending_input
                );
            }
            _ => {}
        }
    }
    let mut findings = probed;
    findings.push(activator_death(opts, &exe, &identity, &workspace, &config)?);

    let count = |o: &[Outcome]| findings.iter().filter(|f| o.contains(&f.outcome)).count();
    let broken = count(&[Outcome::Broken, Outcome::Unconfirmed]);
    let skipped = count(&[Outcome::Skipped]);
    // A skipped probe proved nothing: only a run where every probe held passes.
    let (verdict, status) = match (broken, skipped) {
        (0, 0) => ("held", 0),
        (0, _) => ("partial", 2),
        _ => ("broken", 1),
    };
    let report = Report {
        verdict,
        mode,
        findings,
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(status)
}

fn mode_name(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::None => "none",
        NetworkMode::Allowlist => "allowlist",
        NetworkMode::Full => "full",
    }
}

fn nonce() -> Result<String> {
    let mut bytes = [0u8; 4];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A workspace under /tmp owned by the invoking user, removed (as the user) when dropped.
struct TempWorkspace {
    path: PathBuf,
    identity: Identity,
}

impl TempWorkspace {
    fn create(identity: &Identity) -> Result<TempWorkspace> {
        let path = nix::unistd::mkdtemp("/tmp/claude-chroot-selftest-XXXXXX")
            .context("create a temporary workspace under /tmp")?;
        let ws = TempWorkspace {
            path,
            identity: identity.clone(),
        };
        nix::unistd::chown(&ws.path, Some(identity.uid), Some(identity.gid))
            .with_context(|| format!("chown {}", ws.path.display()))?;
        Ok(ws)
    }
}

impl Drop for TempWorkspace {
    fn drop(&mut self) {
        let path = self.path.clone();
        let removed = self
            .identity
            .run_as(|| std::fs::remove_dir_all(&path).map_err(Into::into));
        if let Err(e) = removed {
            eprintln!(
                "claude-chroot: selftest: cannot remove {}: {e:#}",
                self.path.display()
            );
        }
    }
}

/// What the probes aim at on the host; stopped when dropped.
struct Targets {
    tcp4: Option<TcpListener>,
    tcp6: Option<TcpListener>,
    _unix: UnixListener,
    abstract_name: String,
    host: Pid,
    host_name: String,
}

impl Targets {
    fn start(identity: &Identity, nonce: &str) -> Result<Targets> {
        use std::os::linux::net::SocketAddrExt;
        let tcp4 = TcpListener::bind("127.0.0.1:0").ok();
        let tcp6 = TcpListener::bind("[::1]:0").ok();
        let abstract_name = format!("claude-chroot-selftest-{nonce}");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?;
        let unix = UnixListener::bind_addr(&addr)
            .with_context(|| format!("listen on the abstract socket @{abstract_name}"))?;
        let host_name = format!("ccr-h{nonce}");
        let host = host_process(identity, &host_name)?;
        Ok(Targets {
            tcp4,
            tcp6,
            _unix: unix,
            abstract_name,
            host,
            host_name,
        })
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        let _ = kill(self.host, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.host, None);
    }
}

/// Fork a process of the invoking user that waits to be killed: what a sandbox without its
/// own PID namespace could see, signal and trace.
fn host_process(identity: &Identity, name: &str) -> Result<Pid> {
    let name = std::ffi::CString::new(name)?;
    let (uid, gid, groups) = (identity.uid, identity.gid, identity.groups.clone());
    // SAFETY: the runner is single-threaded; the child only makes system calls and never
    // returns into the runner's code.
    match unsafe { nix::unistd::fork() }.context("fork the host-side target process")? {
        nix::unistd::ForkResult::Parent { child } => Ok(child),
        nix::unistd::ForkResult::Child => {
            // Keep none of the runner's descriptors (listeners, the configuration).
            // SAFETY: close_range(2) on descriptors this child never uses.
            unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
            let ok = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_ok()
                && nix::sys::prctl::set_name(&name).is_ok()
                && nix::unistd::setgroups(&groups).is_ok()
                && nix::unistd::setresgid(gid, gid, gid).is_ok()
                && nix::unistd::setresuid(uid, uid, uid).is_ok()
                // The uid change cleared it; an ordinary process of the user is dumpable.
                && nix::sys::prctl::set_dumpable(true).is_ok();
            if ok {
                loop {
                    nix::unistd::pause();
                }
            }
            // SAFETY: leaving the forked child without running the runner's destructors.
            unsafe { libc::_exit(1) }
        }
    }
}

/// The probe plan.
fn plan(
    config: &Config,
    mode: NetworkMode,
    identity: &Identity,
    nonce: &str,
    targets: &Targets,
) -> Result<Plan> {
    let mut host_paths = Vec::new();
    let mut add = |id: &str, threat: &str, path: Option<PathBuf>, as_user: bool| {
        let mut hp = HostPath {
            id: id.into(),
            threat: threat.into(),
            path: path.clone().unwrap_or_default(),
            dev: 0,
            ino: 0,
            missing: None,
        };
        let md = match &path {
            None => Err(anyhow::anyhow!("no host account, so no home directory")),
            Some(p) if as_user => identity.run_as(|| std::fs::metadata(p).map_err(Into::into)),
            Some(p) => std::fs::metadata(p).map_err(Into::into),
        };
        match md {
            Ok(md) => (hp.dev, hp.ino) = (md.dev(), md.ino()),
            Err(_) if path.is_some() => {
                hp.missing = Some(format!("{} does not exist on this host", hp.path.display()))
            }
            Err(e) => hp.missing = Some(e.to_string()),
        }
        host_paths.push(hp);
    };
    add(
        "read-home",
        "read the invoking user's home",
        identity.host_home.clone(),
        true,
    );
    add("read-root", "read /root", Some("/root".into()), false);
    add(
        "read-shadow",
        "read /etc/shadow",
        Some("/etc/shadow".into()),
        false,
    );
    add(
        "read-allowlist",
        "read the allowlist file",
        Some(config.allowlist_file()),
        false,
    );

    let (allowed4, allowed6) = match mode {
        NetworkMode::Allowlist => {
            let list = Allowlist::load(&config.allowlist_file())?;
            (list.ipv4().first().copied(), list.ipv6().first().copied())
        }
        NetworkMode::None | NetworkMode::Full => (None, None),
    };
    let tcp = &config.network.tcp_ports;
    let udp = &config.network.udp_ports;
    let closed_port = CLOSED_PORTS
        .into_iter()
        .find(|p| !tcp.contains(p))
        .unwrap_or(1);
    let plan = Plan {
        nonce: nonce.into(),
        mode,
        host_paths,
        skeleton: config.skeleton.clone(),
        host_pid: targets.host.as_raw(),
        host_name: targets.host_name.clone(),
        runner_pid: std::process::id() as i32,
        loopback4: port_of(&targets.tcp4),
        loopback6: port_of(&targets.tcp6),
        abstract_socket: targets.abstract_name.clone(),
        allowed4,
        allowed6,
        closed_port,
        tcp_port: tcp.first().copied().unwrap_or(443),
        udp_port: udp.first().copied().unwrap_or(443),
        nameservers: nameservers(config),
        pids_limit: config.limits.pids,
    };
    Ok(plan)
}

fn port_of(l: &Option<TcpListener>) -> Option<u16> {
    l.as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
}

/// The configured nameservers, else the host's from /etc/resolv.conf.
fn nameservers(config: &Config) -> Vec<IpAddr> {
    let parse = |s: &str| -> Option<IpAddr> {
        s.parse::<IpAddr>()
            .ok()
            .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
    };
    let configured: Vec<IpAddr> = config
        .network
        .nameservers
        .iter()
        .filter_map(|s| parse(s))
        .collect();
    if !configured.is_empty() {
        return configured;
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next().and_then(parse))
        .collect()
}

/// `enter` as the invoking user started it, with the probe binary bound inside.
fn enter_command(
    opts: &Options,
    exe: &Path,
    workspace: &Path,
    probe_args: &[&str],
) -> Result<Command> {
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C.UTF-8");
    for var in ["SUDO_UID", "SUDO_GID", "SUDO_USER"] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    if let Some(knobs) = weaken::inherited() {
        cmd.env(weaken::ENV, knobs);
    }
    cmd.arg("enter").arg("--config").arg(&opts.config);
    match opts.network {
        Some(NetworkMode::None) => {
            cmd.arg("--no-network");
        }
        Some(NetworkMode::Full) => {
            cmd.arg("--full-network");
        }
        _ => {}
    }
    cmd.arg("--probe-binary")
        .arg(exe)
        .arg(workspace)
        .arg("--")
        .arg(probe::INSIDE_PATH)
        .args(probe_args);
    Ok(cmd)
}

/// What a session on our terminal gave.
struct Session {
    pid: u32,
    status: i32,
    output: String,
    /// Bytes waiting to be read on the terminal after the session: injected input.
    pending_input: i32,
}

nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);
nix::ioctl_read_bad!(fionread, libc::FIONREAD, libc::c_int);

/// Run `cmd` as the session leader of a new pseudo-terminal, collecting what it prints.
fn run_on_terminal(cmd: &Command) -> Result<Session> {
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).context("open a pseudo-terminal")?;
    let (master, slave) = (pty.master, pty.slave);
    let mut cmd = clone_command(cmd);
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            tiocsctty(0, 0)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the selftest session")?;
    let pid = child.id();
    let mut output = Vec::new();
    let deadline = Instant::now() + SESSION_TIMEOUT;
    let status = loop {
        read_available(&master, &mut output, 100);
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the selftest session did not end within {}s:\n{}",
                SESSION_TIMEOUT.as_secs(),
                String::from_utf8_lossy(&output)
            );
        }
    };
    read_available(&master, &mut output, 0);
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; the slave is open.
    let _ = unsafe { fionread(slave.as_raw_fd(), &mut pending) };
    Ok(Session {
        pid,
        status: status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        }),
        output: String::from_utf8_lossy(&output).replace("\r\n", "\n"),
        pending_input: pending,
    })
}

fn clone_command(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args()).env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

/// Read what the terminal holds, waiting up to `wait_ms` for the first byte.
fn read_available(master: &OwnedFd, out: &mut Vec<u8>, wait_ms: u16) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut buf = [0u8; 8192];
    let mut timeout = PollTimeout::from(wait_ms);
    loop {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        match nix::unistd::read(master, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        timeout = PollTimeout::ZERO;
    }
}

/// Open a file in the workspace as the invoking user (never following a symlink) and
/// parse the findings in it.
fn read_as(identity: &Identity, path: &Path) -> Result<Vec<Finding>> {
    identity.run_as(|| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        probe::read_findings(file)
    })
}

/// The destinations the session's filter blocked, from its log (allowlist mode only).
fn blocked_destinations(state_dir: &Path, enter_pid: u32) -> Vec<Destination> {
    let logs = state_dir.join("logs");
    let prefix = format!("{enter_pid}-");
    let Ok(dir) = std::fs::read_dir(&logs) else {
        return vec![];
    };
    let mut found = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) || !name.ends_with(".jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            for b in v["blocked"].as_array().into_iter().flatten() {
                let address = b["address"].as_str().and_then(|a| a.parse().ok());
                let protocol = b["protocol"].as_str();
                if let (Some(address), Some(protocol)) = (address, protocol) {
                    found.push(Destination {
                        address,
                        protocol: protocol.into(),
                        port: b["port"].as_u64().map(|p| p as u16),
                    });
                }
            }
        }
    }
    found
}

/// Held when the filter counted every unconfirmed attempt; broken otherwise.
fn settle(f: &mut Finding, blocked: &[Destination]) {
    if f.outcome != Outcome::Unconfirmed {
        return;
    }
    let missing: Vec<String> = f
        .unconfirmed
        .iter()
        .filter(|d| !blocked.contains(d))
        .map(|d| match d.port {
            Some(p) => format!("{} {}", d.protocol, std::net::SocketAddr::new(d.address, p)),
            None => format!("{} {}", d.protocol, d.address),
        })
        .collect();
    f.unconfirmed.clear();
    if missing.is_empty() {
        f.outcome = Outcome::Held;
        f.detail = format!("{} (each refused by the sandbox's filter)", f.detail);
    } else {
        f.outcome = Outcome::Broken;
        f.detail = format!(
            "not refused by the sandbox's filter, so the packets left it: {} ({})",
            missing.join(", "),
            f.detail
        );
    }
}

/// The human-readable report: one row per probe, then the verdict.
pub fn table(report: &Report) -> String {
    let width = report
        .findings
        .iter()
        .map(|f| f.threat.len())
        .max()
        .unwrap_or(0);
    let mut out = format!("{:<width$}  {:<7}  WHAT WAS TRIED\n", "THREAT", "RESULT");
    for f in &report.findings {
        let result = match f.outcome {
            Outcome::Held => "held",
            Outcome::Broken | Outcome::Unconfirmed => "BROKEN",
            Outcome::Skipped => "skipped",
        };
        out.push_str(&format!("{:<width$}  {result:<7}  {}\n", f.threat, f.tried));
        match f.outcome {
            Outcome::Held => {}
            Outcome::Skipped => out.push_str(&format!("{:<width$}  reason: {}\n", "", f.detail)),
            _ => out.push_str(&format!("{:<width$}  {}\n", "", f.detail)),
        }
    }
    let total = report.findings.len();
    let skipped = report
        .findings
        .iter()
        .filter(|f| f.outcome == Outcome::Skipped)
        .count();
    let broken: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| matches!(f.outcome, Outcome::Broken | Outcome::Unconfirmed))
        .map(|f| f.id.as_str())
        .collect();
    if broken.is_empty() && skipped == 0 {
        out.push_str(&format!(
            "claude-chroot: selftest: the sandbox held: {total} of {total} probes held \
             (network: {})\n",
            mode_name(report.mode)
        ));
    } else if broken.is_empty() {
        out.push_str(&format!(
            "claude-chroot: selftest: PARTIAL: {} of {total} probes held, {skipped} skipped \
             with a reason, so not everything was tested (network: {})\n",
            total - skipped,
            mode_name(report.mode)
        ));
    } else {
        out.push_str(&format!(
            "claude-chroot: selftest: BROKEN: {} of {total} probes got through: {}\n",
            broken.len(),
            broken.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(id: &str, outcome: Outcome, detail: &str) -> Finding {
        Finding {
            id: id.into(),
            threat: format!("threat {id}"),
            tried: format!("tried {id}"),
            outcome,
            detail: detail.into(),
            unconfirmed: Vec::new(),
        }
    }

    fn tcp(address: &str, port: u16) -> Destination {
        Destination {
            address: address.parse().unwrap(),
            protocol: "tcp".into(),
            port: Some(port),
        }
    }

    #[test]
    fn a_refusal_counts_as_held_only_when_the_filter_counted_it() {
        let mut f = finding("net-tcp", Outcome::Unconfirmed, "ECONNREFUSED");
        f.unconfirmed = vec![tcp("192.0.2.1", 443), tcp("2001:db8::1", 443)];
        let mut counted = f.clone();
        settle(
            &mut counted,
            &[tcp("192.0.2.1", 443), tcp("2001:db8::1", 443)],
        );
        assert_eq!(counted.outcome, Outcome::Held);
        assert!(counted.unconfirmed.is_empty());

        // Refused by something else (the port differs): the packet left the sandbox.
        settle(&mut f, &[tcp("192.0.2.1", 443), tcp("2001:db8::1", 80)]);
        assert_eq!(f.outcome, Outcome::Broken);
        assert!(f.detail.contains("tcp [2001:db8::1]:443"), "{}", f.detail);

        let mut held = finding("read-root", Outcome::Held, "absent");
        settle(&mut held, &[]);
        assert_eq!(held.outcome, Outcome::Held);
    }

    #[test]
    fn the_table_gives_each_result_and_a_one_line_verdict() {
        let mut report = Report {
            verdict: "held",
            mode: NetworkMode::None,
            findings: vec![
                finding("a", Outcome::Held, "fine"),
                finding("b", Outcome::Skipped, "no such thing here"),
            ],
        };
        let text = table(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "THREAT    RESULT   WHAT WAS TRIED");
        assert_eq!(lines[1], "threat a  held     tried a");
        assert_eq!(lines[2], "threat b  skipped  tried b");
        assert_eq!(lines[3], "          reason: no such thing here");
        assert_eq!(
            lines[4],
            "claude-chroot: selftest: PARTIAL: 1 of 2 probes held, 1 skipped with a reason, so \
             not everything was tested (network: none)"
        );
        report.findings.pop();
        assert!(
            table(&report).ends_with(
                "claude-chroot: selftest: the sandbox held: 1 of 1 probes held (network: none)\n"
            ),
            "{}",
            table(&report)
        );
        report
            .findings
            .push(finding("b", Outcome::Skipped, "no such thing here"));

        report
            .findings
            .push(finding("c", Outcome::Broken, "connected"));
        let text = table(&report);
        assert!(text.contains("threat c  BROKEN   tried c\n          connected\n"));
        assert!(
            text.ends_with("claude-chroot: selftest: BROKEN: 1 of 3 probes got through: c\n"),
            "{text}"
        );
    }
}
