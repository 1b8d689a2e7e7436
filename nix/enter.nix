# The `claude-chroot` command.
#
# Two scripts: `privileged` runs as root and calls the activator with the
# configuration fixed at build time; the public command re-runs it through
# sudo when started by a user. The sudo rule of the NixOS module names the
# privileged script's store path, so what members of the group may run as
# root is exactly this file.
{
  lib,
  writeShellApplication,
  # The claude-chroot-activate package.
  activator,
  # Store path of activate.json.
  config,
  # Names of the variables the configuration lets in (environment.pass).
  passEnv,
  # Parts of the sandbox, for the NixOS module and for inspection.
  passthru ? { },
}:
let
  privileged = writeShellApplication {
    name = "claude-chroot";
    text = ''
      activate=${lib.getExe activator}
      config=${config}

      if [[ $EUID -ne 0 ]]; then
        echo "claude-chroot: this part runs as root; start the claude-chroot command from your PATH instead" >&2
        exit 125
      fi

      # The configuration is part of the build: one chosen by the caller could
      # bind any host path into the sandbox with root's help.
      for arg in "$@"; do
        [[ $arg == -- ]] && break
        case $arg in
          --config | --config=* | -c | -c?*)
            echo "claude-chroot: the configuration is fixed to $config; as root, run claude-chroot-activate directly to use another" >&2
            exit 125
            ;;
        esac
      done

      case ''${1:-} in
        sync-ips | cleanup | selftest)
          subcommand=$1
          shift
          exec "$activate" "$subcommand" --config "$config" "$@"
          ;;
        enter)
          shift
          ;;
      esac
      exec "$activate" enter --config "$config" "$@"
    '';
  };
in
writeShellApplication {
  name = "claude-chroot";
  # No runtime inputs: `sudo` must be the system's setuid one from PATH
  # (/run/wrappers/bin on NixOS, /usr/bin elsewhere), not a store copy.
  text = ''
    if [[ $EUID -ne 0 ]]; then
      # sudo resets the environment; ask it to keep only what the sandbox
      # lets in (ANTHROPIC_API_KEY=... claude-chroot . works).
      exec sudo --preserve-env=${lib.concatStringsSep "," passEnv} -- ${lib.getExe privileged} "$@"
    fi
    exec ${lib.getExe privileged} "$@"
  '';
  passthru = passthru // {
    inherit
      activator
      config
      passEnv
      privileged
      ;
  };
  meta = {
    description = "Run Claude Code on one project with a read-only system and an allowlisted network";
    license = lib.licenses.mit;
    mainProgram = "claude-chroot";
    platforms = lib.platforms.linux;
  };
}
