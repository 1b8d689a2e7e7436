//! Probes on privileges: capabilities, setuid, mounts, chroot, pivot_root, user namespaces.

use std::path::PathBuf;

use nix::errno::Errno;

use super::{Finding, Plan, errno_name, refused_unless};
fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

pub(super) fn privileges() -> Finding {
    let f = Finding::new(
        "privileges",
        "keep root or capabilities",
        "read uid, gid, groups and the capability sets",
    );
    let mut wrong = Vec::new();
    if nix::unistd::getuid().is_root() || nix::unistd::geteuid().is_root() {
        wrong.push("runs as uid 0".to_string());
    }
    let gid = nix::unistd::getgid();
    if gid.as_raw() == 0 || nix::unistd::getegid().as_raw() == 0 {
        wrong.push("runs as gid 0".to_string());
    }
    let groups = nix::unistd::getgroups().unwrap_or_default();
    if groups.iter().any(|&g| g != gid) {
        wrong.push(format!("supplementary groups {groups:?}"));
    }
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let v = status_field(set);
        if !v.trim_start_matches('0').is_empty() {
            wrong.push(format!("{set} {v}"));
        }
    }
    if wrong.is_empty() {
        f.held("uid and gid not 0, no supplementary group, every capability set empty")
    } else {
        f.broken(wrong.join(", "))
    }
}

pub(super) fn setuid() -> Finding {
    let f = Finding::new(
        "setuid",
        "gain privileges through a setuid binary",
        "check NoNewPrivs and that every mount is nosuid",
    );
    let mut wrong = Vec::new();
    if status_field("NoNewPrivs") != "1" {
        wrong.push("NoNewPrivs is not set".to_string());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut suid_mounts = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(target), Some(opts)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        if !opts.split(',').any(|o| o == "nosuid") {
            suid_mounts.push(target.to_string());
        }
    }
    if !suid_mounts.is_empty() {
        wrong.push(format!("mounts without nosuid: {}", suid_mounts.join(" ")));
    }
    if mountinfo.is_empty() {
        wrong.push("cannot read /proc/self/mountinfo".into());
    }
    if wrong.is_empty() {
        f.held("NoNewPrivs 1 and every mount nosuid: the kernel ignores setuid bits here")
    } else {
        f.broken(wrong.join("; "))
    }
}

/// Run `f` in a forked child and return its errno (0 for success).
fn in_child(f: impl FnOnce() -> i32) -> std::result::Result<(), Errno> {
    // SAFETY: the probe is single-threaded; the child runs `f` and leaves with _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let code = f();
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => Err(Errno::from_raw(code)),
                _ => Err(Errno::ECHILD),
            }
        }
        Err(e) => Err(e),
    }
}

fn last_errno() -> i32 {
    Errno::last_raw()
}

pub(super) fn mount_probe(plan: &Plan) -> Finding {
    let dir = PathBuf::from(format!("/tmp/.ccr-mount-{}", plan.nonce));
    let f = Finding::new(
        "mount",
        "mount a file system",
        format!("mount a tmpfs on {}", dir.display()),
    );
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return f.broken(format!("cannot prepare {}: {e}", dir.display()));
    }
    let r = nix::mount::mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    if r.is_ok() {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir(&dir);
    f.judge(&[("mount".into(), refused_unless(r, "mounted"))])
}

pub(super) fn chroot_probe() -> Finding {
    let f = Finding::new("chroot", "chroot", "chroot(\"/tmp\") in a child process");
    let r = in_child(|| {
        // SAFETY: plain system call with a valid C string.
        if unsafe { libc::chroot(c"/tmp".as_ptr()) } == 0 {
            0
        } else {
            last_errno()
        }
    });
    f.judge(&[("chroot".into(), refused_unless(r, "changed root"))])
}

pub(super) fn pivot_root_probe() -> Finding {
    let f = Finding::new(
        "pivot-root",
        "pivot_root",
        "pivot_root on paths that do not exist (EPERM comes before the lookup)",
    );
    let missing = c"/.ccr-no-such-dir";
    // SAFETY: plain system call with valid C strings; the paths do not exist, so even a
    // permitted call changes nothing.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, missing.as_ptr(), missing.as_ptr()) };
    let r = if rc == 0 { Ok(()) } else { Err(Errno::last()) };
    let attempt = match r {
        Err(Errno::EPERM) => Ok("EPERM".to_string()),
        Err(e) => Err(format!("passed the permission check ({})", errno_name(e))),
        Ok(()) => Err("pivoted".to_string()),
    };
    f.judge(&[("pivot_root".into(), attempt)])
}

pub(super) fn userns_settings(plan: &Plan) -> Finding {
    let target = crate::settings::INSIDE_PATH;
    let f = Finding::new(
        "userns-settings",
        "mount over the settings in a new user namespace",
        format!("unshare(CLONE_NEWUSER|CLONE_NEWNS), map root, bind a file over {target}"),
    );
    let fake = PathBuf::from(format!("/tmp/.ccr-fake-{}", plan.nonce));
    if std::fs::write(&fake, b"{}\n").is_err() {
        return f.broken("cannot prepare the replacement file in /tmp");
    }
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let r = in_child(|| {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
            return e as i32;
        }
        let maps = [
            ("/proc/self/setgroups", "deny".to_string()),
            ("/proc/self/uid_map", format!("0 {uid} 1")),
            ("/proc/self/gid_map", format!("0 {gid} 1")),
        ];
        for (file, text) in maps {
            if std::fs::write(file, text).is_err() {
                return 200;
            }
        }
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
            return e as i32;
        }
        match nix::mount::mount(
            Some(&fake),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        ) {
            Ok(()) => 0,
            Err(e) => 100 + (e as i32 % 100),
        }
    });
    let _ = std::fs::remove_file(&fake);
    let attempt = match r {
        Ok(()) => Err("mounted a file over the settings".to_string()),
        Err(e) if (e as i32) < 100 => Ok(format!("unshare: {}", errno_name(e))),
        Err(e) => Err(format!(
            "created a user namespace (stopped later: code {})",
            e as i32
        )),
    };
    f.judge(&[("user namespace".into(), attempt)])
}

pub(super) fn nix_daemon() -> Finding {
    use crate::nix_daemon::{Answer, SOCKET_INSIDE, Trust, ask};
    let f = Finding::new(
        "nix-daemon",
        "gain root through a Nix daemon that trusts the agent",
        format!("greet the daemon at {SOCKET_INSIDE} and read whether it trusts the agent"),
    );
    match ask(std::path::Path::new(SOCKET_INSIDE)) {
        Ok(Answer::NoSocket) => f.held("no daemon socket"),
        Ok(Answer::Unusable(why)) => f.held(format!("socket not usable: {why}")),
        Ok(Answer::Greeted { trust, .. }) => match trust {
            Trust::NotTrusted => f.held("the daemon does not trust the agent"),
            Trust::Trusted => {
                f.broken("the daemon trusts the agent, so it would run its settings as root")
            }
            Trust::Unknown => f.broken("the daemon does not say whether it trusts the agent"),
        },
        Err(e) => f.held(format!("no answer from the daemon: {e:#}")),
    }
}
