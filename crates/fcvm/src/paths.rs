//! Where fcvm keeps its state (docs/design.md §15): one data directory holding content-addressed
//! assets, image root filesystems, per-VM directories and snapshots.
//!
//! `FCVM_DATA_DIR` overrides; else `/var/lib/fcvm` as root, `$XDG_DATA_HOME/fcvm` otherwise.
//! The whole tree is the owner's alone: [`Dirs::prepare`] runs at every start
//! (docs/security.md).
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

    /// Creates the data directory if needed and makes it, and its top-level directories,
    /// the owner's alone (0700) — repairing a tree made by an older fcvm or under another
    /// umask. Refuses a root that is a symlink or belongs to another user.
    pub fn prepare(&self) -> std::io::Result<()> {
        let top = [
            self.assets(),
            self.images(),
            self.blobs(),
            self.vms(),
            self.snapshots(),
            self.tmp(),
            self.locks(),
        ];
        crate::owner_only::repair_data_dir(&self.root, &top)
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
