# Teardown: nothing is left after a normal exit or after the activator is
# killed (once `cleanup` ran), exit statuses propagate, and selftest passes.
{
  name = "claude-chroot-lifecycle";
  imports = [ ./common.nix ];
  testScript = import ./helpers.nix + ''
    prepare()

    def assert_nothing_left():
        machine.fail("pgrep -u alice -x sleep")
        machine.fail("findmnt -rn | grep -e /workspace -e claude-chroot")
        machine.succeed(f"test -z \"$(ls -A {STATE}/sessions 2>/dev/null)\"")
        machine.fail(f"lsattr -R {STATE} 2>/dev/null | grep -- '-i-'")
        # Session cgroups (cgroup v2 on NixOS) are gone too.
        machine.succeed("test -z \"$(find /sys/fs/cgroup/claude-chroot -mindepth 1 -type d 2>/dev/null)\"")

    with subtest("selftest passes"):
        machine.succeed("claude-chroot selftest")

    with subtest("exit statuses propagate"):
        status, _ = machine.execute(sandboxed("exit 7"))
        assert status == 7, status

    with subtest("nothing is left after a normal exit"):
        machine.succeed(sandboxed("sleep 1"))
        assert_nothing_left()

    with subtest("nothing is left after the activator is killed and cleanup ran"):
        machine.succeed(as_alice("claude-chroot ~/project -- sleep 1000 >/dev/null 2>&1 &"))
        machine.wait_until_succeeds("pgrep -u alice -x sleep")
        machine.succeed("pkill -KILL -f 'claude-chroot-activate enter'")
        machine.wait_until_fails("pgrep -u alice -x sleep", timeout=30)
        machine.succeed("claude-chroot cleanup")
        assert_nothing_left()

    with subtest("cleanup --purge removes the state directory"):
        machine.succeed("claude-chroot cleanup --purge")
        machine.fail(f"test -e {STATE}/allowed-ips.conf")
  '';
}
