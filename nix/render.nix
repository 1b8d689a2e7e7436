# Render the skeleton's files and `activate.json` (docs/config.md).
#
# Builtins only, so the test suite evaluates it with a plain `nix-instantiate`
# and runs the Rust integration tests against the result. The flake and the
# NixOS module call the same function with store paths (nix/sandbox.nix).
#
# Returns `{ files = { "<path relative to the skeleton>" = "<content>"; };
# activate = { ... }; }`; `builtins.toJSON activate` is `activate.json`.
{
  # Absolute directory the files will live in (a store path in the flake).
  skeleton,
  # Root-owned state directory of the activator.
  stateDir ? "/srv/claude-chroot",
  # Sandbox user: { name ? "claude"; uid ? null; gid ? null; home ? "/home/claude"; }.
  user ? { },
  # Absolute paths of the programs the activator runs: { shell; nft; pasta; }.
  tools,
  # PATH inside the sandbox.
  path,
  # Host paths bound into the sandbox, read-only: the store carries the tools,
  # and the daemon socket's directory lets `nix` inside build through the host's
  # daemon. The rest of /nix/var (build logs, GC roots naming host paths, other
  # users' profiles) stays out.
  mounts ? [
    {
      source = "/nix/store";
      target = "/nix/store";
    }
    {
      source = "/nix/var/nix/daemon-socket";
      target = "/nix/var/nix/daemon-socket";
      optional = true;
    }
  ],
  # More binds, appended to `mounts`.
  extraMounts ? [ ],
  # Extra variables set inside; they win over the defaults below.
  environment ? { },
  # Extra variable names copied from the invoker's environment.
  passEnv ? [ ],
  # Overrides of the network settings: mode, domains, tcpPorts, udpPorts,
  # nameservers, resolveTimeoutMs, allowlistFile.
  network ? { },
  # Claude Code managed settings as an attribute set; null means the default
  # deny list of nix/defaults.nix.
  managedSettings ? null,
  # Workspace paths kept read-only; null means the defaults.
  protectedPaths ? null,
  # Move protected paths created during a session into the state directory.
  quarantine ? false,
  # Resource limits: { pids ? 4096; }; pids = null sets none.
  limits ? { },
  # Store path of the nixpkgs the sandbox was built from, for `<nixpkgs>` and
  # the `nixpkgs` flake inside; null leaves both unset.
  nixpkgsPath ? null,
}:
let
  defaults = import ./defaults.nix;

  inherit (builtins)
    attrNames
    concatStringsSep
    elem
    filter
    isAttrs
    isBool
    isInt
    isList
    isString
    length
    match
    substring
    toJSON
    typeOf
    ;

  # Validation helpers: each returns its value or throws naming the argument.
  fail =
    what: expected: value:
    throw "render.nix: ${what} must be ${expected}, got ${typeOf value}";

  checkString = what: v: if isString v then v else fail what "a string" v;

  checkAbsolute =
    what: v:
    if isString v && substring 0 1 v == "/" then
      v
    else
      throw "render.nix: ${what} must be an absolute path string, got ${
        if isString v then "\"${v}\"" else typeOf v
      }";

  checkBool = what: v: if isBool v then v else fail what "a boolean" v;

  checkList =
    what: check: v:
    if isList v then map (check "${what} element") v else fail what "a list" v;

  checkAttrs = what: v: if isAttrs v then v else fail what "an attribute set" v;

  # Reject attribute names a caller did not mean: a typo must not fall back to
  # a default silently.
  checkKeys =
    what: allowed: v:
    let
      unknown = filter (k: !(elem k allowed)) (attrNames (checkAttrs what v));
    in
    if unknown == [ ] then
      v
    else
      throw "render.nix: unknown ${what} attribute(s): ${concatStringsSep ", " unknown} (known: ${concatStringsSep ", " allowed})";

  checkNullOr =
    what: check: v:
    if v == null then null else check what v;

  checkId =
    what: v:
    if v == null then
      null
    else if !(isInt v) then
      fail what "an integer or null" v
    else if v <= 0 then
      throw "render.nix: ${what} must be positive: the agent never runs as root"
    else
      v;

  checkPort =
    what: v:
    if isInt v && v >= 1 && v <= 65535 then
      v
    else
      throw "render.nix: ${what} must be a port number 1-65535, got ${toJSON v}";

  checkPidsLimit =
    what: v:
    if isInt v && v >= 8 then
      v
    else
      throw "render.nix: ${what} must be an integer of at least 8 (or null for no limit), got ${toJSON v}";

  # Variables that would let the caller of the sudo wrapper steer the root-side
  # shell or the dynamic linker; sudo drops most of them, this makes the
  # configuration itself refuse them.
  unsafeEnvNames = [
    "BASH_ENV"
    "ENV"
    "IFS"
    "PATH"
    "PS4"
    "SHELLOPTS"
    "BASHOPTS"
    "HOME"
    "USER"
    "LOGNAME"
    "SHELL"
    "SUDO_UID"
    "SUDO_GID"
    "SUDO_USER"
    "SUDO_COMMAND"
  ];

  checkEnvName =
    what: v:
    if !(isString v) || match "[A-Za-z_][A-Za-z0-9_]*" v == null then
      throw "render.nix: ${what} ${toJSON v} is not a valid variable name"
    else
      v;

  checkPassName =
    what: v:
    if elem (checkEnvName what v) unsafeEnvNames || match "LD_.*" v != null then
      throw "render.nix: ${what} ${v} may not be passed into the sandbox"
    else
      v;

  checkRelative =
    what: v:
    if !(isString v) || v == "" || substring 0 1 v == "/" then
      throw "render.nix: ${what} must be a relative path, got ${toJSON v}"
    else if elem ".." (filter isString (builtins.split "/" v)) then
      throw "render.nix: ${what} ${v} must not contain .."
    else
      v;

  # JSON with two-space indentation, so the settings file reads well inside.
  toPrettyJSON =
    indent: v:
    let
      inner = indent + "  ";
      block =
        open: close: items:
        if items == [ ] then
          open + close
        else
          "${open}\n${concatStringsSep ",\n" items}\n${indent}${close}";
    in
    if isAttrs v then
      block "{" "}" (map (k: "${inner}${toJSON k}: ${toPrettyJSON inner v.${k}}") (attrNames v))
    else if isList v then
      block "[" "]" (map (x: inner + toPrettyJSON inner x) v)
    else
      toJSON v;

  # Arguments, checked.
  skeletonDir = checkAbsolute "skeleton" skeleton;

  userArgs = checkKeys "user" [
    "name"
    "uid"
    "gid"
    "home"
  ] user;
  userName = checkString "user.name" (userArgs.name or "claude");
  userUid = checkId "user.uid" (userArgs.uid or null);
  userGid = checkId "user.gid" (userArgs.gid or null);
  userHome = checkAbsolute "user.home" (userArgs.home or "/home/claude");

  toolPaths = checkKeys "tools" [
    "shell"
    "nft"
    "pasta"
  ] tools;
  shell = checkAbsolute "tools.shell" (
    toolPaths.shell or (throw "render.nix: tools.shell is missing")
  );
  nft = checkAbsolute "tools.nft" (toolPaths.nft or (throw "render.nix: tools.nft is missing"));
  pasta = checkAbsolute "tools.pasta" (
    toolPaths.pasta or (throw "render.nix: tools.pasta is missing")
  );

  checkMount =
    what: m:
    let
      m' = checkKeys what [
        "source"
        "target"
        "writable"
        "optional"
      ] m;
    in
    {
      source = checkAbsolute "${what}.source" (m'.source or null);
      target = checkAbsolute "${what}.target" (m'.target or null);
      writable = checkBool "${what}.writable" (m'.writable or false);
      optional = checkBool "${what}.optional" (m'.optional or false);
    };

  allMounts = checkList "mounts" checkMount mounts ++ checkList "extraMounts" checkMount extraMounts;

  networkArgs = checkKeys "network" [
    "mode"
    "allowlistFile"
    "domains"
    "tcpPorts"
    "udpPorts"
    "nameservers"
    "resolveTimeoutMs"
  ] network;

  networkMode =
    let
      mode = networkArgs.mode or "allowlist";
    in
    if
      elem mode [
        "allowlist"
        "none"
        "full"
      ]
    then
      mode
    else
      throw "render.nix: network.mode must be \"allowlist\", \"none\" or \"full\", got ${toJSON mode}";

  domains = checkList "network.domains" checkString (networkArgs.domains or defaults.domains);

  resolveTimeoutMs =
    let
      t = networkArgs.resolveTimeoutMs or 3000;
    in
    if isInt t && t > 0 then
      t
    else
      throw "render.nix: network.resolveTimeoutMs must be a positive integer, got ${toJSON t}";

  settings =
    if managedSettings == null then
      defaults.managedSettings
    else
      checkAttrs "managedSettings" managedSettings;

  protected =
    if protectedPaths == null then
      defaults.protectedPaths
    else
      checkList "protectedPaths" checkRelative protectedPaths;

  extraEnvironment = checkAttrs "environment" environment;
  extraSet = builtins.mapAttrs (
    name: value: checkString "environment.${checkEnvName "environment name" name}" value
  ) extraEnvironment;

  nixpkgs = checkNullOr "nixpkgsPath" checkAbsolute nixpkgsPath;

  # The Nix client inside talks to the host's daemon through the socket under
  # /nix; without it there is no daemon to talk to.
  nixMounted = builtins.any (
    m:
    builtins.elem m.target [
      "/nix"
      "/nix/var/nix/daemon-socket"
    ]
  ) allMounts;

  # Files.
  uid = if userUid == null then 1000 else userUid;
  gid = if userGid == null then 1000 else userGid;

  passwd = ''
    root:x:0:0:root:/root:${shell}
    ${userName}:x:${toString uid}:${toString gid}:claude-chroot sandbox user:${userHome}:${shell}
    nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
  '';

  group = ''
    root:x:0:
    ${userName}:x:${toString gid}:
    nogroup:x:65534:
  '';

  # The activator bind-mounts a per-session hosts file over this one, with
  # the allowlisted names pinned to their vetted addresses.
  hosts = ''
    127.0.0.1 localhost
    ::1 localhost
  '';

  # Names come from files only: there is no DNS server to ask inside.
  nsswitch = ''
    passwd: files
    group: files
    shadow: files
    hosts: files
  '';

  nixConf = ''
    experimental-features = nix-command flakes
    substituters = https://cache.nixos.org
    trusted-public-keys = ${defaults.cachePublicKey}
  ''
  # The global flake registry is fetched from the network, which the sandbox
  # cannot reach; registry.json below pins `nixpkgs` instead.
  + (if nixpkgs == null then "" else "flake-registry =\n");

  registry = toPrettyJSON "" {
    version = 2;
    flakes = [
      {
        from = {
          type = "indirect";
          id = "nixpkgs";
        };
        to = {
          type = "path";
          path = nixpkgs;
        };
      }
    ];
  };

  bashrc = ''
    # ~/.bashrc inside claude-chroot; rewritten from the skeleton at every start.
    [[ $- == *i* ]] || return

    PS1='\[\e[1;33m\][claude-chroot]\[\e[0m\] \u:\w\$ '

    if [[ -z ''${CLAUDE_CHROOT_QUIET:-} ]]; then
      echo "claude-chroot: /workspace is your project; the rest of the system is read-only."
      echo "claude-chroot: the network reaches only the reviewed allowlist. Start the agent with: claude"
    fi
  '';

  # `<nixpkgs>` resolves through NIX_PATH, which points at the nixpkgs the
  # sandbox was built from (see nixpkgsPath). That tree is already in the
  # host store, so evaluating it needs no download, and the host's Nix daemon
  # fetches or builds whatever the shell needs. Taking it from NIX_PATH rather
  # than writing the store path here keeps this file the same for every build
  # and lets `nix-shell -p` use the same pin.
  shellNix = ''
    # Tools for the project: `nix-shell ~/shell.nix`, or copy this file into
    # /workspace and add packages. `<nixpkgs>` is the nixpkgs the sandbox was
    # built from (NIX_PATH), so no channel has to be downloaded.
    {
      pkgs ? import <nixpkgs> { },
    }:
    pkgs.mkShell {
      packages = [
        # pkgs.nodejs
        # pkgs.python3
      ];
    }
  '';

  files = {
    "etc/passwd" = passwd;
    "etc/group" = group;
    "etc/hosts" = hosts;
    # glibc returns every address of a name in /etc/hosts only with `multi on`;
    # without it a lookup for any family stops at the first (IPv4) line, and
    # the allowlisted IPv6 addresses would never be used.
    "etc/host.conf" = "multi on\n";
    "etc/nsswitch.conf" = nsswitch;
    "etc/nix/nix.conf" = nixConf;
    "etc/claude-code/managed-settings.json" = toPrettyJSON "" settings + "\n";
    "home/.bashrc" = bashrc;
    "home/shell.nix" = shellNix;
  }
  // (if nixpkgs == null then { } else { "etc/nix/registry.json" = registry + "\n"; });

  # activate.json.
  activate = {
    version = 1;
    stateDir =
      let
        dir = checkAbsolute "stateDir" stateDir;
      in
      if dir == "/" then throw "render.nix: stateDir must not be /" else dir;
    skeleton = skeletonDir;
    user = {
      name =
        if match "[A-Za-z0-9_-]+" userName != null then
          userName
        else
          throw "render.nix: user.name ${toJSON userName} may contain only letters, digits, _ and -";
      uid = userUid;
      gid = userGid;
      home = userHome;
    };
    mounts = allMounts;
    environment = {
      pass =
        defaults.passEnv
        ++ filter (n: !(elem n defaults.passEnv)) (checkList "passEnv" checkPassName passEnv);
      set = {
        PATH = checkString "path" path;
        SSL_CERT_FILE = "/etc/ssl/certs/ca-certificates.crt";
      }
      // (if nixMounted then { NIX_REMOTE = "daemon"; } else { })
      // (if nixpkgs == null then { } else { NIX_PATH = "nixpkgs=${nixpkgs}"; })
      // extraSet;
    };
    tools = {
      inherit shell nft pasta;
    };
    managedSettings = {
      default = "${skeletonDir}/etc/claude-code/managed-settings.json";
      custom = ".config/claude-chroot/managed-settings.json";
    };
    network = {
      mode = networkMode;
      allowlistFile = checkNullOr "network.allowlistFile" checkAbsolute (
        networkArgs.allowlistFile or null
      );
      inherit domains resolveTimeoutMs;
      tcpPorts = checkList "network.tcpPorts" checkPort (networkArgs.tcpPorts or defaults.tcpPorts);
      udpPorts = checkList "network.udpPorts" checkPort (networkArgs.udpPorts or defaults.udpPorts);
      nameservers = checkList "network.nameservers" checkString (networkArgs.nameservers or [ ]);
    };
    workspace = {
      protectedPaths = protected;
      quarantine = checkBool "quarantine" quarantine;
    };
    limits = {
      pids = checkNullOr "limits.pids" checkPidsLimit (
        (checkKeys "limits" [ "pids" ] limits).pids or defaults.pidsLimit
      );
    };
  };
in
if networkMode == "allowlist" && length domains == 0 then
  throw "render.nix: network.domains is empty: allowlist mode would allow nothing (use mode \"none\")"
else
  # Check every argument before returning anything, so a mistake stops the
  # evaluation with its message instead of half-way through the output.
  builtins.deepSeq activate (
    builtins.deepSeq files {
      inherit files activate;
    }
  )
