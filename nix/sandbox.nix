# mkSandbox: the one builder behind the flake's packages and the NixOS module.
#
# `import ./sandbox.nix { inherit pkgs; } { ...options... }` returns the
# `claude-chroot` command; its passthru carries the parts (skeleton, tools,
# activate.json, the privileged script, the activator).
#
# The flake exposes it as `lib.mkSandbox pkgs { ... }`.
{
  pkgs,
  lib ? pkgs.lib,
  # The overlay's build when present, so the module and the packages share it.
  activator ? pkgs.claude-chroot-activate or (pkgs.callPackage ./package.nix { }),
}:
options@{
  # The agent; null leaves it out (e.g. bring it through extraPackages).
  agentPackage ? pkgs.claude-code,
  # More tools on PATH inside.
  extraPackages ? [ ],
  # nixpkgs for `<nixpkgs>` and the `nixpkgs` flake inside; null leaves both unset.
  nixpkgsPath ? pkgs.path,
  # The rest (domains, ports, nameservers, managedSettings, user, stateDir,
  # protectedPaths, quarantine, limits, passEnv, environment, extraMounts) is taken,
  # with its defaults and checks, by nix/sandbox-args.nix.
  ...
}:
let
  render = import ./render.nix;

  # What the agent finds on PATH. Only /bin is linked, so two packages that
  # ship the same documentation file cannot break the build.
  tools = pkgs.buildEnv {
    name = "claude-chroot-tools";
    paths = [
      pkgs.bashInteractive
      pkgs.coreutils
      pkgs.findutils
      pkgs.gnugrep
      pkgs.gnused
      pkgs.gawk
      pkgs.less
      pkgs.git
      pkgs.ripgrep
      pkgs.nix
    ]
    ++ lib.optional (agentPackage != null) agentPackage
    ++ extraPackages;
    pathsToLink = [ "/bin" ];
  };

  rendered = render (
    import ./sandbox-args.nix
      {
        # Nix replaces the placeholder by the skeleton's own store path when it
        # builds it, so activate.json can name the directory it lives in.
        skeleton = builtins.placeholder "out";
        shell = lib.getExe pkgs.bashInteractive;
        nft = lib.getExe pkgs.nftables;
        pasta = lib.getExe' pkgs.passt "pasta";
        toolsBin = "${tools}/bin";
        nixpkgsPath = if nixpkgsPath == null then null else "${nixpkgsPath}";
      }
      (
        removeAttrs options [
          "agentPackage"
          "extraPackages"
          "nixpkgsPath"
        ]
      )
  );

  skeleton =
    pkgs.runCommand "claude-chroot-skeleton"
      {
        nativeBuildInputs = [ pkgs.jq ];
        # Plain environment variables, not passAsFile: Nix substitutes the
        # output placeholder in them.
        filesJson = builtins.toJSON rendered.files;
        activateJson = builtins.toJSON rendered.activate;
      }
      ''
        mkdir -p "$out"
        printf '%s' "$filesJson" > files.json
        jq -r 'keys[]' files.json | while IFS= read -r name; do
          mkdir -p "$(dirname "$out/$name")"
          jq -j --arg name "$name" '.[$name]' files.json > "$out/$name"
        done
        install -D -m 0444 ${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt \
          "$out/etc/ssl/certs/ca-certificates.crt"
        printf '%s' "$activateJson" | jq . > "$out/activate.json"

        # Check what the activator will rely on, so a broken configuration
        # fails here and not in a user's session.
        config=$out/activate.json
        jq -e '.version == 1' "$config" > /dev/null
        jq -e --arg out "$out" '.skeleton == $out' "$config" > /dev/null
        for tool in shell nft pasta; do
          path=$(jq -r --arg t "$tool" '.tools[$t]' "$config")
          if [[ ! -x $path ]]; then
            echo "activate.json: tools.$tool $path is not an executable" >&2
            exit 1
          fi
        done
        jq -e 'type == "object"' "$out/etc/claude-code/managed-settings.json" > /dev/null
        jq -e --arg f "$out/etc/claude-code/managed-settings.json" \
          '.managedSettings.default == $f' "$config" > /dev/null
        test -d "$(jq -r '.environment.set.PATH' "$config")"
        # The activator's own strict parser: a field it does not know stops here.
        ${lib.getExe' activator "claude-chroot-activate"} check-config --config "$config"
      '';

  config = "${skeleton}/activate.json";
in
pkgs.callPackage ./enter.nix {
  inherit activator config;
  passEnv = rendered.activate.environment.pass;
  passthru = {
    inherit skeleton tools;
  };
}
