#!/usr/bin/env python3
"""Benchmark: VM networking through `--publish`, next to the same server on the host.

usage: bench/network.py [--backends slirp,passt,bridged] [--requests 300] [--mib 32]
(build first: `. scripts/lib.sh; build_all release`). Loopback traffic only. Prints figures;
never asserts.

For each backend — rootless slirp (the default), rootless passt (FCVM_ROOTLESS_BACKEND=passt),
and `--network bridged` when run as root —
one VM runs busybox httpd (port 80) and two `nc -ll` servers (5001 sinks, 5002 sources), published
on 127.0.0.1. Measured from the host:
- HTTP requests/s: `--requests` sequential HTTP/1.0 GETs of a 6-byte file, one connection each;
- latency of one request (median);
- TCP throughput host→guest (send --mib MiB to the sink) and guest→host (read --mib MiB
  from the source), MiB/s.
The baseline is the same busybox httpd on the host's loopback, and a Python sink/source.
"""
import argparse, os, threading, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--backends", default="slirp,passt" + (",bridged" if os.geteuid() == 0 else ""))
ap.add_argument("--requests", type=int, default=300)
ap.add_argument("--mib", type=int, default=32)
a = ap.parse_args()

fcvm = os.path.join(ROOT, "target/release/fcvm")
env = dict(os.environ, FCVM_QUIET="1")
env.setdefault("FCVM_AGENT", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/agent/fc-agent"))
BUSYBOX = shutil.which("busybox")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(port, timeout=10.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            data += b
    return data


def wait_http(port, limit=300):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            if b"hello" in get(port, 2):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no HTTP answer on port {port} after {limit}s")


def http_rate(port, n):
    lat = []
    t0 = time.monotonic()
    for _ in range(n):
        t = time.monotonic()
        r = get(port)
        assert b"hello" in r, r
        lat.append(time.monotonic() - t)
    return n / (time.monotonic() - t0), statistics.median(lat) * 1000


def send_rate(port, mib):
    buf = b"\0" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=120) as c:
        t0 = time.monotonic()
        for _ in range(mib):
            c.sendall(buf)
        c.shutdown(socket.SHUT_WR)
        c.settimeout(120)
        while c.recv(65536):  # the sink closes after EOF: everything was delivered
            pass
        return mib / (time.monotonic() - t0)


def recv_rate(port, mib):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        t0 = time.monotonic()
        n = 0
        while n < mib << 20:
            b = c.recv(1 << 20)
            if not b:
                break
            n += len(b)
        return (n / (1 << 20)) / (time.monotonic() - t0)


def attempt(f, *args):
    try:
        return f(*args)
    except OSError as e:  # a stalled or reset transfer is a figure too (passt: docs in network/mod.rs)
        print(f"  ({f.__name__} failed: {e!r})", flush=True)
        return float("nan")


def measure(label, http_port, sink, source):
    rps, lat = http_rate(http_port, a.requests)
    up = attempt(send_rate, sink, a.mib)
    down = attempt(recv_rate, source, a.mib)
    print(f"{label:<28} {rps:7.1f} req/s {lat:7.2f} ms/req   to server {up:7.1f} MiB/s"
          f"   from server {down:7.1f} MiB/s", flush=True)


SERVERS = ("echo hello > /tmp/index.html; httpd -p {h} -h /tmp; "
           "printf '#!/bin/sh\\nexec cat > /dev/null\\n' > /tmp/sink; "
           "printf '#!/bin/sh\\nexec dd if=/dev/zero bs=65536 count={n} 2>/dev/null\\n' > /tmp/src; "
           "chmod +x /tmp/sink /tmp/src; nc -ll -p {s} -e /tmp/sink & nc -ll -p {o} -e /tmp/src & ")

print(f"{a.requests} sequential HTTP/1.0 requests; {a.mib} MiB per throughput run; loopback only")
# Baseline: busybox httpd on the host's loopback; sink/source in threads here (busybox nc
# cannot bind to 127.0.0.1 only).
def serve(kind, port, mib):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", port))
    l.listen(4)
    def loop():
        while True:
            c, _ = l.accept()
            if kind == "sink":
                while c.recv(1 << 20):
                    pass
            else:
                buf = b"\0" * (1 << 20)
                for _ in range(mib):
                    c.sendall(buf)
            c.close()
    threading.Thread(target=loop, daemon=True).start()


if BUSYBOX:
    h, s, o = free_port(), free_port(), free_port()
    d = tempfile.mkdtemp()
    open(os.path.join(d, "index.html"), "w").write("hello\n")
    host = subprocess.Popen([BUSYBOX, "httpd", "-f", "-p", f"127.0.0.1:{h}", "-h", d])
    serve("sink", s, a.mib)
    serve("source", o, a.mib)
    try:
        wait_http(h, 10)
        measure("host (loopback)", h, s, o)
    finally:
        host.kill()
        shutil.rmtree(d, ignore_errors=True)

for backend in a.backends.split(","):
    h, s, o = free_port(), free_port(), free_port()
    e = dict(env, FCVM_ROOTLESS_BACKEND=backend)
    mode = ["--network", "bridged"] if backend == "bridged" else []
    cmd = [fcvm, "podman", "run", "--name", f"bench-net-{os.getpid()}-{backend}", *mode,
           "-p", f"127.0.0.1:{h}:80,127.0.0.1:{s}:5001", "-p", f"127.0.0.1:{o}:5002",
           "builtin:busybox", "--", "sh", "-c",
           SERVERS.format(h=80, s=5001, o=5002, n=a.mib * 16) + "exec sleep 100000"]
    vm = subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        wait_http(h)
        print(f"# {backend}: first HTTP answer {time.monotonic() - t0:.1f} s after `fcvm podman run`")
        measure(f"fcvm --publish ({backend})", h, s, o)
    finally:
        vm.terminate()
        vm.wait(60)
