#!/usr/bin/env python3
"""Benchmark: `fcvm exec` round-trip against one running VM. Prints figures; never asserts.

usage: bench/exec.py [--runs 200] [--cpu 1] [--accel tcg|kvm|auto]   (build first: ./fcvm setup, and
       cargo build --release -p fcvm --example exec_rtt)

Boots one VM (`builtin:busybox -- sleep 100000`), then measures `true` run with `--vm`:
1. CLI round-trip: a whole `fcvm exec --vm` process (process start + connect + exec), p50/p99,
   next to the guest's own spawn time (`Started{spawn_us}`, printed with FCVM_TIMINGS=1);
2. in-process round-trip (examples/exec_rtt: one session on exec.sock, no process start):
   Start→Started (= guest spawn + one channel round-trip through the owner) and Start→Exit;
3. 10 parallel execs' wall time vs one (CLI and in-process).
The guest's own time is reported two ways: spawn (Start → exec done, `Started.spawn_us`) and
run (Start → reaped, `Exit.run_us`), and the goal is checked against both.
Goals (issue 3): round-trip <= 1.5 x in-guest spawn + one channel round-trip; 10 parallel
<= 3 x one.
"""
import argparse, json, os, re, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=200)
ap.add_argument("--accel", default="auto")
ap.add_argument("--cpu", type=int, default=1, help="the VM's vCPUs (TCG: one host thread each)")
a = ap.parse_args()

fcvm = os.path.join(ROOT, "target/release/fcvm")
rtt_bin = os.path.join(ROOT, "target/release/examples/exec_rtt")
env = dict(os.environ, FCVM_QUIET="1")
if a.accel != "auto":
    env["FCVM_ACCEL"] = a.accel
env.setdefault("FCVM_AGENT", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/agent/fc-agent"))
TRUE = ["--vm", "--", "/run/fcvm/rootfs/bin/true"]  # the VM's own root has no coreutils


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ms(us):
    return f"{us / 1000:.1f} ms"


name = f"bench-exec-{os.getpid()}"
owner = subprocess.Popen([fcvm, "podman", "run", "--name", name, "--cpu", str(a.cpu),
                          "builtin:busybox", "--", "sleep", "100000"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
try:
    vm = None
    for _ in range(6000):
        if owner.poll() is not None:
            sys.exit(f"fcvm podman run exited: {owner.stderr.read().decode()[-500:]}")
        ls = json.loads(subprocess.run([fcvm, "ls", "--json"], env=env, capture_output=True).stdout or b"[]")
        vm = next((v for v in ls if v["name"] == name and v["observed"] == "running"), None)
        if vm:
            break
        time.sleep(0.1)
    if not vm:
        sys.exit("VM did not come up")
    print(f"VM {name} ({vm['id']}) running, accel={vm.get('accel')}, {a.cpu} vCPU", flush=True)

    def cli_exec():
        t = time.monotonic()
        p = subprocess.run([fcvm, "exec", "--name", name] + TRUE, env=dict(env, FCVM_TIMINGS="1"),
                           capture_output=True)
        wall = (time.monotonic() - t) * 1e6
        m = re.search(r"spawn_us=(\d+) started_us=(\d+)", p.stderr.decode())
        if p.returncode != 0 or not m:
            sys.exit(f"exec failed: rc={p.returncode} {p.stderr.decode()[-300:]}")
        return wall, int(m.group(1)), int(m.group(2))

    cli_exec()  # warm-up
    cli = [cli_exec() for _ in range(a.runs)]
    wall = [c[0] for c in cli]
    spawn = [c[1] for c in cli]
    started = [c[2] for c in cli]

    # 10 parallel CLI execs vs one.
    def parallel(n):
        t = time.monotonic()
        ps = [subprocess.Popen([fcvm, "exec", "--name", name] + TRUE, env=env) for _ in range(n)]
        codes = [p.wait() for p in ps]
        if any(codes):
            sys.exit(f"parallel exec failed: {codes}")
        return (time.monotonic() - t) * 1e6

    one_cli = statistics.median(parallel(1) for _ in range(5))
    ten_cli = statistics.median(parallel(10) for _ in range(3))

    rtt = None
    if os.path.exists(rtt_bin):
        sock = os.path.join(env.get("FCVM_DATA_DIR") or "", "vms", vm["id"], "exec.sock")
        out = subprocess.run([rtt_bin, sock, str(a.runs), "--vm", "--", "/run/fcvm/rootfs/bin/true"],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"exec_rtt failed: {out.stderr[-300:]}")
        else:
            rows = [dict(kv.split("=") for kv in l.split()) for l in out.stdout.splitlines()]
            runs = [{k: int(v) for k, v in r.items()} for r in rows if "exit_us" in r]
            par = {k: int(v) for k, v in rows[-1].items()}
            rtt = runs, par
    else:
        print(f"(no {rtt_bin}: cargo build --release -p fcvm --example exec_rtt)")

    print(f"\n--- fcvm exec --vm true, {a.runs} runs ---")
    print(f"CLI round-trip (whole process):     p50 {ms(statistics.median(wall))}  p99 {ms(pct(wall, 99))}")
    print(f"  CLI start → Started seen:         p50 {ms(statistics.median(started))}")
    print(f"in-guest spawn (Started.spawn_us):  p50 {ms(statistics.median(spawn))}  p99 {ms(pct(spawn, 99))}")
    if rtt:
        runs, par = rtt
        st = [r["started_us"] for r in runs]
        ex = [r["exit_us"] for r in runs]
        sp = [r["spawn_us"] for r in runs]
        rn = [r["run_us"] for r in runs]
        chan = [r["started_us"] - r["spawn_us"] for r in runs]
        print(f"in-process Start→Exit:              p50 {ms(statistics.median(ex))}  p99 {ms(pct(ex, 99))}")
        print(f"in-process Start→Started:           p50 {ms(statistics.median(st))}  p99 {ms(pct(st, 99))}")
        print(f"  guest spawn in those runs:        p50 {ms(statistics.median(sp))}  (Start → exec done)")
        print(f"  guest run in those runs:          p50 {ms(statistics.median(rn))}  (Start → reaped, Exit.run_us)")
        c50 = statistics.median(chan)
        print(f"channel round-trip (Started − spawn, via the owner): p50 {ms(c50)}")
        # "The time the guest itself takes to spawn `true`", read two ways: until its exec
        # returned, or until it ran and was reaped (what `time true` in the guest would say).
        for what, g in [("spawn (to exec)", statistics.median(sp)), ("run (to reaped)", statistics.median(rn))]:
            goal = 1.5 * g + c50
            for label, v in [("in-process", statistics.median(ex)), ("CLI", statistics.median(wall))]:
                print(f"goal with guest {what}: {label} round-trip {ms(v)} vs 1.5 × {ms(g)} + channel "
                      f"= {ms(goal)} → {'met' if v <= goal else 'NOT met'} ({v / goal:.2f}×)")
        print(f"in-process 10 parallel: {ms(par['parallel10_us'])} vs one {ms(par['single_us'])} "
              f"= {par['parallel10_us'] / par['single_us']:.1f}× (goal <= 3×)")
    print(f"CLI 10 parallel: {ms(ten_cli)} vs one {ms(one_cli)} = {ten_cli / one_cli:.1f}× (goal <= 3×)")
finally:
    owner.terminate()
    try:
        owner.wait(timeout=60)
    except subprocess.TimeoutExpired:
        owner.kill()
        owner.wait()
