//! The invoking terminal: raw mode while the sandbox's own pseudo-terminal is relayed,
//! window sizes, and the relay itself.
//!
//! The agent never gets a descriptor of the invoking terminal. It gets a pseudo-terminal
//! from the sandbox's private devpts instance, whose master the activator relays; keys
//! faked with TIOCSTI can only reach the sandbox's own terminal.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use anyhow::{Context, Result};
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
