//! The session's pids limit: a cgroup of its own whose `pids.max` bounds the processes and
//! threads of the sandbox, so that a fork bomb inside stops there instead of filling the
//! host's process table.
//!
//! The unified hierarchy (cgroup v2) is used when it offers the pids controller, otherwise
//! the v1 pids hierarchy. Each session gets `claude-chroot/ID` at the root of that
//! hierarchy; the session's init is moved into it before anything in the sandbox can fork,
//! and it is removed at teardown (or by `cleanup` after a crash).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::unistd::Pid;

/// The directory holding every session's cgroup, at the root of the hierarchy.
const PARENT: &str = "claude-chroot";

/// The smallest limit a configuration may set: init, the command, and a few processes.
pub const MIN_PIDS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    Unified,
    V1,
}

/// The mount point of the hierarchy with the pids controller, from `/proc/self/mountinfo`.
/// `controllers` reads a cgroup2 mount's `cgroup.controllers`.
fn find_pids_root(
    mountinfo: &str,
    controllers: impl Fn(&Path) -> Option<String>,
) -> Option<(PathBuf, Hierarchy)> {
    let mut v1 = None;
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        // Escaped mount points (spaces and the like) are not where cgroups live.
        if mount_point.contains('\\') {
            continue;
        }
        let mut fields = right.split(' ');
        let (fstype, super_options) = (fields.next(), fields.nth(1));
        match fstype {
            Some("cgroup2") => {
                let path = PathBuf::from(mount_point);
                if controllers(&path).is_some_and(|c| c.split_whitespace().any(|c| c == "pids")) {
                    return Some((path, Hierarchy::Unified));
                }
            }
            Some("cgroup")
                if v1.is_none()
                    && super_options.is_some_and(|o| o.split(',').any(|o| o == "pids")) =>
            {
                v1 = Some((PathBuf::from(mount_point), Hierarchy::V1));
            }
            _ => {}
        }
    }
    v1
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .with_context(|| format!("cannot write {value:?} to {}", path.display()))
}

fn mkdir(path: &Path) -> Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
            Err(e).with_context(|| format!("cannot create cgroup {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The parent of the sessions' cgroups, created with the pids controller enabled below it.
fn parent() -> Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let Some((root, hierarchy)) = find_pids_root(&mountinfo, |p| {
        std::fs::read_to_string(p.join("cgroup.controllers")).ok()
    }) else {
        bail!(
            "limits.pids is set but this kernel offers no pids cgroup controller (neither in \
             the unified hierarchy nor as a v1 hierarchy); enable it, or set limits.pids to \
             null to run without a pids limit"
        );
    };
    let parent = root.join(PARENT);
    if hierarchy == Hierarchy::Unified {
        // A cgroup offers pids.max only if its parent delegates the controller.
        let enabled = std::fs::read_to_string(root.join("cgroup.subtree_control"))
            .with_context(|| format!("read {}/cgroup.subtree_control", root.display()))?;
        if !enabled.split_whitespace().any(|c| c == "pids") {
            write(&root.join("cgroup.subtree_control"), "+pids")?;
        }
        mkdir(&parent)?;
        write(&parent.join("cgroup.subtree_control"), "+pids")?;
    } else {
        mkdir(&parent)?;
    }
    Ok(parent)
}

/// A session's cgroup with its limit set; nothing is in it until [`PidsCgroup::add`].
#[derive(Debug)]
pub struct PidsCgroup {
    dir: PathBuf,
}

impl PidsCgroup {
    /// Create `claude-chroot/ID` with `pids.max` = `limit`. `record` is called with its
    /// path before it is created, so that a crash cannot leave it unrecorded.
    pub fn create(
        session_id: &str,
        limit: u32,
        record: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PidsCgroup> {
        let dir = parent()?.join(session_id);
        record(&dir)?;
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
        let cgroup = PidsCgroup { dir };
        if let Err(e) = write(&cgroup.dir.join("pids.max"), &limit.to_string()) {
            let _ = remove(&cgroup.dir);
            return Err(e);
        }
        Ok(cgroup)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Move `pid` (and so everything it starts later) into the cgroup, on a thread of its
    /// own: the kernel makes the move wait for an RCU grace period, which the caller can
    /// spend on other work.
    pub fn attach(&self, pid: Pid) -> std::thread::JoinHandle<Result<()>> {
        let procs = self.dir.join("cgroup.procs");
        std::thread::spawn(move || write(&procs, &pid.to_string()))
    }
}

/// Kill whatever is left in a session's cgroup and remove it.
///
/// The processes of a session die with its PID namespace's init, which the caller has
/// reaped, so the cgroup is normally empty; anything still in it is killed all the same
/// (nothing inside can leave the cgroup). The kernel may take a moment to let go of
/// exiting processes, so a busy cgroup is retried briefly before giving up.
pub fn remove(dir: &Path) -> Result<()> {
    if dir.parent().and_then(Path::file_name) != Some(std::ffi::OsStr::new(PARENT)) {
        bail!("{} is not a session cgroup", dir.display());
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                kill_members(dir);
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot remove cgroup {} (processes left in it?)",
                        dir.display()
                    )
                });
            }
        }
    }
}

/// SIGKILL every process in the cgroup: at once through `cgroup.kill` where the kernel has
/// it (cgroup v2, Linux 5.14), else one by one from `cgroup.procs`.
fn kill_members(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/pids rw,nosuid shared:15 - cgroup cgroup rw,pids
";

    const UNIFIED: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
27 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn the_unified_hierarchy_is_used_when_it_has_pids() {
        let found = find_pids_root(UNIFIED, |_| Some("cpuset cpu io memory pids".into()));
        assert_eq!(found, Some(("/sys/fs/cgroup".into(), Hierarchy::Unified)));
    }

    #[test]
    fn a_hybrid_system_uses_the_v1_pids_hierarchy() {
        // The unified mount of a hybrid system has no controllers.
        let found = find_pids_root(HYBRID, |_| Some(String::new()));
        assert_eq!(found, Some(("/sys/fs/cgroup/pids".into(), Hierarchy::V1)));
    }

    #[test]
    fn no_pids_controller_is_none() {
        assert_eq!(find_pids_root(UNIFIED, |_| Some("cpu memory".into())), None);
        assert_eq!(find_pids_root("", |_| None), None);
    }
}
