//! Workspace files that run code on the host later (git hooks and config, agent and editor
//! settings, `.envrc`): read-only inside when they exist, reported at exit when created or
//! changed.
//!
//! Everything here touches the user's workspace and so runs as the invoking user, on
//! descriptors, without following symlinks out of the workspace.

use std::collections::BTreeMap;
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

use crate::identity::Identity;

/// Files larger than this are compared by size, time and inode instead of content.
const MAX_COMPARED: i64 = 1 << 20;

/// What one path looked like, recursively for directories; symlinks are not followed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File {
        mode: u32,
        data: Vec<u8>,
    },
    LargeFile {
        mode: u32,
        size: i64,
        mtime: (i64, i64),
        ino: u64,
    },
    Dir {
        mode: u32,
        entries: BTreeMap<Vec<u8>, Node>,
    },
    Symlink(Vec<u8>),
    Other(u32),
}

/// How a protected path looked at start; `None` where it did not exist.
type Fingerprint = Option<Node>;

/// A protected path that the session created, changed or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: PathBuf,
    pub change: &'static str,
    pub why: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<PathBuf>,
    /// Why quarantine left it in place (a rename across file systems, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_moved: Option<&'static str>,
}

/// The protection prepared for one session.
pub struct Protection {
    /// Existing paths made read-only: workspace-relative path, detached mount tree, and
    /// whether it is a directory.
    pub binds: Vec<(PathBuf, OwnedFd, bool)>,
    /// Lines to show at start (symlinks that can only be watched, `.git` elsewhere).
    pub notes: Vec<String>,
    before: BTreeMap<PathBuf, Fingerprint>,
}

/// Why a protected path matters, in one line.
pub fn why(path: &Path) -> &'static str {
    let s = path.to_string_lossy();
    if s.ends_with("hooks") || s.contains("hooks/") {
        "git on the host runs these hooks at the next commit, checkout or push"
    } else if s.ends_with("config") {
        "git on the host reads it: core.hooksPath, core.fsmonitor and aliases run commands"
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

/// Read `name` in `dir` without following a symlink in its place.
fn node_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Node>> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("stat {name:?}")),
    };
    let mode = st.st_mode & 0o7777;
    Ok(Some(match kind(&st) {
        SFlag::S_IFLNK => Node::Symlink(
            readlinkat(dir, name)
                .with_context(|| format!("readlink {name:?}"))?
                .as_bytes()
                .to_vec(),
        ),
        SFlag::S_IFREG if st.st_size > MAX_COMPARED => Node::LargeFile {
            mode,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ino: st.st_ino,
        },
        SFlag::S_IFREG => {
            let fd = openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                Mode::empty(),
            )
            .with_context(|| format!("open {name:?}"))?;
            let mut data = Vec::new();
            std::fs::File::from(fd)
                .take(MAX_COMPARED as u64 + 1)
                .read_to_end(&mut data)?;
            Node::File { mode, data }
        }
        SFlag::S_IFDIR => {
            let fd = openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("open {name:?}"))?;
            let mut entries = BTreeMap::new();
            let mut listing = Dir::from_fd(nix::unistd::dup(&fd)?)?;
            let names: Vec<Vec<u8>> = listing
                .iter()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_bytes().to_vec())
                .filter(|n| n != b"." && n != b"..")
                .collect();
            for n in names {
                if let Some(child) = node_at(fd.as_fd(), OsStr::from_bytes(&n))? {
                    entries.insert(n, child);
                }
            }
            Node::Dir { mode, entries }
        }
        _ => Node::Other(st.st_mode),
    }))
}

/// The protected path as it is now: every component checked without following symlinks,
/// so replacing a directory on the way by a symlink also shows as a change.
fn fingerprint(workspace: BorrowedFd<'_>, rel: &Path) -> Result<Fingerprint> {
    let parts: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
    let mut dir: OwnedFd = nix::unistd::dup(workspace)?;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last {
            return node_at(dir.as_fd(), part);
        }
        match node_at_shallow(dir.as_fd(), part)? {
            None => return Ok(None),
            Some(true) => {
                dir = openat(
                    &dir,
                    *part,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
            }
            // A symlink or file on the way: record it as what stands at the path.
            Some(false) => {
                let prefix: PathBuf = parts[..=i].iter().collect();
                let node = node_at(dir.as_fd(), part)?;
                return Ok(Some(Node::Dir {
                    mode: 0,
                    entries: BTreeMap::from([(
                        prefix.as_os_str().as_bytes().to_vec(),
                        node.unwrap_or(Node::Other(0)),
                    )]),
                }));
            }
        }
    }
    Ok(None)
}

/// Whether `name` is a real directory (`Some(true)`), something else, or absent.
fn node_at_shallow(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<bool>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(kind(&st) == SFlag::S_IFDIR)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("stat {name:?}")),
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
        for dir in linked_git_dirs(workspace, workspace_path, &mut notes)? {
            all.push(dir.join("config"));
            all.push(dir.join("hooks"));
        }
        all.sort();
        all.dedup();
        let mut opened = Vec::new();
        let mut before = BTreeMap::new();
        for rel in all {
            let print = fingerprint(workspace, &rel)
                .with_context(|| format!("read protected path {}", rel.display()))?;
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
                            opened.push((rel.clone(), fd, kind(&st) == SFlag::S_IFDIR));
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
        Ok((opened, notes, before))
    })?;
    // Cloning a mount tree needs root; the descriptors were opened as the user.
    let binds = opened
        .into_iter()
        .map(|(rel, fd, is_dir)| {
            let tree = crate::mounts::detached_tree(fd.as_fd(), &rel.to_string_lossy())?;
            Ok((rel, tree, is_dir))
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
    pub fn review(&self, identity: &Identity, workspace: BorrowedFd<'_>) -> Result<Vec<Change>> {
        identity.run_as(|| {
            let mut changes = Vec::new();
            for (rel, before) in &self.before {
                let now = fingerprint(workspace, rel)
                    .with_context(|| format!("read protected path {}", rel.display()))?;
                let change = match (before, &now) {
                    (a, b) if a == b => continue,
                    (None, Some(_)) => "created",
                    (Some(_), None) => "removed",
                    _ => "changed",
                };
                changes.push(Change {
                    path: rel.clone(),
                    change,
                    why: why(rel),
                    quarantined: None,
                    not_moved: None,
                });
            }
            Ok(changes)
        })
    }

    /// Move what the session created at protected paths to `into` (a directory owned by
    /// the user), recording where each went.
    pub fn quarantine(
        &self,
        identity: &Identity,
        workspace: BorrowedFd<'_>,
        changes: &mut [Change],
        into: &Path,
    ) -> Result<()> {
        identity.run_as(|| {
            let dest = nix::fcntl::open(
                into,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("open {}", into.display()))?;
            for (i, c) in changes.iter_mut().enumerate() {
                if c.change != "created" {
                    continue;
                }
                // Flat names: the review directory holds one entry per created path.
                let name = format!("{i}-{}", c.path.to_string_lossy().replace('/', "_"));
                let parent = c.path.parent().unwrap_or(Path::new(""));
                let how = OpenHow::new()
                    .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                    .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
                let from_dir = if parent.as_os_str().is_empty() {
                    nix::unistd::dup(workspace)?
                } else {
                    match openat2(workspace, parent, how) {
                        Ok(fd) => fd,
                        // Created through a symlinked directory: leave it, it is reported.
                        Err(_) => continue,
                    }
                };
                let file_name = c
                    .path
                    .file_name()
                    .context("protected path without a name")?;
                match nix::fcntl::renameat(&from_dir, file_name, &dest, name.as_str()) {
                    Ok(()) => c.quarantined = Some(into.join(&name)),
                    // Left in place and reported: nothing is lost, the user decides.
                    Err(e) => c.not_moved = Some(e.desc()),
                }
            }
            Ok(())
        })
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
        if let Some(q) = &c.quarantined {
            out.push_str(&format!("claude-chroot:     moved to {}\n", q.display()));
        }
        if let Some(e) = c.not_moved {
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
            ".git/hooks",
            ".gitmodules",
            ".claude/settings.json",
            ".claude/settings.local.json",
            ".claude/commands",
            ".claude/agents",
            ".mcp.json",
            ".envrc",
            ".vscode",
            ".idea",
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
}
