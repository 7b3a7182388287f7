//! Small helpers shared by every module: atomic writes, hashing, running external tools.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Writes `data` to `path` atomically: a temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        crate::owner_only::create_dir(dir)?;
    }
    // NamedTempFile is 0600 whatever the umask; rename keeps the mode.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A fresh temp directory under `parent` (created if missing), 0700, removed on drop unless
/// kept.
pub fn temp_dir_in(parent: &Path, prefix: &str) -> std::io::Result<tempfile::TempDir> {
    crate::owner_only::temp_dir_in(parent, prefix)
}

/// Moves a finished directory into place atomically. If `dest` already exists (another process
/// won the race with identical content-addressed data) the new copy is dropped.
pub fn publish_dir(tmp: tempfile::TempDir, dest: &Path) -> std::io::Result<()> {
    if let Some(p) = dest.parent() {
        if !p.is_dir() {
            crate::owner_only::create_dir(p)?;
        }
    }
    let path: PathBuf = tmp.keep();
    match std::fs::rename(&path, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.exists() => {
            let _ = std::fs::remove_dir_all(&path);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&path);
            Err(e)
        }
    }
}

/// Removes a published directory whole, the reverse of [`publish_dir`]: first renamed into
/// `tmp` (as `rm-<tag>-<pid>`), so a reader sees all of it or none of it, and of two removers
/// one wins the rename — the other gets `NotFound` and removes nothing.
pub fn unpublish_dir(dir: &Path, tmp: &Path, tag: &str) -> std::io::Result<()> {
    crate::owner_only::create_dir(tmp)?;
    let trash = tmp.join(format!("rm-{tag}-{}", std::process::id()));
    std::fs::rename(dir, &trash)?;
    std::fs::remove_dir_all(&trash)
}

/// Bytes of a size as people write it: a number with an optional binary suffix K, M, G, T
/// (`KiB`, `MB`… too; none or `B` is bytes). None when malformed or past u64.
pub fn parse_size(s: &str) -> Option<u64> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match s[digits.len()..].to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// An error and its sources on one line ("outer: inner: innermost"), for log lines.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// SHA-256 of a file's contents, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Copies a file cheaply: a reflink where the filesystem can (btrfs, xfs), else a copy that
/// keeps holes (guest RAM and disks are mostly holes). Written to `dst` directly: callers put
/// `dst` inside a temp directory that is renamed into place when complete.
pub fn copy_sparse(src: &Path, dst: &Path) -> std::io::Result<u64> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    use std::os::fd::{AsFd, AsRawFd};
    let input = std::fs::File::open(src)?;
    let output = crate::owner_only::create_file(dst)?;
    nix::ioctl_write_int_bad!(ficlone, libc::FICLONE);
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open for the call.
    let cloned = unsafe { ficlone(output.as_raw_fd(), input.as_raw_fd()) }.is_ok();
    let len = input.metadata()?.len();
    if cloned {
        return Ok(len);
    }
    output.set_len(len)?;
    let ifd = input.as_raw_fd();
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        let Ok(data) = lseek(ifd, pos, Whence::SeekData) else {
            break; // ENXIO: only a hole remains
        };
        let end = lseek(ifd, data, Whence::SeekHole).unwrap_or(len as i64);
        let mut off_in = data;
        let mut off_out = data;
        while off_in < end {
            let n = (end - off_in) as usize;
            let copied = nix::fcntl::copy_file_range(
                input.as_fd(),
                Some(&mut off_in),
                output.as_fd(),
                Some(&mut off_out),
                n,
            );
            match copied {
                Ok(0) => break,
                Ok(_) => {}
                // Some kernels/filesystems refuse copy_file_range: copy through userspace.
                Err(Errno::EXDEV | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS) => {
                    copy_range(&input, &output, off_in as u64, (end - off_in) as u64)?;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        pos = end;
    }
    output.sync_all()?;
    Ok(len)
}

/// Copies `len` bytes at `off` from `input` to the same offset of `output`.
fn copy_range(
    input: &std::fs::File,
    output: &std::fs::File,
    off: u64,
    len: u64,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        input.read_exact_at(&mut buf[..n], off + done)?;
        output.write_all_at(&buf[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Makes a helper process owned by this one: it gets SIGKILL when fcvm dies (even by
/// SIGKILL, through `PR_SET_PDEATHSIG`), and its own process group, so a terminal's Ctrl-C
/// reaches fcvm, which tears everything down in order, and not the helper directly. It
/// inherits nothing but its stdio and what a later `pre_exec` places ([`cloexec_from`]).
pub fn owned_by_us(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls (prctl, setpgid, close_range/fcntl) between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            cloexec_from(3);
            Ok(())
        })
    }
}

/// Marks every descriptor from `first` up close-on-exec, between fork and exec: what fcvm
/// was handed without that flag (a caller's open files and pipes) must not live on in QEMU,
/// which parses what a guest sends, or in a detached owner, which outlives its caller (a pipe
/// it held would keep the caller's reader waiting). Async-signal-safe.
pub fn cloexec_from(first: libc::c_int) {
    // SAFETY: with CLOSE_RANGE_CLOEXEC nothing is closed; only the flag is set.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: each descriptor the limit allows (capped: a huge limit would cost
    // seconds here).
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct given; fcntl on a closed fd only fails (EBADF).
    unsafe {
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 16) as libc::c_int
        } else {
            1024
        };
        for fd in first..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// Error of an external tool, with the tail of its stderr.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} not found: install it with `apt-get install {package}`")]
    Missing { tool: String, package: String },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("Cannot run {tool}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `cmd` to completion and returns its stdout; `package` names the Debian package that
/// provides the tool, for the error a user sees when it is missing.
pub fn run_tool(cmd: &mut Command, package: &str) -> Result<Vec<u8>, ToolError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ToolError::Missing {
                tool: tool.clone(),
                package: package.into(),
            }
        } else {
            ToolError::Spawn {
                tool: tool.clone(),
                source: e,
            }
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(ToolError::Failed {
            tool,
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(out.stdout)
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let f = std::fs::File::create(&a).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"hello", 10 << 20).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(f);
        assert_eq!(copy_sparse(&a, &b).unwrap(), 64 << 20);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(
            std::fs::metadata(&b).unwrap().blocks() < 1024,
            "holes were filled"
        );
    }

    #[test]
    fn missing_tool_names_package() {
        let e = run_tool(&mut Command::new("fcvm-no-such-tool"), "some-pkg").unwrap_err();
        assert!(e.to_string().contains("apt-get install some-pkg"), "{e}");
    }
}
