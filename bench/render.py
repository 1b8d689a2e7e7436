#!/usr/bin/env python3
"""Render a skeleton and activate.json for this machine through nix/render.nix.

Usage: render.py REPO SKELETON STATE_DIR CONFIG_OUT NETWORK_NIX UID

Like the integration-test fixture, the store's tool environment is replaced by
binds of the host's /usr and the merged-/usr links, so the activator runs on a
plain Debian machine with only `nix-instantiate` (Debian package nix-bin).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile


def main():
    repo, skeleton, state, config_out, network, uid = sys.argv[1:7]
    expr = f"""import {repo}/nix/render.nix {{
      skeleton = "{skeleton}";
      stateDir = "{state}";
      tools = {{ shell = "/bin/bash"; nft = "/usr/sbin/nft"; pasta = "/usr/bin/pasta"; }};
      path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
      mounts = [ ];
      extraMounts = import {repo}/tests/host-binds.nix;
      user = {{ uid = {uid}; gid = {uid}; }};
      network = {network};
    }}"""
    env = dict(os.environ)
    # nix-instantiate wants a writable state directory; keep it out of /nix/var.
    nix_state = tempfile.mkdtemp(prefix="claude-chroot-bench-nix-")
    env["NIX_STATE_DIR"] = nix_state
    try:
        out = subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
            env=env,
            capture_output=True,
            check=False,
        )
    finally:
        shutil.rmtree(nix_state, ignore_errors=True)
    if out.returncode != 0:
        sys.exit("nix-instantiate failed:\n" + out.stderr.decode())
    rendered = json.loads(out.stdout)
    for rel, content in rendered["files"].items():
        path = os.path.join(skeleton, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
    # The host binaries need the host's linker cache; Debian's alternatives need a mount point.
    shutil.copy("/etc/ld.so.cache", os.path.join(skeleton, "etc/ld.so.cache"))
    os.makedirs(os.path.join(skeleton, "etc/alternatives"), exist_ok=True)
    with open(config_out, "w") as f:
        json.dump(rendered["activate"], f, indent=2)


if __name__ == "__main__":
    main()
