//! `claude-chroot-activate`: the run-time half of claude-chroot (see `--help`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use claude_chroot::config::{Config, DEFAULT_CONFIG_PATH, NetworkMode};
use claude_chroot::enter::{EnterArgs, enter};
use claude_chroot::selftest::{self, Options as SelftestOptions};
use claude_chroot::{identity, probe, session, sync_ips};

/// Exit status for a failure of the sandbox itself (as opposed to the command's own).
const SANDBOX_FAILURE: u8 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "claude-chroot-activate",
    version,
    about = "Run an AI coding agent in a sandbox that sees one project and an allowlisted network",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The activation config written by the Nix half.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a sandboxed session on WORKSPACE (a login shell, or COMMAND).
    Enter {
        #[command(flatten)]
        config: ConfigArg,
        /// Loopback only: no connection leaves the sandbox.
        #[arg(long, conflicts_with = "full_network")]
        no_network: bool,
        /// Unfiltered network, for debugging only.
        #[arg(long)]
        full_network: bool,
        /// Print details and phase timings.
        #[arg(short, long)]
        verbose: bool,
        /// Bind this activator read-only at /run/claude-chroot-probe (for `selftest` only;
        /// must be the running binary itself).
        #[arg(long, hide = true, value_name = "PATH")]
        probe_binary: Option<PathBuf>,
        /// The project directory, mounted read-write at /workspace.
        workspace: PathBuf,
        /// Command to run instead of a login shell (after `--`).
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Resolve the allowlisted domains, vet the addresses and update the allowlist.
    SyncIps {
        #[command(flatten)]
        config: ConfigArg,
        /// Accept the changes without asking.
        #[arg(long, conflicts_with = "check")]
        yes: bool,
        /// Only report drift: exit 1 if the allowlist would change, 0 otherwise.
        #[arg(long)]
        check: bool,
    },
    /// Try to escape from a real session on a temporary workspace and report what held.
    ///
    /// Exit status: 0 when every probe held, 1 when any probe got through, 2 when none got
    /// through but some were skipped (with the reason in the report), 125 when the selftest
    /// itself could not run.
    Selftest {
        #[command(flatten)]
        config: ConfigArg,
        /// Test with loopback only instead of the configured network mode.
        #[arg(long, conflicts_with = "full_network")]
        no_network: bool,
        /// Test with the unfiltered network (the network probes will fail).
        #[arg(long)]
        full_network: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The escape attempts of `selftest`, run inside its session.
    #[command(hide = true)]
    Probe {
        /// The runner's plan, as JSON.
        #[arg(long, required_unless_present = "hold")]
        plan: Option<String>,
        /// Only leave a detached process behind and wait (the activator-death check).
        #[arg(long, value_name = "NONCE")]
        hold: Option<String>,
        /// Where to write the findings (or the readiness mark).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an activation config as `enter` would read it, without root (for builds).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove what dead sessions left behind (immutable flags, state, locks).
    Cleanup {
        #[command(flatten)]
        config: ConfigArg,
        /// Remove the whole state directory (homes, logs and allowlist too).
        #[arg(long)]
        purge: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            // A usage error is a failure of the sandbox too: the command never ran.
            let _ = e.print();
            return ExitCode::from(SANDBOX_FAILURE);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("claude-chroot: error: {e:#}");
            ExitCode::from(SANDBOX_FAILURE)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Enter {
            config,
            no_network,
            full_network,
            verbose,
            probe_binary,
            workspace,
            command,
        } => {
            // The flag binds a host file inside: only the activator itself, never a file
            // chosen by whoever can run `enter` through sudo.
            if let Some(path) = &probe_binary {
                let exe = std::env::current_exe()?;
                if path != &exe {
                    anyhow::bail!("--probe-binary must be {}", exe.display());
                }
            }
            let status = enter(&EnterArgs {
                config: config.config,
                network: network_mode(no_network, full_network),
                verbose,
                probe_binary,
                workspace,
                command,
            })?;
            Ok(ExitCode::from(status.clamp(0, 255) as u8))
        }
        Command::Selftest {
            config,
            no_network,
            full_network,
            json,
        } => Ok(ExitCode::from(selftest::run(&SelftestOptions {
            config: config.config,
            network: network_mode(no_network, full_network),
            json,
        })?)),
        Command::Probe { plan, hold, out } => {
            match (plan, hold) {
                (_, Some(nonce)) => probe::hold(&nonce, &out)?,
                (Some(plan), None) => probe::run(&plan, &out)?,
                (None, None) => anyhow::bail!("probe needs --plan or --hold"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::SyncIps { config, yes, check } => {
            identity::require_root()?;
            let config = Config::load(&config.config)?;
            Ok(ExitCode::from(sync_ips::run(&config, yes, check)?))
        }
        Command::CheckConfig { config } => {
            Config::load(&config.config)?;
            println!("{}: valid", config.config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup { config, purge } => {
            identity::require_root()?;
            let config = Config::load(&config.config)?;
            for line in session::cleanup(&config.state_dir, purge)? {
                eprintln!("claude-chroot: {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn network_mode(no_network: bool, full_network: bool) -> Option<NetworkMode> {
    match (no_network, full_network) {
        (true, _) => Some(NetworkMode::None),
        (_, true) => Some(NetworkMode::Full),
        _ => None,
    }
}
