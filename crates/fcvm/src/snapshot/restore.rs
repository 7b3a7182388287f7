//! Bringing a snapshot back as a new VM (DESIGN §4 chain, §5 memory):
//!
//! 1. the new VM's writable disk: a reflink/sparse copy of the snapshot's;
//! 2. QEMU with the same devices, RAM = the snapshot's RAM file mapped `share=off`
//!    (copy-on-write: clones share its pages through the page cache), `-incoming defer`;
//! 3. QMP: `x-ignore-shared`, `migrate-incoming` of the device state, wait for `completed`,
//!    `cont` (a restored VM comes up paused: its source was stopped when it was saved);
//! 4. the agent session: `Restored{epoch, plan}` → restore steps → `RestoreComplete{epoch}`.
//!
//! Any failing step kills the new VM and returns the error: no half-restored VM runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fcvm_proto::RestorePlan;
use serde_json::json;

use super::{Manifest, SnapshotError, DEVSTATE, RAM_FILE, RW_DISK};
use crate::session::Session;
use crate::vmm::qemu::qmp::Qmp;
use crate::vmm::{self, Memory, Vmm};

/// Failure bound for each step (a restore normally takes well under a second).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Restored {
    pub vm: Box<dyn Vmm>,
    pub session: Session,
}

/// Restores snapshot `m` (in `snap_dir`) as a new VM in `vm_dir`.
pub async fn restore(
    snap_dir: &Path,
    m: &Manifest,
    vm_dir: &Path,
    extra_args: Vec<String>,
    plan: RestorePlan,
    epoch: u64,
) -> Result<Restored, SnapshotError> {
    let err = |e: String| SnapshotError::Vmm(m.name.clone(), e);
    let rw = vm_dir.join(RW_DISK);
    let (src, dst) = (snap_dir.join(RW_DISK), rw.clone());
    tokio::task::spawn_blocking(move || crate::util::copy_sparse(&src, &dst))
        .await
        .expect("copy task")
        .map_err(super::io_err(&rw))?;
    let memory = Memory::File {
        path: snap_dir.join(RAM_FILE),
        shared: false,
    };
    let spec = m.vm_spec(vm_dir, rw, memory, extra_args);
    let t0 = std::time::Instant::now();
    let mut vm = vmm::start(m.backend, &spec).map_err(|e| err(e.to_string()))?;
    tracing::debug!("restore: disk copied, VMM started at {:?}", t0.elapsed());
    match resume(&mut *vm, snap_dir, vm_dir, m, plan, epoch, t0).await {
        Ok(session) => Ok(Restored { vm, session }),
        Err(e) => {
            vm.kill();
            Err(match crate::vmm::qemu::log_tail(vm_dir) {
                Some(l) => SnapshotError::Vmm(m.name.clone(), format!("{e}; qemu: {l}")),
                None => e,
            })
        }
    }
}

async fn resume(
    vm: &mut dyn Vmm,
    snap_dir: &Path,
    vm_dir: &Path,
    m: &Manifest,
    plan: RestorePlan,
    epoch: u64,
    t0: std::time::Instant,
) -> Result<Session, SnapshotError> {
    let name = m.name.clone();
    let err = |what: &str, e: String| SnapshotError::Vmm(name.clone(), format!("{what}: {e}"));
    let qmp_path = vm_dir.join(vmm::qemu::cmdline::QMP_SOCK);
    let mut qmp = Qmp::connect(&qmp_path, STEP_TIMEOUT)
        .await
        .map_err(|e| err("QMP", e.to_string()))?;
    tracing::debug!("restore: QMP up at {:?}", t0.elapsed());
    qmp.set_ignore_shared(true)
        .await
        .map_err(|e| err("QMP", e.to_string()))?;
    let dev: PathBuf = snap_dir.join(DEVSTATE);
    qmp.migrate_in_from(&dev)
        .await
        .map_err(|e| err("loading device state", e.to_string()))?;
    qmp.wait_migration(STEP_TIMEOUT)
        .await
        .map_err(|e| err("loading device state", e.to_string()))?;
    tracing::debug!("restore: device state loaded in {:?}", t0.elapsed());
    qmp.execute("cont", json!({}))
        .await
        .map_err(|e| err("resuming", e.to_string()))?;
    drop(qmp);
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
    .map_err(|e| err("restore handshake", e.to_string()))
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
    }
}
