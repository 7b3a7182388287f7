//! Running a container whose root filesystem someone else prepared (an OCI bundle's rootfs,
//! as containerd mounts it for its shims) in an fcvm VM: the library side of
//! `containerd-shim-fcvm-v2` (docs/containerd.md).
//!
//! 1. [`tree`]: the mounted rootfs directory → a read-only erofs image, cached under the
//!    caller's key (the image's layers) so an identical container reuses it.
//! 2. [`vm`]: that erofs → a VM launched the way `fcvm podman run` launches one (the
//!    image-cache snapshot of this erofs+shape restored when there is one, else a cold boot
//!    that saves it), with its session open for the container's processes.
//! 3. [`pod`]: a pod's further containers in that VM, each rooted at a host directory (the
//!    rootfs containerd mounted for it) served as a map, sharing the first container's
//!    network, IPC and UTS namespaces.
//! 4. [`prune`]: the cached trees whose layers containerd removed, for `fcvm snapshots prune`.

pub mod pod;
pub mod prune;
pub mod tree;
pub mod vm;

pub use pod::PodError;
pub use tree::{cached, erofs_of_tree, Source, TreeError};
pub use vm::{BundleVm, VmRequest};
