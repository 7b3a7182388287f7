//! One map's FUSE filesystem: each kernel request is answered from the host through
//! [`Client`] (docs/volumes.md).
//!
//! The agent names files by path. [`Inodes`] gives each path the kernel has looked up a node
//! id (the root is 1) and forgets it when the kernel does; a rename moves every path under
//! the old one. Requests carry paths relative to the map's root, so they mean the same to
//! any host that serves the map — the one that booted the VM, a restored one, or a clone's.
//!
//! Caching: data never (every open file is `FOPEN_DIRECT_IO`: reads and writes go to the
//! host, so each side sees the other's writes at once; private mmap, e.g. exec, still
//! works); attributes and names for [`TTL`] (1 s), so a host-side rename or `chmod` shows
//! in the guest within a second, and a directory walk does not ask twice per file.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fcvm_proto::map::{Caller, MapAttr, MapData, MapDirEntry, MapOp, SetTime, MAP_MAX_PATH};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

use super::client::Client;
use super::pages::Pages;
use super::split::{self, KERNEL_IO};

/// How long the kernel may trust a name or attributes it got from the host.
pub const TTL: Duration = Duration::from_secs(1);

/// Node ids ↔ paths relative to the map's root.
#[derive(Default)]
struct Inodes {
    /// node id → (path, the kernel's lookup count).
    paths: HashMap<u64, (String, u64)>,
    ids: HashMap<String, u64>,
    next: u64,
}

impl Inodes {
    fn new() -> Inodes {
        let mut i = Inodes {
            next: 2,
            ..Default::default()
        };
        i.paths.insert(1, (String::new(), 1));
        i.ids.insert(String::new(), 1);
        i
    }

    fn path(&self, ino: u64) -> Option<String> {
        self.paths.get(&ino).map(|(p, _)| p.clone())
    }

    /// The id of `path`, counting one more lookup.
    fn looked_up(&mut self, path: &str) -> u64 {
        if let Some(&id) = self.ids.get(path) {
            if let Some(e) = self.paths.get_mut(&id) {
                e.1 += 1;
            }
            return id;
        }
        let id = self.next;
        self.next += 1;
        self.paths.insert(id, (path.to_string(), 1));
        self.ids.insert(path.to_string(), id);
        id
    }

    fn forget(&mut self, ino: u64, n: u64) {
        if ino == 1 {
            return;
        }
        if let Some(e) = self.paths.get_mut(&ino) {
            e.1 = e.1.saturating_sub(n);
            if e.1 == 0 {
                let (p, _) = self.paths.remove(&ino).unwrap_or_default();
                if self.ids.get(&p) == Some(&ino) {
                    self.ids.remove(&p);
                }
            }
        }
    }

    /// `path` is gone (removed, or replaced by a rename): its node keeps the name but a new
    /// lookup gets a new node.
    fn unlink(&mut self, path: &str) {
        self.ids.remove(path);
    }

    /// `from` (and everything under it) is now `to`.
    fn rename(&mut self, from: &str, to: &str) {
        self.unlink(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .ids
            .iter()
            .filter(|(p, _)| *p == from || p.starts_with(&prefix))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (old, id) in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            self.ids.remove(&old);
            self.ids.insert(new.clone(), id);
            if let Some(e) = self.paths.get_mut(&id) {
                e.0 = new;
            }
        }
    }
}

fn join(dir: &str, name: &OsStr) -> Result<String, Errno> {
    let name = name.to_str().ok_or(Errno::EINVAL)?;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Errno::EINVAL);
    }
    // A request must fit one frame (`MAP_MAX_IO` leaves room for this much path).
    if dir.len() + 1 + name.len() > MAP_MAX_PATH {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    })
}

fn time((s, ns): (i64, u32)) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(ns as u64)
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn attr(ino: u64, a: &MapAttr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: kind(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => SetTime::At(-(e.duration().as_secs() as i64), 0),
        },
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The last host page of a directory being listed (one per open directory handle).
struct Listing {
    /// The cookie the page was asked from.
    start: u64,
    entries: Vec<MapDirEntry>,
    /// Each entry's attributes (`readdirplus`), or none.
    attrs: Vec<MapAttr>,
}

impl Listing {
    /// Where the kernel's `offset` (a cookie) resumes in this page; `None`: not in it, or
    /// past its end (ask the host).
    fn resume(&self, offset: u64) -> Option<usize> {
        let from = if offset == self.start {
            0
        } else {
            self.entries.iter().position(|e| e.next == offset)? + 1
        };
        (from < self.entries.len() || self.entries.is_empty()).then_some(from)
    }
}

pub struct MapFs {
    map: u32,
    client: Arc<Client>,
    inodes: Arc<Mutex<Inodes>>,
    listings: Arc<Mutex<HashMap<u64, Listing>>>,
    next_fh: Mutex<u64>,
    /// Where the host writes read data, when it can (shared by every map of the VM).
    pages: Option<Arc<Pages>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MapFs {
    pub fn new(map: u32, client: Arc<Client>, pages: Option<Arc<Pages>>) -> MapFs {
        MapFs {
            pages,
            map,
            client,
            inodes: Arc::new(Mutex::new(Inodes::new())),
            listings: Arc::default(),
            next_fh: Mutex::new(1),
        }
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        lock(&self.inodes).path(ino.0).ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        join(&self.path(parent)?, name)
    }

    fn call(&self, op: MapOp, done: impl FnOnce(Result<MapData, i32>) + Send + 'static) {
        self.client.call(self.map, op, Box::new(done));
    }

    /// Sends an op that answers with the attributes of `path`, and replies with its entry.
    fn entry_op(&self, path: String, op: MapOp, reply: ReplyEntry) {
        let inodes = self.inodes.clone();
        self.call(op, move |r| match r {
            Ok(MapData::Attr(a)) => {
                let id = lock(&inodes).looked_up(&path);
                reply.entry(&TTL, &attr(id, &a), Generation(0));
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(Errno::from_i32(e)),
        });
    }

    fn empty_op(&self, op: MapOp, reply: ReplyEmpty, then: impl FnOnce() + Send + 'static) {
        self.call(op, move |r| match r {
            Ok(_) => {
                then();
                reply.ok();
            }
            Err(e) => reply.error(Errno::from_i32(e)),
        });
    }
}

macro_rules! or_reply {
    ($e:expr, $reply:ident) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for MapFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Requests of up to 1 MiB (the mount's max_read says it as well; fuser derives the
        // kernel's max_pages from this): one round trip per large read (`ReadPages`), one
        // batch of parallel frame-sized requests otherwise (`split`).
        let _ = config.set_max_write(KERNEL_IO as u32);
        // A listing carries attributes: a directory walk needs no lookup per file.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = or_reply!(self.child(parent, name), reply);
        self.entry_op(path.clone(), MapOp::Stat { path }, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let path = or_reply!(self.path(ino), reply);
        self.call(MapOp::Stat { path }, move |r| match r {
            Ok(MapData::Attr(a)) => reply.attr(&TTL, &attr(ino.0, &a)),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(Errno::from_i32(e)),
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let path = or_reply!(self.path(ino), reply);
        let op = MapOp::SetAttr {
            path,
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        self.call(op, move |r| match r {
            Ok(MapData::Attr(a)) => reply.attr(&TTL, &attr(ino.0, &a)),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(Errno::from_i32(e)),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let path = or_reply!(self.path(ino), reply);
        self.call(MapOp::ReadLink { path }, move |r| match r {
            Ok(MapData::Data(d)) => reply.data(&d),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(Errno::from_i32(e)),
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only: devices, fifos and sockets are not shared with the host.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let path = or_reply!(self.child(parent, name), reply);
        let op = MapOp::Create {
            path: path.clone(),
            mode: mode & !umask,
            exclusive: true,
            caller: caller(req),
        };
        self.entry_op(path, op, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let path = or_reply!(self.child(parent, name), reply);
        let op = MapOp::MakeDir {
            path: path.clone(),
            mode: mode & !umask,
            caller: caller(req),
        };
        self.entry_op(path, op, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = or_reply!(self.child(parent, name), reply);
        let inodes = self.inodes.clone();
        let p = path.clone();
        self.empty_op(MapOp::Unlink { path }, reply, move || {
            lock(&inodes).unlink(&p)
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = or_reply!(self.child(parent, name), reply);
        let inodes = self.inodes.clone();
        let p = path.clone();
        self.empty_op(MapOp::RemoveDir { path }, reply, move || {
            lock(&inodes).unlink(&p)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let path = or_reply!(self.child(parent, link_name), reply);
        let target = or_reply!(target.to_str().ok_or(Errno::EINVAL), reply);
        let op = MapOp::Symlink {
            path: path.clone(),
            target: target.into(),
            caller: caller(req),
        };
        self.entry_op(path, op, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let from = or_reply!(self.child(parent, name), reply);
        let to = or_reply!(self.child(newparent, newname), reply);
        let inodes = self.inodes.clone();
        let (f, t) = (from.clone(), to.clone());
        let op = MapOp::Rename {
            from,
            to,
            flags: flags.bits(),
        };
        self.empty_op(op, reply, move || lock(&inodes).rename(&f, &t));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Nothing is held open on either side: reads and writes name the file by path.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let path = or_reply!(self.path(ino), reply);
        let len = (size as usize).min(KERNEL_IO);
        let Some((pages, (slot, addrs))) =
            (self.pages.as_ref()).and_then(|p| Some((p, p.take(len)?)))
        else {
            return split::read(&self.client, self.map, path, offset, len, reply);
        };
        // The host writes the data into the slot's pages; only the count crosses the channel.
        let (pages, client, map) = (pages.clone(), self.client.clone(), self.map);
        let op = MapOp::ReadPages {
            path: path.clone(),
            offset,
            len: len as u32,
            pages: addrs,
        };
        self.call(op, move |r| {
            match r {
                Ok(MapData::Placed(n)) => reply.data(pages.data(slot, n as usize)),
                Err(libc::EOPNOTSUPP) => {
                    pages.disable();
                    // Asked again through the channel. Not from this thread: it is the
                    // channel's reader, which a full client would wait on forever.
                    std::thread::spawn(move || split::read(&client, map, path, offset, len, reply));
                }
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(Errno::from_i32(e)),
            }
            pages.put(slot);
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let path = or_reply!(self.path(ino), reply);
        let data = &data[..data.len().min(KERNEL_IO)];
        split::write(&self.client, self.map, path, offset, data, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every write already reached the host's page cache.
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut n = lock(&self.next_fh);
        *n += 1;
        reply.opened(FileHandle(*n), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Offsets are the host's own cookies (`next` of the entry before; 0 = the start), so
        // a listing that the caller changes as it goes (`rm -rf`) skips nothing. The last
        // host page of each open directory is kept: the kernel asks ~a page of entries at a
        // time, the host answers up to 32 KiB.
        let fill = move |reply: &mut ReplyDirectory, l: &Listing| -> bool {
            let Some(from) = l.resume(offset) else {
                return false;
            };
            for e in &l.entries[from..] {
                if reply.add(INodeNo(e.ino), e.next, kind(e.kind), &e.name) {
                    break;
                }
            }
            true
        };
        if let Some(l) = lock(&self.listings).get(&fh.0) {
            if fill(&mut reply, l) {
                return reply.ok();
            }
        }
        let path = or_reply!(self.path(ino), reply);
        let listings = self.listings.clone();
        self.call(MapOp::ReadDir { path, offset }, move |r| match r {
            Ok(MapData::Entries(entries)) => {
                let l = Listing {
                    start: offset,
                    entries,
                    attrs: vec![],
                };
                fill(&mut reply, &l);
                lock(&listings).insert(fh.0, l);
                reply.ok();
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(Errno::from_i32(e)),
        });
    }

    /// `readdir` with attributes: each entry the kernel takes counts as a lookup of it.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = or_reply!(self.path(ino), reply);
        let inodes = self.inodes.clone();
        let fill = move |reply: &mut ReplyDirectoryPlus, l: &Listing| -> bool {
            let Some(from) = l.resume(offset) else {
                return false;
            };
            let mut inodes = lock(&inodes);
            for (e, a) in l.entries[from..].iter().zip(&l.attrs[from..]) {
                let dot = e.name == "." || e.name == "..";
                // The kernel links no dentry for the dots, so they count no lookup.
                let id = match join(&dir, OsStr::new(&e.name)) {
                    Ok(p) if !dot => inodes.looked_up(&p),
                    _ => ino.0,
                };
                if reply.add(
                    INodeNo(id),
                    e.next,
                    &e.name,
                    &TTL,
                    &attr(id, a),
                    Generation(0),
                ) {
                    if !dot {
                        inodes.forget(id, 1); // not sent after all
                    }
                    break;
                }
            }
            true
        };
        if let Some(l) = lock(&self.listings).get(&fh.0) {
            if l.attrs.len() == l.entries.len() && fill(&mut reply, l) {
                return reply.ok();
            }
        }
        let path = or_reply!(self.path(ino), reply);
        let listings = self.listings.clone();
        self.call(MapOp::ReadDirPlus { path, offset }, move |r| match r {
            Ok(MapData::EntriesPlus(v)) => {
                let (entries, attrs) = v.into_iter().unzip();
                let l = Listing {
                    start: offset,
                    entries,
                    attrs,
                };
                fill(&mut reply, &l);
                lock(&listings).insert(fh.0, l);
                reply.ok();
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(Errno::from_i32(e)),
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.listings).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.call(MapOp::StatFs, move |r| match r {
            Ok(MapData::StatFs(s)) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(Errno::from_i32(e)),
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = or_reply!(self.child(parent, name), reply);
        let op = MapOp::Create {
            path: path.clone(),
            mode: mode & !umask,
            exclusive: flags & libc::O_EXCL != 0,
            caller: caller(req),
        };
        let inodes = self.inodes.clone();
        self.call(op, move |r| match r {
            Ok(MapData::Attr(a)) => {
                let id = lock(&inodes).looked_up(&path);
                reply.created(
                    &TTL,
                    &attr(id, &a),
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::FOPEN_DIRECT_IO,
                );
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(Errno::from_i32(e)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_follow_lookups_renames_and_forgets() {
        let mut i = Inodes::new();
        let d = i.looked_up("d");
        let f = i.looked_up("d/f");
        assert_eq!(i.looked_up("d"), d, "same path, same node");
        i.rename("d", "e");
        assert_eq!(i.path(f).as_deref(), Some("e/f"));
        assert_eq!(i.path(d).as_deref(), Some("e"));
        i.forget(d, 1);
        assert_eq!(i.path(d).as_deref(), Some("e"), "one lookup left");
        i.forget(d, 1);
        assert_eq!(i.path(d), None);
        i.unlink("e/f");
        assert_ne!(
            i.looked_up("e/f"),
            f,
            "a new file at the path is a new node"
        );
        assert_eq!(i.path(1).as_deref(), Some(""));
        assert!(join("", OsStr::new("..")).is_err());
        assert_eq!(join("a", OsStr::new("b")).unwrap(), "a/b");
    }
}
