//! The immutable inode flag (what `chattr +i` sets), through the FS_IOC_*FLAGS ioctls.
//!
//! Set on the session's copy of the managed settings so that not even a process with
//! root's uid in some namespace can change it while the session runs.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

const FS_IMMUTABLE_FL: libc::c_int = 0x10;

// The kernel declares these with `long` in the request number but reads and writes an
// `int` (see ioctl_iflags(2)).
nix::ioctl_read_bad!(
    fs_ioc_getflags,
    nix::request_code_read!(b'f', 1, std::mem::size_of::<libc::c_long>()),
    libc::c_int
);
nix::ioctl_write_ptr_bad!(
    fs_ioc_setflags,
    nix::request_code_write!(b'f', 2, std::mem::size_of::<libc::c_long>()),
    libc::c_int
);

/// Set or clear the immutable flag of a root-owned file (never a user-controlled path).
pub fn set(path: &Path, on: bool) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let fd = file.as_raw_fd();
    let mut flags: libc::c_int = 0;
    // SAFETY: fd is open for the duration of the call and flags is a valid c_int.
    unsafe { fs_ioc_getflags(fd, &mut flags) }
        .with_context(|| format!("FS_IOC_GETFLAGS {}", path.display()))?;
    let new = if on {
        flags | FS_IMMUTABLE_FL
    } else {
        flags & !FS_IMMUTABLE_FL
    };
    if new != flags {
        // SAFETY: as above; the kernel only reads the int behind the pointer.
        unsafe { fs_ioc_setflags(fd, &new) }.with_context(|| {
            format!(
                "FS_IOC_SETFLAGS {} (the state directory's file system must support \
                 immutable files, as ext4, xfs, btrfs and tmpfs do)",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// Whether the immutable flag is set.
pub fn is_set(path: &Path) -> Result<bool> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut flags: libc::c_int = 0;
    // SAFETY: the file is open for the duration of the call and flags is a valid c_int.
    unsafe { fs_ioc_getflags(file.as_raw_fd(), &mut flags) }
        .with_context(|| format!("FS_IOC_GETFLAGS {}", path.display()))?;
    Ok(flags & FS_IMMUTABLE_FL != 0)
}
