//! Host directories mapped into the container (`--map HOST:GUEST[:ro]`, `-v`; docs/volumes.md).
//!
//! The guest mounts each map as a FUSE filesystem that its agent serves by asking the host
//! over the session (`MapRequest` / `MapReply`, [`fcvm_proto::map`]); the fcvm process that owns
//! the VM answers from the host directory ([`host`]). Nothing of a map lives in QEMU, so a VM
//! with maps snapshots and restores like any other: the agent resends what was in flight when
//! a new epoch begins, and a clone may serve other host directories at the same guest paths.
//!
//! 1. [`Map::parse`] checks a spec once, at the edge (clap's value parser): both paths
//!    absolute, the host directory there.
//! 2. [`Map::mounts`] is what the guest is told (guest path, read-only): part of the container
//!    prepared before an image-cache snapshot, so part of its key. The host path is not.
//! 3. [`serve`] answers the session's map requests until the session ends, from a
//!    [`MapTable`]: the maps by the guest's number. A pod's VM (`crate::bundle`) adds and
//!    removes maps in its table while it runs ([`serve_table`]). A `ReadPages` writes its data
//!    into the VM's memory ([`guest`]).

pub mod guest;
pub mod host;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fcvm_proto::map::{MapOp, MapReply, MAP_IN_FLIGHT};
use fcvm_proto::{Frame, MapMount, Msg};

use crate::session::Session;

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("Invalid --map {0:?}: expected HOST:GUEST[:ro]")]
    Syntax(String),
    #[error("Invalid --map {0:?}: the host path must be absolute")]
    RelativeHost(String),
    #[error("Invalid --map {0:?}: the guest path must be absolute and not /")]
    BadGuest(String),
    /// No #[source]: clap shows a value parser's error by its message alone.
    #[error("Invalid --map {0:?}: host directory {1}: {2}")]
    Host(String, String, std::io::Error),
    #[error("Invalid --map {0:?}: {1} is not a directory")]
    NotADirectory(String, String),
    #[error("--map: guest path {0} is mapped twice")]
    Duplicate(String),
    #[error("--map {0}: the snapshot has no map there (a clone can only remap its guest paths)")]
    NotInSnapshot(String),
}

/// A map as a snapshot's manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapRecord {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl From<&Map> for MapRecord {
    fn from(m: &Map) -> Self {
        MapRecord {
            host: m.host.clone(),
            guest: m.guest.clone(),
            read_only: m.read_only,
        }
    }
}

/// One `--map HOST:GUEST[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    /// The host directory (absolute; it existed when the flag was parsed).
    pub host: PathBuf,
    /// Where the container sees it: absolute, cleaned.
    pub guest: String,
    pub read_only: bool,
}

impl Map {
    /// Parses and checks one spec (podman's `-v` syntax; options `ro` or `rw`).
    pub fn parse(spec: &str) -> Result<Map, MapError> {
        let mut parts = spec.split(':');
        let (Some(host), Some(guest)) = (parts.next(), parts.next()) else {
            return Err(MapError::Syntax(spec.into()));
        };
        let read_only = match parts.next() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(_) => return Err(MapError::Syntax(spec.into())),
        };
        if parts.next().is_some() || host.is_empty() || guest.is_empty() {
            return Err(MapError::Syntax(spec.into()));
        }
        if !host.starts_with('/') {
            return Err(MapError::RelativeHost(spec.into()));
        }
        let guest =
            fcvm_proto::clean_guest_path(guest).ok_or_else(|| MapError::BadGuest(spec.into()))?;
        let host = PathBuf::from(host);
        let meta =
            std::fs::metadata(&host).map_err(|e| MapError::Host(spec.into(), show(&host), e))?;
        if !meta.is_dir() {
            return Err(MapError::NotADirectory(spec.into(), show(&host)));
        }
        Ok(Map {
            host,
            guest,
            read_only,
        })
    }

    /// What the guest is told of `maps`, in order (a map's number is its index).
    pub fn mounts(maps: &[Map]) -> Vec<MapMount> {
        maps.iter()
            .map(|m| MapMount {
                guest: m.guest.clone(),
                read_only: m.read_only,
            })
            .collect()
    }

    /// The maps a clone of a snapshot with `recorded` maps serves: the snapshot's, each
    /// replaced by the one `given` for its guest path. The guest's mounts are fixed in the
    /// snapshot, so a given map must name one of its guest paths; a given `:ro` makes the
    /// host refuse writes too (the guest's mount keeps the snapshot's mode).
    pub fn for_clone(recorded: &[MapRecord], given: &[Map]) -> Result<Vec<Map>, MapError> {
        Map::check_unique(given)?;
        if let Some(g) = given
            .iter()
            .find(|g| !recorded.iter().any(|r| r.guest == g.guest))
        {
            return Err(MapError::NotInSnapshot(g.guest.clone()));
        }
        Ok(recorded
            .iter()
            .map(|r| match given.iter().find(|g| g.guest == r.guest) {
                Some(g) => Map {
                    read_only: g.read_only || r.read_only,
                    ..g.clone()
                },
                None => Map {
                    host: r.host.clone(),
                    guest: r.guest.clone(),
                    read_only: r.read_only,
                },
            })
            .collect())
    }

    /// Refuses two maps at one guest path.
    pub fn check_unique(maps: &[Map]) -> Result<(), MapError> {
        let mut seen = std::collections::HashSet::new();
        for m in maps {
            if !seen.insert(&m.guest) {
                return Err(MapError::Duplicate(m.guest.clone()));
            }
        }
        Ok(())
    }

    /// The cache-key text of `maps`: guest paths and modes, never host paths (docs/volumes.md).
    pub fn key(maps: &[Map]) -> String {
        maps.iter()
            .map(|m| format!("{}:{}", m.guest, if m.read_only { "ro" } else { "rw" }))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// The maps a session serves, by the guest's number: each host directory held open.
/// Cloning shares the table (the server reads it, a pod's VM adds to it).
#[derive(Clone, Default)]
pub struct MapTable(Arc<std::sync::RwLock<HashMap<u32, Arc<host::Root>>>>);

impl MapTable {
    /// Serves map `map` from host directory `host` (replacing what served that number).
    pub fn add(&self, map: u32, host: &Path, read_only: bool) -> Result<(), host::OpenRootError> {
        let root = Arc::new(host::Root::open(host, read_only)?);
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(map, root);
        Ok(())
    }

    /// Stops serving map `map`: its requests are answered `EIO` from now on.
    pub fn remove(&self, map: u32) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&map);
    }

    fn get(&self, map: u32) -> Option<Arc<host::Root>> {
        let roots = self.0.read().unwrap_or_else(|e| e.into_inner());
        roots.get(&map).cloned()
    }
}

/// Serves the map requests of `session` from `maps` (indexed as the guest knows them) until
/// the session ends (see [`serve_table`]). A map whose directory cannot be opened answers
/// `EIO`. Without maps it leaves the requests for a later server (a pod's VM, which adds
/// maps while it runs). `qemu_pid`: the VM's QEMU, whose memory `ReadPages` writes.
pub fn serve(session: &Session, maps: &[Map], qemu_pid: u32) {
    if maps.is_empty() {
        return;
    }
    let table = MapTable::default();
    for (i, m) in maps.iter().enumerate() {
        if let Err(e) = table.add(i as u32, &m.host, m.read_only) {
            let e = crate::util::chain(&e);
            tracing::warn!("map {}: {e}", m.host.display());
        }
    }
    serve_table(session, table, qemu_pid);
}

/// Serves the map requests of `session` from `table` until the session ends; at most
/// [`MAP_IN_FLIGHT`] at once, each on a blocking thread; a map not in the table answers
/// `EIO`. Returns false (and does nothing) if the requests were taken already. `qemu_pid`:
/// the VM's QEMU, whose memory `ReadPages` writes (answered `EOPNOTSUPP` when it cannot be
/// reached: the agent then reads through the channel).
pub fn serve_table(session: &Session, table: MapTable, qemu_pid: u32) -> bool {
    let Some((mut rx, out)) = session.map_channel() else {
        return false;
    };
    // Opened now, while this QEMU surely runs (the session just connected to it).
    let guest = guest::GuestMem::open(qemu_pid)
        .map_err(|e| {
            let e = crate::util::chain(&e);
            tracing::info!("map reads go through the channel: {e}");
        })
        .ok();
    let guest = Arc::new(guest);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAP_IN_FLIGHT));
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (table, out, guest) = (table.clone(), out.clone(), guest.clone());
            tokio::spawn(async move {
                let id = req.id;
                let result = tokio::task::spawn_blocking(move || {
                    let Some(root) = table.get(req.map) else {
                        return Err(libc::EIO);
                    };
                    match (req.op, guest.as_ref()) {
                        (
                            MapOp::ReadPages {
                                path,
                                offset,
                                len,
                                pages,
                            },
                            Some(g),
                        ) => guest::read_pages(&root, g, &path, offset, len, &pages),
                        (op, _) => root.handle(op),
                    }
                    .map_err(|e| e as i32)
                })
                .await
                .unwrap_or(Err(libc::EIO));
                let reply = MapReply { id, result };
                out.send(Frame::control(Msg::MapReply(reply))).await;
                drop(slot);
            });
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let m = Map::parse(&format!("{d}:/data/./x/:ro")).unwrap();
        assert_eq!((m.guest.as_str(), m.read_only), ("/data/x", true));
        assert!(!Map::parse(&format!("{d}:/data")).unwrap().read_only);
        assert!(!Map::parse(&format!("{d}:/data:rw")).unwrap().read_only);
        for bad in [
            "relative:/x".to_string(),
            format!("{d}:relative"),
            format!("{d}:/"),
            format!("{d}:/a/../b"),
            format!("{d}:/x:rx"),
            d.clone(),
            format!("{d}/missing:/x"),
            format!("{d}:/x:ro:z"),
        ] {
            assert!(Map::parse(&bad).is_err(), "{bad}");
        }
        std::fs::write(dir.path().join("f"), "").unwrap();
        assert!(matches!(
            Map::parse(&format!("{d}/f:/x")),
            Err(MapError::NotADirectory(..))
        ));
        let two = [m.clone(), m];
        assert!(Map::check_unique(&two).is_err());
        assert_eq!(Map::key(&two[..1]), "/data/x:ro");
    }
}
