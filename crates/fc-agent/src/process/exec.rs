//! `Start{ContainerExec}`: a process joins the running container (`crun exec --process`),
//! with its OCI process JSON and pid file under /run/fcvm (removed by the pump at its end).

use super::command::Command;
use super::spawn::{spawn, Announce, Spawned, Stdio};
use crate::error::{Error, Result};
use crate::oci;
use crate::paths::{crun_state, exec_json, exec_pidfile, CONTAINER_PIDFILE, CRUN, ID};
use fcvm_proto::{ProcessSpec, Target};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Starts `cmd` in the container on stream `id`.
pub fn start(id: u32, spec: &ProcessSpec, cmd: &Command) -> Result<Spawned> {
    wait_container_created()?;
    let json = exec_json(id);
    let pidfile = exec_pidfile(id);
    let mut p = oci::process(&cmd.process)?;
    if spec.tty {
        // crun then gives the process a pty of the container's own devpts as its
        // controlling terminal (^C, job control) and relays it to our pty; without it
        // the process runs in a new session with no terminal at all.
        p.set_terminal(Some(true));
    }
    oci::write_json(Path::new(&json), &p)?;
    let _ = std::fs::remove_file(&pidfile);
    let argv = [CRUN, "exec", "--process", &json, "--pid-file", &pidfile, ID];
    let size = spec.tty.then_some((spec.rows, spec.cols));
    let io = Stdio::new(size, spec.stdin)?;
    let exec = super::spawn::crun_cmd(&argv, &io, spec.tty)?;
    let spawned = spawn(&exec, Target::ContainerExec, &cmd.name)?;
    Ok(io.spawned(spawned, Some(PathBuf::from(pidfile)), Announce::Now))
}

/// Waits until `crun run` has created the container (its state and pid file exist): an exec
/// that arrives right after the container's Start would otherwise fail in `crun exec`. The
/// bound is short: a container that ended never comes.
fn wait_container_created() -> Result<()> {
    const LIMIT: Duration = Duration::from_secs(10);
    let state = crun_state().join("status");
    let deadline = Instant::now() + LIMIT;
    while !(state.exists() && Path::new(CONTAINER_PIDFILE).exists()) {
        if Instant::now() > deadline {
            return Err(Error::ContainerNotCreated(LIMIT));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
