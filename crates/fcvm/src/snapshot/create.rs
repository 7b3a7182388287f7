//! Taking a snapshot of a running VM (docs/design.md §10), through the [`Vmm`] verbs only:
//!
//! 1. lock the snapshot's name (two writers never interleave);
//! 2. pause the VM; save its device state into a temp directory ([`StateScope::Devices`]:
//!    RAM is not in the stream, it is the VM's RAM file);
//! 3. while the VM is paused, copy its RAM file, writable disk and extra disks (reflink or
//!    sparse copy):
//!    the VM goes on writing into its own files after it resumes, the snapshot's stay frozen;
//! 4. resume (on every path: a failed snapshot never leaves the VM paused);
//! 5. write the manifest and rename the directory into place (replacing an older snapshot of
//!    the same name only once the new one is complete).
//!
//! A VM that was itself restored has no RAM file of its own: it maps its snapshot's RAM
//! copy-on-write, so `x-ignore-shared` does not apply and its changed pages exist only in
//! QEMU's memory. Its snapshot is taken as a full migration stream (step 2-3, RAM inside),
//! then *rehydrated* after the VM resumed: a paused helper VM with the same devices loads
//! that stream into a fresh shared RAM file and saves the device state alone, giving the
//! same layout as any other snapshot (so its clones share pages too).

use std::path::Path;

use super::{io_err, FileSum, Manifest, SnapshotError, DEVSTATE, MANIFEST, RAM_FILE, RW_DISK};
use crate::paths::Dirs;
use crate::vmm::{Boot, Nic, StateScope, Vmm};

/// Snapshots the running `vm` (its directory `vm_dir`) as described by `m` (name, kind and VM
/// facts filled in by the caller); returns the manifest as written. `nic` is the VM's network
/// card (a rehydrating helper needs the same devices; its back end is made inert). `boot`
/// starts that helper (`vmm::boot`; a test double in unit tests).
pub async fn create(
    dirs: &Dirs,
    vm: &dyn Vmm,
    vm_dir: &Path,
    mut m: Manifest,
    nic: Option<&Nic>,
    boot: Boot<'_>,
) -> Result<Manifest, SnapshotError> {
    super::validate_name(&m.name)?;
    let name = m.name.clone();
    crate::owner_only::create_dir(&dirs.locks()).map_err(io_err(&dirs.locks()))?;
    let lock_path = dirs.locks().join(format!("snapshot-{name}.lock"));
    let lock = crate::owner_only::create_file(&lock_path).map_err(io_err(&lock_path))?;
    lock.try_lock()
        .map_err(|_| SnapshotError::Busy(name.clone()))?;
    let tmp = crate::util::temp_dir_in(&dirs.tmp(), "snap.").map_err(io_err(&dirs.tmp()))?;
    let vmm_err = |what| {
        let name = name.clone();
        move |e| SnapshotError::vmm(&name, what, e, vm.last_message())
    };

    let own_ram = vm_dir.join(RAM_FILE).exists();
    vm.pause().await.map_err(vmm_err("pausing the VM"))?;
    let saved = save_paused(vm, vm_dir, &m.disks, tmp.path(), &name, own_ram).await;
    // On every path: a failed snapshot never leaves the VM paused.
    let resumed = vm.resume().await.map_err(vmm_err("resuming the VM"));
    saved?;
    resumed?;
    if !own_ram {
        super::rehydrate::rehydrate(tmp.path(), &m, nic, boot).await?;
    }

    let disks = m.disks.iter().map(|d| (d.file.as_str(), false));
    let files: Vec<(&str, bool)> = [(DEVSTATE, true), (RAM_FILE, false), (RW_DISK, false)]
        .into_iter()
        .chain(disks)
        .collect();
    let mut sums = vec![];
    for (f, sum) in files {
        let p = tmp.path().join(f);
        let size = std::fs::metadata(&p).map_err(io_err(&p))?.len();
        let sha256 = if sum {
            Some(crate::util::sha256_file(&p).map_err(io_err(&p))?)
        } else {
            None
        };
        sums.push(FileSum {
            name: f.into(),
            size,
            sha256,
        });
    }
    m.files = sums;
    let mpath = tmp.path().join(MANIFEST);
    crate::util::write_atomic(&mpath, &serde_json::to_vec_pretty(&m).expect("manifest"))
        .map_err(io_err(&mpath))?;
    publish(dirs, tmp, &name)?;
    drop(lock);
    Ok(m)
}

async fn save_paused(
    vm: &dyn Vmm,
    vm_dir: &Path,
    disks: &[crate::disks::DiskRecord],
    out: &Path,
    name: &str,
    own_ram: bool,
) -> Result<(), SnapshotError> {
    // A restored VM's RAM is not a file of its own: its full stream (RAM inside) is written,
    // in the format the rehydrating helper reads.
    let (dev, scope) = if own_ram {
        (out.join(DEVSTATE), StateScope::Devices)
    } else {
        (out.join(super::rehydrate::FULL_STREAM), StateScope::WithRam)
    };
    vm.save_state(&dev, scope)
        .await
        .map_err(|e| SnapshotError::vmm(name, "saving the state", e, vm.last_message()))?;
    let files: &[&str] = if own_ram {
        &[RAM_FILE, RW_DISK]
    } else {
        &[RW_DISK]
    };
    let files = files.iter().map(|f| (vm_dir.join(f), out.join(f)));
    // Extra disks too (a PATH disk from its host file): a snapshot and its clones never
    // write to the source VM's.
    let disks = disks.iter().map(|d| (d.path_in(vm_dir), out.join(&d.file)));
    for (src, dst) in files.chain(disks) {
        tokio::task::spawn_blocking(move || {
            crate::util::copy_sparse(&src, &dst).map_err(|e| (dst, e))
        })
        .await
        .expect("copy task")
        .map_err(|(p, e)| SnapshotError::Io(p, e))?;
    }
    Ok(())
}

/// Renames the finished snapshot into place; an older one of the same name is replaced only
/// now, so a failed save leaves it intact.
fn publish(dirs: &Dirs, tmp: tempfile::TempDir, name: &str) -> Result<(), SnapshotError> {
    let dest = super::dir(dirs, &super::validate_name(name)?);
    crate::owner_only::create_dir(&dirs.snapshots()).map_err(io_err(&dirs.snapshots()))?;
    let staged = tmp.keep();
    if dest.exists() {
        let old = dirs
            .tmp()
            .join(format!("old-{name}-{}", std::process::id()));
        std::fs::rename(&dest, &old).map_err(io_err(&dest))?;
        let r = std::fs::rename(&staged, &dest).map_err(io_err(&dest));
        if r.is_err() {
            let _ = std::fs::rename(&old, &dest);
            let _ = std::fs::remove_dir_all(&staged);
            return r;
        }
        let _ = std::fs::remove_dir_all(&old);
        return Ok(());
    }
    std::fs::rename(&staged, &dest).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        SnapshotError::Io(dest, e)
    })
}
