#!/usr/bin/env python3
"""Benchmark, printed, never asserted: what VMs that run and do nothing cost the host.

Starts N detached VMs (`fcvm podman run -d IMG sleep 3600`, restored from the image-cache
snapshot), waits until each is running, then samples the CPU time (utime+stime) of every
VM's QEMU (and of its fcvm owner process) over a quiet window and prints it as a share of
one core per VM, next to the
guest's timer interrupts per second (from one VM's /proc/interrupts). A pod of many quiet
containers, or a pool of ready sandboxes, pays this all the time.

usage: bench/idle.py [--vms 5] [--seconds 10] [--accel tcg]
"""
import argparse, json, os, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--vms", type=int, default=5)
ap.add_argument("--seconds", type=float, default=10)
ap.add_argument("--accel", default="tcg")
a = ap.parse_args()
F = os.path.join(ROOT, "target/release/fcvm")
ENV = dict(os.environ, FCVM_QUIET="1", FCVM_ACCEL=a.accel)
ENV.setdefault("FCVM_AGENT", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/agent/fc-agent"))
TICK = os.sysconf("SC_CLK_TCK")
names = [f"idle{os.getpid()}-{i}" for i in range(a.vms)]


def fcvm(*args):
    p = subprocess.run([F, *args], env=ENV, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"fcvm {' '.join(args)} failed: {p.stderr[-400:]}")
    return p.stdout


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def timer_irqs(name):
    out = fcvm("exec", "--vm", "--name", name, "--", "grep", "LOC:", "/proc/interrupts")
    return int(out.split()[1])


try:
    fcvm("podman", "run", "--rm", "--network", "none", "builtin:busybox", "true")  # the snapshot
    for n in names:
        fcvm("podman", "run", "-d", "--name", n, "--network", "none", "builtin:busybox", "sleep", "3600")
    vms = {v["name"]: v for v in json.loads(fcvm("ls", "--json"))}
    pids = [vms[n]["vmm_pid"] for n in names]
    owners = [vms[n]["pid"] for n in names]
    time.sleep(2)  # what the start left to do ends
    irq0, t0 = timer_irqs(names[0]), time.monotonic()
    before = [cpu_ticks(p) for p in pids]
    obefore = [cpu_ticks(p) for p in owners]
    time.sleep(a.seconds)
    after = [cpu_ticks(p) for p in pids]
    oafter = [cpu_ticks(p) for p in owners]
    irq1, t1 = timer_irqs(names[0]), time.monotonic()
    per_vm = [(b - a_) / TICK / (t1 - t0) * 100 for a_, b in zip(before, after)]
    print(f"accel={a.accel} vms={a.vms} window={t1 - t0:.1f} s")
    print(f"quiet VM: QEMU CPU {sum(per_vm) / len(per_vm):.2f} % of a core each "
          f"(min {min(per_vm):.2f}, max {max(per_vm):.2f}); "
          f"guest timer interrupts {(irq1 - irq0) / (t1 - t0):.0f}/s (incl. one exec)")
    owner = sum(b - a_ for a_, b in zip(obefore, oafter)) / TICK / (t1 - t0) * 100 / len(owners)
    print(f"its fcvm owner process: {owner:.2f} % of a core each")
finally:
    for n in names:
        subprocess.run([F, "rm", "-f", n], env=ENV, capture_output=True)
