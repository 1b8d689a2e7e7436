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

/// The milliseconds `name` took in a `timing:` line, in its phases or side by side.
fn timed(line: &str, name: &str) -> f64 {
    let at = line
        .find(&format!(" {name} "))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    let rest = &line[at + name.len() + 2..];
    rest[..rest.find("ms").unwrap()].parse().unwrap()
}

#[test]
fn verbose_timing_splits_the_network_steps_that_run_side_by_side() {
    let lab = Netlab::new("timing", &[]);
    let f = fixture();
    let out = enter(&lab, &f, &["-v"], "true");
    let stderr = common::stderr(&out);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("claude-chroot: timing: "))
        .unwrap_or_else(|| panic!("no timing line in:\n{stderr}"));
    assert!(
        line.contains("; side by side within network: ruleset ")
            && line.contains(", pasta ready ")
            && line.contains("; report: counters ")
            && line.contains(", pasta gone "),
        "{line}"
    );
    // Each step ran within its phase, so none took longer than the phase.
    for (phase, steps) in [
        ("network", ["ruleset", "pasta ready"]),
        ("report", ["counters", "pasta gone"]),
    ] {
        let whole = timed(line, phase);
        for step in steps {
            let part = timed(line, step);
            assert!(
                part > 0.0 && part <= whole,
                "{step} {part} in {phase} {whole}: {line}"
            );
        }
    }

    // Without the filter there is no ruleset and no counters, only pasta.
    let out = enter(&lab, &f, &["-v", "--full-network"], "true");
    let stderr = common::stderr(&out);
    let line = stderr.lines().find(|l| l.contains("timing: ")).unwrap();
    assert!(
        line.contains("side by side within network: pasta ready ")
            && line.contains("; report: pasta gone ")
            && !line.contains("ruleset")
            && !line.contains("counters"),
        "{line}"
    );
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

/// The agent's probe program: each argument `KIND,TARGET,PORT` is one attempt, printed as
/// `KIND TARGET PORT RESULT SECONDS` with the result as one word-joined phrase
/// (`ok ...`, `fail ...`, `nosocket ...`) and the seconds measured inside. Kinds: `tcp`
/// (connect and GET), `udp` (connected socket: send, then receive), `dns` (a UDP query for
/// `other.test`), `icmp` (echo over a ping socket, else a raw one, with IP(V6)_RECVERR so
/// errors surface), `getent` (`getent ahosts TARGET`), `gai` (getaddrinfo).
const PROBE_PY: &str = r#"
import errno, socket, struct, subprocess, sys, time

IP_RECVERR, IPV6_RECVERR = 11, 25

def errname(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, socket.gaierror):
        return {socket.EAI_NONAME: "EAI_NONAME", socket.EAI_AGAIN: "EAI_AGAIN"}.get(e.errno, "EAI%d" % e.errno)
    if getattr(e, "errno", None):
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__

def dns_query(name):
    q = struct.pack("!HHHHHH", 0x4343, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", 1, 1)

def icmp(addr, family, v6):
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    errors, s = [], None
    for kind, label in ((socket.SOCK_DGRAM, "ping"), (socket.SOCK_RAW, "raw")):
        try:
            s = socket.socket(family, kind, proto)
            break
        except OSError as e:
            errors.append(label + ":" + errname(e))
    if s is None:
        return "nosocket " + ",".join(errors)
    s.settimeout(3)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    echo, reply = (128, 129) if v6 else (8, 0)
    body = struct.pack("!BBHHH", echo, 0, 0, 0x4242, 1) + b"claude"
    if not v6:
        c = sum(struct.unpack("!%dH" % (len(body) // 2), body))
        c = (c >> 16) + (c & 0xffff); c += c >> 16
        body = body[:2] + struct.pack("!H", ~c & 0xffff) + body[4:]
    try:
        s.sendto(body, (addr, 0))
    except OSError as e:
        return "fail send=" + errname(e)
    while True:
        try:
            data = s.recv(2048)
        except OSError as e:
            return "fail recv=" + errname(e)
        if s.type == socket.SOCK_RAW and not v6:
            data = data[(data[0] & 15) * 4:]
        if data[0] == reply:
            return "ok echo-reply"

def attempt(kind, target, port):
    if kind == "getent":
        r = subprocess.run(["getent", "ahosts", target], stdout=subprocess.DEVNULL)
        return "ok" if r.returncode == 0 else "fail rc=%d" % r.returncode
    if kind == "gai":
        try:
            infos = socket.getaddrinfo(target, port)
        except OSError as e:
            return "fail " + errname(e)
        return "ok " + ",".join(sorted({i[4][0] for i in infos}))
    v6 = ":" in target
    family = socket.AF_INET6 if v6 else socket.AF_INET
    if kind == "icmp":
        return icmp(target, family, v6)
    if kind == "tcp":
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect((target, port))
        except OSError as e:
            return "fail connect=" + errname(e)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return "ok " + s.recv(200).split(b"\r\n")[0].decode().replace(" ", "_")
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((target, port))
    try:
        s.send(dns_query("other.test") if kind == "dns" else b"ping")
        sent = "sent"
    except OSError as e:
        sent = "send=" + errname(e)
    try:
        return "ok %d-bytes" % len(s.recv(512))
    except OSError as e:
        return "fail " + sent + " recv=" + errname(e)

for spec in sys.argv[1:]:
    kind, target, port = spec.split(",")
    start = time.monotonic()
    try:
        result = attempt(kind, target, int(port))
    except Exception as e:
        result = "error " + repr(e).replace(" ", "_")
    print("%s %s %s %s %.3f" % (kind, target, port, result, time.monotonic() - start), flush=True)
"#;

/// The workspace of `f` with [`PROBE_PY`] in it as `probe.py`.
fn with_probe(f: &common::Fixture) {
    common::write_as(
        common::ALICE.ensure(),
        &workspace(f).join("probe.py"),
        PROBE_PY,
    );
}

/// The shell command that runs the probe inside the sandbox on `targets`.
fn probe_command(targets: &[(&str, &str, u16)]) -> String {
    let specs: Vec<String> = targets
        .iter()
        .map(|(kind, target, port)| format!("{kind},{target},{port}"))
        .collect();
    format!("python3 /workspace/probe.py {}", specs.join(" "))
}

/// What the probe printed for `kind target port` in `lines`: the result and its seconds.
fn probe_result(lines: &[String], (kind, target, port): (&str, &str, u16)) -> (String, f64) {
    let prefix = format!("{kind} {target} {port} ");
    let line = lines
        .iter()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no probe result for {prefix:?} in {lines:#?}"));
    let (result, seconds) = line[prefix.len()..].rsplit_once(' ').unwrap();
    (result.to_string(), seconds.parse().unwrap())
}

/// Assert that the probe's `target` gave exactly `expected`, within a second.
#[track_caller]
fn assert_probe(lines: &[String], target: (&str, &str, u16), expected: &str) {
    let (result, seconds) = probe_result(lines, target);
    assert_eq!(result, expected, "{target:?}: {lines:#?}");
    assert!(seconds < 1.0, "{target:?} took {seconds}s: {result}");
}

/// A process (other than the activator) whose network namespace is `netns` (`net:[INODE]`).
fn pid_in_netns(netns: &str) -> i32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.as_os_str() == netns)
        })
        .unwrap_or_else(|| panic!("no process in {netns}"))
}

/// Run `program args` as root in the network namespace of `pid`; its stdout.
fn nsenter_net(pid: i32, program: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nsenter {program} {args:?}: {}",
        common::stderr(&out)
    );
    common::stdout(&out)
}

/// Inside a real session, every blocked destination fails at once with the error the
/// firewall's verdict gives, measured by the agent's own clock:
///
/// - TCP: the reset makes `connect` fail with ECONNREFUSED.
/// - UDP: the reject verdict drops the datagram in the output hook, so `send` itself fails
///   with EPERM; the administratively-prohibited error then surfaces on `recv` as
///   EHOSTUNREACH (ICMP type 3 code 13) or EACCES (ICMPv6 type 1 code 1).
/// - ICMP: the agent has no ICMP socket at all (a fresh namespace's ping_group_range is
///   `1 0`: EACCES; no CAP_NET_RAW: EPERM). Granted ping sockets by root in the sandbox's
///   own namespace, echo is refused like UDP: EPERM on send (IPv4), EACCES on recv (IPv6).
#[test]
fn blocked_destinations_fail_within_a_second_inside_a_session_and_allowed_443_connects() {
    let lab = Netlab::new("fast", &[]);
    let f = fixture();
    with_probe(&f);
    // Outside the sandbox every one of these answers: the failures below are the firewall's.
    for (kind, a, port) in [
        ("tcp", BLOCKED4, 443),
        ("tcp", BLOCKED6, 443),
        ("udp", BLOCKED4, 443),
        ("udp", BLOCKED6, 443),
        ("icmp", BLOCKED4, 0),
        ("icmp", BLOCKED6, 0),
        ("tcp", ALLOWED4, 8443),
        ("tcp", ALLOWED6, 8443),
    ] {
        assert_reaches(&lab.host, kind, a, port);
    }

    let blocked = [
        ("tcp", BLOCKED4, 443),
        ("tcp", BLOCKED6, 443),
        ("udp", BLOCKED4, 443),
        ("udp", BLOCKED6, 443),
        ("icmp", BLOCKED4, 0),
        ("icmp", BLOCKED6, 0),
        ("tcp", ALLOWED4, 8443),
        ("tcp", ALLOWED6, 8443),
        ("tcp", ALLOWED4, 443),
        ("tcp", ALLOWED6, 443),
    ];
    let icmp = [("icmp", BLOCKED4, 0), ("icmp", BLOCKED6, 0)];
    let script = format!(
        "readlink /proc/self/ns/net; {}; echo unprivileged-done; read _; {}; echo finished",
        probe_command(&blocked),
        probe_command(&icmp)
    );
    let mut session = Running::start(&lab, &f, &[], &script);
    let netns = session.line();
    let mut lines = Vec::new();
    loop {
        let line = session.line();
        if line == "unprivileged-done" {
            break;
        }
        lines.push(line);
    }
    let refused = "fail connect=ECONNREFUSED";
    for target in [
        ("tcp", BLOCKED4, 443),
        ("tcp", BLOCKED6, 443),
        ("tcp", ALLOWED4, 8443),
        ("tcp", ALLOWED6, 8443),
    ] {
        assert_probe(&lines, target, refused);
    }
    assert_probe(
        &lines,
        ("udp", BLOCKED4, 443),
        "fail send=EPERM recv=EHOSTUNREACH",
    );
    assert_probe(
        &lines,
        ("udp", BLOCKED6, 443),
        "fail send=EPERM recv=EACCES",
    );
    for target in icmp {
        assert_probe(&lines, target, "nosocket ping:EACCES,raw:EPERM");
    }
    for target in [("tcp", ALLOWED4, 443), ("tcp", ALLOWED6, 443)] {
        let (result, _) = probe_result(&lines, target);
        assert_eq!(result, "ok HTTP/1.0_200_OK", "{target:?}: {lines:#?}");
    }

    // Root lets every group open ping sockets, in the sandbox's namespace only.
    let pid = pid_in_netns(&netns);
    let host_netns = std::fs::read_link(format!("/proc/{}/ns/net", session.activator())).unwrap();
    assert_ne!(host_netns.as_os_str(), netns.as_str());
    nsenter_net(
        pid,
        "sysctl",
        &["-w", "net.ipv4.ping_group_range=0 2147483647"],
    );
    let (out, err, status) = session.finish();
    assert!(status.success(), "{out}\n{err}");
    let lines: Vec<String> = out.lines().map(String::from).collect();
    assert_probe(&lines, ("icmp", BLOCKED4, 0), "fail send=EPERM");
    assert_probe(&lines, ("icmp", BLOCKED6, 0), "fail recv=EACCES");
    // The echo requests reached the firewall and were counted.
    for counted in [
        format!("claude-chroot:   {BLOCKED4} icmp ("),
        format!("claude-chroot:   {BLOCKED6} ipv6-icmp ("),
    ] {
        assert!(err.contains(&counted), "no {counted:?} in:\n{err}");
    }
}

/// The allowed name resolves to exactly its vetted addresses (not what DNS says now), other
/// names fail at once, and no DNS query reaches the lab's server, not even one sent straight
/// to it.
#[test]
fn only_vetted_addresses_resolve_other_names_fail_fast_and_no_query_leaves() {
    let lab = Netlab::new(
        "names",
        &[
            // What DNS would answer differs from the vetted file, and knows the other name.
            "--host-record=allowed.test,198.51.100.99,2001:db8:100::99".into(),
            format!("--host-record=other.test,{BLOCKED4},{BLOCKED6}"),
            "--local=/test/".into(),
        ],
    );
    let f = fixture();
    with_probe(&f);
    let script = format!(
        "getent ahosts allowed.test | sed 's/^/ahosts /'; echo \"ahosts-status $?\"; {}",
        probe_command(&[
            ("getent", "other.test", 0),
            ("gai", "other.test", 443),
            ("gai", "allowed.test", 443),
            ("dns", UPSTREAM4, 53),
            ("dns", UPSTREAM6, 53),
        ])
    );
    let out = enter(&lab, &f, &[], &script);
    let stdout = common::stdout(&out);
    assert!(out.status.success(), "{stdout}\n{}", common::stderr(&out));
    let lines: Vec<String> = stdout.lines().map(String::from).collect();

    let ahosts: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ahosts "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        ahosts,
        [ALLOWED4, ALLOWED6].into_iter().collect(),
        "{stdout}"
    );
    let (result, _) = probe_result(&lines, ("gai", "allowed.test", 443));
    assert_eq!(result, format!("ok {ALLOWED4},{ALLOWED6}"), "{stdout}");

    // getent's status 2: the name is not found.
    assert_probe(&lines, ("getent", "other.test", 0), "fail rc=2");
    assert_probe(&lines, ("gai", "other.test", 443), "fail EAI_NONAME");
    assert_probe(
        &lines,
        ("dns", UPSTREAM4, 53),
        "fail send=EPERM recv=EHOSTUNREACH",
    );
    assert_probe(
        &lines,
        ("dns", UPSTREAM6, 53),
        "fail send=EPERM recv=EACCES",
    );
    assert_eq!(lab.dns_queries(), Vec::<String>::new());

    // The same query from outside the sandbox is answered and logged.
    let script = lab.dir.path().join("probe.py");
    std::fs::write(&script, PROBE_PY).unwrap();
    let outside = exec_in(
        &lab.host,
        "python3",
        &[script.to_str().unwrap(), &format!("dns,{UPSTREAM4},53")],
    );
    let outside = common::stdout(&outside);
    assert!(outside.contains(" ok "), "{outside}");
    assert!(
        lab.dns_queries()
            .iter()
            .any(|q| q.contains("query[A] other.test")),
        "{:?}",
        lab.dns_queries()
    );
}

/// The ruleset as loaded in a running session's own namespace (read by root from outside)
/// logs blocked packets with the `claude-blocked:` prefix behind a rate limit, after every
/// accept and before the rejects.
#[test]
fn loaded_ruleset_logs_blocked_packets_rate_limited_before_rejecting() {
    let lab = Netlab::new("nftlog", &[]);
    let f = fixture();
    let mut session = Running::start(&lab, &f, &[], SHOW_NETNS_AND_WAIT);
    let netns = session.line();
    let listing = nsenter_net(pid_in_netns(&netns), "nft", &["-j", "list", "ruleset"]);
    let (out, err, status) = session.finish();
    assert!(status.success(), "{out}\n{err}");

    let json: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let objects = json["nftables"].as_array().unwrap();
    let tables: Vec<&serde_json::Value> = objects.iter().filter_map(|o| o.get("table")).collect();
    assert_eq!(tables.len(), 1, "{listing}");
    assert_eq!(
        (&tables[0]["family"], &tables[0]["name"]),
        (&"inet".into(), &"claude_chroot".into())
    );
    // Rules are listed in evaluation order.
    let output: Vec<&Vec<serde_json::Value>> = objects
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["chain"] == "output")
        .map(|r| r["expr"].as_array().unwrap())
        .collect();
    let has = |rule: &[serde_json::Value], stmt: &str| rule.iter().any(|s| s.get(stmt).is_some());
    let logs: Vec<usize> = (0..output.len())
        .filter(|&i| has(output[i], "log"))
        .collect();
    assert_eq!(logs.len(), 1, "one log rule expected: {listing}");
    let log_rule = output[logs[0]];
    let position = |stmt: &str| log_rule.iter().position(|s| s.get(stmt).is_some());
    let log = &log_rule[position("log").unwrap()]["log"];
    assert_eq!(log["prefix"], "claude-blocked: ", "{log_rule:?}");
    let limit = position("limit").unwrap_or_else(|| panic!("no rate limit: {log_rule:?}"));
    assert!(limit < position("log").unwrap(), "{log_rule:?}");
    let limit = &log_rule[limit]["limit"];
    assert!(limit["rate"].as_u64().is_some_and(|r| r > 0), "{limit}");
    assert_eq!(limit["per"], "second", "{limit}");
    // The log rule only logs; what follows it is rejects only, and at least one.
    for verdict in ["accept", "drop", "reject"] {
        assert!(!has(log_rule, verdict), "{log_rule:?}");
    }
    let after = &output[logs[0] + 1..];
    assert!(!after.is_empty(), "nothing after the log rule: {listing}");
    assert!(after.iter().all(|r| has(r, "reject")), "{listing}");
    assert!(
        output[..logs[0]]
            .iter()
            .all(|r| !has(r, "reject") && !has(r, "drop")),
        "{listing}"
    );
    assert!(
        output[..logs[0]].iter().any(|r| has(r, "accept")),
        "{listing}"
    );
}
