//! Per-session state under the state directory, its lock, and `cleanup`.
//!
//! Layout of the state directory (root-owned, 0755):
//!
//! ```text
//! sessions/ID/lock             flock held by the activator for the session's lifetime
//! sessions/ID/session.json     owner pid, workspace, immutable files
//! sessions/ID/root/            mount point of the sandbox's root (in its own mount ns)
//! sessions/ID/passwd, group, hosts, managed-settings.json
//! home/UID/                    persistent sandbox home, owned by UID, 0700
//! logs/ID.jsonl                session log
//! allowed-ips.conf             vetted allowlist (written by sync-ips)
//! ```
//!
//! A session whose lock can be taken has no live owner: `cleanup` removes what it left.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::immutable;

/// What `cleanup` needs to know about a session whose owner died.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub pid: u32,
    pub workspace: PathBuf,
    pub uid: u32,
    /// Files the session made immutable; cleared before removal.
    pub immutable: Vec<PathBuf>,
    /// Processes the session started on the host side (pasta), killed by `cleanup`.
    #[serde(default)]
    pub helpers: Vec<Helper>,
    /// The session's pids-limited cgroup, removed once its processes are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// A host-side process of a session, identified by pid and start time so that `cleanup`
/// never kills an unrelated process that reused the pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Helper {
    pub pid: u32,
    /// Start time in clock ticks after boot (field 22 of /proc/PID/stat).
    pub start: u64,
}

impl Helper {
    /// Identify a running process; `None` if it is gone.
    pub fn of(pid: u32) -> Option<Helper> {
        Some(Helper {
            pid,
            start: start_time(pid)?,
        })
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A live session: its directory and the lock that marks it live.
pub struct Session {
    pub id: String,
    pub dir: PathBuf,
    pub info: SessionInfo,
    _lock: Flock<File>,
}

/// Create the state directory if needed and check that only root can change it.
pub fn prepare_state_dir(state_dir: &Path) -> Result<()> {
    for sub in ["", "sessions", "home", "logs"] {
        let dir = state_dir.join(sub);
        match fs::symlink_metadata(&dir) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .recursive(true)
                    .create(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", dir.display())),
        }
        check_root_owned_dir(&dir)?;
    }
    Ok(())
}

fn check_root_owned_dir(dir: &Path) -> Result<()> {
    let md = fs::symlink_metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    if !md.file_type().is_dir() {
        bail!(
            "{} must be a directory, not a symlink or file",
            dir.display()
        );
    }
    if md.uid() != 0 || md.mode() & 0o022 != 0 {
        bail!(
            "{} must be owned by root and writable only by root (it is uid {}, mode {:o}): \
             fix it with chown root: and chmod go-w",
            dir.display(),
            md.uid(),
            md.mode() & 0o7777
        );
    }
    Ok(())
}

impl Session {
    /// Create and lock a new session directory.
    pub fn create(state_dir: &Path, workspace: &Path, uid: u32) -> Result<Session> {
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!("{pid}-{nanos:08x}");
        let dir = state_dir.join("sessions").join(&id);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .with_context(|| format!("cannot create session directory {}", dir.display()))?;
        let lock_file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(dir.join("lock"))
            .with_context(|| format!("cannot create {}/lock", dir.display()))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {}/lock", dir.display()))?;
        let info = SessionInfo {
            id: id.clone(),
            pid,
            workspace: workspace.to_path_buf(),
            uid,
            immutable: Vec::new(),
            helpers: Vec::new(),
            cgroup: None,
        };
        let session = Session {
            id,
            dir,
            info,
            _lock: lock,
        };
        session.save()?;
        Ok(session)
    }

    /// Record the session's state so that `cleanup` can undo it after a crash.
    pub fn save(&self) -> Result<()> {
        self.write_info(false)
    }

    fn write_info(&self, durable: bool) -> Result<()> {
        let path = self.dir.join("session.json");
        let tmp = self.dir.join("session.json.tmp");
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut text = serde_json::to_vec_pretty(&self.info)?;
        text.push(b'\n');
        f.write_all(&text)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Write a root-owned, world-readable file into the session directory.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<PathBuf> {
        let path = self.dir.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        // No fsync: these files live for one session, and after a crash `cleanup` removes
        // them; only session.json, which records immutable files, is synced.
        f.write_all(contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }

    /// Make a session file immutable, recording it first so a crash cannot leave the flag.
    pub fn make_immutable(&mut self, path: &Path) -> Result<()> {
        self.info.immutable.push(path.to_path_buf());
        // On disk before the flag is set, so that `cleanup` finds it even after a crash.
        self.write_info(true)?;
        immutable::set(path, true)
    }

    /// Remove everything the session left on the host. Consumes the session (and its lock).
    pub fn remove(self) -> Result<()> {
        remove_session_dir(&self.dir, &self.info)
    }
}

fn remove_session_dir(dir: &Path, info: &SessionInfo) -> Result<()> {
    for helper in &info.helpers {
        kill_helper(helper);
    }
    if let Some(cgroup) = &info.cgroup {
        crate::cgroup::remove(cgroup)?;
    }
    for path in &info.immutable {
        if path.exists() {
            immutable::set(path, false).with_context(|| {
                format!("cannot clear the immutable flag of {}", path.display())
            })?;
        }
    }
    fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// Kill a host-side helper of a dead session, but only if it still is the same process.
fn kill_helper(helper: &Helper) {
    if start_time(helper.pid) == Some(helper.start) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(helper.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A session directory found by `cleanup`.
struct Found {
    dir: PathBuf,
    info: Option<SessionInfo>,
    lock: Option<Flock<File>>,
}

fn scan(state_dir: &Path) -> Result<Vec<Found>> {
    let sessions = state_dir.join("sessions");
    let mut found = Vec::new();
    let entries = match fs::read_dir(&sessions) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", sessions.display())),
    };
    for entry in entries {
        let dir = entry?.path();
        let info = fs::read(dir.join("session.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<SessionInfo>(&b).ok());
        let lock = match File::open(dir.join("lock")) {
            Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => Some(l),
                Err((_, nix::Error::EWOULDBLOCK)) => None,
                Err((_, e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}/lock", dir.display()));
                }
            },
            // A session that died before creating its lock has no owner either; a fresh
            // one is mid-creation only for an instant, and removing it then fails its start.
            Err(_) => File::open(&dir)
                .ok()
                .and_then(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).ok()),
        };
        found.push(Found { dir, info, lock });
    }
    Ok(found)
}

fn describe(f: &Found) -> String {
    match &f.info {
        Some(i) => format!(
            "session {} (pid {}, workspace {})",
            i.id,
            i.pid,
            i.workspace.display()
        ),
        None => format!("session {}", f.dir.display()),
    }
}

/// Remove what dead sessions left behind; with `purge`, the whole state directory.
pub fn cleanup(state_dir: &Path, purge: bool) -> Result<Vec<String>> {
    let found = scan(state_dir)?;
    let live: Vec<String> = found
        .iter()
        .filter(|f| f.lock.is_none())
        .map(describe)
        .collect();
    if purge && !live.is_empty() {
        bail!(
            "{} is in use by {}: end it first, then run cleanup --purge again",
            state_dir.display(),
            live.join(", ")
        );
    }
    let mut actions = Vec::new();
    for f in found {
        if f.lock.is_none() {
            actions.push(format!("kept live {}", describe(&f)));
            continue;
        }
        let info = f.info.clone().unwrap_or(SessionInfo {
            id: String::new(),
            pid: 0,
            workspace: PathBuf::new(),
            uid: 0,
            immutable: Vec::new(),
            helpers: Vec::new(),
            cgroup: None,
        });
        let text = describe(&f);
        remove_session_dir(&f.dir, &info)?;
        actions.push(format!("removed dead {text}"));
    }
    if purge && state_dir.exists() {
        // No session is live and none can start meanwhile without a lock we would see
        // next time; the homes and logs go too.
        fs::remove_dir_all(state_dir)
            .with_context(|| format!("cannot remove {}", state_dir.display()))?;
        actions.push(format!("removed {}", state_dir.display()));
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_helper_is_identified_by_pid_and_start_time() {
        let me = Helper::of(std::process::id()).unwrap();
        assert_eq!(start_time(me.pid), Some(me.start));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let other = Helper::of(child.id()).unwrap();
        // A different start time means a different process: it is left alone.
        kill_helper(&Helper {
            pid: other.pid,
            start: other.start + 1,
        });
        assert!(child.try_wait().unwrap().is_none());
        kill_helper(&other);
        assert!(child.wait().unwrap().signal().is_some());
    }
}
