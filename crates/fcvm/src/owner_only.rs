//! Files, directories and sockets that only their owner can reach (docs/security.md).
//!
//! Guest RAM, disks, logs and the control sockets of a VM hold the container's secrets and
//! give root over it (and, through QMP, over the host): another local user must not open or
//! connect to any of them. So every directory fcvm makes is 0700 and every file and socket
//! 0600, set explicitly after creation — never left to the umask, which a caller may have
//! set to 000. The data directory's root is checked and repaired at every start
//! ([`repair_data_dir`]), so even an old data directory made before this rule holds.

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and any missing parents, each 0700; an existing `path` is set to 0700.
pub fn create_dir(path: &Path) -> std::io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut p = Some(path);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    for d in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => {}
            // Another process made it first: it is still ours to set.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))?;
    for d in &missing {
        std::fs::set_permissions(d, Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Creates (or truncates) a file for writing, mode 0600.
pub fn create_file(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    // An existing file keeps its mode through open(2): set it.
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Opens (creating if needed, 0600) a file for appending.
pub fn append_file(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Opens (creating if needed, 0600) a lock file without truncating it.
pub fn open_lock(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Binds a Unix socket at `path` (replacing a stale one), mode 0600. Between bind and chmod
/// the socket has the umask's mode; it is only ever bound inside a 0700 directory, so no
/// one else can reach it in that moment either.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))?;
    Ok(l)
}

/// A fresh temp directory under `parent` (created if missing), 0700, removed on drop unless
/// kept. (tempfile's default is 0777 minus the umask.)
pub fn temp_dir_in(parent: &Path, prefix: &str) -> std::io::Result<tempfile::TempDir> {
    create_dir(parent)?;
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(Permissions::from_mode(DIR_MODE))
        .tempdir_in(parent)?;
    std::fs::set_permissions(d.path(), Permissions::from_mode(DIR_MODE))?;
    Ok(d)
}

/// Makes sure the data directory's root and its top-level directories exist and are 0700,
/// repairing the modes of an existing tree's top (what lies below was made by fcvm with
/// its own modes, or sits in a directory no one else can enter).
pub fn repair_data_dir(root: &Path, subdirs: &[PathBuf]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::symlink_metadata(root) {
        let me = nix::unistd::geteuid().as_raw();
        if !m.is_dir() || m.uid() != me {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a directory of uid {me} (it belongs to uid {})",
                    root.display(),
                    m.uid()
                ),
            ));
        }
    }
    create_dir(root)?;
    for d in subdirs {
        if d.is_dir() {
            std::fs::set_permissions(d, Permissions::from_mode(DIR_MODE))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    /// The process-wide umask is set to 000 for the test's duration.
    fn with_open_umask<T>(f: impl FnOnce() -> T) -> T {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let r = f();
        nix::sys::stat::umask(old);
        r
    }

    #[test]
    fn modes_hold_under_umask_000() {
        let t = tempfile::tempdir().unwrap();
        with_open_umask(|| {
            let d = t.path().join("a/b/c");
            create_dir(&d).unwrap();
            for p in ["a", "a/b", "a/b/c"] {
                assert_eq!(mode(&t.path().join(p)), DIR_MODE, "{p}");
            }
            let f = d.join("f");
            std::fs::write(&f, b"x").unwrap();
            std::fs::set_permissions(&f, Permissions::from_mode(0o666)).unwrap();
            create_file(&f).unwrap();
            assert_eq!(mode(&f), FILE_MODE);
            let s = d.join("s.sock");
            let _l = bind(&s).unwrap();
            assert_eq!(mode(&s), FILE_MODE);
            let tmp = temp_dir_in(&d.join("tmp"), "x.").unwrap();
            assert_eq!(mode(tmp.path()), DIR_MODE);
            std::fs::set_permissions(&d, Permissions::from_mode(0o755)).unwrap();
            repair_data_dir(&t.path().join("a"), std::slice::from_ref(&d)).unwrap();
            assert_eq!(mode(&d), DIR_MODE);
        });
    }
}
