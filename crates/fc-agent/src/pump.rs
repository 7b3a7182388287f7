//! The threads of a process stream:
//!
//! 1. [`pump`] polls stdout/stderr (or the pty master) and the process's pidfd, sends
//!    `Stdout`/`Stderr` chunks of at most `MAX_CHUNK`, and sends the one final `Exit{code}`
//!    once the process has exited and its output is drained (EOF, or quiet for 100 ms when a
//!    leftover child holds the pipe). While the process runs quietly the thread sleeps, woken
//!    at most once a second (under TCG each wakeup of an idle guest costs the host about a
//!    millisecond; a 50 ms poll per process was most of a quiet VM's CPU).
//!    It reads no more than the stream's output credit allows ([`crate::credit`]) and stops
//!    reading while there is none: the host's reader paces the process, and only it. (A full
//!    channel queue makes its sends wait too: `crate::channel`.)
//! 2. [`stdin_loop`] writes `Stdin` bytes from a bounded queue and grants `Credit` after every
//!    64 KiB written (bytes the process no longer reads are discarded but still credited);
//!    `StdinEof` closes stdin, or writes ^D to a pty.

use crate::reaper;
use crate::stream::{StdinMsg, Stream};
use fcvm_proto::{Msg, Target, MAX_CHUNK};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// Stdin granted back to the host in steps of at least this much.
const CREDIT_STEP: usize = 64 * 1024;
/// After the process exited, output still open is drained until it stays quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(100);

fn write_all(fd: RawFd, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: writing from a valid slice to an fd we own.
        let n = crate::reaper::retry_eintr(|| unsafe {
            libc::write(fd, buf.as_ptr().cast(), buf.len())
        });
        if n < 0 {
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

pub fn stdin_loop(stream: &Stream, fd: OwnedFd, rx: Receiver<StdinMsg>, tty: bool) {
    let mut fd = Some(fd);
    let mut since_credit = 0usize;
    for msg in rx {
        match msg {
            StdinMsg::Data(bytes) => {
                if let Some(f) = &fd {
                    if !write_all(f.as_raw_fd(), &bytes) {
                        fd = None; // the reader is gone: discard the rest, still grant credit
                    }
                }
                since_credit += bytes.len();
                if since_credit >= CREDIT_STEP {
                    stream.send(Msg::Credit(since_credit as u32));
                    since_credit = 0;
                }
            }
            StdinMsg::Eof if tty => {
                if let Some(f) = &fd {
                    write_all(f.as_raw_fd(), &[4]);
                }
            }
            StdinMsg::Eof => fd = None,
        }
    }
}

/// A pollable handle on `pid`'s exit (readable once it has exited), if the kernel gives one.
pub fn pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags; a returned fd is new and ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: `fd` is a valid fd we own (checked non-negative).
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Pumps the output of the process whose wait status comes on `status_rx` and whose exit
/// `exited` (its [`pidfd`]) signals. Without a pidfd (or should its pid have been reused
/// between the exit and the open: a pidfd names whatever process has the pid) the status is
/// looked for every 50 ms / 1 s instead.
pub fn pump(
    stream: &Stream,
    mut fds: Vec<(OwnedFd, bool)>,
    status_rx: Receiver<i32>,
    mut exited: Option<OwnedFd>,
) {
    let mut status = None;
    // When the status arrived: `Exit.run_us` ends there, not after the output drained.
    let mut reaped = None;
    let mut last_data = Instant::now();
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        if status.is_none() {
            if fds.is_empty() {
                status = status_rx.recv().ok();
                reaped = Some(Instant::now());
                break;
            }
            match status_rx.try_recv() {
                Ok(s) => {
                    status = Some(s);
                    reaped = Some(Instant::now());
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
        }
        if fds.is_empty() || (status.is_some() && last_data.elapsed() > DRAIN_QUIET) {
            break;
        }
        let timeout = match (status.is_some(), &exited) {
            (true, _) => 20,
            (false, Some(_)) => 1000,
            (false, None) => 50,
        };
        let mut allowance = stream
            .credit
            .available(Duration::from_millis(timeout as u64));
        if allowance == 0 {
            // The pipe is left alone: the process blocks once it is full. Waiting for the
            // host is not the quiet that ends the drain after an exit.
            last_data = Instant::now();
            continue;
        }
        let pidfd = exited.as_ref().filter(|_| status.is_none());
        let mut pfds: Vec<libc::pollfd> = (fds.iter().map(|(f, _)| f.as_raw_fd()))
            .chain(pidfd.map(|f| f.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll over a valid array of pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, timeout) };
        if n <= 0 {
            continue;
        }
        if pidfd.is_some() && pfds.pop().is_some_and(|p| p.revents != 0) {
            // Exited: the reaper has it or is about to (it waits on every child).
            exited = None;
            status = status_rx.recv().ok();
            reaped = Some(Instant::now());
        }
        let mut closed = vec![];
        for (i, p) in pfds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            let want = buf.len().min(allowance);
            if want == 0 {
                break;
            }
            // SAFETY: reading at most `want` bytes into our buffer from an fd we own.
            let r = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), want) };
            if r > 0 {
                last_data = Instant::now();
                allowance -= r as usize;
                stream.credit.spend(r as usize);
                let data = buf[..r as usize].to_vec();
                stream.send(if fds[i].1 {
                    Msg::Stderr(data)
                } else {
                    Msg::Stdout(data)
                });
            } else if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
            {
                closed.push(i); // EOF, or EIO from a pty whose slave side is gone
            }
        }
        for i in closed.into_iter().rev() {
            fds.remove(i);
        }
    }
    if status.is_none() {
        status = status_rx.recv().ok();
        reaped = Some(Instant::now());
    }
    stream.close_stdin();
    let code = status.map(reaper::exit_code).unwrap_or(255);
    let run_us = reaped
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(stream.t0)
        .as_micros() as u64;
    if stream.target == Target::Container {
        // The host stops the VM once told: what the container wrote must be on its disks.
        crate::disks::flush();
    }
    stream.send(Msg::Exit { code, run_us });
    stream.finish();
    if let Some(p) = &stream.pidfile {
        if stream.is_exec() {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_file(crate::paths::exec_json(stream.id));
        }
    }
}
