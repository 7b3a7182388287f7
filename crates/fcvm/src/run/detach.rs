//! `fcvm podman run -d`: the run goes on in a detached owner process; the command returns
//! once the container runs, printing the VM's id (podman prints the container's).
//!
//! 1. [`spawn`] (the command's process) starts this same program with the same arguments in
//!    a new session, stdin on /dev/null, stdout and stderr on a pipe it relays to its own
//!    stderr (pull progress, errors), and fd 3 on a second pipe: the *ready* pipe, named by
//!    [`READY_ENV`].
//! 2. The owner runs as usual. Once the VM is running (exec socket up, state written) it
//!    calls [`report_ready`]: its stdout and stderr move to `vms/<id>/container.log` (where
//!    the container's output then goes, for `fcvm logs`; capped and rotated by
//!    [`super::container_log`]) and the id goes down the ready pipe.
//! 3. [`spawn`] prints that id and returns 0; if the pipe closes without one, the owner has
//!    failed and its exit code (and the messages already relayed) are the command's.
//!
//! The owner is the VM's owner like any foreground run (its QEMU dies with it); `fcvm rm
//! --force NAME` stops it. A detached run with `-i` keeps the container's stdin open without
//! anything to read it from, as podman does.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Set in the owner's environment: the fd of the ready pipe.
pub const READY_ENV: &str = "FCVM_DETACHED_READY_FD";
/// The container's output of a detached run, in its VM directory (capped and rotated).
pub use super::container_log::LOG_FILE;
const READY_FD: RawFd = 3;

/// The ready fd, if this process is a detached owner.
fn ready_fd() -> Option<RawFd> {
    std::env::var(READY_ENV).ok()?.parse().ok()
}

/// Starts the detached owner and waits until it runs the container or fails; returns the
/// command's exit code.
#[allow(
    clippy::print_stdout,
    reason = "-d's one line of output is the id, as podman's"
)]
pub fn spawn() -> anyhow::Result<i32> {
    let (ready_r, ready_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(READY_ENV, READY_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w.try_clone()?))
        .stderr(Stdio::from(out_w));
    let w = ready_w.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: then clear it instead.
            let moved = if w == READY_FD {
                libc::fcntl(w, libc::F_SETFD, 0)
            } else {
                libc::dup2(w, READY_FD)
            };
            if libc::setsid() < 0 || moved < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The owner outlives this command: it keeps none of the caller's descriptors.
            crate::util::cloexec_from(READY_FD + 1);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop((ready_w, cmd));
    // Relay what the owner says until it reports ready (or fails), then what is left.
    let (mut ready, mut out) = (std::fs::File::from(ready_r), std::fs::File::from(out_r));
    let mut id = Vec::new();
    let mut out_open = true;
    loop {
        let mut fds = vec![PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        if out_open {
            fds.push(PollFd::new(out.as_fd(), PollFlags::POLLIN));
        }
        poll(&mut fds, PollTimeout::NONE)?;
        let (ready_ev, out_ev) = (fds[0].any(), fds.get(1).and_then(|f| f.any()));
        drop(fds);
        if out_ev == Some(true) {
            out_open = relay(&mut out)?;
        }
        if ready_ev == Some(true) {
            let mut buf = [0u8; 64];
            match ready.read(&mut buf)? {
                0 => break,
                n => id.extend_from_slice(&buf[..n]),
            }
        }
    }
    // Whatever the owner wrote before it reported is in the pipe by now; helpers it started
    // may keep the pipe open, so drain it without waiting for its end.
    nix::fcntl::fcntl(
        out.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    )?;
    while out_open {
        out_open = relay(&mut out).unwrap_or(false);
    }
    let id = String::from_utf8_lossy(&id).trim().to_string();
    if id.is_empty() {
        let status = child.wait()?;
        return Ok(status.code().unwrap_or(125));
    }
    println!("{id}");
    Ok(0)
}

/// Copies one read's worth from the owner's output to our stderr; false at its end.
fn relay(out: &mut std::fs::File) -> std::io::Result<bool> {
    let mut buf = [0u8; 8192];
    match out.read(&mut buf) {
        Ok(0) => Ok(false),
        Ok(n) => {
            let _ = std::io::stderr().write_all(&buf[..n]);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
        Err(e) => Err(e),
    }
}

/// In the owner (`READY_ENV` set): keeps the ready pipe from leaking into the processes it
/// starts (a QEMU holding it would hide the owner's failure from the waiting command).
pub fn claim_ready_fd() -> Option<RawFd> {
    let fd = ready_fd()?;
    // SAFETY: F_SETFD on the fd our parent gave us.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(fd)
}

/// In the detached owner, once the VM runs: output to the VM's log file, the id to the
/// waiting command.
pub fn report_ready(fd: RawFd, vmdir: &Path, id: &str) -> std::io::Result<()> {
    super::container_log::redirect_output(vmdir)?;
    // SAFETY: `fd` is the ready pipe we were given and is used (and closed) only here.
    let mut ready = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    ready.write_all(format!("{id}\n").as_bytes())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}
