//! The sandbox's network, as the activator's parent sets it up and tears it down.
//!
//! The parent calls [`setup`] after cloning the sandbox child into its new network namespace
//! and before letting it go on, and [`NetworkSession::finish`] after the child has exited.
//! The session keeps its own descriptor on the namespace, so the blocked-destination counters
//! can still be read after the sandbox's last process is gone.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use nix::unistd::Pid;
use serde::Serialize;

use crate::allowlist::Allowlist;
use crate::config::{Config, NetworkMode};
use crate::firewall::{self, Blocked};
use crate::pasta::{self, Pasta};
use crate::weaken::{self, Knob};

/// What `setup` started; `finish` reads the counters and stops it.
#[derive(Debug)]
pub struct NetworkSession {
    mode: NetworkMode,
    nft: PathBuf,
    /// The sandbox's network namespace, held open for the counters.
    netns: Option<File>,
    pasta: Option<Pasta>,
    /// How long each of the steps that run side by side took, in milliseconds, for `-v`:
    /// the ruleset's load and pasta's start at setup, the counters and pasta's exit at the end.
    pub overlapped: Vec<(&'static str, f64)>,
}

/// Set up the network of the sandbox child `child_pid` for `mode`, loading the allowlist
/// from the configured file in `allowlist` mode.
///
/// Call it on the thread that waits for the session (the activator's main thread): pasta is
/// killed by the kernel when the thread that started it ends (see [`pasta::start`]).
pub fn setup(
    config: &Config,
    mode: NetworkMode,
    child_pid: Pid,
    verbose: bool,
) -> Result<NetworkSession> {
    match mode {
        NetworkMode::Allowlist => {
            let allowlist = Allowlist::load(&config.allowlist_file())?;
            setup_with_allowlist(config, mode, child_pid, Some(&allowlist), verbose)
        }
        _ => setup_with_allowlist(config, mode, child_pid, None, verbose),
    }
}

/// Like [`setup`], with an allowlist the caller has already loaded (so that the session's
/// `/etc/hosts`, built from the same value, and the firewall cannot disagree).
pub fn setup_with_allowlist(
    config: &Config,
    mode: NetworkMode,
    child_pid: Pid,
    allowlist: Option<&Allowlist>,
    verbose: bool,
) -> Result<NetworkSession> {
    let ns_path = PathBuf::from(format!("/proc/{child_pid}/ns/net"));
    let netns = File::open(&ns_path).with_context(|| {
        format!(
            "cannot open the sandbox's network namespace {}",
            ns_path.display()
        )
    })?;
    let mut session = NetworkSession {
        mode,
        nft: config.tools.nft.clone(),
        netns: Some(netns),
        pasta: None,
        overlapped: Vec::new(),
    };
    match mode {
        NetworkMode::None => {
            // The child brings `lo` up itself; nothing else is connected.
        }
        NetworkMode::Allowlist => {
            let allowlist = match allowlist {
                Some(list) => list,
                None => &Allowlist::load(&config.allowlist_file())?,
            };
            let net = &config.network;
            // Load the filter and start pasta at the same time: nothing in the sandbox runs
            // until both are done (the child waits for the go-ahead), and a failure of
            // either ends the session before the agent starts.
            let mut tcp_ports = net.tcp_ports.clone();
            if weaken::active(Knob::PortFilter) {
                tcp_ports.extend(crate::selftest::CLOSED_PORTS);
            }
            let ruleset = firewall::ruleset(allowlist, &tcp_ports, &net.udp_ports);
            let fd = session.netns.as_ref().expect("namespace held").as_fd();
            let begun = Instant::now();
            let loading = firewall::start_apply(&config.tools.nft, fd, &ruleset)?;
            // Wait for nft on a thread of its own, so that its time and pasta's are each
            // measured; pasta is started on this thread, whose exit it must not outlive.
            let (loaded, pasta, pasta_ms) = std::thread::scope(|s| {
                let waiter = s.spawn(move || (loading.wait(), millis(begun)));
                let pasta = pasta::start(&config.tools.pasta, &ns_path, verbose);
                let pasta_ms = millis(begun);
                (waiter.join(), pasta, pasta_ms)
            });
            let (loaded, ruleset_ms) =
                loaded.map_err(|_| anyhow::anyhow!("the thread waiting for nft panicked"))?;
            loaded.context("cannot load the sandbox's firewall")?;
            session.pasta = Some(pasta?);
            session.overlapped = vec![("ruleset", ruleset_ms), ("pasta ready", pasta_ms)];
            if verbose {
                eprintln!(
                    "claude-chroot: firewall loaded: {} names, {} IPv4 and {} IPv6 addresses, \
                     TCP ports {:?}, UDP ports {:?}",
                    allowlist.names().len(),
                    allowlist.ipv4().len(),
                    allowlist.ipv6().len(),
                    net.tcp_ports,
                    net.udp_ports
                );
            }
        }
        NetworkMode::Full => {
            eprintln!(
                "claude-chroot: WARNING: full network: the sandbox can reach ANY address and \
                 port (the allowlist is not enforced); use this only for debugging"
            );
            let begun = Instant::now();
            session.pasta = Some(pasta::start(&config.tools.pasta, &ns_path, verbose)?);
            session.overlapped = vec![("pasta ready", millis(begun))];
        }
    }
    Ok(session)
}

impl NetworkSession {
    pub fn mode(&self) -> NetworkMode {
        self.mode
    }

    /// pasta's PID, when it runs.
    pub fn pasta_pid(&self) -> Option<i32> {
        self.pasta.as_ref().map(Pasta::pid)
    }

    /// Read the blocked destinations (allowlist mode; empty otherwise), stop pasta and release
    /// the namespace. pasta is stopped even when reading the counters fails.
    ///
    /// `overlapped` gets how long the counters and pasta's exit took, side by side.
    pub fn finish(mut self, overlapped: &mut Vec<(&'static str, f64)>) -> Result<Vec<Blocked>> {
        // Let pasta wind down while the counters are read: the namespace is held open by
        // our own descriptor, so the counters outlive both the sandbox and pasta.
        let begun = Instant::now();
        let terminated = match &self.pasta {
            Some(p) => p.terminate(),
            None => Ok(()),
        };
        let blocked = match (&self.netns, self.mode) {
            (Some(ns), NetworkMode::Allowlist) => {
                let blocked = firewall::blocked(&self.nft, ns.as_fd());
                overlapped.push(("counters", millis(begun)));
                blocked
            }
            _ => Ok(Vec::new()),
        };
        let stopped = match self.pasta.take() {
            Some(p) => {
                let stopped = p.stop();
                overlapped.push(("pasta gone", millis(begun)));
                stopped
            }
            None => Ok(()),
        };
        self.netns = None;
        terminated?;
        stopped?;
        blocked
    }
}

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The session report for stderr: one line per blocked destination, or an empty string when
/// nothing was blocked.
pub fn report(blocked: &[Blocked]) -> String {
    if blocked.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "claude-chroot: blocked {} destination{} (not on the allowlist):\n",
        blocked.len(),
        if blocked.len() == 1 { "" } else { "s" }
    );
    for b in blocked {
        let target = match (b.address, b.port) {
            (std::net::IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
            (a, Some(p)) => format!("{a}:{p}"),
            (a, None) => a.to_string(),
        };
        out.push_str(&format!(
            "claude-chroot:   {target} {} ({} packet{})\n",
            b.protocol,
            b.packets,
            if b.packets == 1 { "" } else { "s" }
        ));
    }
    out
}

/// RFC 3339 UTC time with seconds, e.g. `2025-01-31T12:00:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: gmtime_r writes only into the zeroed `tm` we pass; both pointers are valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::gmtime_r(&t, &mut tm) };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[derive(Serialize)]
struct LogRecord<'a> {
    start: String,
    end: String,
    workspace: &'a Path,
    mode: NetworkMode,
    blocked: &'a [Blocked],
}

/// Append one JSON line describing the session to the log file `path` (created 0600 if
/// missing): start, end, workspace, network mode and the blocked destinations.
pub fn write_log(
    path: &Path,
    start: SystemTime,
    end: SystemTime,
    workspace: &Path,
    mode: NetworkMode,
    blocked: &[Blocked],
) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let record = LogRecord {
        start: rfc3339(start),
        end: rfc3339(end),
        workspace,
        mode,
        blocked,
    };
    let mut line = serde_json::to_string(&record).context("cannot serialize the session log")?;
    line.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot open session log {}", path.display()))?;
    file.write_all(line.as_bytes())
        .with_context(|| format!("cannot write session log {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Vec<Blocked> {
        vec![
            Blocked {
                address: "203.0.113.9".parse().unwrap(),
                protocol: "tcp".into(),
                port: Some(80),
                packets: 3,
            },
            Blocked {
                address: "2001:db8::9".parse().unwrap(),
                protocol: "ipv6-icmp".into(),
                port: None,
                packets: 1,
            },
        ]
    }

    #[test]
    fn report_lists_each_blocked_destination_with_its_count() {
        let text = report(&sample());
        assert_eq!(
            text,
            "claude-chroot: blocked 2 destinations (not on the allowlist):\n\
             claude-chroot:   203.0.113.9:80 tcp (3 packets)\n\
             claude-chroot:   2001:db8::9 ipv6-icmp (1 packet)\n"
        );
        assert_eq!(report(&[]), "");
    }

    #[test]
    fn rfc3339_formats_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn write_log_appends_one_json_line_per_session() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.jsonl");
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let end = start + Duration::from_secs(60);
        for _ in 0..2 {
            write_log(
                &path,
                start,
                end,
                Path::new("/w"),
                NetworkMode::Allowlist,
                &sample(),
            )
            .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["start"], "2023-11-14T22:13:20Z");
        assert_eq!(v["end"], "2023-11-14T22:14:20Z");
        assert_eq!(v["workspace"], "/w");
        assert_eq!(v["mode"], "allowlist");
        assert_eq!(v["blocked"][0]["address"], "203.0.113.9");
        assert_eq!(v["blocked"][0]["port"], 80);
        assert_eq!(v["blocked"][0]["packets"], 3);
        assert_eq!(v["blocked"][1]["port"], serde_json::Value::Null);
    }
}
