//! Probes on processes and the terminal: host processes, ptrace, TIOCSTI, leftovers.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;

use super::{Finding, Plan, errno_name, refused_unless};
fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Pids visible in /proc whose name is `name`.
fn pids_named(name: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| comm(pid).as_deref() == Some(name))
        .collect()
}

pub(super) fn host_process(plan: &Plan) -> Finding {
    let f = Finding::new(
        "host-process",
        "see or signal a host process",
        format!(
            "look for host pid {} ({}) in /proc, kill(pid, 0)",
            plan.host_pid, plan.host_name
        ),
    );
    let pid = nix::unistd::Pid::from_raw(plan.host_pid);
    let mut attempts = Vec::new();
    let seen = pids_named(&plan.host_name);
    attempts.push((
        "/proc".to_string(),
        if seen.is_empty() {
            Ok("not listed".to_string())
        } else {
            Err(format!("listed as pid {seen:?}"))
        },
    ));
    let signal = nix::sys::signal::kill(pid, None);
    // The same number may belong to a sandbox process; only the host's counts.
    let attempt = match signal {
        Ok(()) if comm(plan.host_pid).as_deref() != Some(&plan.host_name) && seen.is_empty() => {
            Ok("that pid is a sandbox process".to_string())
        }
        r => refused_unless(r, "signalled"),
    };
    attempts.push(("kill".to_string(), attempt));
    f.judge(&attempts)
}

pub(super) fn ptrace_probe(plan: &Plan) -> Finding {
    let f = Finding::new(
        "ptrace",
        "ptrace the activator or a host process",
        "PTRACE_ATTACH to the host process, the runner and any visible activator",
    );
    let mut targets = vec![plan.host_pid, plan.runner_pid];
    targets.extend(pids_named("claude-chroot-a"));
    let me = nix::unistd::getpid().as_raw();
    let mut attempts = Vec::new();
    for pid in targets {
        if pid == me || pid <= 1 {
            continue;
        }
        let p = nix::unistd::Pid::from_raw(pid);
        let r = ptrace(libc::PTRACE_ATTACH, pid);
        if r.is_ok() {
            let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::__WALL));
            let _ = ptrace(libc::PTRACE_DETACH, pid);
        }
        let mine = comm(pid).is_some_and(|c| c.starts_with("ccr-p") || c == "claude-chroot-p");
        let attempt = match r {
            // A sandbox process that happens to have the host's number is fair game.
            Ok(()) if mine => Ok("a sandbox process".to_string()),
            r => refused_unless(r, "attached"),
        };
        attempts.push((format!("pid {pid}"), attempt));
    }
    f.judge(&attempts)
}

/// ptrace(2) without address or data.
fn ptrace(request: libc::c_uint, pid: i32) -> std::result::Result<(), Errno> {
    // SAFETY: ATTACH and DETACH take no pointers; null address and data are valid.
    let rc = unsafe {
        libc::ptrace(
            request,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc == -1 { Err(Errno::last()) } else { Ok(()) }
}

nix::ioctl_write_ptr_bad!(tiocsti_ioctl, libc::TIOCSTI, u8);

pub(super) fn tiocsti() -> Finding {
    let f = Finding::new(
        "tiocsti",
        "inject keystrokes into the invoking terminal",
        "TIOCSTI on stdin, stdout and /dev/tty",
    );
    // The sandbox's own devpts instance: injecting there reaches only the sandbox.
    let own = std::fs::metadata("/dev/pts/ptmx").map(|m| m.dev()).ok();
    let device = |fd: i32| {
        // SAFETY: fd is open for the duration of the call.
        nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).ok()
    };
    let stdin_own = device(0).is_some_and(|s| Some(s.st_dev) == own);
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok();
    let mut fds: Vec<(&str, i32)> = vec![("stdin", 0), ("stdout", 1)];
    if let Some(t) = &tty {
        fds.push(("/dev/tty", t.as_raw_fd()));
    }
    let mut attempts = Vec::new();
    for (name, fd) in fds {
        let mut injected = Ok(());
        for b in b"#ccr\n" {
            // SAFETY: TIOCSTI reads one byte from the pointer; fd is open.
            if let Err(e) = unsafe { tiocsti_ioctl(fd, b) } {
                injected = Err(e);
                break;
            }
        }
        // /dev/tty is the controlling terminal, which the sandbox made its own pty.
        let own_terminal = if name == "/dev/tty" {
            stdin_own
        } else {
            device(fd).is_some_and(|s| Some(s.st_dev) == own)
        };
        let attempt = match injected {
            Err(e) => Ok(errno_name(e)),
            Ok(()) if own_terminal => Ok("reached only the sandbox's own terminal".to_string()),
            Ok(()) => Err("injected into a terminal from outside the sandbox".to_string()),
        };
        attempts.push((name.to_string(), attempt));
    }
    f.judge(&attempts)
}

/// Start a process that detaches from the probe and would run for a minute; the runner
/// checks on the host that it died with the session.
pub(super) fn leave_process(plan: &Plan) -> Finding {
    let name = format!("ccr-d{}", plan.nonce);
    let f = Finding::new(
        "leftover",
        "leave a process running after the session",
        format!("start a detached process named {name}; the runner looks for it afterwards"),
    );
    match detach_child(&name) {
        Ok(()) => f.held("started; checked on the host after the session"),
        Err(e) => f.broken(format!(
            "could not start it, so the check proves nothing: {e:#}"
        )),
    }
}

/// Double-fork a process in a new session that renames itself to `name` and sleeps.
pub(super) fn detach_child(name: &str) -> Result<()> {
    let name = CString::new(name)?;
    // SAFETY: single-threaded; the child only calls async-signal-safe functions and _exit.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Child => {
            let _ = nix::unistd::setsid();
            // SAFETY: as above, in the intermediate child.
            if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
                // SAFETY: prctl with a valid NUL-terminated name.
                unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
                // Let go of the terminal and the workspace.
                // SAFETY: open and dup2 on valid arguments; close of the standard fds.
                unsafe {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                    libc::chdir(c"/".as_ptr());
                    libc::sleep(60);
                    libc::_exit(0);
                }
            }
            // SAFETY: leaving the intermediate child at once.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
    }
    // Wait until the detached process carries its name.
    let deadline = Instant::now() + Duration::from_secs(2);
    let wanted = name.to_string_lossy().into_owned();
    while pids_named(&wanted).is_empty() {
        if Instant::now() > deadline {
            bail!("the detached process {wanted} did not appear");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

pub(super) fn pids_limit(plan: &Plan) -> Finding {
    let f = Finding::new(
        "pids-limit",
        "exhaust resources with a fork bomb",
        "fork until refused",
    );
    let Some(limit) = plan.pids_limit else {
        return f.skipped("the configuration sets no pids limit (limits.pids is null)");
    };
    // The session already has init and this process, so `limit` children are too many.
    let mut children = Vec::new();
    let refused = loop {
        if children.len() >= limit as usize {
            break None;
        }
        // SAFETY: the child only calls async-signal-safe functions until it is killed.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                loop {
                    libc::pause();
                }
            },
            Ok(nix::unistd::ForkResult::Parent { child }) => children.push(child),
            Err(e) => break Some(e),
        }
    };
    for &child in &children {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    }
    for &child in &children {
        let _ = nix::sys::wait::waitpid(child, None);
    }
    let n = children.len();
    match refused {
        Some(Errno::EAGAIN) => f.held(format!(
            "fork refused with EAGAIN after {n} processes (limit {limit})"
        )),
        Some(e) => f.broken(format!(
            "fork failed with {} after {n} processes, before the limit of {limit} applied",
            errno_name(e)
        )),
        None => f.broken(format!(
            "{n} processes forked, more than the limit of {limit} allows"
        )),
    }
}
