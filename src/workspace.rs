//! Choosing and opening the project directory the agent may change.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, SFlag, fstat};

use crate::identity::Identity;

/// The workspace, opened once as the invoking user and used by descriptor afterwards.
#[derive(Debug)]
pub struct Workspace {
    /// The directory, resolved (symlinks followed) by the kernel when it was opened.
    pub path: PathBuf,
    pub fd: OwnedFd,
}

/// Host paths the workspace must not be, be inside of, or contain.
fn forbidden(state_dir: &Path, host_home: Option<&Path>) -> Vec<(PathBuf, &'static str, bool)> {
    // (path, what it is, whether being inside it is forbidden too)
    let mut v = vec![
        (PathBuf::from("/nix"), "the Nix store", true),
        (PathBuf::from("/proc"), "a kernel file system", true),
        (PathBuf::from("/sys"), "a kernel file system", true),
        (PathBuf::from("/dev"), "a kernel file system", true),
        (state_dir.to_path_buf(), "the state directory", true),
    ];
    if let Some(home) = host_home {
        // The whole point is not to hand the agent the home directory.
        v.push((home.to_path_buf(), "your home directory", false));
    }
    v
}

impl Workspace {
    /// Open `arg` as the invoking user and check that it is a directory the sandbox may
    /// expose: not `/`, not the store, the state directory, the user's home, nor a parent
    /// of any of them, and not reached through a symlink to one of those.
    pub fn open(arg: &Path, identity: &Identity, state_dir: &Path) -> Result<Workspace> {
        let fd = identity
            .run_as(|| {
                open(arg, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                    .with_context(|| format!("workspace {}", arg.display()))
            })
            .map_err(|e| match e.root_cause().downcast_ref::<nix::Error>() {
                Some(nix::Error::ENOENT) => {
                    anyhow::anyhow!("workspace {} does not exist", arg.display())
                }
                Some(nix::Error::EACCES) => anyhow::anyhow!(
                    "workspace {} is not accessible to uid {}",
                    arg.display(),
                    identity.uid
                ),
                _ => e,
            })?;
        let st = fstat(&fd).with_context(|| format!("fstat {}", arg.display()))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
            bail!("workspace {} is not a directory", arg.display());
        }
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .with_context(|| format!("cannot resolve workspace {}", arg.display()))?;
        if path == Path::new("/") {
            bail!(
                "workspace {} is /: choose a project directory",
                arg.display()
            );
        }
        for (p, what, inside) in forbidden(state_dir, identity.host_home.as_deref()) {
            let contains = p.starts_with(&path);
            let within = inside && path.starts_with(&p);
            if contains || within {
                let relation = if path == p {
                    "is"
                } else if contains {
                    "contains"
                } else {
                    "is inside"
                };
                bail!(
                    "workspace {} {relation} {what} ({}): choose a project directory",
                    arg.display(),
                    p.display()
                );
            }
        }
        Ok(Workspace { path, fd })
    }

    /// Refuse a workspace that holds what the host reads the sandbox's rules from: the
    /// user's custom managed settings and `~/.claude` (copied into every session). With
    /// either inside it, for instance through a symlinked dotfiles directory, the agent
    /// could rewrite the settings that bind its next session, or the host's own agent
    /// configuration.
    pub fn refuse_host_config(&self, identity: &Identity, custom_settings: &Path) -> Result<()> {
        let Some(home) = &identity.host_home else {
            return Ok(());
        };
        for (path, what) in [
            (home.join(custom_settings), "your custom managed settings"),
            (home.join(".claude"), "your ~/.claude"),
        ] {
            let resolved = identity.run_as(|| Ok(resolve_existing_prefix(&path)))?;
            if let Some(resolved) = resolved
                && resolved.starts_with(&self.path)
            {
                bail!(
                    "workspace {} holds {what} ({} is {}): the agent could change them; \
                     move them out of the project or choose another directory",
                    self.path.display(),
                    path.display(),
                    resolved.display()
                );
            }
        }
        Ok(())
    }
}

/// Where `path` is, or would be once created: its longest existing prefix with symlinks
/// resolved, and the rest appended. `None` when the prefix cannot be resolved.
fn resolve_existing_prefix(path: &Path) -> Option<PathBuf> {
    let mut prefix = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&prefix) {
            Ok(real) => return Some(rest.iter().rev().fold(real, |p, c| p.join(c))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                rest.push(prefix.file_name()?.to_os_string());
                if !prefix.pop() {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_resolves_through_its_existing_symlinked_parent() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles/claude-chroot");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir(dir.path().join(".config")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join(".config/claude-chroot")).unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(
            resolve_existing_prefix(&dir.path().join(".config/claude-chroot/settings.json")),
            Some(root.join("dotfiles/claude-chroot/settings.json"))
        );
        assert_eq!(
            resolve_existing_prefix(&dir.path().join("none/a/b")),
            Some(root.join("none/a/b"))
        );
    }
}
