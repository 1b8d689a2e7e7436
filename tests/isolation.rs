//! What the agent can see, write and do inside a session: run as root against the real
//! kernel with the real activator.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::fake_daemon::{Behaviour, FakeDaemon};
use common::*;

#[test]
fn workspace_is_writable_and_new_files_belong_to_the_user() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    std::fs::write(ws.join("before.txt"), "from the host").unwrap();
    let out = ok(&f.run(
        a,
        &ws,
        "cat /workspace/before.txt; echo; mkdir /workspace/sub && echo inside > /workspace/sub/new.txt",
    ));
    assert_eq!(out.trim(), "from the host");
    let md = std::fs::metadata(ws.join("sub/new.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (a.uid, a.gid()));
    assert_eq!(
        std::fs::read_to_string(ws.join("sub/new.txt")).unwrap(),
        "inside\n"
    );
}

#[test]
fn host_files_outside_the_mount_list_are_absent() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // Something the user could read on the host, to show absence is not just permissions.
    let secret = a.home().join("host-secret.txt");
    write_as(a, &secret, "do not show");
    let probes = [
        a.home().display().to_string(),
        secret.display().to_string(),
        "/root".into(),
        "/etc/shadow".into(),
        "/etc/sudoers".into(),
        "/var/lib".into(),
        "/opt".into(),
        "/srv".into(),
        "/boot".into(),
        "/sys".into(),
        f.state.display().to_string(),
        f.dir.path().display().to_string(),
    ];
    let script = probes
        .iter()
        .map(|p| format!("if [ -e '{p}' ]; then echo PRESENT {p}; fi"))
        .collect::<Vec<_>>()
        .join("; ");
    let out = ok(&f.run(a, &ws, &format!("{script}; ls -A /home; ls -A /")));
    assert!(
        !out.contains("PRESENT"),
        "host paths visible inside:\n{out}"
    );
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("claude"),
        "only the sandbox home is under /home"
    );
    let root: Vec<&str> = lines.collect();
    assert_eq!(
        root,
        [
            "bin",
            "dev",
            "etc",
            "home",
            "lib",
            "lib64",
            "proc",
            "run",
            "sbin",
            "tmp",
            "usr",
            "var",
            "workspace"
        ],
        "/ holds exactly the mount list"
    );
}

#[test]
fn writes_outside_workspace_home_and_tmp_fail() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let targets = [
        "/etc/passwd",
        "/etc/new-file",
        "/etc/claude-code/managed-settings.json",
        "/usr/bin/new-file",
        "/usr/lib/new-file",
        "/new-file",
        "/dev/new-file",
        "/run/new-file",
        "/proc/sys/kernel/hostname",
    ];
    let script = targets
        .iter()
        .map(|t| format!("if (echo x > '{t}') 2>/dev/null; then echo WROTE {t}; fi"))
        .collect::<Vec<_>>()
        .join("; ");
    let allowed = "echo x > /workspace/ok && echo x > /home/claude/ok && echo x > /tmp/ok && echo x > /var/tmp/ok && echo ALLOWED";
    let out = ok(&f.run(a, &ws, &format!("{script}; {allowed}")));
    assert!(!out.contains("WROTE"), "writes succeeded:\n{out}");
    assert!(out.contains("ALLOWED"), "{out}");
}

#[test]
fn agent_has_no_privileges_left() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let out = ok(&f.run(
        a,
        &ws,
        "id -u; id -g; id -G; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status",
    ));
    let expected = format!(
        "{uid}\n{gid}\n{gid}\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
         CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n\
         NoNewPrivs:\t1\n",
        uid = a.uid,
        gid = a.gid()
    );
    assert_eq!(out, expected);
}

#[test]
fn setuid_root_binary_in_workspace_does_not_give_root() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // A root-owned setuid copy of `id`, as a user could not make but a build might.
    let suid = ws.join("suid-id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(std::fs::metadata(&suid).unwrap().mode() & 0o4000, 0o4000);
    let out = ok(&f.run(a, &ws, "/workspace/suid-id -u; /workspace/suid-id -ru"));
    assert_eq!(out, format!("{0}\n{0}\n", a.uid));
}

#[test]
fn mount_chroot_and_new_namespaces_fail() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let attempts = [
        "mount -t tmpfs none /tmp",
        "mount --bind /workspace /tmp",
        "umount /proc",
        "chroot / /bin/true",
        "unshare --mount /bin/true",
        "unshare --user /bin/true",
        "unshare --user --map-root-user --mount /bin/true",
        "unshare --net /bin/true",
        "unshare --pid --fork /bin/true",
    ];
    let script = attempts
        .iter()
        .map(|c| format!("if {c} 2>/dev/null; then echo SUCCEEDED: {c}; fi"))
        .collect::<Vec<_>>()
        .join("; ");
    let out = ok(&f.run(a, &ws, &format!("{script}; echo done")));
    assert_eq!(out, "done\n", "privileged operations succeeded:\n{out}");
}

#[test]
fn user_keyring_of_the_invoking_user_is_unreachable() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // Put a key in the user's keyring on the host, as the user.
    let added = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            &a.uid.to_string(),
            "--regid",
            &a.gid().to_string(),
        ])
        .args([
            "--clear-groups",
            "keyctl",
            "add",
            "user",
            "ccr-secret",
            "s3cr3t",
            "@u",
        ])
        .output()
        .unwrap();
    let id = ok(&added).trim().to_string();
    let out = f.run(
        a,
        &ws,
        &format!(
            "keyctl print {id} 2>&1; keyctl show @u 2>&1; keyctl request user ccr-secret 2>&1; \
             cat /proc/keys /proc/key-users 2>&1; echo end"
        ),
    );
    // The same listing on the host shows the key, so its absence inside means something.
    let host = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            &a.uid.to_string(),
            "--regid",
            &a.gid().to_string(),
        ])
        .args(["--clear-groups", "cat", "/proc/keys"])
        .output()
        .unwrap();
    assert!(ok(&host).contains("ccr-secret"), "{}", stdout(&host));
    let text = ok(&out);
    let _ = std::process::Command::new("keyctl")
        .args(["unlink", &id])
        .output();
    assert!(!text.contains("s3cr3t"), "key readable inside:\n{text}");
    assert!(!text.contains("ccr-secret"), "key listed inside:\n{text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    assert!(text.ends_with("end\n"));
}

#[test]
fn only_sandbox_processes_are_visible_and_host_processes_cannot_be_signalled() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // A host process of the same user, which the agent would otherwise be allowed to signal.
    let mut host = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            &a.uid.to_string(),
            "--regid",
            &a.gid().to_string(),
        ])
        .args(["--clear-groups", "sleep", "30"])
        .spawn()
        .unwrap();
    let pid = host.id();
    let out = ok(&f.run(
        a,
        &ws,
        &format!(
            "ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; \
             kill -0 {pid} 2>/dev/null && echo SIGNALLED; \
             kill -KILL 1 2>/dev/null; echo alive"
        ),
    ));
    let still_running = host.try_wait().unwrap().is_none();
    host.kill().unwrap();
    host.wait().unwrap();
    assert!(still_running, "the host process was killed");
    let mut lines = out.lines();
    let pids: Vec<u32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    // init, the shell, and the pipeline's own processes: all small numbers.
    assert!(
        pids.contains(&1) && pids.iter().all(|&p| p < 20),
        "pids: {pids:?}"
    );
    assert!(!out.contains("SIGNALLED"), "{out}");
    assert_eq!(lines.next(), Some("alive"));
}

#[test]
fn managed_settings_inside_are_the_default_and_cannot_be_changed() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let s = "/etc/claude-code/managed-settings.json";
    let attempts = [
        format!("echo '{{}}' > {s}"),
        format!("rm -f {s}"),
        format!("mv {s} /tmp/x"),
        format!("cp /workspace/fake.json {s}"),
        format!("ln -sf /workspace/fake.json {s}"),
        "touch /etc/claude-code/other.json".into(),
        "mv /etc/claude-code /tmp/cc".into(),
        "unshare -Urm sh -c 'mount --bind /workspace/fake.json /etc/claude-code/managed-settings.json'"
            .into(),
    ];
    let script = attempts
        .iter()
        .map(|c| format!("if ({c}) 2>/dev/null; then echo CHANGED: {c}; fi"))
        .collect::<Vec<_>>()
        .join("; ");
    std::fs::write(ws.join("fake.json"), "{}").unwrap();
    let out = ok(&f.run(
        a,
        &ws,
        &format!("{script}; stat -c '%u:%g %A' {s}; cat {s}"),
    ));
    assert!(!out.contains("CHANGED"), "{out}");
    // Root's, and writable by nobody else.
    let (owner, out) = out.split_once('\n').unwrap();
    let (ids, mode) = owner.split_once(' ').unwrap();
    assert_eq!(ids, "0:0", "{owner}");
    assert!(
        mode.len() == 10 && !mode[4..].contains('w'),
        "group or others may write it: {owner}"
    );
    let default = f.files["etc/claude-code/managed-settings.json"]
        .as_str()
        .unwrap();
    assert_eq!(out, default);
    let parsed: serde_json::Value = serde_json::from_str(out).unwrap();
    assert!(!parsed["permissions"]["deny"].as_array().unwrap().is_empty());
}

#[test]
fn no_network_has_only_loopback_and_fails_fast() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let script = r#"
awk 'NR > 2 { sub(":", "", $1); print $1 }' /proc/net/dev
python3 - <<'PY'
import socket, time
for family, addr in ((socket.AF_INET, ("192.0.2.1", 443)), (socket.AF_INET6, ("2001:db8::1", 443))):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    start = time.monotonic()
    try:
        s.connect(addr)
        print("CONNECTED", addr)
    except OSError as e:
        print("refused" if time.monotonic() - start < 1 else "SLOW", e.errno)
PY
"#;
    let started = Instant::now();
    let out = ok(&f.run(a, &ws, script));
    assert!(started.elapsed() < Duration::from_secs(10));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "lo");
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines[1..] {
        assert!(l.starts_with("refused"), "{out}");
    }
}

#[test]
fn nix_is_read_only_but_its_daemon_socket_is_usable() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // A stand-in for /nix: a store directory and a daemon that does not trust the agent.
    let nix = f.dir.path().join("nix");
    std::fs::create_dir_all(nix.join("store/abc-pkg")).unwrap();
    let daemon = FakeDaemon::start(
        &nix.join("var/nix/daemon-socket"),
        Behaviour::Greet {
            minor: 38,
            trust: 2,
        },
    );
    let mut config = f.activate.clone();
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "source": nix, "target": "/nix" }));
    let path = f.dir.path().join("with-nix.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let script = r#"
for t in /nix/store/new /nix/store/abc-pkg/new /nix/var/nix/new; do
  (echo x > "$t") 2>/dev/null && echo "WROTE $t"
done
python3 -c '
import socket, struct
s = socket.socket(socket.AF_UNIX)
s.connect("/nix/var/nix/daemon-socket/socket")
s.sendall(struct.pack("<Q", 0x6e697863))
magic, version = struct.unpack("<QQ", s.recv(16, socket.MSG_WAITALL))
print(hex(magic))
'
"#;
    let out = f
        .command(Some(a))
        .args(["enter", "--no-network", "--config"])
        .arg(&path)
        .arg(&ws)
        .args(["--", "/bin/sh", "-c", script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(ok(&out), "0x6478696f\n");
    // Once by enter's trust check, once by the agent.
    assert_eq!(daemon.peers(), vec![a.uid, a.uid]);
}

#[test]
#[cfg(target_arch = "x86_64")]
fn seccomp_refuses_x32_aliases_clone3_and_io_uring() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let script = r#"
python3 - <<'PY'
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return errno.errorcode.get(ctypes.get_errno(), "ok") if r == -1 else "ok"
X32 = 0x40000000
print("x32-getpid", call(X32 | 39))
print("x32-unshare", call(X32 | 272, 0x10000000))
print("clone3", call(435, 0, 0))
print("io_uring_setup", call(425, 1, 0))
print("getpid", call(39))
PY
"#;
    let out = ok(&f.run(a, &ws, script));
    assert_eq!(
        out,
        "x32-getpid EPERM\nx32-unshare EPERM\nclone3 ENOSYS\nio_uring_setup ENOSYS\ngetpid ok\n"
    );
}
