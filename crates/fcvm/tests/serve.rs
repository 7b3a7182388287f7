//! `fcvm serve` driven by the unmodified E2B Python SDK (PyPI `e2b`, pinned to [`SDK`]).
//!
//! The SDK is installed on first use into a venv under the build directory
//! (`target/e2b-venv`, pip from PyPI); no pip means a failed test with a clear message, never a
//! skipped one. One real server (real QEMU VMs, the real agent, `builtin:base`) with an API key;
//! one Python script ([`SCRIPT`]) runs the checks in order and prints `ok <check>` for each:
//! create, `commands.run` stdout/stderr/exit codes, env vars, cwd and user, a background
//! command killed, stdin (sent, streamed, closed), a PTY (echo, resize, exit code), list with a
//! metadata filter, a wrong API key (401), an unknown sandbox
//! (404), an envd call without the sandbox's access token (401), two sandboxes isolated from
//! each other, `set_timeout` expiry, `kill()`. Then SIGTERM stops the server, which must leave
//! no sandbox VM behind. A second test: a non-loopback `--listen` without a key is refused.
//! Others: the pool's hand-over, the `files` calls, watching directories (the async SDK's
//! stream and the sync SDK's polled watcher), envd in the protobuf codec (the SDK's generated
//! clients), `get_metrics()` and E2B's default user.
//! Another ([`PAUSE_SCRIPT`]): pause → resume (files, running commands, their output),
//! autoPause, fork, a snapshot as a template, a paused sandbox killed; no snapshot is left.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "progress and diagnostics"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const SDK: &str = "e2b==2.63.0";
/// The tests that start servers count the `sbx-` VMs: one at a time (the suite runs tests of a
/// file on two threads).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const KEY: &str = "e2b_fcvm_serve_test_key";

/// Where the SDK's venv lives (shared by test runs: pip runs only the first time).
fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/e2b-venv")
}

/// The venv's python, with the pinned SDK importable; installs it when missing.
fn sdk_python() -> PathBuf {
    let dir = venv();
    let python = dir.join("bin/python");
    let version = SDK.split("==").nth(1).expect("pinned");
    let has_sdk = || {
        Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('e2b'))",
            ])
            .output()
            .is_ok_and(|o| o.status.success() && text(&o.stdout).trim() == version)
    };
    if has_sdk() {
        return python;
    }
    eprintln!(
        "serve test: installing the E2B SDK ({SDK}) into {} (first run only)",
        dir.display()
    );
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .expect("python3 is needed for the E2B SDK tests (apt-get install python3-venv)");
    assert!(
        st.success(),
        "python3 -m venv {} failed (apt-get install python3-venv)",
        dir.display()
    );
    let st = Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            SDK,
        ])
        .status()
        .expect("the venv has pip");
    assert!(
        st.success(),
        "pip install {SDK} failed: PyPI must be reachable for the first run"
    );
    assert!(has_sdk(), "{SDK} installed but not importable");
    python
}

/// A running `fcvm serve`; dropping it kills the server (its VMs die with it).
struct Server {
    child: Option<Child>,
    /// Kept open: the server's stdout must not become a broken pipe.
    _stdout: BufReader<std::process::ChildStdout>,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, format!("{KEY}\n")).expect("key file");
        let log = dir.path().join("serve.log");
        let mut child = fcvm()
            .args(["serve", "--listen", "127.0.0.1:0", "--api-key-file"])
            .arg(&key)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn fcvm serve");
        // The server prints its address once it accepts requests (templates built first).
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdout
            .read_line(&mut line)
            .expect("read fcvm serve's stdout");
        let url = match line.trim().strip_prefix("Listening on ") {
            Some(u) => u.to_string(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "fcvm serve did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Server {
            child: Some(child),
            _stdout: stdout,
            url,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a Python script with the SDK pointed at this server; fails the test if it fails.
    fn python(&self, python: &std::path::Path, script: &str) -> String {
        let path = self._dir.path().join("script.py");
        std::fs::write(&path, script).expect("script");
        let py = Command::new(python)
            .arg(&path)
            .env("E2B_API_URL", &self.url)
            .env("E2B_SANDBOX_URL", &self.url)
            .env("E2B_API_KEY", KEY)
            .env_remove("E2B_DEBUG")
            .env_remove("E2B_DOMAIN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the SDK script");
        let out = wait_output(py, Duration::from_secs(600), &["python", "script.py"]);
        assert!(
            out.status.success(),
            "SDK script failed ({})\nstdout:\n{}\nstderr:\n{}\nserver log:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.log()
        );
        text(&out.stdout)
    }

    /// SIGTERM; the server must exit 0 having stopped every sandbox and pooled VM.
    fn terminate(mut self) {
        let left: Vec<(String, String)> = sandbox_vms()
            .into_iter()
            .map(|n| {
                let id = vm(&n).expect("listed")["id"]
                    .as_str()
                    .expect("id")
                    .to_string();
                (n, id)
            })
            .collect();
        let child = self.child.take().expect("server runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let out = wait_output(child, Duration::from_secs(60), &["serve"]);
        assert!(
            out.status.success(),
            "fcvm serve after SIGTERM: {}\n{}",
            out.status,
            self.log()
        );
        for (name, id) in &left {
            assert_gone(name, Some(id));
        }
        assert!(
            sandbox_vms().is_empty(),
            "sandbox VMs left after SIGTERM: {:?}",
            sandbox_vms()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sandbox_vms() -> Vec<String> {
    ls().into_iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("sbx-"))
        .collect()
}

/// What every SDK test starts with: the serve tests run one at a time (each server's
/// sandboxes are checked by name), the SDK's python, and no sandbox VM left by an earlier run.
fn begin() -> (std::sync::MutexGuard<'static, ()>, PathBuf) {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let python = sdk_python();
    assert!(
        sandbox_vms().is_empty(),
        "sandbox VMs left by an earlier run: {:?}",
        sandbox_vms()
    );
    (serial, python)
}

#[test]
fn the_e2b_sdk_drives_fcvm_serve() {
    let (_serial, python) = begin();
    let server = Server::start(&[]);
    let stdout = server.python(&python, SCRIPT);
    assert!(
        stdout.contains("ok all"),
        "SDK checks did not finish:\n{stdout}"
    );
    for check in [
        "create",
        "echo",
        "failure",
        "env-cwd-user",
        "background-kill",
        "stdin",
        "pty",
        "list-metadata",
        "wrong-key",
        "unknown-sandbox",
        "access-token",
        "isolation",
        "timeout",
        "kill",
    ] {
        assert!(
            stdout.contains(&format!("ok {check}\n")),
            "check {check} did not run:\n{stdout}"
        );
    }

    // SIGTERM: every sandbox is stopped, then the server exits 0.
    server.python(&python, LEAVE_RUNNING);
    assert_eq!(
        sandbox_vms().len(),
        1,
        "the sandbox left running is listed by fcvm ls"
    );
    server.terminate();
}

/// `--pool 1`: a VM waits launched and warmed; a create hands it over (the sandbox has its
/// id) and the pool refills; SIGTERM stops the sandbox and the waiting VM alike.
#[test]
fn a_pooled_vm_is_handed_over() {
    let (_serial, python) = begin();
    let server = Server::start(&["--pool", "1"]);
    let running = || {
        ls().into_iter()
            .filter(|v| v["name"].as_str().is_some_and(|n| n.starts_with("sbx-")))
            .filter(|v| v["observed"] == "running")
            .filter_map(|v| v["id"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    wait_for("the pooled VM", BOOT, || running().len() == 1);
    let pooled = running().remove(0);
    let out = server.python(&python, HAND_OVER);
    assert_eq!(out.trim(), pooled, "the sandbox is not the pooled VM");
    wait_for("the pool to refill", BOOT, || running().len() == 2);
    server.terminate();
}

/// `files.*` reach the container's own files (as its commands see them), through agent file
/// requests; a symlink in the container never leads to the VM's files.
#[test]
fn the_sdks_files_api_acts_on_the_containers_files() {
    let (_serial, python) = begin();
    let server = Server::start(&[]);
    let stdout = server.python(&python, FILES_SCRIPT);
    for check in [
        "write-read",
        "large",
        "command-then-read",
        "list-exists-mkdir",
        "rename-remove",
        "missing",
        "user",
        "no-escape",
    ] {
        assert!(
            stdout.contains(&format!("ok {check}\n")),
            "check {check} did not run:\n{stdout}"
        );
    }
    server.terminate();
}

/// The snapshots a server took (`sbx-*` in the data directory's snapshots).
fn sandbox_snapshots() -> Vec<String> {
    std::fs::read_dir(data_dir().join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sbx-"))
        .collect()
}

/// Pause → resume with a file and running commands intact (listed, their output reaching a
/// client that connects, killable), `paused` in lists between; autoPause at the timeout;
/// fork and a snapshot made a template; a paused sandbox killed. Every snapshot is gone once
/// its holders are, and SIGTERM leaves none.
#[test]
fn a_paused_sandbox_resumes_with_its_files_and_processes() {
    let (_serial, python) = begin();
    // A SIGKILLed server of an earlier run may have left some (`fcvm snapshot rm` removes them).
    let before = sandbox_snapshots();
    let new = || {
        let mut v = sandbox_snapshots();
        v.retain(|n| !before.contains(n));
        v
    };
    let server = Server::start(&[]);
    let stdout = server.python(&python, PAUSE_SCRIPT);
    for check in [
        "pause",
        "listed-paused",
        "resume-file",
        "resume-processes",
        "resume-output",
        "resume-output-credit",
        "resume-kill",
        "auto-pause",
        "fork",
        "snapshot-template",
        "kill-paused",
    ] {
        assert!(
            stdout.contains(&format!("ok {check}\n")),
            "check {check} did not run:\n{stdout}"
        );
    }
    // One sandbox is left paused: its snapshot is there until the server stops.
    assert_eq!(new().len(), 1, "the paused sandbox's snapshot: {:?}", new());
    server.terminate();
    assert!(
        new().is_empty(),
        "snapshots left after SIGTERM: {:?}",
        new()
    );
}

/// `--map HOST:GUEST`: every sandbox sees the host directory; a file written on the host is
/// read with `files.read` and `cat`, one written in the sandbox appears on the host, and a
/// resumed sandbox (a restore, served anew) still reads and writes it.
#[test]
fn every_sandbox_sees_the_servers_maps() {
    use std::os::unix::fs::PermissionsExt;
    let share = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(share.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod share");
    std::fs::write(share.path().join("hello.txt"), "from the host\n").expect("host file");
    let map = format!("{}:/mnt/host", share.path().display());
    run_checks(
        MAP_SCRIPT,
        &["--map", &map],
        &["map-read", "map-write", "map-resumed"],
    );
    let read = |f: &str| std::fs::read_to_string(share.path().join(f)).unwrap_or_default();
    assert_eq!(read("from-sandbox.txt"), "from the sandbox\n");
    assert_eq!(read("after-resume.txt"), "resumed\n");
}

const MAP_SCRIPT: &str = r#"
from e2b import Sandbox

def ok(name):
    print("ok", name, flush=True)

sbx = Sandbox.create()
assert sbx.files.read("/mnt/host/hello.txt") == "from the host\n"
assert sbx.commands.run("cat /mnt/host/hello.txt").stdout == "from the host\n"
ok("map-read")
sbx.commands.run("echo 'from the sandbox' > /mnt/host/from-sandbox.txt")
ok("map-write")
assert sbx.pause() is True
again = Sandbox.connect(sbx.sandbox_id)
assert again.commands.run("cat /mnt/host/hello.txt").stdout == "from the host\n"
again.commands.run("echo resumed > /mnt/host/after-resume.txt")
ok("map-resumed")
again.kill()
"#;

#[test]
fn a_public_address_needs_an_api_key() {
    let out = run(&["serve", "--listen", "0.0.0.0:0"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("--api-key-file") && err.lines().count() == 1,
        "{err}"
    );
}

/// The checks, in the SDK's own words. Every failed expectation raises (exit status 1).
const SCRIPT: &str = r#"
import os, time
import httpx
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import AuthenticationException, NotFoundException, SandboxException
from e2b.sandbox.commands.command_handle import CommandExitException, PtySize

def ok(name):
    print("ok", name, flush=True)

sbx = Sandbox.create(metadata={"suite": "serve", "a b": "x&y"}, envs={"SBX": "1"})
info = sbx.get_info()
assert info.metadata == {"suite": "serve", "a b": "x&y"}, info
assert info.template_id == "base" and sbx.is_running()
ok("create")

r = sbx.commands.run("echo hi")
assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "", 0), r
ok("echo")

try:
    sbx.commands.run("echo oops >&2; echo out; exit 3")
    raise AssertionError("a failing command did not raise")
except CommandExitException as e:
    assert (e.exit_code, e.stderr, e.stdout) == (3, "oops\n", "out\n"), e
ok("failure")

r = sbx.commands.run("echo $SBX $FOO; pwd", envs={"FOO": "bar"}, cwd="/tmp")
assert r.stdout == "1 bar\n/tmp\n", r
r = sbx.commands.run("whoami; echo $HOME", user="user")
assert r.stdout.split() == ["user", "/home/user"], r
r = sbx.commands.run("whoami")
assert r.stdout == "user\n", r
ok("env-cwd-user")

h = sbx.commands.run("sleep 1000", background=True)
procs = sbx.commands.list()
assert [(p.pid, p.cmd, p.args) for p in procs] == [(h.pid, "/bin/bash", ["-l", "-c", "sleep 1000"])], procs
assert h.kill()
try:
    h.wait()
    raise AssertionError("a killed command did not raise")
except CommandExitException as e:
    assert e.exit_code == -1, e
assert sbx.commands.list() == []
assert sbx.commands.kill(h.pid) is False
ok("background-kill")

h = sbx.commands.run("cat; echo done", background=True, stdin=True)
sbx.commands.send_stdin(h.pid, "hello stdin\n")
sbx.commands.close_stdin(h.pid)
assert h.wait().stdout == "hello stdin\ndone\n"
h = sbx.commands.run("cat", background=True, stdin=True)
sbx.commands.stream_input(h.pid, ["streamed ", b"input\n"])
sbx.commands.close_stdin(h.pid)
assert h.wait().stdout == "streamed input\n"
ok("stdin")

t = sbx.pty.create(PtySize(rows=30, cols=100))
sbx.pty.send_stdin(t.pid, b"stty size; echo tty-$((6*7))\n")
events, seen = iter(t), b""
while b"tty-42\r\n" not in seen:
    _, _, chunk = next(events)
    seen += chunk or b""
assert b"30 100\r\n" in seen, seen
sbx.pty.resize(t.pid, PtySize(rows=40, cols=120))
sbx.pty.send_stdin(t.pid, b"stty size; exit 5\n")
for _, _, chunk in events:
    seen += chunk or b""
assert b"40 120\r\n" in seen, seen
try:
    t.wait()
    raise AssertionError("exit 5 did not raise")
except CommandExitException as e:
    assert e.exit_code == 5, e
ok("pty")

found = Sandbox.list(query=SandboxQuery(metadata={"a b": "x&y"})).next_items()
assert [s.sandbox_id for s in found] == [sbx.sandbox_id], found
assert found[0].metadata["suite"] == "serve"
assert Sandbox.list(query=SandboxQuery(metadata={"a b": "nope"})).next_items() == []
ok("list-metadata")

for call in (lambda: Sandbox.list(api_key="wrong").next_items(),
             lambda: Sandbox.create(api_key="wrong"),
             lambda: Sandbox.kill(sbx.sandbox_id, api_key="wrong")):
    try:
        call()
        raise AssertionError("a wrong API key was accepted")
    except AuthenticationException:
        pass
assert sbx.is_running()
ok("wrong-key")

try:
    Sandbox.get_info("nosuchsandbox")
    raise AssertionError("an unknown sandbox was found")
except NotFoundException:
    pass
assert Sandbox.kill("nosuchsandbox") is False
r = httpx.post(os.environ["E2B_API_URL"] + "/sandboxes/nosuchsandbox/timeout",
               json={"timeout": 10}, headers={"X-API-Key": os.environ["E2B_API_KEY"]})
assert r.status_code == 404 and r.json()["code"] == 404, r.text
r = httpx.post(os.environ["E2B_API_URL"] + "/v2/sandboxes", content=b"{not json",
               headers={"X-API-Key": os.environ["E2B_API_KEY"], "Content-Type": "application/json"})
assert r.status_code == 400 and r.json()["code"] == 400, r.text
ok("unknown-sandbox")

url = os.environ["E2B_SANDBOX_URL"] + "/process.Process/List"
hdr = {"E2b-Sandbox-Id": sbx.sandbox_id, "Content-Type": "application/json"}
r = httpx.post(url, content=b"{}", headers=hdr)
assert r.status_code == 401 and r.json()["code"] == "unauthenticated", r.text
r = httpx.post(url, content=b"{}", headers={**hdr, "X-Access-Token": sbx._envd_access_token})
assert r.status_code == 200 and r.json() == {"processes": []}, r.text
# The Host form a wildcard DNS proxy in front would use.
base = os.environ["E2B_SANDBOX_URL"]
r = httpx.get(base + "/health", headers={"Host": f"49983-{sbx.sandbox_id}.sandbox.example"})
assert r.status_code == 204, r.text
r = httpx.get(base + "/health", headers={"Host": "49983-nosuchsandbox.sandbox.example"})
assert r.status_code == 502 and "was not found" in r.json()["message"], r.text
doc = httpx.get(base + "/openapi.json").json()
assert "/v2/sandboxes" in doc["paths"], doc
ok("access-token")

other = Sandbox.create(timeout=120)
sbx.commands.run("echo mine > /tmp/f")
r = other.commands.run("cat /tmp/f 2>&1 || echo absent")
assert r.stdout.endswith("absent\n"), r
assert other.commands.run("hostname").stdout != sbx.commands.run("hostname").stdout
ok("isolation")

other.set_timeout(2)
deadline = time.time() + 60
while other.is_running():
    assert time.time() < deadline, "set_timeout(2) did not end the sandbox"
    time.sleep(0.5)
assert other.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()]
try:
    other.commands.run("true")
    raise AssertionError("a command ran in an expired sandbox")
except SandboxException:
    pass
ok("timeout")

sbx.kill()
assert not sbx.is_running()
assert Sandbox.list().next_items() == []
ok("kill")
ok("all")
"#;

/// Takes the pooled VM: prints the sandbox's id after checking it works.
const HAND_OVER: &str = r#"
from e2b import Sandbox
s = Sandbox.create(metadata={"pooled": "yes"}, envs={"P": "1"})
assert s.commands.run("echo hi $P").stdout == "hi 1\n"
assert [x.metadata for x in Sandbox.list().next_items()] == [{"pooled": "yes"}]
print(s.sandbox_id)
"#;

/// Leaves one sandbox running for the server's SIGTERM to stop.
const LEAVE_RUNNING: &str = r#"
from e2b import Sandbox
s = Sandbox.create()
assert s.commands.run("echo up").stdout == "up\n"
"#;

/// The files checks: every call of the SDK's `files` the issue names, against what commands
/// in the same sandbox see.
const FILES_SCRIPT: &str = r#"
from e2b import Sandbox
from e2b.exceptions import NotFoundException, SandboxException
from e2b.sandbox.filesystem.filesystem import FileType

def ok(name):
    print("ok", name, flush=True)

sbx = Sandbox.create()
info = sbx.files.write("/tmp/dir/hello.txt", "hello files\n")
assert (info.path, info.name) == ("/tmp/dir/hello.txt", "hello.txt"), info
assert sbx.files.read("/tmp/dir/hello.txt") == "hello files\n"
r = sbx.commands.run("cat /tmp/dir/hello.txt")
assert r.stdout == "hello files\n", r
ok("write-read")

big = bytes(range(256)) * 1000
sbx.files.write("/tmp/big.bin", big)
assert sbx.files.read("/tmp/big.bin", format="bytes") == big
r = sbx.commands.run("wc -c < /tmp/big.bin")
assert r.stdout.strip() == str(len(big)), r
ok("large")

sbx.commands.run("echo from-a-command > /tmp/dir/cmd.txt")
assert sbx.files.read("/tmp/dir/cmd.txt") == "from-a-command\n"
ok("command-then-read")

assert sbx.files.exists("/tmp/dir/hello.txt")
assert not sbx.files.exists("/tmp/nope")
assert sbx.files.make_dir("/tmp/dir/sub/deeper")
assert not sbx.files.make_dir("/tmp/dir/sub")
names = sorted(e.name for e in sbx.files.list("/tmp/dir"))
assert names == ["cmd.txt", "hello.txt", "sub"], names
deep = sorted(e.path for e in sbx.files.list("/tmp/dir", depth=2))
assert deep == ["/tmp/dir/cmd.txt", "/tmp/dir/hello.txt", "/tmp/dir/sub", "/tmp/dir/sub/deeper"], deep
e = sbx.files.get_info("/tmp/dir/hello.txt")
assert (e.type, e.size, e.permissions) == (FileType.FILE, 12, "-rw-r--r--"), e
assert sbx.files.get_info("/tmp/dir/sub").type == FileType.DIR
ok("list-exists-mkdir")

moved = sbx.files.rename("/tmp/dir/hello.txt", "/tmp/dir/sub/moved.txt")
assert moved.path == "/tmp/dir/sub/moved.txt", moved
assert not sbx.files.exists("/tmp/dir/hello.txt")
assert sbx.commands.run("cat /tmp/dir/sub/moved.txt").stdout == "hello files\n"
sbx.files.remove("/tmp/dir")
assert not sbx.files.exists("/tmp/dir")
assert sbx.commands.run("test -e /tmp/dir || echo gone").stdout == "gone\n"
ok("rename-remove")

try:
    sbx.files.read("/tmp/nope")
    raise AssertionError("reading a missing file did not raise")
except NotFoundException:
    pass
ok("missing")

sbx.files.write("/home/user/mine.txt", "u", user="user")
r = sbx.commands.run("stat -c %U /home/user/mine.txt")
assert r.stdout.strip() == "user", r
try:
    sbx.files.write("/etc/forbidden", "x", user="user")
    raise AssertionError("user wrote into root's /etc")
except SandboxException:
    pass
assert not sbx.files.exists("/etc/forbidden")
ok("user")

# /run/fcvm is the agent's (the VM's), not the container's: no link in the container leads there.
sbx.commands.run("ln -s /run/fcvm/bundle/config.json /tmp/abs; ln -s ../../../../run/fcvm/bundle/config.json /tmp/climb; ln -s /proc/1/root/run/fcvm/bundle/config.json /tmp/magic")
for link in ["/tmp/abs", "/tmp/climb", "/tmp/magic"]:
    try:
        data = sbx.files.read(link)
        raise AssertionError(f"{link} leaked {data[:80]!r}")
    except SandboxException:
        pass
ok("no-escape")
sbx.kill()
"#;

/// Starts a server, runs `script` with the SDK, checks each `ok <check>` line, stops it.
fn run_checks(script: &str, extra: &[&str], checks: &[&str]) {
    let (_serial, python) = begin();
    let server = Server::start(extra);
    let stdout = server.python(&python, script);
    for check in checks {
        assert!(
            stdout.contains(&format!("ok {check}\n")),
            "check {check} did not run:\n{stdout}"
        );
    }
    server.terminate();
}

/// `files.watch_dir`: the async SDK's stream (`WatchDir`) sees a file created, written and
/// removed; a recursive watch sees a directory created under it and a file in that; the sync
/// SDK's polled watcher (`CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`) sees them too.
#[test]
fn the_sdk_watches_directories() {
    run_checks(
        WATCH_SCRIPT,
        &[],
        &["watch-dir", "watch-recursive", "watcher-poll", "watch-ends"],
    );
}

/// envd's calls in the protobuf codec (`application/proto`, `application/connect+proto`),
/// through the SDK's own generated Connect clients with their default codec.
#[test]
fn envd_speaks_the_proto_codec() {
    run_checks(
        PROTO_SCRIPT,
        &[],
        &["proto-start", "proto-unary", "proto-watch"],
    );
}

/// `get_metrics()` reports the VM's own figures; a command and a file call without a user run
/// as E2B's `user` in `/home/user`, as in E2B; in an image without that account (busybox),
/// as the image's user (root).
#[test]
fn metrics_and_e2b_defaults() {
    run_checks(
        DEFAULTS_SCRIPT,
        &["--template", "plain=builtin:busybox"],
        &["metrics", "default-user", "image-user"],
    );
}

const WATCH_SCRIPT: &str = r#"
import asyncio, time
from e2b import AsyncSandbox, Sandbox
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType as T
from e2b.exceptions import NotFoundException, SandboxException

def ok(name):
    print("ok", name, flush=True)

async def until(seen, want, what):
    deadline = time.time() + 60
    while not want <= set(seen):
        assert time.time() < deadline, f"{what}: {want - set(seen)} missing from {seen}"
        await asyncio.sleep(0.2)

async def main():
    sbx = await AsyncSandbox.create()
    await sbx.files.make_dir("/tmp/w")
    seen = []
    h = await sbx.files.watch_dir("/tmp/w", lambda e: seen.append((e.name, e.type)))
    await sbx.files.write("/tmp/w/a.txt", "hello")
    await sbx.commands.run("rm /tmp/w/a.txt")
    await until(seen, {("a.txt", T.CREATE), ("a.txt", T.WRITE), ("a.txt", T.REMOVE)}, "watch")
    await h.stop()
    ok("watch-dir")

    seen = []
    h = await sbx.files.watch_dir("/tmp/w", lambda e: seen.append((e.name, e.type)), recursive=True)
    await sbx.commands.run("mkdir -p /tmp/w/sub")
    await until(seen, {("sub", T.CREATE)}, "recursive")
    await sbx.files.write("/tmp/w/sub/deep.txt", "x")
    await until(seen, {("sub/deep.txt", T.CREATE)}, "recursive")
    await h.stop()
    ok("watch-recursive")
    await sbx.kill()

asyncio.run(main())

sbx = Sandbox.create()
sbx.files.make_dir("/tmp/p")
h = sbx.files.watch_dir("/tmp/p")
sbx.files.write("/tmp/p/f", "1")
sbx.commands.run("chmod 600 /tmp/p/f; mv /tmp/p/f /tmp/p/g")
seen, deadline = [], time.time() + 60
want = {("f", T.CREATE), ("f", T.CHMOD), ("f", T.RENAME), ("g", T.CREATE)}
while not want <= set(seen):
    assert time.time() < deadline, f"{want - set(seen)} missing from {seen}"
    seen += [(e.name, e.type) for e in h.get_new_events()]
    time.sleep(0.2)
assert h.get_new_events() == []
ok("watcher-poll")
h.stop()
try:
    h.get_new_events()
    raise AssertionError("a stopped watcher gave events")
except SandboxException:
    pass
try:
    sbx.files.watch_dir("/tmp/p/g")
    raise AssertionError("watched a file")
except SandboxException:
    pass

# More unread events than a watcher holds (256 KiB): it ends, and says so.
h = sbx.files.watch_dir("/tmp/p")
sbx.commands.run("cd /tmp/p && for i in $(seq 1500); do printf '%0200d\\n' $i; done | xargs touch")
deadline = time.time() + 60
try:
    while True:  # the agent may still be reading the kernel's queue
        assert time.time() < deadline, "the watcher did not overflow"
        h.get_new_events()
        time.sleep(0.2)
except SandboxException as e:
    assert "events were dropped" in str(e), e
try:
    h.get_new_events()
    raise AssertionError("an overflowed watcher lived on")
except NotFoundException:
    pass
sbx.kill()
ok("watch-ends")
"#;

const PROTO_SCRIPT: &str = r#"
import os, threading
import httpx
from e2b import Sandbox
from e2b.envd.client_shared import ENVD_RPC_COMPRESSION
from e2b.envd.process import process_connect, process_pb as p
from e2b.envd.filesystem import filesystem_connect, filesystem_pb as f
from protobuf import Oneof

def ok(name):
    print("ok", name, flush=True)

sbx = Sandbox.create()
url = os.environ["E2B_SANDBOX_URL"]
hdr = {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": sbx._envd_access_token}
procs = process_connect.ProcessClientSync(url, **ENVD_RPC_COMPRESSION)
files = filesystem_connect.FilesystemClientSync(url, **ENVD_RPC_COMPRESSION)

req = p.StartRequest(process=p.ProcessConfig(cmd="/bin/bash", args=["-l", "-c", "echo proto; exit 7"]), stdin=False)
out, code = b"", None
for r in procs.start(req, headers=hdr):
    match r.event.event:
        case Oneof(field="data", value=d):
            out += d.output.value
        case Oneof(field="end", value=e):
            code = e.exit_code
assert (out, code) == (b"proto\n", 7), (out, code)
ok("proto-start")

sbx.files.write("/tmp/proto.txt", "abc")
e = files.stat(f.StatRequest(path="/tmp/proto.txt"), headers=hdr).entry
assert (e.name, e.size, e.type, e.path) == ("proto.txt", 3, f.FileType.FILE, "/tmp/proto.txt"), e
assert e.modified_time.seconds > 1_600_000_000, e
# The same call by hand: the proto content type both ways.
r = httpx.post(url + "/filesystem.Filesystem/Stat", content=f.StatRequest(path="/tmp/proto.txt").to_binary(),
               headers={**hdr, "Content-Type": "application/proto"})
assert r.status_code == 200 and r.headers["content-type"] == "application/proto", r
assert f.StatResponse.from_binary(r.content).entry.size == 3
assert procs.list(p.ListRequest(), headers=hdr).processes == []
names = [x.name for x in files.list_dir(f.ListDirRequest(path="/tmp", depth=1), headers=hdr).entries]
assert "proto.txt" in names, names
files.remove(f.RemoveRequest(path="/tmp/proto.txt"), headers=hdr)
assert not sbx.files.exists("/tmp/proto.txt")
ok("proto-unary")

w = files.create_watcher(f.CreateWatcherRequest(path="/tmp"), headers=hdr).watcher_id
sbx.files.write("/tmp/seen", "x")
events = []
for _ in range(100):
    events += files.get_watcher_events(f.GetWatcherEventsRequest(watcher_id=w), headers=hdr).events
    if any(ev.name == "seen" and ev.type == f.EventType.CREATE for ev in events):
        break
else:
    raise AssertionError(f"no create event: {events}")
files.remove_watcher(f.RemoveWatcherRequest(watcher_id=w), headers=hdr)
stream = files.watch_dir(f.WatchDirRequest(path="/tmp"), headers=hdr)
first = next(stream)
assert first.event.field == "start", first
threading.Timer(0.5, lambda: sbx.files.write("/tmp/streamed", "y")).start()
for r in stream:
    if r.event.field == "filesystem" and r.event.value.name == "streamed":
        break
stream.close()
ok("proto-watch")
sbx.kill()
"#;

const DEFAULTS_SCRIPT: &str = r#"
from e2b import Sandbox

def ok(name):
    print("ok", name, flush=True)

sbx = Sandbox.create()
m = sbx.get_metrics()
assert len(m) == 1, m
m = m[0]
assert m.cpu_count >= 1 and 0 <= m.cpu_used_pct <= 100, m
assert 0 < m.mem_used < m.mem_total <= 64 << 30, m
assert 0 < m.disk_used <= m.disk_total, m
ok("metrics")

r = sbx.commands.run("whoami; pwd; echo $HOME")
assert r.stdout.split() == ["user", "/home/user", "/home/user"], r
assert sbx.commands.run("whoami", user="root").stdout == "root\n"
info = sbx.files.write("notes.txt", "mine")
assert info.path == "/home/user/notes.txt", info
assert sbx.commands.run("stat -c %U notes.txt").stdout == "user\n"
assert sbx.files.get_info("/home/user/notes.txt").owner == "user"
ok("default-user")
sbx.kill()

# No `user` in the image: the image's user (root) and directory. The SDK runs /bin/bash, which
# busybox lacks: the call goes through its generated client instead.
import os
from e2b.envd.client_shared import ENVD_RPC_COMPRESSION
from e2b.envd.process import process_connect, process_pb as p
from protobuf import Oneof
plain = Sandbox.create(template="plain")
procs = process_connect.ProcessClientSync(os.environ["E2B_SANDBOX_URL"], **ENVD_RPC_COMPRESSION)
hdr = {"E2b-Sandbox-Id": plain.sandbox_id, "X-Access-Token": plain._envd_access_token}
req = p.StartRequest(process=p.ProcessConfig(cmd="/bin/sh", args=["-c", "id -un; pwd"]), stdin=False)
out = b""
for r in procs.start(req, headers=hdr):
    if r.event.event.field == "data":
        out += r.event.event.value.output.value
assert out == b"root\n/\n", out
plain.files.write("/tmp/x", "y")
assert plain.files.get_info("/tmp/x").owner == "root"
plain.kill()
ok("image-user")
"#;

const PAUSE_SCRIPT: &str = r#"
import time
from e2b import Sandbox, SandboxQuery, SandboxState

def ok(name):
    print("ok", name, flush=True)

def ids(state):
    p = Sandbox.list(query=SandboxQuery(state=[state]))
    return sorted(s.sandbox_id for s in p.next_items())

def until(what, cond, limit=120):
    end = time.time() + limit
    while not cond():
        assert time.time() < end, what
        time.sleep(0.2)

sbx = Sandbox.create(metadata={"suite": "pause"})
sid = sbx.sandbox_id
sbx.files.write("/home/user/kept.txt", "before pause")
sleeper = sbx.commands.run("sleep 1000", background=True)
loop = sbx.commands.run(
    "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo tick $i; sleep 0.2; done",
    background=True)
big = sbx.commands.run(
    "while [ ! -e /tmp/go ]; do sleep 0.1; done; head -c 1500000 /dev/zero | tr -c x x; echo done",
    background=True)
until("the loop counts", lambda: sbx.files.exists("/tmp/count"))
assert sbx.pause() is True
ok("pause")

assert ids(SandboxState.PAUSED) == [sid], ids(SandboxState.PAUSED)
assert sid not in ids(SandboxState.RUNNING)
assert Sandbox.get_info(sid).state == SandboxState.PAUSED
assert sbx.pause() is False, "a second pause is E2B's 409"
assert not sbx.is_running()
ok("listed-paused")

again = Sandbox.connect(sid)
assert again.sandbox_id == sid and again.is_running()
assert Sandbox.get_info(sid).state == SandboxState.RUNNING
assert again.files.read("/home/user/kept.txt") == "before pause"
ok("resume-file")

pids = sorted(p.pid for p in again.commands.list())
assert pids == sorted([sleeper.pid, loop.pid, big.pid]), pids
count = lambda: int(again.files.read("/tmp/count").strip() or 0)
c1 = count()
until("the loop counts on", lambda: count() > c1 + 2)
ok("resume-processes")

h = again.commands.connect(loop.pid)
for out, err, pty in h:
    if out and "tick" in out:
        break
ok("resume-output")

# More output than one credit's worth: the kept stream's credit runs on after the restore.
bh = again.commands.connect(big.pid)
again.files.write("/tmp/go", "")
r = bh.wait()
assert r.stdout == "x" * 1500000 + "done\n", (len(r.stdout), r.stdout[-20:])
ok("resume-output-credit")

assert again.commands.kill(sleeper.pid)
assert again.commands.kill(loop.pid)
until("the killed commands leave the list", lambda: again.commands.list() == [])
r = again.commands.run("echo after")
assert r.stdout == "after\n", r
ok("resume-kill")

auto = Sandbox.create(timeout=5, lifecycle={"on_timeout": "pause"})
auto.files.write("/home/user/auto.txt", "auto")
assert auto.get_info().lifecycle["on_timeout"] == "pause", auto.get_info().lifecycle
until("the timeout pauses it", lambda: Sandbox.get_info(auto.sandbox_id).state == SandboxState.PAUSED)
auto = Sandbox.connect(auto.sandbox_id, timeout=60)
assert auto.files.read("/home/user/auto.txt") == "auto"
auto.kill()
ok("auto-pause")

again.commands.run("hostname > /home/user/host")
forks = again.fork(count=1, timeout=60)
assert len(forks) == 1 and isinstance(forks[0], Sandbox), forks
fork = forks[0]
assert fork.sandbox_id != sid
assert fork.files.read("/home/user/kept.txt") == "before pause"
assert fork.commands.run("hostname").stdout != again.commands.run("hostname").stdout
assert again.is_running(), "the source runs on"
fork.kill()
ok("fork")

snap = again.create_snapshot()
made = Sandbox.create(snap.snapshot_id)
assert made.sandbox_id != sid
assert made.files.read("/home/user/kept.txt") == "before pause"
made.kill()
listed = [x.snapshot_id for x in again.list_snapshots().next_items()]
assert listed == [snap.snapshot_id], listed
assert Sandbox.delete_snapshot(snap.snapshot_id)
assert not Sandbox.delete_snapshot(snap.snapshot_id)
ok("snapshot-template")

assert again.pause()
assert Sandbox.kill(sid)
assert sid not in ids(SandboxState.PAUSED)
ok("kill-paused")

left = Sandbox.create()
left.files.write("/home/user/left.txt", "x")
assert left.pause()
"#;
