//! `enter`: one sandboxed session, from argument checks to teardown.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};

use crate::allowlist::Allowlist;
use crate::config::{Config, NetworkMode};
use crate::identity::{self, Identity};
use crate::mounts::{self, SessionMounts};
use crate::sandbox::{Launch, Running};
use crate::session::{self, Session};
use crate::weaken::{self, Knob};
use crate::workspace::Workspace;
use crate::{cgroup, home, network, nix_daemon, protect, settings, terminal};

/// What the command line asks of `enter`.
#[derive(Debug, Clone)]
pub struct EnterArgs {
    pub config: PathBuf,
    pub network: Option<NetworkMode>,
    pub verbose: bool,
    /// Bind this file (the activator itself) at [`crate::probe::INSIDE_PATH`].
    pub probe_binary: Option<PathBuf>,
    pub workspace: PathBuf,
    pub command: Vec<String>,
}

/// Phase timings, printed with `-v`.
struct Timings {
    start: Instant,
    last: Instant,
    phases: Vec<(&'static str, f64)>,
    /// Steps that ran side by side within a phase: the phase, then each step's time.
    overlapped: Vec<(&'static str, Vec<(&'static str, f64)>)>,
}

impl Timings {
    fn new() -> Timings {
        let now = Instant::now();
        Timings {
            start: now,
            last: now,
            phases: Vec::new(),
            overlapped: Vec::new(),
        }
    }
    fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.phases
            .push((phase, (now - self.last).as_secs_f64() * 1000.0));
        self.last = now;
    }
    /// Record the times of steps that ran side by side within `phase`.
    fn overlap(&mut self, phase: &'static str, steps: Vec<(&'static str, f64)>) {
        if !steps.is_empty() {
            self.overlapped.push((phase, steps));
        }
    }

    fn line(&self) -> String {
        let list = |steps: &[(&'static str, f64)]| {
            let parts: Vec<String> = steps
                .iter()
                .map(|(p, ms)| format!("{p} {ms:.1}ms"))
                .collect();
            parts.join(", ")
        };
        let mut line = format!(
            "timing: {} (total {:.1}ms)",
            list(&self.phases),
            (self.last - self.start).as_secs_f64() * 1000.0
        );
        if !self.overlapped.is_empty() {
            let within: Vec<String> = self
                .overlapped
                .iter()
                .map(|(phase, steps)| format!("{phase}: {}", list(steps)))
                .collect();
            line.push_str(&format!("; side by side within {}", within.join("; ")));
        }
        line
    }
}

/// Everything checked before the first side effect.
struct Checked {
    config: Config,
    mode: NetworkMode,
    identity: Identity,
    workspace: Workspace,
    allowlist: Option<Allowlist>,
    hosts: String,
    settings: settings::Chosen,
    argv: Vec<CString>,
    env: Vec<CString>,
    path: String,
}

/// Run a session; the command's exit status.
pub fn enter(args: &EnterArgs) -> Result<i32> {
    let mut timings = Timings::new();
    let checked = check(args)?;
    // From here on a terminating signal ends the session through teardown.
    crate::sandbox::block_signals()?;
    timings.mark("checks");
    let mut session = create_session(&checked)?;
    let result = run(args, &checked, &mut session, &mut timings);
    let removed = session.remove();
    timings.mark("teardown");
    if args.verbose {
        eprintln!("claude-chroot: {}", timings.line());
    }
    let status = result?;
    removed.context("remove the session state")?;
    Ok(status)
}

fn check(args: &EnterArgs) -> Result<Checked> {
    identity::require_root()?;
    let config = Config::load(&args.config)?;
    let mode = args.network.unwrap_or(config.network.mode);
    let identity = Identity::resolve(&config.user)?;
    // Compare the workspace against the state directory as the kernel resolves it.
    let state_dir = std::fs::canonicalize(&config.state_dir).unwrap_or(config.state_dir.clone());
    let workspace = Workspace::open(&args.workspace, &identity, &state_dir)?;
    workspace.refuse_host_config(&identity, &config.managed_settings.custom)?;
    // Load the vetted allowlist once: the session's /etc/hosts and the firewall are both
    // built from this value, so resolution and enforcement cannot disagree.
    let allowlist = match mode {
        NetworkMode::Allowlist => Some(Allowlist::load(&config.allowlist_file())?),
        NetworkMode::None | NetworkMode::Full => None,
    };
    let hosts = match &allowlist {
        Some(list) => list.session_hosts(),
        None => localhost_hosts(),
    };
    let settings = settings::choose(&config.managed_settings, &identity)?;
    // A Nix daemon that trusts the agent's uid would run what the agent asks as root.
    let daemon = if weaken::active(Knob::NixDaemonCheck) {
        nix_daemon::Answer::NoSocket
    } else {
        nix_daemon::check(&config.mounts, &identity)?
    };
    if args.verbose {
        eprintln!(
            "claude-chroot: Nix daemon: {}",
            nix_daemon::describe(&daemon)
        );
    }
    let (argv, env, path) = command_and_env(&config, &args.command)?;
    Ok(Checked {
        config,
        mode,
        identity,
        workspace,
        allowlist,
        hosts,
        settings,
        argv,
        env,
        path,
    })
}

fn localhost_hosts() -> String {
    "127.0.0.1 localhost\n::1 localhost\n".to_string()
}

/// The command's argv, its environment, and the PATH inside to find it on.
fn command_and_env(
    config: &Config,
    command: &[String],
) -> Result<(Vec<CString>, Vec<CString>, String)> {
    let cstring = |s: &str| CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"));
    let argv = if command.is_empty() {
        vec![
            cstring(&config.tools.shell.to_string_lossy())?,
            cstring("-l")?,
        ]
    } else {
        command.iter().map(|a| cstring(a)).collect::<Result<_>>()?
    };
    let mut vars: std::collections::BTreeMap<String, String> = Default::default();
    for name in &config.environment.pass {
        if let Ok(v) = std::env::var(name) {
            vars.insert(name.clone(), v);
        }
    }
    for (k, v) in &config.environment.set {
        vars.insert(k.clone(), v.clone());
    }
    let home = config.user.home.to_string_lossy().into_owned();
    vars.insert("HOME".into(), home);
    vars.insert("USER".into(), config.user.name.clone());
    vars.insert("LOGNAME".into(), config.user.name.clone());
    vars.insert(
        "SHELL".into(),
        config.tools.shell.to_string_lossy().into_owned(),
    );
    vars.entry("PATH".into())
        .or_insert_with(|| "/usr/bin:/bin".into());
    let path = vars["PATH"].clone();
    let env = vars
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}")))
        .collect::<Result<_>>()?;
    Ok((argv, env, path))
}

fn render_passwd(config: &Config, identity: &Identity) -> (String, String) {
    let (uid, gid) = (identity.uid, identity.gid);
    let name = &config.user.name;
    let home = config.user.home.display();
    let shell = config.tools.shell.display();
    let passwd = format!(
        "root:x:0:0:root:/root:/run/current-system/sw/bin/nologin\n\
         {name}:x:{uid}:{gid}:{name}:{home}:{shell}\n\
         nobody:x:65534:65534:nobody:/var/empty:/run/current-system/sw/bin/nologin\n"
    );
    let group = format!("root:x:0:\n{name}:x:{gid}:\nnogroup:x:65534:\n");
    (passwd, group)
}

fn create_session(c: &Checked) -> Result<Session> {
    session::prepare_state_dir(&c.config.state_dir)?;
    Session::create(
        &c.config.state_dir,
        &c.workspace.path,
        c.identity.uid.as_raw(),
    )
}

fn run(args: &EnterArgs, c: &Checked, session: &mut Session, timings: &mut Timings) -> Result<i32> {
    // Prepare the sandbox home as the user: skeleton files, then ~/.claude.
    let (_, home_fd) = home::open_sandbox_home(&c.config.state_dir, &c.identity)?;
    home::install_skeleton_files(
        &c.identity,
        &c.config.skeleton.join("home"),
        home_fd.as_fd(),
    )?;
    let refreshed = home::refresh(&c.identity, home_fd.as_fd())?;
    if args.verbose {
        eprintln!(
            "claude-chroot: refreshed ~/.claude: {} copied, {} skipped",
            refreshed.copied.len(),
            refreshed.skipped.len()
        );
        for (p, why) in &refreshed.skipped {
            eprintln!("claude-chroot:   skipped {} ({why})", p.display());
        }
    }

    // Write the session's identity and name files, and the immutable managed settings.
    let (passwd, group) = render_passwd(&c.config, &c.identity);
    let passwd = session.write_file("passwd", passwd.as_bytes())?;
    let group = session.write_file("group", group.as_bytes())?;
    let hosts = session.write_file("hosts", c.hosts.as_bytes())?;
    let managed = settings::install(session, &c.settings)?;
    let new_root = session.dir.join("root");
    std::fs::create_dir(&new_root)
        .with_context(|| format!("cannot create {}", new_root.display()))?;
    // The pids-limited cgroup, recorded before it exists so that `cleanup` finds it.
    let cgroup = match c.config.limits.pids {
        Some(limit) => {
            let id = session.id.clone();
            let cgroup = cgroup::PidsCgroup::create(&id, limit, |path| {
                session.info.cgroup = Some(path.to_path_buf());
                session.save()
            })?;
            Some(cgroup)
        }
        None => None,
    };
    timings.mark("state");

    // Make the existing protected paths read-only; the others are compared at exit.
    let protection = protect::prepare(
        &c.identity,
        c.workspace.fd.as_fd(),
        &c.workspace.path,
        &c.config.workspace.protected_paths,
    )?;
    for note in &protection.notes {
        eprintln!("claude-chroot: {note}");
    }
    let workspace_tree = mounts::detached_tree(c.workspace.fd.as_fd(), "workspace")?;
    let home_tree = mounts::detached_tree(home_fd.as_fd(), "sandbox home")?;
    let steps = mounts::plan(
        &c.config,
        &SessionMounts {
            workspace_fd: workspace_tree.as_raw_fd(),
            home_fd: home_tree.as_raw_fd(),
            passwd,
            group,
            hosts,
            managed_settings: managed,
            protected: protection
                .binds
                .iter()
                .map(|b| (b.rel.clone(), b.tree.as_raw_fd(), b.is_dir, b.writable))
                .collect(),
            probe_binary: args.probe_binary.clone(),
        },
    );
    let launch = Launch {
        new_root,
        steps,
        uid: c.identity.uid,
        gid: c.identity.gid,
        hostname: "claude-chroot".into(),
        argv: c.argv.clone(),
        env: c.env.clone(),
        path: c.path.clone(),
        cwd: Path::new(mounts::WORKSPACE).to_path_buf(),
        terminal: terminal::wanted(),
        seccomp: crate::seccomp::compile()?,
    };
    eprintln!(
        "claude-chroot: {} as uid {} (network: {})",
        c.workspace.path.display(),
        c.identity.uid,
        mode_name(c.mode)
    );
    let started = SystemTime::now();
    let mut running = Running::spawn(launch)?;
    // Nothing in the sandbox forks before the go-ahead, so the whole session is inside.
    // Moving a process between cgroups waits for an RCU grace period (milliseconds), so
    // it runs beside the network setup and the child's mounts.
    let attach = cgroup
        .as_ref()
        .filter(|_| !weaken::active(Knob::PidsLimit))
        .map(|cgroup| cgroup.attach(running.pid()));
    timings.mark("clone");

    // Connect and filter the sandbox's network while the child builds its root; nothing
    // in the sandbox runs before both are done. A failure in the child is the one to
    // report: the network setup may only have failed because the child had gone.
    let net = network::setup_with_allowlist(
        &c.config,
        c.mode,
        running.pid(),
        c.allowlist.as_ref(),
        args.verbose,
    );
    timings.mark("network");
    running.mounted()?;
    if let Some(attach) = attach {
        attach
            .join()
            .map_err(|_| anyhow::anyhow!("the cgroup thread panicked"))?
            .context("cannot put the session into its pids-limited cgroup")?;
    }
    let net = net?;
    timings.mark("mounts");
    timings.overlap("network", net.overlapped.clone());
    if let Some(helper) = net
        .pasta_pid()
        .and_then(|pid| session::Helper::of(pid as u32))
    {
        session.info.helpers.push(helper);
        session.save()?;
    }
    // From the go-ahead on the agent may write to the workspace: whatever fails now, the
    // protected paths are reviewed once the sandbox has gone.
    let status = match running.go() {
        Ok(()) => {
            timings.mark("exec");
            running.wait()
        }
        Err(e) => {
            drop(running);
            Err(e)
        }
    };
    timings.mark("session");
    let mut overlapped = Vec::new();
    let blocked = net.finish(&mut overlapped);
    let ended = SystemTime::now();

    // Review the protected paths first, so that no later failure can skip it; move what
    // the session created or changed there away when quarantine is on.
    let mut changes = protection.review(&c.identity, c.workspace.fd.as_fd());
    if c.config.workspace.quarantine && changes.iter().any(protect::Change::to_quarantine) {
        match quarantine_dir(&c.config.state_dir, &session.id, &c.identity) {
            Ok(dir) => {
                protection.quarantine(&c.identity, c.workspace.fd.as_fd(), &mut changes, &dir)
            }
            Err(e) => protect::left_in_place(&mut changes, &format!("{e:#}")),
        }
    }

    // Report what the filter blocked and what needs review, on stderr, then in the session
    // log as far as it can be written: a full disk must not hide the report.
    if let Ok(blocked) = &blocked {
        eprint!("{}", network::report(blocked));
    }
    eprint!("{}", protect::report(&changes));
    let log = c
        .config
        .state_dir
        .join("logs")
        .join(format!("{}.jsonl", session.id));
    let no_counters = Vec::new();
    let counted = blocked.as_ref().unwrap_or(&no_counters);
    if let Err(e) = network::write_log(&log, started, ended, &c.workspace.path, c.mode, counted) {
        eprintln!("claude-chroot: warning: {e:#}");
    }
    if !changes.is_empty()
        && let Err(e) = append_json_line(&log, &serde_json::json!({ "review": changes }))
    {
        eprintln!("claude-chroot: warning: {e:#}");
    }
    timings.mark("report");
    timings.overlap("report", overlapped);
    let status = status?;
    blocked.context("read the blocked-destination counters")?;
    Ok(status)
}

/// `stateDir/quarantine/ID`, owned by the user so that moves run with the user's rights.
fn quarantine_dir(state_dir: &Path, id: &str, identity: &Identity) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = state_dir.join("quarantine");
    if !base.exists() {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&base)
            .with_context(|| format!("cannot create {}", base.display()))?;
    }
    let dir = base.join(id);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    nix::unistd::chown(&dir, Some(identity.uid), Some(identity.gid))
        .with_context(|| format!("chown {}", dir.display()))?;
    Ok(dir)
}

fn append_json_line(path: &Path, value: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| f.write_all(&line))
        .with_context(|| format!("cannot write session log {}", path.display()))
}

fn mode_name(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::None => "none",
        NetworkMode::Allowlist => "allowlist",
        NetworkMode::Full => "full",
    }
}
