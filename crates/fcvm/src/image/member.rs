//! Reading the files of an image's tree (an OCI layout, an extracted archive, the blob cache)
//! without ever leaving it.
//!
//! A layout or archive is untrusted: `blobs/sha256/<hex>` may be a symlink to `/etc/shadow`, a
//! FIFO, or `/dev/zero`. [`open`] resolves a member with `openat2(RESOLVE_BENEATH)` from the
//! tree's root, so no `..` and no symlink (absolute or relative) can lead outside it; it opens
//! with `O_PATH` first and takes the file only if `fstat` says it is a regular file, so a device
//! or FIFO is never opened for reading. Kernels without `openat2` (before 5.6) fall back to
//! canonicalising the path and checking it stays inside the canonical root.
//!
//! Manifests, indexes and configs are read through [`read_metadata`], bounded to
//! [`METADATA_MAX`] (4 MiB, what registries and podman allow). Nothing here ever puts a file's
//! content in an error: JSON errors are described by [`json_problem`].

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

/// Largest manifest, index or config read.
pub(crate) const METADATA_MAX: u64 = 4 << 20;

/// Why a member could not be used; never says anything of its content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MemberError {
    #[error("missing")]
    Missing,
    #[error("leads outside the image")]
    Outside,
    #[error("not a regular file")]
    NotRegular,
    #[error("larger than {} MiB", METADATA_MAX >> 20)]
    TooLarge,
    #[error("unreadable")]
    Io(#[source] io::Error),
}

impl From<io::Error> for MemberError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => MemberError::Missing,
            _ => MemberError::Io(e),
        }
    }
}

/// Opens the regular file `rel` inside `root` for reading; see the module doc.
pub(crate) fn open(root: &Path, rel: &Path) -> Result<File, MemberError> {
    if rel.is_absolute() || rel.components().any(|c| c == Component::ParentDir) {
        return Err(MemberError::Outside);
    }
    let dir = File::open(root)?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let path_fd = match nix::fcntl::openat2(dir.as_raw_fd(), rel, how) {
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(Errno::EXDEV) => return Err(MemberError::Outside),
        Err(Errno::ENOSYS) => return open_checked(root, rel),
        Err(e) => return Err(io::Error::from(e).into()),
    };
    let st = nix::sys::stat::fstat(path_fd.as_raw_fd()).map_err(io::Error::from)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(MemberError::NotRegular);
    }
    // Re-open the very inode the O_PATH descriptor holds, for reading.
    Ok(File::open(format!(
        "/proc/self/fd/{}",
        path_fd.as_raw_fd()
    ))?)
}

/// [`open`] for kernels without openat2: canonical containment, then a no-follow open.
fn open_checked(root: &Path, rel: &Path) -> Result<File, MemberError> {
    use std::os::unix::fs::OpenOptionsExt;
    let root = root.canonicalize()?;
    let real = root.join(rel).canonicalize()?;
    if !real.starts_with(&root) {
        return Err(MemberError::Outside);
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&real)?;
    if !f.metadata()?.is_file() {
        return Err(MemberError::NotRegular);
    }
    Ok(f)
}

/// Reads a manifest, index or config member: a regular file inside `root`, at most
/// [`METADATA_MAX`] bytes.
pub(crate) fn read_metadata(root: &Path, rel: &Path) -> Result<Vec<u8>, MemberError> {
    let f = open(root, rel)?;
    let mut data = Vec::new();
    f.take(METADATA_MAX + 1).read_to_end(&mut data)?;
    if data.len() as u64 > METADATA_MAX {
        return Err(MemberError::TooLarge);
    }
    Ok(data)
}

/// What is wrong with a JSON document, without quoting any of it (serde's messages can hold
/// the document's strings: "invalid type: string \"root:$6$…\"").
pub(crate) fn json_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = if e.line() > 0 {
        format!(" at line {} column {}", e.line(), e.column())
    } else {
        String::new()
    };
    match e.classify() {
        Category::Syntax => format!("not valid JSON{at}"),
        Category::Eof => "truncated JSON".to_string(),
        Category::Io => "unreadable JSON".to_string(),
        Category::Data => {
            // These name our schema's fields or counts, never the document's values.
            let msg = e.to_string();
            if msg.starts_with("missing field") || msg.starts_with("invalid length") {
                msg
            } else {
                format!("a field has the wrong type or value{at}")
            }
        }
    }
}

/// A fresh temp dir under `parent`, 0700 whatever the umask: nobody else may enter the trees
/// fcvm builds in it (an image's setuid files and device nodes while it is unpacked).
pub(crate) fn private_temp_dir(parent: &Path, prefix: &str) -> io::Result<tempfile::TempDir> {
    crate::owner_only::temp_dir_in(parent, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn opens_only_regular_files_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::fs::write(root.join("blobs/a"), b"A").unwrap();
        std::fs::write(t.path().join("secret"), b"S").unwrap();
        symlink("a", root.join("blobs/in")).unwrap();
        symlink("../../secret", root.join("blobs/up")).unwrap();
        symlink(t.path().join("secret"), root.join("blobs/abs")).unwrap();
        symlink("/dev/zero", root.join("blobs/zero")).unwrap();
        nix::unistd::mkfifo(&root.join("blobs/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let read = |p: &str| read_metadata(&root, Path::new(p));
        assert_eq!(read("blobs/a").unwrap(), b"A");
        assert_eq!(
            read("blobs/in").unwrap(),
            b"A",
            "a link inside the tree is fine"
        );
        for p in [
            "blobs/up",
            "blobs/abs",
            "blobs/zero",
            "../secret",
            "/etc/passwd",
        ] {
            assert!(matches!(read(p), Err(MemberError::Outside)), "{p}");
        }
        // A FIFO is refused without blocking on it; a directory is not a file either.
        assert!(matches!(read("blobs/fifo"), Err(MemberError::NotRegular)));
        assert!(matches!(read("blobs"), Err(MemberError::NotRegular)));
        assert!(matches!(read("blobs/none"), Err(MemberError::Missing)));
        assert!(matches!(
            open_checked(&root, Path::new("blobs/up")),
            Err(MemberError::Outside)
        ));
        assert!(matches!(
            open_checked(&root, Path::new("blobs/fifo")),
            Err(MemberError::NotRegular)
        ));
    }

    #[test]
    fn metadata_is_bounded() {
        let t = tempfile::tempdir().unwrap();
        let f = File::create(t.path().join("big")).unwrap();
        f.set_len(METADATA_MAX + 1).unwrap();
        let e = read_metadata(t.path(), Path::new("big")).unwrap_err();
        assert_eq!(e.to_string(), "larger than 4 MiB");
    }

    #[test]
    fn json_problems_never_quote_the_document() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct S {
            a: Vec<u8>,
        }
        for doc in [
            r#"{"a": "root:$6$secret"}"#,
            "root:$6$secret:19000:0:99999:7:::",
            r#"{"a": [1, 2, "root:$6$secret"]}"#,
        ] {
            let e = serde_json::from_str::<S>(doc).unwrap_err();
            let p = json_problem(&e);
            assert!(!p.contains("secret") && !p.contains("root"), "{p}");
        }
        let e = serde_json::from_str::<S>("{}").unwrap_err();
        assert_eq!(json_problem(&e), "missing field `a` at line 1 column 2");
    }

    #[test]
    fn temp_dirs_are_private_whatever_the_umask() {
        let t = tempfile::tempdir().unwrap();
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let d = private_temp_dir(&t.path().join("tmp"), "image-");
        nix::sys::stat::umask(old);
        let perms = std::fs::metadata(d.unwrap().path()).unwrap().permissions();
        let mode = std::os::unix::fs::PermissionsExt::mode(&perms);
        assert_eq!(mode & 0o7777, 0o700);
    }
}
