//! The one network change the sandbox makes itself: bringing up its own loopback.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

nix::ioctl_read_bad!(siocgifflags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifflags, libc::SIOCSIFFLAGS, libc::ifreq);

/// Make IPv6 addresses usable at once in this network namespace.
///
/// pasta adds its addresses right before the agent starts; with duplicate address
/// detection they would stay tentative for a second or more, and IPv6 connections would
/// fail meanwhile. The namespace has a single link to pasta, so there is nothing to detect.
/// These sysctls are per network namespace: the host's are untouched.
pub fn skip_duplicate_address_detection() -> Result<()> {
    for scope in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{scope}/accept_dad");
        match std::fs::write(&path, "0") {
            Ok(()) => {}
            // A kernel without IPv6 has nothing to configure.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("write 0 to {path}")),
        }
    }
    Ok(())
}

/// Set `lo` up in the current network namespace.
pub fn loopback_up() -> Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket for interface ioctls")?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq naming "lo"; the kernel fills ifru_flags.
    unsafe { siocgifflags(sock.as_raw_fd(), &mut req) }.context("SIOCGIFFLAGS lo")?;
    // SAFETY: reading and setting the flags member of the union the kernel just filled.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        siocsifflags(sock.as_raw_fd(), &req)
    }
    .context("SIOCSIFFLAGS lo up")?;
    Ok(())
}
