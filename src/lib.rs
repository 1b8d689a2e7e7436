//! claude-chroot-activate: the run-time half of claude-chroot.
//!
//! Everything declarative (the skeleton, the tool environment, `activate.json`) is built by
//! Nix; this crate does only what must happen at run time, as root: namespaces and mounts,
//! the network filter, the privilege drop, and teardown.

pub mod allowlist;
pub mod config;
pub mod firewall;
pub mod network;
pub mod pasta;
pub mod special;
pub mod sync_ips;
