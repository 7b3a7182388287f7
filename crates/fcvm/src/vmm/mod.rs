//! Virtual machine monitors behind one trait (docs/design.md §4).
//!
//! Everything above this module talks to a [`Vmm`]: [`boot`] starts a VM from a [`VmSpec`]
//! (typed devices: disks, a NIC, where RAM lives), and the trait's verbs are every lifecycle
//! step fcvm takes — pause, resume, save state, load state, quit. No code outside a backend's
//! own directory builds or parses its command line or speaks its control protocol: QEMU's
//! arguments are rendered in `qemu/cmdline.rs` and QMP stays in `qemu/`. A second backend is
//! one more module here and one more arm in [`boot`].
//!
//! QEMU (`qemu/`) is the one backend: KVM when `/dev/kvm` is usable, else TCG. Firecracker
//! (KVM only) is not offered: no machine that builds fcvm can run it (docs/design.md §2).

#[cfg(test)]
pub mod double;
pub mod qemu;

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Which VMM runs a VM (recorded in state and snapshot manifests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    Qemu,
}

impl std::fmt::Display for VmmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmmKind::Qemu => "qemu",
        })
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
                .any(|m| Path::new("/sys/module").join(m).exists());
        if usable {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// The guest kernel's fixed arguments, whatever the backend (see [`kernel_args`] for the
/// whole line). Part of the image-cache key: a restored snapshot runs a kernel that booted
/// with them.
///
/// `lsm=`: Debian's kernel also enables AppArmor and TOMOYO, whose hooks run on every exec
/// and open (TOMOYO computes the path of each executable). No policy is ever loaded in an
/// fcvm guest — the VM is the isolation boundary; crun applies namespaces, capabilities and
/// seccomp — so they only cost: ~380 of the ~18,400 translation blocks of a cached start
/// under TCG. Landlock (unprivileged sandboxing), Yama, lockdown and BPF stay.
///
/// The rest quiets background work that a restore inherits (timers that fire in its first
/// few hundred ms: ~3 % of a cached start's blocks, measured over several snapshots):
/// `tsc=reliable` (QEMU's TSC is the guest's only good clock: the clocksource watchdog, on a
/// slow host, marks it unstable and falls back to jiffies — seen right after restores under
/// load), `nowatchdog` (no soft-lockup reports when the host, not the guest, stalls),
/// `psi=0` (pressure accounting on every context switch; nothing in a guest reads it),
/// `cgroup.memory=nokmem` (kernel memory charged to cgroups on every allocation; fcvm sets no
/// container memory limit — the VM's memory is the limit) and no proactive compaction.
pub const KERNEL_ARGS: &str = "console=ttyS0 quiet panic=-1 reboot=t \
     lsm=landlock,lockdown,yama,bpf tsc=reliable nowatchdog psi=0 cgroup.memory=nokmem \
     sysctl.vm.compaction_proactiveness=0";

/// The guest kernel's arguments under `accel`: [`KERNEL_ARGS`], and under TCG
/// `mitigations=off`. An emulated CPU executes nothing speculatively, so Spectre/Meltdown
/// mitigations protect against nothing there, and they cost the most where TCG is weakest:
/// retpolines turn every indirect call and return-stack refill into extra translated blocks
/// and hash-table lookups (QEMU's `qht_lookup` was the hottest host function of ten pods
/// starting at once). Under KVM the guest runs on a real, speculating CPU: they stay.
/// Part of the image-cache key (with the accelerator).
pub fn kernel_args(accel: Accel) -> String {
    match accel {
        Accel::Kvm => KERNEL_ARGS.to_string(),
        Accel::Tcg => format!("{KERNEL_ARGS} mitigations=off"),
    }
}

/// The CPU QEMU emulates under TCG (part of the image-cache key): its default, plus `arat`
/// (the APIC timer keeps running in idle states). Without it Linux gives the local APIC
/// timer `C3STOP`, cannot run it one-shot without a broadcast timer (microvm has no HPET),
/// and stays periodic: an idle guest took 250 timer interrupts a second, each a few hundred
/// microseconds of emulation. With it the idle guest stops its tick.
pub const TCG_CPU: &str = "qemu64,+arat";

/// The file in a VM's directory that every backend writes the guest's serial console to.
pub const CONSOLE_LOG: &str = "console.log";
/// The guest RAM file of a VM (its directory's) or of a snapshot: `memory-backend-file`.
pub const RAM_FILE: &str = "ram";

/// A block device handed to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
    /// The device's serial, which the guest reads to tell it from the others (`--disk`).
    pub serial: Option<String>,
}

/// Where guest RAM lives (docs/design.md §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    /// Plain anonymous memory: the VM can never be snapshotted.
    Anonymous,
    /// A file the VM maps. `shared`: writes go to the file (a VM that may be snapshotted);
    /// not shared: copy-on-write over a snapshot's RAM file (restores and clones).
    File { path: PathBuf, shared: bool },
}

/// One port forwarded from the host into the guest by a user-mode network backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostForward {
    pub udp: bool,
    /// Host address to bind (None: every address).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
}

/// User-mode networking inside the VMM (QEMU's slirp): the guest's address plan and the
/// forwarded ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNet {
    /// The guest network, e.g. 10.0.2.0/24.
    pub net: std::net::Ipv4Addr,
    pub prefix: u8,
    /// The host as seen from the guest (connections to it reach the host's loopback).
    pub host: std::net::Ipv4Addr,
    /// The DNS forwarder's address.
    pub dns: std::net::Ipv4Addr,
    /// The guest's own address.
    pub guest: std::net::Ipv4Addr,
    pub forwards: Vec<HostForward>,
}

/// The back end of the guest's network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetDev {
    /// User-mode networking in the VMM itself.
    User(UserNet),
    /// Ethernet frames over a Unix stream socket (passt listens on it).
    Stream { socket: PathBuf },
    /// A host tap device (bridged networking; the tap lives in the VM's netns).
    Tap { ifname: String },
    /// A back end that reaches nothing: the same device for a VM that never runs a guest
    /// instruction (a snapshot's rehydrating helper).
    Inert,
}

/// The guest's one network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub netdev: NetDev,
    pub mac: String,
}

/// What kind of network back end a VM has. Part of snapshot keys: user-mode networking puts
/// its own section into the device state, so a snapshot restores only into a VM whose NIC
/// has the same kind of back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetKind {
    None,
    User,
    Stream,
    Tap,
}

impl NetKind {
    pub fn of(nic: Option<&Nic>) -> NetKind {
        match nic.map(|n| &n.netdev) {
            None | Some(NetDev::Inert) => NetKind::None,
            Some(NetDev::User(_)) => NetKind::User,
            Some(NetDev::Stream { .. }) => NetKind::Stream,
            Some(NetDev::Tap { .. }) => NetKind::Tap,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetKind::None => "none",
            NetKind::User => "user",
            NetKind::Stream => "stream",
            NetKind::Tap => "tap",
        }
    }
}

impl Nic {
    /// The same card with an inert back end (see [`NetDev::Inert`]).
    pub fn inert(&self) -> Nic {
        Nic {
            netdev: NetDev::Inert,
            mac: self.mac.clone(),
        }
    }
}

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kind: VmmKind,
    /// The VM's own directory: the backend keeps its sockets and logs here.
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cpus: u32,
    pub mem_mib: u32,
    pub disks: Vec<Disk>,
    pub accel: Accel,
    pub nic: Option<Nic>,
    pub memory: Memory,
    /// Start paused, waiting for [`Vmm::load_state`] (a snapshot's device state).
    pub incoming: bool,
}

/// What a saved state holds besides the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateScope {
    /// Devices only: RAM stays in the VM's shared RAM file (a snapshot's usual layout).
    Devices,
    /// Devices and all of RAM (a VM whose RAM is not a file of its own).
    WithRam,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0} not found: install it with `apt-get install {1}`")]
    Missing(String, &'static str),
    #[error("Cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("Cannot {0} the VM")]
    Control(
        &'static str,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
}

/// A boxed future returned by [`Vmm`]'s verbs (the trait is used as `dyn Vmm`).
pub type VmmFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, VmmError>> + Send + 'a>>;

/// A started VM. Its verbs take `&self`, so the owner can share it (`Arc<dyn Vmm>`) with the
/// tasks that snapshot it. Dropping the last reference kills the VMM process.
pub trait Vmm: Send + Sync {
    fn kind(&self) -> VmmKind;
    /// Process id of the VMM.
    fn pid(&self) -> u32;
    /// Unix socket the host connects to for the agent session.
    fn agent_socket(&self) -> PathBuf;
    /// Whether the VMM has exited; returns its status text once it has.
    fn try_exited(&self) -> Option<String>;
    /// Stops the guest's CPUs; devices and RAM keep their state.
    fn pause(&self) -> VmmFuture<'_, ()>;
    /// Runs the guest's CPUs again (also the last step of loading a state).
    fn resume(&self) -> VmmFuture<'_, ()>;
    /// Writes the paused VM's state into a new file at `path` and returns once it is whole.
    fn save_state<'a>(&'a self, path: &'a Path, scope: StateScope) -> VmmFuture<'a, ()>;
    /// Loads a state written by [`Vmm::save_state`] into a VM booted with
    /// [`VmSpec::incoming`]; the VM stays paused until [`Vmm::resume`].
    fn load_state<'a>(&'a self, path: &'a Path, scope: StateScope) -> VmmFuture<'a, ()>;
    /// Kills the VMM and waits for it.
    fn quit(&self);
    /// The VMM's own last words (its error message), for a failure's context.
    fn last_message(&self) -> Option<String>;
}

/// How a caller starts VMs: [`boot`], or a test double in unit tests of the logic above.
pub type Boot<'a> = &'a (dyn Fn(&VmSpec) -> Result<Arc<dyn Vmm>, VmmError> + Sync);

/// Checks that `kind` can run here (its binary is installed).
pub fn probe(kind: VmmKind) -> Result<(), VmmError> {
    match kind {
        VmmKind::Qemu => qemu::find_binary().map(|_| ()),
    }
}

/// Boots a VM with the backend `spec.kind`.
pub fn boot(spec: &VmSpec) -> Result<Arc<dyn Vmm>, VmmError> {
    match spec.kind {
        VmmKind::Qemu => Ok(Arc::new(qemu::Qemu::start(spec)?)),
    }
}
