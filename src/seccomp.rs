//! The seccomp filter installed last before the agent's command is executed.
//!
//! A deny list in the spirit of Docker's default profile, aimed at what an unprivileged
//! process could still use against the sandbox: creating a user namespace (in which it
//! would be root and could mount over the managed settings), the kernel keyring it may
//! share with the invoking user, terminal injection, and the usual kernel attack surface.
//! The architecture check kills any other ABI (i386 `int 0x80`), and on x86_64 the x32
//! system call range is refused as a whole, so no alias escapes the list.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Refused outright with EPERM.
const DENIED: &[(&str, libc::c_long)] = &[
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("keyctl", libc::SYS_keyctl),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("setns", libc::SYS_setns),
    ("syslog", libc::SYS_syslog),
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("quotactl", libc::SYS_quotactl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    #[cfg(target_arch = "x86_64")]
    ("modify_ldt", libc::SYS_modify_ldt),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
];

/// Refused with ENOSYS, so that libraries fall back to an older call we can inspect.
const UNAVAILABLE: &[(&str, libc::c_long)] = &[
    // clone3 passes its flags in memory, out of a filter's reach; glibc falls back to
    // clone, whose flags are checked below.
    ("clone3", libc::SYS_clone3),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// Namespace flags refused in `clone` and `unshare`. Only CLONE_NEWUSER is open to an
/// unprivileged process; the others need capabilities it does not have, and are refused
/// too so the rule does not rest on that.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// ioctl requests refused: faking terminal input, and the Linux console's own.
// The request type is `c_ulong` or `c_int` depending on the C library.
#[allow(clippy::unnecessary_cast)]
const DENIED_IOCTLS: &[u64] = &[libc::TIOCSTI as u64, libc::TIOCLINUX as u64];

/// The socket families the agent may create.
const SOCKET_FAMILIES: &[libc::c_int] = &[
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

fn arch() -> Result<TargetArch> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| anyhow::anyhow!("seccomp: unsupported architecture: {e:?}"))
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, len, op, value).context("seccomp condition")
}

fn deny_filter() -> Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in DENIED {
        rules.insert(*nr, vec![]);
    }
    let ns_rules = |arg: u8| -> Result<Vec<SeccompRule>> {
        NAMESPACE_FLAGS
            .iter()
            .map(|&flag| {
                SeccompRule::new(vec![cond(
                    arg,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )?])
                .context("seccomp rule")
            })
            .collect()
    };
    rules.insert(libc::SYS_unshare, ns_rules(0)?);
    rules.insert(libc::SYS_clone, ns_rules(0)?);
    let ioctl_rules = DENIED_IOCTLS
        .iter()
        .map(|&req| {
            // The request is an unsigned int: compare the low 32 bits only.
            SeccompRule::new(vec![cond(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                req,
            )?])
            .context("seccomp rule")
        })
        .collect::<Result<Vec<_>>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    // Sockets of the families a coding agent uses; the others (vsock reaches the
    // hypervisor and local VMs past the network namespace, and many are rarely used
    // kernel code) are refused.
    let other_family = SOCKET_FAMILIES
        .iter()
        .map(|&family| cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, family as u64))
        .collect::<Result<Vec<_>>>()?;
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(other_family).context("seccomp rule")?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .context("seccomp deny filter")?;
    let mut program: BpfProgram = filter.try_into().context("compile seccomp deny filter")?;
    refuse_x32(&mut program);
    Ok(program)
}

fn unavailable_filter() -> Result<BpfProgram> {
    let rules = UNAVAILABLE.iter().map(|(_, nr)| (*nr, vec![])).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .context("seccomp ENOSYS filter")?;
    filter.try_into().context("compile seccomp ENOSYS filter")
}

/// On x86_64, refuse every x32 system call (numbers with bit 30 set): x32 shares the
/// x86_64 audit architecture, so its aliases of the denied calls would pass otherwise.
#[cfg(target_arch = "x86_64")]
fn refuse_x32(program: &mut BpfProgram) {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JGE_K: u16 = 0x05 | 0x30;
    const BPF_RET_K: u16 = 0x06;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    // The compiled program starts with the three-instruction architecture check.
    let check = [
        ins(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        ins(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(
            BPF_RET_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
    ];
    program.splice(3..3, check);
}

#[cfg(not(target_arch = "x86_64"))]
fn refuse_x32(_program: &mut BpfProgram) {}

/// Compile both filters. Done before the fork that runs the agent, so that a failure is
/// reported while setup errors can still be.
pub fn compile() -> Result<Vec<BpfProgram>> {
    Ok(vec![unavailable_filter()?, deny_filter()?])
}

/// Install the compiled filters on the calling thread. `no_new_privs` must be set.
pub fn install(programs: &[BpfProgram]) -> Result<()> {
    if crate::weaken::active(crate::weaken::Knob::Seccomp) {
        return Ok(());
    }
    for p in programs {
        seccompiler::apply_filter(p).context("install seccomp filter")?;
    }
    Ok(())
}

/// Names of the calls the filter refuses, for documentation and tests.
pub fn denied_names() -> Vec<&'static str> {
    DENIED.iter().chain(UNAVAILABLE).map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every listed call with arguments no kernel accepts (null pointers, fd -1), so that
    /// without the filter each fails harmlessly with an errno of its own.
    fn calls() -> Vec<(&'static str, libc::c_long, [libc::c_long; 4], libc::c_long)> {
        let mut calls: Vec<_> = DENIED
            .iter()
            .map(|(n, nr)| (*n, *nr, [-1, 0, 0, 0], libc::EPERM as libc::c_long))
            .chain(
                UNAVAILABLE
                    .iter()
                    .map(|(n, nr)| (*n, *nr, [0, 0, 0, 0], libc::ENOSYS as libc::c_long)),
            )
            .collect();
        let eperm = libc::EPERM as libc::c_long;
        calls.push((
            "unshare(NEWUSER)",
            libc::SYS_unshare,
            [libc::CLONE_NEWUSER as _, 0, 0, 0],
            eperm,
        ));
        calls.push((
            "unshare(NEWNS)",
            libc::SYS_unshare,
            [libc::CLONE_NEWNS as _, 0, 0, 0],
            eperm,
        ));
        calls.push((
            "ioctl(TIOCSTI)",
            libc::SYS_ioctl,
            [-1, libc::TIOCSTI as _, 0, 0],
            eperm,
        ));
        calls.push((
            "ioctl(TIOCLINUX)",
            libc::SYS_ioctl,
            [-1, libc::TIOCLINUX as _, 0, 0],
            eperm,
        ));
        for (name, family, kind) in [
            ("socket(AF_VSOCK)", libc::AF_VSOCK, libc::SOCK_STREAM),
            ("socket(AF_ALG)", libc::AF_ALG, libc::SOCK_SEQPACKET),
        ] {
            calls.push((
                name,
                libc::SYS_socket,
                [family as _, kind as _, 0, 0],
                eperm,
            ));
        }
        // Still allowed: the families in SOCKET_FAMILIES.
        for family in SOCKET_FAMILIES {
            let args = [*family as _, libc::SOCK_DGRAM as _, 0, 0];
            calls.push(("socket(allowed family)", libc::SYS_socket, args, 0));
        }
        calls
    }

    /// In a forked child, as nobody with `no_new_privs` (so that no call does harm even
    /// unfiltered): each call's errno before and after installing the filters.
    fn errnos_before_and_after() -> Vec<(libc::c_long, libc::c_long)> {
        let programs = compile().unwrap();
        let calls = calls();
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes system calls on memory prepared before the fork,
        // then _exits; it allocates nothing.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain system calls in the child, on the pipe and prepared buffers.
            unsafe {
                if libc::geteuid() == 0 {
                    libc::setgroups(0, std::ptr::null());
                    libc::setresgid(65534, 65534, 65534);
                    libc::setresuid(65534, 65534, 65534);
                }
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let run = |fd: libc::c_int| {
                    for (_, nr, a, _) in &calls {
                        let rc = libc::syscall(*nr, a[0], a[1], a[2], a[3]);
                        let e: libc::c_long = if rc == -1 {
                            *libc::__errno_location() as libc::c_long
                        } else {
                            0
                        };
                        libc::write(fd, (&e as *const libc::c_long).cast(), 8);
                    }
                };
                run(fds[1]);
                for p in &programs {
                    if seccompiler::apply_filter(p).is_err() {
                        libc::_exit(3);
                    }
                }
                run(fds[1]);
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut raw = Vec::new();
        use std::io::Read;
        // SAFETY: the read end is ours; File takes ownership and closes it.
        let mut r = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
        r.read_to_end(&mut raw).unwrap();
        let mut status = 0;
        // SAFETY: pid is our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0, "the child failed to install the filter");
        let e: Vec<libc::c_long> = raw
            .chunks(8)
            .map(|c| libc::c_long::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        let n = calls.len();
        assert_eq!(e.len(), 2 * n);
        (0..n).map(|i| (e[i], e[n + i])).collect()
    }

    #[test]
    fn every_listed_call_is_refused_and_the_filter_is_what_refuses_it() {
        let calls = calls();
        let results = errnos_before_and_after();
        let mut wrong = Vec::new();
        let mut by_filter = Vec::new();
        for ((name, _, _, want), (before, after)) in calls.iter().zip(&results) {
            if after != want {
                wrong.push(format!("{name}: errno {after}, want {want}"));
            }
            if before != want {
                by_filter.push(*name);
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        // Many calls fail for nobody anyway; these are refused by the filter alone.
        for name in [
            "keyctl",
            "add_key",
            "setns",
            "name_to_handle_at",
            "mount_setattr",
            "clone3",
            "io_uring_setup",
            "unshare(NEWUSER)",
            "ioctl(TIOCSTI)",
            "socket(AF_VSOCK)",
            "socket(AF_ALG)",
        ] {
            assert!(by_filter.contains(&name), "{name} not shown: {by_filter:?}");
        }
    }
}
