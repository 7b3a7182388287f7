//! The host side of one map: every guest request acted on beneath the map's root
//! (docs/volumes.md, docs/security.md).
//!
//! A request names a path relative to the root, made of plain names. Every path is opened
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` from the
//! root's descriptor: no component may climb out, and no symlink is followed at all — the
//! guest kernel reads a link's text (`ReadLink`) and resolves it itself, inside the guest, so
//! a link to `/etc/passwd` in the share reaches the container's file, never the host's. The
//! last component is acted on with the `*at` calls that do not follow it.
//!
//! Nothing is kept between requests (no open files): a request that a restored VM resends,
//! or a clone's request for a file its source opened, is answered like any other.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use fcvm_proto::map::{
    Caller, MapAttr, MapData, MapDirEntry, MapOp, MapStatFs, SetTime, MAP_MAX_IO,
    MAP_MAX_LIST_BYTES,
};
use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
#[error("Cannot open the map's host directory {0}")]
pub struct OpenRootError(PathBuf, #[source] std::io::Error);

/// A map's root directory, held open: requests resolve from this descriptor.
pub struct Root {
    dir: OwnedFd,
    read_only: bool,
    /// Files the guest creates get the caller's ids only when fcvm can give them (as root).
    chown: bool,
}

type Result<T> = std::result::Result<T, Errno>;

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Errno::EINVAL)
}

/// Checks a request's path: "" (the root) or plain names joined by `/`.
fn check(path: &str) -> Result<&str> {
    if !path.is_empty()
        && path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Errno::EINVAL);
    }
    Ok(path)
}

/// `path` split into its parent ("" for the root) and its last name (none for the root).
fn split(path: &str) -> Result<(&str, &str)> {
    let path = check(path)?;
    match path.rsplit_once('/') {
        Some((dir, name)) => Ok((dir, name)),
        None if path.is_empty() => Err(Errno::EINVAL),
        None => Ok(("", path)),
    }
}

impl Root {
    pub fn open(host: &Path, read_only: bool) -> std::result::Result<Root, OpenRootError> {
        let dir = File::open(host).map_err(|e| OpenRootError(host.into(), e))?;
        Ok(Root {
            dir: dir.into(),
            read_only,
            chown: nix::unistd::geteuid().is_root(),
        })
    }

    /// Opens `path` beneath the root (no symlink followed anywhere, the last one included).
    fn open_at(&self, path: &str, flags: i32, mode: u32) -> Result<OwnedFd> {
        let path = check(path)?;
        let rel = if path.is_empty() { "." } else { path };
        let rel = cstr(rel)?;
        // SAFETY: open_how is plain integers; all-zero is its default.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
        if flags & libc::O_CREAT != 0 {
            how.mode = mode as u64;
        }
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: valid C string and open_how for the call's duration; the result is a new
        // descriptor that only the OwnedFd below owns.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            // A symlink where the path needs a directory: the guest resolves links itself.
            return Err(match Errno::last() {
                Errno::EXDEV => Errno::EACCES,
                e => e,
            });
        }
        // SAFETY: see above.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// Opens the regular file `path` for reading or writing. The inode is pinned and checked
    /// first (`O_PATH`, `fstat`), then opened through our own descriptor: a guest never
    /// makes the host open a FIFO (which would block a thread) or a device.
    fn open_file(&self, path: &str, flags: i32) -> Result<OwnedFd> {
        let pinned = self.open_at(path, libc::O_PATH, 0)?;
        let st = nix::sys::stat::fstat(pinned.as_raw_fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(Errno::EISDIR),
            _ => return Err(Errno::EPERM),
        }
        let proc = cstr(&format!("/proc/self/fd/{}", pinned.as_raw_fd()))?;
        // SAFETY: valid C string; the magic link is our own descriptor of that regular file.
        let fd = unsafe { libc::open(proc.as_ptr(), flags | libc::O_CLOEXEC) };
        Errno::result(fd)?;
        // SAFETY: a new descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The parent directory of `path` (opened O_PATH) and its last name.
    fn parent<'a>(&self, path: &'a str) -> Result<(OwnedFd, CString, &'a str)> {
        let (dir, name) = split(path)?;
        let fd = self.open_at(dir, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok((fd, cstr(name)?, name))
    }

    /// Up to `len` bytes of the regular file `path` from `offset` (the caller bounds `len`).
    pub fn read(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let fd = self.open_file(path, libc::O_RDONLY)?;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < buf.len() {
            let n = nix::sys::uio::pread(&fd, &mut buf[got..], (offset + got as u64) as i64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Carries out one request.
    pub fn handle(&self, op: MapOp) -> Result<MapData> {
        if self.read_only && op.writes() {
            return Err(Errno::EROFS);
        }
        match op {
            MapOp::Stat { path } => self.stat(&path).map(MapData::Attr),
            MapOp::SetAttr {
                path,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
            } => {
                // chown's -1 (u32::MAX) leaves that id as it is.
                let owner = (uid.is_some() || gid.is_some())
                    .then(|| (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX)));
                self.set_attr(&path, mode, owner, size, atime, mtime)
            }
            MapOp::ReadLink { path } => {
                let (dir, _, name) = self.parent(&path)?;
                let t = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name)?;
                Ok(MapData::Data(t.as_bytes().to_vec()))
            }
            MapOp::Create {
                path,
                mode,
                exclusive,
                caller,
            } => {
                // Only a file made here gets the caller's mode and ids; one that exists is
                // left as it is (and only a regular file is ever opened).
                let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
                match self.open_at(&path, flags, 0o600) {
                    Ok(fd) => self.own(&fd, mode, false, caller)?,
                    Err(Errno::EEXIST) if !exclusive => {
                        self.open_file(&path, libc::O_WRONLY)?;
                    }
                    Err(e) => return Err(e),
                }
                self.stat(&path).map(MapData::Attr)
            }
            MapOp::MakeDir { path, mode, caller } => {
                let (dir, name, _) = self.parent(&path)?;
                // SAFETY: valid descriptor and C string.
                Errno::result(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) })?;
                let fd = self.open_at(&path, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                self.own(&fd, mode, true, caller)?;
                self.stat(&path).map(MapData::Attr)
            }
            MapOp::Symlink {
                path,
                target,
                caller,
            } => {
                let (dir, name, _) = self.parent(&path)?;
                let target = cstr(&target)?;
                // SAFETY: valid descriptor and C strings.
                Errno::result(unsafe {
                    libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr())
                })?;
                if self.chown {
                    // SAFETY: valid descriptor and C string; the link itself is changed.
                    Errno::result(unsafe {
                        libc::fchownat(
                            dir.as_raw_fd(),
                            name.as_ptr(),
                            caller.uid,
                            caller.gid,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    })?;
                }
                self.stat(&path).map(MapData::Attr)
            }
            MapOp::Unlink { path } => self.remove(&path, 0),
            MapOp::RemoveDir { path } => self.remove(&path, libc::AT_REMOVEDIR),
            MapOp::Rename { from, to, flags } => {
                let (fdir, fname, _) = self.parent(&from)?;
                let (tdir, tname, _) = self.parent(&to)?;
                // SAFETY: valid descriptors and C strings.
                Errno::result(unsafe {
                    libc::syscall(
                        libc::SYS_renameat2,
                        fdir.as_raw_fd(),
                        fname.as_ptr(),
                        tdir.as_raw_fd(),
                        tname.as_ptr(),
                        flags,
                    )
                })?;
                Ok(MapData::Done)
            }
            MapOp::Read { path, offset, len } => {
                let len = (len as usize).min(MAP_MAX_IO);
                self.read(&path, offset, len).map(MapData::Data)
            }
            // Needs the VM's memory, which `super::guest` has (`super::serve` routes it there).
            MapOp::ReadPages { .. } => Err(Errno::EOPNOTSUPP),
            MapOp::Write { path, offset, data } => {
                if data.len() > MAP_MAX_IO {
                    return Err(Errno::EINVAL);
                }
                let fd = self.open_file(&path, libc::O_WRONLY)?;
                let mut done = 0;
                while done < data.len() {
                    done +=
                        nix::sys::uio::pwrite(&fd, &data[done..], (offset + done as u64) as i64)?;
                }
                Ok(MapData::Written(done as u32))
            }
            MapOp::ReadDir { path, offset } => self.read_dir(&path, offset, false),
            MapOp::ReadDirPlus { path, offset } => self.read_dir(&path, offset, true),
            MapOp::StatFs => {
                let s = nix::sys::statvfs::fstatvfs(&self.dir)?;
                Ok(MapData::StatFs(MapStatFs {
                    blocks: s.blocks(),
                    bfree: s.blocks_free(),
                    bavail: s.blocks_available(),
                    files: s.files(),
                    ffree: s.files_free(),
                    bsize: s.block_size() as u32,
                    namelen: s.name_max() as u32,
                    frsize: s.fragment_size() as u32,
                }))
            }
        }
    }

    fn stat(&self, path: &str) -> Result<MapAttr> {
        let fd = self.open_at(check(path)?, libc::O_PATH, 0)?;
        Ok(map_attr(&nix::sys::stat::fstat(fd.as_raw_fd())?))
    }

    /// Sets a new file's exact mode (fcvm's own umask must not apply) and, as root, owner.
    fn own(&self, fd: &OwnedFd, mode: u32, dir: bool, caller: Caller) -> Result<()> {
        let proc = cstr(&format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if self.chown {
            // SAFETY: valid C string; the magic link is our own descriptor of the new file.
            Errno::result(unsafe { libc::chown(proc.as_ptr(), caller.uid, caller.gid) })?;
        }
        // SAFETY: valid C string, as above.
        Errno::result(unsafe { libc::chmod(proc.as_ptr(), safe_mode(mode, dir)) })?;
        Ok(())
    }

    fn set_attr(
        &self,
        path: &str,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> Result<MapData> {
        let fd = self.open_at(check(path)?, libc::O_PATH, 0)?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        let link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        let proc = cstr(&format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if let Some((uid, gid)) = owner {
            let empty = cstr("")?;
            // SAFETY: valid descriptor and C string; AT_EMPTY_PATH acts on the fd itself.
            Errno::result(unsafe {
                libc::fchownat(
                    fd.as_raw_fd(),
                    empty.as_ptr(),
                    uid,
                    gid,
                    libc::AT_EMPTY_PATH,
                )
            })?;
        }
        if let Some(mode) = mode {
            if link {
                return Err(Errno::EOPNOTSUPP);
            }
            let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            // SAFETY: valid C string naming our own descriptor of a non-symlink.
            Errno::result(unsafe { libc::chmod(proc.as_ptr(), safe_mode(mode, dir)) })?;
        }
        if let Some(size) = size {
            let w = self.open_file(path, libc::O_WRONLY)?;
            nix::unistd::ftruncate(&w, size as i64)?;
        }
        if (atime.is_some() || mtime.is_some()) && !link {
            let ts = |t: Option<SetTime>| match t {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(SetTime::Now) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(SetTime::At(s, ns)) => libc::timespec {
                    tv_sec: s,
                    tv_nsec: ns as i64,
                },
            };
            let times = [ts(atime), ts(mtime)];
            // SAFETY: valid C string and two timespecs.
            Errno::result(unsafe {
                libc::utimensat(libc::AT_FDCWD, proc.as_ptr(), times.as_ptr(), 0)
            })?;
        }
        self.stat(path).map(MapData::Attr)
    }

    fn remove(&self, path: &str, flags: i32) -> Result<MapData> {
        let (dir, name, _) = self.parent(path)?;
        // SAFETY: valid descriptor and C string.
        Errno::result(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(MapData::Done)
    }

    /// Entries after the position cookie `offset`, by the host's own `telldir` cookies.
    fn read_dir(&self, path: &str, offset: u64, plus: bool) -> Result<MapData> {
        let fd = self.open_at(check(path)?, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        // SAFETY: `fd` is an open directory; the DIR takes it over (closedir closes it).
        let dir = unsafe { libc::fdopendir(fd.into_raw_fd()) };
        if dir.is_null() {
            return Err(Errno::last());
        }
        let dir = DirStream(dir);
        if offset != 0 {
            // SAFETY: a valid DIR; the cookie came from this directory's own entries.
            unsafe { libc::seekdir(dir.0, offset as libc::c_long) };
        }
        let mut entries = Vec::new();
        let mut attrs = Vec::new();
        let mut bytes = 0;
        let per_entry = if plus { 32 + 96 } else { 32 };
        loop {
            Errno::clear();
            // SAFETY: a valid DIR; the entry is read before the next readdir call.
            let e = unsafe { libc::readdir64(dir.0) };
            if e.is_null() {
                match Errno::last_raw() {
                    0 => break,
                    n => return Err(Errno::from_raw(n)),
                }
            }
            // SAFETY: readdir64 returned a valid entry with a NUL-terminated name.
            let (name, ino, d_type, next) = unsafe {
                let e = &*e;
                let name = std::ffi::CStr::from_ptr(e.d_name.as_ptr());
                (name.to_bytes().to_vec(), e.d_ino, e.d_type, e.d_off as u64)
            };
            let Ok(name) = String::from_utf8(name) else {
                continue; // not representable on the wire; hidden rather than mangled
            };
            bytes += name.len() + per_entry;
            if bytes > MAP_MAX_LIST_BYTES {
                break;
            }
            let kind = match d_type {
                libc::DT_DIR => libc::S_IFDIR,
                libc::DT_LNK => libc::S_IFLNK,
                libc::DT_FIFO => libc::S_IFIFO,
                libc::DT_SOCK => libc::S_IFSOCK,
                libc::DT_CHR => libc::S_IFCHR,
                libc::DT_BLK => libc::S_IFBLK,
                _ => libc::S_IFREG,
            };
            if plus {
                // SAFETY: a valid DIR.
                let dfd = unsafe { libc::dirfd(dir.0) };
                let st = nix::sys::stat::fstatat(
                    Some(dfd),
                    name.as_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                );
                match st {
                    Ok(st) => attrs.push(map_attr(&st)),
                    Err(_) => continue, // gone since it was listed
                }
            }
            entries.push(MapDirEntry {
                name,
                ino,
                kind,
                next,
            });
        }
        if plus {
            return Ok(MapData::EntriesPlus(
                entries.into_iter().zip(attrs).collect(),
            ));
        }
        Ok(MapData::Entries(entries))
    }
}

/// The permission bits a guest may set on a host file: never set-user-id, and set-group-id
/// only on a directory (where it means "new files take its group", not privilege) — a guest
/// root must not leave a set-id program for host users to run.
fn safe_mode(mode: u32, dir: bool) -> libc::mode_t {
    let drop = if dir {
        libc::S_ISUID
    } else {
        libc::S_ISUID | libc::S_ISGID
    };
    (mode & 0o7777 & !drop) as libc::mode_t
}

fn map_attr(st: &libc::stat) -> MapAttr {
    MapAttr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: (st.st_atime, st.st_atime_nsec as u32),
        mtime: (st.st_mtime, st.st_mtime_nsec as u32),
        ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
    }
}

/// An open `DIR`, closed on drop.
struct DirStream(*mut libc::DIR);

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the DIR is ours and closed once.
        unsafe { libc::closedir(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_read(path: &str) -> MapOp {
        MapOp::Read {
            path: path.into(),
            offset: 0,
            len: 100,
        }
    }

    /// `..`, absolute paths and symlinks (as a directory or as the file) never reach a host
    /// file outside the root; the share's own files do.
    #[test]
    fn nothing_outside_the_root_is_reached() {
        let top = tempfile::tempdir().unwrap();
        let (root_dir, outside) = (top.path().join("share"), top.path().join("secret"));
        std::fs::create_dir(&root_dir).unwrap();
        std::fs::write(&outside, "secret").unwrap();
        std::fs::write(root_dir.join("f"), "inside").unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("..", root_dir.join("up")).unwrap();
        let root = Root::open(&root_dir, false).unwrap();
        assert_eq!(
            root.handle(op_read("f")),
            Ok(MapData::Data(b"inside".to_vec()))
        );
        for p in [
            "../secret",
            "/etc/passwd",
            "up/secret",
            "abs",
            "./f",
            "a//b",
        ] {
            assert!(root.handle(op_read(p)).is_err(), "{p}");
        }
        let write = |path: &str| MapOp::Write {
            path: path.into(),
            offset: 0,
            data: b"pwned".to_vec(),
        };
        assert!(root.handle(write("abs")).is_err());
        assert!(root.handle(write("up/secret")).is_err());
        let create = MapOp::Create {
            path: "up/new".into(),
            mode: 0o644,
            exclusive: true,
            caller: Caller::default(),
        };
        assert!(root.handle(create).is_err());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
        assert!(!top.path().join("new").exists());
        // The link itself is described and read as text, not followed.
        let Ok(MapData::Attr(a)) = root.handle(MapOp::Stat { path: "abs".into() }) else {
            panic!("stat of the link")
        };
        assert_eq!(a.mode & libc::S_IFMT, libc::S_IFLNK);
        let link = root.handle(MapOp::ReadLink { path: "abs".into() });
        assert_eq!(
            link,
            Ok(MapData::Data(outside.as_os_str().as_bytes().to_vec()))
        );
    }

    #[test]
    fn files_are_made_read_written_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path(), false).unwrap();
        let made = root.handle(MapOp::Create {
            path: "n".into(),
            mode: 0o640,
            exclusive: true,
            caller: Caller::default(),
        });
        let Ok(MapData::Attr(a)) = made else {
            panic!("{made:?}")
        };
        assert_eq!(
            a.mode & 0o7777,
            0o640,
            "the asked mode, whatever fcvm's umask"
        );
        let w = root.handle(MapOp::Write {
            path: "n".into(),
            offset: 3,
            data: b"xyz".to_vec(),
        });
        assert_eq!(w, Ok(MapData::Written(3)));
        assert_eq!(std::fs::read(dir.path().join("n")).unwrap(), b"\0\0\0xyz");
        for i in 0..3000 {
            std::fs::write(dir.path().join(format!("file-with-a-long-name-{i:05}")), "").unwrap();
        }
        // Page by page, removing what was listed as it goes (as `rm -rf` does): the cookies
        // still find every entry once.
        let (mut names, mut cookie) = (vec![], 0);
        loop {
            let r = root.handle(MapOp::ReadDir {
                path: String::new(),
                offset: cookie,
            });
            let Ok(MapData::Entries(e)) = r else {
                panic!("{r:?}")
            };
            let Some(last) = e.last() else { break };
            cookie = last.next;
            for e in e {
                if e.name.starts_with("file-") {
                    std::fs::remove_file(dir.path().join(&e.name)).unwrap();
                }
                names.push(e.name);
            }
        }
        assert_eq!(
            names.len(),
            3003,
            "every entry once (with . and ..), over several pages"
        );
        let r = root.handle(MapOp::Rename {
            from: "n".into(),
            to: "m".into(),
            flags: 0,
        });
        assert_eq!(r, Ok(MapData::Done));
        assert_eq!(
            root.handle(MapOp::Unlink { path: "m".into() }),
            Ok(MapData::Done)
        );
    }

    /// A guest never makes the host open a FIFO or a device, nor leaves a set-id file.
    #[test]
    fn only_regular_files_are_opened_and_no_set_id_bits_are_set() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let root = Root::open(dir.path(), false).unwrap();
        assert_eq!(
            root.handle(op_read("fifo")),
            Err(Errno::EPERM),
            "not opened: no hang"
        );
        let create = |path: &str, exclusive| MapOp::Create {
            path: path.into(),
            mode: 0o644,
            exclusive,
            caller: Caller::default(),
        };
        assert_eq!(root.handle(create("fifo", false)), Err(Errno::EPERM));
        assert!(root.handle(create("f", true)).is_ok());
        let set = |mode| MapOp::SetAttr {
            path: "f".into(),
            mode: Some(mode),
            uid: None,
            gid: None,
            size: None,
            atime: None,
            mtime: None,
        };
        let Ok(MapData::Attr(a)) = root.handle(set(0o6755)) else {
            panic!("chmod")
        };
        assert_eq!(a.mode & 0o7777, 0o755, "set-uid and set-gid dropped");
    }

    #[test]
    fn a_read_only_map_refuses_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let root = Root::open(dir.path(), true).unwrap();
        assert!(root.handle(op_read("f")).is_ok());
        let e = root.handle(MapOp::Unlink { path: "f".into() });
        assert_eq!(e, Err(Errno::EROFS));
        assert!(dir.path().join("f").exists());
    }
}
