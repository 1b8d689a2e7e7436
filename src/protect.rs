//! Workspace files that run code on the host later (git hooks and config, agent and editor
//! settings, `.envrc`): read-only inside when they exist, reported at exit when created or
//! changed.
//!
//! Everything here touches the user's workspace and so runs as the invoking user, on
//! descriptors, without following symlinks out of the workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstatat};
use serde::Serialize;

use crate::identity::Identity;
use crate::snapshot::{Fingerprint, LIMITS, Snapshot, compare, fingerprint, kind};

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
                        // A fifo, socket or device: nothing a mount should go onto.
                        _ => notes.push(format!(
                            "{} is neither a file nor a directory: it stays as it is and \
                             is checked at exit",
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
}
