//! A pod's further containers (protocol 7; docs/design.md §21): besides its first container
//! (`Target::Container`, the pod's sandbox), a VM runs up to [`MAX_POD_CONTAINERS`] more,
//! each a crun container of its own whose root is a map the host added at run time
//! ([`crate::fuse::add`]), in the network, IPC and UTS namespaces of the first container
//! (so they share its localhost and hostname) and in mount and pid namespaces of their own.
//!
//! 1. `PodRequest{AddMap}` mounts the root-to-be ([`handle`] → [`crate::fuse::add`]);
//! 2. `Start{PodContainer{id, root}}` [`claim`]s the id for that map (checked: ids come from
//!    the host's clients), then `crun run`s it (`crate::process`);
//!    `Start{PodExec{id}}` joins it (`crun exec`);
//! 3. `PodRequest{RemoveContainer}` deletes it (`crun delete --force`) and its bundle;
//!    `PodRequest{RemoveMap}` unmounts its root once no container has it as root.
//!
//! Nothing here outlives a snapshot usefully: pod VMs are not snapshotted once a map was
//! added (the host's map server would not know the maps).

use crate::error::{Error, Result};
use crate::paths::{crun_state_of, pod_crun_id, pod_dir, CONTAINER_PIDFILE, CRUN};
use fcvm_proto::{valid_pod_id, PodOp, MAX_POD_CONTAINERS};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A pod container: the map that is its root, and where that is mounted in the VM.
struct Pod {
    map: u32,
    root: String,
}

/// The pod containers claimed and not yet removed, by id.
static PODS: Mutex<BTreeMap<String, Pod>> = Mutex::new(BTreeMap::new());

fn pods() -> std::sync::MutexGuard<'static, BTreeMap<String, Pod>> {
    PODS.lock().unwrap_or_else(|e| e.into_inner())
}

fn checked(id: &str) -> Result<&str> {
    if valid_pod_id(id) {
        Ok(id)
    } else {
        Err(Error::BadPodId(id.chars().take(80).collect()))
    }
}

/// Records container `id` with map `map` as its root (mounted by `AddMap`, and no other
/// container's root); returns the root's directory in the VM.
pub fn claim(id: &str, map: u32) -> Result<String> {
    let id = checked(id)?;
    let mut pods = pods();
    if pods.contains_key(id) {
        return Err(Error::PodExists(id.into()));
    }
    if pods.len() >= MAX_POD_CONTAINERS {
        return Err(Error::TooManyPods(MAX_POD_CONTAINERS));
    }
    if pods.values().any(|p| p.map == map) {
        return Err(Error::MapInUse(map));
    }
    let root = crate::fuse::added_dir(map).ok_or(Error::NoSuchMap(map))?;
    pods.insert(
        id.into(),
        Pod {
            map,
            root: root.clone(),
        },
    );
    Ok(root)
}

/// The root directory (in the VM) of claimed container `id`.
pub fn root_of(id: &str) -> Result<String> {
    let id = checked(id)?;
    pods()
        .get(id)
        .map(|p| p.root.clone())
        .ok_or_else(|| Error::NoSuchPod(id.into()))
}

/// The pid (in the VM) of the first container's process, whose namespaces a pod container
/// joins.
pub fn first_container_pid() -> Result<i32> {
    let text = std::fs::read_to_string(CONTAINER_PIDFILE)
        .map_err(|e| Error::Read(CONTAINER_PIDFILE.into(), e))?;
    text.trim().parse().map_err(|_| Error::NoPidFile)
}

/// Runs one `PodRequest`.
pub fn handle(op: &PodOp) -> Result<()> {
    match op {
        PodOp::AddMap { map, read_only } => crate::fuse::add(*map, *read_only),
        PodOp::RemoveMap { map } => {
            if pods().values().any(|p| p.map == *map) {
                return Err(Error::MapInUse(*map));
            }
            crate::fuse::remove(*map)
        }
        PodOp::RemoveContainer { id } => remove(checked(id)?),
    }
}

/// Deletes container `id` (killing what runs in it) and its bundle, and forgets it.
fn remove(id: &str) -> Result<()> {
    let crun_id = pod_crun_id(id);
    if crun_state_of(&crun_id).exists() {
        let code = crate::reaper::run_quiet(&[CRUN, "delete", "--force", &crun_id])?;
        if code != 0 && crun_state_of(&crun_id).exists() {
            return Err(Error::CrunDelete(crun_id, code));
        }
    }
    let dir = pod_dir(id);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(Error::Write(dir, e));
        }
    }
    pods().remove(id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are checked before anything is looked up or created; a claim needs a mounted map.
    #[test]
    fn ids_are_checked_and_claims_need_a_map() {
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(65)] {
            assert!(matches!(claim(bad, 0), Err(Error::BadPodId(_))), "{bad}");
            assert!(matches!(root_of(bad), Err(Error::BadPodId(_))), "{bad}");
            let op = PodOp::RemoveContainer { id: bad.into() };
            assert!(matches!(handle(&op), Err(Error::BadPodId(_))), "{bad}");
        }
        assert!(matches!(claim("app", 77), Err(Error::NoSuchMap(77))));
        assert!(matches!(root_of("app"), Err(Error::NoSuchPod(_))));
        // Removing an unknown map or container is not an error (nothing to do).
        assert!(handle(&PodOp::RemoveMap { map: 77 }).is_ok());
    }
}
