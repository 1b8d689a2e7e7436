# The network: only allowlisted addresses and ports are reachable, blocked
# attempts are refused and reported, and DNS does not leave the sandbox.
{
  name = "claude-chroot-network";
  imports = [ ./common.nix ];
  testScript = import ./helpers.nix + ''
    prepare()

    with subtest("an allowlisted address and port is reachable"):
        out = machine.succeed(sandboxed("curl -sS --max-time 10 http://allowed.test/"))
        assert "hello from the internet node" in out, out

    with subtest("a name outside the allowlist does not resolve"):
        machine.fail(sandboxed("getent hosts blocked.test"))

    with subtest("an address outside the allowlist is refused at once and reported"):
        status, out = machine.execute(sandboxed(f"curl -sS --max-time 10 http://{BLOCKED}/") + " 2>&1")
        assert status != 0, out
        assert "timed out" not in out, f"the connection should be rejected, not dropped: {out}"
        assert BLOCKED in out, f"the session report should name {BLOCKED}: {out}"
        machine.wait_until_succeeds(f"journalctl -k | grep 'claude-blocked:.*DST={BLOCKED}'")

    with subtest("an allowlisted address on another port is refused"):
        machine.fail(sandboxed(f"curl -sS --max-time 10 http://{ALLOWED}:8080/"))

    with subtest("IPv6 outside the allowlist is refused"):
        # The sandbox has IPv6 connectivity, so the refusal below is the filter's.
        machine.succeed(sandboxed("ip -6 route show default | grep -q ."))
        status, out = machine.execute(sandboxed(f"curl -sS --max-time 10 'http://[{BLOCKED_V6}]/'") + " 2>&1")
        assert status != 0, out
        assert "timed out" not in out, f"the connection should be rejected, not dropped: {out}"
        assert BLOCKED_V6 in out, f"the session report should name {BLOCKED_V6}: {out}"

    with subtest("the agent cannot send ICMP at all"):
        # A fresh network namespace allows no unprivileged ping sockets and the
        # agent has no CAP_NET_RAW; what the filter does with ICMP when a socket
        # exists is proven in tests/network_modes.rs.
        status, out = machine.execute(sandboxed(f"ping -c 1 -W 2 {BLOCKED}") + " 2>&1")
        assert status != 0, out
        assert "permitted" in out or "denied" in out, f"ping should be refused a socket: {out}"

    with subtest("DNS does not leave the sandbox"):
        resolver = internet.succeed("ip -4 -o addr show eth1 | awk '{print $4}' | cut -d/ -f1 | head -1").strip()
        machine.fail(sandboxed(f"dig +time=2 +tries=1 @{resolver} leak-probe.test"))
        machine.fail(sandboxed(f"dig +tcp +time=2 +tries=1 @{resolver} leak-probe.test"))
        internet.fail("journalctl -u dnsmasq | grep leak-probe.test")

    with subtest("the host's loopback services are out of reach"):
        machine.succeed("systemd-run --unit=loopback-http $(command -v python3) -m http.server --bind 127.0.0.1 8081")
        machine.wait_for_open_port(8081)
        machine.fail(sandboxed("curl -sS --max-time 5 http://127.0.0.1:8081/"))

    with subtest("--no-network leaves only loopback"):
        machine.fail(sandboxed("curl -sS --max-time 5 http://allowed.test/", flags="--no-network"))
        machine.succeed(sandboxed("ip -o link | grep -v ' lo:' | wc -l | grep -qx 0", flags="--no-network"))
  '';
}
