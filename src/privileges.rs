//! Dropping root for good, in the order that leaves nothing behind.

use anyhow::{Context, Result, bail};
use caps::CapSet;
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};

use crate::weaken::{self, Knob};

/// Drop every privilege: bounding set, supplementary groups, gid, uid, then
/// `no_new_privs`.
///
/// The bounding set must go first because dropping from it needs CAP_SETPCAP; groups and
/// gid before uid because changing them needs CAP_SETGID, which the uid change removes
/// (capabilities(7), "Effect of user ID changes on capabilities").
pub fn drop_to(uid: Uid, gid: Gid) -> Result<()> {
    if weaken::active(Knob::Privileges) {
        return Ok(());
    }
    if uid.is_root() || gid.as_raw() == 0 {
        bail!("refusing to run the agent as uid or gid 0");
    }
    caps::clear(None, CapSet::Bounding).context("clear the capability bounding set")?;
    caps::clear(None, CapSet::Ambient).context("clear the ambient capability set")?;
    setgroups(&[]).context("setgroups([])")?;
    setresgid(gid, gid, gid).with_context(|| format!("setresgid({gid})"))?;
    setresuid(uid, uid, uid).with_context(|| format!("setresuid({uid})"))?;
    // Neither execve of a setuid binary nor file capabilities may give anything back.
    if !weaken::active(Knob::NoNewPrivs) {
        nix::sys::prctl::set_no_new_privs().context("prctl(PR_SET_NO_NEW_PRIVS)")?;
    }

    // Verify rather than trust: a kernel that kept anything fails the session.
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
        CapSet::Bounding,
    ] {
        let left = caps::read(None, set).with_context(|| format!("read {set:?} capabilities"))?;
        if !left.is_empty() {
            bail!("capabilities left in the {set:?} set after dropping privileges: {left:?}");
        }
    }
    if setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
        bail!("could regain uid 0 after dropping privileges");
    }
    Ok(())
}
