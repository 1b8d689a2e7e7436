# Evaluate modules/claude-chroot.nix with the real module system of nixpkgs'
# lib, without the rest of nixpkgs: the NixOS options the module sets are
# declared here in their simplest form, and packages are stand-ins.
#
#   nix-instantiate --eval --strict --json tests/nixos/module-eval.nix \
#     --arg nixpkgsLib /path/to/nixpkgs/lib
#
# The result summarises what the module produced in a few configurations;
# it throws when the module or an expectation below is wrong.
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  inherit (lib) types mkOption;

  # A derivation-shaped value: enough for option types and string contexts.
  fakeDrv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
      meta.mainProgram = name;
    }
    // extra;

  pkgs = lib.makeExtensible (self: {
    inherit lib;
    path = "/nix/store/00000000000000000000000000000000-nixpkgs-source";
    callPackage = lib.callPackageWith self;
    formats.json = _: {
      type = types.attrsOf types.anything;
    };

    # Builders keep their inputs, so evaluating the result evaluates them.
    buildEnv = args: fakeDrv args.name { inherit (args) paths pathsToLink; };
    runCommand =
      name: env: script:
      fakeDrv name { inherit env script; };
    # Scripts of one name but different text get different paths, so a check
    # that names one of them cannot pass with the other.
    writeShellApplication =
      args:
      fakeDrv args.name {
        inherit (args) text;
        passthru = args.passthru or { };
      }
      // (args.passthru or { })
      // {
        outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" args.text)}-${args.name}";
      };
    writeShellScript = name: text: fakeDrv name { inherit text; };

    claude-chroot-activate = fakeDrv "claude-chroot-activate" { };
    claude-code = fakeDrv "claude-code" { meta.mainProgram = "claude"; };
    bashInteractive = fakeDrv "bash-interactive" { meta.mainProgram = "bash"; };
    nftables = fakeDrv "nftables" { meta.mainProgram = "nft"; };
    passt = fakeDrv "passt" { meta.mainProgram = "passt"; };
    nodejs = fakeDrv "nodejs" { meta.mainProgram = "node"; };
    coreutils = fakeDrv "coreutils" { };
    findutils = fakeDrv "findutils" { };
    gnugrep = fakeDrv "gnugrep" { };
    gnused = fakeDrv "gnused" { };
    gawk = fakeDrv "gawk" { };
    less = fakeDrv "less" { };
    git = fakeDrv "git" { };
    ripgrep = fakeDrv "ripgrep" { };
    nix = fakeDrv "nix" { };
    jq = fakeDrv "jq" { };
    cacert = fakeDrv "cacert" { };
  });

  # The NixOS options the module sets. Those whose shape matters carry the
  # types of nixos-25.11 (nixos/modules/security/sudo.nix,
  # nixos/modules/config/sysctl.nix, nixos/modules/system/etc/etc.nix), so a
  # definition the real module system would refuse is refused here too; units
  # declare only the options the module uses, so a misspelt one is refused.
  unitOption = types.oneOf [
    types.bool
    types.int
    types.str
    (types.listOf types.str)
  ];

  unit =
    extraOptions:
    types.submodule {
      options = {
        description = mkOption {
          type = types.str;
          default = "";
        };
        wants = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        after = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        wantedBy = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
      }
      // extraOptions;
    };

  # As in sysctl.nix: one definition per key (after mkOverride/mkForce).
  sysctlOption = lib.mkOptionType {
    name = "sysctl option value";
    check = x: lib.isBool x || lib.isString x || lib.isInt x || x == null;
    merge = loc: defs: lib.mergeOneOption loc (lib.filterOverrides defs);
  };

  sudoRule = types.submodule {
    options = {
      users = mkOption {
        type = types.listOf (types.either types.str types.int);
        default = [ ];
      };
      groups = mkOption {
        type = types.listOf (types.either types.str types.int);
        default = [ ];
      };
      host = mkOption {
        type = types.str;
        default = "ALL";
      };
      runAs = mkOption {
        type = types.str;
        default = "ALL:ALL";
      };
      commands = mkOption {
        type = types.listOf (
          types.either types.str (
            types.submodule {
              options.command = mkOption { type = types.str; };
              options.options = mkOption {
                type = types.listOf (
                  types.enum [
                    "NOPASSWD"
                    "PASSWD"
                    "NOEXEC"
                    "EXEC"
                    "SETENV"
                    "NOSETENV"
                    "LOG_INPUT"
                    "NOLOG_INPUT"
                    "LOG_OUTPUT"
                    "NOLOG_OUTPUT"
                  ]
                );
                default = [ ];
              };
            }
          )
        );
      };
    };
  };

  nixosStubs = {
    options = {
      assertions = mkOption {
        type = types.listOf (
          types.submodule {
            options.assertion = mkOption { type = types.bool; };
            options.message = mkOption { type = types.str; };
          }
        );
        default = [ ];
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      environment.etc = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.source = mkOption { type = types.path; };
          }
        );
        default = { };
      };
      systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      systemd.services = mkOption {
        type = types.attrsOf (unit {
          serviceConfig = mkOption {
            type = types.attrsOf unitOption;
            default = { };
          };
        });
        default = { };
      };
      systemd.timers = mkOption {
        type = types.attrsOf (unit {
          timerConfig = mkOption {
            type = types.attrsOf unitOption;
            default = { };
          };
        });
        default = { };
      };
      security.sudo.enable = mkOption {
        type = types.bool;
        default = true;
      };
      security.sudo.execWheelOnly = mkOption {
        type = types.bool;
        default = false;
      };
      security.sudo.extraRules = mkOption {
        type = types.listOf sudoRule;
        default = [ ];
      };
      security.sudo.extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
      boot.kernel.sysctl = mkOption {
        type = types.attrsOf sysctlOption;
        default = { };
      };
      users.groups = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
      users.users = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.group = mkOption {
              type = types.str;
              default = "";
            };
            options.extraGroups = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
          }
        );
        default = { };
      };
      nix.settings.trusted-users = mkOption {
        type = types.listOf types.str;
        default = [ "root" ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
    };
  };

  evaluate =
    settings:
    (lib.evalModules {
      modules = [
        nixosStubs
        ../../modules/claude-chroot.nix
        { _module.args.pkgs = pkgs; }
        settings
      ];
    }).config;

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  summary =
    config:
    let
      command = lib.head config.environment.systemPackages;
      skeleton = command.skeleton;
    in
    {
      failedAssertions = failedAssertions config;
      activateJson = config.environment.etc."claude-chroot/activate.json".source;
      activate = builtins.fromJSON skeleton.env.activateJson;
      skeletonFiles = lib.attrNames (builtins.fromJSON skeleton.env.filesJson);
      path = command.tools.paths;
      inherit (config.security.sudo) extraRules extraConfig;
      inherit (config.boot.kernel) sysctl;
      inherit (config.systemd) tmpfiles timers;
      syncIpsService = config.systemd.services.claude-chroot-sync-ips.serviceConfig or null;
    };

  expect =
    what: ok: value:
    if ok then value else throw "module-eval: expected ${what}";

  defaultConfig = evaluate { programs.claude-chroot.enable = true; };

  fullConfig = evaluate {
    users.groups.claude-chroot = { };
    programs.claude-chroot = {
      enable = true;
      agentPackage = pkgs.claude-code;
      extraPackages = [ pkgs.nodejs ];
      allowedDomains = [
        "api.anthropic.com"
        "registry.npmjs.org"
      ];
      allowedPorts = [
        443
        80
      ];
      nameservers = [ "192.0.2.53" ];
      managedSettings.permissions.deny = [ "WebFetch" ];
      stateDir = "/var/lib/claude-chroot";
      user = {
        name = "agent";
        uid = 1000;
        gid = 100;
      };
      protectedPaths = [
        ".git/hooks"
        ".envrc"
      ];
      quarantine = true;
      pidsLimit = 512;
      syncIps = {
        enable = true;
        interval = "hourly";
        apply = true;
      };
      allowedGroup = "claude-chroot";
      hardenTerminal = true;
      logBlocked = true;
    };
  };

  impossibleConfig = evaluate {
    programs.claude-chroot = {
      enable = true;
      allowedDomains = [ ];
      user.uid = 0;
      syncIps.apply = true;
      allowedGroup = "nobody-defined-this";
    };
  };

  # A member of allowedGroup whom the daemon trusts through @wheel.
  trustedMemberConfig = evaluate {
    users.groups.claude-chroot = { };
    users.users.alice.extraGroups = [
      "claude-chroot"
      "wheel"
    ];
    users.users.bob.extraGroups = [ "claude-chroot" ];
    nix.settings.trusted-users = [
      "root"
      "@wheel"
    ];
    programs.claude-chroot = {
      enable = true;
      allowedGroup = "claude-chroot";
    };
  };

  # A hardening profile that sets the same sysctl, and one that sets another value.
  sameSysctlConfig = evaluate {
    programs.claude-chroot.enable = true;
    boot.kernel.sysctl."dev.tty.legacy_tiocsti" = 0;
  };
  # The same values written as booleans, as boot.kernel.sysctl allows.
  boolSysctlConfig = evaluate {
    programs.claude-chroot = {
      enable = true;
      logBlocked = true;
    };
    boot.kernel.sysctl."dev.tty.legacy_tiocsti" = false;
    boot.kernel.sysctl."net.netfilter.nf_log_all_netns" = true;
  };
  otherSysctlConfig = evaluate {
    programs.claude-chroot.enable = true;
    boot.kernel.sysctl."dev.tty.legacy_tiocsti" = 1;
  };

  # allowedGroup with these sudo settings.
  allowedGroupWithSudo =
    sudo:
    evaluate {
      users.groups.claude-chroot = { };
      security.sudo = sudo;
      programs.claude-chroot = {
        enable = true;
        allowedGroup = "claude-chroot";
      };
    };

  # The default lists extended rather than replaced.
  extendedConfig = evaluate {
    programs.claude-chroot = {
      enable = true;
      allowedDomains = lib.mkOptionDefault [ "registry.npmjs.org" ];
      protectedPaths = lib.mkOptionDefault [ "Makefile" ];
    };
  };

  disabledConfig = evaluate { };

  default = summary defaultConfig;
  full = summary fullConfig;
in
{
  default = expect "no failed assertion by default" (default.failedAssertions == [ ]) (
    expect "the TIOCSTI sysctl by default" (default.sysctl."dev.tty.legacy_tiocsti" == 0) (
      expect "no sudo rule without allowedGroup" (default.extraRules == [ ]) (
        expect "the default deny list"
          (lib.elem "etc/claude-code/managed-settings.json" default.skeletonFiles)
          default
      )
    )
  );

  full = expect "no failed assertion with every option set" (full.failedAssertions == [ ]) (
    expect "sync-ips --yes when apply is set"
      (lib.hasSuffix "sync-ips --yes" full.syncIpsService.ExecStart)
      (
        expect "one passwordless sudo rule for allowedGroup, naming the root-side script"
          (
            full.extraRules == [
              {
                users = [ ];
                groups = [ "claude-chroot" ];
                host = "ALL";
                runAs = "ALL:ALL";
                commands = [
                  {
                    command = lib.getExe (lib.head fullConfig.environment.systemPackages).privileged;
                    options = [ "NOPASSWD" ];
                  }
                ];
              }
            ]
          )
          (
            expect "the configured domains in activate.json" (
              full.activate.network.domains == [
                "api.anthropic.com"
                "registry.npmjs.org"
              ]
            ) full
          )
      )
  );

  impossible =
    let
      messages = failedAssertions impossibleConfig;
    in
    expect "four failed assertions for the impossible configuration" (
      lib.length messages == 4
    ) messages;

  sysctl =
    expect "no clash with another definition of the same TIOCSTI value"
      (failedAssertions sameSysctlConfig == [ ] && failedAssertions boolSysctlConfig == [ ])
      (
        expect "a failed assertion when another definition re-enables TIOCSTI" (
          lib.length (failedAssertions otherSysctlConfig) == 1
        ) (failedAssertions otherSysctlConfig)
      );

  trustedMember =
    let
      warnings = trustedMemberConfig.warnings;
    in
    expect "one warning naming exactly the trusted member" (
      lib.length warnings == 1
      && lib.hasInfix "alice may start" (lib.head warnings)
      && !lib.hasInfix "bob" (lib.head warnings)
    ) warnings;

  sudo =
    let
      messages =
        failedAssertions (allowedGroupWithSudo { enable = false; })
        ++ failedAssertions (allowedGroupWithSudo { execWheelOnly = true; });
    in
    expect "allowedGroup refused without sudo and with execWheelOnly" (
      lib.length messages == 2 && lib.all (lib.hasInfix "execWheelOnly") messages
    ) messages;

  extended =
    let
      activate = (summary extendedConfig).activate;
      defaults = import ../../nix/defaults.nix;
    in
    expect "mkOptionDefault adds to the default domains" (
      activate.network.domains == defaults.domains ++ [ "registry.npmjs.org" ]
    ) (
      expect "mkOptionDefault adds to the default protected paths" (
        activate.workspace.protectedPaths == defaults.protectedPaths ++ [ "Makefile" ]
      ) "extended"
    );

  disabled = expect "nothing when disabled" (
    disabledConfig.environment.systemPackages == [ ]
  ) "nothing set";
}
