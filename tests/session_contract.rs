//! What `enter` promises the session it starts: the environment, the descriptors, the
//! namespaces, `/dev`, signals and the default shell. Run as root against the real kernel
//! with the real activator.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `enter --no-network WS -- /bin/bash -c SCRIPT` as `user`, in the background.
fn spawn_bash(f: &Fixture, user: TestUser, ws: &Path, script: &str) -> Child {
    f.command(Some(user))
        .args(["enter", "--no-network", "--config"])
        .arg(&f.config)
        .arg(ws)
        .args(["--", "/bin/bash", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn config_str<'a>(f: &'a Fixture, pointer: &str) -> &'a str {
    f.activate
        .pointer(pointer)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{pointer} missing from the rendered config"))
}

#[test]
fn only_configured_variables_reach_the_agent() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // What the activator's environment holds: the fixture's sudo-like variables and ours.
    let mut outside: BTreeMap<String, String> = [
        ("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
        ("SUDO_UID", &a.uid.to_string()),
        ("SUDO_GID", &a.gid().to_string()),
        ("SUDO_USER", a.name),
        ("FOO", "bar"),
        ("SUDO_COMMAND", "x"),
        ("SSH_AUTH_SOCK", "/tmp/x"),
        ("ANTHROPIC_API_KEY", "k"),
        ("TERM", "xterm"),
        ("LANG", "C.UTF-8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut cmd = f.command(Some(a));
    cmd.envs(&outside);
    let out = cmd
        .args(["enter", "--no-network", "--config"])
        .arg(&f.config)
        .arg(&ws)
        .args(["--", "env", "-0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = ok(&out);
    let inside: BTreeMap<String, String> = text
        .split('\0')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();

    // The passed names that are set outside, then the configured values, then the
    // identity variables the activator adds (src/enter.rs, command_and_env).
    let pass: Vec<&str> = f.activate["environment"]["pass"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    outside.retain(|k, _| pass.contains(&k.as_str()));
    let mut expected = outside;
    for (k, v) in f.activate["environment"]["set"].as_object().unwrap() {
        expected.insert(k.clone(), v.as_str().unwrap().to_string());
    }
    let name = config_str(&f, "/user/name");
    for (k, v) in [
        ("HOME", config_str(&f, "/user/home")),
        ("USER", name),
        ("LOGNAME", name),
        ("SHELL", config_str(&f, "/tools/shell")),
    ] {
        expected.insert(k.into(), v.into());
    }
    assert_eq!(inside, expected);
    // Spelled out, so that a config that passed everything would not make this pass.
    assert_eq!(
        inside.get("ANTHROPIC_API_KEY").map(String::as_str),
        Some("k")
    );
    assert_eq!(inside.get("TERM").map(String::as_str), Some("xterm"));
    for gone in ["FOO", "SSH_AUTH_SOCK"] {
        assert!(!inside.contains_key(gone), "{gone} got in: {inside:?}");
    }
    assert!(
        !inside.keys().any(|k| k.starts_with("SUDO_")),
        "sudo's variables got in: {inside:?}"
    );
    assert_eq!(
        inside["PATH"],
        config_str(&f, "/environment/set/PATH"),
        "PATH is the sandbox's, not the invoker's"
    );
}

#[test]
fn descriptors_inherited_by_the_activator_are_closed_before_the_agent_runs() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let secret = f.dir.path().join("host-secret.txt");
    std::fs::write(&secret, "inherited-secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    let script = r#"
echo ready > /workspace/ready
while [ ! -e /workspace/go ]; do sleep 0.05; done
ls /proc/self/fd | sort -n | tr '\n' ' '; echo
cat <&9 || echo NO-FD-9
ls /proc/self/fd/7/ || echo NO-FD-7
"#;
    let mut cmd = f.command(Some(a));
    cmd.args(["enter", "--no-network", "--config"])
        .arg(&f.config)
        .arg(&ws)
        .args(["--", "/bin/bash", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Prepared before the fork: the hook may only make async-signal-safe calls.
    let root = CString::new("/root").unwrap();
    let file = CString::new(secret.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: open, dup2 and close between fork and exec, all async-signal-safe; the
    // paths were allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for (path, flags, target) in [
                (&root, libc::O_PATH | libc::O_DIRECTORY, 7),
                (&file, libc::O_RDONLY, 9),
            ] {
                // No O_CLOEXEC, and dup2 leaves the copy without it: the exec keeps both.
                let fd = libc::open(path.as_ptr(), flags);
                if fd < 0 || libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    wait_for(&ws.join("ready"));
    // The activator really holds both, so the agent's listing below means something.
    let held = |fd: u32| std::fs::read_link(format!("/proc/{}/fd/{fd}", child.id())).ok();
    let (held7, held9) = (held(7), held(9));
    // Let the session finish before any assertion, so that a failure leaves nothing running.
    std::fs::write(ws.join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(held7.as_deref(), Some(Path::new("/root")));
    assert_eq!(held9.as_deref(), Some(secret.as_path()));
    let text = ok(&out);
    let err = stderr(&out);
    // The standard three and the directory `ls` opened to list them.
    assert_eq!(text.lines().next(), Some("0 1 2 3 "), "{text}");
    assert!(!text.contains("inherited-secret"), "{text}");
    assert!(text.contains("NO-FD-9"), "{text}");
    assert!(text.contains("NO-FD-7"), "{text}");
    // Closed, not merely unreadable: fd 7 names nothing at all.
    assert!(
        err.contains("/proc/self/fd/7/': No such file or directory"),
        "{err}"
    );
}

#[test]
fn hostname_and_ipc_are_private_and_every_namespace_is_new() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host_name.trim(), "claude-chroot", "pick another host name");
    // A System V segment on the host, which an agent in the host's IPC namespace would see.
    let made = std::process::Command::new("ipcmk")
        .args(["-M", "4096"])
        .output()
        .unwrap();
    let shmid: String = ok(&made).trim().rsplit(' ').next().unwrap().to_string();
    let host_shm = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let listed = |table: &str| {
        table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some(shmid.as_str()))
    };
    let seen_on_host = listed(&host_shm);

    let kinds = ["mnt", "pid", "net", "ipc", "uts", "cgroup"];
    let script = format!(
        "cat /proc/sys/kernel/hostname; echo --; readlink {}; echo --; cat /proc/sysvipc/shm",
        kinds.map(|k| format!("/proc/self/ns/{k}")).join(" ")
    );
    let out = f.run(a, &ws, &script);
    let removed = std::process::Command::new("ipcrm")
        .args(["-m", &shmid])
        .output()
        .unwrap();
    let text = ok(&out);
    ok(&removed);
    assert!(
        seen_on_host,
        "ipcmk's segment {shmid} is not in:\n{host_shm}"
    );

    let parts: Vec<&str> = text.split("--\n").collect();
    assert_eq!(parts.len(), 3, "{text}");
    assert_eq!(parts[0], "claude-chroot\n");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name,
        "the host's name changed"
    );
    let inside: Vec<&str> = parts[1].lines().collect();
    assert_eq!(inside.len(), kinds.len(), "{text}");
    for (kind, ns) in kinds.iter().zip(inside) {
        let host = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        assert!(ns.starts_with(&format!("{kind}:[")), "{ns}");
        assert_ne!(Path::new(ns), host, "the {kind} namespace is the host's");
    }
    // Only the header: a new IPC namespace has no segments at all.
    let shm = parts[2];
    assert!(!listed(shm), "the host's segment is visible inside:\n{shm}");
    assert_eq!(shm.lines().count(), 1, "{shm}");
}

#[test]
fn dev_holds_only_the_minimal_nodes_and_its_shm_is_private() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let tag = std::process::id();
    let on_host = format!("/dev/shm/ccr-host-{tag}");
    let from_inside = format!("/dev/shm/ccr-inside-{tag}");
    std::fs::write(&on_host, "host").unwrap();
    std::fs::set_permissions(&on_host, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Every device node under / but /proc, found by lstat: `find -type` trusts the
    // directory entry's type, which for a node bound on a file mount point is "file".
    let walk = r#"
import os, stat
for top, dirs, files in os.walk("/"):
    if top == "/":
        dirs.remove("proc")
    for name in sorted(dirs + files):
        path = os.path.join(top, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
            kind = "block" if stat.S_ISBLK(st.st_mode) else "char"
            print(kind, path, "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)))
"#;
    let script = format!(
        "ls -A /dev; echo --; ls -A /dev/pts; echo --; python3 -c '{walk}' | sort; echo --; \
         stat -f -c %T /dev/shm; ls -A /dev/shm; \
         echo inside > {from_inside} && cat {from_inside}"
    );
    let out = f.run(a, &ws, &script);
    let leaked = Path::new(&from_inside).exists();
    let _ = std::fs::remove_file(&on_host);
    let _ = std::fs::remove_file(&from_inside);
    let text = ok(&out);
    let parts: Vec<&str> = text.split("--\n").collect();
    assert_eq!(parts.len(), 4, "{text}");
    let mut dev: Vec<&str> = parts[0].lines().collect();
    dev.sort();
    // src/mounts.rs: six nodes bound from the host, a private devpts, and links.
    assert_eq!(
        dev,
        [
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
            "tty", "urandom", "zero"
        ]
    );
    assert_eq!(parts[1], "ptmx\n", "a fresh devpts holds no terminal yet");
    // The host's own nodes (same numbers), and nothing else: no block device, no mem.
    let mut expected: Vec<String> = [
        "full", "null", "pts/ptmx", "random", "tty", "urandom", "zero",
    ]
    .iter()
    .map(|n| {
        let rdev = std::fs::metadata(format!("/dev/{n}")).unwrap().rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        format!("char /dev/{n} {major}:{minor}")
    })
    .collect();
    expected.sort();
    assert_eq!(parts[2].lines().collect::<Vec<_>>(), expected);
    // A tmpfs of the session's: the host's file is not there, and ours stays inside.
    assert_eq!(parts[3], "tmpfs\ninside\n");
    assert!(!leaked, "{from_inside} written inside appeared on the host");
}

#[test]
fn forwarded_signals_reach_the_agent_and_its_status_is_the_sessions() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    // src/sandbox.rs forwards these six to the agent, by pid.
    for sig in [
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        let name = &sig.as_str()[3..];
        let ws = f.workspace(&format!("ws-{name}"), a);
        let script = format!(
            "trap 'echo {name} > /workspace/got; exit 7' {name}; echo ready > /workspace/ready; \
             while :; do sleep 0.1; done"
        );
        let child = spawn_bash(&f, a, &ws, &script);
        wait_for(&ws.join("ready"));
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        let got = std::fs::read_to_string(ws.join("got")).unwrap_or_default();
        assert_eq!(got, format!("{name}\n"), "{name}: {}", stderr(&out));
        assert_eq!(out.status.code(), Some(7), "{name}: {}", stderr(&out));
    }
}

#[test]
fn an_agent_ignoring_a_terminating_signal_is_killed_after_the_grace_period() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let child = spawn_bash(
        &f,
        a,
        &ws,
        "trap '' TERM; echo ready > /workspace/ready; while :; do sleep 0.1; done",
    );
    wait_for(&ws.join("ready"));
    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    // GRACE in src/sandbox.rs is five seconds; the whole namespace is SIGKILLed after it.
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "took {took:?}"
    );
    assert_eq!(out.status.code(), Some(128 + 9), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not end after a signal; killing it"),
        "{}",
        stderr(&out)
    );
    assert!(f.sessions().is_empty(), "{:?}", f.sessions());
}

#[test]
fn without_a_command_enter_starts_a_login_shell_in_the_workspace() {
    use std::io::Write;
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let mut child = f
        .command(Some(a))
        .args(["enter", "--no-network", "--config"])
        .arg(&f.config)
        .arg(&ws)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"pwd; shopt -q login_shell && echo login; exit 4\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"/workspace"), "{text}\n{}", stderr(&out));
    assert!(lines.contains(&"login"), "{text}\n{}", stderr(&out));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[test]
fn the_sandbox_terminals_are_capped_so_the_kernel_pty_pool_is_not_used_up() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let script = r#"python3 -c '
import os
opened = []
try:
    while True:
        opened.append(os.openpty())
except OSError as e:
    print(len(opened), e.errno)
'"#;
    // The devpts instance takes 256 terminals and refuses the next with ENOSPC.
    assert_eq!(ok(&f.run(a, &ws, script)), "256 28\n");
}
