//! What every target shares to spawn its process: stdio (pipes, or a pty whose slave is all
//! three), the spawn itself with podman's error kinds, and [`Spawned`], what a target hands
//! back to [`super::start`] (see `crate::process`).

use crate::error::{Error, Result};
use crate::reaper::{self, Cmd};
use crate::stream::set_winsize;
use fcvm_proto::Target;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::Receiver;

/// A process that runs, and our ends of its stdio.
pub struct Spawned {
    pub pid: i32,
    /// Its wait status, from the reaper.
    pub status: Receiver<i32>,
    /// Output fds and whether each is stderr.
    pub outputs: Vec<(OwnedFd, bool)>,
    pub stdin: Option<OwnedFd>,
    /// The pty master, for resizes.
    pub tty: Option<OwnedFd>,
    /// Where crun writes the pid of the process inside the container.
    pub pidfile: Option<PathBuf>,
    /// When to send `Started`.
    pub started: Announce,
}

/// When the host hears `Started`.
pub enum Announce {
    /// As soon as the stream exists.
    Now,
    /// Once crun has created the container (its pid file exists), the pty (if any) sized to
    /// these rows and columns: only then can `crun exec` join it.
    WhenCreated(Option<(u16, u16)>),
}

/// A spawned process's stdio: the child's ends (closed once it runs) and ours.
pub struct Stdio {
    child: [OwnedFd; 3],
    /// Output fds and whether each is stderr.
    pub outputs: Vec<(OwnedFd, bool)>,
    pub stdin: Option<OwnedFd>,
    /// The pty master, for resizes.
    pub tty: Option<OwnedFd>,
}

impl Stdio {
    /// A pty of `size` (rows, columns) as all three, or pipes (stdin: /dev/null unless `stdin`).
    pub fn new(size: Option<(u16, u16)>, stdin: bool) -> Result<Stdio> {
        if let Some((rows, cols)) = size {
            let pty = nix::pty::openpty(None, None).map_err(Error::Openpty)?;
            cloexec(&pty.master);
            cloexec(&pty.slave);
            set_winsize(pty.master.as_raw_fd(), rows.max(1), cols.max(1));
            return Ok(Stdio {
                child: [dup(&pty.slave)?, dup(&pty.slave)?, pty.slave],
                stdin: if stdin { Some(dup(&pty.master)?) } else { None },
                tty: Some(dup(&pty.master)?),
                outputs: vec![(pty.master, false)],
            });
        }
        let (or, ow) = pipe()?;
        let (er, ew) = pipe()?;
        let (inr, inw) = if stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            let null = reaper::dev_null().map_err(|e| Error::Open("/dev/null".into(), e))?;
            (OwnedFd::from(null), None)
        };
        Ok(Stdio {
            child: [inr, ow, ew],
            outputs: vec![(or, false), (er, true)],
            stdin: inw,
            tty: None,
        })
    }

    /// The child's ends, for [`Cmd::stdio`].
    pub fn child_raw(&self) -> [RawFd; 3] {
        self.child.each_ref().map(|f| f.as_raw_fd())
    }

    /// Our ends, with the process that now holds the child's.
    pub fn spawned(
        self,
        (pid, status): (i32, Receiver<i32>),
        pidfile: Option<PathBuf>,
        started: Announce,
    ) -> Spawned {
        Spawned {
            pid,
            status,
            outputs: self.outputs,
            stdin: self.stdin,
            tty: self.tty,
            pidfile,
            started,
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::Pipe)
}

fn cloexec(fd: &OwnedFd) {
    // SAFETY: setting FD_CLOEXEC on an fd we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().map_err(Error::Dup)
}

/// Spawns `cmd` (crun, or the command itself for `--vm`), errors in podman's words.
pub fn spawn(cmd: &Cmd, target: Target, name: &str) -> Result<(i32, Receiver<i32>)> {
    reaper::spawn(cmd).map_err(|e| {
        Error::from_exec_errno(e.raw_os_error(), name, target)
            .unwrap_or_else(|| Error::Spawn(name.into(), e))
    })
}

/// The command line of one crun invocation (`crun run`, `crun exec`): crun's own helper
/// environment, the process's stdio, crun at its fixed address layout (see
/// `Cmd::fixed_layout`).
pub fn crun_cmd(argv: &[&str], io: &Stdio, tty: bool) -> Result<Cmd> {
    let argv = reaper::cstrings(argv)?;
    Ok(Cmd {
        path: argv[0].clone(),
        argv,
        envp: reaper::cstrings(&[reaper::HELPER_ENV])?,
        cwd: None,
        ids: None,
        stdio: io.child_raw(),
        extra: vec![],
        ctty: tty,
        fixed_layout: true,
    })
}
