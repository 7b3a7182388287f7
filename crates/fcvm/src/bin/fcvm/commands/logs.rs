//! `fcvm logs [-f] NAME`: the output of a detached run (`podman run -d`), kept in its VM
//! directory while the VM exists: `container.log.1` (the rotated part, if any) then
//! `container.log` (fcvm::run::container_log).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::Args;
use fcvm::paths::Dirs;

#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing new output until the VM ends.
    #[arg(short, long)]
    follow: bool,
    /// VM name or id.
    name: fcvm::vm::names::Name,
}

pub fn run(dirs: &Dirs, a: LogsArgs) -> Result<i32> {
    let (dir, _) = fcvm::vm::find(dirs, &a.name)?;
    let [old, path] = fcvm::run::container_log::read_all(&dir.path);
    let mut log = std::fs::File::open(&path).map_err(|_| {
        anyhow!(
            "{} has no logs: only a detached run (podman run -d) keeps its output",
            a.name
        )
    })?;
    let mut out = std::io::stdout().lock();
    if let Ok(mut o) = std::fs::File::open(&old) {
        std::io::copy(&mut o, &mut out)?;
    }
    loop {
        std::io::copy(&mut log, &mut out)?;
        out.flush()?;
        // The owner writes the log; once it is gone nothing more comes (and the VM directory
        // goes with it, so the open file is all that is left to read).
        let running = dir.read_state().is_some_and(|st| st.observed().is_alive());
        if !a.follow || !running {
            // What was written since the copy above, streamed (the log may be large).
            std::io::copy(&mut log, &mut out)?;
            out.flush()?;
            return Ok(0);
        }
        // Rotated: the open file is now container.log.1; finish it, then read the new one.
        let (now, ours) = (std::fs::metadata(&path), log.metadata()?);
        if now.is_ok_and(|m| m.ino() != ours.ino()) {
            std::io::copy(&mut log, &mut out)?;
            log = std::fs::File::open(&path)?;
            continue;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
