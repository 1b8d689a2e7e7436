//! Network probes: addresses, ports and protocols, host loopback, abstract sockets, DNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;

use super::{
    DOC_DNS4, DOC4, DOC6, Destination, Finding, NET_TIMEOUT, OUTSIDE_NAME, Outcome, Plan,
    errno_name, io_errno,
};
use crate::config::NetworkMode;
/// The result of one network attempt.
enum Net {
    /// Refused inside the sandbox before anything was sent (no route, no socket).
    Local(String),
    /// Got an answer or a connection: something outside was reached.
    Through(String),
    /// Refused or unanswered, by the filter or by something outside.
    Unknown(String),
}

fn classify(e: &std::io::Error) -> Net {
    let name = io_errno(e);
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENETUNREACH | Errno::EACCES | Errno::EPERM | Errno::EADDRNOTAVAIL) => {
            Net::Local(name)
        }
        _ => Net::Unknown(name),
    }
}

fn tcp_attempt(addr: SocketAddr) -> Net {
    match TcpStream::connect_timeout(&addr, NET_TIMEOUT) {
        Ok(_) => Net::Through("connected".into()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Net::Unknown("no answer".into()),
        Err(e) => classify(&e),
    }
}

fn udp_attempt(addr: SocketAddr, payload: &[u8]) -> Net {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    if let Err(e) = sock.connect(addr).and_then(|_| sock.send(payload)) {
        return classify(&e);
    }
    let _ = sock.set_read_timeout(Some(NET_TIMEOUT));
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Ok(n) => Net::Through(format!("answered with {n} bytes")),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Net::Unknown("no answer".into())
        }
        Err(e) => Net::Unknown(io_errno(&e)),
    }
}

fn icmp_attempt(addr: IpAddr) -> Net {
    let (domain, proto, echo, reply) = match addr {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    // Unprivileged ping sockets first (ping_group_range), then raw ones (CAP_NET_RAW).
    let mut last = Errno::EPERM;
    let mut sock = None;
    for kind in [libc::SOCK_DGRAM, libc::SOCK_RAW] {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) };
        if fd >= 0 {
            // SAFETY: fd was just created and nothing else owns it.
            sock = Some((unsafe { OwnedFd::from_raw_fd(fd) }, kind));
            break;
        }
        last = Errno::last();
    }
    let Some((fd, kind)) = sock else {
        return Net::Local(format!("no ICMP socket ({})", errno_name(last)));
    };
    let mut packet = vec![echo, 0, 0, 0, 0x43, 0x43, 0, 1];
    packet.extend_from_slice(b"claude-chroot selftest");
    if addr.is_ipv4() {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    // A datagram socket of another protocol: std's UDP calls work on its descriptor.
    let sock = UdpSocket::from(fd);
    if let Err(e) = sock.send_to(&packet, SocketAddr::new(addr, 0)) {
        return classify(&e);
    }
    let _ = sock.set_read_timeout(Some(NET_TIMEOUT));
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while start.elapsed() < NET_TIMEOUT {
        match sock.recv(&mut buf) {
            Ok(n) => {
                // Raw IPv4 sockets deliver the IP header too.
                let icmp = if kind == libc::SOCK_RAW && addr.is_ipv4() && n > 0 {
                    &buf[((buf[0] & 15) as usize * 4).min(n)..n]
                } else {
                    &buf[..n]
                };
                if icmp.first() == Some(&reply) {
                    return Net::Through("echo reply".into());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Net::Unknown(io_errno(&e)),
        }
    }
    Net::Unknown("no echo reply".into())
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum >> 16) + (sum & 0xffff);
    }
    !(sum as u16)
}

/// A DNS query for `name`, type A, recursion desired.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x43, 0x43, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A finding for network attempts: held when every attempt was refused locally, broken
/// when one got through, unconfirmed (for the runner) when the filter must have counted it.
fn net_finding(mut f: Finding, attempts: Vec<(Destination, Net)>) -> Finding {
    let mut through = Vec::new();
    let mut notes = Vec::new();
    for (d, r) in attempts {
        let what = match d.port {
            Some(p) => format!("{} {}", d.protocol, SocketAddr::new(d.address, p)),
            None => format!("{} {}", d.protocol, d.address),
        };
        match r {
            Net::Local(e) => notes.push(format!("{what}: {e}")),
            Net::Through(how) => through.push(format!("{what}: {how}")),
            Net::Unknown(e) => {
                notes.push(format!("{what}: {e}"));
                f.unconfirmed.push(d);
            }
        }
    }
    if !through.is_empty() {
        f.unconfirmed.clear();
        return f.broken(through.join("; "));
    }
    let outcome = if f.unconfirmed.is_empty() {
        Outcome::Held
    } else {
        Outcome::Unconfirmed
    };
    f.outcome = outcome;
    f.detail = notes.join("; ");
    f
}

fn dest(address: IpAddr, protocol: &str, port: Option<u16>) -> Destination {
    Destination {
        address,
        protocol: protocol.into(),
        port,
    }
}

pub(super) fn network(plan: &Plan) -> Vec<Finding> {
    let mut out = Vec::new();
    let docs = [IpAddr::V4(DOC4), IpAddr::V6(DOC6)];

    let f = Finding::new(
        "net-tcp",
        "reach a non-allowlisted address over TCP",
        format!("connect to {DOC4} and {DOC6} port {}", plan.tcp_port),
    );
    let attempts = docs
        .iter()
        .map(|&a| {
            let r = tcp_attempt(SocketAddr::new(a, plan.tcp_port));
            (dest(a, "tcp", Some(plan.tcp_port)), r)
        })
        .collect();
    out.push(net_finding(f, attempts));

    let f = Finding::new(
        "net-udp",
        "reach a non-allowlisted address over UDP",
        format!("send to {DOC4} and {DOC6} port {}", plan.udp_port),
    );
    let attempts = docs
        .iter()
        .map(|&a| {
            let r = udp_attempt(SocketAddr::new(a, plan.udp_port), b"claude-chroot selftest");
            (dest(a, "udp", Some(plan.udp_port)), r)
        })
        .collect();
    out.push(net_finding(f, attempts));

    let f = Finding::new(
        "net-icmp",
        "reach a non-allowlisted address over ICMP",
        format!("ping {DOC4} and {DOC6}"),
    );
    let attempts = docs
        .iter()
        .map(|&a| {
            let proto = if a.is_ipv4() { "icmp" } else { "ipv6-icmp" };
            (dest(a, proto, None), icmp_attempt(a))
        })
        .collect();
    out.push(net_finding(f, attempts));

    let f = Finding::new(
        "net-closed-port",
        "reach an allowed address on another port",
        format!(
            "connect to the allowlist's addresses on port {}",
            plan.closed_port
        ),
    );
    let allowed: Vec<IpAddr> = plan
        .allowed4
        .map(IpAddr::V4)
        .into_iter()
        .chain(plan.allowed6.map(IpAddr::V6))
        .collect();
    if allowed.is_empty() {
        out.push(f.skipped(match plan.mode {
            NetworkMode::Allowlist => "the allowlist has no address",
            _ => "no allowlist in this network mode: no address is allowed",
        }));
    } else {
        let attempts = allowed
            .iter()
            .map(|&a| {
                let r = tcp_attempt(SocketAddr::new(a, plan.closed_port));
                (dest(a, "tcp", Some(plan.closed_port)), r)
            })
            .collect();
        out.push(net_finding(f, attempts));
    }

    out.push(host_loopback(plan));
    out.push(abstract_socket(plan));
    out.push(resolve());

    let mut servers = plan.nameservers.clone();
    servers.push(IpAddr::V4(DOC_DNS4));
    let f = Finding::new(
        "dns",
        "send a DNS query to an outside server",
        format!(
            "query {OUTSIDE_NAME} over UDP and TCP port 53 at {}",
            servers
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let query = dns_query(OUTSIDE_NAME);
    let mut attempts = Vec::new();
    for &s in &servers {
        let addr = SocketAddr::new(s, 53);
        let udp = udp_attempt(addr, &query);
        let tcp = tcp_attempt(addr);
        // The sandbox's own loopback is not outside: nothing there is a DNS server.
        let local = |r: Net| match r {
            Net::Unknown(e) if s.is_loopback() => Net::Local(format!("{e} (own loopback)")),
            r => r,
        };
        attempts.push((dest(s, "udp", Some(53)), local(udp)));
        attempts.push((dest(s, "tcp", Some(53)), local(tcp)));
    }
    out.push(net_finding(f, attempts));
    out
}

fn host_loopback(plan: &Plan) -> Finding {
    let f = Finding::new(
        "host-loopback",
        "reach a service on the host's loopback",
        "connect to the runner's listeners on 127.0.0.1 and ::1",
    );
    let mut attempts = Vec::new();
    for (a, port) in [
        (IpAddr::V4(Ipv4Addr::LOCALHOST), plan.loopback4),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), plan.loopback6),
    ] {
        let Some(port) = port else { continue };
        // Nothing listens on the sandbox's own loopback, so any refusal is local.
        let r = match tcp_attempt(SocketAddr::new(a, port)) {
            Net::Unknown(e) => Net::Local(e),
            r => r,
        };
        attempts.push((dest(a, "tcp", Some(port)), r));
    }
    net_finding(f, attempts)
}

fn abstract_socket(plan: &Plan) -> Finding {
    use std::os::linux::net::SocketAddrExt;
    let f = Finding::new(
        "abstract-socket",
        "reach an abstract unix socket of the host",
        format!("connect to @{}", plan.abstract_socket),
    );
    let attempt =
        match std::os::unix::net::SocketAddr::from_abstract_name(plan.abstract_socket.as_bytes())
            .and_then(|a| std::os::unix::net::UnixStream::connect_addr(&a))
        {
            Ok(_) => Err("connected".to_string()),
            Err(e) => Ok(io_errno(&e)),
        };
    f.judge(&[("connect".into(), attempt)])
}

fn resolve() -> Finding {
    let f = Finding::new(
        "resolve",
        "resolve a name that is not allowlisted",
        format!("getaddrinfo({OUTSIDE_NAME})"),
    );
    use std::net::ToSocketAddrs;
    match (OUTSIDE_NAME, 443).to_socket_addrs() {
        Ok(addrs) => {
            let list: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            if list.is_empty() {
                f.held("no address")
            } else {
                f.broken(format!("resolved to {}", list.join(" ")))
            }
        }
        Err(e) => f.held(format!("does not resolve ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Finding;

    #[test]
    fn icmp_checksum_of_an_echo_request_verifies() {
        let mut p = vec![8u8, 0, 0, 0, 0x43, 0x43, 0, 1, b'x'];
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn dns_query_encodes_labels() {
        let q = dns_query("example.com");
        assert_eq!(&q[12..], b"\x07example\x03com\x00\x00\x01\x00\x01");
    }

    #[test]
    fn a_network_attempt_that_got_through_is_broken_and_a_remote_refusal_unconfirmed() {
        let a: IpAddr = DOC4.into();
        let f = Finding::new("x", "t", "w");
        let through = net_finding(
            f.clone(),
            vec![(dest(a, "tcp", Some(443)), Net::Through("connected".into()))],
        );
        assert_eq!(through.outcome, Outcome::Broken);
        let unknown = net_finding(
            f.clone(),
            vec![(
                dest(a, "tcp", Some(443)),
                Net::Unknown("ECONNREFUSED".into()),
            )],
        );
        assert_eq!(unknown.outcome, Outcome::Unconfirmed);
        assert_eq!(unknown.unconfirmed, vec![dest(a, "tcp", Some(443))]);
        let local = net_finding(
            f,
            vec![(dest(a, "tcp", Some(443)), Net::Local("ENETUNREACH".into()))],
        );
        assert_eq!(local.outcome, Outcome::Held);
    }
}
