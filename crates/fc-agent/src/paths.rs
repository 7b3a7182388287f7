//! Where the agent keeps the container and what crun needs of it: the paths several modules
//! share (Prepare mounts them, the OCI config names them, process starts and power-off use
//! them). A leaf: it names no other module.
//!
//! ```text
//! /mnt/image              the image disk (read-only)            IMAGE_MNT
//! /mnt/rw                 the writable disk: upper/, work/      RW_MNT
//! /run/fcvm/rootfs        their overlay: the container's root   ROOTFS
//! /run/fcvm/bundle        crun's bundle (config.json)           BUNDLE
//! /run/fcvm/etc           the container's identity files        ETC, ETC_FILES
//! /run/fcvm/container.pid the container's process, from crun    CONTAINER_PIDFILE
//! /run/fcvm/exec-N.*      process JSON and pid file of exec N   exec_json, exec_pidfile
//! /run/crun/fcvm          crun's state of the container         crun_state
//! /run/fcvm/pods/<id>/    a pod container's bundle (config.json, pid)   pod_dir
//! /run/crun/pod-<id>      crun's state of pod container <id>    pod_crun_id
//! ```

use std::path::PathBuf;

/// The agent's own state directory (tmpfs).
pub const RUN_DIR: &str = "/run/fcvm";
pub const IMAGE_MNT: &str = "/mnt/image";
pub const RW_MNT: &str = "/mnt/rw";
pub const ROOTFS: &str = "/run/fcvm/rootfs";
pub const BUNDLE: &str = "/run/fcvm/bundle";
/// The crun container id (one container per VM).
pub const ID: &str = "fcvm";
pub const CRUN: &str = "/usr/bin/crun";
/// The container's identity files, bind-mounted over its /etc/<name>.
pub const ETC: &str = "/run/fcvm/etc";
pub const ETC_FILES: [&str; 4] = ["hostname", "hosts", "resolv.conf", "machine-id"];
/// Where crun writes the pid of the container's process.
pub const CONTAINER_PIDFILE: &str = "/run/fcvm/container.pid";

/// crun's state directory of the container: it exists once crun has created it.
pub fn crun_state() -> PathBuf {
    PathBuf::from("/run/crun").join(ID)
}

/// The OCI process JSON of exec stream `id` (`crun exec --process`).
pub fn exec_json(id: u32) -> String {
    format!("{RUN_DIR}/exec-{id}.json")
}

/// Where crun writes the pid of exec stream `id`'s process.
pub fn exec_pidfile(id: u32) -> String {
    format!("{RUN_DIR}/exec-{id}.pid")
}

/// Where pod containers' bundles live ([`crate::pods`]).
pub const PODS_DIR: &str = "/run/fcvm/pods";

/// The bundle directory of pod container `id` (its config.json and pid file).
pub fn pod_dir(id: &str) -> PathBuf {
    PathBuf::from(PODS_DIR).join(id)
}

/// crun's id of pod container `id` (never the first container's [`ID`]).
pub fn pod_crun_id(id: &str) -> String {
    format!("pod-{id}")
}

/// crun's state directory of container `crun_id`: it exists once crun has created it.
pub fn crun_state_of(crun_id: &str) -> PathBuf {
    PathBuf::from("/run/crun").join(crun_id)
}
