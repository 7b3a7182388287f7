//! A running process stream: what the session, the pumps and power-off share of one
//! process (its ids, its outbox, whether it was cancelled or has ended, its stdin queue and
//! pty), and the signals and kills that reach it. Started by [`crate::process`]; its threads
//! are in [`crate::pump`].
//!
//! Every frame goes through [`Stream::send`], which a new epoch can [`Stream::cancel`]: once
//! cancelled, nothing more of the stream reaches the host.

use crate::channel::Outbox;
use crate::credit::Credit;
use crate::error::{Error, Result};
use fcvm_proto::{Frame, Msg, Target, INITIAL_OUTPUT_CREDIT};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Mutex;
use std::time::Instant;

/// A running process stream.
pub struct Stream {
    pub id: u32,
    pub target: Target,
    /// The spawned process (crun for container targets).
    pub pid: i32,
    /// Where crun writes the pid of the process inside the container.
    pub pidfile: Option<PathBuf>,
    out: Outbox,
    alive: Mutex<bool>,
    finished: AtomicBool,
    /// The stdin thread's queue (None: no stdin, or the process ended).
    stdin: Mutex<Option<SyncSender<StdinMsg>>>,
    /// The pty master, for resizes.
    tty: Option<OwnedFd>,
    /// When its Start arrived.
    pub t0: Instant,
    /// Output bytes the host takes before it grants more (see crate::credit).
    pub credit: Credit,
}

/// What a stream keeps of its process.
pub struct Handles {
    pub pid: i32,
    /// Where crun writes the pid of the process inside the container.
    pub pidfile: Option<PathBuf>,
    /// The stdin thread's queue, if the process takes stdin.
    pub stdin: Option<SyncSender<StdinMsg>>,
    /// The pty master, for resizes.
    pub tty: Option<OwnedFd>,
}

/// A frame for the stdin thread.
pub enum StdinMsg {
    Data(Vec<u8>),
    Eof,
}

/// Stdin frames queued for the stdin thread (the host's credit bounds the bytes, this the
/// frames).
pub const STDIN_QUEUE: usize = 64;

impl Stream {
    /// The stream `id` of process `p`, whose Start arrived at `t0`.
    pub fn new(id: u32, target: Target, p: Handles, out: &Outbox, t0: Instant) -> Stream {
        Stream {
            id,
            target,
            pid: p.pid,
            pidfile: p.pidfile,
            out: out.clone(),
            alive: Mutex::new(true),
            finished: AtomicBool::new(false),
            stdin: Mutex::new(p.stdin),
            tty: p.tty,
            t0,
            credit: Credit::new(INITIAL_OUTPUT_CREDIT),
        }
    }

    /// Sends a frame of this stream unless it was cancelled.
    pub fn send(&self, msg: Msg) {
        if let Ok(alive) = self.alive.lock() {
            if *alive {
                self.out.send(Frame {
                    stream: self.id,
                    msg,
                });
            }
        }
    }

    /// Stops every further frame of this stream (a new epoch took over).
    /// Its output is read and discarded from then on: the process must not block on a pipe
    /// nobody reads.
    pub fn cancel(&self) {
        if let Ok(mut alive) = self.alive.lock() {
            *alive = false;
        }
        self.credit.unlimit();
    }

    /// The host's `Credit(n)`: n more bytes of output.
    pub fn grant_output(&self, n: u32) {
        self.credit.grant(n);
    }

    /// A new epoch keeps this stream (the container's): its host starts, as for a new stream,
    /// from the initial output credit.
    pub fn new_epoch(&self) {
        self.credit.reset(INITIAL_OUTPUT_CREDIT);
    }

    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Marks the process as ended (its Exit is sent) and drops its stdin queue.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    /// Takes no more stdin (the process ended: the stdin thread ends with the queue).
    pub fn close_stdin(&self) {
        if let Ok(mut s) = self.stdin.lock() {
            *s = None;
        }
    }

    /// Queues stdin; false if the stream takes no stdin or the host overran its credit.
    pub fn stdin(&self, msg: StdinMsg) -> bool {
        let guard = self.stdin.lock().ok();
        match guard.as_ref().and_then(|g| g.as_ref()) {
            Some(tx) => tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// The pid signals go to: the process inside the container if crun reported it.
    fn inner_pid(&self) -> i32 {
        self.pidfile
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|p: &i32| *p > 1)
            .unwrap_or(self.pid)
    }

    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = self.inner_pid();
        // SAFETY: kill(2) with a pid we spawned (or crun reported) and a caller's signal number.
        if unsafe { libc::kill(pid, sig) } != 0 {
            let source = std::io::Error::last_os_error();
            return Err(Error::Kill { pid, sig, source });
        }
        Ok(())
    }

    /// SIGKILL: the process group for VM processes, the container-side process otherwise;
    /// for exec and VM streams also every process left in their sessions (the `sleep` of a
    /// killed `sh -c '...; sleep 1000'` must not outlive its stream).
    pub fn kill(&self) {
        let inner = self.inner_pid();
        let sessions = match self.target {
            Target::Container | Target::PodContainer { .. } => vec![],
            _ => vec![session_of(inner), Some(self.pid)],
        };
        // SAFETY: kill(2) on pids we spawned; errors (already gone) are irrelevant.
        unsafe {
            libc::kill(inner, libc::SIGKILL);
            if self.target == Target::Vm {
                libc::kill(-self.pid, libc::SIGKILL);
            } else if self.is_exec() || inner == self.pid {
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
        for sid in sessions.into_iter().flatten() {
            kill_session(sid);
        }
    }

    /// Whether this is a `crun exec` (into the first container or a pod's).
    pub fn is_exec(&self) -> bool {
        matches!(self.target, Target::ContainerExec | Target::PodExec { .. })
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        if let Some(m) = &self.tty {
            set_winsize(m.as_raw_fd(), rows, cols);
            // crun's own pty (see crate::process) does not follow ours: size it too.
            if let Some(f) = self.crun_pty() {
                set_winsize(f.as_raw_fd(), rows, cols);
            }
        }
    }

    /// The pty crun made for a TTY container or container exec, through the process's stdin
    /// (that pty's slave): None until its stdin is a devpts of the container's own, not the
    /// VM's (ours), and never for VM processes.
    pub fn crun_pty(&self) -> Option<std::fs::File> {
        use std::os::unix::fs::MetadataExt;
        let inner = self.inner_pid();
        if self.target == Target::Vm || inner == self.pid {
            return None;
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY) // never our controlling terminal
            .open(format!("/proc/{inner}/fd/0"))
            .ok()?;
        let vm_pts = std::fs::metadata("/dev/pts").map(|m| m.dev()).ok()?;
        (f.metadata().ok()?.dev() != vm_pts).then_some(f)
    }
}

/// The session id of `pid` (field 6 of /proc/PID/stat).
fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// SIGKILLs every process of session `sid` (never the agent's own session).
fn kill_session(sid: i32) {
    // SAFETY: getsid(0) only queries our own session.
    if sid <= 1 || sid == unsafe { libc::getsid(0) } {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid > 1 && session_of(pid) == Some(sid) {
            // SAFETY: kill(2) on a process of a session we created; it may be gone already.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Sets the terminal size of the pty `fd`.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid winsize.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}
