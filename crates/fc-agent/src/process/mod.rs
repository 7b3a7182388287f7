//! Process streams: one per `Start`, whatever its [`Target`].
//!
//! 1. [`command::check`]: the command (user, executable) inside the right root, so the host
//!    gets podman's error kinds before anything runs;
//! 2. by target, stdio wired (pipes, or a pty whose slave is all three) and the process
//!    spawned: [`container::run`] (the warm container's stand-in, or `crun run`),
//!    [`exec::start`] (`crun exec --process`), [`vm::start`] (the command itself);
//! 3. the [`Stream`] made, `Started{pid, spawn_us}` sent (for `crun run`: once the container
//!    exists) and its output and stdin threads ([`crate::pump`]) started on the pool.

mod command;
mod container;
mod exec;
mod spawn;
mod vm;

use crate::channel::Outbox;
use crate::error::{Error, Result};
use crate::pump::{pump, stdin_loop};
use crate::stream::{Handles, Stream, STDIN_QUEUE};
use fcvm_proto::{Msg, ProcessSpec, Target};
use spawn::{Announce, Spawned};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

/// Starts `spec` on stream `id` (see the module docs); `t0` is when Start arrived.
pub fn start(
    id: u32,
    spec: &ProcessSpec,
    target: Target,
    out: &Outbox,
    t0: Instant,
) -> Result<Arc<Stream>> {
    let cmd = command::check(spec, target)?;
    let spawned = match target {
        Target::Container => container::run(spec, &cmd)?,
        Target::ContainerExec => exec::start(id, spec, &cmd)?,
        Target::Vm => vm::start(spec, &cmd)?,
    };
    attach(id, spec, target, out, t0, spawned)
}

/// Makes the stream of a spawned process and starts its threads.
fn attach(
    id: u32,
    spec: &ProcessSpec,
    target: Target,
    out: &Outbox,
    t0: Instant,
    p: Spawned,
) -> Result<Arc<Stream>> {
    let spawn_us = t0.elapsed().as_micros() as u64;
    let (stdin_tx, stdin_rx) = sync_channel(STDIN_QUEUE);
    let stdin_tx = p.stdin.as_ref().map(|_| stdin_tx);
    let handles = Handles {
        pid: p.pid,
        pidfile: p.pidfile,
        stdin: stdin_tx,
        tty: p.tty,
    };
    let stream = Arc::new(Stream::new(id, target, handles, out, t0));
    match p.started {
        Announce::Now => stream.send(Msg::Started {
            pid: p.pid as u32,
            spawn_us,
        }),
        Announce::WhenCreated(size) => container::announce_when_created(stream.clone(), size),
    }
    // The pump first: after a restore it takes the thread started before the snapshot.
    let s = stream.clone();
    let (outputs, status) = (p.outputs, p.status);
    crate::pool::run(Box::new(move || pump(&s, outputs, status)))
        .map_err(|e| Error::Thread("output", e))?;
    if let Some(fd) = p.stdin {
        let s = stream.clone();
        let is_tty = spec.tty;
        let _ = crate::pool::run(Box::new(move || stdin_loop(&s, fd, stdin_rx, is_tty)));
    }
    Ok(stream)
}
