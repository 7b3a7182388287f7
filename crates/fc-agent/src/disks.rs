//! Extra disks (`fcvm podman run --disk`, docs/run.md): each is an ext4 on its own virtio-blk
//! device, which the host names with a serial (`fcvm-disk<N>`) so the agent never relies on
//! probe order. At Prepare the agent mounts disk N on `/run/fcvm/disks/<N>`; the container's
//! config ([`crate::oci::spec`]) bind-mounts each onto its mount point inside the container.
//! When the container's main process ends, [`flush`] freezes and thaws each one: the journal
//! is checkpointed and every block is on the host's file before the host is told `Exit` (the
//! host stops the VM right after, and a disk given as a host file must hold what was written).

use crate::error::{Error, Result};
use fcvm_proto::DiskMount;
use std::path::Path;
use std::sync::OnceLock;

/// Where disk N is mounted in the VM.
const DISKS_DIR: &str = "/run/fcvm/disks";
/// The prefix of the serials the host gives extra disks (the image and writable disks have none).
pub const SERIAL_PREFIX: &str = "fcvm-disk";

/// (mount point in the VM, mount point in the container), set once at Prepare.
static MOUNTED: OnceLock<Vec<(String, String)>> = OnceLock::new();

/// The virtio serial of block device `name` under `sys_block`, if it has one.
pub fn serial(sys_block: &Path, name: &str) -> Option<String> {
    let s = std::fs::read_to_string(sys_block.join(name).join("serial")).ok()?;
    Some(s.trim_end_matches(['\n', '\0']).to_string()).filter(|s| !s.is_empty())
}

/// Whether block device `name` is an extra disk (not the image or the writable layer).
pub fn is_extra(sys_block: &Path, name: &str) -> bool {
    serial(sys_block, name).is_some_and(|s| s.starts_with(SERIAL_PREFIX))
}

/// The block device under `sys_block` whose serial is `want`.
fn find(sys_block: &Path, want: &str) -> Option<String> {
    std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vd") && serial(sys_block, n).as_deref() == Some(want))
}

/// Mounts every disk of the plan (idempotent: a second Prepare finds them mounted).
pub fn mount(disks: &[DiskMount], do_mount: impl Fn(&str, &str) -> Result<()>) -> Result<()> {
    if MOUNTED.get().is_some() {
        return Ok(());
    }
    let mut mounted = vec![];
    for (i, d) in disks.iter().enumerate() {
        let dev = find(Path::new("/sys/block"), &d.serial)
            .ok_or_else(|| Error::NoExtraDisk(d.serial.clone(), d.guest.clone()))?;
        let at = format!("{DISKS_DIR}/{i}");
        do_mount(&format!("/dev/{dev}"), &at)?;
        mounted.push((at, d.guest.clone()));
    }
    let _ = MOUNTED.set(mounted);
    Ok(())
}

/// (source in the VM, destination in the container) of each mounted disk.
pub fn binds() -> &'static [(String, String)] {
    MOUNTED.get().map(Vec::as_slice).unwrap_or_default()
}

/// Puts everything written to the disks on them: FIFREEZE syncs the filesystem and
/// checkpoints its journal (the image is clean as it stands), FITHAW lets writers go on.
pub fn flush() {
    for (at, _) in binds() {
        let Ok(f) = std::fs::File::open(at) else {
            continue;
        };
        use std::os::fd::AsRawFd;
        // SAFETY: FIFREEZE and FITHAW take no argument; the fd is open for their duration.
        unsafe {
            if libc::ioctl(f.as_raw_fd(), FIFREEZE, 0) == 0 {
                libc::ioctl(f.as_raw_fd(), FITHAW, 0);
            } else {
                libc::syncfs(f.as_raw_fd());
            }
        }
    }
}

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` (linux/fs.h).
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_disks_by_serial() {
        let dir = std::env::temp_dir().join(format!("fc-agent-xdisks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (n, s) in [("vda", ""), ("vdb", "fcvm-disk1\n"), ("vdc", "fcvm-disk0")] {
            std::fs::create_dir_all(dir.join(n)).unwrap();
            std::fs::write(dir.join(n).join("serial"), s).unwrap();
        }
        assert!(!is_extra(&dir, "vda") && is_extra(&dir, "vdb"));
        assert_eq!(find(&dir, "fcvm-disk0").as_deref(), Some("vdc"));
        assert_eq!(find(&dir, "fcvm-disk1").as_deref(), Some("vdb"));
        assert_eq!(find(&dir, "fcvm-disk2"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
