//! The sandbox's firewall and pasta against the real kernel, with real clients and servers in
//! test network namespaces (root required; nothing of the machine's own network is touched).

mod netlab;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use claude_chroot::allowlist::Allowlist;
use claude_chroot::config::NetworkMode;
use claude_chroot::firewall::{self, Blocked};
use claude_chroot::{network, pasta};
use netlab::*;

const NFT: &str = "/usr/sbin/nft";
const PASTA: &str = "/usr/bin/pasta";

fn test_allowlist() -> Allowlist {
    Allowlist::parse(&format!(
        "{ALLOWED4} allowed.test\n{ALLOWED6} allowed.test\n"
    ))
    .unwrap()
}

fn load_ruleset(ns: &str) {
    let file = File::open(ns_path(ns)).unwrap();
    let ruleset = firewall::ruleset(&test_allowlist(), &[443], &[443]);
    firewall::apply(Path::new(NFT), file.as_fd(), &ruleset).unwrap();
}

fn counted(blocked: &[Blocked], address: &str, protocol: &str, port: Option<u16>) -> bool {
    blocked.iter().any(|b| {
        b.address == addr(address) && b.protocol == protocol && b.port == port && b.packets > 0
    })
}

#[test]
fn ruleset_matches_snapshot() {
    let ruleset = firewall::ruleset(&test_allowlist(), &[443, 80, 443], &[]);
    insta::assert_json_snapshot!(ruleset);
}

#[test]
fn allowed_destinations_connect_and_everything_else_is_rejected_fast_and_counted() {
    let mut lab = Netlab::new("fw", &[]);
    let sbx = lab.add_namespace("sbx");
    lab.wire_to_upstream(&sbx);

    // Without the filter the blocked servers answer: the assertions below can fail.
    assert_reaches(&sbx, "tcp", BLOCKED4, 443);
    assert_reaches(&sbx, "tcp", BLOCKED6, 443);
    assert_reaches(&sbx, "icmp", BLOCKED4, 0);

    load_ruleset(&sbx);

    for a in [ALLOWED4, ALLOWED6] {
        assert_reaches(&sbx, "tcp", a, 443);
        assert_reaches(&sbx, "udp", a, 443);
        // Same address, another port.
        assert_refused_fast(&sbx, "tcp", a, 8443);
        assert_refused_fast(&sbx, "udp", a, 5353);
        // ICMP is not on the allowlist, even to an allowed address.
        assert_refused_fast(&sbx, "icmp", a, 0);
    }
    for a in [BLOCKED4, BLOCKED6] {
        assert_refused_fast(&sbx, "tcp", a, 443);
        assert_refused_fast(&sbx, "udp", a, 443);
        assert_refused_fast(&sbx, "icmp", a, 0);
    }
    // DNS to the upstream resolver is blocked like anything else.
    assert_refused_fast(&sbx, "udp", UPSTREAM4, 53);

    let file = File::open(ns_path(&sbx)).unwrap();
    let blocked = firewall::blocked(Path::new(NFT), file.as_fd()).unwrap();
    for (a, proto, port) in [
        (BLOCKED4, "tcp", Some(443)),
        (BLOCKED6, "tcp", Some(443)),
        (BLOCKED4, "udp", Some(443)),
        (BLOCKED6, "udp", Some(443)),
        (ALLOWED4, "tcp", Some(8443)),
        (ALLOWED6, "udp", Some(5353)),
        (UPSTREAM4, "udp", Some(53)),
        (BLOCKED4, "icmp", None),
        (BLOCKED6, "ipv6-icmp", None),
    ] {
        assert!(
            counted(&blocked, a, proto, port),
            "{a} {proto} {port:?} not in {blocked:#?}"
        );
    }
    assert!(
        !blocked
            .iter()
            .any(|b| b.address == addr(ALLOWED4) && b.port == Some(443)),
        "allowed traffic was counted as blocked: {blocked:#?}"
    );
}

#[test]
fn inbound_connections_from_outside_are_dropped() {
    let mut lab = Netlab::new("in", &[]);
    let sbx = lab.add_namespace("sbx");
    lab.wire_to_upstream(&sbx);
    let _server = Server::start(lab.dir.path(), &sbx, "10.78.0.2", 8080);
    assert_reaches(&lab.upstream, "tcp", "10.78.0.2", 8080);
    load_ruleset(&sbx);
    let a = attempt(&lab.upstream, "tcp", "10.78.0.2", 8080);
    assert!(!a.ok, "inbound connection got through: {}", a.detail);
}

#[test]
fn blocked_packets_reach_the_kernel_log_only_when_netns_logging_is_enabled() {
    let mut lab = Netlab::new("log", &[]);
    let sbx = lab.add_namespace("sbx");
    lab.wire_to_upstream(&sbx);
    load_ruleset(&sbx);
    assert_refused_fast(&sbx, "tcp", BLOCKED4, 443);
    let dmesg = Command::new("dmesg").output().expect("run dmesg");
    let logged = String::from_utf8_lossy(&dmesg.stdout).contains(firewall::LOG_PREFIX.trim());
    let all_netns = std::fs::read_to_string("/proc/sys/net/netfilter/nf_log_all_netns")
        .unwrap_or_default()
        .trim()
        == "1";
    // The kernel discards `log` in a non-initial namespace unless nf_log_all_netns is 1.
    assert_eq!(
        logged, all_netns,
        "nf_log_all_netns={all_netns}, prefix in dmesg: {logged}"
    );
}

#[test]
fn pasta_connects_a_namespace_and_leaves_no_process_after_stop() {
    let mut lab = Netlab::new("pasta", &[]);
    let sbx = lab.add_namespace("sbx");
    assert!(
        !attempt(&sbx, "tcp", ALLOWED4, 443).ok,
        "connected before pasta"
    );

    // pasta dies with the thread that started it: start, use and stop it on one thread.
    let path = ns_path(&sbx);
    let ns = sbx.clone();
    let pid = in_netns(&lab.host, move || {
        let handle = pasta::start(Path::new(PASTA), &path, false).expect("start pasta");
        let pid = handle.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        assert_reaches(&ns, "tcp", ALLOWED4, 443);
        assert_reaches(&ns, "tcp", ALLOWED6, 443);
        assert_reaches(&ns, "udp", ALLOWED4, 443);
        let stopping = std::time::Instant::now();
        handle.stop().unwrap();
        // SIGTERM ends it; the grace period before SIGKILL is not needed.
        assert!(
            stopping.elapsed() < std::time::Duration::from_secs(1),
            "pasta took {:?} to stop",
            stopping.elapsed()
        );
        pid
    });
    assert!(exited(pid), "pasta {pid} still runs");
    assert!(
        !attempt(&sbx, "tcp", ALLOWED4, 443).ok,
        "connected after pasta stopped"
    );
}

#[test]
fn pasta_dies_with_the_thread_that_started_it() {
    let mut lab = Netlab::new("pdeath", &[]);
    let sbx = lab.add_namespace("sbx");
    let path = ns_path(&sbx);
    let pid = in_netns(&lab.host, move || {
        let handle = pasta::start(Path::new(PASTA), &path, false).expect("start pasta");
        let pid = handle.pid();
        // Leak it as a SIGKILLed activator would: no stop, no drop.
        std::mem::forget(handle);
        pid
    });
    // The starting thread has ended: the kernel sends pasta SIGKILL (PR_SET_PDEATHSIG).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !exited(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        exited(pid),
        "pasta {pid} outlived the thread that started it"
    );
    assert!(
        !attempt(&sbx, "tcp", ALLOWED4, 443).ok,
        "connected after pasta died"
    );
}

#[test]
fn pasta_start_fails_with_its_own_message_when_it_cannot_attach() {
    let lab = Netlab::new("pfail", &[]);
    // A file that is not a network namespace.
    let not_ns = lab.dir.path().join("not-a-namespace");
    std::fs::write(&not_ns, "").unwrap();
    let started = std::time::Instant::now();
    let err = in_netns(&lab.host, move || {
        pasta::start(Path::new(PASTA), &not_ns, false).map(|p| p.pid())
    })
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("failed to attach"), "{msg}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "failure took {:?}",
        started.elapsed()
    );
}

#[test]
fn pasta_does_not_expose_the_hosts_loopback_or_map_the_gateway() {
    let mut lab = Netlab::new("lo", &[]);
    let sbx = lab.add_namespace("sbx");
    // A service on the host's loopback, the kind the sandbox must never reach.
    let _v4 = Server::start(lab.dir.path(), &lab.host, "127.0.0.1", 9999);
    let _v6 = Server::start(lab.dir.path(), &lab.host, "::1", 9998);
    assert_reaches(&lab.host, "tcp", "127.0.0.1", 9999);

    let path = ns_path(&sbx);
    in_netns(&lab.host, move || {
        let handle = pasta::start(Path::new(PASTA), &path, false).unwrap();
        // Connectivity works, so failures below are the options' doing.
        assert_reaches(&sbx, "tcp", ALLOWED4, 443);
        for (a, port) in [
            ("127.0.0.1", 9999),
            ("::1", 9998),
            (UPSTREAM4, 9999),
            (UPSTREAM6, 9998),
        ] {
            let r = attempt(&sbx, "tcp", a, port);
            assert!(
                !r.ok,
                "sandbox reached the host's loopback via {a}:{port}: {}",
                r.detail
            );
        }
        handle.stop().unwrap();
    });
}

/// A process standing in for the sandbox child: it lives in namespace `ns`.
struct Child(std::process::Child);

impl Child {
    fn in_namespace(ns: &str) -> Child {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Child(child)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn network_session_filters_reports_blocked_destinations_and_cleans_up() {
    let mut lab = Netlab::new("sess", &[]);
    let sbx = lab.add_namespace("sbx");
    let state = lab.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let list = state.join("allowed-ips.conf");
    std::fs::write(&list, test_allowlist().render("test")).unwrap();
    std::fs::set_permissions(&list, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = netlab::config(&state, &["allowed.test"], &[], &[443], &[]);

    // The child must be in its namespace before setup opens /proc/PID/ns/net.
    let mut child = Child::in_namespace(&sbx);
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    let sbx_inode = std::fs::metadata(ns_path(&sbx))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    while std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap()
        != sbx_inode
    {
        std::thread::yield_now();
    }

    let ns = sbx.clone();
    let (blocked, pasta_pid) = in_netns(&lab.host, move || {
        let session =
            network::setup(&config, NetworkMode::Allowlist, pid, false).expect("network setup");
        let pasta_pid = session.pasta_pid().expect("pasta runs");

        assert_reaches(&ns, "tcp", ALLOWED4, 443);
        assert_reaches(&ns, "tcp", ALLOWED6, 443);
        assert_refused_fast(&ns, "tcp", ALLOWED4, 8443);
        assert_refused_fast(&ns, "tcp", BLOCKED4, 443);
        assert_refused_fast(&ns, "udp", BLOCKED6, 443);

        // The sandbox's last process exits before the report is read.
        let _ = child.0.kill();
        let _ = child.0.wait();
        (session.finish(&mut Vec::new()).unwrap(), pasta_pid)
    });
    assert!(
        counted(&blocked, BLOCKED4, "tcp", Some(443)),
        "{blocked:#?}"
    );
    assert!(
        counted(&blocked, BLOCKED6, "udp", Some(443)),
        "{blocked:#?}"
    );
    assert!(
        counted(&blocked, ALLOWED4, "tcp", Some(8443)),
        "{blocked:#?}"
    );
    assert!(exited(pasta_pid), "pasta left behind");

    let report = network::report(&blocked);
    assert!(report.contains(&format!("{BLOCKED4}:443 tcp")), "{report}");
}

#[test]
fn missing_allowlist_stops_setup_and_says_to_run_sync_ips() {
    let mut lab = Netlab::new("miss", &[]);
    let sbx = lab.add_namespace("sbx");
    let state = lab.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = netlab::config(&state, &["allowed.test"], &[], &[443], &[]);
    let child = Child::in_namespace(&sbx);
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    let err = network::setup(&config, NetworkMode::Allowlist, pid, false).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("sync-ips") && msg.contains("allowed-ips.conf"),
        "{msg}"
    );
}

mod common;

/// `enter` as a test user in the lab's host namespace: `script` runs inside the sandbox.
fn enter(
    lab: &Netlab,
    fixture: &common::Fixture,
    flags: &[&str],
    script: &str,
) -> std::process::Output {
    let user = common::ALICE.ensure();
    let ws = fixture.workspace("ws", user);
    let mut cmd = fixture.command(Some(user));
    cmd.arg("enter")
        .arg("--config")
        .arg(&fixture.config)
        .args(flags)
        .arg(&ws)
        .args(["--", "/bin/sh", "-c", script])
        .stdin(Stdio::null());
    in_netns(&lab.host, move || cmd.output().unwrap())
}

fn enter_fixture() -> common::Fixture {
    let f = common::Fixture::with(common::Options {
        network: Some(
            "{ mode = \"allowlist\"; domains = [ \"allowed.test\" ]; tcpPorts = [ 443 ]; }".into(),
        ),
        ..Default::default()
    });
    let list = f.state.join("allowed-ips.conf");
    std::fs::create_dir_all(&f.state).unwrap();
    std::fs::write(&list, test_allowlist().render("test")).unwrap();
    std::fs::set_permissions(&list, std::fs::Permissions::from_mode(0o644)).unwrap();
    f
}

#[test]
fn agent_reaches_only_the_allowlist_and_cannot_touch_the_ruleset() {
    let lab = Netlab::new("enter", &[]);
    let f = enter_fixture();
    let script = format!(
        "getent ahostsv4 allowed.test | head -1; getent ahostsv6 allowed.test | head -1; \
         curl -sS -m 3 -o /dev/null -w 'allowed4=%{{http_code}}\\n' http://allowed.test:443/ -4; \
         sleep 0; curl -sS -m 3 -o /dev/null -w 'allowed6=%{{http_code}}\\n' http://allowed.test:443/ -6; \
         curl -sS -m 3 -o /dev/null http://{BLOCKED4}:443/ && echo blocked-reached; \
         timeout 2 getent hosts other.test || echo other-unresolved; \
         /usr/sbin/nft list ruleset >/dev/null 2>&1 && echo ruleset-listed; \
         /usr/sbin/nft flush ruleset >/dev/null 2>&1 && echo ruleset-flushed; \
         echo done"
    );
    let out = enter(&lab, &f, &[], &script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("done"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(ALLOWED4) && stdout.contains(ALLOWED6),
        "{stdout}"
    );
    assert!(
        stdout.contains("allowed4=200"),
        "{stdout}\nSTDERR:\n{stderr}"
    );
    assert!(!stdout.contains("blocked-reached"), "{stdout}");
    assert!(stdout.contains("other-unresolved"), "{stdout}");
    assert!(
        !stdout.contains("ruleset-listed") && !stdout.contains("ruleset-flushed"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("{BLOCKED4}:443 tcp")),
        "no report in:\n{stderr}"
    );
    assert!(
        lab.dns_queries().is_empty(),
        "the sandbox queried DNS: {:?}",
        lab.dns_queries()
    );
}

/// The IPv6 path itself (pasta, neighbour discovery, the firewall) works from the first
/// packet: the literal address connects with no retry, right after the agent starts.
#[test]
fn agent_reaches_the_allowed_ipv6_address_at_once() {
    let lab = Netlab::new("enter6l", &[]);
    let f = enter_fixture();
    let out = enter(
        &lab,
        &f,
        &[],
        &format!(
            "curl -sS -m 3 -o /dev/null -w 'allowed6=%{{http_code}}\\n' 'http://[{ALLOWED6}]:443/'; \
             curl -sS -m 3 -o /dev/null 'http://[{BLOCKED6}]:443/' && echo blocked6-reached"
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("allowed6=200"), "{stdout}\n{stderr}");
    assert!(!stdout.contains("blocked6-reached"), "{stdout}");
    assert!(
        stderr.contains(&format!("[{BLOCKED6}]:443 tcp")),
        "{stderr}"
    );
}

/// Both of the allowed name's addresses must come back from an unspecified-family lookup
/// (what curl, Node and most clients ask), or clients never try IPv6 at all.
#[test]
fn agent_reaches_the_allowed_address_over_ipv6() {
    let lab = Netlab::new("enter6", &[]);
    let f = enter_fixture();
    let out = enter(
        &lab,
        &f,
        &[],
        "getent ahosts allowed.test | grep STREAM; \
         curl -sS -m 3 -o /dev/null -w 'allowed6=%{http_code}\\n' http://allowed.test:443/ -6",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(ALLOWED4) && stdout.contains(ALLOWED6),
        "an unspecified-family lookup of allowed.test does not give both addresses:\n\
         {stdout}\n{stderr}"
    );
    assert!(stdout.contains("allowed6=200"), "{stdout}\n{stderr}");
}
