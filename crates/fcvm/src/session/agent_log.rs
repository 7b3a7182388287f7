//! The VM's `agent.log`: the agent's `Log` frames, one line each, in a file capped at
//! [`MAX_SIZE`]. When a line would pass the cap the file moves to `agent.log.1` (replacing
//! the one before) and a new one starts, so a VM keeps at most twice the cap on disk however
//! much its agent says. The rate of lines is limited before they get here
//! (`super::inbound`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use fcvm_proto::LogLevel;

/// Largest `agent.log` before it is rotated.
pub const MAX_SIZE: u64 = 1 << 20;

pub struct AgentLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

/// Opens for appending (or truncates), 0600 whatever the umask.
fn open(path: &Path, truncate: bool) -> std::io::Result<File> {
    if truncate {
        crate::owner_only::create_file(path)
    } else {
        crate::owner_only::append_file(path)
    }
}

impl AgentLog {
    pub fn new(path: PathBuf) -> AgentLog {
        let file = open(&path, false)
            .inspect_err(|e| tracing::warn!(error = e as &dyn std::error::Error, path = %path.display(), "cannot open the agent log"))
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        AgentLog { path, file, size }
    }

    pub fn write(&mut self, level: LogLevel, message: &str) {
        let line = format!("{level:?}: {message}\n");
        if self.size + line.len() as u64 > MAX_SIZE && self.size > 0 {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(line.as_bytes()).is_ok() {
                self.size += line.len() as u64;
            }
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        if let Err(e) = std::fs::rename(&self.path, &old) {
            tracing::debug!(
                error = &e as &dyn std::error::Error,
                "agent log not rotated"
            );
        }
        self.file = open(&self.path, true).ok();
        self.size = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let mut log = AgentLog::new(path.clone());
        let msg = "x".repeat(1000);
        for _ in 0..5000 {
            log.write(LogLevel::Info, &msg);
        }
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        let rotated = dir.path().join("agent.log.1");
        assert!(size(&path) <= MAX_SIZE, "{}", size(&path));
        assert!(size(&rotated) <= MAX_SIZE && size(&rotated) > MAX_SIZE / 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().all(|l| l == format!("Info: {msg}")));
    }
}
