//! A pod's further containers in its [`BundleVm`] (docs/design.md §21): the VM's first
//! container is the pod's sandbox; each later one runs in the same VM under crun, rooted at a
//! host directory (containerd's mounted rootfs for it) that the VM's owner serves as a
//! read-write map, in the first container's network, IPC and UTS namespaces.
//!
//! 1. [`BundleVm::add_container`]: the id checked, the directory opened and put in the VM's
//!    [`MapTable`] under a fresh map number, `PodRequest{AddMap}` mounts it in the guest;
//! 2. [`BundleVm::start_container`] / [`BundleVm::exec_in`]: `Start{PodContainer}` /
//!    `Start{PodExec}` on a stream of their own, the [`Process`] handed back as for any exec;
//! 3. [`BundleVm::remove_container`]: `PodRequest{RemoveContainer}` (`crun delete --force`),
//!    `PodRequest{RemoveMap}` (unmounted in the guest), then the directory is no longer served.
//!
//! Not snapshotted: a pod VM's image-cache snapshot is taken at launch, before any container
//! is added, and none after (the maps would be missing from a restore).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fcvm_proto::{valid_pod_id, Msg, PodOp, ProcessSpec, Target, MAX_POD_CONTAINERS};

use super::BundleVm;
use crate::map::{host::OpenRootError, MapTable};
use crate::session::{Process, Session, SessionError};

/// How long the guest may take for one pod request (a `crun delete` under TCG on a loaded
/// host takes seconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("Invalid container id {0:?}: 1 to 64 letters, digits, '_', '.' or '-', not first '.' or '-'")]
    BadId(String),
    #[error("Container {0} is already in this VM")]
    Duplicate(String),
    #[error("Too many containers in this VM (at most {0} beside the first)")]
    TooMany(usize),
    #[error("No container {0} in this VM")]
    NoSuchContainer(String),
    #[error("Container {0} was started already")]
    Started(String),
    #[error("The VM is stopped")]
    Stopped,
    #[error("The VM's map requests are served elsewhere: no container can be added")]
    NoMapServer,
    #[error("Cannot serve the container's root")]
    Root(#[source] OpenRootError),
    #[error("Cannot {0} in the VM")]
    Agent(&'static str, #[source] SessionError),
}

/// An added container: the map that is its root, and whether its process was started.
struct Added {
    map: u32,
    started: bool,
}

/// What a [`BundleVm`] knows of its pod: the map table its session serves, the containers.
pub(super) struct PodState {
    /// None if the session's map requests were taken by another server.
    maps: Option<MapTable>,
    containers: tokio::sync::Mutex<BTreeMap<String, Added>>,
    /// The next map number (the VM has no maps of its own: they start at 0).
    next_map: AtomicU64,
    seq: AtomicU64,
}

impl PodState {
    /// Starts serving `session`'s map requests from an empty table (`qemu_pid`: the VM's
    /// QEMU, into whose memory map reads are written).
    pub(super) fn serve(session: &Session, qemu_pid: u32) -> PodState {
        let table = MapTable::default();
        let maps = crate::map::serve_table(session, table.clone(), qemu_pid).then_some(table);
        PodState {
            maps,
            containers: Default::default(),
            next_map: AtomicU64::new(0),
            seq: AtomicU64::new(1),
        }
    }
}

fn checked(id: &str) -> Result<&str, PodError> {
    if valid_pod_id(id) {
        Ok(id)
    } else {
        Err(PodError::BadId(id.chars().take(80).collect()))
    }
}

impl BundleVm {
    /// Adds container `id` whose root is host directory `rootfs`, served read-write beneath
    /// it (no symlink followed, nothing outside it reached); no process runs yet.
    pub async fn add_container(&self, id: &str, rootfs: &Path) -> Result<(), PodError> {
        let id = checked(id)?;
        let table = self.pod.maps.as_ref().ok_or(PodError::NoMapServer)?;
        if !self.running() {
            return Err(PodError::Stopped);
        }
        let mut containers = self.pod.containers.lock().await;
        if containers.contains_key(id) {
            return Err(PodError::Duplicate(id.into()));
        }
        if containers.len() >= MAX_POD_CONTAINERS {
            return Err(PodError::TooMany(MAX_POD_CONTAINERS));
        }
        let map = u32::try_from(self.pod.next_map.fetch_add(1, Ordering::Relaxed))
            .map_err(|_| PodError::TooMany(MAX_POD_CONTAINERS))?;
        table.add(map, rootfs, false).map_err(PodError::Root)?;
        let op = PodOp::AddMap {
            map,
            read_only: false,
        };
        if let Err(e) = self.pod_request(op).await {
            table.remove(map);
            return Err(PodError::Agent("mount the container's root", e));
        }
        let started = false;
        containers.insert(id.into(), Added { map, started });
        tracing::debug!("pod container {id}: root {} as map {map}", rootfs.display());
        Ok(())
    }

    /// Starts added container `id`'s process (`crun run` in the guest; once per container):
    /// `spec` as for the first container's. Its frames come on the returned [`Process`]
    /// (`Started`, output, `Exit`, or `Error` if it could not run); signals, resizes and
    /// stdin go on it as for an exec. The first container must be running.
    pub async fn start_container(&self, id: &str, spec: ProcessSpec) -> Result<Process, PodError> {
        let id = checked(id)?;
        let mut containers = self.pod.containers.lock().await;
        let added = (containers.get_mut(id)).ok_or_else(|| PodError::NoSuchContainer(id.into()))?;
        if added.started {
            return Err(PodError::Started(id.into()));
        }
        added.started = true;
        let target = Target::PodContainer {
            id: id.into(),
            root: added.map,
        };
        Ok(self.session.start(spec, target).await)
    }

    /// Runs `spec` in added container `id` (`crun exec`), as an exec of the first container.
    pub async fn exec_in(&self, id: &str, spec: ProcessSpec) -> Result<Process, PodError> {
        let id = checked(id)?;
        if !self.pod.containers.lock().await.contains_key(id) {
            return Err(PodError::NoSuchContainer(id.into()));
        }
        let target = Target::PodExec { id: id.into() };
        Ok(self.session.start(spec, target).await)
    }

    /// Removes added container `id`: deleted in the guest (what still runs in it is
    /// killed), its root unmounted there, its directory no longer served.
    pub async fn remove_container(&self, id: &str) -> Result<(), PodError> {
        let id = checked(id)?;
        let mut containers = self.pod.containers.lock().await;
        let map = (containers.get(id))
            .ok_or_else(|| PodError::NoSuchContainer(id.into()))?
            .map;
        if self.running() {
            let op = PodOp::RemoveContainer { id: id.into() };
            let e = |e| PodError::Agent("delete the container", e);
            self.pod_request(op).await.map_err(e)?;
            let e = |e| PodError::Agent("unmount the container's root", e);
            self.pod_request(PodOp::RemoveMap { map })
                .await
                .map_err(e)?;
        }
        if let Some(table) = &self.pod.maps {
            table.remove(map);
        }
        containers.remove(id);
        Ok(())
    }

    /// The ids of the added containers not removed yet.
    pub async fn containers(&self) -> Vec<String> {
        self.pod.containers.lock().await.keys().cloned().collect()
    }

    /// Sends one pod request and waits for its answer.
    async fn pod_request(&self, op: PodOp) -> Result<(), SessionError> {
        let seq = self.pod.seq.fetch_add(1, Ordering::Relaxed);
        let msg = Msg::PodRequest { seq, op };
        self.session
            .request(msg, REQUEST_TIMEOUT, |m| match m {
                Msg::PodReply { seq: s, error } if s == seq => Some(error.map_or(Ok(()), Err)),
                _ => None,
            })
            .await
    }
}
