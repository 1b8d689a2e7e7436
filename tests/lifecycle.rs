//! Exit status, signals, teardown, `cleanup`, concurrent sessions and identity.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Host processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn spawn(f: &Fixture, user: TestUser, ws: &Path, script: &str) -> Child {
    f.command(Some(user))
        .args(["enter", "--config"])
        .arg(&f.config)
        .arg("--no-network")
        .arg(ws)
        .args(["--", "/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn exit_status_and_signals_propagate() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    assert_eq!(f.run(a, &ws, "exit 42").status.code(), Some(42));
    assert_eq!(f.run(a, &ws, "kill -TERM $$").status.code(), Some(128 + 15));
    assert_eq!(f.run(a, &ws, "kill -KILL $$").status.code(), Some(128 + 9));
    let nf = f.run_args(a, &["--no-network"], &ws, &["no-such-command-xyz"]);
    assert_eq!(nf.status.code(), Some(127));
    assert!(stderr(&nf).contains("no-such-command-xyz: command not found"));
    assert_eq!(
        f.run_args(a, &["--no-network"], &ws, &["true"])
            .status
            .code(),
        Some(0),
        "a command without a slash is found on the sandbox's PATH"
    );
}

#[test]
fn sigterm_to_the_activator_ends_the_session_cleanly() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let marker = format!("sleep 3{}", std::process::id() % 1000 + 1000);
    let child = spawn(
        &f,
        a,
        &ws,
        &format!("{marker} & touch /workspace/started; wait"),
    );
    wait_for(&ws.join("started"));
    assert_eq!(f.sessions().len(), 1);
    let t = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(out.status.code(), Some(128 + 15), "{}", stderr(&out));
    assert!(
        processes_with(&marker).is_empty(),
        "{:?}",
        processes_with(&marker)
    );
    assert!(f.sessions().is_empty());
}

#[test]
fn a_normal_exit_leaves_nothing_behind() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let marker = format!("sleep 4{}", std::process::id() % 1000 + 1000);
    // A background process that would outlive the shell if the session did not end it.
    let out = f.run(a, &ws, &format!("({marker} &) ; echo started"));
    assert_eq!(ok(&out), "started\n");
    assert!(
        processes_with(&marker).is_empty(),
        "{:?}",
        processes_with(&marker)
    );
    assert!(
        f.sessions().is_empty(),
        "session state left: {:?}",
        f.sessions()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&f.state.display().to_string()));
    // The sandbox home stays (it is persistent); nothing else does.
    let mut left: Vec<String> = std::fs::read_dir(&f.state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["home", "logs", "sessions"]);
}

#[test]
fn killing_the_activator_kills_the_agent_and_cleanup_removes_the_rest() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let marker = format!("sleep 5{}", std::process::id() % 1000 + 1000);
    let mut child = spawn(
        &f,
        a,
        &ws,
        &format!("{marker} & touch /workspace/started; wait"),
    );
    wait_for(&ws.join("started"));
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(&marker).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", processes_with(&marker));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The state is still there, with its immutable settings copy and its cgroup.
    let sessions = f.sessions();
    assert_eq!(sessions.len(), 1);
    let copy = sessions[0].join("managed-settings.json");
    assert!(claude_chroot::immutable::is_set(&copy).unwrap());
    let cgroup = session_cgroup(&f);
    assert!(cgroup.exists());

    let out = f
        .command(None)
        .args(["cleanup", "--config"])
        .arg(&f.config)
        .output()
        .unwrap();
    ok(&out);
    assert!(
        stderr(&out).contains("removed dead session"),
        "{}",
        stderr(&out)
    );
    assert!(f.sessions().is_empty());
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());

    let out = f
        .command(None)
        .args(["cleanup", "--purge", "--config"])
        .arg(&f.config)
        .output()
        .unwrap();
    ok(&out);
    assert!(!f.state.exists());
}

#[test]
fn cleanup_keeps_and_purge_refuses_a_live_session() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let child = spawn(&f, a, &ws, "touch /workspace/started; sleep 30");
    wait_for(&ws.join("started"));
    let cleanup = |purge: bool| {
        let mut c = f.command(None);
        c.arg("cleanup").arg("--config").arg(&f.config);
        if purge {
            c.arg("--purge");
        }
        c.output().unwrap()
    };
    let out = cleanup(false);
    ok(&out);
    assert!(
        stderr(&out).contains("kept live session"),
        "{}",
        stderr(&out)
    );
    assert_eq!(f.sessions().len(), 1);
    let out = cleanup(true);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("in use by session"),
        "{}",
        stderr(&out)
    );
    assert!(f.state.exists());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    child.wait_with_output().unwrap();
    assert!(f.sessions().is_empty());
}

#[test]
fn two_sessions_run_at_once_without_seeing_each_other() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let b = BOB.ensure();
    let ws_a = f.workspace("ws-a", a);
    let ws_b = f.workspace("ws-b", b);
    std::fs::write(ws_a.join("a-only"), "a").unwrap();
    std::fs::write(ws_b.join("b-only"), "b").unwrap();
    let first = spawn(
        &f,
        a,
        &ws_a,
        "touch /workspace/started; while [ ! -e /workspace/done ]; do sleep 0.05; done; ls /workspace",
    );
    wait_for(&ws_a.join("started"));
    let out = ok(&f.run(
        b,
        &ws_b,
        &format!("ls /workspace; ls {} 2>/dev/null; id -u", ws_a.display()),
    ));
    assert_eq!(out, format!("b-only\n{}\n", b.uid));
    // Only now does the first session finish.
    std::fs::write(ws_a.join("done"), "").unwrap();
    let first = first.wait_with_output().unwrap();
    assert_eq!(ok(&first), "a-only\ndone\nstarted\n");
}

#[test]
fn a_configured_uid_other_than_the_invokers_is_refused() {
    let a = ALICE.ensure();
    let b = BOB.ensure();
    let f = Fixture::with(Options {
        user: Some(format!("{{ uid = {}; gid = {}; }}", a.uid, a.gid())),
        ..Options::default()
    });
    let ws = f.workspace("ws", b);
    let out = f.run(b, &ws, "echo RAN");
    assert_eq!(out.status.code(), Some(125));
    assert!(!stdout(&out).contains("RAN"));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("configured for uid {}", a.uid)),
        "{err}"
    );
    assert!(err.contains(&format!("you are uid {}", b.uid)), "{err}");
    assert!(!f.state.exists(), "a refused start must not create state");
    // The configured user itself may start it.
    let ws = f.workspace("ws-a", a);
    assert_eq!(ok(&f.run(a, &ws, "id -u")), format!("{}\n", a.uid));
}

#[test]
fn a_configured_gid_other_than_the_invokers_is_refused() {
    let a = ALICE.ensure();
    let b = BOB.ensure();
    assert_ne!(a.gid(), b.gid());
    // Alice's uid with Bob's group: through sudo Alice must not get it.
    let f = Fixture::with(Options {
        user: Some(format!("{{ uid = null; gid = {}; }}", b.gid())),
        ..Options::default()
    });
    let ws = f.workspace("ws", a);
    let out = f.run(a, &ws, "echo RAN");
    assert_eq!(out.status.code(), Some(125));
    assert!(!stdout(&out).contains("RAN"));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "configured for gid {} but your group is gid {}",
            b.gid(),
            a.gid()
        )),
        "{err}"
    );
    assert!(!f.state.exists(), "a refused start must not create state");
    // Bob, whose group it is, may start it, and runs with it.
    let ws = f.workspace("ws-b", b);
    assert_eq!(
        ok(&f.run(b, &ws, "id -u; id -g")),
        format!("{}\n{}\n", b.uid, b.gid())
    );
}

#[test]
fn without_a_configured_uid_the_agent_runs_as_the_invoker_and_root_gets_1000() {
    let f = Fixture::new();
    let b = BOB.ensure();
    let ws = f.workspace("ws", b);
    assert_eq!(
        ok(&f.run(
            b,
            &ws,
            "id -u; id -g; grep ^claude: /etc/passwd; grep ^claude: /etc/group"
        )),
        format!(
            "{0}\n{1}\nclaude:x:{0}:{1}:claude:/home/claude:/bin/bash\nclaude:x:{1}:\n",
            b.uid,
            b.gid()
        )
    );
    // Root starting it directly (no sudo variables) gets the default ids.
    let ws_root = f.dir.path().join("ws-root");
    std::fs::create_dir(&ws_root).unwrap();
    std::os::unix::fs::chown(&ws_root, Some(1000), Some(1000)).unwrap();
    let out = f
        .command(None)
        .args(["enter", "--no-network", "--config"])
        .arg(&f.config)
        .arg(&ws_root)
        .args(["--", "/bin/sh", "-c", "id -u; id -g"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(ok(&out), "1000\n1000\n");
}

/// The cgroup a session recorded in its state directory.
fn session_cgroup(f: &Fixture) -> std::path::PathBuf {
    let sessions = f.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sessions[0].join("session.json")).unwrap()).unwrap();
    info["cgroup"]
        .as_str()
        .unwrap_or_else(|| panic!("no cgroup recorded: {info}"))
        .into()
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_the_cgroup_goes_with_the_session() {
    let f = Fixture::new();
    let mut config = f.activate.clone();
    config["limits"]["pids"] = serde_json::json!(32);
    std::fs::write(&f.config, serde_json::to_vec(&config).unwrap()).unwrap();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // Bounded, so that a broken limit fails the test instead of the machine.
    let bomb = "import os, signal\n\
                n = 0\n\
                try:\n\
                \x20   while n < 200:\n\
                \x20       if os.fork() == 0:\n\
                \x20           signal.pause()\n\
                \x20       n += 1\n\
                \x20   print(n, 0)\n\
                except OSError as e:\n\
                \x20   print(n, e.errno)\n";
    std::fs::write(ws.join("bomb.py"), bomb).unwrap();
    let child = spawn(
        &f,
        a,
        &ws,
        "python3 bomb.py > result; cat /proc/self/cgroup > cgroup; touch started; \
         for i in $(seq 600); do [ -e go ] && break; sleep 0.05; done",
    );
    wait_for(&ws.join("started"));
    let cgroup = session_cgroup(&f);
    assert_eq!(
        std::fs::read_to_string(cgroup.join("pids.max"))
            .unwrap()
            .trim(),
        "32"
    );
    let result = std::fs::read_to_string(ws.join("result")).unwrap();
    let (forked, errno) = result.trim().split_once(' ').unwrap();
    // init, the shell and python are in the cgroup too.
    assert!(forked.parse::<u32>().unwrap() <= 29, "{result}");
    assert_eq!(errno, libc::EAGAIN.to_string(), "{result}");
    // The cgroup namespace starts at the session's cgroup: no host path shows inside.
    let inside = std::fs::read_to_string(ws.join("cgroup")).unwrap();
    assert!(!inside.contains("claude-chroot"), "{inside}");

    std::fs::write(ws.join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
}
