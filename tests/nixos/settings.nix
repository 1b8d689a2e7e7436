# Managed settings: present, immutable while a session runs, and impossible
# to change from inside; the Nix daemon never trusts the agent; protected
# workspace paths stay read-only.
{
  name = "claude-chroot-settings";
  imports = [ ./common.nix ];
  testScript = import ./helpers.nix + ''
    prepare()
    settings = "/etc/claude-code/managed-settings.json"

    with subtest("the default managed settings are in place"):
        out = machine.succeed(sandboxed(f"cat {settings}"))
        assert "Bash(curl *)" in out, out

    with subtest("the agent cannot change, remove or shadow them"):
        machine.fail(sandboxed(f"echo '{{}}' > {settings}"))
        machine.fail(sandboxed(f"rm -f {settings}"))
        machine.fail(sandboxed(f"mv {settings} /tmp/x"))
        machine.fail(sandboxed(f"unshare --user --map-root-user --mount sh -c 'mount --bind /tmp {settings}'"))
        machine.succeed(sandboxed(f"grep -q 'Bash(curl \\*)' {settings}"))

    with subtest("the installed copy is immutable during a session and released after"):
        machine.succeed(as_alice("claude-chroot ~/project -- sleep 30 >/dev/null 2>&1 &"))
        machine.wait_until_succeeds(f"lsattr -R {STATE} 2>/dev/null | grep -q -- '-i-.*managed-settings'")
        machine.wait_until_fails("pgrep -u alice -x sleep", timeout=60)
        machine.fail(f"lsattr -R {STATE} 2>/dev/null | grep -- '-i-.*managed-settings'")

    with subtest("a custom settings file wins over the default"):
        machine.succeed(as_alice("mkdir -p ~/.config/claude-chroot && echo '{\"permissions\":{\"deny\":[\"WebFetch\"]}}' > ~/.config/claude-chroot/managed-settings.json"))
        out = machine.succeed(sandboxed(f"cat {settings}"))
        assert "curl" not in out and "WebFetch" in out, out

    with subtest("the agent reaches the Nix daemon only as an untrusted client"):
        # `nix store info` prints to stderr.
        out = machine.succeed(sandboxed("nix store info 2>&1"))
        assert "Trusted:" in out and "Trusted: 1" not in out, out

    with subtest("a user the Nix daemon trusts is refused before anything runs"):
        machine.succeed("su - trusty -c 'mkdir -p ~/project'")
        status, out = machine.execute("su - trusty -c 'claude-chroot ~/project -- touch /workspace/ran' 2>&1")
        assert status == 125, (status, out)
        assert "trusts uid 1001" in out, out
        machine.fail("test -e /home/trusty/project/ran")

    with subtest("protected workspace paths are read-only inside"):
        machine.succeed(as_alice("mkdir -p ~/project/.git/hooks && touch ~/project/.envrc"))
        machine.fail(sandboxed("echo evil > /workspace/.envrc"))
        machine.fail(sandboxed("touch /workspace/.git/hooks/pre-commit"))
  '';
}
