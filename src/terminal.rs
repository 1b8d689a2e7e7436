//! The invoking terminal: raw mode while the sandbox's own pseudo-terminal is relayed,
//! window sizes, and the relay itself.
//!
//! The agent never gets a descriptor of the invoking terminal. It gets a pseudo-terminal
//! from the sandbox's private devpts instance, whose master the activator relays; keys
//! faked with TIOCSTI can only reach the sandbox's own terminal.
//!
//! The relay never blocks on a write: a side that is not ready has its bytes held, up to
//! a bound past which the relay stops reading the other side. An agent that stops reading
//! its input, or a user's terminal that stops taking output, then holds up only the
//! bytes, never the activator's signal handling.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::{Mode, SFlag, fstat, major};
use nix::sys::termios::{self, SetArg, Termios};

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);
nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// Whether a descriptor is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// Whether the session needs a pseudo-terminal: any standard descriptor is a terminal.
pub fn wanted() -> bool {
    (0..=2).any(is_tty)
}

/// Puts the invoking terminal in raw mode and restores it when dropped.
pub struct RawMode {
    fd: RawFd,
    saved: Termios,
}

impl RawMode {
    pub fn enter(fd: BorrowedFd<'_>) -> Result<RawMode> {
        let saved = termios::tcgetattr(fd).context("tcgetattr on the invoking terminal")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)
            .context("tcsetattr raw on the invoking terminal")?;
        Ok(RawMode {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: the descriptor is one of the standard ones, open for the whole run.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// Copy the window size of the invoking terminal to the sandbox's terminal.
pub fn copy_window_size(from: RawFd, to: BorrowedFd<'_>) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ws is a valid winsize; a failure leaves the default size, which is harmless.
    unsafe {
        if tiocgwinsz(from, &mut ws).is_ok() && ws.ws_row > 0 {
            let _ = tiocswinsz(to.as_fd().as_raw_fd(), &ws);
        }
    }
}

/// Which standard descriptor carries the invoking terminal's size.
pub fn size_source() -> RawFd {
    (0..=2).find(|&fd| is_tty(fd)).unwrap_or(0)
}

/// Undoes the display modes the agent may have left set, so that what the activator prints
/// after the session can be read. Not a full reset (RIS), which would clear the user's
/// screen. In order:
/// - cancel an unfinished escape sequence (CAN) and end an unterminated string (ST): an
///   open OSC or DCS string would swallow everything after it;
/// - save the cursor, then leave the alternate screen: leaving restores the cursor saved
///   on the current screen (xterm does so even on the normal screen), which is the one
///   saved on entering, or on the normal screen the one just saved, so it does not move;
/// - reset the character attributes (concealed text, invisible colours) and the character
///   sets, after the restore, which brings back the attributes saved with the cursor;
/// - reset the scroll region, keeping the cursor where it is;
/// - show the cursor; end mouse reporting, focus reporting and bracketed paste.
pub const RESET: &[u8] = b"\x18\x1b\\\x1b7\x1b[?1049l\x1b[0m\x1b(B\x0f\x1b7\x1b[r\x1b8\x1b[?25h\
    \x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1004l\x1b[?2004l";

/// Bytes the relay holds for one direction before it stops reading the sending side.
const PENDING: usize = 64 << 10;

/// How long the relay keeps passing on the session's last output once it has ended.
const FLUSH: Duration = Duration::from_secs(2);

/// One of the invoking process's standard descriptors, as the relay uses it.
enum Side {
    /// A non-blocking open file description of the relay's own.
    Own(OwnedFd),
    /// The inherited descriptor itself, used only when poll says it is ready.
    Shared(RawFd),
}

impl Side {
    /// A descriptor for standard descriptor `fd` that the relay can make non-blocking. A
    /// terminal or a pipe is opened again through /proc/self/fd: O_NONBLOCK on the
    /// inherited description would reach the shell and everything else sharing it. A
    /// regular file stays shared, as its offset must and as it never blocks; so does what
    /// cannot be opened again (a socket), a pseudo-terminal master, which would open a new
    /// terminal, and /dev/tty, which would open the activator's own.
    fn of(fd: RawFd, access: OFlag) -> Side {
        // SAFETY: fd is a standard descriptor, open for the whole run.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let Ok(st) = fstat(borrowed) else {
            return Side::Shared(fd);
        };
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let reopen = match kind {
            SFlag::S_IFIFO => true,
            // Major 5 holds /dev/tty, /dev/console and /dev/ptmx (devices.txt).
            SFlag::S_IFCHR => is_tty(fd) && major(st.st_rdev) != 5,
            _ => false,
        };
        if !reopen {
            return Side::Shared(fd);
        }
        let path = format!("/proc/self/fd/{fd}");
        let flags = access | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        match nix::fcntl::open(path.as_str(), flags, Mode::empty()) {
            Ok(own) => Side::Own(own),
            Err(_) => Side::Shared(fd),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Side::Own(fd) => fd.as_fd(),
            // SAFETY: a standard descriptor, open for the whole run.
            Side::Shared(fd) => unsafe { BorrowedFd::borrow_raw(*fd) },
        }
    }
}

/// Which descriptor a poll entry of the relay watches.
#[derive(Clone, Copy)]
enum End {
    Master,
    Input,
    Output,
}

/// Moves bytes between the invoking terminal (standard input and output) and the master
/// of the sandbox's terminal.
pub struct Relay {
    master: OwnedFd,
    input: Side,
    output: Side,
    /// Read from the user, not yet taken by the sandbox's terminal.
    to_agent: Vec<u8>,
    /// Read from the sandbox's terminal, not yet taken by the user's output.
    to_user: Vec<u8>,
    /// Scratch space for one read.
    buf: Vec<u8>,
    input_open: bool,
    master_open: bool,
    output_open: bool,
}

impl Relay {
    pub fn new(master: OwnedFd) -> Result<Relay> {
        // The master is the relay's alone: the sandbox dropped its copy after passing it.
        let flags =
            fcntl(&master, FcntlArg::F_GETFL).context("fcntl F_GETFL on the sandbox terminal")?;
        fcntl(
            &master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .context("make the sandbox terminal non-blocking")?;
        Ok(Relay {
            master,
            input: Side::of(0, OFlag::O_RDONLY),
            output: Side::of(1, OFlag::O_WRONLY),
            to_agent: Vec::new(),
            to_user: Vec::new(),
            buf: vec![0; 16 << 10],
            input_open: true,
            master_open: true,
            output_open: true,
        })
    }

    /// The master of the sandbox's terminal.
    pub fn master(&self) -> BorrowedFd<'_> {
        self.master.as_fd()
    }

    /// Wait until `signals` is readable, `timeout` passes or the relay can move bytes, and
    /// move what it can without blocking. Whether `signals` is readable.
    pub fn poll(&mut self, signals: BorrowedFd<'_>, timeout: PollTimeout) -> Result<bool> {
        let mut wanted = Vec::with_capacity(3);
        if self.master_open {
            let mut events = PollFlags::empty();
            if self.to_user.len() < PENDING {
                events |= PollFlags::POLLIN;
            }
            if !self.to_agent.is_empty() {
                events |= PollFlags::POLLOUT;
            }
            if !events.is_empty() {
                wanted.push((End::Master, events));
            }
            if self.input_open && self.to_agent.len() < PENDING {
                wanted.push((End::Input, PollFlags::POLLIN));
            }
        }
        if self.output_open && !self.to_user.is_empty() {
            wanted.push((End::Output, PollFlags::POLLOUT));
        }
        let mut fds = vec![PollFd::new(signals, PollFlags::POLLIN)];
        for &(end, events) in &wanted {
            let fd = match end {
                End::Master => self.master.as_fd(),
                End::Input => self.input.fd(),
                End::Output => self.output.fd(),
            };
            fds.push(PollFd::new(fd, events));
        }
        match poll(&mut fds, timeout) {
            Err(Errno::EINTR) | Ok(0) => return Ok(false),
            Err(e) => return Err(e).context("poll the terminals and the signal descriptor"),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (&(end, _), _) in wanted.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            match end {
                End::Master => {
                    self.write_master();
                    if self.to_user.len() < PENDING {
                        self.read_master()?;
                    }
                }
                End::Input => self.read_input(),
                End::Output => self.write_output(),
            }
        }
        Ok(ready[0])
    }

    /// The session has ended: pass on what its terminal still holds, then [`RESET`], for
    /// at most [`FLUSH`]. Past that the user's terminal takes output too slowly (or a
    /// process outside the sandbox's PID namespace still writes): the rest of the output
    /// is dropped and the reset gets one last try.
    pub fn finish(mut self) {
        let deadline = Instant::now() + FLUSH;
        self.input_open = false;
        self.to_agent.clear();
        let mut reset = false;
        while self.output_open && Instant::now() < deadline {
            if self.master_open && self.to_user.len() < PENDING {
                // The sandbox is gone: what the master does not hold now never comes.
                if !matches!(self.read_master(), Ok(n) if n > 0) {
                    self.master_open = false;
                }
                continue;
            }
            if !self.master_open && !reset {
                self.to_user.extend_from_slice(RESET);
                reset = true;
            }
            if self.to_user.is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(self.output.fd(), PollFlags::POLLOUT)];
            if matches!(poll(&mut fds, poll_timeout(left)), Ok(n) if n > 0) {
                self.write_output();
            }
        }
        if self.output_open {
            self.to_user.clear();
            self.to_user.extend_from_slice(RESET);
            let mut fds = [PollFd::new(self.output.fd(), PollFlags::POLLOUT)];
            if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                self.write_output();
            }
        }
    }

    /// Append what the master holds to `to_user`; how many bytes that was.
    fn read_master(&mut self) -> Result<usize> {
        let room = PENDING
            .saturating_sub(self.to_user.len())
            .min(self.buf.len());
        if room == 0 {
            return Ok(0);
        }
        match nix::unistd::read(&self.master, &mut self.buf[..room]) {
            // EIO: no process has the sandbox's terminal open any more.
            Ok(0) | Err(Errno::EIO) => {
                self.master_open = false;
                Ok(0)
            }
            Ok(n) => {
                // Without a user's output to write to, read on so the agent is not held up.
                if self.output_open {
                    self.to_user.extend_from_slice(&self.buf[..n]);
                }
                Ok(n)
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(0),
            Err(e) => Err(e).context("read from the sandbox terminal"),
        }
    }

    /// Append what the user typed to `to_agent`.
    fn read_input(&mut self) {
        let room = PENDING
            .saturating_sub(self.to_agent.len())
            .min(self.buf.len());
        if room == 0 {
            return;
        }
        match nix::unistd::read(self.input.fd(), &mut self.buf[..room]) {
            Ok(0) => self.input_open = false,
            Ok(n) => self.to_agent.extend_from_slice(&self.buf[..n]),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            // EIO: the terminal was hung up; the SIGHUP that comes with it ends the session.
            Err(_) => self.input_open = false,
        }
    }

    /// Write what the sandbox's terminal takes of `to_agent`.
    fn write_master(&mut self) {
        if self.to_agent.is_empty() {
            return;
        }
        match nix::unistd::write(&self.master, &self.to_agent) {
            Ok(n) => drop(self.to_agent.drain(..n)),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            // No process has the terminal open: nobody would read the input.
            Err(_) => self.to_agent.clear(),
        }
    }

    /// Write what the user's output takes of `to_user`.
    fn write_output(&mut self) {
        if self.to_user.is_empty() {
            return;
        }
        match nix::unistd::write(self.output.fd(), &self.to_user) {
            Ok(n) => drop(self.to_user.drain(..n)),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            // Hung up or a closed pipe: the agent's output has nowhere to go.
            Err(_) => {
                self.output_open = false;
                self.to_user.clear();
            }
        }
    }
}

/// A poll timeout of at least `left`: rounded down to milliseconds, a poll would wake
/// before the deadline and spin until it.
pub fn poll_timeout(left: Duration) -> PollTimeout {
    let millis = left.as_micros().div_ceil(1000);
    PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
}
