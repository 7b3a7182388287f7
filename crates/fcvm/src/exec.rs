//! The exec server: how `fcvm exec` reaches a VM.
//!
//! Only the fcvm process that owns a VM holds its agent session (the channel socket takes one
//! client). It listens on `vms/<id>/exec.sock`; each `fcvm exec` connects there and speaks the
//! same framed protocol as the agent: `Start` on a stream of its choosing, then stdin, resize
//! and signals; the server relays each stream onto a fresh agent stream and the output back.
//! A client that disconnects ends its processes: the relay drops the agent stream, which sends
//! `Close`, and the agent kills the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fcvm_proto::{Frame, Msg, Target};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::session::{ProcessSender, Session};

pub const EXEC_SOCK: &str = "exec.sock";

/// Accepts exec clients until dropped; dropping removes the socket.
pub struct ExecServer {
    task: JoinHandle<()>,
    path: PathBuf,
}

impl Drop for ExecServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes a snapshot of the served VM under a name (the owner does it, so a client that dies
/// mid-way cannot leave the VM paused).
pub type Snapshotter = Arc<
    dyn Fn(
            String,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Starts serving on `path`. `container_env` is the container's environment: a container exec
/// inherits it (podman does), with the client's `-e` entries on top.
pub fn serve(
    path: &Path,
    session: Arc<Session>,
    container_env: Vec<String>,
    snapshotter: Option<Snapshotter>,
) -> std::io::Result<ExecServer> {
    let listener = crate::owner_only::bind(path)?;
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let env = Arc::new(container_env);
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(handle(
                conn,
                session.clone(),
                env.clone(),
                snapshotter.clone(),
            ));
        }
    });
    Ok(ExecServer {
        task,
        path: path.into(),
    })
}

async fn handle(
    conn: UnixStream,
    session: Arc<Session>,
    env: Arc<Vec<String>>,
    snapshotter: Option<Snapshotter>,
) {
    let (rd, wr) = conn.into_split();
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Frame>();
    let writer = crate::session::spawn_writer(wr, out_rx);
    let mut relays: HashMap<u32, (ProcessSender, JoinHandle<()>)> = HashMap::new();
    let mut frames = crate::session::FrameReader::new(rd);
    while let Some(r) = frames.next().await {
        let frame = match r {
            Ok(f) => f,
            Err(fcvm_proto::codec::CodecError::Decode(e, Some(stream))) => {
                // A malformed message on one stream ends that stream only.
                tracing::warn!("malformed frame from exec client on stream {stream}: {e}");
                if let Some((_, relay)) = relays.remove(&stream) {
                    relay.abort();
                }
                let _ = out_tx.send(Frame {
                    stream,
                    msg: Msg::Error {
                        kind: fcvm_proto::ErrorKind::Failed,
                        message: format!("malformed frame: {e}"),
                    },
                });
                continue;
            }
            Err(e) => {
                tracing::warn!("bad frame from exec client: {e}");
                continue;
            }
        };
        let stream = frame.stream;
        match frame.msg {
            Msg::SnapshotRequest { name } if stream == fcvm_proto::CONTROL => {
                let out = out_tx.clone();
                let snap = snapshotter.clone();
                tokio::spawn(async move {
                    let r = match snap {
                        Some(f) => f(name.clone()).await,
                        None => Err("this VM cannot be snapshotted".into()),
                    };
                    let msg = match r {
                        Ok(()) => Msg::SnapshotDone { name },
                        Err(error) => Msg::SnapshotFailed { error },
                    };
                    let _ = out.send(Frame::control(msg));
                });
            }
            Msg::Start { mut spec, target } => {
                if target == Target::Container {
                    let _ = out_tx.send(Frame {
                        stream,
                        msg: Msg::Error {
                            kind: fcvm_proto::ErrorKind::Failed,
                            message: "the container's main process cannot be started by exec"
                                .into(),
                        },
                    });
                    continue;
                }
                if target == Target::ContainerExec {
                    let mut merged = (*env).clone();
                    for kv in spec.env.drain(..) {
                        let key = kv.split('=').next().unwrap_or("").to_string();
                        merged.retain(|e| e.split('=').next() != Some(key.as_str()));
                        merged.push(kv);
                    }
                    spec.env = merged;
                }
                let mut proc = session.start(spec, target);
                let sender = proc.sender();
                let out = out_tx.clone();
                let relay = tokio::spawn(async move {
                    while let Some(msg) = proc.recv().await {
                        let last = matches!(msg, Msg::Exit { .. } | Msg::Error { .. });
                        let _ = out.send(Frame { stream, msg });
                        if last {
                            return;
                        }
                    }
                    let _ = out.send(Frame {
                        stream,
                        msg: Msg::Error {
                            kind: fcvm_proto::ErrorKind::Failed,
                            message: "connection to the VM's agent was lost".into(),
                        },
                    });
                });
                relays.insert(stream, (sender, relay));
            }
            msg => {
                if let Some((sender, _)) = relays.get(&stream) {
                    sender.send(msg);
                }
            }
        }
    }
    // Client gone: aborting a relay drops its agent stream, which closes (kills) the process.
    for (_, (_, relay)) in relays {
        relay.abort();
    }
    writer.abort();
}

/// `fcvm snapshot create VM --tag NAME`: asks the VM's owner to snapshot it.
pub async fn request_snapshot(
    dirs: &crate::paths::Dirs,
    vm: &str,
    name: &str,
) -> anyhow::Result<()> {
    use anyhow::Context;
    crate::snapshot::validate_name(name)?;
    let (dir, st) = crate::vm::find(dirs, vm)?;
    let status = st.observed();
    if !status.can_snapshot() {
        anyhow::bail!("VM {vm} is not running (it is {status})");
    }
    let conn = UnixStream::connect(dir.path.join(EXEC_SOCK))
        .await
        .with_context(|| format!("VM {vm} does not accept requests"))?;
    let session = Session::client(conn);
    session
        .request(
            Msg::SnapshotRequest { name: name.into() },
            std::time::Duration::from_secs(600),
            |m| match m {
                Msg::SnapshotDone { .. } => Some(Ok(())),
                Msg::SnapshotFailed { error } => Some(Err(error)),
                _ => None,
            },
        )
        .await
        .with_context(|| format!("Snapshot of VM {vm}"))
}

/// What `fcvm exec` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub name: String,
    /// Run in the VM itself instead of the container.
    pub vm: bool,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub interactive: bool,
    pub tty: bool,
}

/// `fcvm exec`: runs one command in a running VM and returns its exit code.
pub async fn exec(dirs: &crate::paths::Dirs, o: ExecOptions) -> anyhow::Result<i32> {
    use anyhow::Context;
    let t0 = std::time::Instant::now();
    let (dir, st) = crate::vm::find(dirs, &o.name)?;
    let status = st.observed();
    if !status.can_exec() {
        anyhow::bail!("VM {} is not running (it is {status})", o.name);
    }
    if o.command.is_empty() {
        anyhow::bail!(
            "No command given: fcvm exec --name {} -- CMD [ARG...]",
            o.name
        );
    }
    let env = crate::run::parse_env(&o.env)?;
    let conn = UnixStream::connect(dir.path.join(EXEC_SOCK))
        .await
        .with_context(|| format!("VM {} does not accept execs", o.name))?;
    let session = Session::client(conn);
    let (rows, cols) = crate::attach::terminal_size().unwrap_or((24, 80));
    let spec = fcvm_proto::ProcessSpec {
        args: o.command,
        env,
        cwd: o.workdir.unwrap_or_default(),
        user: o.user.unwrap_or_default(),
        tty: o.tty,
        stdin: o.interactive,
        rows,
        cols,
    };
    let target = if o.vm {
        Target::Vm
    } else {
        Target::ContainerExec
    };
    let proc = session.start(spec, target);
    let outcome = crate::attach::attach(
        proc,
        crate::attach::AttachOptions {
            stdin: o.interactive,
            tty: o.tty,
            stop_on_signal: true,
        },
    )
    .await;
    if std::env::var_os("FCVM_TIMINGS").is_some() {
        // For bench/exec.py: the guest's own spawn time next to what this client saw.
        let us = |t: std::time::Instant| (t - t0).as_micros();
        if let Some((at, spawn_us)) = outcome.started {
            eprintln!(
                "fcvm timings: spawn_us={spawn_us} started_us={} total_us={}",
                us(at),
                t0.elapsed().as_micros()
            );
        }
    }
    outcome
        .result
        .with_context(|| format!("exec in VM {}", o.name))
}
