#!/usr/bin/env python3
"""Benchmark: `ctr run --rm --runtime io.containerd.fcvm.v2 IMG true` next to
`fcvm podman run --network none IMG true` of the same image, cold (no image-cache snapshot:
boot, prepare, save it) and cached (restored from it), median of N runs each.

Then (--pods N, default 10; 0 skips it) N pods started at once through CRI: the
`pods_bench` test of crates/containerd-shim-fcvm/tests/cri.rs (its own containerd with the
CRI plugin, a CRI v1 client; each pod = RunPodSandbox + CreateContainer + StartContainer),
next to one pod alone. Goal (issue 14): 0 failures, wall <= 3 x one pod.

usage: bench/containerd.py [--runs 5] [--accel tcg|kvm|auto] [--pods 10]
Needs root, containerd (Debian), skopeo, and a release build (scripts/lib.sh build_all, then
cargo build --release -p containerd-shim-fcvm). Starts its own containerd with a private
config in a temp dir and stops it at the end. Prints figures; never asserts.
The goal (issue 14): the shim adds <= 20 % to fcvm's own run.
"""
import argparse, glob, os, re, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--accel", default="auto")
ap.add_argument("--pods", type=int, default=10)
a = ap.parse_args()

rel = os.path.join(ROOT, "target/release")
fcvm = os.path.join(rel, "fcvm")
# Its own data dir: every cold run deletes the image-cache snapshots in it.
data = os.path.join(ROOT, "target/fcvm-bench-data")
env = dict(os.environ, FCVM_QUIET="1", FCVM_DATA_DIR=data, PATH=rel + ":" + os.environ["PATH"])
if a.accel != "auto":
    env["FCVM_ACCEL"] = a.accel
env.setdefault("FCVM_AGENT", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/agent/fc-agent"))
IMAGE = "docker.io/library/fcvm-busybox:latest"

tmp = tempfile.mkdtemp(prefix="ctrd-bench-", dir=os.path.join(ROOT, "target"))
sock = os.path.join(tmp, "containerd.sock")
with open(os.path.join(tmp, "config.toml"), "w") as f:
    f.write(f'''version = 2
root = "{tmp}/root"
state = "{tmp}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
''')
log = open(os.path.join(tmp, "containerd.log"), "w")
ctrd = subprocess.Popen(["containerd", "--config", os.path.join(tmp, "config.toml")], env=env,
                        stdout=log, stderr=log)
ctr = ["ctr", "-a", sock, "-n", "bench"]


def run(cmd, **kw):
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, **kw)
    if p.returncode != 0:
        sys.exit(f"{cmd} failed: {p.stderr.decode()[-500:]}")
    return (time.monotonic() - t0) * 1000


def drop_cache_snapshots():
    for d in glob.glob(os.path.join(data, "snapshots", "cache-*")):
        shutil.rmtree(d)


try:
    for _ in range(100):
        if subprocess.run(ctr + ["version"], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    # The image: fcvm's builtin busybox, as an OCI archive for containerd and as fcvm's own.
    run([fcvm, "podman", "run", "--network", "none", "builtin:busybox", "true"])
    layout = os.path.join(data, "images/builtin/busybox")
    run(["skopeo", "--insecure-policy", "copy", "-q", f"oci:{layout}:latest",
         f"oci-archive:{tmp}/bb.tar:{IMAGE}"])
    run(ctr + ["image", "import", f"{tmp}/bb.tar"])
    run(ctr + ["run", "--rm", "--runtime", "io.containerd.fcvm.v2", IMAGE, "warm", "true"])

    res = {k: [] for k in ["shim cold", "shim cached", "podman cold", "podman cached"]}
    for i in range(a.runs):
        shim = ctr + ["run", "--rm", "--runtime", "io.containerd.fcvm.v2", IMAGE]
        pod = [fcvm, "podman", "run", "--network", "none", "builtin:busybox", "true"]
        drop_cache_snapshots()
        res["shim cold"].append(run(shim + [f"c{i}", "true"]))
        res["shim cached"].append(run(shim + [f"w{i}", "true"]))
        drop_cache_snapshots()
        res["podman cold"].append(run(pod))
        res["podman cached"].append(run(pod))
        print(f"run {i}: " + "  ".join(f"{k}={v[-1]:.0f} ms" for k, v in res.items()), flush=True)

    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\naccel={a.accel} runs={a.runs} (median, ms; wall time of the command)")
    for kind in ["cold", "cached"]:
        s, p = med[f"shim {kind}"], med[f"podman {kind}"]
        print(f"{kind:>6}: ctr run --rm {s:6.0f}   fcvm podman run {p:6.0f}   "
              f"shim adds {s - p:5.0f} ms ({(s / p - 1) * 100:+.0f} %; goal <= 20 %)")

    if a.pods > 0:
        # The CRI client is a Rust test (k8s-cri); it prints its figures as `pods:` lines.
        p = subprocess.run(
            ["cargo", "test", "--release", "-q", "-p", "containerd-shim-fcvm", "--test", "cri",
             "--", "--ignored", "--exact", "pods_bench", "--nocapture"],
            cwd=ROOT, env=dict(env, FCVM_TEST_DATA_DIR=data, FCVM_BENCH_PODS=str(a.pods)),
            capture_output=True, text=True)
        lines = [l for l in p.stdout.splitlines() if l.startswith("pods:")]
        if p.returncode != 0 or not lines:
            sys.exit(f"pods_bench failed: {(p.stdout + p.stderr)[-1500:]}")
        print(f"\nCRI pods (goal: 0 failures, wall <= 3 x one pod):")
        for l in lines:
            print("  " + l[len("pods: "):])
        # A pod's start keeps about one core busy: N of them cannot end before N x its CPU
        # time spread over every core, whatever the runtime does.
        m = re.search(r"one pod up (\d+) ms \(host CPU busy meanwhile (\d+) ms\)", p.stdout)
        if m:
            one_ms, one_cpu = int(m[1]), int(m[2])
            cores = os.cpu_count() or 1
            floor = a.pods * one_cpu / cores
            print(f"  floor on this host: {a.pods} x {one_cpu} ms CPU / {cores} cores = "
                  f"{floor:.0f} ms = {floor / one_ms:.1f} x one pod")
finally:
    # This containerd's layer directories, hence the keys of its erofs files, end here.
    drop_cache_snapshots()
    shutil.rmtree(os.path.join(data, "images", "trees"), ignore_errors=True)
    ctrd.terminate()
    ctrd.wait()
    subprocess.run(["umount", "-R", f"{tmp}/root"], capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)
