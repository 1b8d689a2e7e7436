//! Workspace files that run code on the host later (git hooks and config, agent and editor
//! settings, `.envrc`): read-only inside when they exist, reported at exit when created or
//! changed.
//!
//! Everything here touches the user's workspace and so runs as the invoking user, on
//! descriptors, without following symlinks out of the workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::identity::Identity;

/// Bounds of the walk over one protected path. The activator walks as root what the agent
/// left, so no tree may overflow its stack, fill its memory or hold the exit for long:
/// past a bound the path is reported as not compared in full instead of read further.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Directories open at once, one inside the other.
    depth: usize,
    /// Names listed over the whole path.
    entries: usize,
    /// File content hashed over the whole path; past it files are compared by metadata.
    hashed_bytes: u64,
}

const LIMITS: Limits = Limits {
    depth: 128,
    entries: 100_000,
    hashed_bytes: 64 << 20,
};

/// Files larger than this are compared by size, times and inode instead of content.
const MAX_HASHED_FILE: u64 = 1 << 20;

/// How a protected path looked: one hash over everything in it, symlinks not followed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    digest: [u8; 32],
    /// Why the walk stopped before the end; the digest covers what it read until then.
    incomplete: Option<String>,
}

/// How a protected path looked at start; `None` where it did not exist.
type Fingerprint = Option<Snapshot>;

/// A protected path that the session created, changed or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: PathBuf,
    /// `created`, `changed`, `removed`, or `possibly changed` when it could not be
    /// compared in full.
    pub change: &'static str,
    pub why: &'static str,
    /// Why it could not be compared in full: a bound of the walk, or what could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<PathBuf>,
    /// Why quarantine left it in place (a rename across file systems, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_moved: Option<String>,
}

impl Change {
    /// Whether quarantine moves it: what the session created or changed, which is the
    /// agent's version. A removed path has nothing left to move.
    pub fn to_quarantine(&self) -> bool {
        matches!(self.change, "created" | "changed")
    }
}

/// A workspace path bound onto itself inside the sandbox.
pub struct Bind {
    pub rel: PathBuf,
    /// Detached mount tree of the path, cloned from a descriptor opened as the user.
    pub tree: OwnedFd,
    pub is_dir: bool,
    /// A parent of protected paths, bound writable only to be a mount point: rename(2)
    /// and rmdir(2) refuse one with EBUSY, so it cannot be swapped for a fresh directory.
    pub writable: bool,
}

/// The protection prepared for one session.
pub struct Protection {
    /// Existing protected paths made read-only, and their existing parents pinned, in
    /// path order so that a parent is mounted before what lies inside it.
    pub binds: Vec<Bind>,
    /// Lines to show at start (symlinks that can only be watched, `.git` elsewhere).
    pub notes: Vec<String>,
    before: BTreeMap<PathBuf, Fingerprint>,
}

/// Why a protected path matters, in one line.
pub fn why(path: &Path) -> &'static str {
    let s = path.to_string_lossy();
    let name = path.file_name().unwrap_or_default();
    if s.ends_with("hooks") || s.contains("hooks/") {
        "git on the host runs these hooks at the next commit, checkout or push"
    } else if name == "config" || name == "config.worktree" {
        "git on the host reads it: core.hooksPath, core.fsmonitor and aliases run commands"
    } else if name == ".git" || name == "commondir" {
        "git on the host takes the repository, its config and hooks from the directory it names"
    } else if s.contains(".git/modules") {
        "git on the host reads the config and runs the hooks of these submodule repositories"
    } else if s.contains(".git/worktrees") {
        "git on the host reads the config and common directory of these linked worktrees here"
    } else if name == "info" {
        "git on the host reads its attributes and excludes: they pick filter and diff \
         drivers and hide files from git status"
    } else if s.ends_with(".gitmodules") {
        "git on the host uses its URLs and update commands for submodules"
    } else if s.starts_with(".claude") {
        "Claude Code on the host reads its hooks, permissions and commands"
    } else if s.starts_with(".mcp.json") {
        "Claude Code on the host starts the MCP servers it lists"
    } else if s.starts_with(".envrc") {
        "direnv on the host runs it when you enter the directory"
    } else if s.starts_with(".vscode") || s.starts_with(".idea") {
        "the editor on the host runs its tasks and applies its settings"
    } else {
        "it may make the host run code when you use the project outside the sandbox"
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// The hash being built over one protected path, and how much of the bounds it used.
struct Walk {
    limits: Limits,
    hash: Sha256,
    listed: usize,
    hashed: u64,
    incomplete: Option<String>,
}

/// What one entry turned out to be.
enum Entry {
    Absent,
    Leaf,
    Dir(OwnedFd),
}

impl Walk {
    fn new(limits: Limits) -> Walk {
        Walk {
            limits,
            hash: Sha256::new(),
            listed: 0,
            hashed: 0,
            incomplete: None,
        }
    }

    /// Add one length-prefixed field, so that two different trees never make one stream.
    fn field(&mut self, bytes: &[u8]) {
        self.hash.update((bytes.len() as u64).to_le_bytes());
        self.hash.update(bytes);
    }

    fn number(&mut self, n: u64) {
        self.field(&n.to_le_bytes());
    }

    /// Stop the walk here, saying why; the marker keeps a stopped walk from hashing like a
    /// complete one.
    fn stop(&mut self, reason: String) {
        self.field(b"incomplete");
        self.incomplete.get_or_insert(reason);
    }

    fn finish(self) -> Snapshot {
        Snapshot {
            digest: self.hash.finalize().into(),
            incomplete: self.incomplete,
        }
    }

    /// Hash what `name` in `dir` is, without following a symlink in its place; a directory
    /// comes back open for listing. `shown` is its workspace-relative path.
    fn record(&mut self, dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Entry {
        let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Entry::Absent,
            Err(e) => {
                self.stop(format!("cannot stat {}: {}", shown.display(), e.desc()));
                return Entry::Leaf;
            }
        };
        self.field(shown.as_os_str().as_bytes());
        let mode = u64::from(st.st_mode & 0o7777);
        match kind(&st) {
            SFlag::S_IFLNK => match readlinkat(dir, name) {
                Ok(target) => {
                    self.field(b"symlink");
                    self.field(target.as_bytes());
                }
                Err(e) => self.stop(format!(
                    "cannot read link {}: {}",
                    shown.display(),
                    e.desc()
                )),
            },
            SFlag::S_IFREG => {
                self.field(b"file");
                self.number(mode);
                match self.content(dir, name, &st) {
                    Ok(Some(digest)) => {
                        self.field(b"content");
                        self.field(&digest);
                    }
                    // Without the content, the metadata a write cannot leave as it was:
                    // the change time is set by the kernel on every write or utimensat.
                    Ok(None) => {
                        self.field(b"metadata");
                        for n in [
                            st.st_size as u64,
                            st.st_mtime as u64,
                            st.st_mtime_nsec as u64,
                            st.st_ctime as u64,
                            st.st_ctime_nsec as u64,
                            st.st_ino,
                        ] {
                            self.number(n);
                        }
                    }
                    Err(e) => self.stop(format!("cannot read {}: {e}", shown.display())),
                }
            }
            SFlag::S_IFDIR => {
                self.field(b"dir");
                self.number(mode);
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
                match openat(dir, name, flags | OFlag::O_CLOEXEC, Mode::empty()) {
                    Ok(fd) => return Entry::Dir(fd),
                    Err(e) => self.stop(format!("cannot open {}: {}", shown.display(), e.desc())),
                }
            }
            _ => {
                self.field(b"other");
                self.number(u64::from(st.st_mode));
                self.number(st.st_rdev);
            }
        }
        Entry::Leaf
    }

    /// The hash of a regular file's content, read in pieces; `None` when it is too large
    /// for the bounds or was replaced since `st` (it is then compared by metadata).
    fn content(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &FileStat,
    ) -> std::io::Result<Option<[u8; 32]>> {
        let size = st.st_size.max(0) as u64;
        if size > MAX_HASHED_FILE || self.hashed + size > self.limits.hashed_bytes {
            return Ok(None);
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let fd = openat(dir, name, flags | OFlag::O_CLOEXEC, Mode::empty())?;
        let opened = nix::sys::stat::fstat(&fd)?;
        if opened.st_ino != st.st_ino
            || opened.st_dev != st.st_dev
            || kind(&opened) != SFlag::S_IFREG
        {
            return Ok(None);
        }
        let mut file = std::fs::File::from(fd).take(MAX_HASHED_FILE + 1);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.hashed += n as u64;
            hash.update(&buf[..n]);
        }
        Ok(Some(hash.finalize().into()))
    }

    /// The sorted names in the directory open as `fd`, counted against the entry bound.
    fn list(&mut self, fd: &OwnedFd, shown: &Path) -> Option<Vec<Vec<u8>>> {
        let listing = nix::unistd::dup(fd).and_then(Dir::from_fd);
        let mut listing = match listing {
            Ok(l) => l,
            Err(e) => {
                self.stop(format!("cannot list {}: {}", shown.display(), e.desc()));
                return None;
            }
        };
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.stop(format!("cannot list {}: {}", shown.display(), e.desc()));
                    return None;
                }
            };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            self.listed += 1;
            if self.listed > self.limits.entries {
                self.stop(format!(
                    "more than {} entries under it (stopped in {})",
                    self.limits.entries,
                    shown.display()
                ));
                return None;
            }
            names.push(name.to_vec());
        }
        names.sort();
        Some(names)
    }
}

/// Hash `name` in `dir` and everything below it, depth first in name order. The walk keeps
/// its open directories on a stack of its own, never recursing, bounded by `limits.depth`.
fn walk(mut w: Walk, dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Fingerprint {
    struct Level {
        dir: OwnedFd,
        path: PathBuf,
        names: std::vec::IntoIter<Vec<u8>>,
    }
    let top = match w.record(dir, name, shown) {
        Entry::Absent => return None,
        Entry::Leaf => return Some(w.finish()),
        Entry::Dir(fd) => fd,
    };
    let mut stack = Vec::new();
    if let Some(names) = w.list(&top, shown) {
        stack.push(Level {
            dir: top,
            path: shown.to_path_buf(),
            names: names.into_iter(),
        });
    }
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.names.next() else {
            stack.pop();
            continue;
        };
        let name = OsStr::from_bytes(&name);
        let path = level.path.join(name);
        match w.record(level.dir.as_fd(), name, &path) {
            // Gone since the listing (another session at work): absent like never listed.
            Entry::Absent | Entry::Leaf => {}
            Entry::Dir(_) if stack.len() >= w.limits.depth => w.stop(format!(
                "{} is nested more than {} directories deep",
                path.display(),
                w.limits.depth
            )),
            Entry::Dir(fd) => {
                if let Some(names) = w.list(&fd, &path) {
                    stack.push(Level {
                        dir: fd,
                        path,
                        names: names.into_iter(),
                    });
                }
            }
        }
        if w.incomplete.is_some() {
            break;
        }
    }
    Some(w.finish())
}

/// The protected path as it is now: every component checked without following symlinks,
/// so replacing a directory on the way by a symlink also shows as a change. Never fails:
/// what cannot be read makes the snapshot incomplete, and says why.
fn fingerprint(workspace: BorrowedFd<'_>, rel: &Path, limits: Limits) -> Fingerprint {
    let parts: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
    let mut w = Walk::new(limits);
    let mut dir: OwnedFd = match nix::unistd::dup(workspace) {
        Ok(fd) => fd,
        Err(e) => {
            w.stop(format!(
                "cannot duplicate the workspace descriptor: {}",
                e.desc()
            ));
            return Some(w.finish());
        }
    };
    for (i, part) in parts.iter().enumerate() {
        let here: PathBuf = parts[..=i].iter().collect();
        if i + 1 == parts.len() {
            return walk(w, dir.as_fd(), part, &here);
        }
        match fstatat(&dir, *part, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => return None,
            Err(e) => {
                w.stop(format!("cannot stat {}: {}", here.display(), e.desc()));
                return Some(w.finish());
            }
            Ok(st) if kind(&st) == SFlag::S_IFDIR => {
                let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
                match openat(&dir, *part, flags | OFlag::O_CLOEXEC, Mode::empty()) {
                    Ok(fd) => dir = fd,
                    Err(e) => {
                        w.stop(format!("cannot open {}: {}", here.display(), e.desc()));
                        return Some(w.finish());
                    }
                }
            }
            // A symlink or file on the way: record it as what stands at the path.
            Ok(_) => {
                w.field(b"not a directory on the way");
                return walk(w, dir.as_fd(), part, &here);
            }
        }
    }
    None
}

/// How `now` differs from `before`, and why it could not be compared in full.
fn compare(before: &Fingerprint, now: &Fingerprint) -> Option<(&'static str, Option<String>)> {
    match (before, now) {
        (None, None) => None,
        (None, Some(now)) => Some(("created", now.incomplete.clone())),
        (Some(_), None) => Some(("removed", None)),
        (Some(before), Some(now)) if before.digest != now.digest => {
            Some(("changed", now.incomplete.clone()))
        }
        // The same as far as both walks went; what lies past the bound is unknown.
        (Some(_), Some(now)) => now
            .incomplete
            .clone()
            .map(|why| ("possibly changed", Some(why))),
    }
}

/// Git directories inside the workspace that a `.git` file points to: their config and
/// hooks need the same protection. Paths are workspace-relative.
fn linked_git_dirs(
    workspace: BorrowedFd<'_>,
    workspace_path: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<PathBuf>> {
    let text = match openat(
        workspace,
        ".git",
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let mut s = String::new();
            let f = std::fs::File::from(fd);
            if !f.metadata()?.is_file() {
                return Ok(vec![]);
            }
            f.take(4096).read_to_string(&mut s).ok();
            s
        }
        Err(_) => return Ok(vec![]),
    };
    let Some(target) = text.lines().find_map(|l| l.strip_prefix("gitdir:")) else {
        return Ok(vec![]);
    };
    let target = Path::new(target.trim());
    let absolute = if target.is_absolute() {
        target.to_path_buf()
    } else {
        workspace_path.join(target)
    };
    let mut dirs = Vec::new();
    let mut consider = |dir: PathBuf, notes: &mut Vec<String>| {
        let normal = normalize(&dir);
        match normal.strip_prefix(workspace_path) {
            Ok(rel) if !rel.as_os_str().is_empty() => dirs.push(rel.to_path_buf()),
            _ => notes.push(format!(
                ".git points to {}, outside the workspace: git inside the sandbox will not \
                 find the repository",
                dir.display()
            )),
        }
    };
    consider(absolute.clone(), notes);
    // A worktree keeps config and hooks in the common directory.
    if let Ok(rel) = normalize(&absolute).strip_prefix(workspace_path)
        && let Ok(fd) = openat2(
            workspace,
            &rel.join("commondir"),
            OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS),
        )
    {
        let mut s = String::new();
        std::fs::File::from(fd)
            .take(4096)
            .read_to_string(&mut s)
            .ok();
        let common = Path::new(s.trim());
        let common = if common.is_absolute() {
            common.to_path_buf()
        } else {
            absolute.join(common)
        };
        consider(common, notes);
    }
    Ok(dirs)
}

/// Resolve `.` and `..` lexically (the path is only compared, never opened).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Prepare the protection of `paths` in the workspace, as the invoking user.
pub fn prepare(
    identity: &Identity,
    workspace: BorrowedFd<'_>,
    workspace_path: &Path,
    paths: &[PathBuf],
) -> Result<Protection> {
    let (opened, notes, before) = identity.run_as(|| {
        let mut notes = Vec::new();
        let mut all: Vec<PathBuf> = paths.to_vec();
        // A `.git` file names the git directory: rewritten, it points git at another one.
        if let Ok(st) = fstatat(workspace, ".git", AtFlags::AT_SYMLINK_NOFOLLOW)
            && kind(&st) == SFlag::S_IFREG
        {
            all.push(".git".into());
        }
        for dir in linked_git_dirs(workspace, workspace_path, &mut notes)? {
            for name in ["config", "config.worktree", "commondir", "hooks", "info"] {
                all.push(dir.join(name));
            }
        }
        all.sort();
        all.dedup();
        let mut opened = Vec::new();
        let mut before = BTreeMap::new();
        for rel in all {
            let print = fingerprint(workspace, &rel, LIMITS);
            if let Some(Snapshot {
                incomplete: Some(reason),
                ..
            }) = &print
            {
                notes.push(format!(
                    "{} cannot be compared in full ({reason}): it is listed for review at exit",
                    rel.display()
                ));
            }
            // Open the path itself without any symlink on the way; a symlink can only be
            // watched, since a mount would follow it.
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            match openat2(workspace, &rel, how) {
                Ok(fd) => {
                    let st = nix::sys::stat::fstat(&fd)?;
                    match kind(&st) {
                        SFlag::S_IFDIR | SFlag::S_IFREG => {
                            opened.push((rel.clone(), fd, kind(&st) == SFlag::S_IFDIR, false));
                        }
                        _ => notes.push(format!(
                            "{} is a symlink: it stays writable and is checked at exit",
                            rel.display()
                        )),
                    }
                }
                // Absent, or a file where a directory would be (`.git` as a file).
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => {}
                Err(Errno::ELOOP) | Err(Errno::EXDEV) => notes.push(format!(
                    "{} goes through a symlink: it stays writable and is checked at exit",
                    rel.display()
                )),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("open protected path {}", rel.display()));
                }
            }
            before.insert(rel, print);
        }
        // Pin the existing parent directories of protected paths as mount points: renaming
        // `.git` away and making a new one would otherwise leave the read-only files behind
        // under the old name and put the agent's own in their place.
        let parents: BTreeSet<PathBuf> = before
            .keys()
            .flat_map(|rel| rel.ancestors().skip(1))
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        for parent in parents {
            // Inside a read-only path a writable bind would undo the protection.
            if opened.iter().any(|(rel, ..)| parent.starts_with(rel)) {
                continue;
            }
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            match openat2(workspace, &parent, how) {
                Ok(fd) => opened.push((parent, fd, true, true)),
                // Absent, not a directory or through a symlink: nothing there to pin.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("open {}, parent of protected paths", parent.display())
                    });
                }
            }
        }
        // A parent sorts before what it holds, and is mounted first.
        opened.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((opened, notes, before))
    })?;
    // Cloning a mount tree needs root; the descriptors were opened as the user.
    let binds = opened
        .into_iter()
        .map(|(rel, fd, is_dir, writable)| {
            let tree = crate::mounts::detached_tree(fd.as_fd(), &rel.to_string_lossy())?;
            Ok(Bind {
                rel,
                tree,
                is_dir,
                writable,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Protection {
        binds,
        notes,
        before,
    })
}

impl Protection {
    /// Compare the protected paths with how they were at start, as the invoking user.
    ///
    /// Never fails: a path that cannot be read or is past the walk's bounds is listed with
    /// the reason, and if the user's identity cannot even be taken, every path is.
    pub fn review(&self, identity: &Identity, workspace: BorrowedFd<'_>) -> Vec<Change> {
        let change = |rel: &Path, change, incomplete| Change {
            path: rel.to_path_buf(),
            change,
            why: why(rel),
            incomplete,
            quarantined: None,
            not_moved: None,
        };
        let compared = identity.run_as(|| {
            Ok(self
                .before
                .iter()
                .filter_map(|(rel, before)| {
                    let now = fingerprint(workspace, rel, LIMITS);
                    compare(before, &now).map(|(what, incomplete)| change(rel, what, incomplete))
                })
                .collect())
        });
        compared.unwrap_or_else(|e| {
            let reason = format!("cannot act as the invoking user to read it: {e:#}");
            self.before
                .keys()
                .map(|rel| change(rel, "possibly changed", Some(reason.clone())))
                .collect()
        })
    }

    /// Move what the session created or changed at protected paths to `into` (a directory
    /// owned by the user), recording where each went or why it stayed.
    ///
    /// Nothing is put back in place of a changed path: the original is gone, and the
    /// report says that the path needs review.
    pub fn quarantine(
        &self,
        identity: &Identity,
        workspace: BorrowedFd<'_>,
        changes: &mut [Change],
        into: &Path,
    ) {
        let moved = identity.run_as(|| {
            let dest = nix::fcntl::open(
                into,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("open {}", into.display()))?;
            for (i, c) in changes.iter_mut().enumerate() {
                if !c.to_quarantine() {
                    continue;
                }
                // Flat names: the review directory holds one entry per moved path.
                let name = format!("{i}-{}", c.path.to_string_lossy().replace('/', "_"));
                let parent = c.path.parent().unwrap_or(Path::new(""));
                let how = OpenHow::new()
                    .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                    .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
                let from_dir = if parent.as_os_str().is_empty() {
                    nix::unistd::dup(workspace)
                } else {
                    openat2(workspace, parent, how)
                };
                let from_dir = match from_dir {
                    Ok(fd) => fd,
                    // Made through a symlinked directory, say: left in place and reported.
                    Err(e) => {
                        c.not_moved = Some(format!(
                            "cannot open {} without symlinks: {}",
                            parent.display(),
                            e.desc()
                        ));
                        continue;
                    }
                };
                let Some(file_name) = c.path.file_name() else {
                    c.not_moved = Some("it has no file name".into());
                    continue;
                };
                match nix::fcntl::renameat(&from_dir, file_name, &dest, name.as_str()) {
                    Ok(()) => c.quarantined = Some(into.join(&name)),
                    // Left in place and reported: nothing is lost, the user decides.
                    Err(e) => c.not_moved = Some(e.desc().to_string()),
                }
            }
            Ok(())
        });
        if let Err(e) = moved {
            left_in_place(changes, &format!("{e:#}"));
        }
    }
}

/// Record why quarantine could not move what it should have moved.
pub fn left_in_place(changes: &mut [Change], reason: &str) {
    for c in changes.iter_mut() {
        if c.to_quarantine() && c.quarantined.is_none() && c.not_moved.is_none() {
            c.not_moved = Some(reason.to_string());
        }
    }
}

/// The exit report's lines for changed protected paths.
pub fn report(changes: &[Change]) -> String {
    if changes.is_empty() {
        return String::new();
    }
    let mut out =
        String::from("claude-chroot: review these before using the project outside the sandbox:\n");
    for c in changes {
        out.push_str(&format!(
            "claude-chroot:   {} was {}: {}\n",
            c.path.display(),
            c.change,
            c.why
        ));
        if let Some(reason) = &c.incomplete {
            out.push_str(&format!(
                "claude-chroot:     not compared in full: {reason}\n"
            ));
        }
        if let Some(q) = &c.quarantined {
            out.push_str(&format!("claude-chroot:     moved to {}\n", q.display()));
            if c.change == "changed" {
                out.push_str(&format!(
                    "claude-chroot:     nothing was put back: restore {} from a copy you trust\n",
                    c.path.display()
                ));
            }
        }
        if let Some(e) = &c.not_moved {
            out.push_str(&format!(
                "claude-chroot:     left in place, could not move it: {e}\n"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_protected_path_has_a_reason() {
        for p in [
            ".git/config",
            ".git/config.worktree",
            ".git/commondir",
            ".git/hooks",
            ".git/info",
            ".git/modules",
            ".git/worktrees",
            ".gitmodules",
            ".claude/settings.json",
            ".claude/settings.local.json",
            ".claude/commands",
            ".claude/agents",
            ".mcp.json",
            ".envrc",
            ".vscode",
            ".idea",
            // Added for a `.git` file and the git directory it names.
            ".git",
            "repo.git/config.worktree",
            "repo.git/commondir",
            "repo.git/info",
        ] {
            assert!(!why(Path::new(p)).starts_with("it may"), "{p}");
        }
    }

    #[test]
    fn normalize_resolves_parent_components_lexically() {
        assert_eq!(
            normalize(Path::new("/w/sub/../.git/worktrees/x/../..")),
            PathBuf::from("/w/.git")
        );
    }

    const SMALL: Limits = Limits {
        depth: 4,
        entries: 10,
        hashed_bytes: 64,
    };

    fn open_dir(path: &Path) -> OwnedFd {
        nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn a_tree_past_the_bounds_is_incomplete_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("deep/d/d/d/d/d")).unwrap();
        std::fs::create_dir(dir.path().join("wide")).unwrap();
        for i in 0..11 {
            std::fs::write(dir.path().join(format!("wide/{i}")), "").unwrap();
        }
        let ws = open_dir(dir.path());
        let deep = fingerprint(ws.as_fd(), Path::new("deep"), SMALL).unwrap();
        assert_eq!(
            deep.incomplete.as_deref(),
            Some("deep/d/d/d/d is nested more than 4 directories deep")
        );
        let wide = fingerprint(ws.as_fd(), Path::new("wide"), SMALL).unwrap();
        assert_eq!(
            wide.incomplete.as_deref(),
            Some("more than 10 entries under it (stopped in wide)")
        );
        // Within the bounds the same trees are complete.
        assert_eq!(
            fingerprint(ws.as_fd(), Path::new("deep"), LIMITS)
                .unwrap()
                .incomplete,
            None
        );
        assert_eq!(
            fingerprint(ws.as_fd(), Path::new("wide"), LIMITS)
                .unwrap()
                .incomplete,
            None
        );
    }

    #[test]
    fn any_change_in_a_tree_changes_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "one").unwrap();
        std::os::unix::fs::symlink("target", root.join("a/l")).unwrap();
        let ws = open_dir(dir.path());
        let print = || fingerprint(ws.as_fd(), Path::new("p"), LIMITS).unwrap();
        let first = print();
        assert_eq!(first, print(), "the same tree hashes the same");
        let edits: [&dyn Fn(); 4] = [
            &|| std::fs::write(root.join("a/b/f"), "two").unwrap(),
            &|| std::fs::rename(root.join("a/b/f"), root.join("a/b/g")).unwrap(),
            &|| {
                std::fs::remove_file(root.join("a/l")).unwrap();
                std::os::unix::fs::symlink("other", root.join("a/l")).unwrap();
            },
            &|| std::fs::create_dir(root.join("a/b/new")).unwrap(),
        ];
        let mut seen = vec![first.digest];
        for edit in edits {
            edit();
            let now = print();
            assert_eq!(now.incomplete, None);
            assert!(!seen.contains(&now.digest));
            seen.push(now.digest);
        }
    }

    #[test]
    fn a_file_past_the_hashed_bytes_is_compared_by_metadata_with_its_change_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        std::fs::write(&file, [b'x'; 100]).unwrap();
        let ws = open_dir(dir.path());
        let before = fingerprint(ws.as_fd(), Path::new("big"), SMALL).unwrap();
        assert_eq!(before.incomplete, None);
        // The same content again, with the modification time put back: only the change
        // time, which the kernel sets, tells. File times have a coarse clock.
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(&file, [b'x'; 100]).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let after = fingerprint(ws.as_fd(), Path::new("big"), SMALL).unwrap();
        assert_ne!(before.digest, after.digest);
    }

    #[test]
    fn comparisons_name_what_happened() {
        let snap = |byte, incomplete: Option<&str>| {
            Some(Snapshot {
                digest: [byte; 32],
                incomplete: incomplete.map(String::from),
            })
        };
        assert_eq!(compare(&None, &None), None);
        assert_eq!(compare(&snap(1, None), &snap(1, None)), None);
        assert_eq!(compare(&None, &snap(1, None)), Some(("created", None)));
        assert_eq!(compare(&snap(1, None), &None), Some(("removed", None)));
        assert_eq!(
            compare(&snap(1, None), &snap(2, None)),
            Some(("changed", None))
        );
        assert_eq!(
            compare(&None, &snap(1, Some("deep"))),
            Some(("created", Some("deep".into())))
        );
        assert_eq!(
            compare(&snap(1, Some("deep")), &snap(1, Some("deep"))),
            Some(("possibly changed", Some("deep".into())))
        );
    }
}
