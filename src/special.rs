//! Special-purpose addresses: answers `sync-ips` must never put on the allowlist.
//!
//! The blocks come from the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890
//! and its updates), plus multicast and, for IPv6, everything outside the global unicast space
//! 2000::/3 that IANA has not allocated. An allowlisted name that resolves to one of these is
//! either misconfigured or an attempt to point the sandbox at the host, its LAN, or a tunnel.
//!
//! Whole registry blocks are treated as special even where a sub-block is marked globally
//! reachable (for example the anycast services in 192.0.0.0/24 and the TEREDO, AMT and AS112
//! sub-blocks of 2001::/23): none of them hosts an API an agent needs, and several are tunnel
//! endpoints that would carry traffic past the allowlist.

use std::net::IpAddr;
use std::sync::LazyLock;

use ipnet::IpNet;

/// One registry entry: the block as text (parsed once) and the reason shown to the user.
macro_rules! block {
    ($net:literal, $name:literal, $source:literal) => {
        ($net, concat!($name, " ", $net, " (", $source, ")"))
    };
}

/// Most specific first: the first match names the reason.
const BLOCKS: &[(&str, &str)] = &[
    // IPv4 special-purpose registry.
    block!("0.0.0.0/8", "this network", "IPv4 special-purpose, RFC 791"),
    block!(
        "10.0.0.0/8",
        "private-use",
        "IPv4 special-purpose, RFC 1918"
    ),
    block!(
        "100.64.0.0/10",
        "shared address space (CGNAT)",
        "IPv4 special-purpose, RFC 6598"
    ),
    block!("127.0.0.0/8", "loopback", "IPv4 special-purpose, RFC 1122"),
    block!(
        "169.254.0.0/16",
        "link-local",
        "IPv4 special-purpose, RFC 3927"
    ),
    block!(
        "172.16.0.0/12",
        "private-use",
        "IPv4 special-purpose, RFC 1918"
    ),
    block!(
        "192.0.0.0/24",
        "IETF protocol assignments",
        "IPv4 special-purpose, RFC 6890"
    ),
    block!(
        "192.0.2.0/24",
        "documentation (TEST-NET-1)",
        "IPv4 special-purpose, RFC 5737"
    ),
    block!(
        "192.31.196.0/24",
        "AS112-v4",
        "IPv4 special-purpose, RFC 7535"
    ),
    block!("192.52.193.0/24", "AMT", "IPv4 special-purpose, RFC 7450"),
    block!(
        "192.88.99.0/24",
        "deprecated 6to4 relay anycast",
        "IPv4 special-purpose, RFC 7526"
    ),
    block!(
        "192.168.0.0/16",
        "private-use",
        "IPv4 special-purpose, RFC 1918"
    ),
    block!(
        "192.175.48.0/24",
        "direct delegation AS112 service",
        "IPv4 special-purpose, RFC 7534"
    ),
    block!(
        "198.18.0.0/15",
        "benchmarking",
        "IPv4 special-purpose, RFC 2544"
    ),
    block!(
        "198.51.100.0/24",
        "documentation (TEST-NET-2)",
        "IPv4 special-purpose, RFC 5737"
    ),
    block!(
        "203.0.113.0/24",
        "documentation (TEST-NET-3)",
        "IPv4 special-purpose, RFC 5737"
    ),
    block!(
        "224.0.0.0/4",
        "multicast",
        "IPv4 multicast address space, RFC 5771"
    ),
    block!(
        "255.255.255.255/32",
        "limited broadcast",
        "IPv4 special-purpose, RFC 919"
    ),
    block!("240.0.0.0/4", "reserved", "IPv4 special-purpose, RFC 1112"),
    // IPv6 special-purpose registry.
    block!(
        "::/128",
        "unspecified address",
        "IPv6 special-purpose, RFC 4291"
    ),
    block!("::1/128", "loopback", "IPv6 special-purpose, RFC 4291"),
    block!(
        "::ffff:0:0/96",
        "IPv4-mapped",
        "IPv6 special-purpose, RFC 4291"
    ),
    block!(
        "64:ff9b::/96",
        "IPv4-IPv6 translation",
        "IPv6 special-purpose, RFC 6052"
    ),
    block!(
        "64:ff9b:1::/48",
        "local-use IPv4/IPv6 translation",
        "IPv6 special-purpose, RFC 8215"
    ),
    block!("100::/64", "discard-only", "IPv6 special-purpose, RFC 6666"),
    block!(
        "100:0:0:1::/64",
        "dummy IPv6 prefix",
        "IPv6 special-purpose, RFC 9780"
    ),
    block!("2001::/32", "TEREDO", "IPv6 special-purpose, RFC 4380"),
    block!(
        "2001:2::/48",
        "benchmarking",
        "IPv6 special-purpose, RFC 5180"
    ),
    block!("2001:3::/32", "AMT", "IPv6 special-purpose, RFC 7450"),
    block!(
        "2001:4:112::/48",
        "AS112-v6",
        "IPv6 special-purpose, RFC 7535"
    ),
    block!(
        "2001:10::/28",
        "deprecated ORCHID",
        "IPv6 special-purpose, RFC 4843"
    ),
    block!("2001:20::/28", "ORCHIDv2", "IPv6 special-purpose, RFC 7343"),
    block!(
        "2001:30::/28",
        "drone remote ID tags",
        "IPv6 special-purpose, RFC 9374"
    ),
    block!(
        "2001::/23",
        "IETF protocol assignments",
        "IPv6 special-purpose, RFC 2928"
    ),
    block!(
        "2001:db8::/32",
        "documentation",
        "IPv6 special-purpose, RFC 3849"
    ),
    block!("2002::/16", "6to4", "IPv6 special-purpose, RFC 3056"),
    block!(
        "2620:4f:8000::/48",
        "direct delegation AS112 service",
        "IPv6 special-purpose, RFC 7534"
    ),
    block!(
        "3fff::/20",
        "documentation",
        "IPv6 special-purpose, RFC 9637"
    ),
    block!(
        "5f00::/16",
        "segment routing (SRv6) SIDs",
        "IPv6 special-purpose, RFC 9602"
    ),
    block!("fc00::/7", "unique-local", "IPv6 special-purpose, RFC 4193"),
    block!(
        "fe80::/10",
        "link-local unicast",
        "IPv6 special-purpose, RFC 4291"
    ),
    block!(
        "ff00::/8",
        "multicast",
        "IPv6 multicast address space, RFC 4291"
    ),
];

/// Everything IPv6 outside 2000::/3 is reserved or not globally routable (site-local, the
/// deprecated IPv4-compatible ::/96, ...): IANA has allocated unicast only inside it.
const OUTSIDE_GLOBAL_UNICAST: &str =
    "outside global unicast 2000::/3 (IANA IPv6 address space, RFC 4291)";

static PARSED: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    BLOCKS
        .iter()
        .map(|(net, reason)| (net.parse().expect("registry block literal"), *reason))
        .collect()
});

/// Why `ip` is a special-purpose address, or `None` for an ordinary global unicast address.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    if let Some((_, reason)) = PARSED.iter().find(|(net, _)| net.contains(&ip)) {
        return Some(reason);
    }
    match ip {
        IpAddr::V6(v6) if v6.segments()[0] & 0xe000 != 0x2000 => Some(OUTSIDE_GLOBAL_UNICAST),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Assert that `addr` is special and the reason names `block`.
    #[track_caller]
    fn special(addr: &str, block: &str) {
        let ip: IpAddr = addr.parse().unwrap();
        let reason = special_purpose(ip).unwrap_or_else(|| panic!("{addr} not flagged"));
        assert!(
            reason.contains(block),
            "{addr}: {reason} does not name {block}"
        );
    }

    #[track_caller]
    fn ordinary(addr: &str) {
        let ip: IpAddr = addr.parse().unwrap();
        assert_eq!(special_purpose(ip), None, "{addr}");
    }

    #[test]
    fn every_block_literal_parses() {
        assert_eq!(PARSED.len(), BLOCKS.len());
    }

    #[test]
    fn this_network_is_special() {
        special("0.0.0.0", "0.0.0.0/8");
        special("0.255.255.255", "0.0.0.0/8");
    }

    #[test]
    fn private_use_is_special() {
        special("10.1.2.3", "10.0.0.0/8");
        special("172.16.0.1", "172.16.0.0/12");
        special("172.31.255.255", "172.16.0.0/12");
        special("192.168.1.1", "192.168.0.0/16");
        ordinary("172.32.0.1");
    }

    #[test]
    fn shared_cgnat_space_is_special() {
        special("100.64.0.1", "100.64.0.0/10");
        special("100.127.255.255", "100.64.0.0/10");
        ordinary("100.128.0.1");
    }

    #[test]
    fn ipv4_loopback_is_special() {
        special("127.0.0.1", "127.0.0.0/8");
        special("127.255.0.1", "127.0.0.0/8");
    }

    #[test]
    fn ipv4_link_local_is_special() {
        special("169.254.169.254", "169.254.0.0/16");
    }

    #[test]
    fn ietf_protocol_assignments_are_special() {
        special("192.0.0.9", "192.0.0.0/24");
        special("192.0.0.170", "192.0.0.0/24");
    }

    #[test]
    fn ipv4_documentation_is_special() {
        special("192.0.2.1", "192.0.2.0/24");
        special("198.51.100.7", "198.51.100.0/24");
        special("203.0.113.200", "203.0.113.0/24");
    }

    #[test]
    fn as112_and_amt_are_special() {
        special("192.31.196.1", "192.31.196.0/24");
        special("192.175.48.6", "192.175.48.0/24");
        special("192.52.193.1", "192.52.193.0/24");
    }

    #[test]
    fn deprecated_6to4_relay_anycast_is_special() {
        special("192.88.99.1", "192.88.99.0/24");
    }

    #[test]
    fn benchmarking_is_special() {
        special("198.18.0.1", "198.18.0.0/15");
        special("198.19.255.255", "198.18.0.0/15");
        ordinary("198.20.0.1");
    }

    #[test]
    fn ipv4_multicast_is_special() {
        special("224.0.0.1", "224.0.0.0/4");
        special("239.255.255.250", "224.0.0.0/4");
    }

    #[test]
    fn reserved_and_broadcast_are_special() {
        special("240.0.0.1", "240.0.0.0/4");
        special("254.1.2.3", "240.0.0.0/4");
        special("255.255.255.255", "limited broadcast 255.255.255.255/32");
    }

    #[test]
    fn public_ipv4_is_ordinary() {
        ordinary("1.1.1.1");
        ordinary("160.79.104.10");
        ordinary("192.0.3.1");
        ordinary("223.255.255.255");
    }

    #[test]
    fn ipv6_unspecified_and_loopback_are_special() {
        special("::", "::/128");
        special("::1", "::1/128");
    }

    #[test]
    fn ipv4_mapped_is_special() {
        special("::ffff:1.1.1.1", "::ffff:0:0/96");
        special("::ffff:127.0.0.1", "::ffff:0:0/96");
    }

    #[test]
    fn ipv4_ipv6_translation_is_special() {
        special("64:ff9b::101:101", "64:ff9b::/96");
        special("64:ff9b:1::1", "64:ff9b:1::/48");
    }

    #[test]
    fn discard_only_and_dummy_prefixes_are_special() {
        special("100::1", "100::/64");
        special("100:0:0:1::1", "100:0:0:1::/64");
    }

    #[test]
    fn ietf_ipv6_assignments_are_special_with_their_sub_block() {
        special("2001:0:4136:e378::1", "TEREDO 2001::/32");
        special("2001:2::1", "2001:2::/48");
        special("2001:3::1", "2001:3::/32");
        special("2001:4:112::1", "2001:4:112::/48");
        special("2001:10::1", "2001:10::/28");
        special("2001:20::1", "2001:20::/28");
        special("2001:30::1", "2001:30::/28");
        // Unassigned parts of the /23 are special too.
        special("2001:100::1", "2001::/23");
        special("2001:1ff::1", "2001::/23");
        ordinary("2001:200::1");
    }

    #[test]
    fn ipv6_documentation_is_special() {
        special("2001:db8::1", "2001:db8::/32");
        special("3fff:fff::1", "3fff::/20");
        ordinary("3fff:1000::1");
    }

    #[test]
    fn six_to_four_is_special() {
        special("2002:c000:201::1", "2002::/16");
    }

    #[test]
    fn ipv6_as112_and_srv6_are_special() {
        special("2620:4f:8000::1", "2620:4f:8000::/48");
        special("5f00::1", "5f00::/16");
    }

    #[test]
    fn unique_local_is_special() {
        special("fc00::1", "fc00::/7");
        special("fd12:3456::1", "fc00::/7");
    }

    #[test]
    fn ipv6_link_local_is_special() {
        special("fe80::1", "fe80::/10");
    }

    #[test]
    fn ipv6_multicast_is_special() {
        special("ff02::1", "ff00::/8");
        special("ff0e::101", "ff00::/8");
    }

    #[test]
    fn ipv6_outside_global_unicast_is_special() {
        // Deprecated IPv4-compatible and site-local addresses.
        special("::1.2.3.4", "2000::/3");
        special("fec0::1", "2000::/3");
        special("4000::1", "2000::/3");
    }

    #[test]
    fn public_ipv6_is_ordinary() {
        ordinary("2607:6bc0::10");
        ordinary("2a00:1450:4001::1");
        ordinary("2620:4f:8001::1");
    }
}
