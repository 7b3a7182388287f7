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

mod client;
mod fs;
mod pages;
mod split;

use std::sync::{Arc, Mutex, OnceLock};

use fcvm_proto::{MapMount, MapReply};
use nix::errno::Errno;

use crate::channel::Outbox;
use crate::error::{Error, Result};

/// Where the maps are mounted in the VM (outside the container).
const MAPS_DIR: &str = "/run/fcvm-maps";

static CLIENT: OnceLock<Arc<client::Client>> = OnceLock::new();
/// The mounts made, for the container's config; their sessions stay up for the VM's life.
static MOUNTED: Mutex<Vec<Bind>> = Mutex::new(Vec::new());

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
    // One pinned buffer for every map's reads, made with the first map (docs/volumes.md).
    static PAGES: OnceLock<Option<Arc<pages::Pages>>> = OnceLock::new();
    let pages = match maps.len() > mounted.len() {
        true => PAGES
            .get_or_init(|| pages::Pages::new().map(Arc::new))
            .clone(),
        false => None,
    };
    for (i, m) in maps.iter().enumerate().skip(mounted.len()) {
        let dir = format!("{MAPS_DIR}/{i}");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Mkdir(dir.clone().into(), e))?;
        use fuser::MountOption as O;
        let mut options = vec![
            O::FSName(format!("fcvm-map{i}")),
            O::Subtype("fcvm".into()),
            O::DefaultPermissions,
            O::NoDev,
            O::NoSuid,
            O::CUSTOM(format!("max_read={}", split::KERNEL_IO)),
        ];
        if m.read_only {
            options.push(O::RO);
        }
        let mut config = fuser::Config::default();
        config.mount_options = options;
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(1);
        let fs = fs::MapFs::new(i as u32, client.clone(), pages.clone());
        let failed = |e: std::io::Error| Error::Mount {
            src: format!("fcvm-map{i}"),
            dst: dir.clone(),
            fstype: "fuse".into(),
            source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        let session = fuser::Session::new(fs, &dir, &config).map_err(failed)?;
        let bg = session.spawn().map_err(failed)?;
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
