//! A writer for the `newc` cpio format, the only format the kernel unpacks as an initramfs.
//!
//! Entries are collected in a sorted map and written in path order, so every directory comes
//! before its contents (the kernel's unpacker does not create missing parents) and the same
//! inputs always give the same bytes. Owners are root (uid/gid 0) and mtimes 0.
//!
//! ```text
//! "070701" ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
//!          (13 fields, 8 hex digits each) | name\0 | pad to 4 | data | pad to 4
//! ```
//! The archive ends with an entry named `TRAILER!!!`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const S_IFLNK: u32 = 0o120000;

/// Where a regular file's bytes come from.
pub enum Data {
    Bytes(Vec<u8>),
    /// Read when the archive is written, so large files are streamed, not held in memory.
    File(PathBuf),
}

enum Node {
    Dir,
    File { mode: u32, data: Data },
    CharDev { mode: u32, major: u32, minor: u32 },
    Symlink { target: String },
}

/// An archive being assembled. Paths are absolute guest paths (`/usr/bin/crun`).
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (mode 0755) and its parents.
    pub fn dir(&mut self, path: &str) {
        let rel = self.parents(path);
        self.entries.entry(rel).or_insert(Node::Dir);
    }

    /// Adds a regular file with permission bits `mode` (e.g. 0o755), creating its parents.
    pub fn file(&mut self, path: &str, mode: u32, data: Data) {
        let rel = self.parents(path);
        self.entries.insert(rel, Node::File { mode, data });
    }

    /// Adds a character device node, e.g. `/dev/console` (5, 1).
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        let rel = self.parents(path);
        self.entries
            .insert(rel, Node::CharDev { mode, major, minor });
    }

    /// Adds a symbolic link to `target` (stored as is: relative targets resolve against the
    /// link's directory).
    pub fn symlink(&mut self, path: &str, target: &str) {
        let rel = self.parents(path);
        let target = target.to_string();
        self.entries.insert(rel, Node::Symlink { target });
    }

    /// Strips the leading `/` and adds every ancestor directory; returns the relative path.
    fn parents(&mut self, path: &str) -> String {
        let rel = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let mut end = 0;
        while let Some(i) = rel[end..].find('/') {
            end += i;
            self.entries
                .entry(rel[..end].to_string())
                .or_insert(Node::Dir);
            end += 1;
        }
        rel
    }

    /// Writes the whole archive, trailer included.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut pos = 0u64;
        for (ino, (name, node)) in self.entries.iter().enumerate() {
            let ino = ino as u32 + 1;
            match node {
                Node::Dir => header(w, &mut pos, name, ino, S_IFDIR | 0o755, 2, 0, (0, 0))?,
                Node::CharDev { mode, major, minor } => header(
                    w,
                    &mut pos,
                    name,
                    ino,
                    S_IFCHR | mode,
                    1,
                    0,
                    (*major, *minor),
                )?,
                Node::Symlink { target } => {
                    let t = target.as_bytes();
                    let len = t.len() as u64;
                    header(w, &mut pos, name, ino, S_IFLNK | 0o777, 1, len, (0, 0))?;
                    w.write_all(t)?;
                    pos += len;
                    pad(w, &mut pos)?;
                }
                Node::File { mode, data } => match data {
                    Data::Bytes(b) => {
                        header(
                            w,
                            &mut pos,
                            name,
                            ino,
                            S_IFREG | mode,
                            1,
                            b.len() as u64,
                            (0, 0),
                        )?;
                        w.write_all(b)?;
                        pos += b.len() as u64;
                        pad(w, &mut pos)?;
                    }
                    Data::File(p) => {
                        let mut f = std::fs::File::open(p)?;
                        let len = f.metadata()?.len();
                        header(w, &mut pos, name, ino, S_IFREG | mode, 1, len, (0, 0))?;
                        let copied = io::copy(&mut f, w)?;
                        if copied != len {
                            // The header already promised `len` bytes: a file that changed under
                            // us would corrupt every entry after it.
                            return Err(io::Error::other(format!("{} changed size", p.display())));
                        }
                        pos += len;
                        pad(w, &mut pos)?;
                    }
                },
            }
        }
        header(w, &mut pos, "TRAILER!!!", 0, 0, 1, 0, (0, 0))
    }
}

#[allow(clippy::too_many_arguments)]
fn header(
    w: &mut impl Write,
    pos: &mut u64,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u64,
    rdev: (u32, u32),
) -> io::Result<()> {
    let size = u32::try_from(size).map_err(|_| io::Error::other(format!("{name}: over 4 GiB")))?;
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    let mut h = String::with_capacity(110);
    h.push_str("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    *pos += 110 + name.len() as u64 + 1;
    pad(w, pos)
}

/// newc aligns both the name (after the 110-byte header) and the data to 4 bytes.
fn pad(w: &mut impl Write, pos: &mut u64) -> io::Result<()> {
    let n = (4 - (*pos % 4) as usize) % 4;
    w.write_all(&[0u8; 3][..n])?;
    *pos += n as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file(
            "/init",
            0o755,
            Data::Bytes(b"#!/bin/sh\necho hi\n".to_vec()),
        );
        a.file(
            "/etc/fcvm/modules",
            0o644,
            Data::Bytes(b"a.ko\nbc.ko\n".to_vec()),
        );
        a.dir("/proc");
        a.char_dev("/dev/console", 0o600, 5, 1);
        a
    }

    #[test]
    fn lists_with_cpio() {
        let mut buf = Vec::new();
        sample().write_to(&mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.cpio");
        std::fs::write(&p, &buf).unwrap();
        let out = Command::new("cpio")
            .args(["-itv", "-F"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = list.lines().collect();
        let names: Vec<&str> = lines
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "etc",
                "etc/fcvm",
                "etc/fcvm/modules",
                "init",
                "proc"
            ]
        );
        assert!(lines[1].starts_with("crw-------"), "{}", lines[1]);
        assert!(lines[1].contains("5,"), "{}", lines[1]);
        assert!(
            lines[5].starts_with("-rwxr-xr-x") && lines[5].contains("root"),
            "{}",
            lines[5]
        );
        assert!(lines[0].starts_with("drwxr-xr-x"), "{}", lines[0]);
    }

    #[test]
    fn extracts_file_contents() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("big");
        std::fs::write(&src, vec![7u8; 5001]).unwrap();
        let mut a = sample();
        a.file("/usr/lib/x/big", 0o644, Data::File(src));
        let mut buf = Vec::new();
        a.write_to(&mut buf).unwrap();
        let out_dir = d.path().join("x");
        std::fs::create_dir(&out_dir).unwrap();
        let mut child = Command::new("cpio")
            .args([
                "-id",
                "--quiet",
                "--no-absolute-filenames",
                "--nonmatching",
                "dev/console",
            ])
            .current_dir(&out_dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read(out_dir.join("usr/lib/x/big")).unwrap(),
            vec![7u8; 5001]
        );
        assert_eq!(
            std::fs::read(out_dir.join("etc/fcvm/modules")).unwrap(),
            b"a.ko\nbc.ko\n"
        );
    }

    #[test]
    fn symlinks_extract_as_links_to_their_target() {
        let mut a = sample();
        a.file("/usr/local/bin/tool", 0o755, Data::Bytes(b"tool".to_vec()));
        a.symlink("/usr/local/bin/ls", "tool");
        a.symlink("/usr/local/bin/abs", "/init");
        let mut buf = Vec::new();
        a.write_to(&mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        let d = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args(["-id", "--quiet", "--nonmatching", "dev/console"])
            .current_dir(d.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        assert!(child.wait().unwrap().success());
        let bin = d.path().join("usr/local/bin");
        assert_eq!(
            std::fs::read_link(bin.join("ls")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(std::fs::read(bin.join("ls")).unwrap(), b"tool");
        assert_eq!(
            std::fs::read_link(bin.join("abs")).unwrap(),
            Path::new("/init")
        );
    }

    #[test]
    fn same_input_same_bytes() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        sample().write_to(&mut a).unwrap();
        sample().write_to(&mut b).unwrap();
        assert_eq!(a, b);
    }
}
