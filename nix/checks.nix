# `nix flake check`: the build, lints, formatting and the NixOS VM tests.
{ pkgs, self }:
let
  inherit (pkgs) lib;

  system = pkgs.stdenv.hostPlatform.system;
  packages = self.packages.${system};
  activator = packages.claude-chroot-activate;

  rustSources = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      (lib.fileset.maybeMissing ../tests)
    ];
  };

  nixSources = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.fileFilter (file: file.hasExt "nix") ../.;
  };

  vmTest = file: pkgs.testers.runNixOSTest (import file);
in
{
  package = activator;
  command = packages.default;
  inherit (packages) skeleton;

  # Every target, tests included, with warnings as errors.
  clippy = activator.overrideAttrs (old: {
    pname = "claude-chroot-clippy";
    src = rustSources;
    nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
    buildPhase = ''
      runHook preBuild
      cargo clippy --all-targets --offline -- -D warnings
      runHook postBuild
    '';
    doCheck = false;
    installPhase = ''
      touch "$out"
    '';
  });

  rustfmt = pkgs.runCommand "claude-chroot-rustfmt" { nativeBuildInputs = [ pkgs.rustfmt ]; } ''
    find ${rustSources} -name '*.rs' -print0 | xargs -0 rustfmt --check --edition 2024
    touch "$out"
  '';

  nixfmt = pkgs.runCommand "claude-chroot-nixfmt" { nativeBuildInputs = [ pkgs.nixfmt ]; } ''
    find ${nixSources} -name '*.nix' -print0 | xargs -0 nixfmt --check
    touch "$out"
  '';

  vm-network = vmTest ../tests/nixos/network.nix;
  vm-filesystem = vmTest ../tests/nixos/filesystem.nix;
  vm-settings = vmTest ../tests/nixos/settings.nix;
  vm-lifecycle = vmTest ../tests/nixos/lifecycle.nix;
  vm-sync-ips = vmTest ../tests/nixos/sync-ips.nix;
}
