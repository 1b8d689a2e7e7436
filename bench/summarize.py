#!/usr/bin/env python3
"""Turn the raw outputs of bench/run in DIR into summary.md (printed on stdout).

Every number printed here is computed from the files of that one run: hyperfine's
JSON exports, the activator's `timing:` lines, iperf3's JSON and the connect-latency
samples. Nothing is carried over from another run.
"""

import json
import os
import re
import statistics
import sys

OUT = sys.argv[1]


def load(name):
    with open(os.path.join(OUT, name)) as f:
        return json.load(f)


def ms(seconds):
    return seconds * 1000.0


def hyperfine_results(name):
    return {r["command"]: r for r in load(name)["results"]}


def fmt(x, digits=1):
    return f"{x:.{digits}f}"


lines = []
emit = lines.append

machine = open(os.path.join(OUT, "machine.txt")).read().strip()
emit("# Benchmark run\n")
emit("```text\n" + machine + "\n```\n")

# --- 1. Round trip --------------------------------------------------------------------------
rt = hyperfine_results("roundtrip.json")
bwrap = rt["bwrap --unshare-all"]["median"]
none = rt["claude-chroot none"]["median"]
emit("## 1. Round trip `-- /bin/true` (hyperfine, milliseconds)\n")
emit("| variant | median | mean ± sd | min | max | runs | median / bwrap | median / none |")
emit("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, r in rt.items():
    emit(
        f"| {name} | {fmt(ms(r['median']))} | {fmt(ms(r['mean']))} ± {fmt(ms(r['stddev']))} "
        f"| {fmt(ms(r['min']))} | {fmt(ms(r['max']))} | {len(r['times'])} "
        f"| {fmt(r['median'] / bwrap, 2)} | {fmt(r['median'] / none, 2)} |"
    )
emit("")

# --- 2. Phases ------------------------------------------------------------------------------
TIMING = re.compile(r"timing: (.*) \(total ([0-9.]+)ms\)")
SIDE = re.compile(r"; side by side within (.*)$")
phases = {}
side = {}
for mode in ("none", "allowlist", "full"):
    per_phase = {}
    order = []
    with open(os.path.join(OUT, f"phases-{mode}.txt")) as f:
        for line in f:
            m = TIMING.search(line)
            if not m:
                continue
            for part in m.group(1).split(", "):
                name, value = part.rsplit(" ", 1)
                if name not in per_phase:
                    order.append(name)
                    per_phase[name] = []
                per_phase[name].append(float(value.removesuffix("ms")))
            per_phase.setdefault("total", []).append(float(m.group(2)))
            sm = SIDE.search(line.rstrip())
            for group in sm.group(1).split("; ") if sm else []:
                phase, steps = group.split(": ", 1)
                for part in steps.split(", "):
                    name, value = part.rsplit(" ", 1)
                    side.setdefault((phase, name), {}).setdefault(mode, []).append(
                        float(value.removesuffix("ms"))
                    )
    order.append("total")
    phases[mode] = (order, per_phase)

order = phases["allowlist"][0]
count = len(phases["allowlist"][1]["total"])
emit(f"## 2. Phases of one session (`enter -v`, median of {count} runs per mode, ms)\n")
emit("| phase | none | allowlist | full |")
emit("|---|---:|---:|---:|")
medians = {}
for phase in order:
    row = []
    for mode in ("none", "allowlist", "full"):
        values = phases[mode][1].get(phase, [])
        med = statistics.median(values) if values else float("nan")
        medians[(mode, phase)] = med
        row.append(fmt(med, 2))
    emit(f"| {phase} | " + " | ".join(row) + " |")
emit("")
emit(
    "`session` is the command itself (`/bin/true` and the sandbox's init reaping it); "
    "`report` reads the blocked-destination counters and stops pasta; `teardown` removes "
    "the session state. The total excludes the activator's own exec and exit.\n"
)


if side:
    emit("Steps that run side by side within a phase, each timed from the phase's start "
         "(median ms):\n")
    emit("| phase | step | none | allowlist | full |")
    emit("|---|---|---:|---:|---:|")
    for (phase, name), per_mode in side.items():
        row = [
            fmt(statistics.median(per_mode[m]), 2) if m in per_mode else "-"
            for m in ("none", "allowlist", "full")
        ]
        emit(f"| {phase} | {name} | " + " | ".join(row) + " |")
    emit("")


def after_exit(mode):
    return medians[(mode, "report")] + medians[(mode, "teardown")]


# Spawned processes in the strace profile: program, first exec to exit of its first process.
strace_path = os.path.join(OUT, "strace-allowlist.txt")
spawned = []
if os.path.exists(strace_path):
    LINE = re.compile(r"^(\d+) +([0-9.]+) (.*)$")
    execs, exits, first = {}, {}, None
    with open(strace_path) as f:
        for raw in f:
            m = LINE.match(raw)
            if not m:
                continue
            pid, t, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            first = t if first is None else first
            if rest.startswith("execve(") and "= 0" in rest and pid not in execs:
                execs[pid] = (t, rest.split('"')[1])
            elif rest.startswith("+++ exited"):
                exits[pid] = t
    for pid, (t, prog) in sorted(execs.items(), key=lambda kv: kv[1][0]):
        end = exits.get(pid)
        spawned.append((prog, t - first, None if end is None else end - t))
    emit("### Processes one allowlist session spawns (strace -f --seccomp-bpf, one run)\n")
    emit("| program | exec at (ms after start) | until its first process exits (ms) |")
    emit("|---|---:|---:|")
    for prog, at, dur in spawned:
        emit(f"| {prog} | {fmt(ms(at))} | {'-' if dur is None else fmt(ms(dur))} |")
    emit("\n(Under strace, so slower than untraced; it shows which steps are processes.)\n")

# --- 3. Network path ------------------------------------------------------------------------
emit("## 3. Network path (allowlist mode through pasta, against the same client in the lab's host namespace)\n")
emit("| measure | sandbox (allowlist) | sandbox (full, no filter) | direct | allowlist / direct |")
emit("|---|---:|---:|---:|---:|")
throughput = {}


def gbits(name):
    return load(name)["end"]["sum_received"]["bits_per_second"] / 1e9


for direction, label in (("up", "upload (client sends)"), ("down", "download (--reverse)")):
    s = gbits(f"iperf-sandbox-{direction}.json")
    f = gbits(f"iperf-full-{direction}.json")
    d = gbits(f"iperf-direct-{direction}.json")
    throughput[direction] = s / d
    emit(
        f"| iperf3 single TCP stream, {label}, Gbit/s | {fmt(s, 2)} | {fmt(f, 2)} | {fmt(d, 2)} "
        f"| {fmt(s / d, 2)} |"
    )
cs, cd = load("connect-sandbox.json"), load("connect-direct.json")
for key, label in (("median_ms", "median"), ("p90_ms", "p90")):
    emit(
        f"| TCP connect, {label} of {cs['count']}, ms | {fmt(cs[key], 3)} | - | {fmt(cd[key], 3)} "
        f"| {fmt(cs[key] / cd[key], 2)} |"
    )
emit("")

# --- 4. sync-ips ----------------------------------------------------------------------------
si = hyperfine_results("sync-ips.json")
names = list(si)
sync, single, sequential = (si[n]["median"] for n in names)
emit("## 4. `sync-ips` against dnsmasq with added delay (hyperfine, milliseconds)\n")
emit("| command | median | mean ± sd | min | max | median / one lookup |")
emit("|---|---:|---:|---:|---:|---:|")
for n in names:
    r = si[n]
    emit(
        f"| {n} | {fmt(ms(r['median']))} | {fmt(ms(r['mean']))} ± {fmt(ms(r['stddev']))} "
        f"| {fmt(ms(r['min']))} | {fmt(ms(r['max']))} | {fmt(r['median'] / single, 2)} |"
    )
emit("")

# --- Targets --------------------------------------------------------------------------------
emit("## Targets\n")
emit("| target | measured | met |")
emit("|---|---|---|")


def row(target, measured, ok):
    emit(f"| {target} | {measured} | {'yes' if ok else 'no'} |")


row(
    "round trip, `none`, within 2x of bwrap",
    f"{fmt(none / bwrap, 2)}x ({fmt(ms(none))} ms against {fmt(ms(bwrap))} ms)",
    none / bwrap <= 2.0,
)
extra = ms(rt["claude-chroot allowlist"]["median"] - none)
row("`allowlist` adds under 50 ms over `none`", f"+{fmt(extra)} ms", extra < 50.0)
for mode in ("none", "allowlist"):
    t = after_exit(mode)
    row(
        f"teardown under 20 ms ({mode}: report + teardown phases)",
        f"{fmt(t, 2)} ms",
        t < 20.0,
    )
for direction in ("up", "down"):
    r = throughput[direction]
    row(f"single-stream throughput >= 80% of direct ({direction})", f"{fmt(100 * r, 0)}%", r >= 0.8)
row(
    "`sync-ips` close to the slowest single lookup, not the sum",
    f"{fmt(ms(sync))} ms; one lookup {fmt(ms(single))} ms; "
    f"{names[2].split(',')[1].strip()} {fmt(ms(sequential))} ms",
    sync < 2 * single,
)
emit("")
print("\n".join(lines))
