//! QEMU backend: `qemu-system-x86_64 -M microvm`, KVM or TCG.
//!
//! The QEMU process is owned by the fcvm process that started it (`util::owned_by_us`):
//! `PR_SET_PDEATHSIG` (SIGKILL) so it dies with fcvm, and its own process group so a
//! terminal's Ctrl-C reaches fcvm (which stops the container cleanly) and not QEMU directly.

pub mod cmdline;
pub mod qmp;

use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{VmSpec, Vmm, VmmError, VmmKind};

pub const QEMU_BIN: &str = "qemu-system-x86_64";

pub struct Qemu {
    child: Child,
    dir: PathBuf,
    exited: Option<String>,
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
            "qemu-system-x86".into(),
        ));
    }
    crate::util::which(QEMU_BIN)
        .ok_or_else(|| VmmError::Missing(QEMU_BIN.into(), "qemu-system-x86".into()))
}

impl Qemu {
    pub fn start(spec: &VmSpec) -> Result<Qemu, VmmError> {
        let bin = find_binary()?;
        let args = cmdline::args(spec, cmdline::host_tsc_khz());
        let stderr = std::fs::File::create(spec.dir.join("qemu.log"))
            .map_err(|e| VmmError::Spawn(QEMU_BIN.into(), e))?;
        // QMP's socket is bound here, before QEMU starts: a client can connect at once and
        // waits for QEMU's greeting, instead of retrying until QEMU has made the socket.
        let qmp_path = spec.dir.join(cmdline::QMP_SOCK);
        let _ = std::fs::remove_file(&qmp_path);
        let qmp = std::os::unix::net::UnixListener::bind(&qmp_path)
            .map_err(|e| VmmError::Spawn(format!("{QEMU_BIN} (QMP socket)"), e))?;
        let qmp_fd = qmp.as_raw_fd();
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        crate::util::owned_by_us(&mut cmd);
        // SAFETY: only dup2/fcntl (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 clears close-on-exec on the copy; an fd already in place keeps it.
                let r = if qmp_fd == cmdline::QMP_FD {
                    libc::fcntl(qmp_fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(qmp_fd, cmdline::QMP_FD)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| VmmError::Spawn(QEMU_BIN.into(), e))?;
        tracing::debug!(pid = child.id(), "started {}", bin.display());
        Ok(Qemu {
            child,
            dir: spec.dir.clone(),
            exited: None,
        })
    }
}

impl Vmm for Qemu {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn agent_socket(&self) -> PathBuf {
        self.dir.join(cmdline::AGENT_SOCK)
    }

    fn try_exited(&mut self) -> Option<String> {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(describe(st));
            }
        }
        self.exited.clone()
    }

    fn kill(&mut self) {
        if self.try_exited().is_none() {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.exited = Some(describe(st));
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last line QEMU wrote to its log in `dir` (its own error messages).
pub fn log_tail(dir: &std::path::Path) -> Option<String> {
    let log = std::fs::read_to_string(dir.join("qemu.log")).ok()?;
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_string)
}

fn describe(st: std::process::ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}
