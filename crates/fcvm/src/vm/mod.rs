//! A VM's record on disk: `vms/<id>/state.json`, always written atomically, and the truth
//! about it for `fcvm ls` even after a SIGKILL.
//!
//! A state file says what its owner last wrote; whether the owner (the `fcvm` process that runs
//! the VM) and its VMM still live is checked at read time against their pids *and* start times
//! (a recycled pid is not mistaken for ours). A VM whose owner is gone is reported `dead`, and
//! `fcvm rm NAME` removes its leftovers.

pub mod names;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::paths::Dirs;
use crate::vmm::{Accel, VmmKind};

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

/// What the owner last recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    Starting,
    Running,
    Stopping,
    Exited,
}

/// Health as the monitor last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub id: String,
    pub name: String,
    pub status: VmStatus,
    /// The fcvm process that owns the VM, and its start time (clock ticks since boot).
    pub pid: u32,
    pub pid_start: u64,
    pub vmm_pid: Option<u32>,
    pub vmm_start: Option<u64>,
    pub backend: VmmKind,
    pub accel: Accel,
    pub image: String,
    pub image_digest: String,
    pub cpus: u32,
    pub mem_mib: u32,
    pub started_at: DateTime<Utc>,
    pub health: Option<Health>,
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub network: Option<crate::network::NetworkInfo>,
    /// The snapshot this VM was restored from (such a snapshot cannot be removed meanwhile).
    #[serde(default)]
    pub snapshot: Option<String>,
}

impl VmState {
    /// Status as observed now: `dead` if the owner or the VMM is gone while the record says
    /// the VM should be alive.
    pub fn observed(&self) -> &'static str {
        let owner_alive = process_alive(self.pid, self.pid_start);
        let vmm_alive = match (self.vmm_pid, self.vmm_start) {
            (Some(p), Some(s)) => process_alive(p, s),
            _ => true,
        };
        match self.status {
            VmStatus::Exited => "exited",
            _ if !owner_alive || !vmm_alive => "dead",
            VmStatus::Starting => "starting",
            VmStatus::Running => "running",
            VmStatus::Stopping => "stopping",
        }
    }
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

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn process_alive(pid: u32, start: u64) -> bool {
    process_start(pid) == Some(start)
}

/// Removes a VM's leftovers. A VM whose owner still runs is refused unless `force`, in which
/// case its owner (and with it, through the parent-death signal, its VMM) is killed first.
pub fn remove(dir: &VmDir, st: &VmState, force: bool) -> Result<(), VmError> {
    let alive = matches!(st.observed(), "starting" | "running" | "stopping");
    if alive {
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

/// A short random VM id (12 hex digits).
pub fn new_id() -> String {
    let n: u64 = rand::random();
    format!("{:012x}", n & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_fake_start_is_not() {
        let me = std::process::id();
        let start = process_start(me).unwrap();
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
    }
}
