//! A pod's further containers in its [`BundleVm`] (docs/design.md §21): the VM's first
//! container is the pod's sandbox; each later one runs in the same VM under crun, rooted at a
//! host directory (containerd's mounted rootfs for it) that the VM's owner serves as a
//! read-write map, in the first container's network, IPC and UTS namespaces.
//!
//! 1. [`BundleVm::add_container`]: the id checked, the directory opened and put in the VM's
//!    [`MapTable`] under a fresh map number, `PodRequest{AddMap}` mounts it in the guest;
//!    [`BundleVm::add_container_with`] does the same for each host directory bound into the
//!    container (a [`Map`]: one more map each, read-only if asked) and tells the guest
//!    where they go (`PodRequest{Binds}`);
//! 2. [`BundleVm::start_container`] / [`BundleVm::exec_in`]: `Start{PodContainer}` /
//!    `Start{PodExec}` on a stream of their own, the [`Process`] handed back as for any exec;
//! 3. [`BundleVm::remove_container`]: `PodRequest{RemoveContainer}` (`crun delete --force`),
//!    `PodRequest{RemoveMap}` for its root and its binds (unmounted in the guest), then the
//!    directories are no longer served.
//!
//! Not snapshotted: a pod VM's image-cache snapshot is taken at launch, before any container
//! is added, and none after (the maps would be missing from a restore).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fcvm_proto::{
    valid_pod_id, Msg, PodBind, PodOp, ProcessSpec, Target, MAX_MAPS, MAX_POD_CONTAINERS,
};

use super::BundleVm;
use crate::map::{host::OpenRootError, Map, MapTable};
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
    #[error("Too many binds for one container (at most {0})")]
    TooManyBinds(usize),
    #[error("Cannot bind {} at {}: not a directory", .0.display(), .1)]
    BindNotDir(PathBuf, String),
    #[error("Cannot serve {} for {dest}", .source_dir.display())]
    Bind {
        source_dir: PathBuf,
        dest: String,
        #[source]
        source: OpenRootError,
    },
    #[error("Cannot {0} in the VM")]
    Agent(&'static str, #[source] SessionError),
}

/// Why [`BundleVm::add_map`] failed; each caller names what the map was for.
enum MapError {
    /// The VM's map numbers ran out.
    Numbers,
    Serve(OpenRootError),
    Mount(SessionError),
}

/// An added container: the map that is its root, those bound into it, and whether its
/// process was started.
struct Added {
    map: u32,
    bound: Vec<u32>,
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
        self.add_container_with(id, rootfs, &[]).await
    }

    /// As [`BundleVm::add_container`], with `binds`: host directories bound into the
    /// container when it starts. Nothing is left served or mounted if it fails.
    pub async fn add_container_with(
        &self,
        id: &str,
        rootfs: &Path,
        binds: &[Map],
    ) -> Result<(), PodError> {
        let id = checked(id)?;
        let table = self.pod.maps.as_ref().ok_or(PodError::NoMapServer)?;
        if binds.len() >= MAX_MAPS {
            return Err(PodError::TooManyBinds(MAX_MAPS - 1));
        }
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
        let map = self
            .add_map(table, rootfs, false)
            .await
            .map_err(|e| match e {
                MapError::Numbers => PodError::TooMany(MAX_POD_CONTAINERS),
                MapError::Serve(e) => PodError::Root(e),
                MapError::Mount(e) => PodError::Agent("mount the container's root", e),
            })?;
        let mut added = Added {
            map,
            bound: vec![],
            started: false,
        };
        if let Err(e) = self.add_binds(table, id, binds, &mut added).await {
            self.unmount(&added).await;
            return Err(e);
        }
        tracing::debug!(
            "pod container {id}: root {} as map {map}, {} binds",
            rootfs.display(),
            binds.len()
        );
        containers.insert(id.into(), added);
        Ok(())
    }

    /// Serves and mounts each of `binds` as a map of its own (recorded in `added` as it
    /// goes, for the caller to undo), then tells the guest where they go.
    async fn add_binds(
        &self,
        table: &MapTable,
        id: &str,
        binds: &[Map],
        added: &mut Added,
    ) -> Result<(), PodError> {
        if binds.is_empty() {
            return Ok(());
        }
        let mut wire = Vec::with_capacity(binds.len());
        for b in binds {
            // A map serves a directory's tree (the map server would open a file as one).
            if !std::fs::metadata(&b.host).is_ok_and(|m| m.is_dir()) {
                let (src, dest) = (b.host.clone(), b.guest.clone());
                return Err(PodError::BindNotDir(src, dest));
            }
            let map = (self.add_map(table, &b.host, b.read_only).await).map_err(|e| match e {
                MapError::Numbers => PodError::TooManyBinds(MAX_MAPS - 1),
                MapError::Serve(source) => PodError::Bind {
                    source_dir: b.host.clone(),
                    dest: b.guest.clone(),
                    source,
                },
                MapError::Mount(e) => PodError::Agent("mount a bound directory", e),
            })?;
            added.bound.push(map);
            wire.push(PodBind {
                map,
                destination: b.guest.clone(),
                read_only: b.read_only,
            });
        }
        let op = PodOp::Binds {
            id: id.into(),
            binds: wire,
        };
        let e = |e| PodError::Agent("bind directories into the container", e);
        self.pod_request(op).await.map_err(e)
    }

    /// Takes the next map number, serves `dir` under it and has the guest mount it; if the
    /// guest cannot, `dir` is no longer served.
    async fn add_map(
        &self,
        table: &MapTable,
        dir: &Path,
        read_only: bool,
    ) -> Result<u32, MapError> {
        let next = self.pod.next_map.fetch_add(1, Ordering::Relaxed);
        let map = u32::try_from(next).map_err(|_| MapError::Numbers)?;
        table.add(map, dir, read_only).map_err(MapError::Serve)?;
        let op = PodOp::AddMap { map, read_only };
        if let Err(e) = self.pod_request(op).await {
            table.remove(map);
            return Err(MapError::Mount(e));
        }
        Ok(map)
    }

    /// Undoes a failed [`BundleVm::add_container_with`]: its maps unmounted in the guest
    /// (best effort: the error is the caller's) and no longer served. (The guest kept no
    /// binds: `Binds` is the last request, and failed.)
    async fn unmount(&self, added: &Added) {
        for &map in added.bound.iter().chain([&added.map]) {
            if let Err(e) = self.pod_request(PodOp::RemoveMap { map }).await {
                tracing::debug!("unmounting map {map} after a failed add: {e}");
            }
            if let Some(table) = &self.pod.maps {
                table.remove(map);
            }
        }
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
        let added = (containers.get(id)).ok_or_else(|| PodError::NoSuchContainer(id.into()))?;
        let maps: Vec<u32> = [added.map].into_iter().chain(added.bound.clone()).collect();
        if self.running() {
            let op = PodOp::RemoveContainer { id: id.into() };
            let e = |e| PodError::Agent("delete the container", e);
            self.pod_request(op).await.map_err(e)?;
            for &map in &maps {
                let e = |e| PodError::Agent("unmount the container's root or binds", e);
                self.pod_request(PodOp::RemoveMap { map })
                    .await
                    .map_err(e)?;
            }
        }
        if let Some(table) = &self.pod.maps {
            for &map in &maps {
                table.remove(map);
            }
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
