//! Where fcvm keeps its state (DESIGN §6): one data directory holding content-addressed
//! assets, image root filesystems, per-VM directories and snapshots.
//!
//! `FCVM_DATA_DIR` overrides; else `/var/lib/fcvm` as root, `$XDG_DATA_HOME/fcvm` otherwise.
//! `tmp/` sits inside the same directory so that every "write to temp, rename into place" is
//! a rename on one filesystem.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Dirs {
    pub root: PathBuf,
}

impl Dirs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Dirs { root: root.into() }
    }

    pub fn from_env() -> Self {
        if let Some(d) = std::env::var_os("FCVM_DATA_DIR") {
            return Dirs::new(d);
        }
        if nix::unistd::geteuid().is_root() {
            return Dirs::new("/var/lib/fcvm");
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        Dirs::new(base.join("fcvm"))
    }

    /// Content-addressed guest assets: kernel, initramfs, module sets.
    pub fn assets(&self) -> PathBuf {
        self.root.join("assets")
    }
    /// Image root filesystems and configs, keyed by digest.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// Downloaded blobs (layers, packages) by digest.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    /// One directory per VM: state.json, sockets, disks, logs.
    pub fn vms(&self) -> PathBuf {
        self.root.join("vms")
    }
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    /// Scratch space on the same filesystem as everything else (for atomic renames).
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Lock files.
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }
}
