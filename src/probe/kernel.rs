//! Probes on the kernel: the keyring, the kernel log, modules, the firewall ruleset.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::{Finding, Plan, errno_name, refused_unless};
pub(super) fn keyring() -> Finding {
    let f = Finding::new(
        "keyring",
        "read the invoking user's kernel keyring",
        "keyctl(KEYCTL_GET_KEYRING_ID, @u)",
    );
    const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
    const KEY_SPEC_USER_KEYRING: libc::c_long = -4;
    // SAFETY: keyctl with integer arguments only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_GET_KEYRING_ID,
            KEY_SPEC_USER_KEYRING,
            0,
        )
    };
    let attempt = match (rc, Errno::last()) {
        (-1, Errno::EPERM) => Ok("EPERM".to_string()),
        (-1, e) => Err(format!("reached the keyring code ({})", errno_name(e))),
        (id, _) => Err(format!("got the user keyring (id {id})")),
    };
    f.judge(&[("keyctl".into(), attempt)])
}

pub(super) fn kernel_log() -> Finding {
    let f = Finding::new(
        "kernel-log",
        "read the kernel log",
        "syslog(SYSLOG_ACTION_READ_ALL), open /dev/kmsg and /proc/kmsg",
    );
    let mut buf = [0u8; 64];
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), buf.len() as libc::c_int) };
    let mut attempts = vec![(
        "syslog".to_string(),
        if rc >= 0 {
            Err("read the kernel log".to_string())
        } else {
            Ok(errno_name(Errno::last()))
        },
    )];
    // Open only: reading /proc/kmsg would take messages away from the host's logger.
    for p in ["/dev/kmsg", "/proc/kmsg"] {
        let r = nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK,
            nix::sys::stat::Mode::empty(),
        );
        attempts.push((p.to_string(), refused_unless(r.map(drop), "opened")));
    }
    f.judge(&attempts)
}

pub(super) fn kernel_module() -> Finding {
    let f = Finding::new(
        "kernel-module",
        "load a kernel module",
        "init_module with an empty image (EPERM comes before the image is read)",
    );
    // SAFETY: a zero-length image; the kernel checks permission first and would then
    // reject the image as invalid, so nothing can be loaded.
    let rc = unsafe { libc::syscall(libc::SYS_init_module, c"".as_ptr(), 0usize, c"".as_ptr()) };
    let attempt = match (rc, Errno::last()) {
        (-1, Errno::EPERM) => Ok("EPERM".to_string()),
        // The filter refuses with EPERM; ENOSYS comes from a kernel without modules, so
        // the call got past the sandbox.
        (-1, Errno::ENOSYS) => Err("not refused by the sandbox (ENOSYS: this kernel has \
                                    no module support)"
            .to_string()),
        (-1, e) => Err(format!("passed the permission check ({})", errno_name(e))),
        _ => Err("loaded".to_string()),
    };
    f.judge(&[("init_module".into(), attempt)])
}

/// Ask nf_tables over netlink to create a table; its answer says whether we may.
pub(super) fn nftables(plan: &Plan) -> Finding {
    let f = Finding::new(
        "nftables",
        "change the firewall",
        "create an nftables table over a NETLINK_NETFILTER socket",
    );
    let attempt = match nft_new_table(&format!("ccr_probe_{}", plan.nonce)) {
        Ok(0) => Err("created a table".to_string()),
        Ok(e) => Ok(errno_name(Errno::from_raw(e))),
        Err(e) => Ok(format!("netlink socket: {}", errno_name(e))),
    };
    f.judge(&[("netlink".into(), attempt)])
}

/// Send a NEWTABLE batch; the kernel's error code for it (0 for success).
fn nft_new_table(name: &str) -> std::result::Result<i32, Errno> {
    const NETLINK_NETFILTER: i32 = 12;
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_NEWTABLE: u16 = 0;
    const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
    const NFNL_MSG_BATCH_END: u16 = 0x11;
    const NFTA_TABLE_NAME: u16 = 1;
    const NFPROTO_INET: u8 = 1;
    const REQUEST: u16 = libc::NLM_F_REQUEST as u16;
    const ACK: u16 = libc::NLM_F_ACK as u16;
    const CREATE: u16 = libc::NLM_F_CREATE as u16;

    // nlmsghdr, then nfgenmsg (family, version 0, resource id big-endian), then attributes.
    fn message(kind: u16, flags: u16, seq: u32, family: u8, res: u16, attrs: &[u8]) -> Vec<u8> {
        let len = 16 + 4 + attrs.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[family, 0]);
        m.extend_from_slice(&res.to_be_bytes());
        m.extend_from_slice(attrs);
        m
    }
    let mut attr = Vec::new();
    let value = [name.as_bytes(), &[0]].concat();
    attr.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
    attr.extend_from_slice(&value);
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut batch = message(
        NFNL_MSG_BATCH_BEGIN,
        REQUEST,
        1,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    batch.extend(message(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE,
        REQUEST | ACK | CREATE,
        2,
        NFPROTO_INET,
        0,
        &attr,
    ));
    batch.extend(message(
        NFNL_MSG_BATCH_END,
        REQUEST,
        3,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    ));

    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fd was just created and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setting a timeval option with its correct size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: a zeroed sockaddr_nl addresses the kernel.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: the buffer and the address are valid for their lengths.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            batch.as_ptr().cast(),
            batch.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(Errno::last());
    }
    // Read until the answer to the NEWTABLE message (sequence 2), or any error.
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(Errno::last());
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if kind == libc::NLMSG_ERROR as u16 && off + 20 <= n {
                let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                return Ok(-code);
            }
            if len < 16 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}
