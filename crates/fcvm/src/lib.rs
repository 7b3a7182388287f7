//! fcvm: run OCI container images inside microVMs.
//!
//! The library does the work; `main.rs` is a thin clap front end over it.
//!
//! 1. [`assets`] builds the guest kernel and initramfs (content-addressed, `fcvm setup`).
//! 2. [`image`] turns an image reference into a read-only root filesystem image + its config.
//! 3. [`vmm`] starts a VM (QEMU today; the `Vmm` trait keeps the rest backend-neutral).
//! 4. [`session`] speaks the agent protocol ([`fcvm_proto`]) over the VM's channel.
//! 5. [`vm`] owns a VM's lifecycle and its atomically written `state.json`.
//! 6. [`run`] ties them together for `fcvm podman run`.

pub mod assets;
pub mod attach;
pub mod bundle;
pub mod disks;
pub mod exec;
pub mod health;
pub mod image;
pub mod map;
pub mod network;
pub mod owner_only;
pub mod paths;
pub mod procfs;
pub mod progress;
pub mod run;
pub mod serve;
pub mod session;
pub mod snapshot;
pub mod util;
pub mod vm;
pub mod vmm;
