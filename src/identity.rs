//! Who invoked the activator, who the agent runs as, and acting as that user.
//!
//! The activator runs as root, but every file operation on a path the user or the agent
//! controls is done with the invoking user's credentials (see [`Identity::run_as`]), so a
//! symlink planted there cannot make root read or write a file the user could not.

use std::ffi::CString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use nix::unistd::{Gid, Uid, User, getgroups, setgroups, setresgid, setresuid};

use crate::config;

/// Uid and gid the agent gets when root starts the activator directly and none is configured.
pub const DEFAULT_ID: u32 = 1000;

/// The identity the agent runs with, and the host account whose files it may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups of the host account, used only while acting as the user on
    /// the host; the agent itself runs with none.
    pub groups: Vec<Gid>,
    /// Home directory of the host account, when one exists for `uid`.
    pub host_home: Option<PathBuf>,
    /// True when the identity came from sudo's `SUDO_UID`.
    pub via_sudo: bool,
}

impl Identity {
    /// Work out the identity from sudo's variables and the configured user.
    ///
    /// Through sudo the agent runs as the invoking user, so nobody gains another user's
    /// access to a workspace of their choosing; a configured uid or gid that differs is
    /// refused.
    /// Root starting the activator directly gets the configured ids (1000 by default).
    pub fn resolve(user: &config::User) -> Result<Identity> {
        let sudo_uid = env_id("SUDO_UID")?;
        let sudo_gid = env_id("SUDO_GID")?;
        let (uid, gid, via_sudo) = match sudo_uid.filter(|&u| u != 0) {
            Some(invoker) => {
                if let Some(configured) = user.uid
                    && configured != invoker
                {
                    bail!(
                        "the sandbox is configured for uid {configured} but you are uid \
                         {invoker}: ask an administrator for a configuration with your uid, \
                         or set user.uid to null so the sandbox runs as whoever invokes it"
                    );
                }
                let Some(gid) = sudo_gid else {
                    bail!("SUDO_UID is set but SUDO_GID is not");
                };
                // The group too: a configured gid would hand the agent, and the host-side
                // work done as the user, a group the invoker may not be in.
                if let Some(configured) = user.gid
                    && configured != gid
                {
                    bail!(
                        "the sandbox is configured for gid {configured} but your group is gid \
                         {gid}: ask an administrator for a configuration with your gid, or set \
                         user.gid to null so the sandbox runs with the invoker's group"
                    );
                }
                (invoker, gid, true)
            }
            None => (
                user.uid.unwrap_or(DEFAULT_ID),
                user.gid.unwrap_or(DEFAULT_ID),
                false,
            ),
        };
        if uid == 0 || gid == 0 {
            bail!("the agent must not run as uid or gid 0");
        }
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        let account = User::from_uid(uid).context("cannot read the user database")?;
        let (host_home, groups) = match account {
            Some(account) => {
                let name = CString::new(account.name.as_bytes())
                    .context("user name contains a NUL byte")?;
                let groups = nix::unistd::getgrouplist(&name, gid)
                    .with_context(|| format!("getgrouplist({})", account.name))?;
                (Some(account.dir), groups)
            }
            None => (None, vec![gid]),
        };
        Ok(Identity {
            uid,
            gid,
            groups,
            host_home,
            via_sudo,
        })
    }

    /// Run `f` with this identity's effective uid, gid and groups, then become root again.
    ///
    /// Only the effective ids change (the real and saved ids stay 0), so the user cannot
    /// signal or trace the process meanwhile and root is regained afterwards. The activator
    /// is single-threaded, so the credential change covers every file operation in `f`.
    pub fn run_as<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let saved_groups = getgroups().context("getgroups")?;
        let keep = Uid::from_raw(u32::MAX);
        let keep_g = Gid::from_raw(u32::MAX);
        setgroups(&self.groups).context("setgroups to the invoking user's groups")?;
        setresgid(keep_g, self.gid, keep_g).context("setresgid to the invoking user")?;
        setresuid(keep, self.uid, keep).context("setresuid to the invoking user")?;
        let result = f();
        // Regaining root must not fail silently: continuing with the user's ids would make
        // later steps fail confusingly, continuing as root after a failed switch is worse.
        let restored = setresuid(keep, Uid::from_raw(0), keep)
            .and_then(|_| setresgid(keep_g, Gid::from_raw(0), keep_g))
            .and_then(|_| setgroups(&saved_groups));
        if let Err(e) = restored {
            eprintln!("claude-chroot: cannot regain root after acting as the user: {e}");
            std::process::exit(125);
        }
        result
    }
}

fn env_id(name: &str) -> Result<Option<u32>> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => v
            .parse()
            .map(Some)
            .with_context(|| format!("{name}={v} is not a numeric id")),
        Err(_) => Ok(None),
    }
}

/// Refuse to continue unless running as root.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "claude-chroot-activate must run as root: use the claude-chroot command, \
             which goes through sudo"
        );
    }
    Ok(())
}
