#!/usr/bin/env python3
"""Benchmark: the VM owner's memory under a stalled reader. Prints figures; never asserts.

usage: bench/backpressure.py [--seconds 60] [--mode exec|run] [--fcvm PATH]   (build first:
       . scripts/lib.sh && build_all release)

--mode exec (default): boots `builtin:busybox -- sleep 100000`, then runs
    `fcvm exec NAME -- cat /dev/zero` with its stdout a pipe nobody reads;
--mode run: boots `builtin:busybox -- sh -c 'cat /dev/zero'` with the owner's own stdout a
    pipe nobody reads.
Either way it samples the owner's VmRSS (/proc/PID/status; the pid from `fcvm ls --json`) once
a second, times an `fcvm exec NAME -- echo ok` every 10 s (the owner must keep serving), and at
the end sends the owner SIGTERM and times how long it takes to go.
Goal (issue 12 D): RSS stays under 64 MiB after 60 s.
"""
import argparse, json, os, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--seconds", type=int, default=60)
ap.add_argument("--mode", choices=["exec", "run"], default="exec")
ap.add_argument("--fcvm", default=os.path.join(ROOT, "target/release/fcvm"))
a = ap.parse_args()

env = dict(os.environ, FCVM_QUIET="1")
env.setdefault("FCVM_AGENT", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/agent/fc-agent"))
fcvm = a.fcvm


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def listed(name):
    out = subprocess.run([fcvm, "ls", "--json"], env=env, capture_output=True).stdout
    return next((v for v in json.loads(out or b"[]") if v["name"] == name), None)


name = f"bench-bp-{os.getpid()}"
cmd = ["sleep", "100000"] if a.mode == "exec" else ["sh", "-c", "cat /dev/zero"]
# A pipe whose read end stays open and unread: the stalled reader.
stall_r, stall_w = os.pipe()
owner = subprocess.Popen([fcvm, "podman", "run", "--name", name, "builtin:busybox", "--"] + cmd,
                         env=env, stdout=stall_w if a.mode == "run" else subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
flood = None
try:
    vm = None
    for _ in range(6000):
        if owner.poll() is not None:
            sys.exit(f"fcvm podman run exited: {owner.stderr.read().decode()[-500:]}")
        vm = listed(name)
        if vm and vm["observed"] == "running":
            break
        time.sleep(0.1)
    else:
        sys.exit("VM did not come up")
    pid = vm["pid"]
    base = rss_kib(pid)
    print(f"VM {name} ({vm['id']}) running; owner pid {pid}, RSS {base / 1024:.1f} MiB; mode {a.mode}",
          flush=True)
    if a.mode == "exec":
        flood = subprocess.Popen([fcvm, "exec", "--name", name, "--", "cat", "/dev/zero"],
                                 env=env, stdout=stall_w, stderr=subprocess.DEVNULL)
    samples = []
    t0 = time.monotonic()
    next_exec = 0
    while (el := time.monotonic() - t0) < a.seconds:
        r = rss_kib(pid)
        samples.append((el, r))
        if el >= next_exec:
            t = time.monotonic()
            try:
                p = subprocess.run([fcvm, "exec", "--name", name, "--", "echo", "ok"], env=env,
                                   capture_output=True, timeout=30)
                ok = p.returncode == 0 and p.stdout == b"ok\n"
                answer = "%.0f ms" % ((time.monotonic() - t) * 1000) if ok else f"FAILED rc={p.returncode}"
            except subprocess.TimeoutExpired:
                answer = "no answer within 30 s"
            print(f"  t={el:5.1f}s  RSS {r / 1024:6.1f} MiB  exec echo ok: {answer}", flush=True)
            next_exec += 10
        time.sleep(1)
    last = samples[-1][1]
    peak = max(r for _, r in samples)
    print(f"\nowner RSS: start {base / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
          f"after {a.seconds} s {last / 1024:.1f} MiB")
    print(f"goal: < 64 MiB after {a.seconds} s → {'met' if last < 64 * 1024 and peak < 64 * 1024 else 'NOT met'}")
    t = time.monotonic()
    owner.terminate()
    try:
        owner.wait(timeout=60)
        print(f"SIGTERM → owner gone in {time.monotonic() - t:.1f} s (exit {owner.returncode})")
    except subprocess.TimeoutExpired:
        print("SIGTERM → owner still there after 60 s: killed")
        owner.kill()
        owner.wait()
finally:
    for p in (flood, owner):
        if p and p.poll() is None:
            p.kill()
            p.wait()
    os.close(stall_r)
    os.close(stall_w)
    if listed(name):
        subprocess.run([fcvm, "rm", "--force", name], env=env, capture_output=True)
        subprocess.run([fcvm, "rm", name], env=env, capture_output=True)
