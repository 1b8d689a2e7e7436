# Defaults shared by the skeleton, the flake packages and the NixOS module.
#
# Builtins only: the test suite evaluates this file with a plain
# `nix-instantiate`, without nixpkgs.
let
  # Deny a command both bare and with arguments. Claude Code matches
  # `Bash(cmd *)` only when something follows the command, so the bare form
  # needs its own rule (`git fetch` alone also talks to the network).
  denyCommand = command: [
    "Bash(${command})"
    "Bash(${command} *)"
  ];

  networkCommands = [
    "curl"
    "wget"
    "nc"
    "ncat"
    "netcat"
    "socat"
    "telnet"
    "ssh"
    "scp"
    "sftp"
    "rsync"
    "ftp"
  ];

  gitRemoteCommands = [
    "git clone"
    "git fetch"
    "git pull"
    "git push"
    "git remote add"
    "git submodule update"
  ];

  packageInstallCommands = [
    "npm install"
    "npm i"
    "npm ci"
    "npm add"
    "pnpm install"
    "pnpm i"
    "pnpm add"
    "yarn add"
    "yarn install"
    "pip install"
    "pip3 install"
    "python -m pip install"
    "python3 -m pip install"
    "uv pip install"
    "uv add"
    "cargo install"
    "cargo add"
    "gem install"
    "go install"
    "go get"
    "apt"
    "apt-get"
    "nix-env -i"
    "nix-env --install"
    "nix profile install"
  ];

  containerCommands = [
    "docker pull"
    "docker run"
    "podman pull"
    "podman run"
  ];
in
{
  # Names `sync-ips` resolves for the default allowlist: the Anthropic API and
  # login, the agent's telemetry and error reporting, and the Nix binary cache.
  domains = [
    "api.anthropic.com"
    "console.anthropic.com"
    "platform.claude.com"
    "claude.ai"
    "statsig.anthropic.com"
    "statsig.com"
    "o1137031.ingest.sentry.io"
    "cache.nixos.org"
  ];

  tcpPorts = [ 443 ];

  udpPorts = [ ];

  # Variables copied from the invoker's environment; everything else is dropped.
  passEnv = [
    "TERM"
    "COLORTERM"
    "LANG"
    "LC_ALL"
    "ANTHROPIC_API_KEY"
  ];

  # Workspace paths that make the host run code later: read-only inside when
  # they exist, reported (or quarantined) when the session creates or changes
  # them. `.git/commondir` would point git at another directory's config and
  # hooks; submodules and linked worktrees keep theirs under `.git/modules` and
  # `.git/worktrees`.
  protectedPaths = [
    ".git/config"
    ".git/config.worktree"
    ".git/commondir"
    ".git/hooks"
    ".git/info"
    ".git/modules"
    ".git/worktrees"
    ".gitmodules"
    ".claude/settings.json"
    ".claude/settings.local.json"
    ".claude/commands"
    ".claude/agents"
    ".mcp.json"
    ".envrc"
    ".vscode"
    ".idea"
  ];

  # Most processes and threads a session may have at once (the pids.max of
  # its cgroup): room for builds and language servers, a stop for fork bombs.
  pidsLimit = 4096;

  # Claude Code managed settings (`/etc/claude-code/managed-settings.json`).
  # The firewall is the boundary; these rules make the agent give up early
  # with a clear refusal instead of retrying a command that cannot work.
  managedSettings = {
    permissions.deny = [
      "WebSearch"
      "WebFetch"
    ]
    ++ builtins.concatMap denyCommand (
      networkCommands ++ gitRemoteCommands ++ packageInstallCommands ++ containerCommands
    );
  };

  # Public key of the official binary cache, as published with it.
  cachePublicKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
}
