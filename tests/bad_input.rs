//! Bad input gets one clear line, exit status 125, and no side effect.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Output;

use common::*;

/// Every path under the state directory (empty when it does not exist).
fn state_listing(f: &Fixture) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![f.state.clone()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            out.push(p.display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Run `start` and check it was refused: exit 125, exactly one line on stderr saying what
/// is wrong, nothing on stdout, and the state directory exactly as before.
fn refused(f: &Fixture, needle: &str, start: impl FnOnce() -> Output) {
    let existed = f.state.exists();
    let before = state_listing(f);
    let out = start();
    assert_refused(f, &out, needle);
    assert_eq!(
        f.state.exists(),
        existed,
        "state directory created by a refused start"
    );
    assert_eq!(
        state_listing(f),
        before,
        "a refused start changed the state directory"
    );
}

fn assert_refused(_f: &Fixture, out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(125), "stderr: {err}");
    assert_eq!(stdout(out), "");
    assert_eq!(err.lines().count(), 1, "more than one line:\n{err}");
    assert!(err.starts_with("claude-chroot: error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

fn enter(f: &Fixture, user: TestUser, workspace: &Path) -> Output {
    f.run(user, workspace, "echo RAN")
}

#[test]
fn unusable_workspaces_are_refused() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let file = f.dir.path().join("a-file");
    write_as(a, &file, "x");
    let parent_of_state = f.dir.path().to_path_buf();
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (f.dir.path().join("missing"), "does not exist"),
        (file.clone(), "is not a directory"),
        ("/".into(), "is /"),
        ("/nix".into(), "the Nix store"),
        ("/nix/var".into(), "the Nix store"),
        ("/proc".into(), "kernel file system"),
        (f.state.clone(), "the state directory"),
        (parent_of_state.clone(), "contains the state directory"),
        (a.home(), "your home directory"),
        ("/home".into(), "contains your home directory"),
    ];
    std::fs::create_dir_all("/nix/var").unwrap();
    // The state directory exists once any session has run.
    ok(&f.run(a, &f.workspace("first", a), "true"));
    for (ws, needle) in &cases {
        refused(&f, needle, || enter(&f, a, ws));
    }
    // The same through a symlink the user controls.
    let links = f.workspace("links", a);
    for (i, (target, needle)) in cases.iter().enumerate().skip(1) {
        let link = links.join(format!("l{i}"));
        symlink(target, &link).unwrap();
        refused(&f, needle, || enter(&f, a, &link));
    }
}

#[test]
fn a_workspace_the_user_cannot_reach_is_refused() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let root_only = f.dir.path().join("root-only");
    std::fs::create_dir(&root_only).unwrap();
    std::fs::create_dir(root_only.join("project")).unwrap();
    std::fs::set_permissions(
        &root_only,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    refused(&f, "is not accessible to uid", || {
        enter(&f, a, &root_only.join("project"))
    });
}

#[test]
fn bad_configs_are_refused() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let mut unknown = f.activate.clone();
    unknown["surprise"] = serde_json::json!(true);
    let mut version = f.activate.clone();
    version["version"] = serde_json::json!(2);
    let mut nested = f.activate.clone();
    nested["user"]["shell"] = serde_json::json!("/bin/sh");
    let mut root_uid = f.activate.clone();
    root_uid["user"]["uid"] = serde_json::json!(0);
    let mut pids = f.activate.clone();
    pids["limits"]["pids"] = serde_json::json!(1);
    let cases = [
        (unknown, "unknown field `surprise`"),
        (version, "config version 2 is not supported"),
        (nested, "unknown field `shell`"),
        (root_uid, "must not be 0"),
        (
            pids,
            "limits.pids is 1: a session needs at least 8 processes",
        ),
    ];
    for (config, needle) in cases {
        let path = f.dir.path().join("bad.json");
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        let start = || {
            f.command(Some(a))
                .args(["enter", "--no-network", "--config"])
                .arg(&path)
                .arg(&ws)
                .args(["--", "/bin/true"])
                .output()
                .unwrap()
        };
        refused(&f, needle, start);
        assert!(stderr(&start()).contains(&path.display().to_string()));
    }
    refused(&f, "cannot read config /nonexistent/activate.json", || {
        f.command(Some(a))
            .args(["enter", "--config", "/nonexistent/activate.json"])
            .arg(&ws)
            .output()
            .unwrap()
    });
}

#[test]
fn not_running_as_root_is_refused() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    refused(&f, "must run as root", || {
        std::process::Command::new("setpriv")
            .args([
                "--reuid",
                &a.uid.to_string(),
                "--regid",
                &a.gid().to_string(),
            ])
            .args(["--clear-groups", BIN, "enter", "--no-network", "--config"])
            .arg(&f.config)
            .arg(&ws)
            .args(["--", "/bin/true"])
            .output()
            .unwrap()
    });
}

#[test]
fn missing_allowlist_is_refused_with_a_pointer_to_sync_ips() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    refused(&f, "sync-ips", || f.run_args(a, &[], &ws, &["/bin/true"]));
}

#[test]
fn check_config_accepts_the_rendered_config_and_names_what_is_wrong_without_root() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    // As the test user: a build checks the config without privileges.
    let check = |path: &Path| {
        let mut cmd = f.command(None);
        cmd.args(["check-config", "--config"]).arg(path);
        // SAFETY: setgid/setuid between fork and exec, async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                nix::unistd::setgid(nix::unistd::Gid::from_raw(a.gid()))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(a.uid))?;
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let out = check(&f.config);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));

    let mut unknown = f.activate.clone();
    unknown["limits"]["memory"] = serde_json::json!(1);
    let path = f.dir.path().join("bad.json");
    std::fs::write(&path, serde_json::to_vec(&unknown).unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("unknown field `memory`"),
        "{}",
        stderr(&out)
    );
}
