//! The persistent sandbox home, its refresh from `~/.claude`, the managed settings, and
//! the symlink attacks on all three.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use common::*;

/// Claim a test user's host home for the whole test and reset it: the tests of this file
/// run in parallel, and a user's home is shared between the tests that use that user.
fn claim_home(user: TestUser) -> MutexGuard<'static, ()> {
    static HOMES: [Mutex<()>; 3] = [const { Mutex::new(()) }; 3];
    let guard = HOMES[(user.uid - ALICE.uid) as usize]
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    reset_home(user);
    guard
}

/// Remove `~/.claude` and the custom settings of a test user before a test sets them.
fn reset_home(user: TestUser) {
    let _ = std::fs::remove_dir_all(user.home().join(".claude"));
    let _ = std::fs::remove_dir_all(user.home().join(".config/claude-chroot"));
}

/// The first line of the host's /etc/shadow, which must never show up inside.
fn shadow_line() -> String {
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap();
    shadow.lines().next().unwrap().to_string()
}

// Each test uses its own user: the users' homes on the host are shared state.
#[test]
fn claude_dir_is_copied_in_changes_persist_and_the_host_copy_is_untouched() {
    let u = ALICE.ensure();
    let _home = claim_home(u);
    let f = Fixture::new();
    let ws = f.workspace("ws", u);
    write_as(
        u,
        &u.home().join(".claude/settings.json"),
        "{\"host\": 1}\n",
    );
    write_as(u, &u.home().join(".claude/projects/p/notes.md"), "notes\n");
    let before = tree(&u.home().join(".claude"));

    let out = ok(&f.run(
        u,
        &ws,
        "cat ~/.claude/settings.json ~/.claude/projects/p/notes.md; \
         echo changed > ~/.claude/projects/p/notes.md; echo new > ~/.claude/inside.txt; \
         rm ~/.claude/settings.json",
    ));
    assert_eq!(out, "{\"host\": 1}\nnotes\n");
    assert_eq!(
        tree(&u.home().join(".claude")),
        before,
        "host ~/.claude changed"
    );

    // The next session sees its own changes; a file deleted inside comes back from the host.
    let out = ok(&f.run(
        u,
        &ws,
        "cat ~/.claude/projects/p/notes.md ~/.claude/inside.txt ~/.claude/settings.json",
    ));
    assert_eq!(out, "changed\nnew\n{\"host\": 1}\n");
    assert_eq!(tree(&u.home().join(".claude")), before);
    reset_home(u);
}

#[test]
fn symlinks_in_claude_dir_copy_and_reveal_nothing() {
    let u = BOB.ensure();
    let _home = claim_home(u);
    let f = Fixture::new();
    let ws = f.workspace("ws", u);
    let dir = u.home().join(".claude");
    std::fs::create_dir_all(&dir).unwrap();
    chown(&dir, u);
    symlink("/etc/shadow", dir.join("shadow")).unwrap();
    // A file the user can read, outside ~/.claude: a symlink must not carry it in either.
    write_as(u, &u.home().join(".ssh/id_test"), "PRIVATE KEY\n");
    symlink(u.home().join(".ssh/id_test"), dir.join("key")).unwrap();
    symlink(u.home().join(".ssh"), dir.join("sshdir")).unwrap();
    std::os::unix::fs::lchown(dir.join("shadow"), Some(u.uid), Some(u.gid())).unwrap();
    let out = ok(&f.run(
        u,
        &ws,
        "ls -A ~/.claude; cat ~/.claude/shadow ~/.claude/key ~/.claude/sshdir/id_test 2>&1; true",
    ));
    assert!(!out.contains(&shadow_line()), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    assert!(
        !out.lines()
            .any(|l| l == "shadow" || l == "key" || l == "sshdir"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(u.home().join(".ssh"));
    reset_home(u);
}

#[test]
fn symlink_left_in_the_sandbox_home_does_not_redirect_the_next_refresh() {
    let u = ALICE.ensure();
    let _home = claim_home(u);
    let f = Fixture::new();
    let ws = f.workspace("ws", u);
    write_as(u, &u.home().join(".claude/settings.json"), "{\"v\": 1}\n");
    // Files the agent would like the next session's refresh (run as the user) to overwrite.
    let victim = f.dir.path().join("victim");
    write_as(u, &victim, "original\n");
    let out = ok(&f.run(
        u,
        &ws,
        &format!(
            "ln -sf {v} ~/.claude/settings.json && ln -sf {v} ~/.bashrc && \
             mkdir -p ~/.claude/projects && rmdir ~/.claude/projects && ln -s {d} ~/.claude/projects && echo planted",
            v = victim.display(),
            d = f.dir.path().display()
        ),
    ));
    assert_eq!(out, "planted\n");
    // The host copy is newer now, so the next refresh replaces the agent's symlink.
    std::thread::sleep(Duration::from_millis(20));
    write_as(u, &u.home().join(".claude/settings.json"), "{\"v\": 2}\n");
    write_as(u, &u.home().join(".claude/projects/p.md"), "project\n");
    let out = ok(&f.run(
        u,
        &ws,
        "cat ~/.claude/settings.json; test -L ~/.bashrc && echo LINK; test -L ~/.claude/projects && echo LINK; cat ~/.claude/projects/p.md",
    ));
    assert_eq!(out, "{\"v\": 2}\nproject\n");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original\n");
    assert!(!f.dir.path().join("p.md").exists());
    reset_home(u);
}

#[test]
fn custom_managed_settings_win_over_the_default() {
    let u = BOB.ensure();
    let _home = claim_home(u);
    let f = Fixture::new();
    let ws = f.workspace("ws", u);
    let custom = "{\"permissions\": {\"deny\": [\"Bash(custom:*)\"]}}\n";
    write_as(
        u,
        &u.home().join(".config/claude-chroot/managed-settings.json"),
        custom,
    );
    let out = ok(&f.run(u, &ws, "cat /etc/claude-code/managed-settings.json"));
    assert_eq!(out, custom);
    reset_home(u);
}

#[test]
fn malformed_custom_managed_settings_stop_enter_naming_the_file() {
    let u = ALICE.ensure();
    let _home = claim_home(u);
    let f = Fixture::new();
    let ws = f.workspace("ws", u);
    let path = u.home().join(".config/claude-chroot/managed-settings.json");
    for bad in ["{not json", "[\"an array\"]"] {
        write_as(u, &path, bad);
        let out = f.run(u, &ws, "echo RAN");
        assert_eq!(out.status.code(), Some(125));
        assert!(!stdout(&out).contains("RAN"));
        let err = stderr(&out);
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    reset_home(u);
}

#[test]
fn custom_settings_symlink_to_shadow_reveals_nothing() {
    let u = BOB.ensure();
    let _home = claim_home(u);
    let f = Fixture::new();
    let ws = f.workspace("ws", u);
    let dir = u.home().join(".config/claude-chroot");
    std::fs::create_dir_all(&dir).unwrap();
    symlink("/etc/shadow", dir.join("managed-settings.json")).unwrap();
    let out = f.run(u, &ws, "cat /etc/claude-code/managed-settings.json");
    assert_eq!(out.status.code(), Some(125));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains(&shadow_line()), "{all}");
    assert!(all.contains("Permission denied"), "{all}");
    reset_home(u);
}

#[test]
fn settings_copy_is_immutable_while_the_session_runs() {
    let u = ALICE.ensure();
    let _home = claim_home(u);
    let f = Fixture::new();
    let ws = f.workspace("ws", u);
    let mut child = f
        .command(Some(u))
        .args(["enter", "--config"])
        .arg(&f.config)
        .arg("--no-network")
        .arg(&ws)
        .args(["--", "/bin/sh", "-c", "touch /workspace/started; sleep 30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = ws.join("started");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("the session ended before starting ({status}): {err}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sessions = f.sessions();
    assert_eq!(sessions.len(), 1);
    let copy = sessions[0].join("managed-settings.json");
    let immutable = claude_chroot::immutable::is_set(&copy).unwrap();
    // Even root on the host cannot write it while the flag is set.
    let write = std::fs::OpenOptions::new().append(true).open(&copy);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    assert!(immutable);
    assert!(write.is_err());
    assert!(f.sessions().is_empty());
}

#[test]
fn a_workspace_holding_the_custom_settings_or_claude_dir_is_refused() {
    let u = CAROL.ensure();
    let _home = claim_home(u);
    let f = Fixture::new();
    // A dotfiles checkout that ~/.config/claude-chroot links into, as stow makes them;
    // the settings file itself does not exist yet, so the agent could create it.
    let dotfiles = f.workspace("dotfiles", u);
    std::fs::create_dir_all(dotfiles.join("claude-chroot")).unwrap();
    chown(&dotfiles.join("claude-chroot"), u);
    std::fs::create_dir_all(u.home().join(".config")).unwrap();
    chown(&u.home().join(".config"), u);
    symlink(
        dotfiles.join("claude-chroot"),
        u.home().join(".config/claude-chroot"),
    )
    .unwrap();
    let out = f.run(
        u,
        &dotfiles,
        "touch /workspace/claude-chroot/managed-settings.json",
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("holds your custom managed settings"), "{err}");
    assert!(
        !dotfiles
            .join("claude-chroot/managed-settings.json")
            .exists()
    );
    reset_home(u);

    // ~/.claude kept in a project.
    let project = f.workspace("project", u);
    std::fs::create_dir(project.join("claude-home")).unwrap();
    chown(&project.join("claude-home"), u);
    symlink(project.join("claude-home"), u.home().join(".claude")).unwrap();
    let out = f.run(u, &project, "true");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("holds your ~/.claude"), "{err}");

    std::fs::remove_file(u.home().join(".claude")).unwrap();

    // Elsewhere, the linked settings directory is fine.
    symlink(
        dotfiles.join("claude-chroot"),
        u.home().join(".config/claude-chroot"),
    )
    .unwrap();
    let other = f.workspace("other", u);
    assert_eq!(ok(&f.run(u, &other, "echo ran")), "ran\n");
    reset_home(u);
}

#[test]
fn the_refresh_reads_as_the_user_so_a_file_only_root_could_read_stays_out() {
    let u = CAROL.ensure();
    let _home = claim_home(u);
    let f = Fixture::new();
    let ws = f.workspace("ws", u);
    write_as(u, &u.home().join(".claude/readable.txt"), "shared\n");
    let locked = u.home().join(".claude/locked.txt");
    write_as(u, &locked, "only root could read this\n");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    // A link into the store stays a link; one anywhere else is not followed.
    let store_link = "/nix/store/00000000000000000000000000000000-tool/bin/tool";
    symlink(store_link, u.home().join(".claude/tool")).unwrap();
    let out = ok(&f.run(
        u,
        &ws,
        "cat ~/.claude/readable.txt; readlink ~/.claude/tool; \
         ls ~/.claude/locked.txt 2>/dev/null || echo locked-absent",
    ));
    assert_eq!(out, format!("shared\n{store_link}\nlocked-absent\n"));
    reset_home(u);
}

#[test]
fn a_symlinked_claude_dir_is_followed_as_the_user() {
    let u = CAROL.ensure();
    let _home = claim_home(u);
    let f = Fixture::new();
    let ws = f.workspace("ws", u);
    // As a dotfiles manager or an impermanence setup leaves it.
    let real = u.home().join(".dotfiles/claude");
    write_as(u, &real.join("settings.json"), "{\"from\": \"dotfiles\"}\n");
    symlink(&real, u.home().join(".claude")).unwrap();
    let out = ok(&f.run(u, &ws, "cat ~/.claude/settings.json"));
    assert_eq!(out, "{\"from\": \"dotfiles\"}\n");
    std::fs::remove_file(u.home().join(".claude")).unwrap();
    std::fs::remove_dir_all(u.home().join(".dotfiles")).unwrap();
}

#[test]
fn each_uid_has_its_own_sandbox_home() {
    let a = ALICE.ensure();
    let b = BOB.ensure();
    let _homes = (claim_home(a), claim_home(b));
    let f = Fixture::new();
    let ws_a = f.workspace("ws-a", a);
    let ws_b = f.workspace("ws-b", b);
    write_as(a, &a.home().join(".claude/whose.txt"), "alice\n");
    ok(&f.run(a, &ws_a, "echo alice-notes > ~/notes.txt"));
    let out = ok(&f.run(
        b,
        &ws_b,
        "cat ~/notes.txt ~/.claude/whose.txt 2>/dev/null; echo home=$HOME",
    ));
    assert_eq!(out, "home=/home/claude\n");
    let homes = f.state.join("home");
    assert_eq!(
        std::fs::read_to_string(homes.join(a.uid.to_string()).join("notes.txt")).unwrap(),
        "alice-notes\n"
    );
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(homes.join(b.uid.to_string())).unwrap();
    assert_eq!((mode.uid(), mode.mode() & 0o777), (b.uid, 0o700));
    reset_home(a);
    reset_home(b);
}
