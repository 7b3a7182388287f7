//! Removing cached trees (`images/trees/<key>`) nothing needs any more, for
//! `fcvm snapshots prune`: containerd removes an image's layers without telling its shims,
//! so the erofs built from them would otherwise stay forever.
//!
//! A tree goes when nothing uses it (no VM whose owner lives runs it, no snapshot's rootfs is
//! it) and either one of its sources (`sources.json`, see [`super::tree`]) is no longer the
//! directory it was, or it has none (a one-off tree whose shim was killed before its Delete)
//! and is older than [`ONE_OFF_GRACE`]: a Create builds its one-off tree a moment before its
//! VM's record names it, and that moment must not look like an orphan.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::tree::{Source, SOURCES};
use crate::paths::Dirs;

/// How old a tree without sources must be before it counts as left behind.
pub const ONE_OFF_GRACE: Duration = Duration::from_secs(600);

/// Removes the trees nothing needs; returns their keys.
pub fn prune(dirs: &Dirs) -> Vec<String> {
    let trees = dirs.images().join("trees");
    let Ok(entries) = std::fs::read_dir(&trees) else {
        return vec![];
    };
    let running: HashSet<String> = crate::vm::list(dirs)
        .into_iter()
        .filter(|(_, st)| !st.abandoned())
        .map(|(_, st)| st.image_digest)
        .collect();
    let pinned: HashSet<_> = crate::snapshot::list(dirs)
        .into_iter()
        .map(|m| m.rootfs)
        .collect();
    let mut removed = vec![];
    for e in entries.flatten() {
        let key = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        if !super::tree::valid_key(&key) || !dir.is_dir() {
            continue;
        }
        if running.contains(&format!("sha256:{key}")) || pinned.contains(&dir.join("rootfs.erofs"))
        {
            continue;
        }
        if !unneeded(&dir) {
            continue;
        }
        match remove(dirs, &key, &dir) {
            Ok(true) => removed.push(key),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot remove cached tree {key}: {e}"),
        }
    }
    removed
}

/// Whether the tree's sources are gone (or it never had any and is old enough).
fn unneeded(dir: &Path) -> bool {
    match std::fs::read(dir.join(SOURCES)) {
        Ok(bytes) => match serde_json::from_slice::<Vec<Source>>(&bytes) {
            Ok(sources) => sources.iter().any(|s| !s.unchanged()),
            // fcvm writes this file whole (0600, in a 0700 directory): unreadable means a
            // build from another version; its key cannot be checked, so it is rebuilt on use.
            Err(_) => true,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= ONE_OFF_GRACE),
        Err(_) => false,
    }
}

/// Moves the tree into `tmp/` under its build lock (a build of the same key in progress keeps
/// it), then deletes it. False when someone else holds the lock or removed it first.
fn remove(dirs: &Dirs, key: &str, dir: &Path) -> std::io::Result<bool> {
    let lock = crate::owner_only::open_lock(&dirs.locks().join(format!("tree-{key}.lock")))?;
    if lock.try_lock().is_err() {
        return Ok(false);
    }
    match crate::util::unpublish_dir(dir, &dirs.tmp(), &format!("tree-{key}")) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dirs: &Dirs, key: &str, sources: &[Source]) {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), "x").unwrap();
        super::super::erofs_of_tree(dirs, key, src.path(), sources).unwrap();
    }

    #[test]
    fn a_tree_goes_with_its_layers_and_stays_while_they_do() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path().join("data"));
        let layer = t.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        let (kept, gone, one_off) = ("aa".repeat(32), "bb".repeat(32), "cc".repeat(32));
        tree(&dirs, &kept, &[Source::of(&layer).unwrap()]);
        let other = t.path().join("other");
        std::fs::create_dir(&other).unwrap();
        tree(&dirs, &gone, &[Source::of(&other).unwrap()]);
        tree(&dirs, &one_off, &[]);
        // A layer removed (and one made again at the same path is another layer).
        std::fs::remove_dir(&other).unwrap();
        std::fs::create_dir(&other).unwrap();
        assert_eq!(prune(&dirs), vec![gone]);
        assert!(super::super::cached(&dirs, &kept).is_some());
        // A fresh one-off tree is within its grace; nothing is left in tmp/.
        assert!(super::super::cached(&dirs, &one_off).is_some());
        assert_eq!(std::fs::read_dir(dirs.tmp()).unwrap().count(), 0);
        assert!(prune(&dirs).is_empty());
    }
}
