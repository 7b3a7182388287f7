//! A detached run's `container.log`, capped (docs/run.md): the owner's stdout and stderr go
//! to a pipe that one thread drains into the file. When a write would take the file past
//! [`MAX_SIZE`], the file moves to `container.log.1` (replacing the one before) and a new one
//! starts, so a VM keeps at most twice the cap on disk however much its container prints.
//! `fcvm logs` reads `container.log.1` then `container.log` ([`read_all`]) and, following,
//! moves on to the new file when the one it reads is rotated away.
//!
//! The thread never stops draining: if the file cannot be written, output is dropped rather
//! than left to block the owner's writers on a full pipe.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Largest `container.log` before it is rotated.
pub const MAX_SIZE: u64 = 8 << 20;

/// The log file of a detached run's VM directory, and its one rotated predecessor.
pub const LOG_FILE: &str = "container.log";
pub const OLD_LOG_FILE: &str = "container.log.1";

/// A file capped at `max` bytes with one rotation.
pub struct CappedLog {
    path: PathBuf,
    max: u64,
    file: Option<File>,
    size: u64,
}

impl CappedLog {
    pub fn open(path: PathBuf, max: u64) -> std::io::Result<CappedLog> {
        let file = crate::owner_only::append_file(&path)?;
        let size = file.metadata()?.len();
        Ok(CappedLog {
            path,
            max,
            file: Some(file),
            size,
        })
    }

    /// Appends `data`, rotating first if it would pass the cap (a chunk larger than the cap
    /// is cut to the cap: only its end is kept).
    pub fn write(&mut self, mut data: &[u8]) {
        if data.len() as u64 > self.max {
            data = &data[data.len() - self.max as usize..];
        }
        if self.size + data.len() as u64 > self.max && self.size > 0 {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(data).is_ok() {
                self.size += data.len() as u64;
            }
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        if let Err(e) = std::fs::rename(&self.path, &old) {
            tracing::debug!(error = &e as &dyn std::error::Error, "log not rotated");
        }
        self.file = crate::owner_only::create_file(&self.path).ok();
        self.size = 0;
    }
}

/// Routes this process's stdout and stderr into `vmdir/container.log`, capped: a pipe on fds
/// 1 and 2, drained by a thread of its own.
pub fn redirect_output(vmdir: &Path) -> std::io::Result<()> {
    let mut log = CappedLog::open(vmdir.join(LOG_FILE), MAX_SIZE)?;
    let (r, w): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    // SAFETY: dup2 onto our own stdout and stderr; `w` stays open until both are moved.
    unsafe {
        if libc::dup2(w.as_raw_fd(), 1) < 0 || libc::dup2(w.as_raw_fd(), 2) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    drop(w);
    std::thread::Builder::new()
        .name("container-log".into())
        .spawn(move || {
            let mut r = File::from(r);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => log.write(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })?;
    Ok(())
}

/// The paths `fcvm logs` reads, oldest first.
pub fn read_all(vmdir: &Path) -> [PathBuf; 2] {
    [vmdir.join(OLD_LOG_FILE), vmdir.join(LOG_FILE)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut log = CappedLog::open(path.clone(), 10_000).unwrap();
        for i in 0..5000u32 {
            log.write(format!("line {i:05}\n").as_bytes());
        }
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        let old = dir.path().join(OLD_LOG_FILE);
        assert!(size(&path) <= 10_000 && size(&old) <= 10_000 && size(&old) > 5_000);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("line 04999\n"), "{text}");
        // Oldest first, no gap between the two files.
        let all: String = read_all(dir.path())
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        let nums: Vec<u32> = all.lines().map(|l| l[5..].parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600);
        // A chunk past the cap keeps its end.
        log.write(&[b'y'; 30_000]);
        assert_eq!(size(&path), 10_000);
    }
}
