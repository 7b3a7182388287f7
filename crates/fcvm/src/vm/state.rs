//! What a VM's `state.json` holds ([`VmState`]) and what is true of the VM now ([`Observed`]).
//!
//! The record says what its owner (the `fcvm` process that runs the VM) last wrote; whether
//! the owner and its VMM still live is checked at read time against their pids *and* start
//! times ([`crate::procfs`]), so a VM whose owner was SIGKILLed is seen `dead` at once. Code
//! asks the observed state's predicates ([`Observed::can_exec`], [`Observed::can_snapshot`],
//! [`Observed::is_alive`]), never its name.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::procfs::process_alive;
use crate::vmm::{Accel, VmmKind};

/// What the owner last recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    Starting,
    Running,
    Stopping,
    Exited,
}

/// A VM's status as observed now: the recorded [`VmStatus`], or `Dead` when the record says
/// the VM should be alive but its owner or VMM is gone. Shown by `fcvm ls` (and as
/// `"observed"` in `ls --json`) by the lowercase name of its variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Observed {
    Starting,
    Running,
    Stopping,
    Exited,
    Dead,
}

impl Observed {
    /// The owner and its VMM run (whatever they are doing): the VM holds its name, its
    /// snapshot and its resources.
    pub fn is_alive(self) -> bool {
        matches!(
            self,
            Observed::Starting | Observed::Running | Observed::Stopping
        )
    }

    /// Execs are served only once the container runs and until the VM starts stopping.
    pub fn can_exec(self) -> bool {
        self == Observed::Running
    }

    /// A snapshot needs the VM's owner to pause a running VM.
    pub fn can_snapshot(self) -> bool {
        self == Observed::Running
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Observed::Starting => "starting",
            Observed::Running => "running",
            Observed::Stopping => "stopping",
            Observed::Exited => "exited",
            Observed::Dead => "dead",
        }
    }
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str: `ls` aligns its columns with width specifiers.
        f.pad(self.as_str())
    }
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
    /// `--label K=V` (podman's): shown and filtered on by `fcvm ls`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl VmState {
    /// Whether this VM has label `key` (with `value`, if given): `ls --filter label=K[=V]`.
    pub fn has_label(&self, key: &str, value: Option<&str>) -> bool {
        match (self.labels.get(key), value) {
            (Some(v), Some(want)) => v == want,
            (found, None) => found.is_some(),
            (None, Some(_)) => false,
        }
    }

    /// Whether the owner recorded in this state still runs.
    pub fn owner_alive(&self) -> bool {
        process_alive(self.pid, self.pid_start)
    }

    /// Whether the VMM recorded in this state still runs (`false` if none was recorded).
    pub fn vmm_alive(&self) -> bool {
        match (self.vmm_pid, self.vmm_start) {
            (Some(p), Some(s)) => process_alive(p, s),
            _ => false,
        }
    }

    /// Status as observed now: `Dead` if the owner or the VMM is gone while the record says
    /// the VM should be alive.
    pub fn observed(&self) -> Observed {
        // Before the VMM is recorded, the owner alone decides.
        let vmm_alive = self.vmm_pid.is_none() || self.vmm_alive();
        match self.status {
            VmStatus::Exited => Observed::Exited,
            _ if !self.owner_alive() || !vmm_alive => Observed::Dead,
            VmStatus::Starting => Observed::Starting,
            VmStatus::Running => Observed::Running,
            VmStatus::Stopping => Observed::Stopping,
        }
    }

    /// Nothing of this VM runs any more, and nothing will clean up after it: its owner is gone
    /// (killed, or it crashed before removing its directory) and so is its VMM.
    pub fn abandoned(&self) -> bool {
        !self.owner_alive() && !self.vmm_alive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: VmStatus, pid: u32, vmm: Option<u32>) -> VmState {
        let start = |p| crate::procfs::process_start(p).unwrap_or(0);
        VmState {
            id: "0123456789ab".into(),
            name: "web".into(),
            status,
            pid,
            pid_start: start(pid),
            vmm_pid: vmm,
            vmm_start: vmm.map(start),
            backend: VmmKind::Qemu,
            accel: Accel::Tcg,
            image: "builtin:busybox".into(),
            image_digest: String::new(),
            cpus: 1,
            mem_mib: 512,
            started_at: Utc::now(),
            health: None,
            exit_code: None,
            network: None,
            snapshot: None,
            labels: [("app".to_string(), "web".to_string())].into(),
        }
    }

    #[test]
    fn labels_filter() {
        let st = state(VmStatus::Running, std::process::id(), None);
        assert!(st.has_label("app", None));
        assert!(st.has_label("app", Some("web")));
        assert!(!st.has_label("app", Some("db")));
        assert!(!st.has_label("tier", None));
    }

    const GONE: u32 = u32::MAX;

    #[test]
    fn observed_follows_the_record_while_owner_and_vmm_live() {
        let me = std::process::id();
        for (status, want) in [
            (VmStatus::Starting, Observed::Starting),
            (VmStatus::Running, Observed::Running),
            (VmStatus::Stopping, Observed::Stopping),
            (VmStatus::Exited, Observed::Exited),
        ] {
            assert_eq!(state(status, me, Some(me)).observed(), want);
            assert_eq!(state(status, me, None).observed(), want);
        }
    }

    #[test]
    fn a_gone_owner_or_vmm_is_dead_and_only_both_gone_is_abandoned() {
        let me = std::process::id();
        let running = |pid, vmm| state(VmStatus::Running, pid, vmm);
        assert_eq!(running(GONE, Some(me)).observed(), Observed::Dead);
        assert_eq!(running(me, Some(GONE)).observed(), Observed::Dead);
        assert_eq!(running(GONE, None).observed(), Observed::Dead);
        assert!(!running(GONE, Some(me)).abandoned());
        assert!(!running(me, Some(GONE)).abandoned());
        assert!(running(GONE, Some(GONE)).abandoned());
        assert!(running(GONE, None).abandoned());
        assert!(state(VmStatus::Exited, GONE, None).abandoned());
        assert!(!running(me, Some(me)).abandoned());
    }

    #[test]
    fn predicates_and_names() {
        use Observed::*;
        let all = [Starting, Running, Stopping, Exited, Dead];
        let alive: Vec<_> = all.into_iter().filter(|o| o.is_alive()).collect();
        assert_eq!(alive, [Starting, Running, Stopping]);
        let exec: Vec<_> = all.into_iter().filter(|o| o.can_exec()).collect();
        assert_eq!(exec, [Running]);
        let snap: Vec<_> = all.into_iter().filter(|o| o.can_snapshot()).collect();
        assert_eq!(snap, [Running]);
        // ls and ls --json show the names fcvm always showed.
        for o in all {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
            assert_eq!(format!("{o:<9}|"), format!("{:<9}|", o.as_str()));
        }
        assert_eq!(Dead.to_string(), "dead");
    }
}
