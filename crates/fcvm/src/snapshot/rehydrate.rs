//! Turning a full migration stream (RAM inside) into the snapshot layout (RAM file + device
//! state), for snapshots of VMs that were themselves restored (see `create.rs`).
//!
//! A helper VM with the snapshot's devices starts paused (waiting for its state) with a fresh,
//! sparse, *shared* RAM file; loading the stream writes the guest's pages into that file; the
//! helper then saves its device state with `x-ignore-shared` and is killed. It never runs a
//! single guest instruction, and its network card's back end is inert ([`NetDev::Inert`]), so
//! nothing of the source VM is touched.
//!
//! [`NetDev::Inert`]: crate::vmm::NetDev::Inert

use std::path::Path;

use super::{io_err, Manifest, SnapshotError, DEVSTATE, RAM_FILE, RW_DISK};
use crate::vmm::{Boot, Memory, Nic, StateScope};

/// The full stream, kept in the temp snapshot directory until rehydrated.
pub const FULL_STREAM: &str = "full-stream";

/// Turns `dir/FULL_STREAM` into `dir/RAM_FILE` + `dir/DEVSTATE` with a helper VM that has
/// the snapshot's devices (`nic` with an inert back end).
pub async fn rehydrate(
    dir: &Path,
    m: &Manifest,
    nic: Option<&Nic>,
    boot: Boot<'_>,
) -> Result<(), SnapshotError> {
    let ram = dir.join(RAM_FILE);
    crate::owner_only::create_file(&ram)
        .and_then(|f| f.set_len((m.mem_mib as u64) << 20))
        .map_err(io_err(&ram))?;
    let helper_dir = dir.join("helper");
    crate::owner_only::create_dir(&helper_dir).map_err(io_err(&helper_dir))?;
    let memory = Memory::File {
        path: ram.clone(),
        shared: true,
    };
    let spec = m.vm_spec(&helper_dir, dir.join(RW_DISK), memory, nic.map(Nic::inert));
    let fail = |what, e, vm: Option<&dyn crate::vmm::Vmm>| {
        SnapshotError::vmm(&m.name, what, e, vm.and_then(|v| v.last_message()))
    };
    let vm = boot(&spec).map_err(|e| fail("starting the rehydrating helper", e, None))?;
    let r = async {
        vm.load_state(&dir.join(FULL_STREAM), StateScope::WithRam)
            .await
            .map_err(|e| fail("loading the full stream", e, Some(&*vm)))?;
        vm.save_state(&dir.join(DEVSTATE), StateScope::Devices)
            .await
            .map_err(|e| fail("saving the device state", e, Some(&*vm)))
    }
    .await;
    vm.quit();
    if std::env::var_os("FCVM_KEEP_HELPER").is_none() {
        let _ = std::fs::remove_dir_all(&helper_dir);
    }
    let _ = std::fs::remove_file(dir.join(FULL_STREAM));
    r
}
