//! The command line is an interface: scripts, the Nix wrapper and the NixOS module call it.

mod common;

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(common::BIN).args(args).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_texts_match_snapshots() {
    insta::assert_snapshot!("help", help(&["--help"]));
    insta::assert_snapshot!("enter_help", help(&["enter", "--help"]));
    insta::assert_snapshot!("sync_ips_help", help(&["sync-ips", "--help"]));
    insta::assert_snapshot!("selftest_help", help(&["selftest", "--help"]));
    insta::assert_snapshot!("check_config_help", help(&["check-config", "--help"]));
    insta::assert_snapshot!("cleanup_help", help(&["cleanup", "--help"]));
}

#[test]
fn conflicting_network_flags_are_a_usage_error() {
    let out = Command::new(common::BIN)
        .args(["enter", "--no-network", "--full-network", "/tmp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
