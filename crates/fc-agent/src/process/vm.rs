//! `Start{Vm}`: the command itself, in the VM outside the container, as its user, in its own
//! session and process group (what a kill of the stream ends).

use super::command::Command;
use super::spawn::{spawn, Announce, Spawned, Stdio};
use crate::error::Result;
use crate::reaper::{cstrings, Cmd};
use fcvm_proto::{ProcessSpec, Target};

/// Starts `cmd` in the VM.
pub fn start(spec: &ProcessSpec, cmd: &Command) -> Result<Spawned> {
    let argv = cstrings(&spec.args)?;
    let envp = cstrings(&cmd.env)?;
    let cwd = cstrings(&[cmd.cwd.as_str()])?.pop();
    let path = cstrings(&[cmd.host.to_string_lossy()])?.remove(0);
    let size = spec.tty.then_some((spec.rows, spec.cols));
    let io = Stdio::new(size, spec.stdin)?;
    let run = Cmd {
        path,
        argv,
        envp,
        cwd,
        ids: Some((cmd.ids.uid, cmd.ids.gid, cmd.ids.groups.clone())),
        stdio: io.child_raw(),
        extra: vec![],
        ctty: spec.tty,
        fixed_layout: false,
    };
    let spawned = spawn(&run, Target::Vm, &cmd.name)?;
    Ok(io.spawned(spawned, None, Announce::Now))
}
