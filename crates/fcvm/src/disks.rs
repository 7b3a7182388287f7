//! Extra disks (`fcvm podman run --disk SIZE|PATH[:GUEST]`, docs/run.md): parsed once at the
//! edge, attached as virtio-blk devices after the image and writable disks, mounted by the
//! agent and bind-mounted into the container (`ContainerPlan.disks`, protocol 7).
//!
//! - `SIZE` (`util::parse_size`: `512M`, `2G`; 0 refused): a new sparse ext4 file,
//!   `vms/<id>/disk<N>.img`, made like the writable layer; it goes with the VM.
//! - `PATH`: an existing regular file holding an ext4 filesystem, used in place (the run's
//!   writes land in it). fcvm opens it at the edge to check it: a directory, a device or a
//!   file it cannot open read-write is refused (125) before anything is created.
//! - `GUEST`: the absolute mount point in the container; default `/mnt/disk<N>` (N counts
//!   the `--disk` flags from 0).
//!
//! A snapshot copies every disk (`disk<N>.img` beside `rw.ext4`, [`DiskRecord`]) and each
//! restore or clone gets its own copy. The image-cache key holds the SIZE disks (size and
//! mount point, like `--rootfs-size`): their fresh contents are the same on every run, so a
//! cached snapshot can hand its copy on. A PATH disk is the user's data, which no snapshot
//! taken before the run can hold: a run with one neither restores nor saves image-cache or
//! startup snapshots (docs/design.md §11).

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most `--disk` flags one VM takes (microvm has 24 virtio-mmio slots; fcvm uses up to 4).
pub const MAX_DISKS: usize = 16;
/// Largest SIZE: ext4 with 4 KiB blocks and no 64bit feature tops out at 16 TiB.
const MAX_SIZE_MIB: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No #[source]: clap shows a value parser's error by its message alone.
    #[error("Invalid --disk {0:?}: {1}")]
    Spec(String, &'static str),
    #[error("Invalid --disk {0:?}: cannot open {1} read-write: {2}")]
    Open(String, String, std::io::Error),
    #[error("Invalid --disk {0:?}: {1} is not a regular file")]
    NotAFile(String, String),
    #[error("--disk: mount point {0} is given twice")]
    Twice(String),
    #[error("--disk: at most {MAX_DISKS} disks")]
    TooMany,
}

/// Where a disk's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A new sparse ext4 of this many MiB.
    Size(u64),
    /// An existing file (absolute, symlinks resolved), used in place.
    File(PathBuf),
    /// A copy of a snapshot's disk in the VM's directory (a restored VM's or a clone's).
    Restored,
}

/// One `--disk`, checked once, at the edge (clap's value parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    pub source: DiskSource,
    /// The mount point in the container; None: `/mnt/disk<N>`.
    pub guest: Option<String>,
}

impl DiskArg {
    /// `SIZE|PATH[:GUEST]`: the text before the first `:` is a size if it reads as one
    /// (`util::parse_size`), else a path (write `./10G` for a file named `10G`).
    pub fn parse(s: &str) -> Result<DiskArg, DiskError> {
        let bad = |why| DiskError::Spec(s.into(), why);
        let (src, guest) = match s.split_once(':') {
            Some((src, g)) => (src, Some(check_guest(g).map_err(bad)?)),
            None => (s, None),
        };
        if src.is_empty() {
            return Err(bad("expected SIZE or PATH"));
        }
        let source = match crate::util::parse_size(src) {
            Some(0) => return Err(bad("the size must be more than 0")),
            Some(bytes) => {
                let mib = bytes.div_ceil(1 << 20);
                if mib > MAX_SIZE_MIB {
                    return Err(bad("the size must be at most 16T"));
                }
                DiskSource::Size(mib)
            }
            None => DiskSource::File(open_file(s, src)?),
        };
        Ok(DiskArg { source, guest })
    }
}

/// Opens `path` read-write as fcvm (the VMM opens it again by the resolved path) and checks
/// that it is a regular file; returns that path.
fn open_file(spec: &str, path: &str) -> Result<PathBuf, DiskError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        // A FIFO or a device is refused below without blocking in open or touching it.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let f = match f {
        Ok(f) => f,
        // A directory cannot be opened for writing: say what it is, not EISDIR.
        Err(_) if Path::new(path).is_dir() => {
            return Err(DiskError::NotAFile(spec.into(), path.into()))
        }
        Err(e) => return Err(DiskError::Open(spec.into(), path.into(), e)),
    };
    let meta = f
        .metadata()
        .map_err(|e| DiskError::Open(spec.into(), path.into(), e))?;
    if !meta.is_file() {
        return Err(DiskError::NotAFile(spec.into(), path.into()));
    }
    // The file fcvm opened, by its absolute path (a later rename of a link changes nothing).
    std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&f)
    ))
    .map_err(|e| DiskError::Open(spec.into(), path.into(), e))
}

/// A mount point: absolute, normal (no `.` or `..`), not `/` itself.
fn check_guest(g: &str) -> Result<String, &'static str> {
    let p = Path::new(g);
    if !p.is_absolute() {
        return Err("GUEST must be an absolute path");
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || p.components().count() < 2
    {
        return Err("GUEST must name a directory below /, without . or ..");
    }
    Ok(g.trim_end_matches('/').to_string())
}

/// One disk of a VM, resolved: its source and its mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub source: DiskSource,
    pub guest: String,
}

/// The disks of a run, in flag order, with default mount points; a mount point given twice
/// or too many disks is refused.
pub fn plan(args: &[DiskArg]) -> Result<Vec<DiskPlan>, DiskError> {
    if args.len() > MAX_DISKS {
        return Err(DiskError::TooMany);
    }
    let mut out: Vec<DiskPlan> = vec![];
    for (i, a) in args.iter().enumerate() {
        let guest = a.guest.clone().unwrap_or_else(|| format!("/mnt/disk{i}"));
        if out.iter().any(|d| d.guest == guest) {
            return Err(DiskError::Twice(guest));
        }
        out.push(DiskPlan {
            source: a.source.clone(),
            guest,
        });
    }
    Ok(out)
}

/// The file name of disk `i` in a VM's or a snapshot's directory.
pub fn file_name(i: usize) -> String {
    format!("disk{i}.img")
}

/// The virtio serial of disk `i`: how the agent finds it (never by probe order). The agent
/// tells extra disks from the image and writable disks by its prefix (`fc-agent/src/disks.rs`).
pub fn serial(i: usize) -> String {
    format!("fcvm-disk{i}")
}

/// A disk as a VM and its snapshots know it (in the snapshot manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRecord {
    /// Its file in a snapshot's directory, and in a restored VM's ([`file_name`]).
    pub file: String,
    /// Its mount point in the container.
    pub guest: String,
    /// Where the running VM has it, when not `file` in the VM's directory (a PATH disk).
    #[serde(skip)]
    pub host: Option<PathBuf>,
}

impl DiskRecord {
    /// The records of a run's disks.
    pub fn of(plan: &[DiskPlan]) -> Vec<DiskRecord> {
        plan.iter()
            .enumerate()
            .map(|(i, d)| DiskRecord {
                file: file_name(i),
                guest: d.guest.clone(),
                host: match &d.source {
                    DiskSource::File(p) => Some(p.clone()),
                    DiskSource::Size(_) | DiskSource::Restored => None,
                },
            })
            .collect()
    }

    /// Where the VM in `vm_dir` has this disk.
    pub fn path_in(&self, vm_dir: &Path) -> PathBuf {
        self.host.clone().unwrap_or_else(|| vm_dir.join(&self.file))
    }
}

/// The image-cache key's part for `plan`: the SIZE disks' sizes and mount points (a PATH
/// disk keeps a run out of the cache, so it never reaches a key).
pub fn key_part(plan: &[DiskPlan]) -> Option<String> {
    let parts: Vec<String> = plan
        .iter()
        .map(|d| match &d.source {
            DiskSource::Size(mib) => format!("{mib}M:{}", d.guest),
            DiskSource::File(p) => format!("file:{}:{}", p.display(), d.guest),
            DiskSource::Restored => format!("restored:{}", d.guest),
        })
        .collect();
    (!parts.is_empty()).then(|| format!("disks={}", parts.join(",")))
}

/// Whether any disk is a host file (such a run takes no image-cache or startup snapshot).
pub fn has_file(plan: &[DiskPlan]) -> bool {
    plan.iter().any(|d| matches!(d.source, DiskSource::File(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let a = DiskArg::parse("1G").unwrap();
        assert_eq!(a.source, DiskSource::Size(1024));
        assert_eq!(a.guest, None);
        let a = DiskArg::parse("100M:/data/").unwrap();
        assert_eq!(
            (a.source, a.guest.as_deref()),
            (DiskSource::Size(100), Some("/data"))
        );
        for bad in [
            "0",
            "0G:/x",
            "",
            ":/x",
            "1G:x",
            "1G:",
            "1G:/",
            "1G:/a/../b",
            "17T",
        ] {
            assert!(DiskArg::parse(bad).is_err(), "{bad}");
        }
        let e = DiskArg::parse("/nonexistent/disk.img").unwrap_err();
        assert!(e.to_string().contains("cannot open"), "{e}");
        let e = DiskArg::parse("/tmp").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = DiskArg::parse("/dev/null").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn files_and_plans() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.img");
        std::fs::write(&f, b"").unwrap();
        std::os::unix::fs::symlink(&f, d.path().join("link")).unwrap();
        let a = DiskArg::parse(&format!("{}/link:/srv", d.path().display())).unwrap();
        assert_eq!(a.source, DiskSource::File(f.canonicalize().unwrap()));
        let p = plan(&[DiskArg::parse("1G").unwrap(), a.clone()]).unwrap();
        assert_eq!(p[0].guest, "/mnt/disk0");
        assert_eq!(p[1].guest, "/srv");
        assert!(has_file(&p) && !has_file(&p[..1]));
        assert!(matches!(plan(&[a.clone(), a]), Err(DiskError::Twice(_))));
        let r = DiskRecord::of(&p);
        assert_eq!(r[0].path_in(Path::new("/v")), Path::new("/v/disk0.img"));
        assert_eq!(r[1].path_in(Path::new("/v")), f.canonicalize().unwrap());
        assert_eq!(key_part(&p[..1]).unwrap(), "disks=1024M:/mnt/disk0");
        assert_eq!(key_part(&[]), None);
        assert_eq!(serial(2), "fcvm-disk2");
    }
}
