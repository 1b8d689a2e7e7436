#!/bin/bash
# Stage 1 of bench/run: one hyperfine run of `/bin/true` in every sandbox variant.
#
# bench/run starts this in the lab's host network namespace and a private mount
# namespace, so every variant starts from the same network namespace (pasta attaches
# to the lab, never to the machine) and the bind mounts of the unshare+chroot tree
# vanish when this script ends.
#
# Environment (set by bench/run): BIN CFG WS SKEL HOMEDIR TREE BENCH_UID
# BENCH_USER RUNS WARMUP OUT.
set -euo pipefail

# Bind `source` read-only (or read-write with rw) at TREE/target.
bind_into_tree() {
	local source=$1 target=$TREE$2 mode=${3:-ro}
	[ -e "$source" ] || return 0
	mkdir -p "$target"
	mount --bind "$source" "$target"
	if [ "$mode" = ro ]; then
		mount -o remount,bind,ro "$target"
	fi
}

# Build the unshare+chroot tree from the same sources the activator binds.
mkdir -p "$TREE/proc" "$TREE/tmp" "$TREE/dev"
bind_into_tree "$SKEL/etc" /etc
for dir in /usr /bin /sbin /lib /lib64 /etc/alternatives; do
	bind_into_tree "$dir" "$dir"
done
bind_into_tree "$HOMEDIR" /home/claude rw
bind_into_tree "$WS" /workspace rw
for dev in null zero full random urandom tty; do
	touch "$TREE/dev/$dev"
	mount --bind "/dev/$dev" "$TREE/dev/$dev"
done

sudo_env="env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin SUDO_UID=$BENCH_UID SUDO_GID=$BENCH_UID SUDO_USER=$BENCH_USER"
enter="$sudo_env $BIN enter --config $CFG"

bwrap_binds="--ro-bind $SKEL/etc /etc"
for dir in /usr /bin /sbin /lib /lib64 /etc/alternatives; do
	[ -e "$dir" ] && bwrap_binds+=" --ro-bind $dir $dir"
done
bwrap_binds+=" --bind $HOMEDIR /home/claude --bind $WS /workspace"
bwrap_binds+=" --dev /dev --proc /proc --tmpfs /tmp --tmpfs /run --symlink /tmp /var/tmp"
bwrap="bwrap --unshare-all --die-with-parent --new-session --hostname claude-chroot"
bwrap+=" --uid $BENCH_UID --gid $BENCH_UID $bwrap_binds --chdir /workspace /bin/true"

unshare_chroot="unshare --mount --pid --net --ipc --uts --cgroup --fork"
unshare_chroot+=" --mount-proc=$TREE/proc chroot --userspec=$BENCH_UID:$BENCH_UID $TREE /bin/true"

# Every variant must work before it is timed.
for cmd in "$enter --no-network $WS -- /bin/true" "$enter $WS -- /bin/true" \
	"$enter --full-network $WS -- /bin/true" "$bwrap" "$unshare_chroot"; do
	if ! $cmd </dev/null >/dev/null 2>"$OUT/roundtrip-check.err"; then
		echo "bench: this variant fails, not timing it: $cmd" >&2
		cat "$OUT/roundtrip-check.err" >&2
		exit 1
	fi
done
rm -f "$OUT/roundtrip-check.err"

hyperfine --shell=none --runs "$RUNS" --warmup "$WARMUP" \
	--export-json "$OUT/roundtrip.json" --export-markdown "$OUT/roundtrip.md" \
	-n "claude-chroot none" "$enter --no-network $WS -- /bin/true" \
	-n "claude-chroot allowlist" "$enter $WS -- /bin/true" \
	-n "claude-chroot full" "$enter --full-network $WS -- /bin/true" \
	-n "bwrap --unshare-all" "$bwrap" \
	-n "unshare + chroot" "$unshare_chroot" </dev/null
