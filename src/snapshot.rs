//! How a protected workspace path looks: one bounded digest over everything in it, taken
//! at the start of a session and again at its end.
//!
//! The activator walks what the agent left, so the walk never recurses, never follows a
//! symlink, and stops at bounds of depth, entries and bytes read, saying why it stopped.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use sha2::{Digest, Sha256};

/// Bounds of the walk over one protected path. The activator walks as root what the agent
/// left, so no tree may overflow its stack, fill its memory or hold the exit for long:
/// past a bound the path is reported as not compared in full instead of read further.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Directories open at once, one inside the other.
    pub depth: usize,
    /// Names listed over the whole path.
    pub entries: usize,
    /// File content hashed over the whole path; past it files are compared by metadata.
    pub hashed_bytes: u64,
}

pub const LIMITS: Limits = Limits {
    depth: 128,
    entries: 100_000,
    hashed_bytes: 64 << 20,
};

/// Files larger than this are compared by size, times and inode instead of content.
const MAX_HASHED_FILE: u64 = 1 << 20;

/// How a protected path looked: one hash over everything in it, symlinks not followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    digest: [u8; 32],
    /// Why the walk stopped before the end; the digest covers what it read until then.
    pub incomplete: Option<String>,
}

/// How a protected path looked at start; `None` where it did not exist.
pub type Fingerprint = Option<Snapshot>;

/// The file type of a stat result.
pub fn kind(st: &FileStat) -> SFlag {
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
pub fn fingerprint(workspace: BorrowedFd<'_>, rel: &Path, limits: Limits) -> Fingerprint {
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
pub fn compare(before: &Fingerprint, now: &Fingerprint) -> Option<(&'static str, Option<String>)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
