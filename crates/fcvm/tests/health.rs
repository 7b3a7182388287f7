//! The health monitor end to end, with real QEMU VMs running the built-in busybox image.
//!
//! Plan: each test starts a long-running container with a health check, polls
//! `fcvm ls --json` (bounded) for the health it must reach, checks that `fcvm ls` shows it in
//! its HEALTH column, then stops fcvm with SIGTERM and asserts nothing is left behind:
//! - `--health-check http://localhost:8080/` against busybox httpd serving an index → healthy
//!   (the GET is made by the agent inside the VM);
//! - `--health-cmd false --health-retries 2 --health-interval 1s` → unhealthy;
//! - `--health-cmd 'test -e /tmp/ready'` → starting, and after `fcvm exec … touch /tmp/ready`
//!   → healthy;
//! - an image whose config has a HEALTHCHECK (the built-in busybox layout with one added):
//!   `CMD-SHELL test -e /tmp/ready`, interval 1s → starting, then healthy after the touch;
//!   `--health-cmd none` disables it (no health);
//! - a container without a check has no health at all (podman's behaviour);
//! - bad health flags exit 125 with one line and start no VM.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "figures and diagnostics"
)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

const IMG: &str = "builtin:busybox";
/// Bound for a health state to be reached once the VM runs (TCG: an exec takes ~1 s).
const HEALTH_WAIT: Duration = Duration::from_secs(90);

/// A running `fcvm podman run`; dropping it (a failed assertion) still stops the VM.
struct Running {
    child: Option<Child>,
    name: String,
    id: String,
}

impl Running {
    /// SIGTERM to fcvm (it stops the VM); asserts it exits on its own and leaves nothing.
    fn stop(mut self) {
        let child = self.child.take().expect("running");
        terminate(&child);
        let out = wait_output(child, Duration::from_secs(60), &["run", &self.name]);
        assert!(
            out.status.code().is_some(),
            "fcvm ended by a signal: {:?}",
            out.status
        );
        assert_gone(&self.name, Some(&self.id));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let _ = child.wait();
        }
    }
}

fn terminate(child: &Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

fn start(name: &str, flags: &[&str], cmd: &[&str]) -> Running {
    start_image(name, flags, IMG, cmd)
}

fn start_image(name: &str, flags: &[&str], image: &str, cmd: &[&str]) -> Running {
    let mut args = vec!["podman", "run", "--name", name];
    args.extend_from_slice(flags);
    args.push(image);
    args.push("--");
    args.extend_from_slice(cmd);
    let mut child = fcvm()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fcvm");
    let id = wait_running(&mut child, name)["id"]
        .as_str()
        .expect("id")
        .to_string();
    Running {
        child: Some(child),
        name: name.into(),
        id,
    }
}

fn health(name: &str) -> serde_json::Value {
    vm(name).map(|v| v["health"].clone()).unwrap_or_default()
}

/// Waits for `want`, failing with the states seen on the way.
fn wait_health(name: &str, want: &str) -> Duration {
    let t0 = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    loop {
        let h = health(name).to_string();
        if seen.last() != Some(&h) {
            seen.push(h.clone());
        }
        if h == format!("\"{want}\"") {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < HEALTH_WAIT,
            "{name}: not {want} after {HEALTH_WAIT:?}; health seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The HEALTH column of `fcvm ls` for `name`.
fn ls_text_health(name: &str) -> String {
    let out = run(&["ls"], Duration::from_secs(30));
    let text = text(&out.stdout);
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let col = header
        .iter()
        .position(|h| *h == "HEALTH")
        .unwrap_or_else(|| panic!("no HEALTH column:\n{text}"));
    let row: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|r| r.first() == Some(&name))
        .unwrap_or_else(|| panic!("{name} not in `fcvm ls`:\n{text}"));
    row[col].to_string()
}

#[test]
fn http_check_against_httpd_becomes_healthy() {
    let n = name("hhttp");
    let vm = start(
        &n,
        &["--health-check", "http://localhost:8080/"],
        &[
            "sh",
            "-c",
            "echo ok > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
        ],
    );
    let took = wait_health(&n, "healthy");
    eprintln!("{n}: healthy {took:?} after running");
    assert_eq!(ls_text_health(&n), "healthy");
    vm.stop();
}

#[test]
fn failing_command_becomes_unhealthy_after_retries() {
    let n = name("hfail");
    let vm = start(
        &n,
        &[
            "--health-cmd",
            "false",
            "--health-retries",
            "2",
            "--health-interval",
            "1s",
        ],
        &["sleep", "1000"],
    );
    let took = wait_health(&n, "unhealthy");
    eprintln!("{n}: unhealthy {took:?} after running");
    assert_eq!(ls_text_health(&n), "unhealthy");
    // It stays unhealthy (the check keeps failing).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(health(&n), "unhealthy");
    vm.stop();
}

#[test]
fn command_check_is_starting_until_it_passes() {
    let n = name("hcmd");
    let vm = start(
        &n,
        &["--health-cmd", "test -e /tmp/ready"],
        &["sleep", "1000"],
    );
    // Reported as soon as the container runs; the default 30 s × 3 retries keep it starting.
    wait_health(&n, "starting");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(health(&n), "starting");
    assert_eq!(ls_text_health(&n), "starting");
    let out = run(
        &["exec", "--name", &n, "--", "touch", "/tmp/ready"],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    let took = wait_health(&n, "healthy");
    eprintln!("{n}: healthy {took:?} after /tmp/ready");
    // Starting probes are frequent (at most 1 s apart), not the 30 s interval.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    vm.stop();
}

/// The built-in busybox OCI layout copied to `dir` with `healthcheck` added to its config (the
/// same layer): an image with a HEALTHCHECK that needs no registry. Returns its reference.
fn busybox_with_healthcheck(dir: &Path, healthcheck: serde_json::Value) -> String {
    use sha2::Digest;
    let dirs = fcvm::paths::Dirs::new(data_dir());
    let src = fcvm::image::ensure_builtin_busybox(&dirs).expect("builtin busybox layout");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for e in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), blobs.join(e.file_name())).unwrap();
    }
    std::fs::copy(src.join("oci-layout"), dir.join("oci-layout")).unwrap();
    let read = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(blobs.join(hex)).unwrap()).unwrap()
    };
    let write = |v: &serde_json::Value| -> (String, usize) {
        let bytes = serde_json::to_vec(v).unwrap();
        let hex = hex::encode(sha2::Sha256::digest(&bytes));
        std::fs::write(blobs.join(&hex), &bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    config["config"]["Healthcheck"] = healthcheck;
    let (digest, size) = write(&config);
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = write(&manifest);
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    format!("oci:{}:latest", dir.display())
}

#[test]
fn image_healthcheck_runs_unless_disabled() {
    let t = tempfile::tempdir().unwrap();
    let img = busybox_with_healthcheck(
        t.path(),
        serde_json::json!({"Test": ["CMD-SHELL", "test -e /tmp/ready"],
                           "Interval": 1_000_000_000u64, "Retries": 100}),
    );
    let n = name("himg");
    let vm = start_image(&n, &[], &img, &["sleep", "1000"]);
    wait_health(&n, "starting");
    // Its check fails every second (retries 100): starting for a while. (Also gives crun time
    // to create the container: an exec that races its start fails.)
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(health(&n), "starting");
    let out = run(
        &["exec", "--name", &n, "--", "touch", "/tmp/ready"],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    wait_health(&n, "healthy");
    vm.stop();

    let n = name("himgoff");
    let vm = start_image(&n, &["--health-cmd", "none"], &img, &["sleep", "1000"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(health(&n).is_null(), "{:?}", health(&n));
    vm.stop();
}

#[test]
fn no_check_means_no_health() {
    let n = name("hnone");
    let vm = start(&n, &[], &["sleep", "1000"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(health(&n).is_null(), "{:?}", health(&n));
    assert_eq!(ls_text_health(&n), "-");
    vm.stop();
}

#[test]
fn bad_health_flags_exit_125_before_any_vm() {
    for (flags, want) in [
        (
            &["--health-check", "https://localhost/"][..],
            "--health-check",
        ),
        (&["--health-interval", "5x"], "--health-interval"),
        (&["--health-timeout", "0"], "--health-timeout"),
        (&["--health-retries", "0"], "--health-retries"),
        (&["--health-cmd", ""], "--health-cmd"),
    ] {
        let n = name("hbad");
        let mut args = vec!["podman", "run", "--name", &n];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMG, "true"]);
        let out = run(&args, Duration::from_secs(30));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{flags:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{flags:?}: {err}");
        assert!(err.contains(want), "{flags:?}: {err}");
        assert_gone(&n, None);
    }
}
