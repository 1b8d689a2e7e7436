//! `enter` in each network mode against the test internet (root required): what the agent
//! reaches, what the activator reports and logs, and what is left of the session's network
//! afterwards. Nothing of the machine's own network is touched: the activator runs in the
//! lab's stand-in host namespace.

mod common;
mod netlab;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use claude_chroot::allowlist::Allowlist;
use netlab::*;

fn test_allowlist() -> Allowlist {
    Allowlist::parse(&format!(
        "{ALLOWED4} allowed.test\n{ALLOWED6} allowed.test\n"
    ))
    .unwrap()
}

/// A fixture whose state directory holds `allowlist` as the vetted allowlist file.
fn fixture_with_allowlist(allowlist: &str) -> common::Fixture {
    let f = common::Fixture::with(common::Options {
        network: Some(
            "{ mode = \"allowlist\"; domains = [ \"allowed.test\" ]; tcpPorts = [ 443 ]; }".into(),
        ),
        ..Default::default()
    });
    std::fs::create_dir_all(&f.state).unwrap();
    let list = f.state.join("allowed-ips.conf");
    std::fs::write(&list, allowlist).unwrap();
    std::fs::set_permissions(&list, std::fs::Permissions::from_mode(0o644)).unwrap();
    f
}

fn fixture() -> common::Fixture {
    fixture_with_allowlist(&test_allowlist().render("test"))
}

/// The workspace, with the lab's client program in it as `client.py`.
fn workspace(f: &common::Fixture) -> PathBuf {
    let user = common::ALICE.ensure();
    let ws = f.workspace("ws", user);
    common::write_as(user, &ws.join("client.py"), CLIENT_PY);
    ws
}

/// `enter FLAGS WORKSPACE -- sh -c SCRIPT` as the test user, from the lab's host namespace.
fn enter_command(f: &common::Fixture, flags: &[&str], script: &str) -> Command {
    let ws = workspace(f);
    let mut cmd = f.command(Some(common::ALICE.ensure()));
    cmd.arg("enter")
        .arg("--config")
        .arg(&f.config)
        .args(flags)
        .arg(&ws)
        .args(["--", "/bin/sh", "-c", script]);
    cmd
}

/// Run a session to its end.
fn enter(lab: &Netlab, f: &common::Fixture, flags: &[&str], script: &str) -> Output {
    let mut cmd = enter_command(f, flags, script);
    cmd.stdin(Stdio::null());
    in_netns(&lab.host, move || cmd.output().unwrap())
}

/// A session running in the background; the agent's script talks over stdin and stdout.
struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    fn start(lab: &Netlab, f: &common::Fixture, flags: &[&str], script: &str) -> Running {
        let mut cmd = enter_command(f, flags, script);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = in_netns(&lab.host, move || cmd.spawn().unwrap());
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Running { child, stdout }
    }

    fn activator(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line the agent prints; panics with the activator's stderr if it ends first.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        if line.is_empty() {
            let mut err = String::new();
            let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("the session ended early: {err}");
        }
        line.trim().to_string()
    }

    /// Let the agent's `read` return, and wait for the session to end.
    fn finish(mut self) -> (String, String, std::process::ExitStatus) {
        let _ = self.child.stdin.take().unwrap().write_all(b"\n");
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = self.child.wait().unwrap();
        (out, err, status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The script's first line: the sandbox's network namespace, as `net:[INODE]`.
const SHOW_NETNS_AND_WAIT: &str = "readlink /proc/self/ns/net; read _; echo finished";

/// Processes whose network namespace is `netns` (`net:[INODE]`) or that hold it open.
fn holders(netns: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() {
            continue;
        }
        let proc = entry.path();
        if std::fs::read_link(proc.join("ns/net")).is_ok_and(|l| l.as_os_str() == netns) {
            found.push(format!("{name} is in it"));
        }
        let Ok(fds) = std::fs::read_dir(proc.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == netns) {
                found.push(format!("{name} holds it as fd {:?}", fd.file_name()));
            }
        }
    }
    found
}

/// The activator's child processes running pasta.
fn pasta_children(activator: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{activator}/task"))
        .unwrap()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            if argv0.ends_with(b"pasta") {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Wait up to `timeout` for `pid` (not necessarily our child) to exit, on a pidfd.
fn wait_for_exit(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return true;
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = nix::poll::PollTimeout::try_from(timeout).unwrap();
    matches!(nix::poll::poll(&mut fds, ms), Ok(n) if n > 0) || exited(pid)
}

/// Shell lines that run the client for each of `targets` (`KIND ADDRESS PORT`) inside the
/// sandbox and print `KIND ADDRESS PORT RESULT... SECONDS`.
fn client_lines(targets: &[(&str, &str, u16)]) -> String {
    targets
        .iter()
        .map(|(kind, addr, port)| {
            format!(
                "echo \"{kind} {addr} {port} $(python3 /workspace/client.py {kind} {addr} {port})\"; "
            )
        })
        .collect()
}

/// The client results in `stdout`: (kind, address, port) -> (ok, seconds, line).
fn results(stdout: &str, targets: &[(&str, &str, u16)]) -> Vec<(bool, f64, String)> {
    targets
        .iter()
        .map(|(kind, addr, port)| {
            let prefix = format!("{kind} {addr} {port} ");
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no result for {prefix} in:\n{stdout}"));
            let rest = &line[prefix.len()..];
            let seconds = rest
                .rsplit_once(' ')
                .and_then(|(_, s)| s.parse().ok())
                .unwrap_or(99.0);
            (rest.starts_with("ok"), seconds, line.to_string())
        })
        .collect()
}

#[test]
fn full_network_reaches_the_blocked_server_and_warns_loudly() {
    let lab = Netlab::new("full", &[]);
    let f = fixture();
    let targets = [
        ("tcp", BLOCKED4, 443),
        ("tcp", BLOCKED6, 443),
        ("udp", BLOCKED4, 443),
        ("tcp", ALLOWED4, 8443),
    ];
    let out = enter(&lab, &f, &["--full-network"], &client_lines(&targets));
    let stdout = common::stdout(&out);
    let stderr = common::stderr(&out);
    for (ok, _, line) in results(&stdout, &targets) {
        assert!(ok, "not reached with --full-network: {line}\n{stderr}");
    }
    assert!(
        stderr.contains("claude-chroot: WARNING: full network"),
        "no warning in:\n{stderr}"
    );
    assert!(!stderr.contains("blocked"), "{stderr}");
}

#[test]
fn no_network_reaches_nothing_and_fails_at_once() {
    let lab = Netlab::new("none", &[]);
    let f = fixture();
    let mut targets = Vec::new();
    for addr in [ALLOWED4, ALLOWED6, BLOCKED4, BLOCKED6] {
        targets.push(("tcp", addr, 443));
        targets.push(("udp", addr, 443));
    }
    let script = format!(
        "echo interfaces: $(awk -F: 'NR > 2 {{ print $1 }}' /proc/net/dev); {}",
        client_lines(&targets)
    );
    let out = enter(&lab, &f, &["--no-network"], &script);
    let stdout = common::stdout(&out);
    assert!(out.status.success(), "{stdout}\n{}", common::stderr(&out));
    // Loopback is the only interface.
    assert_eq!(stdout.lines().next(), Some("interfaces: lo"), "{stdout}");
    for (ok, seconds, line) in results(&stdout, &targets) {
        assert!(!ok, "reached with --no-network: {line}");
        assert!(seconds < 1.0, "took {seconds}s to fail: {line}");
    }
    // The same servers answer outside the sandbox: the failures above are the mode's doing.
    assert_reaches(&lab.host, "tcp", ALLOWED4, 443);
    assert_reaches(&lab.host, "udp", BLOCKED6, 443);
}

/// Run a session in `flags`' mode, and check that its namespace and pasta (if `with_pasta`)
/// are gone once it ends.
fn assert_network_removed_after_session(tag: &str, flags: &[&str], with_pasta: bool) {
    let lab = Netlab::new(tag, &[]);
    let f = fixture();
    let mut session = Running::start(&lab, &f, flags, SHOW_NETNS_AND_WAIT);
    let netns = session.line();
    assert!(netns.starts_with("net:["), "{netns}");
    assert!(
        !holders(&netns).is_empty(),
        "the live sandbox's namespace {netns} has no process in it"
    );
    let pasta = pasta_children(session.activator());
    assert_eq!(
        pasta.len(),
        usize::from(with_pasta),
        "pasta processes for {flags:?}: {pasta:?}"
    );

    let (out, err, status) = session.finish();
    assert!(status.success(), "{out}\n{err}");
    assert!(out.contains("finished"), "{out}\n{err}");
    for pid in pasta {
        assert!(exited(pid), "pasta {pid} still runs after the session");
    }
    let left = holders(&netns);
    assert!(
        left.is_empty(),
        "{netns} still held after the session: {left:?}"
    );
}

#[test]
fn allowlist_session_leaves_no_pasta_and_no_namespace() {
    assert_network_removed_after_session("endal", &[], true);
}

#[test]
fn full_network_session_leaves_no_pasta_and_no_namespace() {
    assert_network_removed_after_session("endfull", &["--full-network"], true);
}

#[test]
fn no_network_session_starts_no_pasta_and_leaves_no_namespace() {
    assert_network_removed_after_session("endnone", &["--no-network"], false);
}

/// Start an allowlist session and SIGKILL its activator; the namespace and pasta's PID.
fn kill_activator_mid_session(lab: &Netlab, f: &common::Fixture) -> (String, i32) {
    let mut session = Running::start(lab, f, &[], SHOW_NETNS_AND_WAIT);
    let netns = session.line();
    let pasta = pasta_children(session.activator());
    assert_eq!(pasta.len(), 1, "{pasta:?}");
    session.child.kill().unwrap();
    session.child.wait().unwrap();
    (netns, pasta[0])
}

#[test]
fn pasta_dies_with_a_sigkilled_activator() {
    let lab = Netlab::new("kill", &[]);
    let f = fixture();
    let (netns, pasta) = kill_activator_mid_session(&lab, &f);
    assert!(
        wait_for_exit(pasta, Duration::from_secs(5)),
        "pasta {pasta} outlived the SIGKILLed activator"
    );
    assert!(
        wait_for_exit_of_holders(&netns),
        "{netns} still held: {:?}",
        holders(&netns)
    );
}

/// The sandbox's init dies with the activator too; give the kernel a moment to finish it.
fn wait_for_exit_of_holders(netns: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if holders(netns).is_empty() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cleanup_after_a_sigkilled_activator_leaves_no_pasta_and_no_session() {
    let lab = Netlab::new("kclean", &[]);
    let f = fixture();
    let (netns, pasta) = kill_activator_mid_session(&lab, &f);
    assert_eq!(f.sessions().len(), 1, "the killed session left no state");

    let out = f
        .command(None)
        .args(["cleanup", "--config"])
        .arg(&f.config)
        .output()
        .unwrap();
    let stderr = common::stderr(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("removed dead session"), "{stderr}");
    assert!(f.sessions().is_empty(), "{:?}", f.sessions());
    assert!(
        wait_for_exit(pasta, Duration::from_secs(5)),
        "pasta {pasta} survives cleanup"
    );
    assert!(
        wait_for_exit_of_holders(&netns),
        "{netns} still held: {:?}",
        holders(&netns)
    );
}

#[test]
fn session_log_holds_one_json_line_matching_the_stderr_report() {
    let lab = Netlab::new("log", &[]);
    let f = fixture();
    let targets = [
        ("tcp", BLOCKED4, 443),
        ("udp", BLOCKED6, 443),
        ("tcp", ALLOWED4, 8443),
        ("tcp", ALLOWED4, 443),
    ];
    let before = std::time::SystemTime::now();
    let out = enter(&lab, &f, &[], &client_lines(&targets));
    let stderr = common::stderr(&out);
    assert!(out.status.success(), "{stderr}");

    let logs: Vec<PathBuf> = std::fs::read_dir(f.state.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let record: serde_json::Value = serde_json::from_str(text.trim()).unwrap();

    let start = record["start"].as_str().unwrap();
    let end = record["end"].as_str().unwrap();
    let not_before = claude_chroot::network::rfc3339(before);
    assert_eq!(start.len(), not_before.len(), "{start}");
    assert!(
        start >= not_before.as_str() && start <= end,
        "{not_before}: {start} .. {end}"
    );
    let ws = workspace(&f);
    assert_eq!(record["workspace"], ws.to_str().unwrap());
    assert_eq!(record["mode"], "allowlist");

    // The report on stderr lists exactly the logged destinations, with the same counts.
    let blocked: Vec<claude_chroot::firewall::Blocked> = record["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| claude_chroot::firewall::Blocked {
            address: b["address"].as_str().unwrap().parse().unwrap(),
            protocol: b["protocol"].as_str().unwrap().into(),
            port: b["port"].as_u64().map(|p| p as u16),
            packets: b["packets"].as_u64().unwrap(),
        })
        .collect();
    for (addr, proto, port) in [
        (BLOCKED4, "tcp", 443),
        (BLOCKED6, "udp", 443),
        (ALLOWED4, "tcp", 8443),
    ] {
        assert!(
            blocked
                .iter()
                .any(|b| b.address == addr.parse::<std::net::IpAddr>().unwrap()
                    && b.protocol == proto
                    && b.port == Some(port)),
            "{addr} {proto} {port} not logged: {text}"
        );
    }
    assert!(
        !blocked
            .iter()
            .any(|b| b.port == Some(443) && b.address == addr(ALLOWED4)),
        "allowed traffic logged as blocked: {text}"
    );
    let report: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("claude-chroot:   ") || l.starts_with("claude-chroot: blocked "))
        .collect();
    let expected = claude_chroot::network::report(&blocked);
    assert_eq!(report, expected.lines().collect::<Vec<_>>(), "{stderr}");
}

#[test]
fn malformed_allowlist_line_stops_enter_naming_the_line_number() {
    let lab = Netlab::new("bad", &[]);
    let f = fixture_with_allowlist(&format!(
        "# vetted\n{ALLOWED4} allowed.test\n{ALLOWED6}allowed.test\n"
    ));
    let out = enter(&lab, &f, &[], "echo agent-ran");
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(!common::stdout(&out).contains("agent-ran"));
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("sync-ips"), "{stderr}");
    assert!(f.sessions().is_empty(), "{:?}", f.sessions());
}

#[test]
fn agent_cannot_add_list_or_flush_firewall_rules() {
    let mut lab = Netlab::new("nft", &[]);
    let f = fixture();
    let add = "add rule inet claude_chroot output accept";
    let script = format!(
        "/usr/sbin/nft {add} 2>&1 && echo rule-added; \
         /usr/sbin/nft add table inet mine 2>&1 && echo table-added; \
         /usr/sbin/nft list ruleset >/dev/null 2>&1 && echo ruleset-listed; \
         /usr/sbin/nft flush ruleset >/dev/null 2>&1 && echo ruleset-flushed; \
         {}",
        client_lines(&[("tcp", BLOCKED4, 443)])
    );
    let out = enter(&lab, &f, &[], &script);
    let stdout = common::stdout(&out);
    for done in [
        "rule-added",
        "table-added",
        "ruleset-listed",
        "ruleset-flushed",
    ] {
        assert!(!stdout.contains(done), "{done}:\n{stdout}");
    }
    assert!(stdout.contains("Operation not permitted"), "{stdout}");
    let (ok, _, line) = results(&stdout, &[("tcp", BLOCKED4, 443)]).remove(0);
    assert!(
        !ok,
        "the blocked server was reached after the attempts: {line}"
    );

    // The same command is valid: root adds the rule to the same ruleset elsewhere.
    let ns = lab.add_namespace("root");
    let file = std::fs::File::open(ns_path(&ns)).unwrap();
    let ruleset = claude_chroot::firewall::ruleset(&test_allowlist(), &[443], &[]);
    claude_chroot::firewall::apply(Path::new("/usr/sbin/nft"), file.as_fd(), &ruleset).unwrap();
    let root = exec_in(&ns, "nft", &add.split(' ').collect::<Vec<_>>());
    assert!(
        root.status.success(),
        "{}",
        String::from_utf8_lossy(&root.stderr)
    );
}
