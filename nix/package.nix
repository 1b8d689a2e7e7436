# The run-time half: the `claude-chroot-activate` binary.
{
  lib,
  rustPlatform,
}:
let
  cargo = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "claude-chroot-activate";
  inherit (cargo.package) version;

  # Only what the crate needs, so an edit to the Nix files or the docs does
  # not rebuild the binary.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The integration tests need root, namespaces and nftables, which the build
  # sandbox does not give; they run in CI and in the NixOS VM tests instead.
  cargoTestFlags = [ "--lib" ];
  # This unit test drops from root to nobody to show that the seccomp filter,
  # not the missing privilege, refuses each call; the build user cannot.
  checkFlags = [
    "--skip=seccomp::tests::every_listed_call_is_refused_and_the_filter_is_what_refuses_it"
  ];

  meta = {
    description = "Run-time half of claude-chroot: one sandboxed Claude Code session per project";
    license = lib.licenses.mit;
    mainProgram = "claude-chroot-activate";
    platforms = lib.platforms.linux;
  };
}
