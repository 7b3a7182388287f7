//! Applies layer tarballs, in order, to one directory: the merged root filesystem.
//!
//! Per layer:
//! 1. the stored blob is checked against its digest (a corrupt layer never touches the tree);
//! 2. it is decompressed (gzip, zstd, plain; by media type, or sniffed when the source has none)
//!    and hashed again as it is read, against the config's diff_id;
//! 3. each entry is applied: `.wh.NAME` deletes NAME, `.wh..wh..opq` empties its directory of
//!    everything lower layers put there; anything else replaces what was there.
//!
//! Limits: every entry is charged to the image's [`Budget`] before it is written (its logical
//! size, and one entry), and so are bytes after the tar end marker; the tar reader may buffer
//! at most 4 MiB of headers between entries. Errors never quote the layer: the tar crate's
//! messages can hold a header's bytes, so only OS errors and our own refusals are kept.
//!
//! Safety: the blob is opened inside its tree as a regular file ([`member::open`]), once, for
//! both its digest check and its unpacking. `..` in a path is refused. Symlinks already in the tree are resolved *inside* the
//! root (an absolute target means the image's `/`), the way containerd does, so a layer can
//! never write through a link to the host. Links are kept as data otherwise.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::limits::{self, Budget, Exceeded, MetaOverflow};
use super::member::{self, MemberError};
use super::{ImageError, LayerBlob};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
    /// Unknown (docker-archive): look at the magic bytes.
    Sniff,
}

/// Which layer media types we can unpack; anything else is refused before any download.
pub(crate) fn compression_of(media_type: &str) -> Result<Compression, ImageError> {
    const TARS: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
    ];
    if media_type.is_empty() {
        return Ok(Compression::Sniff);
    }
    let (base, c) = if let Some(b) = media_type
        .strip_suffix("+gzip")
        .or(media_type.strip_suffix(".gzip"))
    {
        (b, Compression::Gzip)
    } else if let Some(b) = media_type.strip_suffix("+zstd") {
        (b, Compression::Zstd)
    } else {
        (media_type, Compression::None)
    };
    if TARS.contains(&base) {
        Ok(c)
    } else {
        Err(ImageError::UnsupportedMediaType(media_type.to_string()))
    }
}

/// A decompressing reader over `r`.
pub(crate) fn decoder<'a>(r: impl Read + 'a, mut c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(1 << 20, r);
    if c == Compression::Sniff {
        let head = r.fill_buf()?;
        c = if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        };
    }
    Ok(match c {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        _ => Box::new(r),
    })
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Applies `layers` in order onto `root` (an existing, empty directory at first).
#[cfg(test)]
pub(crate) fn unpack_layers(layers: &[LayerBlob], root: &Path) -> Result<(), ImageError> {
    let mut budget = Budget::new(super::UnpackLimit::default());
    for layer in layers {
        unpack_layer(layer, root, &mut budget)?;
    }
    Ok(())
}

/// Applies one layer onto `root`, charging its entries to `budget`.
pub(crate) fn unpack_layer(
    layer: &LayerBlob,
    root: &Path,
    budget: &mut Budget,
) -> Result<(), ImageError> {
    let name = layer
        .digest
        .clone()
        .or(layer.diff_id.clone())
        .unwrap_or_else(|| layer.path.display().to_string());
    let fail = |e: io::Error| ImageError::Unpack {
        layer: name.clone(),
        source: content_free(&e),
    };
    let over = |x: Exceeded| ImageError::UnpackLimit {
        at: format!("layer {name}"),
        what: x.describe(),
    };
    // One descriptor for the digest check and the unpacking: what is checked is what is read.
    let rel = layer.path.strip_prefix(&layer.root).unwrap_or(&layer.path);
    let mut file = member::open(&layer.root, rel).map_err(|e| match e {
        MemberError::Io(source) => ImageError::io(&layer.path)(source),
        e => ImageError::Unpack {
            layer: name.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        },
    })?;
    if let Some(digest) = &layer.digest {
        let want = super::sha256_hex_of(digest)?;
        let mut h = Sha256::new();
        io::copy(&mut file, &mut h).map_err(ImageError::io(&layer.path))?;
        if hex::encode(h.finalize()) != want {
            return Err(ImageError::LayerDigest(digest.clone()));
        }
        file.seek(SeekFrom::Start(0))
            .map_err(ImageError::io(&layer.path))?;
    }
    let (tar_stream, meter) = limits::guarded(HashingReader {
        inner: decoder(file, compression_of(&layer.media_type)?).map_err(fail)?,
        hasher: Sha256::new(),
    });
    let mut archive = tar::Archive::new(tar_stream);
    let is_root = nix::unistd::geteuid().is_root();
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(is_root);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);

    let mut ours = Written::default();
    for entry in archive.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        let headers = meter.in_entry();
        // Charged before anything is written: an entry past the limit never reaches the disk.
        budget
            .entry(entry.size().saturating_add(headers))
            .map_err(over)?;
        apply(&mut entry, root, &mut ours, is_root).map_err(|e| match e {
            Applied::Unsafe(path) => ImageError::UnsafePath {
                layer: name.clone(),
                path,
            },
            Applied::Io(e) => fail(e),
        })?;
        // What the entry did not consume (a directory's or a link's data) is read here, inside
        // the charged size, so the reader's skip stays within its header allowance.
        io::copy(&mut entry, &mut io::sink()).map_err(fail)?;
        meter.between_entries();
    }
    // The tar end marker can come before the end of the stream: hash the rest too, within the
    // budget (a stream of zeros after the marker is work too).
    budget.bytes(meter.in_entry()).map_err(over)?;
    let mut stream = archive.into_inner().into_inner();
    let allowed = budget.bytes_left().saturating_add(1);
    let rest = io::copy(&mut (&mut stream).take(allowed), &mut io::sink()).map_err(fail)?;
    budget.bytes(rest).map_err(over)?;
    if let Some(diff_id) = &layer.diff_id {
        let want = super::sha256_hex_of(diff_id)?;
        if hex::encode(stream.hasher.finalize()) != want {
            return Err(ImageError::LayerDigest(diff_id.clone()));
        }
    }
    Ok(())
}

/// The paths a layer wrote, and their parents: an opaque whiteout must keep them. Kept as
/// 128-bit hashes (sha256, so a layer cannot make two paths collide): a million deep paths
/// would otherwise hold gigabytes.
#[derive(Default)]
struct Written(HashSet<[u8; 16]>);

impl Written {
    fn key(p: &Path) -> [u8; 16] {
        use std::os::unix::ffi::OsStrExt;
        let digest = Sha256::digest(p.as_os_str().as_bytes());
        let mut key = [0; 16];
        key.copy_from_slice(&digest[..16]);
        key
    }
}

/// Why an entry could not be applied.
enum Applied {
    /// A path that would leave the root (`..`, a whiteout of `..`, a bad hard link target).
    Unsafe(String),
    Io(io::Error),
}

impl From<io::Error> for Applied {
    fn from(e: io::Error) -> Self {
        Applied::Io(e)
    }
}

/// Applies one entry of a layer: a whiteout, a hard link, a device node or a file.
fn apply<R: Read>(
    entry: &mut tar::Entry<R>,
    root: &Path,
    ours: &mut Written,
    is_root: bool,
) -> Result<(), Applied> {
    let raw = entry.path()?.into_owned();
    let unsafe_path = || Applied::Unsafe(format!("{}", raw.display()));
    let rel = clean(&raw).ok_or_else(unsafe_path)?;
    let Some(file_name) = rel.file_name().map(OsString::from) else {
        return Ok(()); // the layer's own "./"
    };
    let parent = resolve_in_root(root, rel.parent().unwrap_or(Path::new("")))?;
    let fname = file_name.to_string_lossy();
    if fname == ".wh..wh..opq" {
        make_opaque(&parent, ours)?;
        return Ok(());
    }
    if let Some(hidden) = fname.strip_prefix(".wh.") {
        // ".wh.." or ".wh..." would name the directory itself or its parent.
        if matches!(hidden, "" | "." | "..") {
            return Err(unsafe_path());
        }
        remove_any(&parent.join(hidden))?;
        return Ok(());
    }
    let dst = parent.join(&file_name);
    let kind = entry.header().entry_type();
    if kind.is_pax_global_extensions()
        || kind.is_pax_local_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink()
    {
        return Ok(()); // metadata records, not files (normally consumed by the tar crate)
    }
    if let Ok(meta) = fs::symlink_metadata(&dst) {
        // A directory stays a directory (its lower contents are still visible); anything
        // else is replaced, and a link is removed rather than written through.
        if !(kind.is_dir() && meta.is_dir()) {
            remove_any(&dst)?;
        }
    }
    if kind.is_hard_link() {
        let target = entry
            .link_name()?
            .and_then(|t| clean(&t))
            .filter(|t| t.file_name().is_some())
            .ok_or_else(unsafe_path)?;
        let src_parent = resolve_in_root(root, target.parent().unwrap_or(Path::new("")))?;
        let src = src_parent.join(target.file_name().unwrap_or_default());
        fs::hard_link(&src, &dst)?;
    } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
        make_node(entry, &dst, is_root)?;
    } else {
        entry.unpack(&dst)?;
    }
    let mut p = dst.as_path();
    while p != root && ours.0.insert(Written::key(p)) {
        match p.parent() {
            Some(up) => p = up,
            None => break,
        }
    }
    Ok(())
}

/// One of our own refusals while unpacking (its text names an image path, nothing else).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

/// `e` made safe to print: an OS error keeps its (the OS's) text, our own refusals and the
/// header allowance are kept; anything else came from parsing the layer and may quote it (the
/// tar crate puts a bad header field's bytes in its messages), so it becomes a fixed text.
fn content_free(e: &io::Error) -> io::Error {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut eof = false;
    while let Some(c) = next {
        next = c.source();
        let Some(io) = c.downcast_ref::<io::Error>() else {
            continue;
        };
        eof |= io.kind() == io::ErrorKind::UnexpectedEof;
        if let Some(code) = io.raw_os_error() {
            return io::Error::from_raw_os_error(code);
        }
        if let Some(inner) = io.get_ref() {
            if let Some(r) = inner.downcast_ref::<Refusal>() {
                return io::Error::other(r.clone());
            }
            if inner.is::<MetaOverflow>() {
                return io::Error::other(MetaOverflow);
            }
            next = Some(inner);
        }
    }
    match eof {
        true => io::Error::new(io::ErrorKind::UnexpectedEof, "truncated layer"),
        false => io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed layer (bad tar or compressed data)",
        ),
    }
}

/// A tar path made relative, or `None` if it climbs out with `..`.
pub(super) fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// The real directory `rel` names inside `root`, following symlinks as the image would see them
/// (absolute targets start at `root`, `..` stops at `root`) and creating missing directories.
fn resolve_in_root(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut todo: Vec<OsString> = rel
        .components()
        .rev()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        if c == "." || c == "/" || c.is_empty() {
            continue;
        }
        let next = cur.join(&c);
        let full = root.join(&next);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::other(Refusal(format!(
                        "too many levels of symbolic links at {:?}",
                        next
                    ))));
                }
                let target = fs::read_link(&full)?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                for t in target.components().rev() {
                    todo.push(t.as_os_str().to_os_string());
                }
            }
            Ok(m) if m.is_dir() => cur = next,
            Ok(_) => {
                return Err(io::Error::other(Refusal(format!(
                    "{next:?} is not a directory"
                ))))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&full)?;
                cur = next;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(cur))
}

/// Removes a file, link or whole directory; absent is fine.
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Empties `dir` of everything this layer did not write.
fn make_opaque(dir: &Path, ours: &Written) -> io::Result<()> {
    for child in fs::read_dir(dir)? {
        let p = child?.path();
        if !ours.0.contains(&Written::key(&p)) {
            remove_any(&p)?;
        } else if fs::symlink_metadata(&p)?.is_dir() {
            make_opaque(&p, ours)?;
        }
    }
    Ok(())
}

/// Device nodes and fifos (the tar crate would write them as empty files).
fn make_node<R: Read>(entry: &tar::Entry<R>, dst: &Path, is_root: bool) -> io::Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let h = entry.header();
    let kind = h.entry_type();
    let flag = if kind.is_fifo() {
        SFlag::S_IFIFO
    } else if kind.is_block_special() {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFCHR
    };
    let major = h.device_major()?.unwrap_or(0) as u64;
    let minor = h.device_minor()?.unwrap_or(0) as u64;
    let mode = Mode::from_bits_truncate(h.mode()? & 0o7777);
    match mknod(dst, flag, mode, nix::sys::stat::makedev(major, minor)) {
        Ok(()) => {}
        // Unprivileged builds cannot make devices; the container's /dev is a tmpfs anyway.
        Err(nix::errno::Errno::EPERM) if !is_root && !kind.is_fifo() => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if is_root {
        let (uid, gid) = (h.uid()? as u32, h.gid()? as u32);
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack_one(layer: &LayerBlob, root: &Path) -> Result<(), ImageError> {
        unpack_layer(
            layer,
            root,
            &mut Budget::new(super::super::UnpackLimit::default()),
        )
    }

    /// A layer built from (path, contents) pairs; `None` = directory, `Some("->x")` = symlink.
    pub(crate) fn layer(dir: &Path, name: &str, entries: &[(&str, Option<&str>)]) -> LayerBlob {
        let path = dir.join(name);
        let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
        for (p, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1);
            h.set_uid(0);
            h.set_gid(0);
            match data {
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, io::empty()).unwrap();
                }
                Some(t) if t.starts_with("->") => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, p, &t[2..]).unwrap();
                }
                Some(t) => {
                    h.set_mode(0o644);
                    h.set_size(t.len() as u64);
                    b.append_data(&mut h, p, t.as_bytes()).unwrap();
                }
            }
        }
        b.finish().unwrap();
        LayerBlob {
            root: dir.to_path_buf(),
            path,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: None,
            diff_id: None,
        }
    }

    fn ls(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let l1 = layer(
            t.path(),
            "1.tar",
            &[
                ("etc", None),
                ("etc/a", Some("a")),
                ("etc/b", Some("b")),
                ("opq", None),
                ("opq/old", Some("x")),
                ("opq/sub", None),
                ("opq/sub/deep", Some("x")),
            ],
        );
        let l2 = layer(
            t.path(),
            "2.tar",
            &[
                ("etc/.wh.a", Some("")),
                ("etc/b", Some("B2")),
                ("opq/new", Some("n")),
                ("opq/.wh..wh..opq", Some("")),
                ("opq/sub/mine", Some("m")),
            ],
        );
        unpack_layers(&[l1, l2], &root).unwrap();
        assert_eq!(
            ls(&root),
            vec!["etc", "etc/b", "opq", "opq/new", "opq/sub", "opq/sub/mine"]
        );
        assert_eq!(fs::read_to_string(root.join("etc/b")).unwrap(), "B2");
    }

    #[test]
    fn never_writes_through_links_or_dotdot() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let abs = format!("->{}", outside.display());
        let l1 = layer(
            t.path(),
            "1.tar",
            &[("lnk", Some(abs.as_str())), ("up", Some("->../../outside"))],
        );
        let l2 = layer(
            t.path(),
            "2.tar",
            &[("lnk/f", Some("x")), ("up/g", Some("y"))],
        );
        unpack_layers(&[l1, l2], &root).unwrap();
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "escaped the root"
        );
        // Resolved inside the root: the absolute target is the image's own path, and `..`
        // stops at the image's `/`.
        let inner = root.join(outside.strip_prefix("/").unwrap());
        assert_eq!(fs::read_to_string(inner.join("f")).unwrap(), "x");
        assert_eq!(fs::read_to_string(root.join("outside/g")).unwrap(), "y");
        assert!(fs::symlink_metadata(root.join("lnk")).unwrap().is_symlink());

        // tar::Builder refuses to write `..`, so patch the name bytes of a raw header.
        let bad = t.path().join("bad.tar");
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..8].copy_from_slice(b"../evilx");
        h.set_size(0);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(&[0u8; 1024]);
        fs::write(&bad, data).unwrap();
        let l = LayerBlob {
            root: t.path().to_path_buf(),
            path: bad,
            media_type: String::new(),
            digest: None,
            diff_id: None,
        };
        let e = unpack_one(&l, &root).unwrap_err();
        assert!(matches!(e, ImageError::UnsafePath { .. }), "{e}");

        // A whiteout naming ".." must not delete the directory above it.
        let l = layer(t.path(), "wh.tar", &[("outside/.wh...", Some(""))]);
        let e = unpack_one(&l, &root).unwrap_err();
        assert!(matches!(e, ImageError::UnsafePath { .. }), "{e}");
        assert!(root.join("outside/g").is_file());
    }

    #[test]
    fn digest_mismatch_is_detected() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let mut l = layer(t.path(), "1.tar", &[("f", Some("data"))]);
        let good = crate::util::sha256_file(&l.path).unwrap();
        l.diff_id = Some(format!("sha256:{good}"));
        l.digest = Some(format!("sha256:{good}"));
        unpack_one(&l, &root).unwrap();
        l.digest = Some(format!("sha256:{}", "0".repeat(64)));
        let e = unpack_one(&l, &root).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("Layer sha256:{} digest mismatch", "0".repeat(64))
        );
        // Compressed blob fine, uncompressed content not what the config promised.
        l.digest = None;
        l.diff_id = Some(format!("sha256:{}", "1".repeat(64)));
        assert!(matches!(
            unpack_one(&l, &root),
            Err(ImageError::LayerDigest(_))
        ));
    }

    #[test]
    fn media_types() {
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar+gzip").unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Compression::Zstd
        );
        assert!(matches!(
            compression_of("application/vnd.wasm.content.layer.v1+wasm"),
            Err(ImageError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn hardlinks_within_and_across_layers() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let path = t.path().join("links.tar");
        let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o4755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_size(3);
        b.append_data(&mut h, "usr/bin/a", &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_size(0);
        b.append_link(&mut h, "usr/bin/b", "usr/bin/a").unwrap();
        b.finish().unwrap();
        drop(b);
        let l1 = LayerBlob {
            root: t.path().to_path_buf(),
            path,
            media_type: String::new(),
            digest: None,
            diff_id: None,
        };
        unpack_one(&l1, &root).unwrap();
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            fs::metadata(root.join("usr/bin/a")).unwrap(),
            fs::metadata(root.join("usr/bin/b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.mode() & 0o7777, 0o4755, "setuid bit lost");
    }

    #[test]
    fn gzip_and_zstd_by_media_type_and_by_sniffing() {
        let t = tempfile::tempdir().unwrap();
        let plain = layer(t.path(), "p.tar", &[("f", Some("data"))]);
        let tar = fs::read(&plain.path).unwrap();
        let diff_id = Some(format!("sha256:{}", crate::util::sha256_hex(&tar)));
        let gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for (name, data, mt) in [
            ("a.gz", &gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
            ("b.zst", &zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
            ("c.gz", &gz, ""),
            ("d.zst", &zst, ""),
        ] {
            let root = t.path().join(format!("root-{name}"));
            fs::create_dir(&root).unwrap();
            let path = t.path().join(name);
            fs::write(&path, data).unwrap();
            let l = LayerBlob {
                root: t.path().to_path_buf(),
                path,
                media_type: mt.into(),
                digest: Some(format!("sha256:{}", crate::util::sha256_hex(data))),
                diff_id: diff_id.clone(),
            };
            unpack_one(&l, &root).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(fs::read_to_string(root.join("f")).unwrap(), "data");
        }
    }

    /// The error and its sources on one line, as the CLI prints them.
    fn chain_of(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            out += &format!(": {c}");
            cur = c.source();
        }
        out
    }

    fn blob(dir: &Path, name: &str, data: &[u8]) -> LayerBlob {
        let path = dir.join(name);
        fs::write(&path, data).unwrap();
        LayerBlob {
            root: dir.to_path_buf(),
            path,
            media_type: String::new(),
            digest: None,
            diff_id: None,
        }
    }

    #[test]
    fn a_layer_past_the_limit_is_refused_before_it_is_written() {
        use crate::image::testutil::{tar_gz, M};
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let small = |bytes, entries| Budget::new(crate::image::UnpackLimit { bytes, entries });
        // 64 MiB of zeros in a few hundred KiB of gzip, against a 1 MiB limit.
        let gz = tar_gz(&[M::File("ok", b"fine"), M::Zeros("big", 64 << 20)]);
        assert!(gz.len() < 1 << 20);
        let l = blob(t.path(), "bomb.tar.gz", &gz);
        let e = unpack_layer(&l, &root, &mut small(1 << 20, 100)).unwrap_err();
        assert!(
            e.to_string().contains("more than 1 MiB unpacked"),
            "{}",
            chain_of(&e)
        );
        assert!(root.join("ok").is_file());
        assert!(
            !root.join("big").exists(),
            "the entry past the limit was written"
        );

        let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        let members: Vec<M> = names.iter().map(|n| M::File(n, b"")).collect();
        let l = blob(t.path(), "many.tar.gz", &tar_gz(&members));
        let e = unpack_layer(&l, &root, &mut small(1 << 20, 5)).unwrap_err();
        assert!(e.to_string().contains("more than 5 entries"), "{e}");

        // Counted across layers: two layers of 600 KiB pass one by one, not together.
        let l = blob(
            t.path(),
            "half.tar.gz",
            &tar_gz(&[M::Zeros("h", 600 << 10)]),
        );
        let mut budget = small(1 << 20, 100);
        unpack_layer(&l, &root, &mut budget).unwrap();
        assert!(unpack_layer(&l, &root, &mut budget).is_err());

        // Zeros after the tar's end marker are decompressed and hashed: they count too.
        let mut tail = crate::image::testutil::tar_to(Vec::new(), &[M::File("f", b"x")]);
        tail.resize(8 << 20, 0);
        let gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tail).unwrap();
            e.finish().unwrap()
        };
        let l = blob(t.path(), "tail.tar.gz", &gz);
        let e = unpack_layer(&l, &root, &mut small(1 << 20, 100)).unwrap_err();
        assert!(matches!(e, ImageError::UnpackLimit { .. }), "{e}");
    }

    #[test]
    fn errors_never_quote_the_layer_and_links_out_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        // What a layer linked to /etc/shadow used to print the start of.
        let shadow = "root:$6$hunter2hunter2:19000:0:99999:7:::\n".repeat(30);
        let l = blob(t.path(), "shadow", shadow.as_bytes());
        let e = unpack_one(&l, &root).unwrap_err();
        let chain = chain_of(&e);
        assert!(
            !chain.contains("hunter2") && !chain.contains("root:"),
            "{chain}"
        );
        assert!(chain.contains("malformed layer"), "{chain}");

        for target in ["/etc/shadow", "/dev/zero"] {
            let link = t.path().join("link");
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link).unwrap();
            let l = LayerBlob {
                path: link,
                ..l.clone()
            };
            let e = unpack_one(&l, &root).unwrap_err();
            let chain = chain_of(&e);
            assert!(chain.ends_with("leads outside the image"), "{chain}");
        }
    }
}
