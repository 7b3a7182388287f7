//! Hostile archives and layers for the unit tests, built with the tar crate.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// One member of a test tar.
pub(crate) enum M<'a> {
    File(&'a str, &'a [u8]),
    /// A file of `n` zero bytes, streamed (never held in memory).
    Zeros(&'a str, u64),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    CharDev(&'a str, u32, u32),
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes a tar of `members` to `w`.
pub(crate) fn tar_to<W: Write>(w: W, members: &[M]) -> W {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(w);
    for m in members {
        match *m {
            M::File(p, data) => {
                let mut h = header(T::Regular, data.len() as u64);
                b.append_data(&mut h, p, data).unwrap();
            }
            M::Zeros(p, n) => {
                let mut h = header(T::Regular, n);
                b.append_data(&mut h, p, io::repeat(0).take(n)).unwrap();
            }
            M::Dir(p) => {
                let mut h = header(T::Directory, 0);
                h.set_mode(0o755);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            M::Symlink(p, target) => {
                let mut h = header(T::Symlink, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            M::Hardlink(p, target) => {
                let mut h = header(T::Link, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            M::Fifo(p) => {
                let mut h = header(T::Fifo, 0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            M::CharDev(p, major, minor) => {
                let mut h = header(T::Char, 0);
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A plain tar file of `members` at `dir/name`.
pub(crate) fn tar_file(dir: &Path, name: &str, members: &[M]) -> PathBuf {
    let path = dir.join(name);
    tar_to(std::fs::File::create(&path).unwrap(), members);
    path
}

/// A gzip-compressed tar of `members`, in memory.
pub(crate) fn tar_gz(members: &[M]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    tar_to(gz, members).finish().unwrap()
}

/// Every entry under `dir`: (relative path, is a regular file or directory).
pub(crate) fn only_files_and_dirs(dir: &Path) -> bool {
    walkdir(dir).into_iter().all(|p| {
        let t = std::fs::symlink_metadata(&p).unwrap().file_type();
        t.is_file() || t.is_dir()
    })
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}
