//! claude-chroot-activate: the run-time half of claude-chroot.
//!
//! Everything declarative (the skeleton, the tool environment, `activate.json`) is built by
//! Nix; this crate does only what must happen at run time, as root: namespaces and mounts,
//! the network filter, the privilege drop, and teardown.

pub mod allowlist;
pub mod cgroup;
pub mod config;
pub mod enter;
pub mod firewall;
pub mod home;
pub mod identity;
pub mod immutable;
pub mod mounts;
pub mod netif;
pub mod network;
pub mod nix_daemon;
pub mod pasta;
pub mod privileges;
pub mod probe;
pub mod protect;
pub mod sandbox;
pub mod seccomp;
pub mod selftest;
pub mod session;
pub mod settings;
pub mod snapshot;
pub mod special;
pub mod sync_ips;
pub mod terminal;
pub mod weaken;
pub mod workspace;
