//! The host's Nix daemon: `enter` refuses to hand the agent a daemon that trusts it (a
//! trusted client can make the daemon run code as root) or that cannot say, and asks with
//! the agent's own credentials.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::fake_daemon::{Behaviour, FakeDaemon};
use common::*;

/// The fixture's config with one more mount, written beside it.
fn config_with(f: &Fixture, mount: serde_json::Value) -> PathBuf {
    let mut config = f.activate.clone();
    config["mounts"].as_array_mut().unwrap().push(mount);
    let path = f.dir.path().join("with-daemon.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}

fn enter(f: &Fixture, config: &Path, ws: &Path, script: &str) -> Output {
    f.command(Some(ALICE))
        .args(["enter", "--no-network", "--config"])
        .arg(config)
        .arg(ws)
        .args(["--", "/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A client's handshake from inside, printing the trust flag the daemon reports.
const HANDSHAKE: &str = r#"
python3 -c '
import socket, struct
s = socket.socket(socket.AF_UNIX)
s.connect("/nix/var/nix/daemon-socket/socket")
s.sendall(struct.pack("<Q", 0x6e697863))
magic, version = struct.unpack("<QQ", s.recv(16, socket.MSG_WAITALL))
s.sendall(struct.pack("<QQQ", 0x123, 0, 0))
n, = struct.unpack("<Q", s.recv(8, socket.MSG_WAITALL))
s.recv((n + 7) // 8 * 8, socket.MSG_WAITALL)
trust, = struct.unpack("<Q", s.recv(8, socket.MSG_WAITALL))
print("trust", trust)
'
"#;

#[test]
fn a_daemon_that_trusts_the_agent_stops_enter_before_the_command_runs() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let daemon = FakeDaemon::start(
        &f.dir.path().join("daemon"),
        Behaviour::Greet {
            minor: 38,
            trust: 1,
        },
    );
    let config = config_with(&f, daemon.mount());
    let out = enter(&f, &config, &ws, "touch /workspace/ran");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains(&format!("trusts uid {}", a.uid)), "{err}");
    assert!(err.contains("trusted-users"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!ws.join("ran").exists());
    assert!(f.sessions().is_empty(), "no session state left");
    // The question was asked with the agent's credentials, not root's.
    assert_eq!(daemon.peers(), vec![a.uid]);
}

#[test]
fn an_untrusting_daemon_is_asked_as_the_agent_and_stays_usable_inside() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let daemon = FakeDaemon::start(
        &f.dir.path().join("daemon"),
        Behaviour::Greet {
            minor: 38,
            trust: 2,
        },
    );
    let config = config_with(&f, daemon.mount());
    let out = enter(&f, &config, &ws, HANDSHAKE);
    assert_eq!(ok(&out), "trust 2\n");
    assert_eq!(daemon.peers(), vec![a.uid, a.uid]);
}

#[test]
fn a_daemon_too_old_to_report_trust_stops_enter() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let daemon = FakeDaemon::start(
        &f.dir.path().join("daemon"),
        Behaviour::Greet {
            minor: 34,
            trust: 0,
        },
    );
    let config = config_with(&f, daemon.mount());
    let out = enter(&f, &config, &ws, "touch /workspace/ran");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("2.99.0-fake, protocol 1.34) does not say whether it trusts"),
        "{err}"
    );
    assert!(!ws.join("ran").exists());
}

#[test]
fn a_daemon_that_hangs_up_on_the_agent_does_not_stop_enter() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let daemon = FakeDaemon::start(&f.dir.path().join("daemon"), Behaviour::HangUp);
    let config = config_with(&f, daemon.mount());
    let out = enter(&f, &config, &ws, "echo ran");
    assert_eq!(ok(&out), "ran\n");
    assert_eq!(daemon.peers(), vec![a.uid]);
}

#[test]
fn a_socket_that_never_answers_stops_enter() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let daemon = FakeDaemon::start(&f.dir.path().join("daemon"), Behaviour::Silent);
    let config = config_with(&f, daemon.mount());
    let out = enter(&f, &config, &ws, "touch /workspace/ran");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("cannot tell whether the Nix daemon"), "{err}");
    assert!(!ws.join("ran").exists());
}

#[test]
fn a_socket_nobody_listens_on_does_not_stop_enter() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let dir = f.dir.path().join("daemon");
    std::fs::create_dir_all(&dir).unwrap();
    // A socket whose listener is gone: connecting is refused.
    drop(std::os::unix::net::UnixListener::bind(dir.join("socket")).unwrap());
    let config = config_with(
        &f,
        serde_json::json!({ "source": dir, "target": "/nix/var/nix/daemon-socket" }),
    );
    let out = enter(&f, &config, &ws, "echo ran");
    assert_eq!(ok(&out), "ran\n");
}

/// The machine's real nix-daemon in a state and store directory of its own, trusting root
/// only. Debian 12's (Nix 2.8, protocol 1.34) greets without a trust answer.
struct RealDaemon {
    child: Child,
    socket_dir: PathBuf,
}

impl RealDaemon {
    fn start(dir: &Path) -> RealDaemon {
        use std::os::unix::process::CommandExt;
        let conf = dir.join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("nix.conf"),
            "build-users-group =\ntrusted-users = root\n",
        )
        .unwrap();
        let state = dir.join("state");
        let child = Command::new("nix-daemon")
            .env("NIX_CONF_DIR", &conf)
            .env("NIX_STATE_DIR", &state)
            .env("NIX_STORE_DIR", dir.join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("cannot run nix-daemon: install Nix (Debian: nix-bin)");
        let socket_dir = state.join("daemon-socket");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket_dir.join("socket").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "nix-daemon made no socket"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        RealDaemon { child, socket_dir }
    }
}

impl Drop for RealDaemon {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn the_real_nix_daemon_is_greeted_and_its_missing_trust_answer_stops_enter() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let daemon = RealDaemon::start(&f.dir.path().join("real-daemon"));
    let config = config_with(
        &f,
        serde_json::json!({ "source": daemon.socket_dir, "target": "/nix/var/nix/daemon-socket" }),
    );
    let version = Command::new("nix-daemon")
        .arg("--version")
        .output()
        .unwrap();
    let version = stdout(&version);
    let version = version.split_whitespace().last().unwrap();
    let (major, minor): (u32, u32) = {
        let mut parts = version.split('.').map(|p| p.parse().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    };
    let out = enter(&f, &config, &ws, "touch /workspace/ran");
    let err = stderr(&out);
    if (major, minor) >= (2, 15) {
        // Such a daemon reports trust, and this one trusts root only.
        assert!(out.status.success(), "{err}");
    } else {
        assert!(!ws.join("ran").exists());
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.contains(&format!("({version}, protocol 1.")) && err.contains("does not say"),
            "{err}"
        );
    }
}
