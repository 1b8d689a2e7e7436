# programs.claude-chroot: the sandbox, its configuration and its helpers on NixOS.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.programs.claude-chroot;

  defaults = import ../nix/defaults.nix;

  jsonFormat = pkgs.formats.json { };

  sandbox =
    import ../nix/sandbox.nix
      {
        inherit pkgs lib;
        activator = cfg.package;
      }
      {
        inherit (cfg)
          agentPackage
          extraPackages
          managedSettings
          stateDir
          protectedPaths
          quarantine
          nameservers
          ;
        limits.pids = cfg.pidsLimit;
        domains = cfg.allowedDomains;
        tcpPorts = cfg.allowedPorts;
        user = {
          inherit (cfg.user) name uid gid;
        };
      };

  # A sysctl value as boot.kernel.sysctl writes it: booleans as 1 and 0.
  sysctlValue =
    name: unset:
    let
      value = config.boot.kernel.sysctl.${name} or unset;
    in
    if lib.isBool value then (if value then "1" else "0") else toString value;

  # What members of allowedGroup may run as root: the script that fixes the
  # configuration, never the activator itself.
  privileged = lib.getExe sandbox.privileged;

  inherit (sandbox) passEnv;

  # Members of allowedGroup whom the Nix daemon trusts, by name, by one of their
  # groups or by `*`: the activator refuses to start a session for them.
  trustedUsers = config.nix.settings.trusted-users or [ ];
  groupsOf = user: [ user.group ] ++ user.extraGroups;
  trustedMembers = lib.filter (
    name:
    let
      user = config.users.users.${name};
    in
    lib.elem cfg.allowedGroup (groupsOf user)
    && (
      lib.elem "*" trustedUsers
      || lib.elem name trustedUsers
      || lib.any (g: lib.elem "@${g}" trustedUsers) (groupsOf user)
    )
  ) (lib.attrNames config.users.users);
in
{
  options.programs.claude-chroot = {
    enable = lib.mkEnableOption "claude-chroot, a sandbox that runs Claude Code on one project with a read-only system and an allowlisted network";

    package = lib.mkPackageOption pkgs "claude-chroot-activate" {
      extraDescription = "The run-time half that sets up each session as root.";
    };

    agentPackage = lib.mkPackageOption pkgs "claude-code" {
      nullable = true;
      extraDescription = ''
        The agent on PATH inside the sandbox; `null` leaves it out. Claude Code
        is unfree, so the system must allow this one package, e.g.
        `nixpkgs.config.allowUnfreePredicate = pkg: lib.getName pkg == "claude-code";`.
      '';
    };

    extraPackages = lib.mkOption {
      type = lib.types.listOf lib.types.package;
      default = [ ];
      example = lib.literalExpression "[ pkgs.nodejs pkgs.python3 pkgs.cargo ]";
      description = "More tools on PATH inside the sandbox.";
    };

    allowedDomains = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = defaults.domains;
      example = lib.literalExpression ''[ "api.anthropic.com" "registry.npmjs.org" ]'';
      description = ''
        Domains `claude-chroot sync-ips` resolves into the allowlist. The
        sandbox reaches only the addresses a reviewed run of `sync-ips` wrote,
        on {option}`programs.claude-chroot.allowedPorts`. Setting the option
        replaces the default list; `lib.mkOptionDefault [ "registry.npmjs.org" ]`
        extends it.
      '';
    };

    allowedPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      default = defaults.tcpPorts;
      example = [
        443
        80
      ];
      description = "TCP ports the sandbox may connect to on allowlisted addresses.";
    };

    nameservers = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [
        "9.9.9.9"
        "149.112.112.112:53"
      ];
      description = "Nameservers `sync-ips` asks (`ADDRESS` or `ADDRESS:PORT`); empty means those of /etc/resolv.conf.";
    };

    managedSettings = lib.mkOption {
      inherit (jsonFormat) type;
      default = defaults.managedSettings;
      defaultText = lib.literalMD "the deny list of `nix/defaults.nix` (web tools, network commands, git remotes, package installs, container pulls)";
      example = lib.literalExpression ''
        {
          permissions.deny = [ "WebSearch" "WebFetch" "Bash(curl *)" ];
        }
      '';
      description = ''
        Claude Code managed settings, installed read-only and immutable at
        /etc/claude-code/managed-settings.json inside the sandbox. A user's
        ~/.config/claude-chroot/managed-settings.json replaces them for that
        user's sessions.
      '';
    };

    stateDir = lib.mkOption {
      type = lib.types.str;
      default = "/srv/claude-chroot";
      example = "/var/lib/claude-chroot";
      description = "Root-owned directory for sessions, sandbox homes, logs and the vetted allowlist.";
    };

    user = {
      name = lib.mkOption {
        type = lib.types.strMatching "[A-Za-z0-9_-]+";
        default = "claude";
        example = "agent";
        description = "Login name of the agent inside the sandbox.";
      };

      uid = lib.mkOption {
        type = lib.types.nullOr lib.types.ints.unsigned;
        default = null;
        example = 1000;
        description = ''
          Uid the agent runs as. `null` (recommended): the uid of whoever
          starts `claude-chroot`, so nobody reaches files through the sandbox
          that they could not reach anyway. A number is refused for any other
          invoking user.
        '';
      };

      gid = lib.mkOption {
        type = lib.types.nullOr lib.types.ints.unsigned;
        default = null;
        example = 100;
        description = ''
          Gid the agent runs as. `null` (recommended): the primary group of
          whoever starts `claude-chroot`. A number is refused for an invoking
          user whose primary group differs.
        '';
      };
    };

    protectedPaths = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = defaults.protectedPaths;
      example = lib.literalExpression ''[ ".git/config" ".git/hooks" ".envrc" "Makefile" ]'';
      description = ''
        Workspace-relative paths that make the host run code later. Those that
        exist are read-only inside; what a session creates or changes at the
        others is reported at exit (or quarantined). Setting the option
        replaces the default list; `lib.mkOptionDefault [ "Makefile" ]`
        extends it.
      '';
    };

    quarantine = lib.mkOption {
      type = lib.types.bool;
      default = false;
      example = true;
      description = "Move protected paths created or changed during a session to `stateDir/quarantine/` instead of leaving them in the workspace.";
    };

    pidsLimit = lib.mkOption {
      type = lib.types.nullOr (lib.types.ints.between 8 4194304);
      default = defaults.pidsLimit;
      example = 512;
      description = ''
        Most processes and threads a session may have at once, enforced by a
        cgroup of its own (`pids.max`); `null` sets no limit.
      '';
    };

    syncIps = {
      enable = lib.mkEnableOption "a systemd timer that re-resolves the allowed domains and reports a changed allowlist";

      interval = lib.mkOption {
        type = lib.types.str;
        default = "daily";
        example = "hourly";
        description = "When the timer runs, as a systemd calendar expression (systemd.time(7)).";
      };

      apply = lib.mkOption {
        type = lib.types.bool;
        default = false;
        example = true;
        description = ''
          Write the new allowlist without review (`sync-ips --yes`) instead of
          only checking it (`sync-ips --check`, which fails the unit when the
          allowlist is out of date).
        '';
      };
    };

    allowedGroup = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "claude-chroot";
      description = ''
        Members of this group may run `claude-chroot` through sudo without a
        password. The rule names the root-side script, whose configuration is
        fixed at build time, and keeps only the variables the sandbox lets in.
      '';
    };

    hardenTerminal = lib.mkOption {
      type = lib.types.bool;
      default = true;
      example = false;
      description = ''
        Set `dev.tty.legacy_tiocsti = 0`, so no process can push keystrokes
        into a terminal with TIOCSTI. The sandbox already gives the agent a
        terminal of its own; this closes the hole for every other program too.
      '';
    };

    logBlocked = lib.mkOption {
      type = lib.types.bool;
      default = false;
      example = true;
      description = ''
        Set `net.netfilter.nf_log_all_netns = 1`, so the sandbox's rate-limited
        `claude-blocked:` lines reach the kernel log. The kernel drops
        netfilter log messages from every network namespace but the host's
        unless this is set, and the sandbox has its own; the setting lets every
        namespace on the machine (containers too) write to the kernel log. The
        session report at exit lists blocked destinations either way.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.user.uid != 0 && cfg.user.gid != 0;
        message = "programs.claude-chroot.user: uid and gid must not be 0; the agent never runs as root.";
      }
      {
        assertion = cfg.allowedDomains != [ ];
        message = "programs.claude-chroot.allowedDomains is empty: the sandbox could reach nothing but would still need an allowlist.";
      }
      {
        assertion = cfg.allowedPorts != [ ];
        message = "programs.claude-chroot.allowedPorts is empty: no allowlisted address would be reachable.";
      }
      {
        assertion = cfg.syncIps.apply -> cfg.syncIps.enable;
        message = "programs.claude-chroot.syncIps.apply needs programs.claude-chroot.syncIps.enable.";
      }
      {
        assertion = lib.hasPrefix "/" cfg.stateDir && cfg.stateDir != "/";
        message = "programs.claude-chroot.stateDir must be an absolute path other than /.";
      }
      {
        assertion = cfg.hardenTerminal -> sysctlValue "dev.tty.legacy_tiocsti" 0 == "0";
        message = "programs.claude-chroot.hardenTerminal is on, but boot.kernel.sysctl.\"dev.tty.legacy_tiocsti\" is set to another value elsewhere: remove that definition or turn hardenTerminal off.";
      }
      {
        assertion = cfg.logBlocked -> sysctlValue "net.netfilter.nf_log_all_netns" 1 == "1";
        message = "programs.claude-chroot.logBlocked is on, but boot.kernel.sysctl.\"net.netfilter.nf_log_all_netns\" is set to another value elsewhere: remove that definition or turn logBlocked off.";
      }
      {
        assertion =
          cfg.allowedGroup != null
          -> config.security.sudo.enable && !config.security.sudo.execWheelOnly;
        message = "programs.claude-chroot.allowedGroup gives its members the command through sudo's rules, which need security.sudo.enable and no security.sudo.execWheelOnly (with it, only wheel may run sudo at all); without sudo, set allowedGroup to null and start claude-chroot as root.";
      }
      {
        assertion = cfg.allowedGroup == null || config.users.groups ? ${cfg.allowedGroup};
        message = "programs.claude-chroot.allowedGroup names a group that users.groups does not define.";
      }
    ];

    warnings = lib.optional (cfg.allowedGroup != null && trustedMembers != [ ]) ''
      programs.claude-chroot: ${lib.concatStringsSep ", " trustedMembers} may start claude-chroot, but nix.settings.trusted-users makes the Nix daemon trust them, and a trusted client can make the daemon run code as root; claude-chroot refuses to start a session for them. Remove them (or their group) from trusted-users, or from ${cfg.allowedGroup}.
    '';

    environment.systemPackages = [ sandbox ];

    # The default configuration of claude-chroot-activate; the command itself
    # passes this same store file.
    environment.etc."claude-chroot/activate.json".source = sandbox.config;

    systemd.tmpfiles.rules = [ "d ${cfg.stateDir} 0755 root root - -" ];

    security.sudo.extraRules = lib.mkIf (cfg.allowedGroup != null) [
      {
        groups = [ cfg.allowedGroup ];
        commands = [
          {
            command = privileged;
            options = [ "NOPASSWD" ];
          }
        ];
      }
    ];

    # Without the SETENV tag sudo keeps a variable the caller asks for only
    # when it is in env_keep; allow exactly the sandbox's pass list, for this
    # command only.
    security.sudo.extraConfig = lib.mkIf (cfg.allowedGroup != null) ''
      Defaults!${privileged} env_keep += "${lib.concatStringsSep " " passEnv}"
    '';

    boot.kernel.sysctl = lib.mkMerge [
      # As defaults, so that a hardening profile setting the same value does not
      # clash; a profile setting another value is caught by the assertions.
      (lib.mkIf cfg.hardenTerminal { "dev.tty.legacy_tiocsti" = lib.mkDefault 0; })
      (lib.mkIf cfg.logBlocked { "net.netfilter.nf_log_all_netns" = lib.mkDefault 1; })
    ];

    systemd.services.claude-chroot-sync-ips = lib.mkIf cfg.syncIps.enable {
      description = "Check the claude-chroot allowlist against DNS";
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${privileged} sync-ips ${if cfg.syncIps.apply then "--yes" else "--check"}";
      };
    };

    systemd.timers.claude-chroot-sync-ips = lib.mkIf cfg.syncIps.enable {
      description = "Check the claude-chroot allowlist against DNS regularly";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.syncIps.interval;
        Persistent = true;
        RandomizedDelaySec = "5m";
      };
    };
  };
}
