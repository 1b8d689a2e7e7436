# sync-ips against the test DNS: allowed names are pinned to vetted
# addresses, private answers are dropped and reported, and the timer's
# check passes once the allowlist is current.
{
  name = "claude-chroot-sync-ips";
  imports = [ ./common.nix ];
  nodes.machine.programs.claude-chroot.syncIps.enable = true;
  testScript = import ./helpers.nix + ''
    start_all()
    internet.wait_for_unit("dnsmasq.service")
    machine.wait_for_unit("multi-user.target")

    with subtest("without an allowlist a session refuses to start"):
        machine.succeed(as_alice("mkdir -p ~/project"))
        status, out = machine.execute(as_alice("claude-chroot ~/project -- true") + " 2>&1")
        assert status == 125 and "sync-ips" in out, out

    with subtest("sync-ips resolves through the test DNS and drops private answers"):
        out = machine.succeed("claude-chroot sync-ips --yes 2>&1")
        assert "192.168.1.99" in out, f"the dropped private address should be reported: {out}"
        allowlist = machine.succeed(f"cat {STATE}/allowed-ips.conf")
        assert f"{ALLOWED} allowed.test" in allowlist, allowlist
        assert "192.168.1.99" not in allowlist, allowlist

    with subtest("the session pins allowed names to the vetted addresses"):
        out = machine.succeed(sandboxed("getent hosts allowed.test"))
        assert ALLOWED in out, out

    with subtest("the timer's check passes on a current allowlist"):
        machine.succeed("systemctl start claude-chroot-sync-ips.service")
        machine.succeed("systemctl list-timers | grep -q claude-chroot-sync-ips")
  '';
}
