//! Virtual machine monitors behind one trait (DESIGN §1).
//!
//! Everything above this module talks to a [`Vmm`]: start a VM from a [`VmSpec`], learn where its
//! agent channel is, stop it. QEMU (`qemu/`) is the backend that runs everywhere (KVM when
//! `/dev/kvm` is usable, else TCG). Firecracker (KVM only) will implement the same trait.

pub mod qemu;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which VMM runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    Qemu,
    Firecracker,
}

impl std::fmt::Display for VmmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmmKind::Qemu => "qemu",
            VmmKind::Firecracker => "firecracker",
        })
    }
}

impl std::str::FromStr for VmmKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qemu" => Ok(VmmKind::Qemu),
            "firecracker" => Ok(VmmKind::Firecracker),
            _ => Err(format!(
                "unknown hypervisor {s:?} (expected qemu or firecracker)"
            )),
        }
    }
}

/// CPU virtualisation in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM if `/dev/kvm` opens read-write and is backed by hardware virtualisation
    /// (kvm_intel/kvm_amd), else TCG. `FCVM_ACCEL=tcg|kvm` forces one.
    ///
    /// Some sandboxes expose a `/dev/kvm` from `kvm_pvm` (a paravirtual KVM without VMX/SVM):
    /// it opens and creates VMs, but Debian's kernel dies early in it with "KVM internal
    /// error … emulation failure" (seen here), so only the hardware modules count.
    pub fn detect() -> Accel {
        match std::env::var("FCVM_ACCEL").as_deref() {
            Ok("tcg") => return Accel::Tcg,
            Ok("kvm") => return Accel::Kvm,
            _ => {}
        }
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
            && ["kvm_intel", "kvm_amd"]
                .iter()
                .any(|m| std::path::Path::new("/sys/module").join(m).exists());
        if usable {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// A block device handed to the guest.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Where guest RAM lives (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    /// Plain anonymous memory: the VM can never be snapshotted.
    Anonymous,
    /// A file the VM maps. `shared`: writes go to the file (a VM that may be snapshotted);
    /// not shared: copy-on-write over a snapshot's RAM file (restores and clones).
    File { path: PathBuf, shared: bool },
}

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The VM's own directory (sockets, logs, disks live here).
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cpus: u32,
    pub mem_mib: u32,
    pub disks: Vec<Disk>,
    pub accel: Accel,
    /// Backend-specific extra arguments (network devices from `network::setup`).
    pub extra_args: Vec<String>,
    pub memory: Memory,
    /// Start paused, waiting for a snapshot's device state (QEMU `-incoming defer`).
    pub incoming: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0} not found: install it with `apt-get install {1}`")]
    Missing(String, String),
    #[error("Cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("{0} backend needs KVM, and /dev/kvm is not usable here")]
    NoKvm(VmmKind),
    #[error("{0} backend is not available in this build")]
    Unsupported(VmmKind),
    #[error("VMM control failed: {0}")]
    Control(String),
}

/// A started VM. Dropping it kills the VMM process.
pub trait Vmm: Send {
    fn kind(&self) -> VmmKind;
    /// Process id of the VMM.
    fn pid(&self) -> u32;
    /// Unix socket the host connects to for the agent session.
    fn agent_socket(&self) -> PathBuf;
    /// Whether the VMM has exited; returns its status text once it has.
    fn try_exited(&mut self) -> Option<String>;
    /// Kills the VMM and waits for it.
    fn kill(&mut self);
}

/// Starts a VM with the chosen backend.
pub fn start(kind: VmmKind, spec: &VmSpec) -> Result<Box<dyn Vmm>, VmmError> {
    match kind {
        VmmKind::Qemu => Ok(Box::new(qemu::Qemu::start(spec)?)),
        VmmKind::Firecracker => {
            if spec.accel != Accel::Kvm {
                return Err(VmmError::NoKvm(kind));
            }
            Err(VmmError::Unsupported(kind))
        }
    }
}
