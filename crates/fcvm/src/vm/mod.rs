//! A VM's record on disk: `vms/<id>/state.json`, always written atomically, and the truth
//! about it for `fcvm ls` even after a SIGKILL.
//!
//! A state file says what its owner (the `fcvm` process that runs the VM) last wrote; what is
//! true now is [`VmState::observed`] ([`state`]). A VM whose owner is gone is `dead`: `fcvm rm
//! NAME` removes its leftovers, and `fcvm ls` and `fcvm snapshots prune` reap every VM nothing
//! runs of any more ([`reap_abandoned`]), so a killed run never keeps a name or a snapshot.

pub mod names;
pub mod state;

use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::paths::Dirs;
use crate::procfs::process_alive;

pub use state::{Health, Observed, VmState, VmStatus};

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("No VM named {0:?}")]
    NotFound(String),
    #[error("Cannot write the state of VM {0}")]
    WriteState(String, #[source] std::io::Error),
    #[error("VM {0:?} is running; stop it first or use --force")]
    Running(String),
    #[error(
        "VM {name:?} is one of {} VMs of one process (pid {pid}, e.g. fcvm serve): stop it \
         through that process (DELETE /sandboxes/{{id}}), or stop the process",
        others + 1
    )]
    SharedOwner {
        name: String,
        pid: u32,
        others: usize,
    },
    #[error("Cannot remove VM directory {0}")]
    Remove(PathBuf, #[source] std::io::Error),
}

/// The directory of one VM.
#[derive(Debug, Clone)]
pub struct VmDir {
    pub path: PathBuf,
}

impl VmDir {
    pub fn new(dirs: &Dirs, id: &str) -> VmDir {
        VmDir {
            path: dirs.vms().join(id),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    pub fn write_state(&self, st: &VmState) -> Result<(), VmError> {
        let json = serde_json::to_vec_pretty(st).expect("state serialises");
        crate::util::write_atomic(&self.state_path(), &json)
            .map_err(|e| VmError::WriteState(st.name.clone(), e))
    }

    pub fn read_state(&self) -> Option<VmState> {
        let data = std::fs::read(self.state_path()).ok()?;
        serde_json::from_slice(&data).ok()
    }

    pub fn remove(&self) -> Result<(), VmError> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VmError::Remove(self.path.clone(), e)),
        }
    }
}

/// Every VM with a readable state file, oldest first.
pub fn list(dirs: &Dirs) -> Vec<(VmDir, VmState)> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dirs.vms()) else {
        return out;
    };
    for e in rd.flatten() {
        let d = VmDir { path: e.path() };
        if let Some(st) = d.read_state() {
            out.push((d, st));
        }
    }
    out.sort_by_key(|(_, s)| s.started_at);
    out
}

/// Finds a VM by name (or by id, or a unique id prefix).
pub fn find(dirs: &Dirs, name: &str) -> Result<(VmDir, VmState), VmError> {
    let all = list(dirs);
    if let Some(hit) = all.iter().find(|(_, s)| s.name == name || s.id == name) {
        return Ok(hit.clone());
    }
    let mut prefixed = all.into_iter().filter(|(_, s)| s.id.starts_with(name));
    match (prefixed.next(), prefixed.next()) {
        (Some(hit), None) if name.len() >= 4 => Ok(hit),
        _ => Err(VmError::NotFound(name.into())),
    }
}

/// Removes a VM's leftovers. A VM whose owner still runs is refused unless `force` gives a
/// grace period, in which case it is stopped first as podman's `rm -f --time` does: SIGTERM to
/// its owner, which stops the container as Ctrl-C does (its process gets SIGTERM, then SIGKILL;
/// the agent flushes `--disk`s before it reports the exit), and SIGKILL to the owner (and with
/// it, through the parent-death signal, its VMM) if it has not ended within `grace`. A VM
/// whose owner also owns other live VMs (an `fcvm serve`'s sandboxes) is refused: stopping
/// the owner would stop them all.
pub fn remove(
    dirs: &Dirs,
    dir: &VmDir,
    st: &VmState,
    force: Option<Duration>,
) -> Result<(), VmError> {
    if st.observed().is_alive() {
        let Some(grace) = force else {
            return Err(VmError::Running(st.name.clone()));
        };
        let others = list(dirs)
            .into_iter()
            .filter(|(_, o)| o.id != st.id && (o.pid, o.pid_start) == (st.pid, st.pid_start))
            .filter(|(_, o)| o.observed().is_alive())
            .count();
        if others > 0 {
            return Err(VmError::SharedOwner {
                name: st.name.clone(),
                pid: st.pid,
                others,
            });
        }
        stop_owner(st, grace);
    }
    // A dead VMM whose owner was SIGKILLed already died with it (PR_SET_PDEATHSIG); one that
    // somehow survives is killed here so `rm` never leaves a process behind.
    if let (Some(p), Some(s)) = (st.vmm_pid, st.vmm_start) {
        if process_alive(p, s) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    dir.remove()
}

/// SIGTERM to a VM's owner, and SIGKILL if it still runs after `grace`. The wait is on a pidfd
/// of the owner (checked to be the same process by its start time), not a polling loop.
fn stop_owner(st: &VmState, grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(st.pid as i32);
    let exited_within = |grace: Duration| -> bool {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; the
        // descriptor is owned by the OwnedFd made from it at once.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, st.pid as libc::pid_t, 0) };
        if fd < 0 {
            return true; // no such process any more
        }
        // SAFETY: `fd` is a fresh descriptor returned by pidfd_open above, owned by no one else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        // The pid might have been reused between the record and the pidfd.
        if !process_alive(st.pid, st.pid_start) {
            return true;
        }
        if kill(pid, Signal::SIGTERM).is_err() {
            return true;
        }
        let ms = u16::try_from(grace.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fd),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(nix::poll::poll(&mut fds, ms), Ok(n) if n > 0)
    };
    if !exited_within(grace) && process_alive(st.pid, st.pid_start) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// Removes every VM that nothing runs of any more ([`VmState::abandoned`]: its owner was
/// killed, or crashed, and its VMM died with it) and returns their records, for the caller to
/// report. Such a VM would otherwise keep its name and pin its snapshot until `fcvm rm`.
///
/// The directory is renamed into `tmp/` before it is deleted: of two fcvm reaping at once,
/// one wins the rename and reports the VM; the other finds it gone and says nothing.
pub fn reap_abandoned(dirs: &Dirs) -> Vec<VmState> {
    let mut reaped = vec![];
    for (dir, st) in list(dirs) {
        if !st.abandoned() {
            continue;
        }
        let trash = dirs
            .tmp()
            .join(format!("rm-vm-{}-{}", st.id, std::process::id()));
        let moved = crate::owner_only::create_dir(&dirs.tmp())
            .and_then(|()| std::fs::rename(&dir.path, &trash));
        match moved {
            Ok(()) => {
                if let Err(e) = (VmDir { path: trash }).remove() {
                    tracing::warn!("VM {}: {e}", st.name);
                }
                reaped.push(st);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove dead VM {}: {e}", st.name),
        }
    }
    reaped
}

/// A short random VM id (12 hex digits).
pub fn new_id() -> String {
    let n: u64 = rand::random();
    format!("{:012x}", n & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dirs: &Dirs, name: &str, pid: u32) -> VmDir {
        let me = std::process::id();
        let start = crate::procfs::process_start(me).unwrap();
        let st: VmState = serde_json::from_value(serde_json::json!({
            "id": format!("{name}-id"), "name": name, "status": "running",
            "pid": pid, "pid_start": start, "vmm_pid": pid, "vmm_start": start,
            "backend": "qemu", "accel": "tcg", "image": "i", "image_digest": "d",
            "cpus": 1, "mem_mib": 512, "started_at": "2024-01-01T00:00:00Z",
            "health": null, "exit_code": null, "snapshot": "cache-x",
        }))
        .unwrap();
        let d = VmDir::new(dirs, &st.id);
        std::fs::create_dir_all(&d.path).unwrap();
        std::fs::write(d.path.join("console.log"), b"x").unwrap();
        d.write_state(&st).unwrap();
        d
    }

    #[test]
    fn reaping_removes_abandoned_vms_only_and_names_them() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path());
        let live = record(&dirs, "live", std::process::id());
        let gone = record(&dirs, "gone", u32::MAX);
        let reaped: Vec<String> = reap_abandoned(&dirs).into_iter().map(|s| s.name).collect();
        assert_eq!(reaped, ["gone"]);
        assert!(live.path.exists() && !gone.path.exists());
        assert_eq!(std::fs::read_dir(dirs.tmp()).unwrap().count(), 0);
        // Nothing left to reap: a second pass reports nothing.
        assert!(reap_abandoned(&dirs).is_empty());
        assert_eq!(list(&dirs).len(), 1);
    }

    #[test]
    fn a_live_vm_is_refused_without_force() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path());
        let d = record(&dirs, "live", std::process::id());
        let (_, st) = find(&dirs, "live").unwrap();
        assert!(matches!(
            remove(&dirs, &d, &st, None),
            Err(VmError::Running(_))
        ));
        assert!(d.path.exists());
    }

    /// One owner of several live VMs (`fcvm serve`) is never stopped for one of them: the
    /// force is refused before any signal (here the owner is this test process).
    #[test]
    fn force_is_refused_for_a_vm_whose_owner_owns_others() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path());
        let d = record(&dirs, "sbx-a", std::process::id());
        record(&dirs, "sbx-b", std::process::id());
        let (_, st) = find(&dirs, "sbx-a").unwrap();
        let e = remove(&dirs, &d, &st, Some(Duration::ZERO)).unwrap_err();
        assert!(matches!(e, VmError::SharedOwner { others: 1, .. }), "{e}");
        assert!(e.to_string().contains("one of 2 VMs"), "{e}");
        assert!(d.path.exists());
    }

    /// `rm --force` stops an owner with SIGTERM when it ends on it, and kills one that ignores
    /// it once the grace period is over.
    #[test]
    fn force_sends_sigterm_then_sigkill_after_the_grace() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path());
        for (script, signal) in [
            ("sleep 100", libc::SIGTERM),
            ("trap '' TERM; sleep 100 & wait; sleep 100", libc::SIGKILL),
        ] {
            let mut child = std::process::Command::new("sh")
                .args(["-c", script])
                .spawn()
                .unwrap();
            let pid = child.id();
            let d = record(&dirs, "owner", pid);
            let (_, mut st) = find(&dirs, "owner").unwrap();
            st.pid_start = crate::procfs::process_start(pid).unwrap();
            st.vmm_pid = None;
            if signal == libc::SIGKILL {
                // The shell must have set its trap before it is signalled.
                while !std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.strip_prefix("SigIgn:"))
                    .any(|m| {
                        u64::from_str_radix(m.trim(), 16).unwrap() & (1 << (libc::SIGTERM - 1)) != 0
                    })
                {
                    std::thread::yield_now();
                }
            }
            remove(&dirs, &d, &st, Some(Duration::from_millis(300))).unwrap();
            let status = child.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(signal)
            );
            assert!(!d.path.exists());
        }
    }
}
