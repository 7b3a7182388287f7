//! Bringing a snapshot back as a new VM (docs/design.md §9 chain, §11 memory), through the
//! [`Vmm`] verbs only:
//!
//! 1. the new VM's writable disk and extra disks: reflink/sparse copies of the snapshot's;
//! 2. a VM with the same devices, RAM = the snapshot's RAM file mapped `share=off`
//!    (copy-on-write: clones share its pages through the page cache), waiting for its state;
//! 3. load the device state, resume (a restored VM comes up paused: its source was stopped
//!    when it was saved);
//! 4. the agent session: `Restored{epoch, plan}` → restore steps → `RestoreComplete{epoch}`.
//!
//! Any failing step kills the new VM and returns the error: no half-restored VM runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fcvm_proto::RestorePlan;

use super::{Manifest, SnapshotError, DEVSTATE, RAM_FILE, RW_DISK};
use crate::session::Session;
use crate::vmm::{Boot, Memory, Nic, StateScope, Vmm};

/// Failure bound for the agent's handshake (a restore normally takes well under a second).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Restored {
    pub vm: Arc<dyn Vmm>,
    pub session: Session,
}

/// Restores snapshot `m` (in `snap_dir`) as a new VM in `vm_dir` with network card `nic`.
pub async fn restore(
    snap_dir: &Path,
    m: &Manifest,
    vm_dir: &Path,
    nic: Option<Nic>,
    plan: RestorePlan,
    epoch: u64,
    boot: Boot<'_>,
) -> Result<Restored, SnapshotError> {
    let rw = vm_dir.join(RW_DISK);
    let files = std::iter::once(RW_DISK.to_string()).chain(m.disks.iter().map(|d| d.file.clone()));
    for f in files {
        let (src, dst) = (snap_dir.join(&f), vm_dir.join(&f));
        tokio::task::spawn_blocking(move || {
            crate::util::copy_sparse(&src, &dst).map_err(|e| (dst, e))
        })
        .await
        .expect("copy task")
        .map_err(|(p, e)| SnapshotError::Io(p, e))?;
    }
    let memory = Memory::File {
        path: snap_dir.join(RAM_FILE),
        shared: false,
    };
    let spec = m.vm_spec(vm_dir, rw, memory, nic);
    let t0 = std::time::Instant::now();
    let vm = boot(&spec).map_err(|e| SnapshotError::vmm(&m.name, "starting the VM", e, None))?;
    tracing::debug!("restore: disk copied, VMM started at {:?}", t0.elapsed());
    match resume(&*vm, snap_dir, vm_dir, m, plan, epoch, t0).await {
        Ok(session) => Ok(Restored { vm, session }),
        Err(e) => {
            vm.quit();
            Err(e)
        }
    }
}

/// Steps 3 and 4: the device state, then the agent's handshake.
async fn resume(
    vm: &dyn Vmm,
    snap_dir: &Path,
    vm_dir: &Path,
    m: &Manifest,
    plan: RestorePlan,
    epoch: u64,
    t0: std::time::Instant,
) -> Result<Session, SnapshotError> {
    let fail = |what, e| SnapshotError::vmm(&m.name, what, e, vm.last_message());
    vm.load_state(&snap_dir.join(DEVSTATE), StateScope::Devices)
        .await
        .map_err(|e| fail("loading the device state", e))?;
    tracing::debug!("restore: device state loaded in {:?}", t0.elapsed());
    vm.resume().await.map_err(|e| fail("resuming", e))?;
    tracing::debug!("restore: running at {:?}", t0.elapsed());
    Session::connect_restored(
        &vm.agent_socket(),
        epoch,
        plan,
        vm,
        STEP_TIMEOUT,
        Some(vm_dir.join("agent.log")),
    )
    .await
    .map_err(|e| SnapshotError::Handshake(m.name.clone(), e))
    .inspect(|_| tracing::debug!("restore: RestoreComplete at {:?}", t0.elapsed()))
}

/// A fresh restore plan: the host's clock, new entropy, and the new identity.
pub fn plan(hostname: Option<String>, network: Option<fcvm_proto::NetConfig>) -> RestorePlan {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed: [u8; 32] = rand::random();
    let mid: u128 = rand::random();
    RestorePlan {
        clock_unix_ns: now.as_nanos() as u64,
        random_seed: seed.to_vec(),
        hostname,
        machine_id: Some(format!("{mid:032x}")),
        network,
        keep_streams: vec![],
    }
}
