# The arguments mkSandbox gives render.nix: its options plus the store paths it
# built.
#
# Builtins only, so the test suite can render the default package's
# activate.json with stand-in store paths and compare it with the one the
# integration tests run against: they must differ in paths only.
{
  # Store paths computed by nix/sandbox.nix.
  skeleton,
  shell,
  nft,
  pasta,
  # The tool environment's bin directory (PATH inside).
  toolsBin,
  # nixpkgs for `<nixpkgs>` inside; null leaves it unset.
  nixpkgsPath,
}:
{
  # Allowlist: names sync-ips resolves and the ports reachable on them.
  domains ? null,
  tcpPorts ? null,
  udpPorts ? null,
  # Nameservers sync-ips asks; empty means the host's resolv.conf.
  nameservers ? [ ],
  # Claude Code managed settings; null means the default deny list.
  managedSettings ? null,
  # Sandbox user: { name; uid; gid; home; }, all optional.
  user ? { },
  stateDir ? "/srv/claude-chroot",
  protectedPaths ? null,
  quarantine ? false,
  # Resource limits: { pids; }; unset ones take render.nix's defaults.
  limits ? { },
  # Extra variable names let in from the invoker, and variables set inside.
  passEnv ? [ ],
  environment ? { },
  # Extra host binds: [ { source; target; writable ? false; optional ? false; } ].
  extraMounts ? [ ],
}:
let
  given = {
    inherit
      domains
      tcpPorts
      udpPorts
      nameservers
      ;
  };
in
{
  inherit
    skeleton
    stateDir
    user
    managedSettings
    protectedPaths
    quarantine
    limits
    passEnv
    environment
    extraMounts
    nixpkgsPath
    ;
  # Unset network options fall back to render.nix's defaults.
  network = builtins.removeAttrs given (
    builtins.filter (n: given.${n} == null) (builtins.attrNames given)
  );
  tools = { inherit shell nft pasta; };
  path = toolsBin;
}
