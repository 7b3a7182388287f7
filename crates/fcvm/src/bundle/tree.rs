//! A directory tree (a container's mounted rootfs) → `images/trees/<key>/rootfs.erofs`,
//! built once per key under a lock, published whole by one rename (as [`crate::image`]'s
//! cache does), so an identical container reuses the erofs and with it the image-cache
//! snapshot keyed by its digest.
//!
//! Beside each erofs lies `sources.json`, the identities of the directories its key was made
//! of (containerd's committed layer snapshots): once one of them is gone, containerd removed
//! the image and [`super::prune`] may remove the tree.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths::Dirs;
use crate::util;

const ROOTFS: &str = "rootfs.erofs";
pub(super) const SOURCES: &str = "sources.json";

/// What a directory was when a tree's key was made of it: the same path with the same
/// device, inode and change time is the same committed layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub ctime: i64,
    pub ctime_nsec: i64,
}

impl Source {
    /// The identity `path` has now.
    pub fn of(path: &Path) -> std::io::Result<Source> {
        let md = std::fs::metadata(path)?;
        Ok(Source {
            path: path.to_path_buf(),
            dev: md.dev(),
            ino: md.ino(),
            ctime: md.ctime(),
            ctime_nsec: md.ctime_nsec(),
        })
    }

    /// Whether `path` is still the directory it was.
    pub fn unchanged(&self) -> bool {
        Source::of(&self.path).is_ok_and(|now| now == *self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("Invalid rootfs cache key {0:?}")]
    Key(String),
    #[error("Cannot build the container's root filesystem at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] util::ToolError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The erofs cached as `key`, if built.
pub fn cached(dirs: &Dirs, key: &str) -> Option<PathBuf> {
    let rootfs = dirs.images().join("trees").join(key).join(ROOTFS);
    (valid_key(key) && rootfs.is_file()).then_some(rootfs)
}

pub(super) fn valid_key(key: &str) -> bool {
    key.len() >= 16
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The erofs of tree `dir` cached as `key` (lowercase hex, the caller's digest of what the
/// tree is made of, `sources`): built from `dir` on a miss, reused on a hit. A tree with no
/// sources is one-off: its owner removes it, or `fcvm snapshots prune` once nothing uses it.
pub fn erofs_of_tree(
    dirs: &Dirs,
    key: &str,
    dir: &Path,
    sources: &[Source],
) -> Result<PathBuf, TreeError> {
    if !valid_key(key) {
        return Err(TreeError::Key(key.into()));
    }
    let trees = dirs.images().join("trees");
    let dest = trees.join(key);
    let rootfs = dest.join(ROOTFS);
    if rootfs.is_file() {
        return Ok(rootfs);
    }
    crate::owner_only::create_dir(&dirs.images()).map_err(io(&dirs.images()))?;
    crate::owner_only::create_dir(&trees).map_err(io(&trees))?;
    crate::owner_only::create_dir(&dirs.locks()).map_err(io(&dirs.locks()))?;
    let lock_path = dirs.locks().join(format!("tree-{key}.lock"));
    let lock = crate::owner_only::open_lock(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if rootfs.is_file() {
        return Ok(rootfs);
    }
    let mkfs = util::which("mkfs.erofs").ok_or_else(|| util::ToolError::Missing {
        tool: "mkfs.erofs".into(),
        package: "erofs-utils".into(),
    })?;
    crate::owner_only::create_dir(&dirs.tmp()).map_err(io(&dirs.tmp()))?;
    let tmp = util::temp_dir_in(&dirs.tmp(), "tree-").map_err(io(&dirs.tmp()))?;
    let image = tmp.path().join(ROOTFS);
    let step = crate::progress::step("Building root filesystem (erofs)");
    util::run_tool(
        Command::new(mkfs).arg("--quiet").arg(&image).arg(dir),
        "erofs-utils",
    )?;
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o400)).map_err(io(&image))?;
    if !sources.is_empty() {
        let record = tmp.path().join(SOURCES);
        let json = serde_json::to_vec(sources).expect("sources serialize");
        let mut f = crate::owner_only::create_file(&record).map_err(io(&record))?;
        std::io::Write::write_all(&mut f, &json).map_err(io(&record))?;
    }
    util::publish_dir(tmp, &dest).map_err(io(&dest))?;
    step.finish();
    Ok(rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_per_key() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path().join("data"));
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/hello"), "hi").unwrap();
        let key = "ab".repeat(32);
        let a = erofs_of_tree(&dirs, &key, &tree, &[]).unwrap();
        assert!(a.is_file());
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(tree.join("bin/other"), "x").unwrap();
        let b = erofs_of_tree(&dirs, &key, &tree, &[]).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::metadata(&b).unwrap().modified().unwrap(), mtime);
        assert_eq!(std::fs::read_dir(dirs.tmp()).unwrap().count(), 0);
        assert!(matches!(
            erofs_of_tree(&dirs, "../x", &tree, &[]),
            Err(TreeError::Key(_))
        ));
    }
}
