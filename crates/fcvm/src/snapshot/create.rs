//! Taking a snapshot of a running QEMU VM (DESIGN §5):
//!
//! 1. lock the snapshot's name (two writers never interleave);
//! 2. QMP `stop`; migrate the device state with `x-ignore-shared` into a temp directory
//!    (RAM is not in the stream: it is the VM's RAM file);
//! 3. while the VM is paused, copy its RAM file and writable disk (reflink or sparse copy):
//!    the VM goes on writing into its own files after it resumes, the snapshot's stay frozen;
//! 4. QMP `cont` (on every path: a failed snapshot never leaves the VM paused);
//! 5. write the manifest and rename the directory into place (replacing an older snapshot of
//!    the same name only once the new one is complete).
//!
//! A VM that was itself restored has no RAM file of its own: it maps its snapshot's RAM
//! copy-on-write, so `x-ignore-shared` does not apply and its changed pages exist only in
//! QEMU's memory. Its snapshot is taken as a full migration stream (step 2-3, RAM inside),
//! then *rehydrated* after the VM resumed: a paused helper QEMU with the same devices loads
//! that stream into a fresh shared RAM file and saves the device state alone, giving the
//! same layout as any other snapshot (so its clones share pages too).

use std::path::Path;
use std::time::Duration;

use fs2::FileExt;
use serde_json::json;

use super::{io_err, FileSum, Manifest, SnapshotError, DEVSTATE, MANIFEST, RAM_FILE, RW_DISK};
use crate::paths::Dirs;
use crate::vmm::qemu::qmp::Qmp;

/// Bound on saving the device state (it is ~60 KB: this only ends a hung QEMU).
const SAVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Snapshots the VM in `vm_dir` as described by `m` (name, kind and VM facts filled in by the
/// caller); returns the manifest as written.
/// `net_args` are the VM's network device arguments (a rehydrating helper needs the same
/// devices; its backends are replaced by inert ones).
pub async fn create(
    dirs: &Dirs,
    vm_dir: &Path,
    mut m: Manifest,
    net_args: &[String],
) -> Result<Manifest, SnapshotError> {
    super::validate_name(&m.name)?;
    let name = m.name.clone();
    std::fs::create_dir_all(dirs.locks()).map_err(io_err(&dirs.locks()))?;
    let lock_path = dirs.locks().join(format!("snapshot-{name}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    lock.try_lock_exclusive()
        .map_err(|_| SnapshotError::Busy(name.clone()))?;
    let tmp = crate::util::temp_dir_in(&dirs.tmp(), "snap.").map_err(io_err(&dirs.tmp()))?;
    let vmm_err =
        |e: crate::vmm::qemu::qmp::QmpError| SnapshotError::Vmm(name.clone(), e.to_string());

    let mut qmp = Qmp::connect(
        &vm_dir.join(crate::vmm::qemu::cmdline::QMP_SOCK),
        Duration::from_secs(10),
    )
    .await
    .map_err(vmm_err)?;
    let own_ram = vm_dir.join(RAM_FILE).exists();
    qmp.execute("stop", json!({})).await.map_err(vmm_err)?;
    let saved = save_paused(&mut qmp, vm_dir, tmp.path(), &name, own_ram).await;
    let resumed = qmp.execute("cont", json!({})).await.map_err(vmm_err);
    drop(qmp);
    saved?;
    resumed?;
    if !own_ram {
        super::rehydrate::rehydrate(tmp.path(), &m, net_args).await?;
    }

    m.files = vec![];
    for (f, sum) in [(DEVSTATE, true), (RAM_FILE, false), (RW_DISK, false)] {
        let p = tmp.path().join(f);
        let size = std::fs::metadata(&p).map_err(io_err(&p))?.len();
        let sha256 = if sum {
            Some(crate::util::sha256_file(&p).map_err(io_err(&p))?)
        } else {
            None
        };
        m.files.push(FileSum {
            name: f.into(),
            size,
            sha256,
        });
    }
    let mpath = tmp.path().join(MANIFEST);
    crate::util::write_atomic(&mpath, &serde_json::to_vec_pretty(&m).expect("manifest"))
        .map_err(io_err(&mpath))?;
    publish(dirs, tmp, &name)?;
    drop(lock);
    Ok(m)
}

async fn save_paused(
    qmp: &mut Qmp,
    vm_dir: &Path,
    out: &Path,
    name: &str,
    own_ram: bool,
) -> Result<(), SnapshotError> {
    let vmm_err =
        |e: crate::vmm::qemu::qmp::QmpError| SnapshotError::Vmm(name.into(), e.to_string());
    // A restored VM's RAM is not shared: its full stream is written without the capability,
    // in the format the rehydrating helper reads.
    qmp.set_ignore_shared(own_ram).await.map_err(vmm_err)?;
    let dev = out.join(if own_ram {
        DEVSTATE
    } else {
        super::rehydrate::FULL_STREAM
    });
    qmp.migrate_to(&dev).await.map_err(vmm_err)?;
    qmp.wait_migration(SAVE_TIMEOUT).await.map_err(vmm_err)?;
    let files: &[&str] = if own_ram {
        &[RAM_FILE, RW_DISK]
    } else {
        &[RW_DISK]
    };
    for f in files {
        let (src, dst) = (vm_dir.join(f), out.join(f));
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
    std::fs::create_dir_all(dirs.snapshots()).map_err(io_err(&dirs.snapshots()))?;
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
