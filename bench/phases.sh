#!/bin/bash
# Stage 2 of bench/run: RUNS sessions per network mode with `-v`, keeping the
# activator's own `timing:` line of each (one file per mode).
#
# Runs inside the lab's host namespace (bench/run starts it there).
# Environment: BIN CFG WS BENCH_UID BENCH_USER RUNS OUT.
set -euo pipefail

run_enter() {
	env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin SUDO_UID="$BENCH_UID" SUDO_GID="$BENCH_UID" \
		SUDO_USER="$BENCH_USER" "$BIN" enter --config "$CFG" -v "$@" "$WS" -- /bin/true \
		</dev/null >/dev/null
}

for mode in none allowlist full; do
	case $mode in
	none) flags=(--no-network) ;;
	allowlist) flags=() ;;
	full) flags=(--full-network) ;;
	esac
	: >"$OUT/phases-$mode.txt"
	for _ in $(seq "$RUNS"); do
		run_enter "${flags[@]}" 2>&1 | grep 'timing:' >>"$OUT/phases-$mode.txt"
	done
done
