//! The persistent sandbox home and its refresh from the invoking user's `~/.claude`.
//!
//! Everything here runs as the invoking user (through [`Identity::run_as`]) and works on
//! directory descriptors with `O_NOFOLLOW`, so a symlink in `~/.claude` or one the agent
//! left in the sandbox home can neither reveal nor overwrite a file the user could not.
//! Files are replaced by `renameat` of a fresh temporary, which replaces a symlink itself
//! instead of writing through it.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};

use crate::identity::Identity;

/// What a refresh did, for `-v`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RefreshReport {
    pub copied: Vec<PathBuf>,
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// Prepare `state_dir/home/UID` (as root: the parent is root-owned) and open it as the user.
pub fn open_sandbox_home(state_dir: &Path, identity: &Identity) -> Result<(PathBuf, OwnedFd)> {
    let path = state_dir.join("home").join(identity.uid.to_string());
    match nix::unistd::mkdir(&path, Mode::from_bits_truncate(0o700)) {
        Ok(()) => {
            nix::unistd::chown(&path, Some(identity.uid), Some(identity.gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Err(Errno::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("mkdir {}", path.display())),
    }
    let st = nix::sys::stat::lstat(&path).with_context(|| format!("lstat {}", path.display()))?;
    if kind(&st) != SFlag::S_IFDIR || st.st_uid != identity.uid.as_raw() {
        bail!(
            "sandbox home {} is not a directory owned by uid {}: remove it with \
             claude-chroot cleanup --purge or fix its owner",
            path.display(),
            identity.uid
        );
    }
    let fd = identity.run_as(|| {
        open_dir(None, path.as_os_str()).with_context(|| format!("open {}", path.display()))
    })?;
    Ok((path, fd))
}

/// Copy the user's `~/.claude` into the sandbox home, as the user.
///
/// A file is copied when the sandbox has none or an older one, so what the agent changes
/// persists until the user changes the same file on the host. Symlinks into the Nix store
/// are kept as symlinks; other symlinks, devices, sockets and fifos are skipped, and so is
/// what the user cannot read.
pub fn refresh(identity: &Identity, home: BorrowedFd<'_>) -> Result<RefreshReport> {
    let mut report = RefreshReport::default();
    let Some(host_home) = &identity.host_home else {
        return Ok(report);
    };
    let source = host_home.join(".claude");
    identity.run_as(|| {
        // `~/.claude` itself may be a symlink (into a dotfiles checkout or a persistent
        // volume): follow it, since this runs as the user and so reaches only what the
        // user can read anyway. Nothing below it is followed.
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let src = match nix::fcntl::open(source.as_path(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("open {}", source.display())),
        };
        let dst = ensure_dir(home, OsStr::new(".claude"), 0o700)
            .context("create .claude in the sandbox home")?;
        copy_tree(&src, &dst, Path::new(".claude"), &mut report)
            .with_context(|| format!("refresh from {}", source.display()))
    })?;
    Ok(report)
}

/// Write the skeleton's home files (`.bashrc`, `shell.nix`) into the sandbox home, as the user.
pub fn install_skeleton_files(
    identity: &Identity,
    skeleton_home: &Path,
    home: BorrowedFd<'_>,
) -> Result<()> {
    let entries = match std::fs::read_dir(skeleton_home) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", skeleton_home.display())),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let contents = std::fs::read(entry.path())
            .with_context(|| format!("read {}", entry.path().display()))?;
        let name = entry.file_name();
        identity.run_as(|| {
            replace_file(home, &name, &contents, 0o644, None)
                .with_context(|| format!("write {:?} in the sandbox home", name))
        })?;
    }
    Ok(())
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn open_dir(at: Option<BorrowedFd<'_>>, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match at {
        Some(dir) => openat(dir, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    }
}

/// Open directory `name` in `parent`, replacing whatever non-directory is there.
fn ensure_dir(parent: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<OwnedFd> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if kind(&st) == SFlag::S_IFDIR => {}
        Ok(_) => {
            unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                .with_context(|| format!("unlink {name:?}"))?;
            mkdirat(parent, name, Mode::from_bits_truncate(mode))
                .with_context(|| format!("mkdir {name:?}"))?;
        }
        Err(Errno::ENOENT) => {
            mkdirat(parent, name, Mode::from_bits_truncate(mode))
                .with_context(|| format!("mkdir {name:?}"))?;
        }
        Err(e) => return Err(e).with_context(|| format!("stat {name:?}")),
    }
    open_dir(Some(parent), name).with_context(|| format!("open {name:?}"))
}

fn copy_tree(src: &OwnedFd, dst: &OwnedFd, rel: &Path, report: &mut RefreshReport) -> Result<()> {
    let dup = nix::unistd::dup(src).context("dup")?;
    let mut dir = Dir::from_fd(dup).context("read directory")?;
    let mut names: Vec<OsString> = Vec::new();
    for entry in dir.iter() {
        let entry = entry.context("read directory entry")?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_os_string());
        }
    }
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let st = fstatat(src, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .with_context(|| format!("stat {}", path.display()))?;
        match kind(&st) {
            SFlag::S_IFDIR => {
                let sub_src = match open_dir(Some(src.as_fd()), &name) {
                    Ok(fd) => fd,
                    Err(Errno::EACCES) => {
                        report.skipped.push((path, "not readable"));
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
                };
                let sub_dst = ensure_dir(dst.as_fd(), &name, st.st_mode & 0o777 | 0o700)?;
                copy_tree(&sub_src, &sub_dst, &path, report)?;
            }
            SFlag::S_IFREG => {
                if is_up_to_date(dst.as_fd(), &name, &st) {
                    continue;
                }
                let file = match openat(
                    src,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(Errno::EACCES) => {
                        report.skipped.push((path, "not readable"));
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
                };
                let mut contents = Vec::new();
                std::fs::File::from(file)
                    .read_to_end(&mut contents)
                    .with_context(|| format!("read {}", path.display()))?;
                let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
                replace_file(
                    dst.as_fd(),
                    &name,
                    &contents,
                    st.st_mode & 0o777,
                    Some(mtime),
                )
                .with_context(|| format!("write {}", path.display()))?;
                report.copied.push(path);
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(src, name.as_os_str())
                    .with_context(|| format!("readlink {}", path.display()))?;
                if Path::new(&target).starts_with("/nix/store/") {
                    replace_symlink(dst.as_fd(), &name, &target)
                        .with_context(|| format!("symlink {}", path.display()))?;
                    report.copied.push(path);
                } else {
                    report.skipped.push((path, "symlink outside the Nix store"));
                }
            }
            _ => report.skipped.push((path, "not a regular file")),
        }
    }
    Ok(())
}

/// The sandbox copy is a regular file at least as new as the source.
fn is_up_to_date(dst: BorrowedFd<'_>, name: &OsStr, src: &FileStat) -> bool {
    match fstatat(dst, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => {
            kind(&st) == SFlag::S_IFREG
                && (st.st_mtime, st.st_mtime_nsec) >= (src.st_mtime, src.st_mtime_nsec)
        }
        Err(_) => false,
    }
}

fn temp_name(name: &OsStr) -> OsString {
    let mut t = OsString::from(".claude-chroot-tmp-");
    t.push(name);
    t
}

/// Atomically replace `name` in `dir` with a new file holding `contents`.
fn replace_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    contents: &[u8],
    mode: u32,
    mtime: Option<TimeSpec>,
) -> Result<()> {
    let tmp = temp_name(name);
    let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    let fd = openat(
        dir,
        tmp.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode & 0o777),
    )
    .with_context(|| format!("create {tmp:?}"))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(contents)?;
    nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(mode & 0o777))?;
    if let Some(m) = mtime {
        futimens(file.as_fd(), &m, &m)?;
    }
    drop(file);
    renameat(dir, tmp.as_os_str(), dir, name).with_context(|| format!("rename to {name:?}"))?;
    Ok(())
}

fn replace_symlink(dir: BorrowedFd<'_>, name: &OsStr, target: &OsStr) -> Result<()> {
    let tmp = temp_name(name);
    let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    symlinkat(target, dir, tmp.as_os_str())?;
    renameat(dir, tmp.as_os_str(), dir, name)?;
    Ok(())
}

/// Raw descriptor number, for binding by `/proc/self/fd/N`.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}
