//! A pod's further containers (protocol 7; docs/design.md §21): besides its first container
//! (`Target::Container`, the pod's sandbox), a VM runs up to [`MAX_POD_CONTAINERS`] more,
//! each a crun container of its own whose root is a map the host added at run time
//! ([`crate::fuse::add`]), in the network, IPC and UTS namespaces of the first container
//! (so they share its localhost and hostname) and in mount and pid namespaces of their own.
//!
//! 1. `PodRequest{AddMap}` mounts the root-to-be ([`handle`] → [`crate::fuse::add`]), and
//!    one more map per host directory bound into the container; `PodRequest{Binds}` says
//!    where those go (kept until the start: destinations checked here, maps at the claim);
//! 2. `Start{PodContainer{id, root}}` [`claim`]s the id for that map (checked: ids come from
//!    the host's clients) with its binds, then `crun run`s it (`crate::process`);
//!    `Start{PodExec{id}}` joins it (`crun exec`);
//! 3. `PodRequest{RemoveContainer}` deletes it (`crun delete --force`) and its bundle;
//!    `PodRequest{RemoveMap}` unmounts its root and bound maps once no container uses them.
//!
//! Nothing here outlives a snapshot usefully: pod VMs are not snapshotted once a map was
//! added (the host's map server would not know the maps).

use crate::error::{Error, Result};
use crate::fuse::Bind;
use crate::paths::{crun_state_of, pod_crun_id, pod_dir, CONTAINER_PIDFILE, CRUN};
use fcvm_proto::{clean_guest_path, valid_pod_id, PodBind, PodOp, MAX_MAPS, MAX_POD_CONTAINERS};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Longest bind destination (PATH_MAX).
const MAX_DESTINATION: usize = 4096;

/// A pod container: the map that is its root, and the maps bound into it (with where they
/// go). Their directories in the VM are the fuse module's ([`crate::fuse::added_dir`]):
/// `RemoveMap` is refused while a container uses a map, so they stay mounted.
struct Pod {
    map: u32,
    binds: Vec<PodBind>,
}

impl Pod {
    fn uses(&self, map: u32) -> bool {
        self.map == map || self.binds.iter().any(|b| b.map == map)
    }
}

/// The pod containers claimed and not yet removed, by id.
static PODS: Mutex<BTreeMap<String, Pod>> = Mutex::new(BTreeMap::new());
/// The binds of containers not claimed yet (`PodRequest{Binds}`), by id.
static PENDING: Mutex<BTreeMap<String, Vec<PodBind>>> = Mutex::new(BTreeMap::new());

fn pods() -> std::sync::MutexGuard<'static, BTreeMap<String, Pod>> {
    PODS.lock().unwrap_or_else(|e| e.into_inner())
}

fn pending() -> std::sync::MutexGuard<'static, BTreeMap<String, Vec<PodBind>>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

fn checked(id: &str) -> Result<&str> {
    if valid_pod_id(id) {
        Ok(id)
    } else {
        Err(Error::BadPodId(id.chars().take(80).collect()))
    }
}

/// Whether `dest` may be where a bind goes in a container: absolute, not `/`, no `..`, no
/// NUL ([`clean_guest_path`]), at most [`MAX_DESTINATION`] bytes (it comes from the host's
/// clients).
fn valid_destination(dest: &str) -> bool {
    dest.len() <= MAX_DESTINATION && clean_guest_path(dest).is_some()
}

/// Keeps `binds` for container `id`, not started yet, until its [`claim`] (replacing what
/// an earlier `Binds` said).
fn set_binds(id: &str, binds: &[PodBind]) -> Result<()> {
    let id = checked(id)?;
    if binds.len() > MAX_MAPS {
        return Err(Error::TooManyMaps(MAX_MAPS));
    }
    if let Some(b) = binds.iter().find(|b| !valid_destination(&b.destination)) {
        return Err(Error::BadBindDestination(
            b.destination.chars().take(80).collect(),
        ));
    }
    if pods().contains_key(id) {
        return Err(Error::PodExists(id.into()));
    }
    let mut pending = pending();
    if !pending.contains_key(id) && pending.len() >= MAX_POD_CONTAINERS {
        return Err(Error::TooManyPods(MAX_POD_CONTAINERS));
    }
    pending.insert(id.into(), binds.to_vec());
    Ok(())
}

/// Records container `id` with map `map` as its root (mounted by `AddMap`, and no other
/// container's root or bind) and the binds `PodRequest{Binds}` gave it (each an added map,
/// not a container's root).
pub fn claim(id: &str, map: u32) -> Result<()> {
    let id = checked(id)?;
    let mut pods = pods();
    if pods.contains_key(id) {
        return Err(Error::PodExists(id.into()));
    }
    if pods.len() >= MAX_POD_CONTAINERS {
        return Err(Error::TooManyPods(MAX_POD_CONTAINERS));
    }
    if pods.values().any(|p| p.uses(map)) {
        return Err(Error::MapInUse(map));
    }
    dir_of(map)?;
    let mut pending = pending();
    let binds = pending.get(id).cloned().unwrap_or_default();
    for b in &binds {
        if b.map == map || pods.values().any(|p| p.map == b.map) {
            return Err(Error::MapInUse(b.map));
        }
        dir_of(b.map)?;
    }
    pending.remove(id);
    pods.insert(id.into(), Pod { map, binds });
    Ok(())
}

/// Where added map `map` is mounted in the VM.
fn dir_of(map: u32) -> Result<String> {
    crate::fuse::added_dir(map).ok_or(Error::NoSuchMap(map))
}

/// The binds of claimed container `id`: map directories in the VM and where they go.
pub fn binds_of(id: &str) -> Result<Vec<Bind>> {
    let id = checked(id)?;
    let pods = pods();
    let pod = pods.get(id).ok_or_else(|| Error::NoSuchPod(id.into()))?;
    (pod.binds.iter())
        .map(|b| {
            Ok(Bind {
                source: dir_of(b.map)?,
                guest: b.destination.clone(),
                read_only: b.read_only,
            })
        })
        .collect()
}

/// The root directory (in the VM) of claimed container `id`.
pub fn root_of(id: &str) -> Result<String> {
    let id = checked(id)?;
    let map = (pods().get(id).map(|p| p.map)).ok_or_else(|| Error::NoSuchPod(id.into()))?;
    dir_of(map)
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
            if pods().values().any(|p| p.uses(*map)) {
                return Err(Error::MapInUse(*map));
            }
            crate::fuse::remove(*map)
        }
        PodOp::RemoveContainer { id } => remove(checked(id)?),
        PodOp::Binds { id, binds } => set_binds(id, binds),
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
    pending().remove(id);
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

    fn bind(map: u32, destination: &str) -> PodBind {
        PodBind {
            map,
            destination: destination.into(),
            read_only: false,
        }
    }

    /// Binds are checked when they arrive: the id, each destination, their count; a claim
    /// needs their maps mounted, and the pending binds go with the container.
    #[test]
    fn binds_are_checked() {
        let binds = |id: &str, binds: Vec<PodBind>| {
            handle(&PodOp::Binds {
                id: id.into(),
                binds,
            })
        };
        assert!(matches!(binds("../x", vec![]), Err(Error::BadPodId(_))));
        let long = format!("/{}", "x".repeat(MAX_DESTINATION));
        for bad in [
            "", "/", "//", "data", "./data", "/a/../b", "/..", "/a\0b", &long,
        ] {
            let r = binds("b1", vec![bind(1, "/ok"), bind(2, bad)]);
            assert!(matches!(r, Err(Error::BadBindDestination(_))), "{bad:?}");
        }
        let many = (0..=MAX_MAPS as u32).map(|m| bind(m, "/d")).collect();
        assert!(matches!(binds("b1", many), Err(Error::TooManyMaps(_))));
        for good in ["/data", "/var/lib/x", "/a/./b", "/..x/y"] {
            assert!(binds("b1", vec![bind(1, good)]).is_ok(), "{good}");
        }
        // No map is mounted in a unit test: the claim fails, the binds stay pending.
        assert!(matches!(claim("b1", 91), Err(Error::NoSuchMap(91))));
        assert!(pending().contains_key("b1"));
        handle(&PodOp::RemoveContainer { id: "b1".into() }).unwrap();
        assert!(!pending().contains_key("b1"));
        assert!(matches!(binds_of("b1"), Err(Error::NoSuchPod(_))));
    }
}
