//! File operations in the container (`Msg::FsRequest`, protocol 6): what `fcvm serve` turns
//! the E2B SDK's `files` calls into, so that nothing has to listen inside the guest.
//!
//! 1. Each request runs on a pool thread and answers once on its stream: `FsReply` or
//!    `FsError`. A new epoch ([`cancel_all`]) silences the answers of the old one.
//! 2. The root is the container's as its processes see it: `/proc/<pid>/root` of its main
//!    process (its mounts included), or the prepared rootfs before the container runs.
//! 3. Every path is cleaned lexically ([`clean`]), then opened with `openat2(RESOLVE_IN_ROOT |
//!    RESOLVE_NO_MAGICLINKS)` from that root: a symlink to `/etc/shadow` is the container's
//!    `/etc/shadow`, `..` stops at its `/`, and `/proc/*/root` leads nowhere. Operations on a
//!    name (mkdir, rename, unlink) act on the name inside its parent opened that way.
//! 4. The request's user comes from the container's own passwd and group; the thread takes its
//!    ids as filesystem ids for the operation ([`ids::AsUser`]), so the kernel checks
//!    permissions as it would for that user's process, and what it creates is the user's.
//! 5. Watches (protocol 7, [`watch`]) outlive their request: inotify read by a thread per
//!    watch, events queued (bounded) until the host asks. `Metrics` ([`metrics`]) samples
//!    the VM's CPU and memory and the root's disk.

use crate::channel::Outbox;
mod ids;
mod metrics;
mod root;
mod watch;

use crate::paths::{CONTAINER_PIDFILE, ROOTFS};
use fcvm_proto::{Frame, FsErrorKind, FsOp, FsReply, FsRequest, Msg, MAX_CHUNK};
pub use ids::{AsUser, Names};
pub use root::Root;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped by every new epoch; a request answers only if it is unchanged since it started.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Drops the answers of every request still running (called when a new epoch starts).
pub fn cancel_all() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// A failed operation: its kind on the wire and a one-line reason.
#[derive(Debug)]
pub struct FsFailure {
    pub kind: FsErrorKind,
    pub message: String,
}

impl FsFailure {
    pub fn new(kind: FsErrorKind, message: impl Into<String>) -> FsFailure {
        FsFailure {
            kind,
            message: message.into(),
        }
    }

    /// `what` failed with `e` (the kind from its errno).
    pub fn io(what: &str, path: &str, e: io::Error) -> FsFailure {
        let kind = match e.raw_os_error() {
            Some(libc::ENOENT) => FsErrorKind::NotFound,
            Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => FsErrorKind::Exists,
            Some(libc::ENOTDIR) => FsErrorKind::NotADirectory,
            Some(libc::EISDIR) => FsErrorKind::IsADirectory,
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                FsErrorKind::PermissionDenied
            }
            Some(libc::ELOOP) | Some(libc::ENAMETOOLONG) | Some(libc::EXDEV) => {
                FsErrorKind::Invalid
            }
            _ => FsErrorKind::Failed,
        };
        FsFailure::new(kind, format!("{what} {path}: {e}"))
    }
}

pub type FsResult<T> = std::result::Result<T, FsFailure>;

/// Starts `req`, answering on `stream`.
pub fn start(stream: u32, req: FsRequest, out: &Outbox) {
    let gen = GENERATION.load(Ordering::SeqCst);
    let tx = out.clone();
    let spawned = crate::pool::run(Box::new(move || {
        let msg = answer(serve(&req));
        if GENERATION.load(Ordering::SeqCst) == gen {
            tx.send(Frame { stream, msg });
        }
    }));
    if let Err(e) = spawned {
        let f = FsFailure::new(
            FsErrorKind::Failed,
            format!("no thread for the request: {e}"),
        );
        out.send(Frame {
            stream,
            msg: answer(Err(f)),
        });
    }
}

fn answer(r: FsResult<FsReply>) -> Msg {
    match r {
        Ok(reply) => Msg::FsReply(reply),
        Err(f) => Msg::FsError {
            kind: f.kind,
            message: f.message,
        },
    }
}

/// The container's root as its processes see it (see the module docs).
fn container_root() -> FsResult<Root> {
    let pid = std::fs::read_to_string(CONTAINER_PIDFILE)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    if let Some(pid) = pid {
        if let Ok(r) = Root::open(&format!("/proc/{pid}/root")) {
            return Ok(r);
        }
    }
    if !crate::container::prepared() {
        return Err(FsFailure::new(
            FsErrorKind::NoContainer,
            "the container is not prepared",
        ));
    }
    Root::open(ROOTFS).map_err(|e| FsFailure::io("open", ROOTFS, e))
}

/// Runs one request in the container.
pub fn serve(req: &FsRequest) -> FsResult<FsReply> {
    // A watch's later requests need neither the root nor the user.
    match &req.op {
        FsOp::WatchEvents { id, wait_ms } => return watch::events(*id, *wait_ms),
        FsOp::Unwatch { id } => return watch::unwatch(*id),
        _ => {}
    }
    let root = container_root()?;
    serve_in(&root, req)
}

/// Runs `req` in `root` (what [`serve`] does once it has the root; tests give their own).
pub fn serve_in(root: &Root, req: &FsRequest) -> FsResult<FsReply> {
    let db = crate::users::Database::parse(
        &root.read_small("/etc/passwd").unwrap_or_default(),
        &root.read_small("/etc/group").unwrap_or_default(),
    );
    let ids = db
        .resolve(&req.user)
        .map_err(|e| FsFailure::new(FsErrorKind::Invalid, crate::error::Report(&e).to_string()))?;
    let names = Names::parse(|f| root.read_small(f));
    let path = |p: &str| clean(&ids.home, p);
    let _as = AsUser::enter(&ids).map_err(|e| FsFailure::io("taking the ids of", &req.user, e))?;
    match &req.op {
        FsOp::Read {
            path: p,
            offset,
            len,
        } => {
            if *len as usize > MAX_CHUNK {
                return Err(FsFailure::new(FsErrorKind::Invalid, "read beyond a chunk"));
            }
            let (data, eof) = root.read(&path(p)?, *offset, *len as usize)?;
            Ok(FsReply::Data { data, eof })
        }
        FsOp::Write {
            path: p,
            offset,
            data,
            truncate,
        } => {
            if data.len() > MAX_CHUNK {
                return Err(FsFailure::new(FsErrorKind::Invalid, "write beyond a chunk"));
            }
            let p = path(p)?;
            root.write(&p, *offset, data, *truncate)?;
            Ok(FsReply::Entry(root.entry(&p, &names)?))
        }
        FsOp::Stat { path: p } => Ok(FsReply::Entry(root.entry(&path(p)?, &names)?)),
        FsOp::List {
            path: p,
            depth,
            skip,
        } => {
            let (entries, more) = root.list(&path(p)?, (*depth).max(1), *skip as usize, &names)?;
            Ok(FsReply::Entries { entries, more })
        }
        FsOp::MakeDir { path: p } => {
            let p = path(p)?;
            if !root.make_dirs(&p)? {
                return Err(FsFailure::new(
                    FsErrorKind::Exists,
                    format!("{} exists", show(&p)),
                ));
            }
            Ok(FsReply::Entry(root.entry(&p, &names)?))
        }
        FsOp::Move { from, to } => {
            let (from, to) = (path(from)?, path(to)?);
            root.rename(&from, &to)?;
            Ok(FsReply::Entry(root.entry(&to, &names)?))
        }
        FsOp::Remove { path: p } => {
            root.remove(&path(p)?)?;
            Ok(FsReply::Done)
        }
        FsOp::Watch { path: p, recursive } => {
            let root = root.try_clone().map_err(|e| FsFailure::io("watch", p, e))?;
            let id = watch::start(root, ids.clone(), path(p)?, *recursive)?;
            Ok(FsReply::Watching { id })
        }
        FsOp::WatchEvents { id, wait_ms } => watch::events(*id, *wait_ms),
        FsOp::Unwatch { id } => watch::unwatch(*id),
        FsOp::Metrics => Ok(FsReply::Metrics(metrics::sample(root)?)),
    }
}

/// `path` (relative ones against `home`) as components, cleaned lexically: no empty, `.` or
/// `..` components left, and `..` never climbs above the root.
pub fn clean(home: &str, path: &str) -> FsResult<Vec<String>> {
    if path.is_empty() {
        return Err(FsFailure::new(FsErrorKind::Invalid, "empty path"));
    }
    if path.contains('\0') {
        return Err(FsFailure::new(
            FsErrorKind::Invalid,
            "a path with a NUL byte",
        ));
    }
    let full = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{home}/{path}")
    };
    let mut comps: Vec<String> = Vec::new();
    for c in full.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                comps.pop();
            }
            c => comps.push(c.to_string()),
        }
    }
    Ok(comps)
}

#[cfg(test)]
mod tests;

/// `/a/b` of cleaned components.
pub fn show(comps: &[String]) -> String {
    format!("/{}", comps.join("/"))
}

/// A raw system call's result: its error from errno when negative.
pub(super) fn check(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
