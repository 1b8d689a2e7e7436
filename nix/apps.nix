# `nix run .#enter -- ./project`, `nix run .#sync-ips`, `nix run .#cleanup`,
# `nix run .#selftest`.
{ pkgs, self }:
let
  inherit (pkgs) lib;

  command = self.packages.${pkgs.stdenv.hostPlatform.system}.default;

  app = subcommand: description: {
    type = "app";
    program =
      if subcommand == null then
        lib.getExe command
      else
        "${pkgs.writeShellScript "claude-chroot-${subcommand}" ''
          exec ${lib.getExe command} ${subcommand} "$@"
        ''}";
    meta.description = description;
  };
in
rec {
  enter = app null "Start a sandboxed Claude Code session on a project directory";
  sync-ips = app "sync-ips" "Resolve the allowed domains and review the allowlist";
  cleanup = app "cleanup" "Remove what interrupted sessions left behind";
  selftest = app "selftest" "Try to escape from a real session and report what held";
  default = enter;
}
