//! QEMU backend: `qemu-system-x86_64 -M microvm`, KVM or TCG.
//!
//! - [`cmdline`] renders a [`VmSpec`] (typed devices) into QEMU's arguments: the only place
//!   fcvm writes a QEMU option string.
//! - [`qmp`] is the QMP client; [`persist`] implements the [`Vmm`] lifecycle verbs (pause,
//!   resume, save and load state) with it. Nothing outside this directory speaks QMP.
//!
//! The QEMU process is owned by the fcvm process that started it (`util::owned_by_us`):
//! `PR_SET_PDEATHSIG` (SIGKILL) so it dies with fcvm, and its own process group so a
//! terminal's Ctrl-C reaches fcvm (which stops the container cleanly) and not QEMU directly.
//! Under TCG it runs as batch work with a long time slice ([`sched`]).

pub mod cmdline;
mod persist;
pub mod qmp;
mod sched;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use super::{StateScope, VmSpec, Vmm, VmmError, VmmFuture, VmmKind};

pub const QEMU_BIN: &str = "qemu-system-x86_64";
/// QEMU's own messages (stderr), in the VM's directory.
const QEMU_LOG: &str = "qemu.log";

pub struct Qemu {
    child: Mutex<Child>,
    pid: u32,
    dir: PathBuf,
    exited: Mutex<Option<String>>,
    /// The QMP connection while a pause/save/load/resume sequence runs (`persist.rs`).
    qmp: tokio::sync::Mutex<Option<qmp::Qmp>>,
}

/// Path of the QEMU binary, or an error saying how to install it.
pub fn find_binary() -> Result<PathBuf, VmmError> {
    if let Some(p) = std::env::var_os("FCVM_QEMU") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(VmmError::Missing(
            p.display().to_string(),
            "qemu-system-x86",
        ));
    }
    crate::util::which(QEMU_BIN)
        .ok_or_else(|| VmmError::Missing(QEMU_BIN.into(), "qemu-system-x86"))
}

impl Qemu {
    pub fn start(spec: &VmSpec) -> Result<Qemu, VmmError> {
        let bin = find_binary()?;
        let args = cmdline::args(spec, cmdline::host_tsc_khz());
        let spawn_err = |what: &str, e| VmmError::Spawn(format!("{QEMU_BIN} ({what})"), e);
        let stderr = crate::owner_only::create_file(&spec.dir.join(QEMU_LOG))
            .map_err(|e| spawn_err("log", e))?;
        // The console log exists before QEMU opens it, so it keeps the mode set here.
        crate::owner_only::create_file(&spec.dir.join(crate::vmm::CONSOLE_LOG))
            .map_err(|e| spawn_err("console log", e))?;
        // QMP's and the agent's sockets are bound here, before QEMU starts, with their mode
        // set by fcvm: a client can connect at once and waits for QEMU to accept, instead of
        // retrying until QEMU has made the socket.
        let qmp = crate::owner_only::bind(&spec.dir.join(cmdline::QMP_SOCK))
            .map_err(|e| spawn_err("QMP socket", e))?;
        let agent = crate::owner_only::bind(&spec.dir.join(cmdline::AGENT_SOCK))
            .map_err(|e| spawn_err("agent socket", e))?;
        // Copies above every fd the child could be handed, so placing one at its fixed
        // number never overwrites the other.
        let high = |fd: std::os::fd::BorrowedFd<'_>| {
            nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                .map(|raw| {
                    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
                })
                .map_err(std::io::Error::from)
        };
        let qmp_fd = high(qmp.as_fd()).map_err(|e| spawn_err("QMP socket", e))?;
        let agent_fd = high(agent.as_fd()).map_err(|e| spawn_err("agent socket", e))?;
        let (qmp_raw, agent_raw) = (qmp_fd.as_raw_fd(), agent_fd.as_raw_fd());
        let tcg = spec.accel == super::Accel::Tcg;
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        crate::util::owned_by_us(&mut cmd);
        // SAFETY: only umask, sched_setattr and dup2 (async-signal-safe) between fork and
        // exec. dup2 clears close-on-exec on the copy. The umask is a second line behind the
        // VM directory's 0700: whatever QEMU creates itself is private too.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(0o077);
                if tcg {
                    sched::batch_with_long_slice();
                }
                for (from, to) in [(qmp_raw, cmdline::QMP_FD), (agent_raw, cmdline::AGENT_FD)] {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| VmmError::Spawn(QEMU_BIN.into(), e))?;
        tracing::debug!(pid = child.id(), "started {}", bin.display());
        Ok(Qemu {
            pid: child.id(),
            child: Mutex::new(child),
            dir: spec.dir.clone(),
            exited: Mutex::new(None),
            qmp: tokio::sync::Mutex::new(None),
        })
    }
}

impl Vmm for Qemu {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn agent_socket(&self) -> PathBuf {
        self.dir.join(cmdline::AGENT_SOCK)
    }

    fn try_exited(&self) -> Option<String> {
        let mut exited = self.exited.lock().expect("exit status");
        if exited.is_none() {
            if let Ok(Some(st)) = self.child.lock().expect("child").try_wait() {
                *exited = Some(describe(st));
            }
        }
        exited.clone()
    }

    fn pause(&self) -> VmmFuture<'_, ()> {
        Box::pin(persist::pause(self))
    }

    fn resume(&self) -> VmmFuture<'_, ()> {
        Box::pin(persist::resume(self))
    }

    fn save_state<'a>(&'a self, path: &'a Path, scope: StateScope) -> VmmFuture<'a, ()> {
        Box::pin(persist::save_state(self, path, scope))
    }

    fn load_state<'a>(&'a self, path: &'a Path, scope: StateScope) -> VmmFuture<'a, ()> {
        Box::pin(persist::load_state(self, path, scope))
    }

    fn quit(&self) {
        if self.try_exited().is_none() {
            let mut child = self.child.lock().expect("child");
            let _ = child.kill();
            if let Ok(st) = child.wait() {
                *self.exited.lock().expect("exit status") = Some(describe(st));
            }
        }
    }

    fn last_message(&self) -> Option<String> {
        let log = std::fs::read_to_string(self.dir.join(QEMU_LOG)).ok()?;
        log.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_string)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.quit();
    }
}

fn describe(st: std::process::ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}
