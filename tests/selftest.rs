//! `selftest` against the real kernel: it passes on a sound sandbox (loopback only, and with
//! the allowlist inside the test internet), and each probe reports BROKEN when exactly the
//! protection it checks is taken away, by a weakened configuration or a test-only knob
//! (`CLAUDE_CHROOT_TEST_WEAKEN`, debug builds only).

mod common;
mod netlab;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::fake_daemon::{Behaviour, FakeDaemon};
use common::*;
use netlab::*;
use serde_json::{Value, json};

/// Every probe the table must list.
const PROBES: [&str; 33] = [
    "read-home",
    "read-root",
    "read-shadow",
    "read-allowlist",
    "write-etc",
    "write-nix-store",
    "write-skeleton",
    "settings",
    "privileges",
    "setuid",
    "mount",
    "chroot",
    "pivot-root",
    "userns-settings",
    "nix-daemon",
    "host-process",
    "ptrace",
    "tiocsti",
    "keyring",
    "kernel-log",
    "kernel-module",
    "nftables",
    "net-tcp",
    "net-udp",
    "net-icmp",
    "net-closed-port",
    "host-loopback",
    "abstract-socket",
    "resolve",
    "dns",
    "leftover",
    "pids-limit",
    "activator-death",
];

/// The pids limit of the tests' sessions.
const PIDS_LIMIT: u32 = 128;

/// A fixture whose configuration the test can change, with the allowlist file in place.
struct Setup {
    f: Fixture,
    config: Value,
}

impl Setup {
    fn new(network: &str) -> Setup {
        let f = Fixture::with(Options {
            network: Some(network.into()),
            ..Default::default()
        });
        let mut config = f.activate.clone();
        // The real configuration mounts /nix read-only: probe the store too.
        push_mount(&mut config, "/nix", "/nix", false);
        // A small limit keeps the fork bomb quick.
        config["limits"]["pids"] = json!(PIDS_LIMIT);
        let setup = Setup { f, config };
        setup.write_allowlist(&format!(
            "{ALLOWED4} allowed.test\n{ALLOWED6} allowed.test\n"
        ));
        setup
    }

    fn write_allowlist(&self, text: &str) {
        let path = self.allowlist();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn allowlist(&self) -> PathBuf {
        match self.config["network"]["allowlistFile"].as_str() {
            Some(p) => PathBuf::from(p),
            None => self.f.state.join("allowed-ips.conf"),
        }
    }

    fn mount(&mut self, source: &Path, target: &str, writable: bool) {
        push_mount(&mut self.config, source.to_str().unwrap(), target, writable);
    }

    /// A directory of the fixture owned by the test user.
    fn user_dir(&self, name: &str) -> PathBuf {
        let dir = self.f.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        chown(&dir, ALICE);
        dir
    }

    /// `selftest --json` as the test user through sudo, with `flags` and the knobs `weaken`.
    fn command(&self, flags: &[&str], weaken: &str) -> Command {
        std::fs::write(
            &self.f.config,
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
        let mut cmd = self.f.command(Some(ALICE.ensure()));
        cmd.arg("selftest")
            .arg("--config")
            .arg(&self.f.config)
            .args(flags)
            .stdin(Stdio::null());
        if !weaken.is_empty() {
            cmd.env("CLAUDE_CHROOT_TEST_WEAKEN", weaken);
        }
        cmd
    }

    fn run(&self, flags: &[&str], weaken: &str) -> Run {
        Run::new(self.command(flags, weaken).arg("--json").output().unwrap())
    }

    fn run_in(&self, lab: &Netlab, flags: &[&str], weaken: &str) -> Run {
        let mut cmd = self.command(flags, weaken);
        cmd.arg("--json");
        Run::new(in_netns(&lab.host, move || cmd.output().unwrap()))
    }
}

fn push_mount(config: &mut Value, source: &str, target: &str, writable: bool) {
    config["mounts"].as_array_mut().unwrap().push(json!({
        "source": source, "target": target, "writable": writable, "optional": false
    }));
}

/// A selftest's JSON report and exit status.
struct Run {
    out: Output,
    report: Value,
    outcomes: BTreeMap<String, String>,
}

impl Run {
    fn new(out: Output) -> Run {
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}), status {:?}\nstdout:\n{}\nstderr:\n{}",
                out.status,
                stdout(&out),
                stderr(&out)
            )
        });
        let outcomes = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["id"].as_str().unwrap().to_string(),
                    f["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        Run {
            out,
            report,
            outcomes,
        }
    }

    fn finding(&self, id: &str) -> &Value {
        self.report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("no finding {id} in {:#}", self.report))
    }

    #[track_caller]
    fn assert_held(&self, skipped: &[&str]) {
        // A skipped probe proved nothing: such a run is partial, with its own exit status.
        let (status, verdict) = if skipped.is_empty() {
            (0, "held")
        } else {
            (2, "partial")
        };
        assert_eq!(
            self.out.status.code(),
            Some(status),
            "{:#}\n{}",
            self.report,
            stderr(&self.out)
        );
        assert_eq!(self.report["verdict"], verdict);
        let listed: Vec<&str> = self.outcomes.keys().map(String::as_str).collect();
        for id in PROBES {
            assert!(listed.contains(&id), "{id} missing from {listed:?}");
        }
        for (id, outcome) in &self.outcomes {
            let want = if skipped.contains(&id.as_str()) {
                "skipped"
            } else {
                "held"
            };
            assert_eq!(outcome, want, "{id}: {:#}", self.finding(id));
            if outcome == "skipped" {
                assert!(
                    !self.finding(id)["detail"].as_str().unwrap().is_empty(),
                    "{id} skipped without a reason"
                );
            }
        }
    }

    /// Each of `ids` is BROKEN, the verdict says so and the exit status is 1.
    #[track_caller]
    fn assert_broken(&self, ids: &[&str]) {
        for id in ids {
            assert_eq!(
                self.outcomes.get(*id).map(String::as_str),
                Some("broken"),
                "{id}: {:#}\nstderr:\n{}",
                self.finding(id),
                stderr(&self.out)
            );
        }
        assert_eq!(self.report["verdict"], "broken");
        assert_eq!(self.out.status.code(), Some(1), "{}", stderr(&self.out));
    }
}

fn none() -> &'static str {
    "{ mode = \"none\"; }"
}

fn allowlist(extra: &str) -> String {
    format!(
        "{{ mode = \"allowlist\"; domains = [ \"allowed.test\" ]; tcpPorts = [ 443 ]; \
         nameservers = [ \"{UPSTREAM4}\" ]; {extra} }}"
    )
}

// ---------------------------------------------------------------------------------------
// A sound sandbox passes.

#[test]
fn selftest_passes_with_no_network_and_lists_every_probe_as_held() {
    let s = Setup::new(none());
    let run = s.run(&["--no-network"], "");
    run.assert_held(&["net-closed-port"]);
    let detail = run.finding("pids-limit")["detail"].as_str().unwrap();
    assert!(
        detail.contains("EAGAIN") && detail.contains(&format!("(limit {PIDS_LIMIT})")),
        "{detail}"
    );
    // Nothing of the run is left on the host: no session, no workspace.
    assert!(s.f.sessions().is_empty(), "{:?}", s.f.sessions());
    let err = stderr(&run.out);
    let ws = err
        .split_once("in a session on ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no workspace named in:\n{err}"));
    assert!(ws.starts_with("/tmp/claude-chroot-selftest-"), "{ws}");
    assert!(!Path::new(ws).exists(), "workspace {ws} left behind");
}

#[test]
fn selftest_passes_with_the_allowlist_in_the_test_internet_and_sends_no_dns_query() {
    let lab = Netlab::new("st-ok", &["--host-record=example.com,198.51.100.99".into()]);
    let s = Setup::new(&allowlist(""));
    let mut cmd = s.command(&[], "");
    let out = in_netns(&lab.host, move || cmd.output().unwrap());
    let table = ok(&out);
    // Shown with `--nocapture`: the README's example output comes from this run.
    println!("{}{table}", stderr(&out));
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with(' '))
        .collect();
    let verdict = rows.last().unwrap();
    assert!(
        verdict.starts_with("claude-chroot: selftest: the sandbox held:"),
        "{table}"
    );
    let probes = &rows[..rows.len() - 1];
    assert_eq!(probes.len(), PROBES.len(), "{table}");
    for row in probes {
        assert!(row.contains("  held  "), "not held: {row}\n{table}");
    }
    assert!(
        lab.dns_queries().is_empty(),
        "the sandbox reached the DNS server: {:?}",
        lab.dns_queries()
    );
}

// ---------------------------------------------------------------------------------------
// Each probe detects its protection taken away: weakened configurations.

#[test]
fn a_bind_of_the_host_home_root_or_shadow_is_reported() {
    let a = ALICE.ensure();
    let mut s = Setup::new(none());
    s.mount(&a.home(), a.home().to_str().unwrap(), false);
    s.mount(Path::new("/root"), "/root", false);
    // The skeleton's /etc is read-only inside: give the bind a mount point.
    std::fs::write(s.f.skeleton.join("etc/shadow"), "").unwrap();
    s.mount(Path::new("/etc/shadow"), "/etc/shadow", false);
    s.run(&[], "")
        .assert_broken(&["read-home", "read-root", "read-shadow"]);
}

#[test]
fn a_bind_of_the_allowlist_file_is_reported() {
    let mut s = Setup::new(none());
    // Outside /var/tmp, which is a symlink inside and cannot hold a mount point.
    let dir = Removed(PathBuf::from(format!(
        "/srv/claude-chroot-selftest-test-{}",
        std::process::id()
    )));
    s.config["network"]["allowlistFile"] = json!(dir.0.join("allowed-ips.conf"));
    s.write_allowlist(&format!("{ALLOWED4} allowed.test\n"));
    let list = s.allowlist();
    s.mount(&list, list.to_str().unwrap(), false);
    s.run(&[], "").assert_broken(&["read-allowlist"]);
}

/// A directory removed when the test ends.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_writable_etc_is_reported() {
    let mut s = Setup::new(none());
    let etc = s.user_dir("etc-copy");
    s.mount(&etc, "/etc", true);
    s.run(&[], "").assert_broken(&["write-etc"]);
}

#[test]
fn a_writable_nix_store_is_reported() {
    let mut s = Setup::new(none());
    let store = s.user_dir("store");
    s.mount(&store, "/nix/store", true);
    s.run(&[], "").assert_broken(&["write-nix-store"]);
}

#[test]
fn a_writable_skeleton_is_reported() {
    let mut s = Setup::new(none());
    chown(&s.f.skeleton.join("etc/nsswitch.conf"), ALICE);
    let etc = s.f.skeleton.join("etc");
    s.mount(&etc, "/etc", true);
    let run = s.run(&[], "");
    run.assert_broken(&["write-skeleton"]);
    assert_eq!(
        run.outcomes["write-etc"], "held",
        "only the skeleton file is writable"
    );
}

#[test]
fn replaceable_managed_settings_are_reported() {
    let mut s = Setup::new(none());
    let dir = s.user_dir("claude-code");
    write_as(ALICE, &dir.join("managed-settings.json"), "{}\n");
    s.mount(&dir, "/etc/claude-code", true);
    s.run(&[], "").assert_broken(&["settings"]);
}

// ---------------------------------------------------------------------------------------
// Each probe detects its protection taken away: test-only knobs.

#[test]
fn without_the_privilege_drop_root_and_its_capabilities_are_reported() {
    let s = Setup::new(none());
    s.run(&[], "privileges")
        .assert_broken(&["privileges", "kernel-log", "nftables"]);
}

#[test]
fn without_the_privilege_drop_and_the_filter_mount_chroot_pivot_root_and_syslog_get_through() {
    let s = Setup::new(none());
    let run = s.run(&[], "privileges,seccomp");
    // With root's capabilities and no filter, init_module passes the permission check on
    // any kernel (then rejects the empty image, or has no module support at all).
    run.assert_broken(&[
        "mount",
        "chroot",
        "pivot-root",
        "kernel-log",
        "kernel-module",
        "nftables",
    ]);
    assert!(
        run.finding("kernel-log")["detail"]
            .as_str()
            .unwrap()
            .contains("syslog: read the kernel log"),
        "{:#}",
        run.finding("kernel-log")
    );
}

#[test]
fn without_the_seccomp_filter_user_namespaces_and_keyrings_are_reported() {
    let s = Setup::new(none());
    let run = s.run(&[], "seccomp");
    run.assert_broken(&["userns-settings", "keyring"]);
    // Without the filter, a kernel with module support still refuses an unprivileged
    // init_module (EPERM); one without it answers ENOSYS, past the sandbox.
    let modules = Path::new("/proc/modules").exists();
    assert_eq!(
        run.outcomes["kernel-module"],
        if modules { "held" } else { "broken" },
        "{:#}",
        run.finding("kernel-module")
    );
    // TIOCSTI now works, but reaches only the sandbox's own terminal.
    assert_eq!(
        run.outcomes["tiocsti"],
        "held",
        "{:#}",
        run.finding("tiocsti")
    );
}

#[test]
fn a_nix_daemon_that_trusts_the_agent_is_reported_when_enter_does_not_ask() {
    let mut s = Setup::new(none());
    // A /nix of the test's own, with a daemon that trusts everyone.
    let nix = s.f.dir.path().join("nix");
    std::fs::create_dir_all(nix.join("store")).unwrap();
    let daemon = FakeDaemon::start(
        &nix.join("var/nix/daemon-socket"),
        Behaviour::Greet {
            minor: 38,
            trust: 1,
        },
    );
    s.config["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["target"] != "/nix");
    s.mount(&nix, "/nix", false);
    let run = s.run(&[], "nix-daemon-check");
    run.assert_broken(&["nix-daemon"]);
    assert!(daemon.peers().contains(&ALICE.uid));
    // With the check in place the session does not start at all.
    let out = s.command(&[], "").output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("trusts uid"), "{}", stderr(&out));
}

#[test]
fn mounts_without_nosuid_are_reported() {
    let s = Setup::new(none());
    s.run(&[], "nosuid").assert_broken(&["setuid"]);
}

#[test]
fn a_missing_no_new_privs_flag_is_reported() {
    // Installing the filter sets the flag as well, so the filter goes too.
    let s = Setup::new(none());
    let run = s.run(&[], "no-new-privs,seccomp");
    run.assert_broken(&["setuid"]);
    assert!(
        run.finding("setuid")["detail"]
            .as_str()
            .unwrap()
            .contains("NoNewPrivs is not set")
    );
}

#[test]
fn without_a_pid_namespace_host_processes_and_leftovers_are_reported() {
    let s = Setup::new(none());
    // The session's cgroup kills what outlives init at teardown: take it away too.
    s.run(&[], "pid-namespace,pids-limit").assert_broken(&[
        "host-process",
        "ptrace",
        "leftover",
        "activator-death",
    ]);
}

#[test]
fn without_a_pid_namespace_the_cgroup_still_ends_leftovers_at_teardown() {
    let s = Setup::new(none());
    let run = s.run(&[], "pid-namespace");
    run.assert_broken(&["host-process", "ptrace", "activator-death"]);
    assert_eq!(
        run.outcomes["leftover"],
        "held",
        "{:#}",
        run.finding("leftover")
    );
}

#[test]
fn a_fork_bomb_outside_the_pids_limited_cgroup_is_reported() {
    let s = Setup::new(none());
    let run = s.run(&[], "pids-limit");
    run.assert_broken(&["pids-limit"]);
    let detail = run.finding("pids-limit")["detail"].as_str().unwrap();
    assert!(detail.contains("more than the limit"), "{detail}");
}

#[test]
fn without_a_pids_limit_the_fork_bomb_probe_says_why_it_is_skipped() {
    let mut s = Setup::new(none());
    s.config["limits"]["pids"] = Value::Null;
    let run = s.run(&[], "");
    run.assert_held(&["net-closed-port", "pids-limit"]);
    let detail = run.finding("pids-limit")["detail"].as_str().unwrap();
    assert!(detail.contains("limits.pids is null"), "{detail}");
}

#[test]
fn with_the_invoking_terminal_instead_of_its_own_injection_is_reported() {
    // The filter refuses TIOCSTI as well, so it goes too.
    let s = Setup::new(none());
    let run = s.run(&[], "pty,seccomp");
    run.assert_broken(&["tiocsti"]);
    assert!(
        run.finding("tiocsti")["detail"]
            .as_str()
            .unwrap()
            .contains("waiting on the invoking terminal"),
        "{:#}",
        run.finding("tiocsti")
    );
}

#[test]
fn without_a_network_namespace_host_loopback_and_abstract_sockets_are_reported() {
    // The sandbox shares its caller's network: run it in a throwaway namespace.
    let lab = Netlab::new("st-lo", &[]);
    let s = Setup::new(none());
    s.run_in(&lab, &["--no-network"], "net-namespace")
        .assert_broken(&["host-loopback", "abstract-socket"]);
}

#[test]
fn an_allowlist_with_the_documentation_addresses_is_reported() {
    let lab = Netlab::new("st-doc", &[]);
    let s = Setup::new(&allowlist("udpPorts = [ 443 ];"));
    s.write_allowlist(&format!(
        "{ALLOWED4} allowed.test\n192.0.2.1 doc.test\n2001:db8::1 doc.test\n"
    ));
    s.run_in(&lab, &[], "")
        .assert_broken(&["net-tcp", "net-udp"]);
}

#[test]
fn an_allowlist_open_over_ipv6_only_is_reported() {
    // The IPv4 attempts are refused and counted as before; the IPv6 one alone is let
    // through, and that is enough to report the probe.
    let lab = Netlab::new("st-doc6", &[]);
    let s = Setup::new(&allowlist("udpPorts = [ 443 ];"));
    s.write_allowlist(&format!("{ALLOWED4} allowed.test\n2001:db8::1 doc.test\n"));
    let run = s.run_in(&lab, &[], "");
    run.assert_broken(&["net-tcp", "net-udp"]);
    for id in ["net-tcp", "net-udp"] {
        // What left the sandbox comes first; every attempt follows in parentheses.
        let detail = run.finding(id)["detail"].as_str().unwrap().to_string();
        let left = detail.split(" (").next().unwrap();
        assert!(
            left.contains("[2001:db8::1]:443") && !left.contains("192.0.2.1"),
            "{id}: {detail}"
        );
    }
}

#[test]
fn an_unfiltered_network_with_raw_sockets_lets_icmp_out() {
    let lab = Netlab::new("st-icmp", &[]);
    let s = Setup::new(&allowlist(""));
    s.run_in(&lab, &["--full-network"], "privileges")
        .assert_broken(&["net-icmp"]);
}

#[test]
fn a_port_filter_that_opens_other_ports_is_reported() {
    let lab = Netlab::new("st-port", &[]);
    let s = Setup::new(&allowlist(""));
    let run = s.run_in(&lab, &[], "port-filter");
    run.assert_broken(&["net-closed-port"]);
    assert_eq!(run.outcomes["net-tcp"], "held");
}

#[test]
fn an_allowlist_that_lets_dns_through_to_the_nameserver_is_reported() {
    // Only the DNS rule is weakened: the nameserver's address is allowed on UDP port 53.
    let lab = Netlab::new(
        "st-dns53",
        &["--host-record=example.com,198.51.100.99".into()],
    );
    let s = Setup::new(&allowlist("udpPorts = [ 53 ];"));
    s.write_allowlist(&format!("{ALLOWED4} allowed.test\n{UPSTREAM4} ns.test\n"));
    let run = s.run_in(&lab, &[], "");
    run.assert_broken(&["dns"]);
    assert_eq!(
        run.outcomes["resolve"], "held",
        "names still come from /etc/hosts only"
    );
    assert!(!lab.dns_queries().is_empty(), "dnsmasq saw no query");
}

#[test]
fn dns_to_the_configured_nameserver_is_reported_when_the_network_is_unfiltered() {
    let lab = Netlab::new(
        "st-dns",
        &["--host-record=example.com,198.51.100.99".into()],
    );
    let s = Setup::new(&allowlist(""));
    let run = s.run_in(&lab, &["--full-network"], "");
    run.assert_broken(&["dns"]);
    assert!(!lab.dns_queries().is_empty(), "dnsmasq saw no query");
}

#[test]
fn a_name_lookup_through_dns_is_reported() {
    let lab = Netlab::new(
        "st-res",
        &["--host-record=example.com,198.51.100.99".into()],
    );
    let s = Setup::new(&allowlist(""));
    // A skeleton that resolves through DNS, with an unfiltered network.
    std::fs::write(
        s.f.skeleton.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files dns\n",
    )
    .unwrap();
    std::fs::write(
        s.f.skeleton.join("etc/resolv.conf"),
        format!("nameserver {UPSTREAM4}\n"),
    )
    .unwrap();
    let run = s.run_in(&lab, &["--full-network"], "");
    run.assert_broken(&["resolve"]);
    assert!(
        run.finding("resolve")["detail"]
            .as_str()
            .unwrap()
            .contains("198.51.100.99")
    );
}

// ---------------------------------------------------------------------------------------
// The plumbing cannot be turned against the host.

#[test]
fn enter_binds_no_probe_binary_but_the_activator_itself() {
    let s = Setup::new(none());
    let ws = s.f.workspace("ws", ALICE.ensure());
    let out =
        s.f.command(Some(ALICE))
            .args([
                "enter",
                "--no-network",
                "--probe-binary",
                "/etc/shadow",
                "--config",
            ])
            .arg(&s.f.config)
            .arg(&ws)
            .args(["--", "/bin/true"])
            .output()
            .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("--probe-binary must be"),
        "{}",
        stderr(&out)
    );
    assert!(s.f.sessions().is_empty());
}

#[test]
fn the_probe_refuses_to_run_outside_a_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("findings.json");
    let out = Command::new(BIN)
        .args(["probe", "--plan", "{}", "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("only inside a claude-chroot session"),
        "{}",
        stderr(&out)
    );
    assert!(!out_file.exists());
}
