//! The nftables table inside the sandbox's own network namespace.
//!
//! The table lives in the sandbox's namespace, not the host's: the host ruleset is never
//! touched, a host firewall reload cannot remove it, and the agent (no `CAP_NET_ADMIN` in that
//! namespace's owning user namespace) can neither read nor change it.
//!
//! Output: loopback and established/related traffic pass; new traffic passes only to the
//! allowlisted addresses on the allowed ports. Everything else is counted per destination in
//! dynamic sets (meters), logged with a rate-limited `claude-blocked: ` prefix and rejected (TCP
//! with a reset, everything else with an administratively-prohibited ICMP error), so clients
//! fail at once instead of timing out.
//!
//! Input: only loopback, replies and neighbour discovery. pasta forwards no ports into the
//! sandbox, so nothing from outside should open a connection; dropping it anyway keeps a
//! misconfigured pasta (or a future port-forwarding default) from exposing a server the agent
//! starts. Dropped rather than rejected: an outside prober learns nothing.

use std::borrow::Cow;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, SetItem};
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Limit, Log, Match, Meter, Operator, Reject, RejectType, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};
use serde::Serialize;

/// Name of the table in the sandbox's namespace.
pub const TABLE: &str = "claude_chroot";

/// Prefix of kernel log lines for blocked packets.
pub const LOG_PREFIX: &str = "claude-blocked: ";

/// Meters (dynamic sets with a counter per element) that record blocked destinations.
const METER_PORT4: &str = "blocked4";
const METER_PORT6: &str = "blocked6";
const METER_PROTO4: &str = "blocked4_proto";
const METER_PROTO6: &str = "blocked6_proto";

/// One blocked destination and how many packets went to it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Blocked {
    pub address: IpAddr,
    /// `tcp`, `udp`, `icmp`, `ipv6-icmp`, ... or the protocol number.
    pub protocol: String,
    /// Destination port for protocols that have one (TCP, UDP, SCTP, ...).
    pub port: Option<u16>,
    pub packets: u64,
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, Operator::EQ, right)
}

fn string(s: &'static str) -> Expression<'static> {
    Expression::String(s.into())
}

fn anonymous_set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

fn ct_state(states: &[&'static str]) -> Statement<'static> {
    matches(
        Expression::Named(NamedExpression::CT(nftables::expr::CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        Operator::IN,
        Expression::List(states.iter().map(|s| string(s)).collect()),
    )
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: None,
    })))
}

fn base_chain(name: &'static str, hook: NfHook) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        newname: None,
        handle: None,
        _type: Some(NfChainType::Filter),
        hook: Some(hook),
        prio: Some(0),
        dev: None,
        policy: Some(NfChainPolicy::Drop),
    })))
}

fn address_set(name: &'static str, kind: SetType, addresses: Vec<String>) -> NfObject<'static> {
    let elem = (!addresses.is_empty()).then(|| {
        Cow::Owned(
            addresses
                .into_iter()
                .map(|a| Expression::String(a.into()))
                .collect(),
        )
    });
    NfObject::CmdObject(NfCmd::Add(NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        handle: None,
        set_type: SetTypeValue::Single(kind),
        policy: None,
        flags: None,
        elem,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))))
}

/// Neighbour discovery (and the MLD reports the kernel sends when an interface comes up) must
/// pass or IPv6 never reaches the gateway. The hop limits pin them to the link: a router
/// decrements them, so a packet with these values cannot have crossed one.
/// What passes first in `chain`: loopback (by `interface`, the chain's in- or output
/// interface), replies, then link-local IPv6 housekeeping.
fn always_allowed(chain: &'static str, interface: MetaKey) -> Vec<NfObject<'static>> {
    let mut rules = vec![
        rule(chain, vec![eq(meta(interface), string("lo")), accept()]),
        rule(chain, vec![ct_state(&["established", "related"]), accept()]),
    ];
    rules.extend(
        link_local_icmpv6()
            .into_iter()
            .map(|expr| rule(chain, expr)),
    );
    rules
}

fn link_local_icmpv6() -> Vec<Vec<Statement<'static>>> {
    let nd = anonymous_set(vec![
        string("nd-router-solicit"),
        string("nd-neighbor-solicit"),
        string("nd-neighbor-advert"),
    ]);
    vec![
        vec![
            eq(payload("icmpv6", "type"), nd),
            eq(payload("ip6", "hoplimit"), Expression::Number(255)),
            accept(),
        ],
        vec![
            eq(payload("icmpv6", "type"), string("mld2-listener-report")),
            eq(payload("ip6", "hoplimit"), Expression::Number(1)),
            accept(),
        ],
    ]
}

/// The ruleset for the sandbox's namespace: allow `allowlist`'s addresses on `tcp_ports` and
/// `udp_ports`, count, log and reject everything else.
pub fn ruleset(
    allowlist: &crate::allowlist::Allowlist,
    tcp_ports: &[u16],
    udp_ports: &[u16],
) -> Nftables<'static> {
    let mut objects = vec![NfObject::CmdObject(NfCmd::Add(NfListObject::Table(
        Table {
            family: NfFamily::INet,
            name: TABLE.into(),
            handle: None,
        },
    )))];
    objects.push(address_set(
        "allowed4",
        SetType::Ipv4Addr,
        allowlist.ipv4().iter().map(ToString::to_string).collect(),
    ));
    objects.push(address_set(
        "allowed6",
        SetType::Ipv6Addr,
        allowlist.ipv6().iter().map(ToString::to_string).collect(),
    ));
    objects.push(base_chain("output", NfHook::Output));
    objects.push(base_chain("input", NfHook::Input));

    objects.extend(always_allowed("output", MetaKey::Oif));

    // Allowed destinations, per family and protocol; an empty port list opens nothing.
    for (family, set) in [("ip", "@allowed4"), ("ip6", "@allowed6")] {
        for (proto, ports) in [("tcp", tcp_ports), ("udp", udp_ports)] {
            if ports.is_empty() {
                continue;
            }
            let mut ports: Vec<u16> = ports.to_vec();
            ports.sort_unstable();
            ports.dedup();
            objects.push(rule(
                "output",
                vec![
                    eq(payload(family, "daddr"), string(set)),
                    eq(meta(MetaKey::L4proto), string(proto)),
                    eq(
                        payload("th", "dport"),
                        anonymous_set(
                            ports
                                .into_iter()
                                .map(|p| Expression::Number(u32::from(p)))
                                .collect(),
                        ),
                    ),
                    accept(),
                ],
            ));
        }
    }

    // Count every blocked destination: with its port where the protocol has one.
    let with_port = || anonymous_set(vec![string("tcp"), string("udp")]);
    for (family, with, without) in [
        ("ip", METER_PORT4, METER_PROTO4),
        ("ip6", METER_PORT6, METER_PROTO6),
    ] {
        objects.push(rule(
            "output",
            vec![
                eq(
                    meta(MetaKey::Nfproto),
                    string(if family == "ip" { "ipv4" } else { "ipv6" }),
                ),
                eq(meta(MetaKey::L4proto), with_port()),
                Statement::Meter(Meter {
                    name: with.into(),
                    key: Expression::Named(NamedExpression::Concat(vec![
                        payload(family, "daddr"),
                        meta(MetaKey::L4proto),
                        payload("th", "dport"),
                    ])),
                    stmt: Box::new(Statement::Counter(nftables::stmt::Counter::Anonymous(None))),
                }),
            ],
        ));
        objects.push(rule(
            "output",
            vec![
                eq(
                    meta(MetaKey::Nfproto),
                    string(if family == "ip" { "ipv4" } else { "ipv6" }),
                ),
                matches(meta(MetaKey::L4proto), Operator::NEQ, with_port()),
                Statement::Meter(Meter {
                    name: without.into(),
                    key: Expression::Named(NamedExpression::Concat(vec![
                        payload(family, "daddr"),
                        meta(MetaKey::L4proto),
                    ])),
                    stmt: Box::new(Statement::Counter(nftables::stmt::Counter::Anonymous(None))),
                }),
            ],
        ));
    }

    // Log, rate-limited so a busy loop cannot flood the kernel log, then reject at once.
    objects.push(rule(
        "output",
        vec![
            Statement::Limit(Limit {
                rate: 10,
                rate_unit: None,
                per: Some("second".into()),
                burst: Some(20),
                burst_unit: None,
                inv: None,
            }),
            Statement::Log(Some(Log {
                prefix: Some(LOG_PREFIX.into()),
                group: None,
                snaplen: None,
                queue_threshold: None,
                level: None,
                flags: None,
            })),
        ],
    ));
    // TCP gets a reset: the kernel rate-limits ICMPv6 errors per peer even when the peer is
    // this host (net.ipv6.icmp.ratelimit), so an ICMP error alone can leave a TCP client
    // waiting for its SYN retransmit. Everything else gets administratively-prohibited; the
    // drop also fails the sending call itself with EPERM.
    objects.push(rule(
        "output",
        vec![
            eq(meta(MetaKey::L4proto), string("tcp")),
            Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
        ],
    ));
    objects.push(rule(
        "output",
        vec![Statement::Reject(Some(Reject::new(
            Some(RejectType::ICMPX),
            Some(RejectCode::AdminProhibited),
        )))],
    ));

    // Input: the policy drops the rest.
    objects.extend(always_allowed("input", MetaKey::Iif));

    Nftables {
        objects: Cow::Owned(objects),
    }
}

/// Run `nft` with `args` inside the network namespace `netns`, feeding it `stdin`.
fn run_nft(nft: &Path, netns: BorrowedFd, args: &[&str], stdin: &[u8]) -> Result<Vec<u8>> {
    spawn_nft(nft, netns, args, stdin)?.wait()
}

/// An `nft` run in progress.
pub struct NftRun {
    child: std::process::Child,
    what: String,
}

fn spawn_nft(nft: &Path, netns: BorrowedFd, args: &[&str], stdin: &[u8]) -> Result<NftRun> {
    let fd = netns.as_raw_fd();
    let mut command = Command::new(nft);
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setns is async-signal-safe; the closure touches only the fd number, which stays
    // open in the child until exec (the parent keeps its BorrowedFd alive across spawn).
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().with_context(|| {
        format!(
            "cannot run {} in the sandbox's network namespace",
            nft.display()
        )
    })?;
    // nft reads all of its input before it writes anything, so this cannot deadlock;
    // dropping the pipe closes it.
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .with_context(|| format!("cannot write to {}", nft.display()))?;
    Ok(NftRun {
        child,
        what: format!("{} {}", nft.display(), args.join(" ")),
    })
}

impl NftRun {
    /// Wait for `nft` to finish; its standard output, or an error with its message.
    pub fn wait(self) -> Result<Vec<u8>> {
        let output = self
            .child
            .wait_with_output()
            .with_context(|| format!("cannot wait for {}", self.what))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.what,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output.stdout)
    }
}

/// Load `ruleset` into the (fresh) namespace `netns` in one atomic batch: either the whole
/// table is in place or nothing changed.
pub fn apply(nft: &Path, netns: BorrowedFd, ruleset: &Nftables) -> Result<()> {
    start_apply(nft, netns, ruleset)?.wait()?;
    Ok(())
}

/// Start loading `ruleset` like [`apply`], returning at once; [`NftRun::wait`] tells
/// whether it loaded. Lets the caller start pasta meanwhile: nothing in the sandbox runs
/// before both are done.
pub fn start_apply(nft: &Path, netns: BorrowedFd, ruleset: &Nftables) -> Result<NftRun> {
    let json = serde_json::to_vec(ruleset).context("cannot serialize the nftables ruleset")?;
    spawn_nft(nft, netns, &["-j", "-f", "-"], &json).context("cannot load the sandbox's firewall")
}

/// Read the blocked destinations counted so far in `netns`, most packets first.
pub fn blocked(nft: &Path, netns: BorrowedFd) -> Result<Vec<Blocked>> {
    // One `nft` run lists every meter with its elements; the namespace holds only our
    // table, and parse_meter keeps only its meters.
    let out = run_nft(nft, netns, &["-j", "list", "meters"], b"")
        .context("cannot read the blocked-destination counters")?;
    let mut all = parse_meter(&out).context("unexpected nft output for the meters")?;
    all.sort_by(|a, b| b.packets.cmp(&a.packets).then_with(|| a.cmp(b)));
    Ok(all)
}

/// Parse `nft -j list meter` output: elements `{"val": {"concat": [addr, proto, port?]},
/// "counter": {"packets": N, ...}}`.
fn parse_meter(json: &[u8]) -> Result<Vec<Blocked>> {
    let value: serde_json::Value = serde_json::from_slice(json)?;
    let mut found = Vec::new();
    let objects = value["nftables"].as_array().context("no nftables array")?;
    for object in objects {
        let meter = &object["meter"];
        let ours = meter["table"] == TABLE
            && [METER_PORT4, METER_PORT6, METER_PROTO4, METER_PROTO6]
                .iter()
                .any(|m| meter["name"] == *m);
        let Some(elems) = meter["elem"].as_array().filter(|_| ours) else {
            continue;
        };
        for elem in elems {
            let elem = &elem["elem"];
            let key = elem["val"]["concat"]
                .as_array()
                .context("element is not a concatenation")?;
            let address: IpAddr = key
                .first()
                .and_then(|a| a.as_str())
                .context("element has no address")?
                .parse()
                .context("element address")?;
            let protocol = match key.get(1) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => bail!("element has no protocol"),
            };
            let port = key
                .get(2)
                .map(|p| {
                    p.as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .context("element port")
                })
                .transpose()?;
            let packets = elem["counter"]["packets"].as_u64().unwrap_or(0);
            found.push(Blocked {
                address,
                protocol,
                port,
                packets,
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_output_is_parsed_into_blocked_destinations() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"meter": {"family": "inet",
            "name": "blocked4", "table": "claude_chroot", "elem": [
            {"elem": {"val": {"concat": ["10.9.0.5", "udp", 53]}, "counter": {"packets": 3, "bytes": 29}}},
            {"elem": {"val": {"concat": ["2001:db8::1", "ipv6-icmp"]}, "counter": {"packets": 1, "bytes": 64}}},
            {"elem": {"val": {"concat": ["10.9.0.6", 132]}, "counter": {"packets": 2, "bytes": 64}}}]}}]}"#;
        let got = parse_meter(json).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].address, "10.9.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(
            (got[0].protocol.as_str(), got[0].port, got[0].packets),
            ("udp", Some(53), 3)
        );
        assert_eq!((got[1].protocol.as_str(), got[1].port), ("ipv6-icmp", None));
        assert_eq!(got[2].protocol, "132");
    }

    #[test]
    fn empty_meter_has_no_blocked_destinations() {
        let json = br#"{"nftables": [{"metainfo": {}}, {"meter": {"name": "blocked6"}}]}"#;
        assert!(parse_meter(json).unwrap().is_empty());
    }
}
