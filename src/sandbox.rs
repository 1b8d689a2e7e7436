//! Starting the sandboxed process tree and running it to the end.
//!
//! ```text
//! activator (root, host namespaces)         relays the terminal, forwards signals
//!  └─ init   (PID 1 of the new PID namespace) builds the root, drops privileges, reaps
//!      └─ agent (PID 2)                      setsid, seccomp, exec COMMAND
//! ```
//!
//! Parent and child talk over a SOCK_SEQPACKET pair: the child reports each stage or an
//! error, the parent says when the network is ready and forwards signals. When the
//! activator dies the pair closes and init exits, which kills every process in the PID
//! namespace (pid_namespaces(7)).

use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};
use seccompiler::BpfProgram;

use crate::mounts::{self, Step};
use crate::terminal;
use crate::weaken::{self, Knob};

/// How long the session may take to end after a terminating signal is forwarded.
const GRACE: Duration = Duration::from_secs(5);

/// Signals the activator forwards to the agent.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Everything the child needs, prepared by the parent before the clone.
pub struct Launch {
    pub new_root: PathBuf,
    pub steps: Vec<Step>,
    pub uid: Uid,
    pub gid: Gid,
    pub hostname: String,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// PATH inside, to find a command given without a slash.
    pub path: String,
    pub cwd: PathBuf,
    pub terminal: bool,
    pub seccomp: Vec<BpfProgram>,
}

/// A started sandbox, held by the parent.
pub struct Running {
    pid: Pid,
    sock: OwnedFd,
    signals: SignalFd,
    master: Option<OwnedFd>,
    reaped: Option<i32>,
}

/// Messages on the socket pair; one byte of tag, then a payload.
mod msg {
    pub const MOUNTED: u8 = b'M';
    pub const ERROR: u8 = b'E';
    pub const READY: u8 = b'R';
    pub const GO: u8 = b'G';
    pub const SIGNAL: u8 = b'S';
}

fn send(sock: BorrowedFd<'_>, tag: u8, payload: &[u8], fd: Option<RawFd>) -> nix::Result<()> {
    let head = [tag];
    let iov = [IoSlice::new(&head), IoSlice::new(payload)];
    let fds;
    let cmsgs: Vec<ControlMessage> = match fd {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => vec![],
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).map(drop)
}

/// A message: its tag, its payload and the descriptor it carried.
type Message = (u8, Vec<u8>, Option<OwnedFd>);

/// Receive one message; `None` when the other side is gone.
fn recv(sock: BorrowedFd<'_>) -> nix::Result<Option<Message>> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let (n, fd) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let m = loop {
            match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                r => break r?,
            }
        };
        let mut fd = None;
        for c in m.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: the kernel just installed this descriptor for us.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    fd.get_or_insert(owned);
                }
            }
        }
        (m.bytes, fd)
    };
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n);
    let tag = buf.remove(0);
    Ok(Some((tag, buf, fd)))
}

/// Block the signals the activator handles itself, so that none arriving during setup
/// kills it with state half made; they are read from a signalfd once the sandbox runs.
pub fn block_signals() -> Result<SigSet> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGWINCH);
    for s in FORWARDED {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).context("sigprocmask")?;
    Ok(mask)
}

/// Refuse to clone when other threads exist: they would not follow into the child, and
/// the parent's credential switches (`Identity::run_as`) assume a single thread.
pub fn ensure_single_threaded() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    if threads != "1" {
        bail!(
            "the activator must be single-threaded before creating namespaces ({threads} threads)"
        );
    }
    Ok(())
}

impl Running {
    /// Clone the child into new namespaces; it builds its root while the caller goes on.
    pub fn spawn(launch: Launch) -> Result<Running> {
        ensure_single_threaded()?;
        let (parent_sock, child_sock) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair")?;

        // Block the signals the parent handles, before the clone, so none is lost; the
        // child inherits the mask and sets its own.
        let mask = block_signals()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .context("signalfd")?;

        let mut flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS;
        if weaken::active(Knob::PidNamespace) {
            flags.remove(CloneFlags::CLONE_NEWPID);
        }
        if weaken::active(Knob::NetNamespace) {
            flags.remove(CloneFlags::CLONE_NEWNET);
        }
        let mut stack = vec![0u8; 8 << 20];
        let child_fd = child_sock.as_raw_fd();
        let parent_fd = parent_sock.as_raw_fd();
        let cb = Box::new(move || -> isize {
            // SAFETY: in the child, the parent's end is a copy we do not use.
            unsafe { libc::close(parent_fd) };
            // SAFETY: the child's end stays open for the child's whole life.
            let sock = unsafe { BorrowedFd::borrow_raw(child_fd) };
            child(&launch, sock)
        });
        // SAFETY: the callback runs in a copy of this single-threaded process (no
        // CLONE_VM) and ends with the process; the stack outlives the call.
        let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
            .context("clone into new namespaces (is this kernel built with user, PID and network namespaces?)")?;
        drop(child_sock);
        Ok(Running {
            pid,
            sock: parent_sock,
            signals,
            master: None,
            reaped: None,
        })
    }

    /// Wait until the child has built its root (and terminal). The parent may set up the
    /// network meanwhile: the network namespace exists from the clone on.
    pub fn mounted(&mut self) -> Result<()> {
        match self.expect(msg::MOUNTED) {
            Ok(fd) => {
                // Size the sandbox's terminal before anything in it runs.
                if let Some(m) = &fd {
                    terminal::copy_window_size(terminal::size_source(), m.as_fd());
                }
                self.master = fd;
                Ok(())
            }
            Err(e) => {
                self.kill();
                Err(e)
            }
        }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Wait for `tag`, turning an error report or an early exit into an error.
    fn expect(&mut self, tag: u8) -> Result<Option<OwnedFd>> {
        match recv(self.sock.as_fd()).context("read from the sandbox")? {
            Some((t, _, fd)) if t == tag => Ok(fd),
            Some((msg::ERROR, text, _)) => {
                self.reap_blocking();
                bail!("{}", String::from_utf8_lossy(&text))
            }
            Some((t, _, _)) => bail!("unexpected message {:?} from the sandbox", t as char),
            None => {
                let status = self.reap_blocking();
                bail!("the sandbox ended during setup (status {status})")
            }
        }
    }

    /// Let the child drop privileges and start the command.
    pub fn go(&mut self) -> Result<()> {
        send(self.sock.as_fd(), msg::GO, &[], None).context("signal the sandbox to start")?;
        if let Err(e) = self.expect(msg::READY) {
            self.kill();
            return Err(e);
        }
        Ok(())
    }

    /// Kill the whole sandbox (its init takes every process of the namespace with it).
    pub fn kill(&mut self) {
        if self.reaped.is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
            self.reap_blocking();
        }
    }

    fn reap_blocking(&mut self) -> i32 {
        if let Some(s) = self.reaped {
            return s;
        }
        let status = loop {
            match waitpid(self.pid, None) {
                Err(Errno::EINTR) => continue,
                Ok(ws) => break exit_code(ws),
                Err(_) => break 125,
            }
        };
        self.reaped = Some(status);
        status
    }

    fn try_reap(&mut self) -> Option<i32> {
        if self.reaped.is_none() {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
                Ok(ws) => self.reaped = Some(exit_code(ws)),
                Err(_) => self.reaped = Some(125),
            }
        }
        self.reaped
    }

    /// Relay the terminal and forward signals until the sandbox ends; its exit status.
    pub fn wait(mut self) -> Result<i32> {
        let mut relay = self.master.take().map(terminal::Relay::new).transpose()?;
        let _raw = match (&relay, terminal::is_tty(0)) {
            (Some(_), true) => {
                // SAFETY: fd 0 is open for the whole run.
                Some(terminal::RawMode::enter(unsafe {
                    BorrowedFd::borrow_raw(0)
                })?)
            }
            _ => None,
        };
        let ended = self.supervise(relay.as_mut());
        // Pass on the agent's last output and undo the display modes it left set, before
        // the activator prints anything more: concealed text or the alternate screen would
        // hide the exit report.
        if let Some(relay) = relay {
            relay.finish();
        }
        let (status, killed) = ended?;
        if killed {
            eprint!("\r\nclaude-chroot: the session did not end after a signal; killing it\r\n");
        }
        Ok(status)
    }

    /// Forward signals, and relay the terminal, until the sandbox is reaped; its exit
    /// status, and whether it had to be killed after the grace period.
    fn supervise(&mut self, mut relay: Option<&mut terminal::Relay>) -> Result<(i32, bool)> {
        let mut deadline: Option<Instant> = None;
        let mut killed = false;
        loop {
            if let Some(status) = self.try_reap() {
                return Ok((status, killed));
            }
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.kill();
                        killed = true;
                        continue;
                    }
                    terminal::poll_timeout(left)
                }
                None => PollTimeout::NONE,
            };
            let signalled = match relay.as_deref_mut() {
                Some(r) => r.poll(self.signals.as_fd(), timeout)?,
                None => {
                    let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, timeout) {
                        Err(Errno::EINTR) | Ok(0) => false,
                        Err(e) => return Err(e).context("poll the signal descriptor"),
                        Ok(_) => true,
                    }
                }
            };
            if !signalled {
                continue;
            }
            while let Ok(Some(info)) = self.signals.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                match sig {
                    Signal::SIGCHLD => {}
                    Signal::SIGWINCH => {
                        if let Some(r) = relay.as_deref() {
                            terminal::copy_window_size(terminal::size_source(), r.master());
                        }
                    }
                    s => {
                        let _ = send(self.sock.as_fd(), msg::SIGNAL, &[s as u8], None);
                        // A shell may ignore the signal; the session ends anyway.
                        if !matches!(s, Signal::SIGUSR1 | Signal::SIGUSR2) {
                            deadline.get_or_insert(Instant::now() + GRACE);
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The shell convention: the exit code, or 128 + the signal that ended the process.
fn exit_code(ws: WaitStatus) -> i32 {
    match ws {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 125,
    }
}

// ---------------------------------------------------------------------------------------
// The child side. Everything below runs in the new namespaces; errors are sent to the
// parent as text and end the child with 125, before the agent runs.

fn child(launch: &Launch, sock: BorrowedFd<'_>) -> isize {
    match child_setup(launch, sock) {
        Ok(setup) => init(launch, sock, setup),
        Err(e) => {
            let text = format!("{e:#}");
            let _ = send(sock, msg::ERROR, text.as_bytes(), None);
            125
        }
    }
}

struct ChildSetup {
    slave: Option<OwnedFd>,
}

fn child_setup(launch: &Launch, sock: BorrowedFd<'_>) -> Result<ChildSetup> {
    // Die with the activator; set again after the uid change, which clears it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("prctl(PR_SET_PDEATHSIG)")?;

    nix::unistd::sethostname(&launch.hostname).context("sethostname")?;
    // Without its own network namespace (a test's weakening) the network is not ours.
    if !weaken::active(Knob::NetNamespace) {
        crate::netif::loopback_up().context("bring up loopback in the sandbox")?;
        crate::netif::skip_duplicate_address_detection()?;
    }

    // Build the root and switch to it.
    mounts::build_root(&launch.new_root, &launch.steps)?;

    // Open the sandbox's terminal in its own devpts instance and hand the master over.
    let (master, slave) = if launch.terminal && !weaken::active(Knob::Pty) {
        let (m, s) = open_pty().context("open a pseudo-terminal in the sandbox")?;
        (Some(m), Some(s))
    } else {
        (None, None)
    };
    send(
        sock,
        msg::MOUNTED,
        &[],
        master.as_ref().map(|m| m.as_raw_fd()),
    )
    .context("report to the activator")?;
    drop(master);

    // Wait until the parent has set up the network.
    match recv(sock).context("wait for the activator")? {
        Some((msg::GO, _, _)) => {}
        Some((t, _, _)) => bail!("unexpected message {:?} from the activator", t as char),
        None => bail!("the activator went away"),
    }
    // The activator has moved us into the session's cgroup (when there is a pids limit):
    // a cgroup namespace made now has that cgroup as its root, so the agent sees nothing
    // of the host's cgroup tree.
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).context("unshare the cgroup namespace")?;

    // Close every descriptor but the socket and the terminal before dropping privileges.
    let mut keep = vec![sock.as_raw_fd()];
    if let Some(s) = &slave {
        keep.push(s.as_raw_fd());
    }
    close_fds_except(&keep)?;

    crate::privileges::drop_to(launch.uid, launch.gid)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("prctl(PR_SET_PDEATHSIG)")?;
    nix::sys::prctl::set_dumpable(false).context("prctl(PR_SET_DUMPABLE)")?;
    Ok(ChildSetup { slave })
}

fn open_pty() -> Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .context("open /dev/ptmx")?;
    nix::pty::grantpt(&master).context("grantpt")?;
    nix::pty::unlockpt(&master).context("unlockpt")?;
    let name = nix::pty::ptsname_r(&master).context("ptsname")?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("open {name}"))?;
    Ok((OwnedFd::from(master), slave))
}

fn close_fds_except(keep: &[RawFd]) -> Result<()> {
    let mut fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .context("list /proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing descriptors this process will not use again; the directory
            // iterator that listed them is already closed.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// PID 1 of the sandbox: start the agent, forward signals, reap, exit with its status.
fn init(launch: &Launch, sock: BorrowedFd<'_>, setup: ChildSetup) -> isize {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let agent = match unsafe { nix::unistd::fork() } {
        // SAFETY: single-threaded; the child only execs or exits.
        Ok(nix::unistd::ForkResult::Child) => agent(launch, setup.slave),
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
        Err(e) => {
            let _ = send(
                sock,
                msg::ERROR,
                format!("fork the agent: {e}").as_bytes(),
                None,
            );
            return 125;
        }
    };
    drop(setup.slave);
    let _ = send(sock, msg::READY, &[], None);
    // The inherited mask already blocks SIGCHLD; read it through a signalfd.
    let Ok(sfd) = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    else {
        let _ = kill(agent, Signal::SIGKILL);
        return 125;
    };
    loop {
        // Reap every child; the agent's status is the session's.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(ws) if ws.pid() == Some(agent) => return exit_code(ws) as isize,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        let mut fds = [
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sock, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(_) => return 125,
            Ok(_) => {}
        }
        let sock_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        while let Ok(Some(_)) = sfd.read_signal() {}
        if sock_ready {
            match recv(sock) {
                Ok(Some((msg::SIGNAL, payload, _))) => {
                    if let Some(sig) = payload
                        .first()
                        .and_then(|&s| Signal::try_from(s as i32).ok())
                    {
                        let _ = kill(agent, sig);
                    }
                }
                Ok(Some(_)) => {}
                // The activator is gone: end the session (every process dies with init).
                Ok(None) | Err(_) => return 125,
            }
        }
    }
}

/// The agent process: a new session on the sandbox terminal, the filter, then exec.
fn agent(launch: &Launch, slave: Option<OwnedFd>) -> ! {
    let code = match agent_exec(launch, slave) {
        Ok(()) => 126,
        Err(AgentError::NotFound) => 127,
        Err(AgentError::Other(e)) => {
            eprintln!("claude-chroot: {e:#}");
            126
        }
    };
    // SAFETY: leaving the forked child without running the parent's destructors.
    unsafe { libc::_exit(code) }
}

enum AgentError {
    NotFound,
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for AgentError {
    fn from(e: E) -> Self {
        AgentError::Other(e.into())
    }
}

nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);

fn agent_exec(launch: &Launch, slave: Option<OwnedFd>) -> std::result::Result<(), AgentError> {
    // A session of its own: no controlling terminal of the host, no signals from its
    // process group (and TIOCSTI needs the controlling terminal).
    if !weaken::active(Knob::Pty) {
        nix::unistd::setsid().context("setsid")?;
    }
    if let Some(s) = slave {
        // SAFETY: TIOCSCTTY takes an int argument; s is an open terminal.
        unsafe { tiocsctty(s.as_raw_fd(), 0) }.context("make the sandbox terminal controlling")?;
        nix::unistd::dup2_stdin(&s).context("dup2 the sandbox terminal")?;
        nix::unistd::dup2_stdout(&s).context("dup2 the sandbox terminal")?;
        nix::unistd::dup2_stderr(&s).context("dup2 the sandbox terminal")?;
    }
    // Signal dispositions: Rust ignores SIGPIPE, and ignored signals survive exec.
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: restoring the default disposition installs no handler code.
            let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
        }
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).context("sigprocmask")?;
    std::env::set_current_dir(&launch.cwd)
        .with_context(|| format!("chdir {}", launch.cwd.display()))?;
    let program = resolve(&launch.argv[0], &launch.path).ok_or_else(|| {
        eprintln!(
            "claude-chroot: {}: command not found in the sandbox",
            launch.argv[0].to_string_lossy()
        );
        AgentError::NotFound
    })?;
    // Install the filter last: nothing of ours runs after it but execve.
    crate::seccomp::install(&launch.seccomp)?;
    let err = nix::unistd::execve(&program, &launch.argv, &launch.env).unwrap_err();
    if err == Errno::ENOENT {
        eprintln!(
            "claude-chroot: {}: command not found in the sandbox",
            program.to_string_lossy()
        );
        return Err(AgentError::NotFound);
    }
    Err(AgentError::Other(anyhow::anyhow!(
        "cannot execute {}: {err}",
        program.to_string_lossy()
    )))
}

/// Find a command on the sandbox's PATH, as a shell would.
fn resolve(command: &CString, path: &str) -> Option<CString> {
    let bytes = command.as_bytes();
    if bytes.contains(&b'/') {
        return Some(command.clone());
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = format!("{dir}/{}", command.to_string_lossy());
        let Ok(c) = CString::new(candidate) else {
            continue;
        };
        // SAFETY: c is a valid C string.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Some(c);
        }
    }
    None
}
