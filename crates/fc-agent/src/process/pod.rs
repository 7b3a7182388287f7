//! `Start{PodContainer}`: `crun run` of a pod's further container (`crate::pods`), rooted at
//! its map, in the first container's network, IPC and UTS namespaces, with the maps bound
//! into it (`PodRequest{Binds}`); `Started` once crun has created it, as for the first
//! container.

use super::command::Command;
use super::spawn::{spawn, Announce, Spawned, Stdio};
use crate::error::{Error, Result};
use crate::oci;
use crate::paths::{crun_state_of, pod_crun_id, pod_dir, CRUN};
use crate::reaper;
use fcvm_proto::{ProcessSpec, Target};
use std::path::Path;

/// crun's pid file of the container's process, in its bundle directory.
pub const PIDFILE: &str = "pid";

/// Starts pod container `id` (claimed by `crate::pods::claim`) with `cmd` as its process.
pub fn run(id: &str, spec: &ProcessSpec, cmd: &Command, target: &Target) -> Result<Spawned> {
    let root = crate::pods::root_of(id)?;
    let join = crate::pods::first_container_pid()?;
    if cmd.cwd != "/" {
        // The workdir need not exist in the image (crun would fail on it).
        let _ = std::fs::create_dir_all(Path::new(&root).join(cmd.cwd.trim_start_matches('/')));
    }
    let binds = crate::pods::binds_of(id)?;
    let mut cfg = oci::pod_spec(&cmd.process, &root, join, &binds)?;
    if spec.tty {
        // crun's own pty as the process's terminal, as for the first container.
        if let Some(p) = cfg.process_mut() {
            p.set_terminal(Some(true));
        }
    }
    let dir = pod_dir(id);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Mkdir(dir.clone(), e))?;
    oci::write_json(&dir.join("config.json"), &cfg)?;
    let crun_id = pod_crun_id(id);
    if crun_state_of(&crun_id).exists() {
        let _ = reaper::run_quiet(&[CRUN, "delete", "--force", &crun_id]);
    }
    let pidfile = dir.join(PIDFILE);
    let _ = std::fs::remove_file(&pidfile);
    let (bundle, pid) = (dir.to_string_lossy(), pidfile.to_string_lossy());
    let argv = [
        CRUN,
        "run",
        "--bundle",
        &bundle,
        "--pid-file",
        &pid,
        &crun_id,
    ];
    let size = spec.tty.then_some((spec.rows.max(1), spec.cols.max(1)));
    let io = Stdio::new(size, spec.stdin)?;
    let run = super::spawn::crun_cmd(&argv, &io, spec.tty)?;
    let spawned = spawn(&run, target.clone(), &cmd.name)?;
    Ok(io.spawned(spawned, Some(pidfile), Announce::WhenCreated(size)))
}
