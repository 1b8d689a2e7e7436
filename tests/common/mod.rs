//! Test fixture: a skeleton rendered by the real Nix files, a state directory, test
//! users and workspaces, and a way to run the real activator against them.
//!
//! The store's tool environment does not exist on a machine without nixpkgs, so the
//! fixture binds the host's `/usr` (and the merged-/usr links) in its place.

#![allow(dead_code)]

pub mod fake_daemon;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_claude-chroot-activate");

/// A test user: name, uid, gid.
#[derive(Debug, Clone, Copy)]
pub struct TestUser {
    pub name: &'static str,
    pub uid: u32,
}

pub const ALICE: TestUser = TestUser {
    name: "ccr-alice",
    uid: 2901,
};
pub const BOB: TestUser = TestUser {
    name: "ccr-bob",
    uid: 2902,
};
pub const CAROL: TestUser = TestUser {
    name: "ccr-carol",
    uid: 2903,
};

impl TestUser {
    /// Create the account (idempotent): its home lives under /home like any user's.
    pub fn ensure(self) -> TestUser {
        let exists = Command::new("id")
            .arg(self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if !exists {
            // Two test binaries may race to create the same user.
            let out = Command::new("useradd")
                .args([
                    "--create-home",
                    "--uid",
                    &self.uid.to_string(),
                    "--user-group",
                ])
                .args(["--shell", "/bin/bash", self.name])
                .output()
                .unwrap();
            let again = Command::new("id").arg(self.name).output().unwrap();
            assert!(
                out.status.success() || again.status.success(),
                "useradd {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self
    }

    pub fn home(self) -> PathBuf {
        PathBuf::from(format!("/home/{}", self.name))
    }

    pub fn gid(self) -> u32 {
        std::fs::metadata(self.home()).unwrap().gid()
    }
}

/// Options for rendering the fixture's configuration through `nix/render.nix`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Nix expression for `user`, e.g. `{ uid = 2901; }`.
    pub user: Option<String>,
    /// Nix expression for `network`.
    pub network: Option<String>,
    /// Nix expression for `protectedPaths`.
    pub protected_paths: Option<String>,
    pub quarantine: bool,
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub skeleton: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub activate: serde_json::Value,
    pub files: serde_json::Map<String, serde_json::Value>,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `nix-instantiate` with a state directory of the tests' own. Runs are serialised: on a
/// fresh machine concurrent runs race to create that directory and fail.
pub fn nix_instantiate(args: &[&str]) -> Output {
    use nix::fcntl::{Flock, FlockArg};
    let state = std::env::temp_dir().join("claude-chroot-test-nix");
    let lock = std::fs::File::create(state.with_extension("lock")).unwrap();
    let _held = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    Command::new("nix-instantiate")
        .args(args)
        .env("NIX_STATE_DIR", &state)
        .output()
        .expect("cannot run nix-instantiate: install Nix (Debian: nix-bin) to run these tests")
}

pub fn nix_eval(expr: &str) -> serde_json::Value {
    let out = nix_instantiate(&["--eval", "--strict", "--json", "--expr", expr]);
    assert!(
        out.status.success(),
        "nix-instantiate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with(Options::default())
    }

    pub fn with(opts: Options) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("claude-chroot-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        // Test users must traverse the fixture to reach their workspaces and homes.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let skeleton = dir.path().join("skeleton");
        let state = dir.path().join("state");
        let expr = format!(
            r#"import {repo}/nix/render.nix {{
              skeleton = "{skeleton}";
              stateDir = "{state}";
              tools = {{ shell = "/bin/bash"; nft = "/usr/sbin/nft"; pasta = "/usr/bin/pasta"; }};
              path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
              mounts = [ ];
              extraMounts = import {repo}/tests/host-binds.nix;
              {user}
              {network}
              {protected}
              quarantine = {quarantine};
            }}"#,
            repo = repo().display(),
            skeleton = skeleton.display(),
            state = state.display(),
            user = opts
                .user
                .map(|u| format!("user = {u};"))
                .unwrap_or_default(),
            network = opts
                .network
                .map(|n| format!("network = {n};"))
                .unwrap_or_default(),
            protected = opts
                .protected_paths
                .map(|p| format!("protectedPaths = {p};"))
                .unwrap_or_default(),
            quarantine = opts.quarantine,
        );
        let rendered = nix_eval(&expr);
        let files = rendered["files"].as_object().unwrap().clone();
        for (rel, content) in &files {
            let path = skeleton.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content.as_str().unwrap()).unwrap();
        }
        // Stand-ins the store provides on NixOS: the dynamic linker's cache for the host
        // binaries, and the mount point of Debian's alternatives.
        std::fs::copy("/etc/ld.so.cache", skeleton.join("etc/ld.so.cache")).unwrap();
        std::fs::create_dir_all(skeleton.join("etc/alternatives")).unwrap();
        let activate = rendered["activate"].clone();
        let config = dir.path().join("activate.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&activate).unwrap()).unwrap();
        Fixture {
            dir,
            skeleton,
            state,
            config,
            activate,
            files,
        }
    }

    /// A fresh workspace owned by `user`.
    pub fn workspace(&self, name: &str, user: TestUser) -> PathBuf {
        let ws = self.dir.path().join(name);
        std::fs::create_dir_all(&ws).unwrap();
        chown(&ws, user);
        ws
    }

    /// The activator, as if `user` had started it through sudo.
    pub fn command(&self, user: Option<TestUser>) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LANG", "C.UTF-8");
        if let Some(u) = user {
            cmd.env("SUDO_UID", u.uid.to_string())
                .env("SUDO_GID", u.gid().to_string())
                .env("SUDO_USER", u.name);
        }
        cmd
    }

    /// `enter --no-network WORKSPACE -- sh -c SCRIPT` as `user`, stdin from /dev/null.
    pub fn run(&self, user: TestUser, workspace: &Path, script: &str) -> Output {
        self.run_args(
            user,
            &["--no-network"],
            workspace,
            &["/bin/sh", "-c", script],
        )
    }

    pub fn run_args(
        &self,
        user: TestUser,
        flags: &[&str],
        workspace: &Path,
        command: &[&str],
    ) -> Output {
        self.command(Some(user))
            .arg("enter")
            .arg("--config")
            .arg(&self.config)
            .args(flags)
            .arg(workspace)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn sessions(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.state.join("sessions")) {
            Ok(d) => d.map(|e| e.unwrap().path()).collect(),
            Err(_) => vec![],
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Undo what a killed activator left outside the directory (its cgroup), as
        // `cleanup` does; then let TempDir remove the rest, clearing the immutable flags
        // of sessions still running after a failed test.
        let _ = claude_chroot::session::cleanup(&self.state, false);
        for s in self.sessions() {
            let f = s.join("managed-settings.json");
            if f.exists() {
                let _ = claude_chroot::immutable::set(&f, false);
            }
        }
    }
}

pub fn chown(path: &Path, user: TestUser) {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid())).unwrap();
}

/// Write a file as root and give it to `user`.
pub fn write_as(user: TestUser, path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    chown(path, user);
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success and return stdout, showing stderr on failure.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Every entry under `dir` with its content: directories as `<dir>`, symlinks by target.
pub fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                stack.push(p);
            } else if md.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(rel, target.into_os_string().into_encoded_bytes());
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Wait up to 30 seconds for `path` to appear.
pub fn wait_for(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
