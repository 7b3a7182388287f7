//! Watches (`FsOp::Watch`, `WatchEvents`, `Unwatch`; protocol 7): what envd's `WatchDir` and
//! watcher calls become. Each watch is one inotify instance read by a thread of its own.
//!
//! 1. The watched directory (and, recursive, each directory under it) is opened inside the
//!    container's root like every other path ([`Root`]: no symlink leads out), then watched
//!    through its `/proc/self/fd/N`, so inotify sees exactly the directory that was resolved.
//!    The thread runs with the request user's ids: the kernel checks that user may read it.
//! 2. A recursive watch adds each directory created (or moved) under it as it sees it, up to
//!    [`MAX_DIRS`] in all.
//! 3. Events wait in the watch's queue until a `WatchEvents` takes them. The queue is bounded
//!    ([`MAX_WATCH_BYTES`]); past it, or when the kernel's own queue overflows, the watch
//!    drops what follows, is flagged `overflowed`, stops reading, and ends once its queued
//!    events have been taken (docs/protocol.md §4). At most [`MAX_WATCHERS`] watches exist.
//! 4. A watch lives until `Unwatch`, its overflow or the VM's end: not tied to the request,
//!    the stream or the epoch (a paused and resumed sandbox keeps its watchers).

use super::root::Root;
use super::{check, AsUser, FsFailure, FsResult};
use crate::users::Ids;
use fcvm_proto::{
    FsErrorKind, FsEvent, FsEventKind, FsReply, MAX_LIST_BYTES, MAX_WATCHERS, MAX_WATCH_BYTES,
    MAX_WATCH_WAIT_MS,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Directories one recursive watch covers at most.
pub const MAX_DIRS: usize = 4096;

/// How often a watch's thread looks whether it was ended.
const TICK_MS: i32 = 500;

const MASK: u32 = libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_ONLYDIR;

#[derive(Default)]
struct Queue {
    events: VecDeque<FsEvent>,
    /// What `events` counts against [`MAX_WATCH_BYTES`].
    bytes: usize,
    overflowed: bool,
}

#[derive(Default)]
struct Watch {
    q: Mutex<Queue>,
    ready: Condvar,
    stop: AtomicBool,
}

impl Watch {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, ev: FsEvent) {
        let mut q = self.lock();
        if q.overflowed {
            return;
        }
        let cost = cost(&ev);
        if q.bytes + cost > MAX_WATCH_BYTES {
            q.overflowed = true;
        } else {
            q.bytes += cost;
            q.events.push_back(ev);
        }
        drop(q);
        self.ready.notify_all();
    }

    fn overflow(&self) {
        self.lock().overflowed = true;
        self.ready.notify_all();
    }

    fn end(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }
}

/// An event's share of the queue and of a reply.
fn cost(ev: &FsEvent) -> usize {
    ev.name.len() + 16
}

fn watches() -> MutexGuard<'static, BTreeMap<u64, Arc<Watch>>> {
    static WATCHES: Mutex<BTreeMap<u64, Arc<Watch>>> = Mutex::new(BTreeMap::new());
    WATCHES.lock().unwrap_or_else(|e| e.into_inner())
}

fn too_many() -> FsFailure {
    FsFailure::new(
        FsErrorKind::Invalid,
        format!("at most {MAX_WATCHERS} watches at a time"),
    )
}

/// Starts watching `dir` of `root` as `ids`: the new watch's id once its directories are
/// watched.
pub fn start(root: Root, ids: Ids, dir: Vec<String>, recursive: bool) -> FsResult<u64> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    if watches().len() >= MAX_WATCHERS {
        return Err(too_many());
    }
    let w = Arc::new(Watch::default());
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let w2 = w.clone();
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || run(root, ids, dir, recursive, &w2, tx))
        .map_err(|e| FsFailure::io("watch", "(thread)", e))?;
    match rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(f)) => return Err(f),
        Err(_) => return Err(FsFailure::new(FsErrorKind::Failed, "the watch thread died")),
    }
    let mut all = watches();
    if all.len() >= MAX_WATCHERS {
        w.end();
        return Err(too_many());
    }
    let id = NEXT.fetch_add(1, Ordering::SeqCst);
    all.insert(id, w);
    Ok(id)
}

/// The events of watch `id` (see [`fcvm_proto::FsOp::WatchEvents`]).
pub fn events(id: u64, wait_ms: u32) -> FsResult<FsReply> {
    let w = watches().get(&id).cloned().ok_or_else(|| unknown(id))?;
    let deadline = Instant::now() + Duration::from_millis(wait_ms.min(MAX_WATCH_WAIT_MS) as u64);
    let mut q = w.lock();
    while q.events.is_empty() && !q.overflowed && !w.stop.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        q = w
            .ready
            .wait_timeout(q, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    let (mut events, mut bytes) = (Vec::new(), 0);
    while let Some(ev) = q.events.front() {
        if bytes + cost(ev) > MAX_LIST_BYTES && !events.is_empty() {
            break;
        }
        bytes += cost(ev);
        q.bytes -= cost(ev);
        events.extend(q.events.pop_front());
    }
    let more = !q.events.is_empty();
    let overflowed = q.overflowed && !more;
    drop(q);
    if overflowed {
        watches().remove(&id);
        w.end();
    }
    Ok(FsReply::Events {
        events,
        more,
        overflowed,
    })
}

/// Whether watch `id`'s queue has overflowed, without taking its events: lets a test wait for
/// the watch's thread (which may lag a busy host's writers) before reading.
#[cfg(test)]
fn has_overflowed(id: u64) -> bool {
    watches().get(&id).is_some_and(|w| w.lock().overflowed)
}

/// Ends watch `id`.
pub fn unwatch(id: u64) -> FsResult<FsReply> {
    let w = watches().remove(&id).ok_or_else(|| unknown(id))?;
    w.end();
    Ok(FsReply::Done)
}

fn unknown(id: u64) -> FsFailure {
    FsFailure::new(FsErrorKind::NotFound, format!("no watch {id}"))
}

/// The watched directories of one inotify instance: watch descriptor → path relative to the
/// watched directory.
struct Dirs {
    fd: OwnedFd,
    root: Root,
    top: Vec<String>,
    by_wd: HashMap<i32, Vec<String>>,
}

impl Dirs {
    /// Watches `rel` (under the top directory); with `recursive`, every directory under it.
    fn add(&mut self, rel: &[String], recursive: bool) -> FsResult<()> {
        let mut todo = vec![rel.to_vec()];
        while let Some(rel) = todo.pop() {
            if self.by_wd.len() >= MAX_DIRS {
                return Err(FsFailure::new(
                    FsErrorKind::Invalid,
                    format!("more than {MAX_DIRS} directories to watch"),
                ));
            }
            let comps: Vec<String> = self.top.iter().chain(&rel).cloned().collect();
            let shown = super::show(&comps);
            let dir = self
                .root
                .open_dir_path(&comps)
                .map_err(|e| FsFailure::io("watch", &shown, e))?;
            let proc = std::ffi::CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd()))
                .expect("no NUL in a number");
            // SAFETY: `proc` is NUL-terminated; `self.fd` is our inotify instance.
            let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), proc.as_ptr(), MASK) };
            let wd = check(wd).map_err(|e| FsFailure::io("watch", &shown, e))?;
            self.by_wd.insert(wd, rel.clone());
            if recursive {
                let subs = self
                    .root
                    .subdirs(&comps)
                    .map_err(|e| FsFailure::io("watch", &shown, e))?;
                for s in subs {
                    let mut r = rel.clone();
                    r.push(s);
                    todo.push(r);
                }
            }
        }
        Ok(())
    }
}

/// envd's type of an inotify event (fsnotify's mapping); None for those it does not report.
fn kind(mask: u32) -> Option<FsEventKind> {
    if mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
        Some(FsEventKind::Create)
    } else if mask & libc::IN_MODIFY != 0 {
        Some(FsEventKind::Write)
    } else if mask & libc::IN_DELETE != 0 {
        Some(FsEventKind::Remove)
    } else if mask & libc::IN_MOVED_FROM != 0 {
        Some(FsEventKind::Rename)
    } else if mask & libc::IN_ATTRIB != 0 {
        Some(FsEventKind::Chmod)
    } else {
        None
    }
}

/// The watch's thread: sets the watches up (answering `ready`), then reads events until the
/// watch ends.
fn run(
    root: Root,
    ids: Ids,
    top: Vec<String>,
    recursive: bool,
    w: &Watch,
    ready: std::sync::mpsc::SyncSender<FsResult<()>>,
) {
    let set_up = || -> FsResult<(AsUser, Dirs)> {
        let who = AsUser::enter(&ids).map_err(|e| FsFailure::io("taking the ids of", "", e))?;
        // SAFETY: plain system call; the fd returned is ours alone.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        let fd = check(fd).map_err(|e| FsFailure::io("watch", &super::show(&top), e))?;
        let mut dirs = Dirs {
            // SAFETY: `fd` was just created and is owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            root,
            top: top.clone(),
            by_wd: HashMap::new(),
        };
        dirs.add(&[], recursive)?;
        Ok((who, dirs))
    };
    let (_who, mut dirs) = match set_up() {
        Ok(x) => x,
        Err(f) => {
            let _ = ready.send(Err(f));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    while !w.stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: dirs.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        if unsafe { libc::poll(&mut pfd, 1, TICK_MS) } <= 0 {
            continue;
        }
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::read(dirs.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        if !deliver(&buf[..n as usize], &mut dirs, recursive, w) {
            w.overflow();
            return;
        }
    }
}

/// Queues the events in `buf`; false once the watch overflowed.
fn deliver(buf: &[u8], dirs: &mut Dirs, recursive: bool, w: &Watch) -> bool {
    let head = std::mem::size_of::<libc::inotify_event>();
    let mut at = 0;
    while at + head <= buf.len() {
        // SAFETY: `head` bytes from `at` are in `buf`; read_unaligned copes with any alignment.
        let ev: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        let name_end = (at + head + ev.len as usize).min(buf.len());
        let raw = &buf[at + head..name_end];
        at = name_end;
        if ev.mask & libc::IN_Q_OVERFLOW != 0 {
            return false;
        }
        if ev.mask & libc::IN_IGNORED != 0 {
            dirs.by_wd.remove(&ev.wd);
            continue;
        }
        let name = String::from_utf8_lossy(raw.split(|b| *b == 0).next().unwrap_or_default());
        let (Some(dir), Some(k)) = (dirs.by_wd.get(&ev.wd), kind(ev.mask)) else {
            continue;
        };
        if name.is_empty() {
            continue; // the directory itself: its parent reports it
        }
        let mut rel = dir.clone();
        rel.push(name.into_owned());
        if recursive && ev.mask & libc::IN_ISDIR != 0 && k == FsEventKind::Create {
            // Best effort: a directory gone again, or past MAX_DIRS, is not watched.
            let _ = dirs.add(&rel, true);
        }
        w.push(FsEvent {
            name: rel.join("/"),
            kind: k,
        });
        if w.lock().overflowed {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
