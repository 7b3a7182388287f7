//! CRI pods: which containers share a shim and a VM (docs/containerd.md, docs/design.md §21).
//!
//! containerd's CRI plugin marks every container of a pod with the annotation
//! `io.kubernetes.cri.sandbox-id` and the pod's own (pause) container with
//! `io.kubernetes.cri.container-type=sandbox`. The shim's socket is named after the sandbox
//! id, so all of a pod's containers reach one shim ([`sandbox_of_bundle`]); in it the
//! sandbox container launches the VM as any container does, and each later container
//! ([`Role::Member`]) is added to that VM (`fcvm::bundle::BundleVm::add_container_with`), its
//! root the overlay containerd prepared for it, mounted by the shim on the bundle's
//! `rootfs/`, with its volumes (binds of host directories, `crate::spec`'s plan) as maps.
//! A container without these annotations (`ctr run`) has its own VM, as before.

use std::path::Path;

use anyhow::Context as _;
use containerd_shim::protos::api;

pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// What a container is to its shim.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Not a CRI container: its own VM.
    Alone,
    /// A pod's sandbox (pause) container: the pod's VM, its process the VM's first.
    Sandbox,
    /// A later container of pod `sandbox`, run in the sandbox's VM.
    Member { sandbox: String },
}

/// The role the spec's annotations give.
pub fn role(spec: &oci_spec::runtime::Spec) -> Role {
    let a = spec.annotations().clone().unwrap_or_default();
    match (a.get(SANDBOX_ID), a.get(CONTAINER_TYPE).map(String::as_str)) {
        (Some(_), Some("sandbox")) => Role::Sandbox,
        (Some(s), _) => Role::Member { sandbox: s.clone() },
        (None, _) => Role::Alone,
    }
}

/// The pod a bundle's container belongs to (its `config.json`'s sandbox id), if any.
pub fn sandbox_of_bundle(config: &Path) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(config).ok()?).ok()?;
    let id = v["annotations"][SANDBOX_ID].as_str()?;
    // The id names a socket: containerd's are hex; anything else groups by container.
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| id.to_string())
}

/// Mounts a member's rootfs (the overlay containerd passes) on `bundle/rootfs`, read-write,
/// nosuid and nodev: the VM reaches it as a map; on the host nothing runs from it.
pub fn mount_rootfs(bundle: &Path, mounts: &[api::Mount]) -> anyhow::Result<std::path::PathBuf> {
    let [m] = mounts else {
        anyhow::bail!(
            "fcvm cannot honour a rootfs of {} mounts: one overlay or bind is expected",
            mounts.len()
        );
    };
    let target = bundle.join("rootfs");
    if !target.is_dir() {
        fcvm::owner_only::create_dir(&target)
            .context("Cannot create the bundle's rootfs directory")?;
    }
    crate::rootfs::mount_one(m, &target, false)?;
    Ok(target)
}

/// Undoes [`mount_rootfs`] (lazily: the VM may still hold files of it open until it stops).
pub fn unmount_rootfs(target: &Path) {
    if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!("cannot unmount {}: {e}", target.display());
    }
}
