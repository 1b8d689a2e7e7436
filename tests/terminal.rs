//! On a terminal the agent gets its own pseudo-terminal: keystroke injection cannot reach
//! the invoking terminal, and the relay behaves like a terminal (size, Ctrl-C, restore).

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::pty::{OpenptyResult, Winsize, openpty};
use nix::sys::termios::tcgetattr;

struct Session {
    child: Child,
    master: std::fs::File,
    slave: OwnedFd,
    /// The terminal's modes before the activator started.
    initial: nix::sys::termios::Termios,
}

/// Start the activator with a fresh pseudo-terminal as its standard descriptors.
fn start(f: &Fixture, user: TestUser, ws: &std::path::Path, script: &str) -> Session {
    let size = Winsize {
        ws_row: 33,
        ws_col: 111,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let OpenptyResult { master, slave } = openpty(Some(&size), None).unwrap();
    let initial = tcgetattr(slave.as_fd()).unwrap();
    let child = f
        .command(Some(user))
        .env("TERM", "xterm")
        .args(["enter", "--no-network", "--config"])
        .arg(&f.config)
        .arg(ws)
        .args(["--", "/bin/sh", "-c", script])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    Session {
        child,
        master: std::fs::File::from(master),
        slave,
        initial,
    }
}

/// Read the terminal until `needle` shows up or the session ends.
fn read_until(master: &mut std::fs::File, out: &mut String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !out.contains(needle) && Instant::now() < deadline {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
}

/// Read the terminal until the activator has exited and nothing more is buffered.
fn finish(s: &mut Session) -> (String, i32) {
    let flags = nix::fcntl::fcntl(s.master.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let nonblocking = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(s.master.as_fd(), nix::fcntl::FcntlArg::F_SETFL(nonblocking)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    let mut status = None;
    loop {
        match s.master.read(&mut buf) {
            Ok(n) if n > 0 => {
                out.push_str(&String::from_utf8_lossy(&buf[..n]));
                continue;
            }
            _ if status.is_some() => break,
            _ => {}
        }
        status = s.child.try_wait().unwrap();
        assert!(Instant::now() < deadline, "the session did not end:\n{out}");
        if status.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (out, status.unwrap().code().unwrap_or(-1))
}

#[test]
fn tiocsti_cannot_inject_into_the_invoking_terminal() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let script = r#"
python3 - <<'PY'
import fcntl, os, termios
targets = [("fd1", 1), ("fd2", 2), ("dev-tty", os.open("/dev/tty", os.O_RDWR))]
for name, fd in targets:
    try:
        for c in b"id\n":
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
        print(name, "INJECTED")
    except OSError as e:
        print(name, "errno", e.errno)
print("tty", os.ttyname(1))
PY
"#;
    let mut s = start(&f, a, &ws, script);
    let slave = s.slave.try_clone().unwrap();
    let before = s.initial.clone();
    let (out, code) = finish(&mut s);
    assert_eq!(code, 0, "{out}");
    for name in ["fd1", "fd2", "dev-tty"] {
        assert!(out.contains(&format!("{name} errno 1")), "{name}: {out}");
    }
    assert!(
        out.contains("tty /dev/pts/0"),
        "the sandbox has its own terminal: {out}"
    );
    // Nothing is waiting to be read on the invoking terminal.
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; the descriptor is open.
    unsafe { libc::ioctl(slave.as_raw_fd(), libc::FIONREAD, &mut pending) };
    assert_eq!(pending, 0);
    // And the terminal is back in the mode it was in.
    let after = tcgetattr(slave.as_fd()).unwrap();
    assert_eq!(before.local_flags, after.local_flags);
    assert_eq!(before.input_flags, after.input_flags);
}

#[test]
fn window_size_and_ctrl_c_reach_the_sandbox_terminal() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let script = "trap 'echo got-interrupt; exit 3' INT; stty size; echo ready; \
                  while true; do sleep 0.05; done";
    let mut s = start(&f, a, &ws, script);
    let mut out = String::new();
    read_until(&mut s.master, &mut out, "ready");
    assert!(out.contains("33 111"), "{out}");
    // Ctrl-C typed on the invoking terminal, relayed as a byte, turned into SIGINT by the
    // sandbox terminal's line discipline for its foreground process group.
    s.master.write_all(b"\x03").unwrap();
    let (rest, code) = finish(&mut s);
    assert!(rest.contains("got-interrupt"), "{out}{rest}");
    assert_eq!(code, 3);
}
