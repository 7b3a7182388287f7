//! Host directory maps in the guest (`--map`, docs/volumes.md): one FUSE mount per map, served
//! by asking the host over the session.
//!
//! 1. [`set_outbox`] (at start) gives the [`client::Client`] the channel's outbox.
//! 2. [`mount_all`] (in `Prepare`, before any container exists) mounts map `i` at
//!    `/run/fcvm-maps/<i>` in the VM — `mount(2)` on `/dev/fuse` as root, no fusermount —
//!    with `allow_other` and `default_permissions` (the kernel checks the host's modes and ids
//!    against the container's user), read-only for a `:ro` map, and serves it on a thread of
//!    its own ([`fs::MapFs`]). [`binds`] lists them for the container's config
//!    (`crate::oci`), which bind-mounts each at its guest path.
//! 3. [`on_reply`] (the channel's reader thread) finishes a request; [`new_epoch`] (a restored
//!    VM's new host) resends the unanswered ones. Nothing else changes across a snapshot:
//!    the mounts, the kernel's requests and the node table are all guest memory.
//! 4. A pod's later containers ([`crate::pods`]) have maps as their roots, added and removed
//!    while the VM runs ([`add`], [`remove`]): the same mount at `/run/fcvm-maps/<n>`, not
//!    bound into the first container, and unmounted (lazily) when the host removes it.

mod client;
mod fs;
mod pages;
mod split;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use fcvm_proto::{MapMount, MapReply, MAX_MAPS};
use nix::errno::Errno;

use crate::channel::Outbox;
use crate::error::{Error, Result};

/// Where the maps are mounted in the VM (outside the container).
const MAPS_DIR: &str = "/run/fcvm-maps";

static CLIENT: OnceLock<Arc<client::Client>> = OnceLock::new();
/// The mounts made, for the container's config; their sessions stay up for the VM's life.
static MOUNTED: Mutex<Vec<Bind>> = Mutex::new(Vec::new());
/// Maps added at run time ([`add`]), by number, with what keeps each mounted.
static ADDED: Mutex<BTreeMap<u32, Added>> = Mutex::new(BTreeMap::new());

struct Added {
    dir: String,
    /// Dropped after the lazy unmount: its thread ends once the kernel ends the connection.
    _session: fuser::BackgroundSession,
}

/// A map mounted in the VM, to bind into the container.
#[derive(Debug, Clone)]
pub struct Bind {
    pub source: String,
    pub guest: String,
    pub read_only: bool,
}

pub fn set_outbox(out: Outbox) {
    let _ = CLIENT.set(Arc::new(client::Client::new(out)));
}

/// The host's answer to a map request.
pub fn on_reply(r: MapReply) {
    if let Some(c) = CLIENT.get() {
        c.reply(r);
    }
}

/// A new host took over: what the old one left unanswered is asked again.
pub fn new_epoch() {
    if let Some(c) = CLIENT.get() {
        c.resend();
    }
}

/// The maps to bind into the container, in order.
pub fn binds() -> Vec<Bind> {
    MOUNTED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Mounts every map and starts serving it.
pub fn mount_all(maps: &[MapMount]) -> Result<()> {
    let Some(client) = CLIENT.get() else {
        return Ok(());
    };
    let mut mounted = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
    for (i, m) in maps.iter().enumerate().skip(mounted.len()) {
        let (dir, bg) = mount(i as u32, m.read_only, client)?;
        // The mount lives as long as the VM: dropping the handle would unmount it.
        std::mem::forget(bg);
        mounted.push(Bind {
            source: dir,
            guest: m.guest.clone(),
            read_only: m.read_only,
        });
    }
    Ok(())
}

/// Mounts map `map` at `/run/fcvm-maps/<map>` and serves it on a thread of its own.
fn mount(
    map: u32,
    read_only: bool,
    client: &Arc<client::Client>,
) -> Result<(String, fuser::BackgroundSession)> {
    let dir = dir_of(map);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Mkdir(dir.clone().into(), e))?;
    use fuser::MountOption as O;
    let mut options = vec![
        O::FSName(format!("fcvm-map{map}")),
        O::Subtype("fcvm".into()),
        O::DefaultPermissions,
        O::NoDev,
        O::NoSuid,
        O::CUSTOM(format!("max_read={}", split::KERNEL_IO)),
    ];
    if read_only {
        options.push(O::RO);
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(1);
    let fs = fs::MapFs::new(map, client.clone(), pages());
    let failed = |e: std::io::Error| Error::Mount {
        src: format!("fcvm-map{map}"),
        dst: dir.clone(),
        fstype: "fuse".into(),
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    };
    let session = fuser::Session::new(fs, &dir, &config).map_err(failed)?;
    let bg = session.spawn().map_err(failed)?;
    Ok((dir, bg))
}

/// Makes the pinned buffer now, before the image-cache snapshot: a restored VM that mounts
/// its first map later (a pod's further container, rooted at one) then finds it made instead
/// of locking 4 MiB and reading their addresses on freshly translated code (~25 ms under
/// TCG). A VM that never mounts a map holds the pages only in guest memory: a restore maps
/// them from the snapshot as they are touched.
pub fn pin_buffer() {
    let _ = pages();
}

/// The one pinned buffer every map's reads land in (docs/volumes.md), made with the first
/// mount or [`pin_buffer`]; None where it cannot be pinned (reads then go through the channel).
fn pages() -> Option<Arc<pages::Pages>> {
    static PAGES: OnceLock<Option<Arc<pages::Pages>>> = OnceLock::new();
    PAGES
        .get_or_init(|| pages::Pages::new().map(Arc::new))
        .clone()
}

/// Where map `map` is mounted in the VM.
fn dir_of(map: u32) -> String {
    format!("{MAPS_DIR}/{map}")
}

/// Mounts map `map`, which the host serves from now on (a pod container's root to come).
/// Refused for a number in use (the plan's maps are 0..n) and beyond [`MAX_MAPS`] maps.
pub fn add(map: u32, read_only: bool) -> Result<()> {
    let client = CLIENT.get().ok_or(Error::NoMapChannel)?;
    let planned = MOUNTED.lock().unwrap_or_else(|e| e.into_inner()).len();
    let mut added = ADDED.lock().unwrap_or_else(|e| e.into_inner());
    if (map as usize) < planned || added.contains_key(&map) {
        return Err(Error::MapInUse(map));
    }
    if planned + added.len() >= MAX_MAPS {
        return Err(Error::TooManyMaps(MAX_MAPS));
    }
    let (dir, session) = mount(map, read_only, client)?;
    added.insert(
        map,
        Added {
            dir,
            _session: session,
        },
    );
    Ok(())
}

/// Where added map `map` is mounted in the VM, if it is.
pub fn added_dir(map: u32) -> Option<String> {
    let added = ADDED.lock().unwrap_or_else(|e| e.into_inner());
    added.get(&map).map(|a| a.dir.clone())
}

/// Unmounts added map `map` (nothing to do if it is not mounted). Lazily: a process of the
/// VM that still has a file open there keeps the connection until it closes it; the mount
/// is gone from the VM at once and the directory is removed.
pub fn remove(map: u32) -> Result<()> {
    let mut added = ADDED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(a) = added.remove(&map) else {
        return Ok(());
    };
    let r = nix::mount::umount2(a.dir.as_str(), nix::mount::MntFlags::MNT_DETACH);
    if let Err(source) = r {
        if source != Errno::EINVAL {
            let dir = a.dir.clone();
            added.insert(map, a);
            return Err(Error::Unmount(dir, source));
        }
    }
    let _ = std::fs::remove_dir(&a.dir);
    Ok(())
}
