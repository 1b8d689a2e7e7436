//! What only the host can see once a selftest session has ended: whether anything the
//! probes started is still running, whether the session's state is gone, and whether the
//! agent dies with a killed activator and `cleanup` removes the rest.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Options, TempWorkspace, enter_command, nonce};
use crate::config::Config;
use crate::identity::Identity;
use crate::probe::{Finding, Outcome};
use crate::session;

/// Processes whose name is one of `names` (zombies count as gone).
fn processes_named(names: &[String]) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut found = Vec::new();
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let name = head.split_once(" (").map(|(_, n)| n).unwrap_or_default();
        if names.iter().any(|n| n == name) && !rest.starts_with('Z') {
            found.push((pid, name.to_string()));
        }
    }
    found
}

/// Kills what the probes of one run may have left (their names carry the run's nonce) when
/// dropped, so that a selftest that fails half-way leaves nothing running either.
pub(super) struct Reaper(Vec<String>);

impl Reaper {
    pub(super) fn for_nonce(nonce: &str) -> Reaper {
        Reaper(vec![format!("ccr-d{nonce}"), format!("ccr-p{nonce}")])
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for (pid, _) in processes_named(&self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Wait up to `within` for the named processes to be gone; kill and list any that stay.
fn wait_gone(names: &[String], within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_named(names);
        if left.is_empty() {
            return vec![];
        }
        if Instant::now() > deadline {
            // Ours by name (a per-run nonce): end them, and report them.
            for (pid, _) in &left {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            return left
                .into_iter()
                .map(|(pid, name)| format!("{name} (pid {pid})"))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn session_dirs(state_dir: &Path, enter_pid: u32) -> Vec<PathBuf> {
    let prefix = format!("{enter_pid}-");
    std::fs::read_dir(state_dir.join("sessions"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// After a normal exit: nothing the probe started runs, and the session state is gone.
pub(super) fn leftovers(mut f: Finding, nonce: &str, state_dir: &Path, enter_pid: u32) -> Finding {
    let names = [format!("ccr-d{nonce}"), format!("ccr-p{nonce}")];
    let left = wait_gone(&names, Duration::from_secs(3));
    let state = session_dirs(state_dir, enter_pid);
    let mut wrong = Vec::new();
    if !left.is_empty() {
        wrong.push(format!(
            "still running after the session: {}",
            left.join(", ")
        ));
    }
    if !state.is_empty() {
        wrong.push(format!(
            "session state left: {}",
            state
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if wrong.is_empty() {
        f.outcome = Outcome::Held;
        f.detail = format!("no {} after the session, session state removed", names[0]);
    } else {
        f.outcome = Outcome::Broken;
        f.detail = wrong.join("; ");
    }
    f
}

/// A second session whose activator is killed: the agent must die with it, and `cleanup`
/// must remove what the session left.
pub(super) fn activator_death(
    opts: &Options,
    exe: &Path,
    identity: &Identity,
    workspace: &TempWorkspace,
    config: &Config,
) -> Result<Finding> {
    let mut f = Finding {
        id: "activator-death".into(),
        threat: "survive the activator's death".into(),
        tried: "SIGKILL the activator of a second session; look for its processes; cleanup".into(),
        outcome: Outcome::Held,
        detail: String::new(),
        unconfirmed: Vec::new(),
    };
    let nonce = nonce()?;
    let _reaper = Reaper::for_nonce(&nonce);
    let ready = workspace.path.join(".ready");
    let mut cmd = enter_command(
        opts,
        exe,
        &workspace.path,
        &["probe", "--hold", &nonce, "--out", "/workspace/.ready"],
    )?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("start the second selftest session")?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !identity.run_as(|| Ok(ready.symlink_metadata().is_ok()))? {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the second selftest session ended early ({status}): {}",
                stderr_of(&mut child)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the second selftest session did not start within 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let _ = child.wait();

    let names = [format!("ccr-d{nonce}"), format!("ccr-p{nonce}")];
    let left = wait_gone(&names, Duration::from_secs(5));
    let mut wrong = Vec::new();
    if !left.is_empty() {
        wrong.push(format!(
            "still running after the activator died: {}",
            left.join(", ")
        ));
    }
    // The killed activator could not remove its state; cleanup must.
    let had_state = !session_dirs(&config.state_dir, pid).is_empty();
    let removed = session::cleanup(&config.state_dir, false)?;
    for line in &removed {
        eprintln!("claude-chroot: selftest: cleanup: {line}");
    }
    let remaining = session_dirs(&config.state_dir, pid);
    if !remaining.is_empty() {
        wrong.push(format!(
            "cleanup left the dead session's state: {}",
            remaining[0].display()
        ));
    }
    if wrong.is_empty() {
        f.detail = format!(
            "the session's processes died with it; {}",
            if had_state {
                "cleanup removed its state"
            } else {
                "it left no state"
            }
        );
    } else {
        f.outcome = Outcome::Broken;
        f.detail = wrong.join("; ");
    }
    Ok(f)
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s.trim().to_string()
}
