#!/usr/bin/env python3
"""Benchmark: `fcvm serve` driven by the E2B SDK. Prints figures; never asserts.

usage: bench/serve.py [--n 50] [--concurrent 20] [--pools 0,2] [--template base] [--pause-runs 5]
       (build first: . scripts/lib.sh && build_all release; the SDK comes from the venv the
       tests install, target/e2b-venv, or any python with `e2b` importable)

For each pool size of --pools, starts `fcvm serve --pool N` on a free loopback port, warms the
template once (the first sandbox may boot cold and save the image-cache snapshot; it is not
counted; with a pool, waits until the pool is full), then:
1. N sandboxes one after the other: Sandbox.create() -> first commands.run("echo hi") output,
   p50/p99 of create, of the first command, and of both (create -> output). Each is killed
   after its measurement; a pool refills in the background meanwhile (it may run dry);
2. --concurrent sandboxes created at once from as many threads: failures and wall time.
Then (--pause-runs R > 0, `--pool 0`): one sandbox with a background command paused and
resumed R times: p50 of `pause()`, of `Sandbox.connect()` (the resume) and of resume -> first
`commands.run("echo hi")` output; beside it a cached `fcvm podman run --rm IMAGE echo hi` (the
image-cache snapshot exists), p50 of R runs: issue 13's goal is resume <= 2x that.
"""
import argparse, json, os, statistics, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=50)
ap.add_argument("--concurrent", type=int, default=20)
ap.add_argument("--template", default="base")
ap.add_argument("--pools", default="0,2", help="pool sizes to measure, comma-separated ('' for none)")
ap.add_argument("--pause-runs", type=int, default=5)
ap.add_argument("--image", default="builtin:base", help="the template's image, for the podman run")
a = ap.parse_args()

venv_python = os.path.join(ROOT, "target/e2b-venv/bin/python")
if os.environ.get("FCVM_BENCH_IN_VENV") != "1" and os.path.exists(venv_python) and sys.executable != venv_python:
    os.execve(venv_python, [venv_python] + sys.argv, dict(os.environ, FCVM_BENCH_IN_VENV="1"))
from e2b import Sandbox  # noqa: E402

fcvm = os.path.join(ROOT, "target/release/fcvm")
env = dict(os.environ, FCVM_QUIET="1")
env.setdefault("FCVM_AGENT", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/agent/fc-agent"))
key = "bench-" + os.urandom(8).hex()
keyfile = f"/tmp/fcvm-bench-serve-{os.getpid()}.key"
with open(os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    f.write(key)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def one():
    t0 = time.perf_counter()
    s = Sandbox.create(template=a.template)
    t1 = time.perf_counter()
    out = s.commands.run("echo hi").stdout
    t2 = time.perf_counter()
    s.kill()
    assert out == "hi\n", out
    return t1 - t0, t2 - t1, t2 - t0


def pooled_ready(n):
    """Waits until n sandbox VMs run besides the sandboxes (the pool is full)."""
    for _ in range(3000):
        out = subprocess.run([fcvm, "ls", "--json"], env=env, capture_output=True).stdout
        vms = [v for v in json.loads(out or b"[]") if v["name"].startswith("sbx-") and v["observed"] == "running"]
        if len(vms) >= n:
            if n:
                time.sleep(1)  # listed once launched; pooled once warmed too
            return
        time.sleep(0.1)


def start_server(pool):
    server = subprocess.Popen([fcvm, "serve", "--listen", "127.0.0.1:0", "--api-key-file", keyfile,
                               "--pool", str(pool)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline().strip()
    if not line.startswith("Listening on "):
        sys.exit(f"fcvm serve did not start: {server.stderr.read()[-800:]}")
    url = line.removeprefix("Listening on ")
    os.environ.update(E2B_API_URL=url, E2B_SANDBOX_URL=url, E2B_API_KEY=key)
    return server


def stop_server(server):
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()


def measure(pool):
    server = start_server(pool)
    print(f"--pool {pool}:")
    try:
        t = time.perf_counter()
        one()
        print(f"  warm-up sandbox (may boot cold and save the snapshot): {time.perf_counter() - t:.2f} s")
        pooled_ready(pool)
        runs = [one() for _ in range(a.n)]
        for i, what in enumerate(["create", "first command", "create -> output"]):
            xs = [r[i] * 1000 for r in runs]
            print(f"  {what:18} p50 {pct(xs, 50):7.1f} ms   p99 {pct(xs, 99):7.1f} ms   "
                  f"mean {statistics.mean(xs):7.1f} ms   (n={len(xs)})")
        pooled_ready(pool)
        failures, lock = [], threading.Lock()

        def worker():
            try:
                one()
            except Exception as e:  # reported, not raised: a benchmark counts failures
                with lock:
                    failures.append(repr(e))

        t = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(a.concurrent)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        print(f"  {a.concurrent} concurrent create+echo+kill: {len(failures)} failures, "
              f"wall {time.perf_counter() - t:.2f} s")
        for f in failures[:5]:
            print("    failure:", f[:300])
    finally:
        stop_server(server)


def pause_resume(runs):
    server = start_server(0)
    print(f"pause / resume, {runs} runs (--pool 0):")
    try:
        one()  # the image-cache snapshot exists from here on
        s = Sandbox.create(template=a.template)
        s.commands.run("sleep 100000", background=True)
        pauses, resumes, outputs = [], [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            assert s.pause()
            t1 = time.perf_counter()
            s = Sandbox.connect(s.sandbox_id)
            t2 = time.perf_counter()
            out = s.commands.run("echo hi").stdout
            t3 = time.perf_counter()
            assert out == "hi\n", out
            assert len(s.commands.list()) == 1, "the background command runs on"
            pauses.append((t1 - t0) * 1000)
            resumes.append((t2 - t1) * 1000)
            outputs.append((t3 - t1) * 1000)
        s.kill()
    finally:
        stop_server(server)
    podman = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run([fcvm, "podman", "run", "--rm", a.image, "echo", "hi"], env=env,
                           capture_output=True, text=True)
        podman.append((time.perf_counter() - t0) * 1000)
        assert r.stdout == "hi\n", (r.stdout, r.stderr[-300:])
    for what, xs in [("pause()", pauses), ("resume (connect)", resumes),
                     ("resume -> output", outputs), ("cached podman run", podman)]:
        print(f"  {what:18} p50 {pct(xs, 50):7.1f} ms   min {min(xs):7.1f} ms   "
              f"max {max(xs):7.1f} ms   (n={len(xs)})")
    print(f"  resume / cached podman run: {pct(resumes, 50) / pct(podman, 50):.2f}x "
          f"(resume -> output: {pct(outputs, 50) / pct(podman, 50):.2f}x)")


try:
    for pool in [int(p) for p in a.pools.split(",") if p.strip()]:
        measure(pool)
    if a.pause_runs > 0:
        pause_resume(a.pause_runs)
finally:
    os.unlink(keyfile)
