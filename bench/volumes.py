#!/usr/bin/env python3
"""Benchmark: a host directory through `--map` vs the container's own disk, in one VM, and the
same on the host. Prints figures; never asserts.

usage: bench/volumes.py [--mib 256] [--files 5000] [--accel tcg|kvm|auto]   (build first)

Boots one VM (`builtin:busybox --privileged --mem 1024 -v TMP:/map -- sleep 100000`), then
in the container, for /map (FUSE served by the host over the agent channel) and /tmp (the
overlay on the VM's own ext4 disk):
1. sequential write of a --mib MiB file (`dd bs=1M conv=fsync`), then its sequential read
   after dropping the guest's page cache (the VM is privileged for that);
2. `find DIR -type f | xargs stat` over --files small files (made beforehand);
and the same two on the host in a temp dir. Both guest reads are like for like: neither is a
guest page-cache hit (dropped first), and both files are in the host's page cache (the own
disk's image is written through QEMU's `cache=unsafe`, the map's file by the host side), so
the own disk's figure is virtio-blk (QEMU copying natively) and the map's is FUSE + the
agent channel (+ `ReadPages`: the host writing guest memory). Times of the guest steps are the `fcvm exec` wall
time minus that of an empty exec (its own cost, measured here).
Goals (issue 15): large-file throughput through the map >= 50 % of the own disk's; metadata
walk <= 3 x the own disk's.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--mib", type=int, default=256)
ap.add_argument("--files", type=int, default=5000)
ap.add_argument("--accel", default="auto")
a = ap.parse_args()

fcvm = os.path.join(ROOT, "target/release/fcvm")
env = dict(os.environ, FCVM_QUIET="1")
if a.accel != "auto":
    env["FCVM_ACCEL"] = a.accel
env.setdefault("FCVM_AGENT", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/agent/fc-agent"))

share = tempfile.mkdtemp(prefix="fcvm-bench-map-")
hostdir = tempfile.mkdtemp(prefix="fcvm-bench-host-")
name = f"bench-volumes-{os.getpid()}"


def timed(argv, **kw):
    t = time.monotonic()
    r = subprocess.run(argv, capture_output=True, **kw)
    dt = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"{argv}: exit {r.returncode}: {r.stderr.decode()[-500:]}")
    return dt, r.stdout.decode()


def sh(cmd):
    return timed([fcvm, "exec", "--name", name, "--", "sh", "-c", cmd], env=env)


WALK = "find {d}/files -type f | xargs stat -c %s > /dev/null"
MAKE = "mkdir -p {d}/files && cd {d}/files && i=0; while [ $i -lt %d ]; do echo $i > f$i; i=$((i+1)); done" % a.files
WRITE = "dd if=/dev/zero of={d}/big bs=1M count=%d conv=fsync 2>/dev/null" % a.mib
DROP = "sync; echo 3 > /proc/sys/vm/drop_caches"
READ = "dd if={d}/big of=/dev/null bs=1M 2>/dev/null"
# One FUSE round trip per read: 2,000 one-byte reads of a 2,000-byte file (direct_io).
OPS = 2000
ONE = "head -c %d /dev/zero > {d}/one" % OPS
SMALL = "dd if={d}/one of=/dev/null bs=1 count=%d 2>/dev/null" % OPS

owner = subprocess.Popen([fcvm, "podman", "run", "--name", name, "--privileged", "--mem", "1024",
                          "-v", f"{share}:/map", "builtin:busybox", "--", "sleep", "100000"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
try:
    for _ in range(6000):
        if owner.poll() is not None:
            sys.exit(f"fcvm podman run exited: {owner.stderr.read().decode()[-500:]}")
        ls = json.loads(subprocess.run([fcvm, "ls", "--json"], env=env, capture_output=True).stdout or b"[]")
        if any(v["name"] == name and v["observed"] == "running" for v in ls):
            break
        time.sleep(0.1)
    base = min(sh("true")[0] for _ in range(5))
    res = {}
    for where, d in [("map", "/map"), ("own disk", "/tmp")]:
        sh(MAKE.format(d=d))
        sh(DROP)
        walk = sh(WALK.format(d=d))[0] - base
        write = sh(WRITE.format(d=d))[0] - base
        sh(DROP)
        read = sh(READ.format(d=d))[0] - base
        sh(ONE.format(d=d))
        small = sh(SMALL.format(d=d))[0] - base
        sh(f"rm -rf {d}/big {d}/files {d}/one")
        res[where] = (write, read, walk, small)
    # The host, same steps (no cache drop: it is not ours to drop; the read may come from RAM).
    h = lambda c: timed(["sh", "-c", c.format(d=hostdir)])[0]
    h(MAKE)
    h(ONE)
    res["host"] = (h(WRITE), h(READ), h(WALK), h(SMALL))
finally:
    subprocess.run([fcvm, "rm", "--force", name], env=env, capture_output=True)
    owner.wait()
    shutil.rmtree(share, ignore_errors=True)
    shutil.rmtree(hostdir, ignore_errors=True)

print(f"exec overhead subtracted: {base * 1000:.0f} ms")
print(f"{'':10} {'write MiB/s':>12} {'read MiB/s':>12} {'find+stat %d files' % a.files:>22} {'1-byte read':>12}")
for where, (w, r, walk, small) in res.items():
    print(f"{where:10} {a.mib / w:12.1f} {a.mib / r:12.1f} {walk:20.2f} s {small / OPS * 1e6:9.0f} us")
m, o = res["map"], res["own disk"]
print(f"map/own: write {o[0] / m[0] * 100:.0f} %, read {o[1] / m[1] * 100:.0f} % of the own disk's "
      f"throughput (goal >= 50 %); metadata walk {m[2] / o[2]:.1f} x (goal <= 3 x)")
