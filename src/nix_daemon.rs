//! The host's Nix daemon as the agent meets it: does it trust the agent's uid?
//!
//! `/nix` is visible inside, its daemon socket included, so that `nix` in the sandbox can
//! build through the host's daemon. The daemon decides what a client may do from the
//! client's uid and gid (`SO_PEERCRED`), which inside are the invoking user's. A client
//! the daemon trusts (`trusted-users` in nix.conf, by name or through a group such as
//! `@wheel`) may pass it any setting, `build-hook`, `post-build-hook` and `sandbox = false`
//! among them, and so run code as root on the host. A sandbox that hands such a socket to
//! the agent is no sandbox, so `enter` asks the daemon first, with the agent's credentials,
//! and refuses to start when the daemon trusts them or cannot say.
//!
//! The question is the worker protocol's opening handshake (protocol 1.35 and later, Nix
//! 2.15 and later, report the client's trust in it); no store operation is sent.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::Mount;
use crate::identity::Identity;

/// Where `nix` inside looks for the daemon (`NIX_REMOTE=daemon`).
pub const SOCKET_INSIDE: &str = "/nix/var/nix/daemon-socket/socket";

const WORKER_MAGIC_1: u64 = 0x6e69_7863;
const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// The protocol version this client speaks: the first that reports trust.
const CLIENT_VERSION: u64 = (1 << 8) | 35;
/// Longest version string accepted from the daemon.
const MAX_VERSION_STRING: u64 = 256;
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the daemon answered about the client's trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Trusted,
    NotTrusted,
    /// The daemon speaks a protocol older than 1.35, which does not say.
    Unknown,
}

/// What happened when the agent's credentials met the daemon socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nothing at the socket's path: no daemon to reach.
    NoSocket,
    /// The socket exists but the agent cannot use it (no listener, no permission, or the
    /// daemon closed the connection before greeting: `allowed-users`).
    Unusable(String),
    /// The daemon greeted the client.
    Greeted {
        protocol: (u64, u64),
        version: Option<String>,
        trust: Trust,
    },
}

/// The host path that appears at [`SOCKET_INSIDE`] in the sandbox, from the configured
/// mounts (the deepest mount that covers it wins, as it does inside).
pub fn host_socket(mounts: &[Mount]) -> Option<PathBuf> {
    let inside = Path::new(SOCKET_INSIDE);
    mounts
        .iter()
        .filter_map(|m| {
            let rest = inside.strip_prefix(&m.target).ok()?;
            Some((m.target.components().count(), m.source.join(rest)))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, host)| host)
}

/// Ask the daemon at `socket` whether it trusts the calling credentials.
///
/// The daemon reads the client's credentials when it connects, so the caller decides
/// whose question this is (see [`check`], which asks as the agent).
pub fn ask(socket: &Path) -> Result<Answer> {
    match std::fs::symlink_metadata(socket) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Answer::NoSocket),
        Err(e) => return Ok(Answer::Unusable(format!("stat: {e}"))),
        Ok(_) => {}
    }
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return Ok(Answer::Unusable(format!("connect: {e}"))),
    };
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(TIMEOUT)))
        .context("set a timeout on the daemon socket")?;
    greet(&mut stream).with_context(|| format!("Nix daemon handshake on {}", socket.display()))
}

/// The client side of the worker protocol's greeting, up to the trust flag.
fn greet(s: &mut UnixStream) -> Result<Answer> {
    // A daemon that refuses the user (`allowed-users`) hangs up before greeting, which
    // the client sees on its first write or its first read, whichever comes later.
    let magic = match write_u64(s, WORKER_MAGIC_1).and_then(|()| read_u64(s)) {
        Ok(m) => m,
        Err(e) if is_hang_up(&e) => {
            return Ok(Answer::Unusable("the daemon closed the connection".into()));
        }
        Err(e) => return Err(e),
    };
    if magic != WORKER_MAGIC_2 {
        bail!("the peer is not a Nix daemon (greeting {magic:#x})");
    }
    let daemon = read_u64(s)?;
    if daemon >> 8 != 1 {
        bail!(
            "unsupported Nix daemon protocol {}.{}",
            daemon >> 8,
            daemon & 0xff
        );
    }
    write_u64(s, CLIENT_VERSION)?;
    let protocol = daemon.min(CLIENT_VERSION);
    let minor = protocol & 0xff;
    // Obsolete CPU affinity (none) and reserveSpace (false), as every client still sends.
    if minor >= 14 {
        write_u64(s, 0)?;
    }
    if minor >= 11 {
        write_u64(s, 0)?;
    }
    let version = if minor >= 33 {
        Some(read_string(s)?)
    } else {
        None
    };
    let trust = if minor >= 35 {
        match read_u64(s)? {
            0 => Trust::Unknown,
            1 => Trust::Trusted,
            2 => Trust::NotTrusted,
            other => bail!("the daemon sent trust flag {other}, which is not 0, 1 or 2"),
        }
    } else {
        Trust::Unknown
    };
    Ok(Answer::Greeted {
        protocol: (protocol >> 8, minor),
        version,
        trust,
    })
}

/// Refuse to start a session whose agent the host's Nix daemon would trust.
pub fn check(mounts: &[Mount], identity: &Identity) -> Result<Answer> {
    let Some(socket) = host_socket(mounts) else {
        return Ok(Answer::NoSocket);
    };
    // The daemon judges the credentials of the connecting process: ask as the agent.
    let answer = identity.run_as(|| ask(&socket)).with_context(|| {
        format!(
            "cannot tell whether the Nix daemon at {} trusts uid {}, so the session does \
             not start: check that the daemon is healthy (`nix store info`)",
            socket.display(),
            identity.uid
        )
    })?;
    let uid = identity.uid;
    match &answer {
        Answer::Greeted {
            trust: Trust::Trusted,
            ..
        } => bail!(
            "the Nix daemon at {} trusts uid {uid} (trusted-users in nix.conf, by name or \
             group), so the agent could pass it settings that run code as root: remove this \
             user and its groups from trusted-users (on NixOS, nix.settings.trusted-users), \
             or start claude-chroot as a user the daemon does not trust",
            socket.display()
        ),
        Answer::Greeted {
            trust: Trust::Unknown,
            protocol: (major, minor),
            version,
        } => bail!(
            "the Nix daemon at {} ({}, protocol {major}.{minor}) does not say whether it trusts \
             uid {uid}, so the session does not start: upgrade the daemon to Nix 2.15 or newer",
            socket.display(),
            version.as_deref().unwrap_or("version unknown")
        ),
        _ => Ok(answer),
    }
}

/// One line for `-v`.
pub fn describe(answer: &Answer) -> String {
    match answer {
        Answer::NoSocket => "no daemon socket in the sandbox".into(),
        Answer::Unusable(why) => format!("socket not usable by the agent ({why})"),
        Answer::Greeted {
            protocol: (major, minor),
            version,
            trust,
        } => format!(
            "{} (protocol {major}.{minor}), {}",
            version.as_deref().unwrap_or("version unknown"),
            match trust {
                Trust::Trusted => "trusts the agent",
                Trust::NotTrusted => "does not trust the agent",
                Trust::Unknown => "trust unknown",
            }
        ),
    }
}

fn is_hang_up(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        )
    })
}

fn write_u64(s: &mut UnixStream, v: u64) -> Result<()> {
    s.write_all(&v.to_le_bytes())?;
    Ok(())
}

fn read_u64(s: &mut UnixStream) -> Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A protocol string: its length, its bytes, zeros to the next multiple of 8.
fn read_string(s: &mut UnixStream) -> Result<String> {
    let len = read_u64(s)?;
    if len > MAX_VERSION_STRING {
        bail!("the daemon sent a {len}-byte version string");
    }
    let padded = len.div_ceil(8) * 8;
    let mut b = vec![0u8; padded as usize];
    s.read_exact(&mut b)?;
    b.truncate(len as usize);
    String::from_utf8(b).context("the daemon's version is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(source: &str, target: &str) -> Mount {
        Mount {
            source: source.into(),
            target: target.into(),
            writable: false,
            optional: false,
        }
    }

    #[test]
    fn the_deepest_mount_over_the_socket_names_its_host_path() {
        assert_eq!(host_socket(&[mount("/usr", "/usr")]), None);
        assert_eq!(
            host_socket(&[mount("/nix", "/nix")]),
            Some(PathBuf::from("/nix/var/nix/daemon-socket/socket"))
        );
        assert_eq!(
            host_socket(&[
                mount("/nix", "/nix"),
                mount("/srv/sock", "/nix/var/nix/daemon-socket"),
                mount("/other", "/nix/store"),
            ]),
            Some(PathBuf::from("/srv/sock/socket"))
        );
        // A component prefix, not a string prefix.
        assert_eq!(host_socket(&[mount("/x", "/ni")]), None);
    }
}
