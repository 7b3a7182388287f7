//! `Start{ContainerExec}`: a process joins the running container (`crun exec --process`),
//! with its OCI process JSON and pid file under /run/fcvm (removed by the pump at its end);
//! `Start{PodExec}` the same in a pod's further container ([`start_in`]).

use super::command::Command;
use super::spawn::{spawn, Announce, Spawned, Stdio};
use crate::error::{Error, Result};
use crate::oci;
use crate::paths::{crun_state_of, exec_json, exec_pidfile, pod_crun_id, pod_dir};
use crate::paths::{CONTAINER_PIDFILE, CRUN, ID};
use fcvm_proto::{ProcessSpec, Target};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Starts `cmd` in the container on stream `id`.
pub fn start(id: u32, spec: &ProcessSpec, cmd: &Command) -> Result<Spawned> {
    join(
        id,
        spec,
        cmd,
        ID,
        Path::new(CONTAINER_PIDFILE),
        Target::ContainerExec,
    )
}

/// Starts `cmd` in pod container `pod` on stream `id`.
pub fn start_in(id: u32, spec: &ProcessSpec, cmd: &Command, pod: &str) -> Result<Spawned> {
    let pidfile = pod_dir(pod).join(super::pod::PIDFILE);
    let target = Target::PodExec { id: pod.into() };
    join(id, spec, cmd, &pod_crun_id(pod), &pidfile, target)
}

/// `crun exec` of `cmd` into crun container `crun_id`, once its `init_pidfile` exists.
fn join(
    id: u32,
    spec: &ProcessSpec,
    cmd: &Command,
    crun_id: &str,
    init_pidfile: &Path,
    target: Target,
) -> Result<Spawned> {
    wait_container_created(crun_id, init_pidfile)?;
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
    let argv = [
        CRUN,
        "exec",
        "--process",
        &json,
        "--pid-file",
        &pidfile,
        crun_id,
    ];
    let size = spec.tty.then_some((spec.rows, spec.cols));
    let io = Stdio::new(size, spec.stdin)?;
    let exec = super::spawn::crun_cmd(&argv, &io, spec.tty)?;
    let spawned = spawn(&exec, target, &cmd.name)?;
    Ok(io.spawned(spawned, Some(PathBuf::from(pidfile)), Announce::Now))
}

/// Waits until `crun run` has created the container (its state and pid file exist): an exec
/// that arrives right after the container's Start would otherwise fail in `crun exec`. The
/// bound is short: a container that ended never comes.
fn wait_container_created(crun_id: &str, pidfile: &Path) -> Result<()> {
    const LIMIT: Duration = Duration::from_secs(10);
    let state = crun_state_of(crun_id).join("status");
    let deadline = Instant::now() + LIMIT;
    while !(state.exists() && pidfile.exists()) {
        if Instant::now() > deadline {
            return Err(Error::ContainerNotCreated(LIMIT));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
