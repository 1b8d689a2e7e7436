# Shared by the VM tests: an `internet` node with DNS and HTTP, and a
# `machine` running claude-chroot through the NixOS module.
#
# Addresses: the VLAN gives both nodes 192.168.1.x. The internet node also
# owns 11.0.0.10 (allowed.test) and 11.0.0.20 (blocked.test): sync-ips drops
# private ranges, so the test servers need addresses that look public. The
# VLAN is closed; nothing here leaves the VMs.
{ lib, ... }:
let
  inherit (import ./addresses.nix) allowed blocked blockedV6;
in
{
  defaults.virtualisation.memorySize = 2048;

  nodes.internet =
    { pkgs, ... }:
    {
      networking.firewall.enable = false;
      networking.interfaces.eth1.ipv4.addresses = [
        {
          address = allowed;
          prefixLength = 24;
        }
        {
          address = blocked;
          prefixLength = 24;
        }
      ];
      networking.interfaces.eth1.ipv6.addresses = [
        {
          address = blockedV6;
          prefixLength = 64;
        }
      ];

      services.dnsmasq = {
        enable = true;
        resolveLocalQueries = false;
        settings = {
          no-resolv = true;
          log-queries = true;
          interface = "eth1";
          address = [
            "/allowed.test/${allowed}"
            "/blocked.test/${blocked}"
            # A private answer, which sync-ips must drop and report.
            "/private.test/192.168.1.99"
          ];
        };
      };

      systemd.services.test-http = {
        wantedBy = [ "multi-user.target" ];
        after = [ "network-online.target" ];
        wants = [ "network-online.target" ];
        serviceConfig.ExecStart = "${lib.getExe pkgs.python3} -m http.server --bind :: --directory ${pkgs.writeTextDir "index.html" "hello from the internet node\n"} 80";
      };
    };

  nodes.machine =
    { nodes, pkgs, ... }:
    {
      imports = [ ../../modules/claude-chroot.nix ];

      networking.nameservers = [ nodes.internet.networking.primaryIPAddress ];
      # pasta takes its template interface from the default routes: put them on
      # the VLAN, and let no DHCP lease on another interface add a route or a
      # resolver.
      networking.useDHCP = false;
      networking.defaultGateway = {
        address = nodes.internet.networking.primaryIPAddress;
        interface = "eth1";
      };
      networking.defaultGateway6 = {
        address = nodes.internet.networking.primaryIPv6Address;
        interface = "eth1";
      };
      # Reach the test servers on-link through the VLAN.
      networking.interfaces.eth1.ipv4.routes = [
        {
          address = "11.0.0.0";
          prefixLength = 24;
        }
      ];
      networking.interfaces.eth1.ipv6.routes = [
        {
          address = "2a00:11::";
          prefixLength = 64;
        }
      ];

      users.groups.claude-chroot = { };
      users.users.alice = {
        isNormalUser = true;
        uid = 1000;
        extraGroups = [ "claude-chroot" ];
      };
      # A user the Nix daemon trusts: claude-chroot must refuse to sandbox it.
      users.users.trusty = {
        isNormalUser = true;
        uid = 1001;
        extraGroups = [ "claude-chroot" ];
      };
      nix.settings.trusted-users = [
        "root"
        "trusty"
      ];

      programs.claude-chroot = {
        enable = true;
        package = pkgs.callPackage ../../nix/package.nix { };
        # The agent itself is not needed to prove the sandbox.
        agentPackage = null;
        extraPackages = [
          pkgs.curl
          pkgs.dig
          pkgs.getent
          pkgs.iproute2
          pkgs.iputils
          pkgs.procps
          pkgs.util-linux
        ];
        allowedDomains = [
          "allowed.test"
          "private.test"
        ];
        allowedPorts = [ 80 ];
        allowedGroup = "claude-chroot";
        logBlocked = true;
      };

      environment.systemPackages = [
        pkgs.e2fsprogs
        pkgs.python3
      ];
    };
}
