#!/usr/bin/env python3
"""The work of a cached start under TCG, counted: QEMU's translation blocks (QMP `info jit`).

Under TCG a restored VM starts with an empty translation cache, so every guest code path that
runs after a restore is translated first; the count of blocks translated by the time the
container's first output arrives is a far steadier measure than wall time on a shared host
(±30 % run to run, against ±1 % here). It still varies from snapshot to snapshot (whatever
work was pending in the guest when it was saved runs again in every restore of it), so this
saves several image-cache snapshots and restores each a few times.

usage: bench/translation.py [--snapshots 3] [--restores 3] [--command 'echo hi']
       Uses its own data dir (FCVM_DATA_DIR, default /tmp/fcvm-translation): its image-cache
       snapshots are removed and made again.
"""
import argparse, glob, json, os, shutil, signal, socket, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--snapshots", type=int, default=3)
ap.add_argument("--restores", type=int, default=3)
ap.add_argument("--command", default="echo hi", help="shell command; its first line of output ends the count")
a = ap.parse_args()
F = os.path.join(ROOT, "target/release/fcvm")
DATA = os.environ.get("FCVM_DATA_DIR", "/tmp/fcvm-translation")
ENV = dict(os.environ, FCVM_QUIET="1", FCVM_ACCEL="tcg", FCVM_DATA_DIR=DATA)
ENV.setdefault("FCVM_AGENT", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/agent/fc-agent"))
NAME = f"tb{os.getpid()}"


def blocks(vm_id):
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(DATA, "vms", vm_id, "qmp.sock"))
    f = s.makefile("rw")
    f.readline()

    def call(cmd, **args):
        f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
        f.flush()
        while True:
            r = json.loads(f.readline())
            if "return" in r or "error" in r:
                return r

    call("qmp_capabilities")
    out = call("human-monitor-command", **{"command-line": "info jit"})["return"]
    s.close()
    return next(int(l.split()[2]) for l in out.splitlines() if l.startswith("TB count"))


counts, times = [], []
for n in range(a.snapshots):
    for d in glob.glob(os.path.join(DATA, "snapshots", "cache-*")):
        shutil.rmtree(d)
    subprocess.run([F, "podman", "run", "--network", "none", "builtin:busybox", "true"], env=ENV, check=True,
                   capture_output=True)
    per = []
    for _ in range(a.restores):
        t0 = time.monotonic()
        # The command's output first, then the VM stays up (sleep) while it is counted.
        p = subprocess.Popen([F, "podman", "run", "--network", "none", "--name", NAME, "builtin:busybox", "sh",
                              "-c", f"{a.command}; exec sleep 1000"], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        if not p.stdout.readline():
            sys.exit(f"no output: {p.communicate()[1].decode()[-400:]}")
        times.append((time.monotonic() - t0) * 1000)
        vm = next(v["id"] for v in json.loads(subprocess.run([F, "ls", "--json"], env=ENV, capture_output=True,
                                                             check=True).stdout) if v["name"] == NAME)
        per.append(blocks(vm))
        p.send_signal(signal.SIGTERM)
        p.wait()
    counts += per
    print(f"snapshot {n + 1}: blocks {per}", flush=True)
print(f"translation blocks to first output: median {statistics.median(counts):.0f} "
      f"(min {min(counts)}, max {max(counts)}, {len(counts)} restores of {a.snapshots} snapshots); "
      f"wall median {statistics.median(times):.0f} ms")
