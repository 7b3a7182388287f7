//! Backpressure end to end: a reader that stops reading slows its own stream, never the VM's
//! owner (its memory, its other execs, its signals).
//!
//! Plan (real VMs, the real agent):
//! 1. `fcvm exec NAME -- cat /dev/zero` whose stdout is a pipe nobody reads, for ~20 s: the
//!    owner's RSS (VmRSS of the pid `fcvm ls --json` gives) stays under 64 MiB, and
//!    `fcvm exec NAME -- echo ok` answers meanwhile, again and again. Then a stalled reader
//!    that starts reading gets every byte: credit flows again after a stall.
//! 2. `fcvm podman run … -- sh -c 'cat /dev/zero'` with stdout a pipe nobody reads: `fcvm
//!    exec` still works, and SIGTERM to the owner ends it and its QEMU; nothing is left.
//! 3. A run at debug level whose stderr is a full pipe nobody reads still runs and exits:
//!    fcvm's own log lines go through a bounded, lossy queue.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "figures and diagnostics"
)]

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

const IMG: &str = "builtin:busybox";
const LIMIT: Duration = Duration::from_secs(120);
/// The owner's resident memory must stay under this while a reader stalls.
const RSS_MAX_KIB: u64 = 64 * 1024;

/// A running VM; dropping it (a failed check) kills its owner and removes it.
use common::OwnedVm as Vm;

impl Vm {
    /// Boots `IMG -- cmd…` with the owner's stdout as given and its stderr in a file.
    fn boot(tag: &str, cmd: &[&str], stdout: Stdio) -> Vm {
        let name = name(tag);
        let err = tempfile::tempfile().unwrap();
        let mut owner = fcvm()
            .args(["podman", "run", "--name", &name, IMG, "--"])
            .args(cmd)
            .stdout(stdout)
            .stderr(err)
            .spawn()
            .unwrap();
        let v = wait_running(&mut owner, &name);
        Vm {
            id: v["id"].as_str().unwrap().to_string(),
            name,
            owner: Some(owner),
        }
    }

    fn owner_pid(&self) -> u32 {
        let v = vm(&self.name).expect("VM listed");
        v["pid"].as_u64().expect("pid in ls --json") as u32
    }

    /// `fcvm exec NAME -- echo ok` answers.
    fn echo_ok(&self) {
        let out = run(&["exec", "--name", &self.name, "--", "echo", "ok"], LIMIT);
        assert_eq!(
            (out.status.code(), text(&out.stdout).as_str()),
            (Some(0), "ok\n"),
            "stderr: {}",
            text(&out.stderr)
        );
    }
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("owner alive");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Bytes waiting in a pipe (whose read end we hold).
fn unread(fd: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer we pass.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(r, 0, "FIONREAD");
    n as usize
}

/// Waits until the pipe of `what` is full: its writer is stalled from then on.
fn wait_full(what: &str, fd: &impl AsRawFd) {
    wait_for(&format!("the pipe of {what} to fill"), LIMIT, || {
        unread(fd) >= 64 * 1024
    });
}

/// `fcvm exec NAME -- ARGS…` with stdout a pipe the caller holds (and may never read).
fn exec_piped(name: &str, args: &[&str]) -> Child {
    fcvm()
        .args(["exec", "--name", name, "--"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_stalled_exec_reader_holds_no_memory_and_blocks_nothing() {
    let mut vm = Vm::boot("bp-exec", &["sleep", "100000"], Stdio::null());
    let pid = vm.owner_pid();
    let before = rss_kib(pid);
    let mut flood = exec_piped(&vm.name, &["cat", "/dev/zero"]);
    wait_full("the exec", flood.stdout.as_ref().unwrap());
    let mut peak = before;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        vm.echo_ok();
        peak = peak.max(rss_kib(pid));
        assert!(
            flood.try_wait().unwrap().is_none(),
            "the flooding exec ended"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    peak = peak.max(rss_kib(pid));
    eprintln!("owner RSS: {before} KiB before, peak {peak} KiB with a stalled reader");
    assert!(peak < RSS_MAX_KIB, "owner RSS reached {peak} KiB");
    flood.kill().unwrap();
    flood.wait().unwrap();

    // A reader that stalls, then reads: every byte arrives.
    let n = 8 << 20;
    let mut late = exec_piped(&vm.name, &["head", "-c", &n.to_string(), "/dev/zero"]);
    std::thread::sleep(Duration::from_secs(5));
    let mut got = Vec::new();
    late.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    assert!(late.wait().unwrap().success());
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|&b| b == 0));
    vm.echo_ok();

    let mut owner = vm.owner.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(owner.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for("the owner to exit", LIMIT, || {
        owner.try_wait().unwrap().is_some()
    });
    assert_gone(&vm.name, Some(&vm.id));
}

#[test]
fn an_owner_whose_stdout_stalls_still_serves_and_stops_on_sigterm() {
    let flood = ["sh", "-c", "cat /dev/zero"];
    let mut vm = Vm::boot("bp-run", &flood, Stdio::piped());
    wait_full(
        "the owner",
        vm.owner.as_ref().unwrap().stdout.as_ref().unwrap(),
    );
    // The owner's stdout pipe is full and nobody reads it; it must still serve.
    for _ in 0..3 {
        vm.echo_ok();
    }
    assert!(rss_kib(vm.owner_pid()) < RSS_MAX_KIB);
    let mut owner = vm.owner.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(owner.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The container (PID 1 of its namespace) ignores TERM: fcvm escalates to KILL, and the
    // VM goes whatever became of the output nobody read.
    wait_for("the owner to exit after SIGTERM", LIMIT, || {
        owner.try_wait().unwrap().is_some()
    });
    let code = owner.wait().unwrap().code();
    assert_eq!(code, Some(137));
    assert_gone(&vm.name, Some(&vm.id));
}

/// fcvm's own log lines never block a VM's owner: with its stderr a pipe that is already
/// full and that nobody reads, a run at debug level (many lines) still runs its container,
/// prints its output and exits with its code (the lines that did not fit are dropped).
#[test]
fn a_stalled_stderr_does_not_block_the_owner() {
    let (r, w) = nix::unistd::pipe().unwrap();
    // Fill the pipe, then hand it over blocking: any write fcvm makes to it would wait.
    nix::fcntl::fcntl(
        w.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let chunk = [b'.'; 4096];
    while nix::unistd::write(&w, &chunk).is_ok() {}
    nix::fcntl::fcntl(
        w.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .unwrap();
    let child = fcvm()
        .args(["-vv", "podman", "run", IMG, "--", "echo", "through"])
        .env("FCVM_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(w))
        .spawn()
        .unwrap();
    let out = wait_output(child, LIMIT, &["podman", "run", "with a stalled stderr"]);
    drop(r);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "through\n");
}
