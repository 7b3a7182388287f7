//! Child processes: PID 1 must reap every orphan, yet each spawner needs its own child's exit
//! status. One reaper thread calls `waitpid(-1)` and hands every status to the owner registered
//! for that pid. Statuses of unknown pids (orphans) are kept briefly, so [`adopt`] can claim a
//! grandchild that was reparented to us (the warm container's process) whenever it exits.
//!
//! 1. [`spawn`] clones and execs while holding the registry lock and registers the pid before
//!    releasing it, so the reaper (which takes the lock to dispatch) can never lose a status.
//! 2. The clone shares our memory until it execs (`CLONE_VM | CLONE_VFORK`, as posix_spawn
//!    does): no page tables copied, no copy-on-write faults afterwards — a fork of the agent
//!    costs milliseconds under TCG. So the child makes raw system calls only (glibc's
//!    setuid & co. would signal *our* threads to follow); an exec failure travels back as an
//!    errno over a close-on-exec pipe and `spawn` returns it.
//! 3. With no children the reaper sleeps on a condvar that `spawn` signals (no polling).

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Condvar, Mutex};

struct Registry {
    owners: BTreeMap<i32, Sender<i32>>,
    /// Statuses nobody registered for, newest last (bounded: orphans are rare).
    orphans: Vec<(i32, i32)>,
    generation: u64,
}

const KEPT_ORPHANS: usize = 32;

/// The environment helpers such as crun run with.
pub const HELPER_ENV: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    owners: BTreeMap::new(),
    orphans: Vec::new(),
    generation: 0,
});
static SPAWNED: Condvar = Condvar::new();

/// Starts the reaper thread (PID 1 only; on the host tests spawn nothing).
pub fn start() {
    let _ = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(reap_loop);
}

fn reap_loop() {
    loop {
        let gen = REGISTRY.lock().map(|r| r.generation).unwrap_or(0);
        let mut status = 0;
        // SAFETY: plain waitpid on any child with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid > 0 {
            if let Ok(mut r) = REGISTRY.lock() {
                match r.owners.remove(&pid) {
                    Some(tx) => {
                        let _ = tx.send(status);
                    }
                    None => {
                        if r.orphans.len() >= KEPT_ORPHANS {
                            r.orphans.remove(0);
                        }
                        r.orphans.push((pid, status));
                    }
                }
            }
            continue;
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // ECHILD: sleep until the next spawn.
        let Ok(mut r) = REGISTRY.lock() else { return };
        while r.generation == gen {
            r = match SPAWNED.wait(r) {
                Ok(r) => r,
                Err(_) => return,
            };
        }
    }
}

/// Claims the exit status of `pid`, a process reparented to us (not spawned by [`spawn`]).
pub fn adopt(pid: i32) -> Receiver<i32> {
    let (tx, rx) = channel();
    if let Ok(mut r) = REGISTRY.lock() {
        // Under the lock the reaper cannot dispatch: a process that still exists (a zombie
        // included) is ours to wait for; one that does not was reaped and kept.
        // SAFETY: kill(2) with signal 0 only checks that the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        let kept = r.orphans.iter().rposition(|(p, _)| *p == pid);
        if alive {
            if let Some(i) = kept {
                r.orphans.remove(i); // an older process with the same pid
            }
            r.owners.insert(pid, tx);
        } else if let Some(i) = kept {
            let _ = tx.send(r.orphans.remove(i).1);
        }
    }
    rx
}

/// Exit code of a wait status as a shell reports it (signal N → 128+N).
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// What to run and with which stdio, ids and session.
pub struct Cmd {
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    /// uid, gid and supplementary groups (None: keep root's).
    pub ids: Option<(u32, u32, Vec<u32>)>,
    /// fds for 0, 1, 2.
    pub stdio: [RawFd; 3],
    /// fds for 3, 4, … (for `crun --preserve-fds`).
    pub extra: Vec<RawFd>,
    /// Make fd 0 (a pty slave) the controlling terminal of the new session.
    pub ctty: bool,
    /// Exec with `ADDR_NO_RANDOMIZE`: for crun. QEMU's TCG keys translated code by virtual
    /// address, so a dynamically linked program loaded at new random addresses each time is
    /// translated anew each time: `fcvm exec` into the container 154 → 68 ms with crun at a
    /// fixed layout. crun resets the personality for the container's processes (the OCI
    /// config's `linux.personality`, see crate::oci), which keep their ASLR.
    pub fixed_layout: bool,
}

/// Converts strings for [`Cmd`]; an interior NUL is an error.
pub fn cstrings<S: AsRef<str>>(items: &[S]) -> Result<Vec<CString>> {
    items
        .iter()
        .map(|s| CString::new(s.as_ref()).map_err(|_| Error::NulByte(s.as_ref().into())))
        .collect()
}

/// The NULL-terminated pointer array execve(2) takes; valid while `items` lives.
pub fn null_terminated(items: &[CString]) -> Vec<*const libc::c_char> {
    items
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Clones and execs `cmd` in a new session; returns the pid and the receiver of its wait status.
pub fn spawn(cmd: &Cmd) -> Result<(i32, Receiver<i32>), std::io::Error> {
    let argv = null_terminated(&cmd.argv);
    let envp = null_terminated(&cmd.envp);
    let groups: Vec<libc::gid_t> = cmd.ids.as_ref().map(|i| i.2.clone()).unwrap_or_default();
    let mut errpipe = [0; 2];
    // SAFETY: valid array of two fds.
    if unsafe { libc::pipe2(errpipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (tx, rx) = channel();
    let mut reg = REGISTRY
        .lock()
        .map_err(|_| std::io::Error::other("reaper registry poisoned"))?;
    let args = ChildArgs {
        cmd,
        argv: &argv,
        envp: &envp,
        groups: &groups,
        errfd: errpipe[1],
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the child runs `child_entry` on its own stack over our (shared) memory, makes
    // only raw system calls, and execs or _exits; CLONE_VFORK suspends this thread until then,
    // so `args` and `stack` outlive its use of them.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK) as usize & !15;
        libc::clone(
            child_entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ChildArgs as *mut libc::c_void,
        )
    };
    drop(stack);
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our own pipe fds.
        unsafe {
            libc::close(errpipe[0]);
            libc::close(errpipe[1]);
        }
        return Err(e);
    }
    reg.owners.insert(pid, tx);
    reg.generation += 1;
    drop(reg);
    SPAWNED.notify_all();
    // SAFETY: closing the write end we no longer need; reading 4 bytes into a local buffer.
    let (n, buf) = unsafe {
        libc::close(errpipe[1]);
        let mut buf = [0u8; 4];
        let n = retry_eintr(|| libc::read(errpipe[0], buf.as_mut_ptr().cast(), 4));
        libc::close(errpipe[0]);
        (n, buf)
    };
    if n == 4 {
        return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
    }
    Ok((pid, rx))
}

const CHILD_STACK: usize = 128 * 1024;

struct ChildArgs<'a> {
    cmd: &'a Cmd,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    groups: &'a [libc::gid_t],
    errfd: RawFd,
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs `spawn` keeps alive until we exec or exit.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        child(a.cmd, a.argv, a.envp, a.groups, a.errfd)
    }
}

/// The cloned child: set up stdio, session, ids, cwd; exec.
unsafe fn child(
    cmd: &Cmd,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    groups: &[libc::gid_t],
    errfd: RawFd,
) -> ! {
    let fail = |errfd: RawFd| -> ! {
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        let b = e.to_ne_bytes();
        // SAFETY: async-signal-safe write and _exit.
        unsafe {
            libc::write(errfd, b.as_ptr().cast(), 4);
            libc::_exit(127)
        }
    };
    // SAFETY: all calls are async-signal-safe and act on this process only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in [libc::SIGPIPE, libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::setsid();
        // The error pipe must survive the moves to fds 3, 4, … below.
        let errfd = if cmd.extra.is_empty() {
            errfd
        } else {
            libc::fcntl(errfd, libc::F_DUPFD_CLOEXEC, 64)
        };
        for (i, fd) in cmd.stdio.iter().enumerate() {
            if libc::dup2(*fd, i as i32) < 0 {
                fail(errfd);
            }
        }
        // Out of the way first, so no target number clobbers a source still to be moved.
        let mut moved = [0; 8];
        for (i, fd) in cmd.extra.iter().take(moved.len()).enumerate() {
            moved[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64);
            if moved[i] < 0 {
                fail(errfd);
            }
        }
        for (i, fd) in moved.iter().take(cmd.extra.len()).enumerate() {
            if libc::dup2(*fd, 3 + i as i32) < 0 {
                fail(errfd);
            }
        }
        if cmd.ctty {
            libc::ioctl(0, libc::TIOCSCTTY, 0);
        }
        if let Some((uid, gid, _)) = cmd.ids {
            // Raw calls: they change this process alone (see the module docs).
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                fail(errfd);
            }
        }
        if let Some(cwd) = &cmd.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                fail(errfd);
            }
        }
        if cmd.fixed_layout {
            libc::syscall(
                libc::SYS_personality,
                libc::ADDR_NO_RANDOMIZE as libc::c_ulong,
            );
        }
        libc::execve(cmd.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(errfd)
    }
}

/// Calls `f` (a read or write returning its byte count or -1) again while it fails with EINTR.
pub fn retry_eintr(mut f: impl FnMut() -> isize) -> isize {
    loop {
        let n = f();
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return n;
        }
    }
}

/// /dev/null open for reading and writing: stdio for processes that get none.
pub fn dev_null() -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
}

/// Runs crun (e.g. `crun delete`) to completion with stdio on /dev/null; returns its exit code.
pub fn run_quiet(args: &[&str]) -> Result<i32> {
    let argv = cstrings(args)?;
    let null = dev_null().map_err(|e| Error::Open("/dev/null".into(), e))?;
    use std::os::fd::AsRawFd;
    let fd = null.as_raw_fd();
    let cmd = Cmd {
        path: argv[0].clone(),
        argv,
        envp: cstrings(&[HELPER_ENV])?,
        cwd: None,
        ids: None,
        stdio: [fd, fd, fd],
        extra: vec![],
        ctty: false,
        fixed_layout: true, // crun (see Cmd::fixed_layout)
    };
    let (_, rx) = spawn(&cmd).map_err(|e| Error::Spawn(args[0].into(), e))?;
    drop(null);
    rx.recv().map(exit_code).map_err(|_| Error::ReaperGone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_reports_status_and_exec_errors() {
        start();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        use std::os::fd::AsRawFd;
        let argv = cstrings(&["/bin/sh", "-c", "echo $A; exit 3"]).unwrap();
        let cmd = Cmd {
            path: argv[0].clone(),
            argv,
            envp: cstrings(&["A=from-env"]).unwrap(),
            cwd: cstrings(&["/"]).unwrap().pop(),
            ids: None,
            stdio: [0, w.as_raw_fd(), 2],
            extra: vec![],
            ctty: false,
            fixed_layout: false,
        };
        let (pid, rx) = spawn(&cmd).unwrap();
        assert!(pid > 0);
        drop(w);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
        assert_eq!(out, "from-env\n");
        assert_eq!(exit_code(rx.recv().unwrap()), 3);
        let missing = Cmd {
            path: cstrings(&["/nonexistent/x"]).unwrap().remove(0),
            stdio: [0, 1, 2], // `w` is closed (and its number maybe reused) by now
            ..cmd
        };
        let err = spawn(&missing).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(9), 137);
    }
}
