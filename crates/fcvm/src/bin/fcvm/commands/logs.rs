//! `fcvm logs [-f] NAME`: the output of a detached run (`podman run -d`), kept in its VM
//! directory while the VM exists.

use std::io::Write;
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
    let path = dir.path.join(fcvm::run::detach::LOG_FILE);
    let mut log = std::fs::File::open(&path).map_err(|_| {
        anyhow!(
            "{} has no logs: only a detached run (podman run -d) keeps its output",
            a.name
        )
    })?;
    let mut out = std::io::stdout().lock();
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
        std::thread::sleep(Duration::from_millis(100));
    }
}
