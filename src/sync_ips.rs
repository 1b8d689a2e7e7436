//! `sync-ips`: resolve the configured domains and, after a human has seen the diff, write the
//! vetted allowlist.
//!
//! Every domain is asked for A and AAAA in parallel (CNAMEs are followed by the resolver).
//! Special-purpose answers are dropped, each with its reason, because a name that resolves to
//! loopback, the LAN or a tunnel would open exactly what the sandbox closes. A domain that
//! fails keeps its previous addresses: a DNS hiccup must not silently shrink or empty the
//! allowlist.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RecordType};

use crate::allowlist::Allowlist;
use crate::config::Config;
use crate::special::special_purpose;

/// Exit status: allowlist current, or the change was written.
pub const EXIT_OK: u8 = 0;
/// Exit status: `--check` found drift, or the user declined the change.
pub const EXIT_DRIFT: u8 = 1;
/// Exit status: at least one domain ends with no address.
pub const EXIT_NO_ADDRESS: u8 = 2;

/// What resolving one domain gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub domain: String,
    /// Usable addresses; empty when the domain failed.
    pub addresses: BTreeSet<IpAddr>,
    /// Special-purpose answers that were dropped, with the reason.
    pub dropped: Vec<(IpAddr, &'static str)>,
    /// Why the domain counts as failed (no usable address, or a query error).
    pub error: Option<String>,
}

/// Parse a configured nameserver, `ADDRESS` or `ADDRESS:PORT` (`[V6]:PORT` for IPv6).
pub fn parse_nameserver(text: &str) -> Result<SocketAddr> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let ip: IpAddr = text
        .parse()
        .with_context(|| format!("nameserver {text:?} is neither ADDRESS nor ADDRESS:PORT"))?;
    Ok(SocketAddr::new(ip, 53))
}

fn resolver(config: &Config) -> Result<Resolver<TokioRuntimeProvider>> {
    let net = &config.network;
    let (resolver_config, mut opts) = if net.nameservers.is_empty() {
        hickory_resolver::system_conf::read_system_conf()
            .context("cannot read the host's resolver configuration (/etc/resolv.conf)")?
    } else {
        let mut servers = Vec::new();
        for text in &net.nameservers {
            let sa = parse_nameserver(text)?;
            let mut server = NameServerConfig::udp_and_tcp(sa.ip());
            for connection in &mut server.connections {
                connection.port = sa.port();
            }
            servers.push(server);
        }
        (
            ResolverConfig::from_parts(None, Vec::new(), servers),
            ResolverOpts::default(),
        )
    };
    opts.timeout = Duration::from_millis(net.resolve_timeout_ms.max(1));
    // Ask DNS only: the host's /etc/hosts is not what the sandbox should trust.
    opts.use_hosts_file = ResolveHosts::Never;
    Resolver::builder_with_config(resolver_config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .context("cannot build the DNS resolver")
}

/// Resolve every configured domain, A and AAAA, all in parallel.
pub fn resolve_all(config: &Config) -> Result<Vec<Resolution>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the resolver runtime")?;
    runtime.block_on(async {
        let resolver = resolver(config)?;
        let mut tasks = Vec::new();
        for domain in &config.network.domains {
            let resolver = resolver.clone();
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            tasks.push(tokio::spawn(
                async move { resolve_one(&resolver, domain).await },
            ));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.context("resolver task failed")?);
        }
        Ok(out)
    })
}

async fn resolve_one(resolver: &Resolver<TokioRuntimeProvider>, domain: String) -> Resolution {
    let mut resolution = Resolution {
        domain: domain.clone(),
        addresses: BTreeSet::new(),
        dropped: Vec::new(),
        error: None,
    };
    // Fully qualified: no search domain is ever appended.
    let name = match Name::from_ascii(format!("{domain}.")) {
        Ok(name) => name,
        Err(e) => {
            resolution.error = Some(format!("not a valid domain name: {e}"));
            return resolution;
        }
    };
    let (v4, v6) = tokio::join!(
        resolver.lookup(name.clone(), RecordType::A),
        resolver.lookup(name, RecordType::AAAA)
    );
    let mut errors = Vec::new();
    let mut answers = BTreeSet::new();
    for (kind, result) in [("A", v4), ("AAAA", v6)] {
        match result {
            Ok(lookup) => answers.extend(lookup.answers().iter().filter_map(|r| r.data.ip_addr())),
            Err(e) if e.is_no_records_found() => {}
            Err(e) => errors.push(format!("{kind}: {e}")),
        }
    }
    for ip in answers {
        match special_purpose(ip) {
            Some(reason) => resolution.dropped.push((ip, reason)),
            None => {
                resolution.addresses.insert(ip);
            }
        }
    }
    // A partial answer (one family failed) would drop the other family's vetted addresses:
    // count it as a failure so the previous ones are kept.
    if !errors.is_empty() {
        resolution.error = Some(errors.join("; "));
        resolution.addresses.clear();
    } else if resolution.addresses.is_empty() {
        resolution.error = Some(if resolution.dropped.is_empty() {
            "no A or AAAA record".to_string()
        } else {
            "only special-purpose addresses".to_string()
        });
    }
    resolution
}

/// The new allowlist from `previous` and `resolutions`: resolved domains take their new
/// addresses, failed ones keep their previous ones, unconfigured names disappear. Returns the
/// list and the domains that end with no address.
pub fn merge(previous: &Allowlist, resolutions: &[Resolution]) -> (Allowlist, Vec<String>) {
    let mut next = Allowlist::new();
    let mut empty = Vec::new();
    for r in resolutions {
        let addresses = if r.error.is_none() {
            r.addresses.clone()
        } else {
            previous.addresses(&r.domain).cloned().unwrap_or_default()
        };
        if addresses.is_empty() {
            empty.push(r.domain.clone());
        }
        next.set(&r.domain, addresses);
    }
    (next, empty)
}

/// A unified diff of the entries (header comments left out, so only real changes show).
pub fn diff(path: &Path, old: &Allowlist, new: &Allowlist) -> String {
    let old_text = old.render("");
    let new_text = new.render("");
    similar::TextDiff::from_lines(&old_text, &new_text)
        .unified_diff()
        .context_radius(2)
        .header(
            &format!("{} (current)", path.display()),
            &format!("{} (resolved)", path.display()),
        )
        .to_string()
}

/// The comment at the top of the written file.
fn header(config: &Config, when: SystemTime) -> String {
    format!(
        "claude-chroot allowlist: the only addresses the sandbox may reach.\n\
         Written by `claude-chroot sync-ips` at {}; review every change.\n\
         Domains: {}",
        crate::network::rfc3339(when),
        config.network.domains.join(" ")
    )
}

/// Write `text` to `path` atomically: a temporary file in the same directory, root-owned,
/// mode 0644, flushed to disk, renamed over `path`, and the directory synced.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".allowed-ips.")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    let file = tmp.as_file();
    std::os::unix::fs::fchown(file, Some(0), Some(0))
        .with_context(|| format!("cannot make {} owned by root", tmp.path().display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot chmod {}", tmp.path().display()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot rename the new allowlist onto {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))?;
    Ok(())
}

/// `claude-chroot sync-ips [--yes] [--check]`, printing to stdout (diff) and stderr
/// (messages) and asking on the terminal. Returns the exit status.
pub fn run(config: &Config, yes: bool, check: bool) -> Result<u8> {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut answer = || -> Result<bool> {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the answer")?;
        Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
    };
    let mut confirm: Option<&mut dyn FnMut() -> Result<bool>> =
        if interactive { Some(&mut answer) } else { None };
    run_with(
        config,
        yes,
        check,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
        confirm.take(),
    )
}

/// [`run`] with explicit output streams and confirmation (`None`: not on a terminal).
pub fn run_with(
    config: &Config,
    yes: bool,
    check: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
    confirm: Option<&mut dyn FnMut() -> Result<bool>>,
) -> Result<u8> {
    let path = config.allowlist_file();
    if config.network.domains.is_empty() {
        bail!("no domains configured (network.domains is empty): nothing to resolve");
    }
    // A decision needs a human or an explicit flag; refuse before any DNS traffic.
    if !yes && !check && confirm.is_none() {
        bail!("not on a terminal: pass --yes to write the allowlist or --check to only compare");
    }

    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => Allowlist::parse(&text).with_context(|| {
            format!(
                "current allowlist {} is malformed; fix or remove it, then run sync-ips again",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Allowlist::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };

    let resolutions = resolve_all(config)?;
    for r in &resolutions {
        for (ip, reason) in &r.dropped {
            writeln!(err, "claude-chroot: {}: dropped {ip}: {reason}", r.domain)?;
        }
        if let Some(e) = &r.error {
            match previous.addresses(&r.domain) {
                Some(old) if !old.is_empty() => writeln!(
                    err,
                    "claude-chroot: {}: resolution failed ({e}); keeping its {} previous address{}",
                    r.domain,
                    old.len(),
                    if old.len() == 1 { "" } else { "es" }
                )?,
                _ => writeln!(err, "claude-chroot: {}: resolution failed ({e})", r.domain)?,
            }
        }
    }
    let (next, empty) = merge(&previous, &resolutions);
    for domain in &empty {
        writeln!(
            err,
            "claude-chroot: {domain}: no address; the sandbox cannot reach it"
        )?;
    }
    let failed_status = if empty.is_empty() {
        EXIT_OK
    } else {
        EXIT_NO_ADDRESS
    };

    if next == previous && path.exists() {
        writeln!(err, "claude-chroot: {} is up to date", path.display())?;
        return Ok(failed_status);
    }
    write!(out, "{}", diff(&path, &previous, &next))?;
    out.flush()?;
    if check {
        writeln!(
            err,
            "claude-chroot: {} differs from DNS (--check: not written)",
            path.display()
        )?;
        return Ok(failed_status.max(EXIT_DRIFT));
    }
    if next.is_empty() {
        writeln!(
            err,
            "claude-chroot: no domain has an address; {} not written",
            path.display()
        )?;
        return Ok(EXIT_NO_ADDRESS);
    }
    if !yes {
        write!(
            err,
            "claude-chroot: write these changes to {}? [y/N] ",
            path.display()
        )?;
        err.flush()?;
        let confirm = confirm.expect("checked above");
        if !confirm()? {
            writeln!(err, "claude-chroot: not written")?;
            return Ok(failed_status.max(EXIT_DRIFT));
        }
    }
    write_atomically(&path, &next.render(&header(config, SystemTime::now())))?;
    writeln!(err, "claude-chroot: wrote {}", path.display())?;
    Ok(failed_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_accept_address_and_address_port() {
        assert_eq!(
            parse_nameserver("192.0.2.53").unwrap(),
            "192.0.2.53:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("192.0.2.53:5353").unwrap(),
            "192.0.2.53:5353".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("2001:db8::53").unwrap(),
            "[2001:db8::53]:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("[2001:db8::53]:5353").unwrap(),
            "[2001:db8::53]:5353".parse().unwrap()
        );
        assert!(parse_nameserver("dns.example").is_err());
    }

    fn resolution(domain: &str, addresses: &[&str], error: Option<&str>) -> Resolution {
        Resolution {
            domain: domain.into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            dropped: Vec::new(),
            error: error.map(String::from),
        }
    }

    #[test]
    fn merge_keeps_previous_addresses_of_a_failed_domain() {
        let previous =
            Allowlist::parse("1.1.1.1 a.example\n8.8.8.8 b.example\n9.9.9.9 gone.example\n")
                .unwrap();
        let (next, empty) = merge(
            &previous,
            &[
                resolution("a.example", &["1.0.0.1"], None),
                resolution("b.example", &[], Some("timed out")),
                resolution("new.example", &[], Some("no A or AAAA record")),
            ],
        );
        assert_eq!(next.render(""), "1.0.0.1 a.example\n8.8.8.8 b.example\n");
        assert_eq!(empty, vec!["new.example".to_string()]);
    }
}
