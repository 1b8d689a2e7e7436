//! `sync-ips` against a real DNS server (dnsmasq in a test namespace). Root required.
//!
//! The "public" answers below are never contacted: sync-ips only resolves.

mod netlab;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use claude_chroot::config::Config;
use claude_chroot::sync_ips::{self, EXIT_DRIFT, EXIT_NO_ADDRESS, EXIT_OK};
use netlab::*;

fn dns_records() -> Vec<String> {
    [
        // dnsmasq takes one IPv4 and one IPv6 address per record; a name may have several.
        "--host-record=api.test,160.79.104.10,2607:6bc0::10",
        "--host-record=second.test,160.79.104.11",
        "--cname=www.test,api.test",
        "--host-record=mixed.test,93.184.216.34,2a00:1450:4001::1",
        "--host-record=mixed.test,127.0.0.1,fd00::1",
        "--host-record=mixed.test,10.1.2.3,2001:db8::5",
        "--host-record=mixed.test,100.64.0.9",
        "--host-record=special.test,192.168.1.1,fe80::1",
        // Answer .test locally (NXDOMAIN for unknown names, no data for a missing type);
        // anything else is refused, as there is no upstream server.
        "--local=/test/",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

struct Run {
    status: u8,
    stdout: String,
    stderr: String,
}

/// Run sync-ips from the lab's host namespace (where the test DNS is reachable).
fn sync(lab: &Netlab, config: &Config, yes: bool, check: bool, answer: Option<bool>) -> Run {
    let config = config.clone();
    in_netns(&lab.host, move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut reply = move || Ok(answer.unwrap_or(false));
        let confirm: Option<&mut dyn FnMut() -> anyhow::Result<bool>> = match answer {
            Some(_) => Some(&mut reply),
            None => None,
        };
        let status = sync_ips::run_with(&config, yes, check, &mut out, &mut err, confirm)
            .unwrap_or_else(|e| panic!("sync-ips failed: {e:#}"));
        Run {
            status,
            stdout: String::from_utf8(out).unwrap(),
            stderr: String::from_utf8(err).unwrap(),
        }
    })
}

fn setup(tag: &str, domains: &[&str]) -> (Netlab, Config, PathBuf) {
    let lab = Netlab::new(tag, &dns_records());
    let state = lab.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = netlab::config(&state, domains, &[UPSTREAM4], &[443], &[]);
    let file = config.allowlist_file();
    (lab, config, file)
}

/// The file without its comment header.
fn entries(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn sync_ips_writes_exactly_the_expected_file() {
    let (lab, config, file) = setup(
        "write",
        &["api.test", "www.test", "second.test", "mixed.test"],
    );
    let run = sync(&lab, &config, true, false, None);
    assert_eq!(run.status, EXIT_OK, "{}", run.stderr);
    assert_eq!(
        entries(&file),
        "160.79.104.10 api.test\n\
         2607:6bc0::10 api.test\n\
         93.184.216.34 mixed.test\n\
         2a00:1450:4001::1 mixed.test\n\
         160.79.104.11 second.test\n\
         160.79.104.10 www.test\n\
         2607:6bc0::10 www.test\n"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("# claude-chroot allowlist"), "{text}");
    assert!(
        text.contains("# Domains: api.test www.test second.test mixed.test\n"),
        "{text}"
    );
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o644)
    );
    // No temporary file is left next to it.
    let leftovers: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "allowed-ips.conf")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The written file is what `enter` accepts.
    claude_chroot::allowlist::Allowlist::load(&file).unwrap();
    // The test DNS really was asked (A and AAAA).
    let queries = lab.dns_queries().join("\n");
    assert!(queries.contains("query[A] api.test") && queries.contains("query[AAAA] api.test"));
}

#[test]
fn special_purpose_answers_are_dropped_with_their_reason() {
    let (lab, config, file) = setup("special", &["mixed.test"]);
    let run = sync(&lab, &config, true, false, None);
    assert_eq!(run.status, EXIT_OK, "{}", run.stderr);
    for expected in [
        "mixed.test: dropped 127.0.0.1: loopback 127.0.0.0/8",
        "mixed.test: dropped 10.1.2.3: private-use 10.0.0.0/8",
        "mixed.test: dropped 100.64.0.9: shared address space (CGNAT) 100.64.0.0/10",
        "mixed.test: dropped fd00::1: unique-local fc00::/7",
        "mixed.test: dropped 2001:db8::5: documentation 2001:db8::/32",
    ] {
        assert!(
            run.stderr.contains(expected),
            "missing {expected:?} in:\n{}",
            run.stderr
        );
    }
    assert_eq!(
        entries(&file),
        "93.184.216.34 mixed.test\n2a00:1450:4001::1 mixed.test\n"
    );
}

#[test]
fn check_reports_drift_with_a_diff_and_writes_nothing() {
    let (lab, config, file) = setup("drift", &["api.test", "second.test"]);
    let old = "# hand-written\n160.79.104.99 api.test\n2607:6bc0::10 api.test\n160.79.104.11 second.test\n";
    std::fs::write(&file, old).unwrap();
    let run = sync(&lab, &config, false, true, None);
    assert_eq!(run.status, EXIT_DRIFT, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        old,
        "--check wrote the file"
    );
    let diff = run
        .stdout
        .replace(&file.display().to_string(), "STATE/allowed-ips.conf");
    insta::assert_snapshot!(diff);
}

#[test]
fn check_exits_zero_when_the_file_is_current() {
    let (lab, config, file) = setup("current", &["api.test"]);
    assert_eq!(sync(&lab, &config, true, false, None).status, EXIT_OK);
    let before = std::fs::read_to_string(&file).unwrap();
    let run = sync(&lab, &config, false, true, None);
    assert_eq!(run.status, EXIT_OK, "{}", run.stderr);
    assert_eq!(run.stdout, "", "no diff expected");
    assert!(run.stderr.contains("is up to date"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
}

#[test]
fn declining_at_the_prompt_writes_nothing_and_accepting_writes() {
    let (lab, config, file) = setup("prompt", &["api.test"]);
    let run = sync(&lab, &config, false, false, Some(false));
    assert_eq!(run.status, EXIT_DRIFT);
    assert!(
        run.stdout.contains("+160.79.104.10 api.test"),
        "{}",
        run.stdout
    );
    assert!(!file.exists());
    let run = sync(&lab, &config, false, false, Some(true));
    assert_eq!(run.status, EXIT_OK, "{}", run.stderr);
    assert!(entries(&file).contains("160.79.104.10 api.test"));
}

#[test]
fn refuses_without_terminal_or_flag() {
    let (lab, config, file) = setup("notty", &["api.test"]);
    let cfg = config.clone();
    let err = in_netns(&lab.host, move || {
        sync_ips::run_with(&cfg, false, false, &mut Vec::new(), &mut Vec::new(), None)
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("--yes") && err.contains("--check"), "{err}");
    assert!(lab.dns_queries().is_empty(), "resolved before refusing");
    assert!(!file.exists());
}

#[test]
fn failing_domains_keep_their_previous_addresses() {
    // broken.example is refused by the server (no upstream), special.test has only special answers,
    // nx.test does not exist.
    let (lab, config, file) = setup(
        "fail",
        &["api.test", "broken.example", "special.test", "nx.test"],
    );
    std::fs::write(
        &file,
        "160.79.104.10 api.test\n8.8.4.4 broken.example\n1.2.3.4 special.test\n9.9.9.9 nx.test\n",
    )
    .unwrap();
    let run = sync(&lab, &config, true, false, None);
    assert_eq!(run.status, EXIT_OK, "{}", run.stderr);
    assert_eq!(
        entries(&file),
        "160.79.104.10 api.test\n\
         2607:6bc0::10 api.test\n\
         8.8.4.4 broken.example\n\
         9.9.9.9 nx.test\n\
         1.2.3.4 special.test\n"
    );
    for domain in ["broken.example", "special.test", "nx.test"] {
        assert!(
            run.stderr.contains(&format!("{domain}: resolution failed"))
                && run.stderr.contains("keeping its 1 previous address"),
            "{domain} not reported:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stderr
            .contains("special.test: dropped 192.168.1.1: private-use")
    );
}

#[test]
fn a_domain_left_without_any_address_exits_non_zero() {
    let (lab, config, file) = setup("noaddr", &["api.test", "nx.test"]);
    let run = sync(&lab, &config, true, false, None);
    assert_eq!(run.status, EXIT_NO_ADDRESS, "{}", run.stderr);
    assert!(run.stderr.contains("nx.test: no address"), "{}", run.stderr);
    // The domains that resolved are still written, for review like any change.
    assert_eq!(
        entries(&file),
        "160.79.104.10 api.test\n2607:6bc0::10 api.test\n"
    );
    let run = sync(&lab, &config, false, true, None);
    assert_eq!(run.status, EXIT_NO_ADDRESS, "{}", run.stderr);
}

#[test]
fn nameserver_with_port_and_cname_chain_resolve() {
    let (lab, mut config, file) = setup("port", &["www.test"]);
    config.network.nameservers = vec![format!("{UPSTREAM4}:53")];
    let run = sync(&lab, &config, true, false, None);
    assert_eq!(run.status, EXIT_OK, "{}", run.stderr);
    assert_eq!(
        entries(&file),
        "160.79.104.10 www.test\n2607:6bc0::10 www.test\n"
    );
}

/// The real binary, as root from the lab's host namespace, on `config` written to a file.
struct Binary {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    seconds: f64,
}

fn binary(lab: &Netlab, config: &Config, args: &[&str]) -> Binary {
    let file = lab.dir.path().join("activate.json");
    std::fs::write(&file, serde_json::to_vec(config).unwrap()).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_claude-chroot-activate"));
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .arg("sync-ips")
        .args(args)
        .arg("--config")
        .arg(&file)
        // Not a terminal.
        .stdin(std::process::Stdio::null());
    in_netns(&lab.host, move || {
        let start = std::time::Instant::now();
        let out = cmd.output().unwrap();
        Binary {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            seconds: start.elapsed().as_secs_f64(),
        }
    })
}

/// Names in the allowlist file's directory, the file itself included.
fn dir_entries(file: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn binary_check_exits_one_on_drift_writing_nothing_and_zero_when_current() {
    let (lab, config, file) = setup("bincheck", &["api.test"]);
    let old = "# hand-written\n160.79.104.99 api.test\n";
    std::fs::write(&file, old).unwrap();
    let before = std::fs::metadata(&file).unwrap();

    let run = binary(&lab, &config, &["--check"]);
    assert_eq!(run.code, Some(i32::from(EXIT_DRIFT)), "{}", run.stderr);
    assert!(
        run.stdout.contains("-160.79.104.99 api.test")
            && run.stdout.contains("+160.79.104.10 api.test")
            && run.stdout.contains("+2607:6bc0::10 api.test"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("differs from DNS (--check: not written)"),
        "{}",
        run.stderr
    );
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), old);
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec()),
        "--check replaced or touched the file"
    );
    assert_eq!(dir_entries(&file), ["allowed-ips.conf"]);

    let run = binary(&lab, &config, &["--yes"]);
    assert_eq!(run.code, Some(i32::from(EXIT_OK)), "{}", run.stderr);
    assert_eq!(
        entries(&file),
        "160.79.104.10 api.test\n2607:6bc0::10 api.test\n"
    );
    let written = std::fs::read_to_string(&file).unwrap();

    let run = binary(&lab, &config, &["--check"]);
    assert_eq!(run.code, Some(i32::from(EXIT_OK)), "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("is up to date"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
}

#[test]
fn binary_without_terminal_or_yes_fails_saying_to_use_yes() {
    let (lab, config, file) = setup("binnotty", &["api.test"]);
    let run = binary(&lab, &config, &[]);
    // A refusal is an error of the tool itself: main's status 125.
    assert_eq!(run.code, Some(125), "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "claude-chroot: error: not on a terminal: pass --yes to write the allowlist or \
         --check to only compare\n"
    );
    assert_eq!(run.stdout, "");
    assert!(!file.exists());
    assert!(lab.dns_queries().is_empty(), "{:?}", lab.dns_queries());
}

/// A nameserver that reads every query (UDP and TCP) and never answers, on `addr`:`port` in
/// namespace `ns`; it appends one line per query it receives to `log`.
struct Silent(std::process::Child);

const SILENT_PY: &str = r#"
import socket, sys, threading
addr, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def note(what):
    with open(log, "a") as f:
        f.write(what + "\n")
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((addr, port))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((addr, port))
tcp.listen(16)
held = []
def serve_tcp():
    while True:
        conn, _ = tcp.accept()
        held.append(conn)
        note("tcp")
threading.Thread(target=serve_tcp, daemon=True).start()
def serve_udp():
    while True:
        udp.recvfrom(2048)
        note("udp")
threading.Thread(target=serve_udp, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

impl Silent {
    fn start(lab: &Netlab, addr: &str, port: u16) -> Silent {
        use std::io::BufRead;
        let script = lab.dir.path().join("silent.py");
        std::fs::write(&script, SILENT_PY).unwrap();
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.upstream, "python3"])
            .arg(&script)
            .args([addr, &port.to_string()])
            .arg(lab.dir.path().join("silent.log"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Silent(child)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_with_a_silent_nameserver_gives_up_within_seconds_naming_the_domain() {
    let (lab, mut config, file) = setup("binsilent", &["api.test"]);
    let _silent = Silent::start(&lab, UPSTREAM4, 5454);
    config.network.nameservers = vec![format!("{UPSTREAM4}:5454")];
    config.network.resolve_timeout_ms = 300;

    // No previous address: the domain ends with none, nothing is written.
    let run = binary(&lab, &config, &["--yes"]);
    assert_eq!(run.code, Some(i32::from(EXIT_NO_ADDRESS)), "{}", run.stderr);
    assert!(run.seconds < 3.0, "took {}s:\n{}", run.seconds, run.stderr);
    assert!(
        run.stderr
            .contains("claude-chroot: api.test: resolution failed (")
            && run.stderr.contains("claude-chroot: api.test: no address"),
        "{}",
        run.stderr
    );
    assert!(!file.exists());
    // The queries did reach the silent server: the failure is its silence.
    let log = std::fs::read_to_string(lab.dir.path().join("silent.log")).unwrap_or_default();
    assert!(log.contains("udp"), "no query reached the server: {log:?}");
    assert!(lab.dns_queries().is_empty(), "{:?}", lab.dns_queries());

    // With a previous address the domain keeps it, and the file is current.
    std::fs::write(&file, "160.79.104.99 api.test\n").unwrap();
    let run = binary(&lab, &config, &["--yes"]);
    assert_eq!(run.code, Some(i32::from(EXIT_OK)), "{}", run.stderr);
    assert!(run.seconds < 3.0, "took {}s:\n{}", run.seconds, run.stderr);
    assert!(
        run.stderr.contains("api.test: resolution failed (")
            && run.stderr.contains("keeping its 1 previous address"),
        "{}",
        run.stderr
    );
    assert_eq!(entries(&file), "160.79.104.99 api.test\n");
}
