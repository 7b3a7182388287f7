//! Fixtures shared by the integration tests: the fcvm binary under test, one shared data
//! directory (guest assets and images are built once and reused by every test), bounded waits,
//! and checks that a test left no VM, process or file behind.
#![allow(dead_code)]

pub mod registry;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Shared data dir: `FCVM_TEST_DATA_DIR` (scripts/test.sh sets it) or target/fcvm-test-data.
pub fn data_dir() -> PathBuf {
    std::env::var_os("FCVM_TEST_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fcvm-test-data")
        })
}

pub fn fcvm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fcvm"));
    c.env("FCVM_DATA_DIR", data_dir())
        .env("FCVM_QUIET", "1")
        .stdin(Stdio::null());
    c
}

/// A name unique to this test process.
pub fn name(tag: &str) -> String {
    format!("t-{tag}-{}", std::process::id())
}

/// Runs fcvm to completion, failing the test (with its output) if it takes longer than `limit`.
pub fn run(args: &[&str], limit: Duration) -> Output {
    let child = fcvm()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fcvm");
    wait_output(child, limit, args)
}

pub fn wait_output(mut child: Child, limit: Duration, what: &[&str]) -> Output {
    // Read both pipes while waiting: a child whose output outgrows a pipe's buffer would
    // otherwise block on it forever.
    fn drain<R: std::io::Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fcvm {what:?} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.join().unwrap_or_default()),
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs fcvm to completion (bounded by [`BOOT`]): its exit code (-1 for a signal), stdout and
/// stderr.
pub fn run_ok(args: &[&str]) -> (i32, String, String) {
    let out = run(args, BOOT);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `fcvm ls --json` as values.
pub fn ls() -> Vec<serde_json::Value> {
    let out = run(&["ls", "--json"], Duration::from_secs(30));
    assert!(out.status.success(), "ls failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("ls --json parses")
}

pub fn vm(name: &str) -> Option<serde_json::Value> {
    ls().into_iter().find(|v| v["name"] == name)
}

/// Polls until `cond` holds, failing after `limit` with `what`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until VM `name` (started by `child`) is observed running; fails at once, with the
/// child's stderr, if fcvm exits first.
pub fn wait_running(child: &mut Child, name: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(v) = vm(name).filter(|v| v["observed"] == "running") {
            return v;
        }
        if let Some(st) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(e) = child.stderr.as_mut() {
                let _ = std::io::Read::read_to_string(e, &mut err);
            }
            panic!("fcvm for {name} exited ({st}) before its VM ran: {err}");
        }
        assert!(
            start.elapsed() < BOOT,
            "VM {name} not running after {BOOT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether any process has `needle` on its command line (e.g. a VM's directory).
pub fn process_with_arg(needle: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                return Some(pid);
            }
        }
    }
    None
}

/// A VM of this name left nothing: no record, no directory, no VMM process.
pub fn assert_gone(name: &str, id: Option<&str>) {
    assert!(vm(name).is_none(), "VM {name} still listed");
    if let Some(id) = id {
        let dir = data_dir().join("vms").join(id);
        assert!(!dir.exists(), "VM directory {} left behind", dir.display());
        assert_eq!(
            process_with_arg(&dir.display().to_string()),
            None,
            "VMM of {name} still running"
        );
    }
}

pub const BOOT: Duration = Duration::from_secs(300);

/// A VM and the fcvm that owns it; dropping it (a failed check) kills the owner and removes
/// the VM.
pub struct OwnedVm {
    pub name: String,
    pub id: String,
    pub owner: Option<Child>,
}

impl Drop for OwnedVm {
    fn drop(&mut self) {
        if let Some(mut c) = self.owner.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = run(&["rm", "--force", &self.name], Duration::from_secs(60));
            let _ = run(&["rm", &self.name], Duration::from_secs(60));
        }
    }
}

/// A running VM of the built-in busybox (`sleep` as its container), started by `fcvm podman
/// run NAME FLAGS…` and removed on drop.
pub struct Running {
    pub name: String,
    owner: Option<Child>,
}

impl Running {
    pub fn start(tag: &str, flags: &[&str]) -> Running {
        let name = name(tag);
        let mut owner = fcvm()
            .args(["podman", "run", "--name", &name])
            .args(flags)
            .args(["builtin:busybox", "--", "sleep", "100000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn fcvm podman run");
        wait_running(&mut owner, &name);
        Running {
            name,
            owner: Some(owner),
        }
    }

    /// `fcvm exec --name NAME ARGS…`: (code, stdout, stderr).
    pub fn exec(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["exec", "--name", &self.name];
        all.extend_from_slice(args);
        let out = run(&all, Duration::from_secs(120));
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout),
            text(&out.stderr),
        )
    }

    /// `fcvm exec --name NAME -- sh -c CMD`: (code, stdout, stderr).
    pub fn sh(&self, cmd: &str) -> (i32, String, String) {
        self.exec(&["--", "sh", "-c", cmd])
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.owner.take() {
            let _ = run(&["rm", "--force", &self.name], Duration::from_secs(60));
            let _ = c.kill();
            let _ = c.wait();
            let _ = run(&["rm", &self.name], Duration::from_secs(60));
        }
    }
}
