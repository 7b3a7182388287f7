#!/usr/bin/env python3
"""Benchmark: `fcvm podman run` → first byte of container output, cold, median of N runs,
next to the kernel boot of the same kernel to the agent's first message (HelloAck).

usage: bench/first-byte.py [--runs 5] [--accel tcg|kvm|auto]   (build first: ./fcvm setup)
Prints figures; never asserts. The goal (issue 2): the container adds <= 20 % on top of the
kernel boot under TCG.
"""
import argparse, os, re, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--accel", default="tcg")
a = ap.parse_args()

fcvm = os.path.join(ROOT, "target/release/fcvm")
env = dict(os.environ, FCVM_TIMINGS="1", FCVM_QUIET="1")
if a.accel != "auto":
    env["FCVM_ACCEL"] = a.accel
env.setdefault("FCVM_AGENT", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/agent/fc-agent"))

# Warm the caches (assets, image) so that every measured run is a cold *boot*, not a setup.
subprocess.run([fcvm, "podman", "run", "builtin:busybox", "true"], env=env, check=True)

first, hello, total = [], [], []
for i in range(a.runs):
    t0 = time.monotonic()
    p = subprocess.Popen([fcvm, "podman", "run", "--no-snapshot", "--network", "none", "builtin:busybox", "--", "echo", "hi"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = p.stdout.read(1)
    t_first = time.monotonic() - t0
    rest, err = p.communicate()
    t_total = time.monotonic() - t0
    m = re.search(r"agent_hello_ms=(\d+)", err.decode())
    if p.returncode != 0 or b != b"h" or not m:
        sys.exit(f"run {i} failed: rc={p.returncode} out={b+rest!r} err={err.decode()[-500:]}")
    first.append(t_first * 1000); hello.append(int(m.group(1))); total.append(t_total * 1000)
    print(f"run {i}: first_byte={t_first*1000:.0f} ms  kernel+agent (spawn→HelloAck)={m.group(1)} ms  "
          f"exit={t_total*1000:.0f} ms", flush=True)

mf, mh = statistics.median(first), statistics.median(hello)
print(f"\naccel={a.accel} runs={a.runs}")
print(f"median run → first byte of container output: {mf:.0f} ms")
print(f"median kernel boot → agent's first message:  {mh:.0f} ms")
print(f"container overhead on top of the boot:       {mf - mh:.0f} ms ({(mf / mh - 1) * 100:.0f} %; goal <= 20 %)")
