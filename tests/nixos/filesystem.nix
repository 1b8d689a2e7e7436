# The file system: the host's homes and secrets are invisible, only the
# workspace, the sandbox home and /tmp are writable, and files made in the
# workspace belong to the invoking user.
{
  name = "claude-chroot-filesystem";
  imports = [ ./common.nix ];
  testScript = import ./helpers.nix + ''
    prepare()
    machine.succeed("echo root-secret > /root/secret")

    with subtest("the host's homes and secrets are invisible"):
        machine.fail(sandboxed("test -e /home/alice/host-secret"))
        machine.fail(sandboxed("cat /root/secret"))
        machine.fail(sandboxed("cat /etc/shadow"))
        machine.fail(sandboxed(f"ls {STATE}"))
        machine.succeed(sandboxed("test \"$(ls /home)\" = claude"))

    with subtest("only the workspace, the home and /tmp are writable"):
        machine.succeed(sandboxed("touch /workspace/made-inside ~/home-file /tmp/tmp-file"))
        for path in ["/etc/x", "/nix/store/x", "/usr/x", "/x"]:
            machine.fail(sandboxed(f"touch {path}"))

    with subtest("workspace files belong to the invoking user"):
        machine.succeed("test \"$(stat -c %U:%G /home/alice/project/made-inside)\" = alice:users")

    with subtest("no privilege can be regained"):
        machine.fail(sandboxed("mount -t tmpfs none /tmp"))
        machine.fail(sandboxed("unshare --user --map-root-user --mount true"))
        machine.succeed(sandboxed("grep -q '^NoNewPrivs:.*1' /proc/self/status"))
        machine.succeed(sandboxed("grep -q '^CapEff:.*0000000000000000' /proc/self/status"))

    with subtest("host processes are invisible"):
        machine.fail(sandboxed("ps -e -o comm= | grep -x systemd"))
  '';
}
