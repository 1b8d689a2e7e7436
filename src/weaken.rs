//! Test-only switches that disable one protection each, so that the tests can show every
//! `selftest` probe reporting BROKEN when the protection it checks is gone.
//!
//! Set `CLAUDE_CHROOT_TEST_WEAKEN` to a comma-separated list of knob names in the
//! activator's environment. Only debug builds read it: in a release build (the flake's
//! package is one; `buildRustPackage` builds the release profile, which has no
//! `debug_assertions`) [`active`] is a constant `false`, the variable is never read and its
//! name is not even in the binary. Where a deliberately weakened configuration can disable
//! a protection exactly (a bind of `/root`, an allowlist containing the probe's address,
//! a writable `/etc`), the tests use that instead of a knob.

/// The environment variable holding the knobs.
pub const ENV: &str = "CLAUDE_CHROOT_TEST_WEAKEN";

/// One protection that a test may switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knob {
    /// No seccomp filter for the agent (`seccomp::install`).
    Seccomp,
    /// No `PR_SET_NO_NEW_PRIVS` in `privileges::drop_to`. Installing the seccomp filter sets
    /// it too (an unprivileged filter needs it), so use it together with `seccomp`.
    NoNewPrivs,
    /// The agent keeps root and every capability (`privileges::drop_to`).
    Privileges,
    /// Bind mounts without `nosuid` (`mounts::run_step`).
    Nosuid,
    /// No PID namespace (`sandbox::Running::spawn`).
    PidNamespace,
    /// No network namespace (`sandbox::Running::spawn`). The sandbox then shares the
    /// caller's network: use it only with `--no-network`, inside a throwaway namespace.
    NetNamespace,
    /// No pseudo-terminal of the sandbox's own and no new session: the agent gets the
    /// invoking terminal (`sandbox`).
    Pty,
    /// The firewall allows the ports `selftest` probes on allowed addresses (`enter`).
    PortFilter,
    /// The session's processes are not put into its pids-limited cgroup (`enter`).
    PidsLimit,
    /// `enter` does not ask the host's Nix daemon whether it trusts the agent.
    NixDaemonCheck,
}

impl Knob {
    pub const ALL: [Knob; 10] = [
        Knob::Seccomp,
        Knob::NoNewPrivs,
        Knob::Privileges,
        Knob::Nosuid,
        Knob::PidNamespace,
        Knob::NetNamespace,
        Knob::Pty,
        Knob::PortFilter,
        Knob::PidsLimit,
        Knob::NixDaemonCheck,
    ];

    /// The name used in `CLAUDE_CHROOT_TEST_WEAKEN`.
    pub fn name(self) -> &'static str {
        match self {
            Knob::Seccomp => "seccomp",
            Knob::NoNewPrivs => "no-new-privs",
            Knob::Privileges => "privileges",
            Knob::Nosuid => "nosuid",
            Knob::PidNamespace => "pid-namespace",
            Knob::NetNamespace => "net-namespace",
            Knob::Pty => "pty",
            Knob::PortFilter => "port-filter",
            Knob::PidsLimit => "pids-limit",
            Knob::NixDaemonCheck => "nix-daemon-check",
        }
    }
}

/// Whether `knob` appears in the comma-separated `spec`, in a build that honours knobs.
pub fn listed(spec: &str, knob: Knob) -> bool {
    cfg!(debug_assertions) && spec.split(',').any(|k| k.trim() == knob.name())
}

/// Whether the protection behind `knob` is switched off for this process.
#[cfg(debug_assertions)]
pub fn active(knob: Knob) -> bool {
    std::env::var(ENV).is_ok_and(|spec| listed(&spec, knob))
}

/// Whether the protection behind `knob` is switched off: never, in a release build.
#[cfg(not(debug_assertions))]
pub fn active(_knob: Knob) -> bool {
    false
}

/// The knobs set for this process, to pass on to an activator it starts.
pub fn inherited() -> Option<String> {
    if cfg!(debug_assertions) {
        std::env::var(ENV).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_are_honoured_only_in_debug_builds() {
        for knob in Knob::ALL {
            let spec = format!("other, {} ,more", knob.name());
            assert_eq!(listed(&spec, knob), cfg!(debug_assertions), "{knob:?}");
            assert!(!listed("other,more", knob));
        }
        if !cfg!(debug_assertions) {
            // Whatever the environment says, a release build weakens nothing.
            assert!(Knob::ALL.iter().all(|&k| !active(k)));
            assert_eq!(inherited(), None);
        }
    }

    #[test]
    fn knob_names_are_distinct() {
        let mut names: Vec<&str> = Knob::ALL.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Knob::ALL.len());
    }
}
