# Python shared by the VM test scripts: prepend it to a testScript.
let
  inherit (import ./addresses.nix) allowed blocked blockedV6;
in
''
  import shlex

  ALLOWED = "${allowed}"
  BLOCKED = "${blocked}"
  BLOCKED_V6 = "${blockedV6}"
  STATE = "/srv/claude-chroot"


  def as_alice(command):
      """A shell command run as alice, who may use claude-chroot through sudo."""
      return "su - alice -c " + shlex.quote(command)


  def sandboxed(command, workspace="/home/alice/project", flags=""):
      """COMMAND run inside a sandbox that alice starts on WORKSPACE."""
      return as_alice(f"claude-chroot {flags} {workspace} -- sh -c " + shlex.quote(command))


  def prepare():
      start_all()
      internet.wait_for_unit("dnsmasq.service")
      internet.wait_for_open_port(80)
      machine.wait_for_unit("multi-user.target")
      machine.succeed(as_alice("mkdir -p ~/project ~/.claude && echo secret > ~/host-secret"))
      machine.succeed("claude-chroot sync-ips --yes")
''
