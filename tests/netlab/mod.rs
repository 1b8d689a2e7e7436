//! A small test internet in network namespaces, created per test and deleted on drop.
//!
//! ```text
//!   upstream ns                              host ns (stands in for the machine)
//!   lo: 198.51.100.10, 2001:db8:100::10  (allowed servers)
//!       203.0.113.20,  2001:db8:200::20  (blocked servers)
//!   up0 10.77.0.1/24, 2001:db8:77::1/64 <--veth--> eth0 10.77.0.2/24, 2001:db8:77::2/64
//!   dnsmasq on 10.77.0.1:53 (query log)               default routes via upstream
//!   TCP/HTTP on 443 and 8443, UDP echo on 443 and 5353, on every server address
//! ```
//!
//! Nothing here touches the machine's own interfaces, routes, resolv.conf or ruleset: every
//! interface is created directly inside a test namespace.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub const ALLOWED4: &str = "198.51.100.10";
pub const ALLOWED6: &str = "2001:db8:100::10";
pub const BLOCKED4: &str = "203.0.113.20";
pub const BLOCKED6: &str = "2001:db8:200::20";
pub const UPSTREAM4: &str = "10.77.0.1";
pub const UPSTREAM6: &str = "2001:db8:77::1";
pub const HOST4: &str = "10.77.0.2";
/// TCP ports served on every server address; 443 is the allowed one in the tests.
pub const TCP_PORTS: [u16; 2] = [443, 8443];
/// UDP echo ports on every server address.
pub const UDP_PORTS: [u16; 2] = [443, 5353];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The servers of the upstream namespace, as a python program: HTTP on TCP, echo on UDP.
/// Prints `ready` once every socket is bound.
const SERVERS_PY: &str = r#"
import http.server, socket, socketserver, sys, threading
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("ok %s %d\n" % self.server.server_address[:2]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
def tcp(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    cls = type("S", (socketserver.ThreadingMixIn, http.server.HTTPServer),
               {"address_family": family, "daemon_threads": True})
    server = cls((addr, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
def udp(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((addr, port))
    def loop():
        while True:
            data, peer = s.recvfrom(2048)
            s.sendto(data, peer)
    threading.Thread(target=loop, daemon=True).start()
for spec in sys.argv[1:]:
    kind, port, addr = spec.split(",")
    (tcp if kind == "tcp" else udp)(addr, int(port))
print("ready", flush=True)
sys.stdin.read()
"#;

/// Run `ip` with `args`; panic with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `program args` inside namespace `ns` and return its output.
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip netns exec")
}

/// Run `f` on a new thread whose network namespace is `ns`; processes it spawns are in it too.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        // SAFETY: setns on a descriptor we own; it switches only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}

pub struct Netlab {
    pub upstream: String,
    pub host: String,
    /// Namespaces created with [`Netlab::add_namespace`], deleted on drop too.
    extra: Vec<String>,
    pub dir: tempfile::TempDir,
    servers: Option<Child>,
    dnsmasq_pid: Option<i32>,
}

impl Netlab {
    /// Build the lab with `dns_records` as extra dnsmasq options (`--host-record=...`).
    pub fn new(tag: &str, dns_options: &[String]) -> Netlab {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("ccn-{tag}-{}-{n}", std::process::id());
        let mut lab = Netlab {
            upstream: format!("{base}-up"),
            host: format!("{base}-host"),
            extra: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            servers: None,
            dnsmasq_pid: None,
        };
        // Registered before creation, so a failure half-way still deletes what exists.
        ip(&["netns", "add", &lab.upstream]);
        ip(&["netns", "add", &lab.host]);
        let (up, host) = (lab.upstream.clone(), lab.host.clone());
        ip(&[
            "link", "add", "up0", "netns", &up, "type", "veth", "peer", "name", "eth0", "netns",
            &host,
        ]);
        for (ns, dev, v4, v6) in [
            (&up, "up0", "10.77.0.1/24", "2001:db8:77::1/64"),
            (&host, "eth0", "10.77.0.2/24", "2001:db8:77::2/64"),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", v4, "dev", dev]);
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        for a in [ALLOWED4, BLOCKED4] {
            ip(&["-n", &up, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        for a in [ALLOWED6, BLOCKED6] {
            ip(&["-n", &up, "addr", "add", &format!("{a}/128"), "dev", "lo"]);
        }
        ip(&["-n", &host, "route", "add", "default", "via", UPSTREAM4]);
        ip(&[
            "-n", &host, "-6", "route", "add", "default", "via", UPSTREAM6,
        ]);
        lab.start_servers();
        lab.start_dnsmasq(dns_options);
        lab
    }

    fn start_servers(&mut self) {
        let script = self.dir.path().join("servers.py");
        std::fs::write(&script, SERVERS_PY).unwrap();
        let mut specs = Vec::new();
        for addr in [ALLOWED4, ALLOWED6, BLOCKED4, BLOCKED6] {
            for p in TCP_PORTS {
                specs.push(format!("tcp,{p},{addr}"));
            }
            for p in UDP_PORTS {
                specs.push(format!("udp,{p},{addr}"));
            }
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.upstream, "python3"])
            .arg(&script)
            .args(&specs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start servers");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.servers = Some(child);
        assert_eq!(line.trim(), "ready", "test servers did not start");
    }

    fn start_dnsmasq(&mut self, options: &[String]) {
        let pid_file = self.dir.path().join("dnsmasq.pid");
        let status = Command::new("ip")
            .args(["netns", "exec", &self.upstream, "dnsmasq"])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--listen-address=10.77.0.1",
                "--listen-address=2001:db8:77::1",
                "--log-queries",
            ])
            .arg(format!("--log-facility={}", self.dns_log().display()))
            .arg(format!("--pid-file={}", pid_file.display()))
            .args(options)
            .status()
            .expect("start dnsmasq");
        // dnsmasq forks into the background once its sockets are bound.
        assert!(status.success(), "dnsmasq failed to start");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        self.dnsmasq_pid = Some(pid);
    }

    /// dnsmasq's query log.
    pub fn dns_log(&self) -> PathBuf {
        self.dir.path().join("dns.log")
    }

    /// The queries dnsmasq has logged so far.
    pub fn dns_queries(&self) -> Vec<String> {
        std::fs::read_to_string(self.dns_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("query["))
            .map(String::from)
            .collect()
    }

    /// Create another namespace (deleted on drop) with only `lo` up.
    pub fn add_namespace(&mut self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.host.trim_end_matches("-host"));
        ip(&["netns", "add", &name]);
        self.extra.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Connect namespace `ns` straight to upstream with a second veth, as the host is.
    pub fn wire_to_upstream(&self, ns: &str) {
        ip(&[
            "link",
            "add",
            "up1",
            "netns",
            &self.upstream,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ]);
        ip(&[
            "-n",
            &self.upstream,
            "addr",
            "add",
            "10.78.0.1/24",
            "dev",
            "up1",
        ]);
        ip(&[
            "-n",
            &self.upstream,
            "addr",
            "add",
            "2001:db8:78::1/64",
            "dev",
            "up1",
            "nodad",
        ]);
        ip(&["-n", &self.upstream, "link", "set", "up1", "up"]);
        ip(&["-n", ns, "addr", "add", "10.78.0.2/24", "dev", "eth0"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            "2001:db8:78::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "route", "add", "default", "via", "10.78.0.1"]);
        ip(&[
            "-n",
            ns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:78::1",
        ]);
    }
}

impl Drop for Netlab {
    fn drop(&mut self) {
        if let Some(mut child) = self.servers.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.dnsmasq_pid.take() {
            // SAFETY: plain kill(2) of the dnsmasq this lab started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for ns in self.extra.iter().chain([&self.host, &self.upstream]) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// What a client attempt gave, and how long it took.
#[derive(Debug)]
pub struct Attempt {
    pub ok: bool,
    pub detail: String,
    pub seconds: f64,
}

/// The client program used by the tests: `tcp|udp|icmp ADDRESS PORT`, prints
/// `ok ...` or `fail ...` and the elapsed seconds; every attempt gives up after 3 s.
pub const CLIENT_PY: &str = r#"
import socket, struct, sys, time
kind, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
v6 = ":" in addr
family = socket.AF_INET6 if v6 else socket.AF_INET
start = time.monotonic()
try:
    if kind == "tcp":
        s = socket.create_connection((addr, port), timeout=3)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = s.recv(200)
        result = "ok " + data.split(b"\r\n")[0].decode()
    elif kind == "udp":
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.connect((addr, port))
        s.send(b"ping")
        # An ICMP error to a connected UDP socket surfaces on the next receive.
        result = "ok " + s.recv(100).decode()
    else:
        proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
        s = socket.socket(family, socket.SOCK_RAW, proto)
        s.settimeout(3)
        kind_echo, kind_reply = (128, 129) if v6 else (8, 0)
        body = struct.pack("!BBHHH", kind_echo, 0, 0, 0x4242, 1) + b"claude"
        if not v6:
            c = sum(struct.unpack("!%dH" % (len(body) // 2), body))
            c = (c >> 16) + (c & 0xffff); c += c >> 16
            body = body[:2] + struct.pack("!H", ~c & 0xffff) + body[4:]
        s.sendto(body, (addr, 0))
        while True:
            data, _ = s.recvfrom(2048)
            icmp = data if v6 else data[(data[0] & 15) * 4:]
            if icmp[0] == kind_reply:
                result = "ok echo reply"
                break
            if icmp[0] in ((1,) if v6 else (3,)):
                result = "fail unreachable code %d" % icmp[1]
                break
except Exception as e:
    result = "fail " + repr(e)
print(result, "%.3f" % (time.monotonic() - start))
"#;

/// Try `kind` (`tcp`, `udp`, `icmp`) to `addr`:`port` from namespace `ns`.
pub fn attempt(ns: &str, kind: &str, addr: &str, port: u16) -> Attempt {
    let out = exec_in(
        ns,
        "python3",
        &["-c", CLIENT_PY, kind, addr, &port.to_string()],
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (detail, secs) = text.rsplit_once(' ').unwrap_or((&text, "99"));
    Attempt {
        ok: detail.starts_with("ok"),
        detail: format!("{detail} {}", String::from_utf8_lossy(&out.stderr).trim()),
        seconds: secs.parse().unwrap_or(99.0),
    }
}

/// Assert that `kind` to `addr`:`port` from `ns` succeeds.
#[track_caller]
pub fn assert_reaches(ns: &str, kind: &str, addr: &str, port: u16) {
    let a = attempt(ns, kind, addr, port);
    assert!(a.ok, "{kind} {addr} {port} from {ns} failed: {}", a.detail);
}

/// Assert that `kind` to `addr`:`port` from `ns` fails, and within a second.
#[track_caller]
pub fn assert_refused_fast(ns: &str, kind: &str, addr: &str, port: u16) {
    let a = attempt(ns, kind, addr, port);
    assert!(
        !a.ok,
        "{kind} {addr} {port} from {ns} unexpectedly worked: {}",
        a.detail
    );
    assert!(
        a.seconds < 1.0,
        "{kind} {addr} {port} from {ns} took {}s to fail: {}",
        a.seconds,
        a.detail
    );
}

/// Parse `s` as an address (test helper).
pub fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Path of namespace `ns`.
pub fn ns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// Start a TCP server (HTTP) in namespace `ns` on `addr`:`port`; killed when the child drops.
pub struct Server(Child);

impl Server {
    pub fn start(dir: &Path, ns: &str, addr: &str, port: u16) -> Server {
        let script = dir.join("servers.py");
        std::fs::write(&script, SERVERS_PY).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(&script)
            .arg(format!("tcp,{port},{addr}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "server {addr}:{port} in {ns} did not start"
        );
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A configuration for the network code: state in `state_dir`, the host's nft and pasta.
pub fn config(
    state_dir: &Path,
    domains: &[&str],
    nameservers: &[&str],
    tcp_ports: &[u16],
    udp_ports: &[u16],
) -> claude_chroot::config::Config {
    let json = serde_json::json!({
        "version": 1,
        "stateDir": state_dir,
        "skeleton": "/nonexistent-skeleton",
        "user": { "name": "claude", "uid": null, "gid": null, "home": "/home/claude" },
        "mounts": [],
        "environment": { "pass": [], "set": {} },
        "tools": { "shell": "/bin/sh", "nft": "/usr/sbin/nft", "pasta": "/usr/bin/pasta" },
        "managedSettings": { "default": "/nonexistent.json", "custom": ".config/x.json" },
        "network": {
            "mode": "allowlist",
            "allowlistFile": null,
            "domains": domains,
            "tcpPorts": tcp_ports,
            "udpPorts": udp_ports,
            "nameservers": nameservers,
            "resolveTimeoutMs": 1000
        },
        "workspace": { "protectedPaths": [], "quarantine": false },
        "limits": { "pids": null }
    });
    claude_chroot::config::Config::parse(&json.to_string()).expect("test config")
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
pub fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}
