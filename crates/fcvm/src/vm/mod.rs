//! A VM's record on disk: `vms/<id>/state.json`, always written atomically, and the truth
//! about it for `fcvm ls` even after a SIGKILL.
//!
//! A state file says what its owner (the `fcvm` process that runs the VM) last wrote; what is
//! true now is [`VmState::observed`] ([`state`]). A VM whose owner is gone is `dead`: `fcvm rm
//! NAME` removes its leftovers, and `fcvm ls` and `fcvm snapshots prune` reap every VM nothing
//! runs of any more ([`reap_abandoned`]), so a killed run never keeps a name or a snapshot.

pub mod names;
pub mod state;

use std::path::PathBuf;

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

/// Removes a VM's leftovers. A VM whose owner still runs is refused unless `force`, in which
/// case its owner (and with it, through the parent-death signal, its VMM) is killed first.
pub fn remove(dir: &VmDir, st: &VmState, force: bool) -> Result<(), VmError> {
    if st.observed().is_alive() {
        if !force {
            return Err(VmError::Running(st.name.clone()));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(st.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
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
        assert!(matches!(remove(&d, &st, false), Err(VmError::Running(_))));
        assert!(d.path.exists());
    }
}
