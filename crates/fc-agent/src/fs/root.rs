//! The system calls under [`super`]: a directory fd taken as a root, every path opened from it
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, and every name acted on inside its
//! parent opened that way (so no symlink, `..` or magic link leads out of the root, whatever
//! the container does to its tree meanwhile). Paths are cleaned component lists.

use super::ids::Names;
use super::{FsFailure, FsResult};
use fcvm_proto::{FsEntry, FsErrorKind, FsKind, MAX_LIST_BYTES};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Entries one `List` walks at most (a bound on the agent's memory, whatever the tree).
const MAX_WALK: usize = 100_000;

/// A directory every path is resolved in.
pub struct Root(OwnedFd);

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

use super::{check, show};

/// `fstatat(dir, name, flags)`.
fn stat_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of the plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is a valid, writable stat for the call.
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    stat_at(fd, c"", libc::AT_EMPTY_PATH)
}

/// `openat(dir, name)` of one component, never following a symlink.
fn open_child(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is NUL-terminated; the fd returned is ours alone.
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The names in directory `dir` (not `.` and `..`), sorted (so that `List` pages are stable).
fn names_in(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let fd = open_child(dir.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut d = nix::dir::Dir::from_fd(fd.as_raw_fd()).map_err(io::Error::from)?;
    std::mem::forget(fd); // the Dir owns it now
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.map_err(io::Error::from)?;
        let n = e.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

impl Root {
    pub fn open(path: &str) -> io::Result<Root> {
        let p = cstr(path)?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: `p` is NUL-terminated; the fd returned is ours alone.
        let fd = check(unsafe { libc::open(p.as_ptr(), flags) })?;
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(Root(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Opens `comps` inside the root (see the module docs).
    fn open_in(&self, comps: &[String], flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
        let p = cstr(&show(comps))?;
        // SAFETY: an all-zero open_how is valid (no flags, no mode, no resolve rules).
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.mode = if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        };
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: `p` is NUL-terminated, `how` a valid open_how whose size is passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.0.as_raw_fd(),
                p.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        check(fd as libc::c_int)?;
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// The parent of `comps` (opened as a directory) and the last name; none for `/`.
    fn parent(&self, comps: &[String], what: &str) -> FsResult<(OwnedFd, CString)> {
        let Some((name, dir)) = comps.split_last() else {
            return Err(FsFailure::new(
                FsErrorKind::Invalid,
                format!("cannot {what} /"),
            ));
        };
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let fd = self
            .open_in(dir, flags, 0)
            .map_err(|e| FsFailure::io(what, &show(comps), e))?;
        let name = cstr(name).map_err(|e| FsFailure::io(what, &show(comps), e))?;
        Ok((fd, name))
    }

    /// Another handle on the same root (for a watch's thread).
    pub fn try_clone(&self) -> io::Result<Root> {
        Ok(Root(self.0.try_clone()?))
    }

    /// Directory `comps` opened as an `O_PATH` fd (a watch's target).
    pub fn open_dir_path(&self, comps: &[String]) -> io::Result<OwnedFd> {
        self.open_in(comps, libc::O_PATH | libc::O_DIRECTORY, 0)
    }

    /// The names of the directories (not symlinks to them) in directory `comps`.
    pub fn subdirs(&self, comps: &[String]) -> io::Result<Vec<String>> {
        let dir = self.open_in(comps, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let mut out = Vec::new();
        for n in names_in(&dir)? {
            if let Ok(st) = stat_at(dir.as_raw_fd(), &n, libc::AT_SYMLINK_NOFOLLOW) {
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    out.push(n.to_string_lossy().into_owned());
                }
            }
        }
        Ok(out)
    }

    /// The root's filesystem: (total, used) bytes.
    pub fn disk_usage(&self) -> io::Result<(u64, u64)> {
        // SAFETY: an all-zero statvfs is a valid value of the plain C struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: the root fd is open (O_PATH fds take fstatvfs); `st` is writable.
        check(unsafe { libc::fstatvfs(self.0.as_raw_fd(), &mut st) })?;
        let frsize = st.f_frsize as u64;
        let total = st.f_blocks as u64 * frsize;
        Ok((total, total.saturating_sub(st.f_bfree as u64 * frsize)))
    }

    /// A small file of the root (passwd, group), or None.
    pub fn read_small(&self, path: &str) -> Option<String> {
        let comps = super::clean("/", path).ok()?;
        let fd = self
            .open_in(&comps, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .ok()?;
        let st = fstat(fd.as_raw_fd()).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size > 4 << 20 {
            return None;
        }
        std::io::read_to_string(std::fs::File::from(fd)).ok()
    }

    /// Up to `len` bytes of a regular file from `offset`, and whether its end was reached.
    pub fn read(&self, comps: &[String], offset: u64, len: usize) -> FsResult<(Vec<u8>, bool)> {
        use std::os::unix::fs::FileExt;
        let err = |e| FsFailure::io("read", &show(comps), e);
        let fd = self
            .open_in(comps, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .map_err(err)?;
        regular(&fd, comps)?;
        let f = std::fs::File::from(fd);
        let mut data = vec![0; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut data[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
        data.truncate(got);
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((data, got < len || offset + got as u64 >= size))
    }

    /// Writes `data` at `offset` of a regular file, created with its parents if missing.
    pub fn write(
        &self,
        comps: &[String],
        offset: u64,
        data: &[u8],
        truncate: bool,
    ) -> FsResult<()> {
        use std::os::unix::fs::FileExt;
        let err = |e| FsFailure::io("write", &show(comps), e);
        let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK;
        if truncate {
            flags |= libc::O_TRUNC;
        }
        let fd = match self.open_in(comps, flags, 0o644) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && comps.len() > 1 => {
                self.make_dirs(&comps[..comps.len() - 1])?;
                self.open_in(comps, flags, 0o644)
            }
            r => r,
        }
        .map_err(err)?;
        regular(&fd, comps)?;
        std::fs::File::from(fd)
            .write_all_at(data, offset)
            .map_err(err)
    }

    /// Creates the directory `comps` and its missing parents; false if it existed.
    pub fn make_dirs(&self, comps: &[String]) -> FsResult<bool> {
        let dir = libc::O_PATH | libc::O_DIRECTORY;
        for i in 1..=comps.len() {
            let err = |e| FsFailure::io("mkdir", &show(&comps[..i]), e);
            match self.open_in(&comps[..i], dir, 0) {
                Ok(_) if i == comps.len() => return Ok(false),
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(err(e)),
            }
            let (parent, name) = self.parent(&comps[..i], "mkdir")?;
            // SAFETY: `name` is NUL-terminated; `parent` is an open directory.
            match check(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) }) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(!comps.is_empty())
    }

    /// Renames `from` to `to`, creating `to`'s missing parents.
    pub fn rename(&self, from: &[String], to: &[String]) -> FsResult<()> {
        let (fdir, fname) = self.parent(from, "move")?;
        if to.len() > 1 {
            self.make_dirs(&to[..to.len() - 1])?;
        }
        let (tdir, tname) = self.parent(to, "move")?;
        // SAFETY: both names are NUL-terminated; both fds are open directories.
        let r = unsafe {
            libc::renameat(
                fdir.as_raw_fd(),
                fname.as_ptr(),
                tdir.as_raw_fd(),
                tname.as_ptr(),
            )
        };
        check(r)
            .map(drop)
            .map_err(|e| FsFailure::io("move", &show(from), e))
    }

    /// Removes `comps`: a file or symlink, or a directory with everything in it.
    pub fn remove(&self, comps: &[String]) -> FsResult<()> {
        let (dir, name) = self.parent(comps, "remove")?;
        remove_at(dir.as_raw_fd(), &name).map_err(|e| FsFailure::io("remove", &show(comps), e))
    }

    /// What `comps` is: the entry itself, a symlink described with its target's type.
    pub fn entry(&self, comps: &[String], names: &Names) -> FsResult<FsEntry> {
        let err = |e| FsFailure::io("stat", &show(comps), e);
        if comps.is_empty() {
            let st = fstat(self.0.as_raw_fd()).map_err(err)?;
            return Ok(names.entry(comps, &st, None, FsKind::Dir));
        }
        let (dir, name) = self.parent(comps, "stat")?;
        self.entry_at(dir.as_raw_fd(), &name, comps, names)
            .map_err(err)
    }

    fn entry_at(
        &self,
        dir: RawFd,
        name: &CStr,
        comps: &[String],
        names: &Names,
    ) -> io::Result<FsEntry> {
        let st = stat_at(dir, name, libc::AT_SYMLINK_NOFOLLOW)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            return Ok(names.entry(comps, &st, None, kind(st.st_mode)));
        }
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: `buf` is writable for its whole length, `name` NUL-terminated.
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        buf.truncate(n.max(0) as usize);
        let target = String::from_utf8_lossy(&buf).into_owned();
        let k = match self
            .open_in(comps, libc::O_PATH, 0)
            .and_then(|f| fstat(f.as_raw_fd()))
        {
            Ok(t) => kind(t.st_mode),
            Err(_) => FsKind::Symlink,
        };
        Ok(names.entry(comps, &st, Some(target), k))
    }

    /// The entries under directory `comps`, `depth` levels down, from the `skip`th on, as many
    /// as fit [`MAX_LIST_BYTES`]; and whether more follow.
    pub fn list(
        &self,
        comps: &[String],
        depth: u32,
        skip: usize,
        names: &Names,
    ) -> FsResult<(Vec<FsEntry>, bool)> {
        let err = |e| FsFailure::io("list", &show(comps), e);
        let dir = self
            .open_in(comps, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(err)?;
        let mut all = Vec::new();
        self.walk(&dir, comps, depth, names, &mut all)
            .map_err(err)?;
        let (mut out, mut bytes) = (Vec::new(), 0);
        for e in all.into_iter().skip(skip) {
            let size = 64
                + e.path.len()
                + e.owner.len()
                + e.group.len()
                + e.symlink_target.as_ref().map_or(0, String::len);
            if bytes + size > MAX_LIST_BYTES {
                return Ok((out, true));
            }
            bytes += size;
            out.push(e);
        }
        Ok((out, false))
    }

    fn walk(
        &self,
        dir: &OwnedFd,
        comps: &[String],
        depth: u32,
        names: &Names,
        all: &mut Vec<FsEntry>,
    ) -> io::Result<()> {
        for name in names_in(dir)? {
            if all.len() >= MAX_WALK {
                return Err(io::Error::other(format!("more than {MAX_WALK} entries")));
            }
            let mut child = comps.to_vec();
            child.push(name.to_string_lossy().into_owned());
            let Ok(e) = self.entry_at(dir.as_raw_fd(), &name, &child, names) else {
                continue; // gone meanwhile
            };
            let descend = depth > 1 && e.kind == FsKind::Dir && e.symlink_target.is_none();
            all.push(e);
            if descend {
                if let Ok(sub) =
                    open_child(dir.as_raw_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY)
                {
                    self.walk(&sub, &child, depth - 1, names, all)?;
                }
            }
        }
        Ok(())
    }
}

fn kind(mode: u32) -> FsKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => FsKind::File,
        libc::S_IFDIR => FsKind::Dir,
        libc::S_IFLNK => FsKind::Symlink,
        _ => FsKind::Other,
    }
}

/// Only regular files are read or written (a fifo or a device could block a thread forever).
fn regular(fd: &OwnedFd, comps: &[String]) -> FsResult<()> {
    let st = fstat(fd.as_raw_fd()).map_err(|e| FsFailure::io("stat", &show(comps), e))?;
    match kind(st.st_mode) {
        FsKind::File => Ok(()),
        FsKind::Dir => Err(FsFailure::new(
            FsErrorKind::IsADirectory,
            format!("{} is a directory", show(comps)),
        )),
        _ => Err(FsFailure::new(
            FsErrorKind::Invalid,
            format!("{} is not a regular file", show(comps)),
        )),
    }
}

/// Removes `name` in `dir`, a directory recursively (never following a symlink).
fn remove_at(dir: RawFd, name: &CStr) -> io::Result<()> {
    let st = stat_at(dir, name, libc::AT_SYMLINK_NOFOLLOW)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let sub = open_child(dir, name, libc::O_RDONLY | libc::O_DIRECTORY)?;
        for n in names_in(&sub)? {
            remove_at(sub.as_raw_fd(), &n)?;
        }
        // SAFETY: `name` is NUL-terminated; `dir` is an open directory.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), libc::AT_REMOVEDIR) })?;
    } else {
        // SAFETY: as above.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) })?;
    }
    Ok(())
}
