//! The sandbox's file system: a plan built from the configuration, and its execution in
//! the child's fresh mount namespace.
//!
//! The plan is plain data so that it can be reviewed and snapshotted. Execution follows
//! bubblewrap's order: a tmpfs becomes the new root first (`pivot_root`, old root kept at
//! `/oldroot`), so every target is created and resolved inside the new root and sources
//! are reached through `/oldroot`; then the old root is detached and `/` made read-only.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, lstat};
use serde::Serialize;

use crate::config::Config;
use crate::weaken::{self, Knob};

/// Where the old root stays reachable until it is detached.
const OLD_ROOT: &str = "/oldroot";

/// Where a bind mount comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// A host path, resolved by root: only for root-controlled paths (store, skeleton,
    /// session files, the configured mounts).
    Host(PathBuf),
    /// A detached mount tree the parent cloned from a directory or file it opened as
    /// the invoking user (workspace, sandbox home, protected workspace paths).
    Fd {
        name: String,
        fd: RawFd,
        is_dir: bool,
    },
}

/// One step of building the sandbox root, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "step")]
pub enum Step {
    Tmpfs {
        target: PathBuf,
        mode: u32,
    },
    Bind {
        source: Source,
        target: PathBuf,
        writable: bool,
        /// Missing sources are skipped instead of failing.
        optional: bool,
    },
    Proc {
        target: PathBuf,
    },
    Devpts {
        target: PathBuf,
    },
    Symlink {
        target: PathBuf,
        points_to: PathBuf,
    },
    /// `/dev/null` bound read-only over a kernel file that tells the agent about the
    /// host, when the kernel has it.
    Mask {
        target: PathBuf,
    },
    /// A detached tree attached over an existing path inside the workspace, which the
    /// user and the agent control: the target is resolved beneath `/workspace` without
    /// following any symlink, never created, and the mount goes onto that descriptor.
    WorkspaceBind {
        source: Source,
        relative: PathBuf,
        writable: bool,
    },
}

/// Host paths and descriptors a session contributes to the plan.
#[derive(Debug, Clone)]
pub struct SessionMounts {
    pub workspace_fd: RawFd,
    pub home_fd: RawFd,
    pub passwd: PathBuf,
    pub group: PathBuf,
    pub hosts: PathBuf,
    pub managed_settings: PathBuf,
    /// Workspace-relative paths bound onto themselves, in order: detached trees, whether
    /// each is a directory, and whether it stays writable (read-only for protected paths;
    /// writable for their parents, made mount points only so that they cannot be renamed).
    pub protected: Vec<(PathBuf, RawFd, bool, bool)>,
    /// The activator itself, bound read-only at [`crate::probe::INSIDE_PATH`] for `selftest`.
    pub probe_binary: Option<PathBuf>,
}

/// Device nodes bound from the host, as bubblewrap's `--dev` does.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Files under /proc hidden behind /dev/null.
const PROC_MASKED: [&str; 5] = ["keys", "key-users", "timer_list", "sched_debug", "kcore"];

/// The inside path of the workspace.
pub const WORKSPACE: &str = "/workspace";

/// Build the ordered mount plan for a session.
pub fn plan(config: &Config, s: &SessionMounts) -> Vec<Step> {
    let mut steps = vec![
        // A fresh proc first, so that /proc/self/fd/N names the parent's descriptors.
        Step::Proc {
            target: "/proc".into(),
        },
    ];
    // Files of the fresh proc that still describe the host, as container runtimes mask
    // them: /proc/keys lists the descriptions of every key the agent's uid may view, the
    // invoking user's own keyring included (keyctl itself is refused by seccomp).
    for file in PROC_MASKED {
        steps.push(Step::Mask {
            target: Path::new("/proc").join(file),
        });
    }
    steps.extend([Step::Bind {
        source: Source::Host(config.skeleton.join("etc")),
        target: "/etc".into(),
        writable: false,
        optional: false,
    }]);
    for (file, target) in [
        (&s.passwd, "/etc/passwd"),
        (&s.group, "/etc/group"),
        (&s.hosts, "/etc/hosts"),
        (&s.managed_settings, crate::settings::INSIDE_PATH),
    ] {
        steps.push(Step::Bind {
            source: Source::Host(file.clone()),
            target: target.into(),
            writable: false,
            optional: false,
        });
    }
    for m in &config.mounts {
        steps.push(Step::Bind {
            source: Source::Host(m.source.clone()),
            target: m.target.clone(),
            writable: m.writable,
            optional: m.optional,
        });
    }
    steps.push(Step::Tmpfs {
        target: "/dev".into(),
        mode: 0o755,
    });
    for dev in DEVICES {
        steps.push(Step::Bind {
            source: Source::Host(Path::new("/dev").join(dev)),
            target: Path::new("/dev").join(dev),
            writable: true,
            optional: false,
        });
    }
    steps.push(Step::Devpts {
        target: "/dev/pts".into(),
    });
    steps.push(Step::Symlink {
        target: "/dev/ptmx".into(),
        points_to: "pts/ptmx".into(),
    });
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: Path::new("/dev").join(name),
            points_to: to.into(),
        });
    }
    for (target, mode) in [("/dev/shm", 0o1777), ("/tmp", 0o1777), ("/run", 0o755)] {
        steps.push(Step::Tmpfs {
            target: target.into(),
            mode,
        });
    }
    steps.push(Step::Symlink {
        target: "/var/tmp".into(),
        points_to: "/tmp".into(),
    });
    if let Some(binary) = &s.probe_binary {
        steps.push(Step::Bind {
            source: Source::Host(binary.clone()),
            target: crate::probe::INSIDE_PATH.into(),
            writable: false,
            optional: false,
        });
    }
    steps.push(Step::Bind {
        source: Source::Fd {
            name: "sandbox home".into(),
            fd: s.home_fd,
            is_dir: true,
        },
        target: config.user.home.clone(),
        writable: true,
        optional: false,
    });
    steps.push(Step::Bind {
        source: Source::Fd {
            name: "workspace".into(),
            fd: s.workspace_fd,
            is_dir: true,
        },
        target: WORKSPACE.into(),
        writable: true,
        optional: false,
    });
    for (rel, fd, is_dir, writable) in &s.protected {
        steps.push(Step::WorkspaceBind {
            source: Source::Fd {
                name: format!("workspace/{}", rel.display()),
                fd: *fd,
                is_dir: *is_dir,
            },
            relative: rel.clone(),
            writable: *writable,
        });
    }
    steps
}

// mount_setattr(2) is not wrapped by nix or libc yet.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Set attributes on a mount and every mount below it.
fn set_recursive(target: &Path, attrs: u64) -> Result<()> {
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())?;
    mount_setattr(
        libc::AT_FDCWD,
        &path,
        libc::AT_RECURSIVE as libc::c_uint,
        attrs,
    )
    .with_context(|| format!("mount_setattr {} (recursive)", target.display()))
}

/// mount_setattr(2) setting `attrs`, with the path resolved as `dirfd` and `flags` say.
fn mount_setattr(
    dirfd: RawFd,
    path: &std::ffi::CStr,
    flags: libc::c_uint,
    attrs: u64,
) -> Result<()> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: dirfd is AT_FDCWD or an open descriptor, path a valid C string, and attr a
    // correctly sized mount_attr for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Clone the directory behind `fd` (opened as the user) into a detached mount tree.
///
/// The clone is made in the activator's mount namespace and attached in the sandbox's
/// with `move_mount`: a plain bind through `/proc/self/fd/N` would be refused there
/// (the source mount belongs to another namespace), and re-resolving the path in the
/// child would reopen the window for a swapped symlink that opening once closed.
pub fn detached_tree(fd: BorrowedFd<'_>, what: &str) -> Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let empty = c"";
    // SAFETY: fd is open, the path is an empty C string used with AT_EMPTY_PATH.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            empty.as_ptr(),
            OPEN_TREE_CLONE
                | libc::O_CLOEXEC as libc::c_uint
                | libc::AT_EMPTY_PATH as libc::c_uint
                | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("open_tree(OPEN_TREE_CLONE) of the {what}"));
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// Set attributes on a detached mount tree and every mount in it, before it is attached.
fn set_tree_attrs(tree: RawFd, attrs: u64) -> Result<()> {
    let flags = (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint;
    mount_setattr(tree, c"", flags, attrs).context("mount_setattr on a detached tree (recursive)")
}

/// Attach the detached tree `tree` onto the file or directory open as `onto`.
fn attach_tree_onto(tree: RawFd, onto: BorrowedFd<'_>) -> Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    // SAFETY: both descriptors are open and both paths are empty C strings used with the
    // EMPTY_PATH flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            onto.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("move_mount onto a descriptor");
    }
    Ok(())
}

/// The attributes every bind gets: `nosuid` and `nodev` (outside /dev), read-only unless
/// writable.
fn bind_attrs(target: &Path, writable: bool) -> u64 {
    // No setuid or device file gains anything inside, wherever it comes from.
    let mut attrs = if weaken::active(Knob::Nosuid) {
        0
    } else {
        MOUNT_ATTR_NOSUID
    };
    if !target.starts_with("/dev") {
        attrs |= MOUNT_ATTR_NODEV;
    }
    if !writable {
        attrs |= MOUNT_ATTR_RDONLY;
    }
    attrs
}

/// Attach a detached mount tree at `target`.
fn attach_tree(tree: RawFd, target: &Path) -> Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let empty = c"";
    let to = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())?;
    // SAFETY: tree is an open detached mount, both paths are valid C strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("move_mount onto {}", target.display()));
    }
    Ok(())
}

/// Refuse targets with `..` or symlinks on the way: nothing may redirect a mount.
fn check_target(target: &Path) -> Result<()> {
    if !target.is_absolute() || target.components().any(|c| c == Component::ParentDir) {
        bail!(
            "mount target {} must be absolute without ..",
            target.display()
        );
    }
    let mut p = PathBuf::from("/");
    for c in target.components().skip(1) {
        p.push(c);
        match lstat(&p) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
                bail!(
                    "mount target {} goes through symlink {}",
                    target.display(),
                    p.display()
                )
            }
            _ => {}
        }
    }
    Ok(())
}

/// Create `target` (and its parents) as a directory or an empty file, like `mkdir -p`.
fn create_mount_point(target: &Path, is_dir: bool) -> Result<()> {
    check_target(target)?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let existing = lstat(target);
    if existing.is_ok() {
        return Ok(());
    }
    if is_dir {
        std::fs::create_dir(target).with_context(|| format!("cannot create {}", target.display()))
    } else {
        std::fs::File::create(target)
            .map(drop)
            .with_context(|| format!("cannot create {}", target.display()))
    }
}

fn is_dir(path: &Path) -> Result<Option<bool>> {
    match nix::sys::stat::stat(path) {
        Ok(st) => Ok(Some(
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR,
        )),
        Err(nix::Error::ENOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("stat {}", path.display())),
    }
}

/// Build the sandbox root at `new_root` and switch to it. Runs in the child, as root, in
/// its own mount namespace.
pub fn build_root(new_root: &Path, steps: &[Step]) -> Result<()> {
    // Keep mount events from leaking back to the host (mount_namespaces(7)); slave rather
    // than private so that an unmount on the host still reaches the sandbox.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("make / a recursive slave mount")?;

    // Mount the tmpfs that becomes the new root and switch to it, keeping the old root at
    // /oldroot so sources are reachable while every target resolves inside the new root.
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .with_context(|| format!("mount tmpfs on {}", new_root.display()))?;
    std::env::set_current_dir(new_root).with_context(|| format!("chdir {}", new_root.display()))?;
    std::fs::create_dir("oldroot").context("mkdir oldroot in the new root")?;
    nix::unistd::pivot_root(".", "oldroot").context("pivot_root into the new root")?;
    std::env::set_current_dir("/").context("chdir /")?;

    for step in steps {
        run_step(step).with_context(|| format!("sandbox mount step {step:?}"))?;
    }

    // Detach the old root: after this no host path outside the binds is reachable.
    umount2(OLD_ROOT, MntFlags::MNT_DETACH).context("detach the old root")?;
    std::fs::remove_dir(OLD_ROOT).context("remove /oldroot")?;
    // Make the root tmpfs itself read-only; the mounts on it keep their own flags.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .context("remount / read-only")?;
    Ok(())
}

fn old(path: &Path) -> PathBuf {
    Path::new(OLD_ROOT).join(path.strip_prefix("/").unwrap_or(path))
}

fn run_step(step: &Step) -> Result<()> {
    match step {
        Step::Tmpfs { target, mode } => {
            create_mount_point(target, true)?;
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(format!("mode={mode:o}").as_str()),
            )
            .with_context(|| format!("mount tmpfs on {}", target.display()))?;
        }
        Step::Proc { target } => {
            create_mount_point(target, true)?;
            mount(
                Some("proc"),
                target,
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .with_context(|| format!("mount proc on {}", target.display()))?;
        }
        Step::Devpts { target } => {
            create_mount_point(target, true)?;
            // A private devpts instance: the sandbox's terminals are not the host's, and
            // at most 256 of them, so the agent cannot use up the kernel's pty limit.
            mount(
                Some("devpts"),
                target,
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620,max=256"),
            )
            .with_context(|| format!("mount devpts on {}", target.display()))?;
        }
        Step::Symlink { target, points_to } => {
            check_target(target)?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::os::unix::fs::symlink(points_to, target)
                .with_context(|| format!("symlink {}", target.display()))?;
        }
        Step::Bind {
            source,
            target,
            writable,
            optional,
        } => {
            match source {
                Source::Host(p) => {
                    let src = old(p);
                    let Some(dir) = is_dir(&src)? else {
                        if *optional {
                            return Ok(());
                        }
                        bail!("mount source {} does not exist", p.display());
                    };
                    create_mount_point(target, dir)?;
                    mount(
                        Some(&src),
                        target,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None::<&str>,
                    )
                    .with_context(|| format!("bind {} on {}", p.display(), target.display()))?;
                }
                Source::Fd { fd, is_dir, .. } => {
                    create_mount_point(target, *is_dir)?;
                    attach_tree(*fd, target)?;
                }
            }
            set_recursive(target, bind_attrs(target, *writable))?;
        }
        Step::Mask { target } => {
            check_target(target)?;
            match lstat(target) {
                Err(nix::Error::ENOENT) => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("lstat {}", target.display())),
                Ok(_) => {}
            }
            let null = old(Path::new("/dev/null"));
            mount(
                Some(&null),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind /dev/null over {}", target.display()))?;
            set_recursive(target, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)?;
        }
        Step::WorkspaceBind {
            source,
            relative,
            writable,
        } => {
            let Source::Fd { fd, is_dir, .. } = source else {
                bail!("a workspace bind takes a detached tree, not a host path");
            };
            let target = Path::new(WORKSPACE).join(relative);
            // Resolve the target once, beneath the workspace and through no symlink: the
            // agent of another session on the same workspace may be swapping its parents.
            let workspace = nix::fcntl::open(
                WORKSPACE,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("open {WORKSPACE}"))?;
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_MAGICLINKS,
                );
            let onto = openat2(&workspace, relative.as_path(), how).with_context(|| {
                format!(
                    "open {} beneath the workspace without symlinks (it must still exist \
                     as it did at start)",
                    target.display()
                )
            })?;
            let st = nix::sys::stat::fstat(&onto)
                .with_context(|| format!("fstat {}", target.display()))?;
            // A plain file or a directory, as at start: never a symlink, device or socket.
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            let want = if *is_dir {
                SFlag::S_IFDIR
            } else {
                SFlag::S_IFREG
            };
            if kind != want {
                bail!(
                    "{} is no longer the {} it was when the session started",
                    target.display(),
                    if *is_dir { "directory" } else { "regular file" }
                );
            }
            set_tree_attrs(*fd, bind_attrs(&target, *writable))
                .with_context(|| format!("set the attributes of {}", target.display()))?;
            attach_tree_onto(*fd, onto.as_fd())
                .with_context(|| format!("attach {}", target.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"{
              "version": 1,
              "stateDir": "/srv/claude-chroot",
              "skeleton": "/nix/store/00000000000000000000000000000000-claude-chroot-skeleton",
              "user": { "name": "claude", "uid": null, "gid": null, "home": "/home/claude" },
              "mounts": [
                { "source": "/nix", "target": "/nix" },
                { "source": "/srv/cache", "target": "/cache", "writable": true, "optional": true }
              ],
              "environment": { "pass": ["TERM"], "set": { "PATH": "/bin" } },
              "tools": { "shell": "/bin/bash", "nft": "/sbin/nft", "pasta": "/bin/pasta" },
              "managedSettings": {
                "default": "/etc/managed-settings.json",
                "custom": ".config/claude-chroot/managed-settings.json"
              },
              "network": {
                "mode": "allowlist", "allowlistFile": null, "domains": [], "tcpPorts": [443],
                "udpPorts": [], "nameservers": [], "resolveTimeoutMs": 1000
              },
              "workspace": { "protectedPaths": [".git/config"], "quarantine": false },
              "limits": { "pids": null }
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn mount_plan_matches_snapshot() {
        let session = Path::new("/srv/claude-chroot/sessions/1-0");
        let steps = plan(
            &config(),
            &SessionMounts {
                workspace_fd: 10,
                home_fd: 11,
                passwd: session.join("passwd"),
                group: session.join("group"),
                hosts: session.join("hosts"),
                managed_settings: session.join("managed-settings.json"),
                protected: vec![(".git/config".into(), 12, false, false)],
                probe_binary: None,
            },
        );
        insta::assert_json_snapshot!(steps);
    }

    #[test]
    fn the_workspace_is_bound_before_the_protected_paths_over_it() {
        let steps = plan(
            &config(),
            &SessionMounts {
                workspace_fd: 10,
                home_fd: 11,
                passwd: "/p".into(),
                group: "/g".into(),
                hosts: "/h".into(),
                managed_settings: "/m".into(),
                protected: vec![(".git/config".into(), 12, false, false)],
                probe_binary: Some("/a".into()),
            },
        );
        let position = |target: &str| {
            steps
                .iter()
                .position(|s| matches!(s, Step::Bind { target: t, .. } if t == Path::new(target)))
                .unwrap()
        };
        let protected = steps
            .iter()
            .position(|s| matches!(s, Step::WorkspaceBind { relative, .. } if relative == Path::new(".git/config")))
            .unwrap();
        assert!(position("/workspace") < protected);
        assert!(position("/etc") < position("/etc/claude-code/managed-settings.json"));
        let run = steps
            .iter()
            .position(|s| matches!(s, Step::Tmpfs { target: t, .. } if t == Path::new("/run")))
            .unwrap();
        assert!(run < position(crate::probe::INSIDE_PATH));
    }

    #[test]
    fn targets_through_symlinks_or_parent_components_are_refused() {
        assert!(check_target(Path::new("/a/../etc")).is_err());
        assert!(check_target(Path::new("relative")).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("link")).unwrap();
        assert!(check_target(&dir.path().join("link/etc")).is_err());
        assert!(check_target(&dir.path().join("plain")).is_ok());
    }
}
