//! Snapshots (docs/design.md §10): a VM's RAM file, its device state, its writable disk and a manifest,
//! in `snapshots/<name>/`. Written into a temp directory and renamed into place, so a reader
//! never sees half of one; checked on load (sizes, device-state checksum, assets present), so
//! a damaged one is refused, never half-loaded.
//!
//! ```text
//! snapshots/<name>/
//!   manifest.json   Manifest { version: 1, kind, config, asset ids, file sizes + checksums }
//!   devstate        QEMU migration stream of the devices (x-ignore-shared: no RAM inside)
//!   ram             guest RAM, mapped copy-on-write (share=off) by every restore and clone
//!   rw.ext4         the container's writable disk, copied (sparse/reflink) per restore
//!   disk<N>.img     extra disks (`--disk`), copied per restore likewise
//! ```
//!
//! Kinds: `image-cache` (taken right after the container's root is prepared, before the user's
//! process starts; keyed by everything that shapes the VM), `startup` (after the first healthy
//! check) and `user` (`fcvm snapshot create`).

pub mod create;
pub mod rehydrate;
pub mod restore;
#[cfg(test)]
mod seam_tests;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::paths::Dirs;
use crate::vm::names::Name;
use crate::vmm::{Accel, VmmKind};
use fcvm_proto::PROTOCOL_VERSION;

pub const MANIFEST_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const DEVSTATE: &str = "devstate";
pub use crate::vmm::RAM_FILE;
pub const RW_DISK: &str = "rw.ext4";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("No snapshot named {0:?}")]
    NotFound(String),
    #[error("Snapshot {0:?} is damaged: {1}")]
    Damaged(String, String),
    #[error("Snapshot {0:?} holds an agent speaking protocol {1}, this fcvm speaks {PROTOCOL_VERSION}: take the snapshot again")]
    Protocol(String, u32),
    #[error("Snapshot {0:?} needs {1}, which is gone: take the snapshot again")]
    AssetGone(String, String),
    #[error("Snapshot {0:?} is in use by running VM {1}")]
    InUse(String, String),
    #[error("Snapshot {0:?} is being written by another fcvm")]
    Busy(String),
    #[error("Invalid snapshot name {0:?}")]
    InvalidName(String),
    #[error("Snapshot I/O on {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("Snapshot {name}: {step} failed{}", last_words(.said))]
    Vmm {
        name: String,
        step: &'static str,
        #[source]
        source: crate::vmm::VmmError,
        /// The VMM's own last message (QEMU says why it refused a stream).
        said: Option<String>,
    },
    #[error("Cannot record the restored VM")]
    Record(#[source] crate::vm::VmError),
    #[error("Snapshot {0}: the restored VM's agent did not complete the handshake")]
    Handshake(String, #[source] crate::session::SessionError),
}

/// The VMM's own last message, appended to a failure.
fn last_words(w: &Option<String>) -> String {
    w.as_ref()
        .map(|w| format!(" (VMM: {w})"))
        .unwrap_or_default()
}

impl SnapshotError {
    pub(crate) fn vmm(
        name: &str,
        step: &'static str,
        source: crate::vmm::VmmError,
        said: Option<String>,
    ) -> SnapshotError {
        SnapshotError::Vmm {
            name: name.into(),
            step,
            source,
            said,
        }
    }
}

pub(crate) fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |e| SnapshotError::Io(p.to_path_buf(), e)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    ImageCache,
    Startup,
    User,
}

/// Size (and for small files the SHA-256) of one file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub name: String,
    pub size: u64,
    pub sha256: Option<String>,
}

/// Everything needed to bring the VM back, and to know whether that is still possible.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub name: String,
    pub kind: SnapshotKind,
    pub created_at: DateTime<Utc>,
    /// Image-cache and startup snapshots: the content key they are found by.
    pub key: Option<String>,
    /// The VM it was taken from.
    pub source: String,
    pub backend: VmmKind,
    pub accel: Accel,
    pub cpus: u32,
    pub mem_mib: u32,
    pub kernel: PathBuf,
    pub kernel_id: String,
    pub initramfs: PathBuf,
    pub initramfs_id: String,
    /// The protocol its agent speaks (the agent runs on in the snapshot's memory, whatever
    /// fcvm restores it); absent in snapshots taken before it was recorded.
    #[serde(default)]
    pub protocol: Option<u32>,
    pub image: String,
    pub image_digest: String,
    pub rootfs: PathBuf,
    pub fstype: String,
    /// Whether the VM has a network card: a restore must have the same devices.
    pub net_devices: bool,
    /// Whether the container's main process runs in the snapshot (startup/user snapshots).
    pub container_running: bool,
    /// The container's environment, for execs into restored VMs.
    pub container_env: Vec<String>,
    pub files: Vec<FileSum>,
    /// Extra disks (`--disk`), in device order: each a file beside `rw.ext4`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<crate::disks::DiskRecord>,
    /// The source VM's labels (`--label`): a clone's, unless `snapshot run --label` overrides.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The VM's host directory maps (`--map`), in the guest's order: a clone serves these
    /// unless it is given others for the same guest paths (docs/volumes.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps: Vec<crate::map::MapRecord>,
}

impl Manifest {
    /// The VM this snapshot was taken of, as a spec to start a VM with the same devices:
    /// image disk, writable disk `rw` (the extra disks' files beside it), RAM from `memory`,
    /// the NIC `nic`, waiting for its state.
    pub fn vm_spec(
        &self,
        dir: &Path,
        rw: PathBuf,
        memory: crate::vmm::Memory,
        nic: Option<crate::vmm::Nic>,
    ) -> crate::vmm::VmSpec {
        crate::vmm::VmSpec {
            kind: self.backend,
            dir: dir.to_path_buf(),
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            cpus: self.cpus,
            mem_mib: self.mem_mib,
            disks: vec![
                crate::vmm::Disk {
                    path: self.rootfs.clone(),
                    read_only: true,
                    serial: None,
                },
                crate::vmm::Disk {
                    path: rw.clone(),
                    read_only: false,
                    serial: None,
                },
            ]
            .into_iter()
            .chain(
                self.disks
                    .iter()
                    .enumerate()
                    .map(|(i, d)| crate::vmm::Disk {
                        path: rw.with_file_name(&d.file),
                        read_only: false,
                        serial: Some(crate::disks::serial(i)),
                    }),
            )
            .collect(),
            accel: self.accel,
            nic,
            memory,
            incoming: true,
        }
    }
}

/// Valid snapshot names: like VM names ([`Name`]).
pub fn validate_name(name: &str) -> Result<Name, SnapshotError> {
    Name::new(name).map_err(|_| SnapshotError::InvalidName(name.into()))
}

/// `snapshots/<name>`: a checked name is one component of the path, never `..` or absolute.
pub fn dir(dirs: &Dirs, name: &Name) -> PathBuf {
    dirs.snapshots().join(name.as_str())
}

/// Name under which the image-cache snapshot of `key` (hex) is stored.
pub fn cache_name(key: &str) -> Name {
    Name::new(format!("cache-{}", &key[..16.min(key.len())])).expect("a hex key makes a name")
}

/// Name under which the startup snapshot of `key` (hex) is stored.
pub fn startup_name(key: &str) -> Name {
    Name::new(format!("startup-{}", &key[..16.min(key.len())])).expect("a hex key makes a name")
}

/// Reads and checks a snapshot: manifest version, every file present with its recorded size,
/// the device state's checksum, and the assets it was taken with.
pub fn load(dirs: &Dirs, name: &Name) -> Result<(PathBuf, Manifest), SnapshotError> {
    let d = dir(dirs, name);
    let mpath = d.join(MANIFEST);
    let data = match std::fs::read(&mpath) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::NotFound(name.into()))
        }
        Err(e) => return Err(SnapshotError::Io(mpath, e)),
    };
    let damaged = |why: String| SnapshotError::Damaged(name.into(), why);
    let m: Manifest =
        serde_json::from_slice(&data).map_err(|e| damaged(format!("manifest: {e}")))?;
    if m.version != MANIFEST_VERSION {
        return Err(damaged(format!("manifest version {}", m.version)));
    }
    // The agent in the snapshot's memory is the one that took it, not this build's: one that
    // speaks another protocol would be misunderstood mid-stream, not refused at its hello.
    if let Some(p) = m.protocol.filter(|&p| p != PROTOCOL_VERSION) {
        return Err(SnapshotError::Protocol(name.into(), p));
    }
    for f in &m.files {
        let p = d.join(&f.name);
        let size = std::fs::metadata(&p)
            .map_err(|_| damaged(format!("{} is missing", f.name)))?
            .len();
        if size != f.size {
            return Err(damaged(format!(
                "{} has {size} bytes, expected {}",
                f.name, f.size
            )));
        }
        if let Some(sum) = &f.sha256 {
            let got = crate::util::sha256_file(&p).map_err(io_err(&p))?;
            if &got != sum {
                return Err(damaged(format!("{} checksum mismatch", f.name)));
            }
        }
    }
    for (what, p) in [
        ("kernel", &m.kernel),
        ("initramfs", &m.initramfs),
        ("image", &m.rootfs),
    ] {
        if !p.exists() {
            return Err(SnapshotError::AssetGone(
                name.into(),
                format!("its {what} {}", p.display()),
            ));
        }
    }
    Ok((d, m))
}

/// Every snapshot with a readable manifest, by name.
pub fn list(dirs: &Dirs) -> Vec<Manifest> {
    let mut out: Vec<Manifest> = std::fs::read_dir(dirs.snapshots())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join(MANIFEST)).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Removes a snapshot unless a live VM was restored from it.
pub fn remove(dirs: &Dirs, name: &Name) -> Result<(), SnapshotError> {
    let d = dir(dirs, name);
    if !d.join(MANIFEST).exists() {
        return Err(SnapshotError::NotFound(name.into()));
    }
    let users = crate::vm::list(dirs)
        .into_iter()
        .find(|(_, st)| st.snapshot.as_deref() == Some(name.as_str()) && st.observed().is_alive());
    if let Some((_, st)) = users {
        return Err(SnapshotError::InUse(name.into(), st.name));
    }
    // A reader sees the whole snapshot or none of it.
    crate::util::unpublish_dir(&d, &dirs.tmp(), name.as_str()).map_err(io_err(&d))
}

/// The content key of an image-cache snapshot: everything that shapes the VM before the
/// user's process starts.
pub fn cache_key(parts: &[&str]) -> String {
    crate::util::sha256_hex(parts.join("\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_any_part() {
        let a = cache_key(&["img", "k", "i", "1", "512"]);
        assert_ne!(a, cache_key(&["img", "k", "i", "1", "1024"]));
        assert_eq!(a, cache_key(&["img", "k", "i", "1", "512"]));
        assert_eq!(cache_name(&a).len(), 6 + 16);
    }

    #[test]
    fn missing_snapshot_is_not_found() {
        let d = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(d.path());
        let nope = Name::new("nope").unwrap();
        assert!(matches!(
            load(&dirs, &nope),
            Err(SnapshotError::NotFound(_))
        ));
        assert!(matches!(
            remove(&dirs, &nope),
            Err(SnapshotError::NotFound(_))
        ));
    }
}
