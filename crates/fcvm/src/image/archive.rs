//! An image archive (oci-archive, docker-archive: a tar, maybe compressed) read into a private
//! directory, taking from it only what cannot lead to the host.
//!
//! 1. Regular-file members are written, at their cleaned names (`..` refused, a leading `/`
//!    dropped), under a fresh 0700 temp dir; directories become real directories. Nothing else
//!    is created: no symlink, hardlink, device or FIFO ever exists in the extracted tree.
//! 2. Symlink and hardlink members are only recorded, with their targets. A name the image's
//!    manifest uses is resolved *by name inside the archive* ([`Extracted::file`]), through
//!    these links (at most 40): it must end at a regular-file member, which is then read from
//!    the extracted tree. A link leading outside the archive (an absolute target, `..` above its
//!    top), to a directory, a device or nothing is refused, saying which.
//!
//! `docker save` does use links (a repeated layer links to its first copy; since Docker 25
//! `<id>/layer.tar` links to `blobs/sha256/<hex>`), hence resolving rather than refusing them.
//! Every member is charged to a [`Budget`] of the unpack limit, and the tar reader's buffered
//! headers are bounded ([`limits::guarded`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::limits::{self, Budget, UnpackLimit};
use super::member::{self, MemberError};
use super::unpack::{decoder, Compression};
use super::ImageError;

/// Why a name of the archive cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Outside,
    NotRegular,
    Missing,
}

impl From<Refused> for MemberError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Outside => MemberError::Outside,
            Refused::NotRegular => MemberError::NotRegular,
            Refused::Missing => MemberError::Missing,
        }
    }
}

/// An archive's regular files in a private temp dir (removed on drop), and its names.
pub(crate) struct Extracted {
    pub dir: tempfile::TempDir,
    index: Index,
}

/// A symlink's target (relative to the link's directory) or a hardlink's (to the top).
enum Link {
    Sym(PathBuf),
    Hard(PathBuf),
}

/// The archive's names, as read: what each is.
#[derive(Default)]
struct Index {
    files: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
    links: HashMap<PathBuf, Link>,
    others: HashSet<PathBuf>,
    /// Bytes of names (and their headers) read so far, against [`NAMES_MAX`].
    name_bytes: u64,
}

/// Most bytes of member names an archive may have (real ones have a few KiB).
const NAMES_MAX: u64 = 64 << 20;

impl Extracted {
    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The extracted regular file that member `name` (as a manifest names it) leads to.
    pub(crate) fn file(&self, name: &str) -> Result<PathBuf, MemberError> {
        let rel = self.resolve(name)?;
        // The tree holds only what was written above; opening checks it once more.
        member::open(self.root(), &rel)?;
        Ok(self.root().join(rel))
    }

    /// Reads a manifest, index or config member (bounded).
    pub(crate) fn read_metadata(&self, name: &str) -> Result<Vec<u8>, MemberError> {
        let rel = self.resolve(name)?;
        member::read_metadata(self.root(), &rel)
    }

    fn resolve(&self, name: &str) -> Result<PathBuf, MemberError> {
        let rel = clean(Path::new(name)).ok_or(MemberError::Outside)?;
        Ok(self.index.resolve(&rel)?)
    }
}

/// Extracts `archive` under `parent` (the data dir's `tmp/`) as the module doc says.
pub(crate) fn extract(
    archive: &Path,
    parent: &Path,
    prefix: &str,
    limit: UnpackLimit,
) -> Result<Extracted, ImageError> {
    let unreadable = |reason: String| ImageError::UnreadableArchive {
        path: archive.to_path_buf(),
        reason,
    };
    let f = match fs::metadata(archive) {
        Ok(m) if m.is_file() => fs::File::open(archive).map_err(ImageError::io(archive))?,
        Ok(_) => return Err(unreadable("not a regular file".into())),
        Err(_) => return Err(unreadable("no such file".into())),
    };
    let tmp = member::private_temp_dir(parent, prefix).map_err(ImageError::io(parent))?;
    let root = tmp.path().to_path_buf();
    let stream = decoder(f, Compression::Sniff).map_err(ImageError::io(archive))?;
    let (stream, meter) = limits::guarded(stream);
    let mut tar = tar::Archive::new(stream);
    let mut budget = Budget::new(limit);
    let mut index = Index::default();
    let malformed = |n: usize, e: &io::Error| {
        unreadable(if limits::is_meta_overflow(e) {
            format!(
                "not a valid tar archive (entry {n}: {})",
                limits::MetaOverflow
            )
        } else {
            format!("not a valid tar archive (entry {n})")
        })
    };
    let entries = tar.entries().map_err(|e| malformed(0, &e))?;
    for (n, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| malformed(n, &e))?;
        let headers = meter.in_entry();
        budget
            .entry(entry.size().saturating_add(headers))
            .map_err(|x| ImageError::UnpackLimit {
                at: "the archive".into(),
                what: x.describe(),
            })?;
        let raw = entry.path().map_err(|e| malformed(n, &e))?.into_owned();
        let name =
            clean(&raw).ok_or_else(|| unreadable(format!("member {n} has a name with \"..\"")))?;
        // The index keeps every name in memory: bound it.
        index.name_bytes += raw.as_os_str().len() as u64 + headers;
        if index.name_bytes > NAMES_MAX {
            return Err(unreadable(format!(
                "member names larger than {} in all",
                limits::human(NAMES_MAX)
            )));
        }
        let kind = entry.header().entry_type();
        if name.as_os_str().is_empty() {
            // The archive's own "./".
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            index.forget(&root, &name).map_err(ImageError::io(&root))?;
            let dst = root.join(&name);
            write_file(&mut entry, &dst).map_err(|e| match e.raw_os_error() {
                Some(_) => ImageError::io(&dst)(e),
                None => malformed(n, &e),
            })?;
            index.add_parents(&name);
            index.files.insert(name);
        } else if kind.is_dir() {
            fs::create_dir_all(root.join(&name)).map_err(|_| {
                unreadable(format!("member {name:?} is both a file and a directory"))
            })?;
            index.add_parents(&name);
            index.dirs.insert(name);
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| malformed(n, &e))?
                .unwrap_or_default()
                .into_owned();
            index.forget(&root, &name).map_err(ImageError::io(&root))?;
            let link = match kind.is_symlink() {
                true => Link::Sym(target),
                false => Link::Hard(target),
            };
            index.add_parents(&name);
            index.links.insert(name, link);
        } else if !(kind.is_pax_global_extensions() || kind.is_pax_local_extensions()) {
            index.forget(&root, &name).map_err(ImageError::io(&root))?;
            index.others.insert(name);
        }
        // Whatever of its data was not read (a link's or a device's) is read here, in the
        // budget already charged, so the reader's skip stays within its header allowance.
        io::copy(&mut entry, &mut io::sink()).map_err(|e| malformed(n, &e))?;
        meter.between_entries();
    }
    Ok(Extracted { dir: tmp, index })
}

/// Writes one regular member: 0600, never through anything already at `dst`.
fn write_file<R: Read>(entry: &mut R, dst: &Path) -> io::Result<()> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)?;
    io::copy(entry, &mut out)?;
    Ok(())
}

impl Index {
    fn add_parents(&mut self, name: &Path) {
        for p in name.ancestors().skip(1) {
            if !p.as_os_str().is_empty() && !self.dirs.insert(p.to_path_buf()) {
                break;
            }
        }
    }

    /// Drops an earlier member of the same name (in a tar, the last one wins).
    fn forget(&mut self, root: &Path, name: &Path) -> io::Result<()> {
        if self.files.remove(name) {
            fs::remove_file(root.join(name))?;
        }
        self.links.remove(name);
        self.others.remove(name);
        Ok(())
    }

    /// The regular-file member `name` leads to, following the archive's links by name.
    fn resolve(&self, name: &Path) -> Result<PathBuf, Refused> {
        let mut todo: Vec<OsString> = name.iter().rev().map(OsString::from).collect();
        let mut cur = PathBuf::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                if !cur.pop() {
                    return Err(Refused::Outside);
                }
                continue;
            }
            // A hardlink's target is from the top, whether or not it starts with "/".
            if c == "." || c == "/" || c.is_empty() {
                continue;
            }
            let next = cur.join(&c);
            let Some(link) = self.links.get(&next) else {
                cur = next;
                continue;
            };
            hops += 1;
            if hops > 40 {
                return Err(Refused::Missing);
            }
            let target = match link {
                Link::Sym(t) if t.is_absolute() => return Err(Refused::Outside),
                Link::Sym(t) => t,
                Link::Hard(t) => {
                    cur = PathBuf::new();
                    t
                }
            };
            todo.extend(target.iter().rev().map(OsString::from));
        }
        if self.files.contains(&cur) {
            Ok(cur)
        } else if self.dirs.contains(&cur) || self.others.contains(&cur) || cur == Path::new("") {
            Err(Refused::NotRegular)
        } else {
            Err(Refused::Missing)
        }
    }
}

/// A member name made relative, or `None` if it climbs out with `..` (a tar path's rule).
pub(crate) fn clean(p: &Path) -> Option<PathBuf> {
    super::unpack::clean(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testutil::{only_files_and_dirs, tar_file, tar_gz, M};
    use std::os::unix::fs::PermissionsExt;

    const LIMIT: UnpackLimit = UnpackLimit {
        bytes: 1 << 20,
        entries: 100,
    };

    #[test]
    fn links_are_resolved_inside_the_archive_only() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret.json");
        std::fs::write(&secret, b"host secret").unwrap();
        let host = secret.display().to_string();
        let a = tar_file(
            t.path(),
            "a.tar",
            &[
                M::File("real/c.json", b"{}"),
                M::Symlink("in.json", "real/c.json"),
                M::Hardlink("hard.json", "real/c.json"),
                M::Symlink("dirlink", "real"),
                M::Symlink("chain.json", "dirlink/../in.json"),
                M::Symlink("host.json", &host),
                M::Symlink("up.json", "../secret.json"),
                M::Hardlink("uphard.json", "../secret.json"),
                M::Symlink("zero", "/dev/zero"),
                M::Fifo("fifo"),
                M::CharDev("null", 1, 3),
                M::Symlink("loop1", "loop2"),
                M::Symlink("loop2", "loop1"),
                M::Symlink("dangling", "nothing"),
                M::Symlink("todev", "null"),
            ],
        );
        let x = extract(&a, &t.path().join("tmp"), "a-", LIMIT).unwrap();
        for ok in [
            "real/c.json",
            "in.json",
            "hard.json",
            "dirlink/c.json",
            "chain.json",
        ] {
            assert_eq!(x.read_metadata(ok).unwrap(), b"{}", "{ok}");
            assert!(x.file(ok).unwrap().starts_with(x.root()), "{ok}");
        }
        let refused = |name: &str| x.read_metadata(name).unwrap_err().to_string();
        for out in [
            "host.json",
            "up.json",
            "uphard.json",
            "zero",
            "../secret.json",
        ] {
            assert_eq!(refused(out), "leads outside the image", "{out}");
        }
        for odd in ["fifo", "null", "todev", "real"] {
            assert_eq!(refused(odd), "not a regular file", "{odd}");
        }
        for gone in ["loop1", "dangling", "none"] {
            assert_eq!(refused(gone), "missing", "{gone}");
        }
        // Only regular files and directories were created, in a directory only we can enter.
        assert!(only_files_and_dirs(x.root()));
        let mode = std::fs::metadata(x.root()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn extraction_is_bounded_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let tmp = t.path().join("tmp");
        let gz = t.path().join("bomb.tar.gz");
        std::fs::write(&gz, tar_gz(&[M::Zeros("big", 64 << 20)])).unwrap();
        let e = extract(&gz, &tmp, "a-", LIMIT).err().unwrap();
        assert_eq!(
            e.to_string(),
            "Unpack limit reached in the archive: more than 1 MiB unpacked \
             (raise it with --unpack-limit or FCVM_UNPACK_LIMIT)"
        );
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

        let many: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
        let members: Vec<M> = many.iter().map(|n| M::File(n, b"x")).collect();
        let a = tar_file(t.path(), "many.tar", &members);
        let few = UnpackLimit {
            entries: 3,
            ..LIMIT
        };
        let e = extract(&a, &tmp, "a-", few).err().unwrap();
        assert!(e.to_string().contains("more than 3 entries"), "{e}");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn huge_tar_headers_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let gz = {
            let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let mut b = tar::Builder::new(enc);
            let comment = vec![b'a'; 8 << 20];
            b.append_pax_extensions([("comment", &comment[..])])
                .unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            b.append_data(&mut h, "f", &b"x"[..]).unwrap();
            b.into_inner().unwrap().finish().unwrap()
        };
        let path = t.path().join("pax.tar.gz");
        std::fs::write(&path, gz).unwrap();
        let e = extract(&path, &t.path().join("tmp"), "a-", UnpackLimit::default())
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("tar headers larger than 4 MiB"),
            "{e}"
        );
    }
}
