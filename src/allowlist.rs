//! The vetted allowlist: which names the sandbox may reach, at exactly which addresses.
//!
//! The file is in hosts format (`ADDRESS NAME...`, `#` starts a comment) so that a human can
//! read and review it, and so that the session's `/etc/hosts` can be derived from it: the
//! names the agent resolves and the addresses the firewall lets through come from the same
//! lines and cannot disagree. `sync-ips` writes it; `enter` only reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Allowed names, each with its vetted addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    names: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// What to do about a missing or unusable allowlist.
const SYNC_FIX: &str = "run claude-chroot sync-ips";

impl Allowlist {
    pub fn new() -> Allowlist {
        Allowlist::default()
    }

    /// Parse hosts-format text strictly: every non-comment line must be an address followed
    /// by at least one valid host name.
    pub fn parse(text: &str) -> Result<Allowlist> {
        let mut list = Allowlist::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: String| anyhow::anyhow!("line {}: {why}: {:?}", index + 1, raw);
            let mut fields = line.split_whitespace();
            let address = fields.next().unwrap_or_default();
            let ip: IpAddr = address
                .parse()
                .map_err(|_| bad(format!("{address:?} is not an IP address")))?;
            let mut any = false;
            for name in fields {
                let name = validate_name(name).map_err(bad)?;
                list.insert(&name, ip);
                any = true;
            }
            if !any {
                return Err(bad("an address without a name".to_string()));
            }
        }
        Ok(list)
    }

    /// Read the allowlist `enter` filters on. Missing, empty, malformed or writable by
    /// someone other than root: refuse, and say how to fix it.
    pub fn load(path: &Path) -> Result<Allowlist> {
        use std::io::Read;
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("allowlist {} does not exist: {SYNC_FIX}", path.display())
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read allowlist {}: {SYNC_FIX}", path.display())
                });
            }
        };
        // The owner of the file that is read, not of whatever the path names later.
        let meta = file
            .metadata()
            .with_context(|| format!("cannot stat allowlist {}", path.display()))?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            bail!(
                "allowlist {} must be owned by root and writable only by root \
                 (owner uid {}, mode {:o}): {SYNC_FIX}",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            );
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .with_context(|| format!("cannot read allowlist {}: {SYNC_FIX}", path.display()))?;
        Self::from_file_text(&text, path)
    }

    /// The contents of the allowlist file at `path`: malformed or empty is refused.
    fn from_file_text(text: &str, path: &Path) -> Result<Allowlist> {
        let list = Allowlist::parse(text)
            .with_context(|| format!("allowlist {} is malformed: {SYNC_FIX}", path.display()))?;
        if list.is_empty() {
            bail!("allowlist {} is empty: {SYNC_FIX}", path.display());
        }
        Ok(list)
    }

    /// Allow `name` at `ip` (names are case-insensitive and stored in lower case).
    pub fn insert(&mut self, name: &str, ip: IpAddr) {
        self.names
            .entry(name.to_ascii_lowercase())
            .or_default()
            .insert(ip);
    }

    /// Replace the addresses of `name`; an empty set removes the name.
    pub fn set(&mut self, name: &str, addresses: BTreeSet<IpAddr>) {
        let name = name.to_ascii_lowercase();
        if addresses.is_empty() {
            self.names.remove(&name);
        } else {
            self.names.insert(name, addresses);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every allowed name with its addresses, sorted.
    pub fn names(&self) -> &BTreeMap<String, BTreeSet<IpAddr>> {
        &self.names
    }

    /// The vetted addresses of `name`, if it is allowed.
    pub fn addresses(&self, name: &str) -> Option<&BTreeSet<IpAddr>> {
        self.names.get(&name.to_ascii_lowercase())
    }

    /// Every allowed IPv4 address, sorted, without duplicates.
    pub fn ipv4(&self) -> Vec<Ipv4Addr> {
        let set: BTreeSet<Ipv4Addr> = self
            .names
            .values()
            .flatten()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        set.into_iter().collect()
    }

    /// Every allowed IPv6 address, sorted, without duplicates.
    pub fn ipv6(&self) -> Vec<Ipv6Addr> {
        let set: BTreeSet<Ipv6Addr> = self
            .names
            .values()
            .flatten()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            })
            .collect();
        set.into_iter().collect()
    }

    /// The file text: `header_comment` as `#` lines, then one `ADDRESS NAME` line per pair,
    /// grouped by name, so a change to one name shows as a small diff.
    pub fn render(&self, header_comment: &str) -> String {
        let mut out = String::new();
        for line in header_comment.lines() {
            if line.is_empty() {
                out.push_str("#\n");
            } else {
                let _ = writeln!(out, "# {line}");
            }
        }
        for (name, addresses) in &self.names {
            for ip in addresses {
                let _ = writeln!(out, "{ip} {name}");
            }
        }
        out
    }

    /// The session's `/etc/hosts`: localhost, and every allowed name pinned to exactly its
    /// vetted addresses. Nothing else resolves inside (the sandbox has no DNS server).
    pub fn session_hosts(&self) -> String {
        let mut out = String::from(
            "# Generated by claude-chroot from the vetted allowlist; other names do not resolve.\n\
             127.0.0.1 localhost\n\
             ::1 localhost ip6-localhost ip6-loopback\n",
        );
        out.push_str(&self.render(""));
        out
    }
}

/// Check a host name (RFC 1123 labels; `_` tolerated as some service names use it).
fn validate_name(name: &str) -> std::result::Result<String, String> {
    let ok_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(ok_label) {
        return Err(format!("{name:?} is not a valid host name"));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# vetted by a human
160.79.104.10 api.anthropic.com
2607:6bc0::10 api.anthropic.com   # trailing comment

151.101.1.1 cache.nixos.org Cache.NixOS.org
";

    #[test]
    fn parse_reads_addresses_names_and_comments() {
        let list = Allowlist::parse(SAMPLE).unwrap();
        assert_eq!(list.names().len(), 2);
        let api = list.addresses("api.anthropic.com").unwrap();
        assert_eq!(api.len(), 2);
        assert_eq!(list.ipv4().len(), 2);
        assert_eq!(
            list.ipv6(),
            vec!["2607:6bc0::10".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn parse_names_the_bad_line() {
        let err = Allowlist::parse("1.2.3.4 ok.example\n1.2.3.x bad.example\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("1.2.3.x bad.example"), "{msg}");
    }

    #[test]
    fn parse_rejects_an_address_without_a_name() {
        let err = Allowlist::parse("1.2.3.4\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1"));
    }

    #[test]
    fn parse_rejects_an_invalid_name() {
        for line in ["1.2.3.4 -bad.example", "1.2.3.4 a..b", "1.2.3.4 sp@ce"] {
            assert!(Allowlist::parse(line).is_err(), "{line}");
        }
    }

    #[test]
    fn render_then_parse_round_trips() {
        let list = Allowlist::parse(SAMPLE).unwrap();
        let text = list.render("written by a test\n\ndomains: a b");
        assert!(text.starts_with("# written by a test\n#\n# domains: a b\n"));
        assert_eq!(Allowlist::parse(&text).unwrap(), list);
    }

    #[test]
    fn session_hosts_pins_names_to_exactly_their_addresses() {
        let list = Allowlist::parse(SAMPLE).unwrap();
        let hosts = list.session_hosts();
        let lines: Vec<&str> = hosts.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "127.0.0.1 localhost",
                "::1 localhost ip6-localhost ip6-loopback",
                "160.79.104.10 api.anthropic.com",
                "2607:6bc0::10 api.anthropic.com",
                "151.101.1.1 cache.nixos.org",
            ]
        );
    }

    #[test]
    fn load_refuses_missing_files_and_files_not_owned_by_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed-ips.conf");
        let err = format!("{:#}", Allowlist::load(&path).unwrap_err());
        assert!(
            err.contains("does not exist") && err.contains("sync-ips"),
            "{err}"
        );
        std::fs::write(&path, "1.2.3.4 fine.example\n").unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        }
        let err = format!("{:#}", Allowlist::load(&path).unwrap_err());
        assert!(err.contains("must be owned by root"), "{err}");
    }

    #[test]
    fn empty_and_malformed_allowlists_are_refused_with_the_line() {
        let path = Path::new("/srv/claude-chroot/allowed-ips.conf");
        let err = format!(
            "{:#}",
            Allowlist::from_file_text("# only comments\n", path).unwrap_err()
        );
        assert!(
            err.contains("is empty") && err.contains("sync-ips"),
            "{err}"
        );
        let text = "1.2.3.4 fine.example\nnot-an-address x\n";
        let err = format!("{:#}", Allowlist::from_file_text(text, path).unwrap_err());
        assert!(err.contains("line 2") && err.contains("sync-ips"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
