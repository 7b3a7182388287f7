//! The exec server: how `fcvm exec` and `fcvm snapshot create` reach a VM.
//!
//! Only the fcvm process that owns a VM holds its agent session (the channel socket takes one
//! client). It listens on `vms/<id>/exec.sock`; each client connects there and speaks the
//! same framed protocol as the agent: `Start` on a stream of its choosing, then stdin, resize
//! and signals; the server relays each stream onto a fresh agent stream and the output back.
//! A client that disconnects ends its processes: the relay drops the agent stream, which sends
//! `Close`, and the agent kills the process — unless it was started detached (`exec -d`,
//! `ProcessSpec::detach`): the server then answers `Started` alone and keeps the agent stream
//! itself, dropping the output, until the process ends (at most [`MAX_DETACHED`] at a time).
//!
//! Credit runs end to end (docs/design.md, "Backpressure"): the server sends a client output
//! only within the credit that client granted, and grants the agent more only once the bytes
//! were written to the client's socket. A client that stops reading stops its own process,
//! and holds at most one credit window of its output here. Stdin goes the other way within
//! the agent's credit, which the server relays and enforces. Clients, the processes of each
//! and the frames queued for each are bounded.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fcvm_proto::{
    ErrorKind, Frame, Msg, Target, CONTROL, INITIAL_OUTPUT_CREDIT, INITIAL_STDIN_CREDIT,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::session::outbox::{self, Outbox};
use crate::session::{FrameReader, Process, ProcessSender, Session};
use crate::snapshot::SnapshotError;

/// The exec socket, in the VM's directory.
pub const EXEC_SOCK: &str = "exec.sock";

/// Clients served at once; more wait to be accepted.
const MAX_CLIENTS: usize = 256;
/// Processes one client may run at once.
const MAX_STREAMS: usize = 64;
/// Most detached processes (`exec -d`) the server keeps at a time.
pub const MAX_DETACHED: usize = 64;

/// Takes a snapshot of the served VM under a name (the owner does it, so a client that dies
/// mid-way cannot leave the VM paused).
pub type Snapshotter = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<(), SnapshotError>> + Send>> + Send + Sync,
>;

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

/// What every connection of one server shares.
struct Ctx {
    session: Arc<Session>,
    /// The container's environment: a container exec inherits it (podman does), with the
    /// client's `-e` entries on top.
    env: Vec<String>,
    snapshotter: Option<Snapshotter>,
    /// One permit per detached process still running.
    detached: Arc<Semaphore>,
}

/// Starts serving on `path` (a socket only its owner may use).
pub fn serve(
    path: &Path,
    session: Arc<Session>,
    container_env: Vec<String>,
    snapshotter: Option<Snapshotter>,
) -> std::io::Result<ExecServer> {
    let listener = crate::owner_only::bind(path)?;
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let ctx = Arc::new(Ctx {
        session,
        env: container_env,
        snapshotter,
        detached: Arc::new(Semaphore::new(MAX_DETACHED)),
    });
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                handle(conn, &ctx).await;
                drop(slot);
            });
        }
    });
    Ok(ExecServer {
        task,
        path: path.into(),
    })
}

/// Bytes one side may still send the other, topped up by `Credit`.
struct Window {
    n: Mutex<u64>,
    more: Notify,
}

impl Window {
    fn new(n: u32) -> Arc<Window> {
        Arc::new(Window {
            n: Mutex::new(n as u64),
            more: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.n.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, n: u32) {
        let mut w = self.lock();
        *w = w.saturating_add(n as u64);
        drop(w);
        self.more.notify_one();
    }

    /// Takes `n` if the window holds that much.
    fn take(&self, n: usize) -> bool {
        let mut w = self.lock();
        let ok = *w >= n as u64;
        if ok {
            *w -= n as u64;
        }
        ok
    }

    /// Takes as much as there is, up to `max`, waiting until there is some.
    async fn take_up_to(&self, max: usize) -> usize {
        loop {
            {
                let mut w = self.lock();
                if *w > 0 {
                    let n = (*w).min(max as u64);
                    *w -= n;
                    return n as usize;
                }
            }
            self.more.notified().await;
        }
    }
}

/// One client stream relayed to an agent stream.
struct Relay {
    sender: ProcessSender,
    task: JoinHandle<()>,
    /// Output the client may still be sent.
    to_client: Arc<Window>,
    /// Stdin the client may still send (the agent's credit, relayed).
    stdin: Arc<Window>,
}

fn error(stream: u32, message: impl Into<String>) -> Frame {
    Frame {
        stream,
        msg: Msg::Error {
            kind: ErrorKind::Failed,
            message: message.into(),
        },
    }
}

async fn handle(conn: UnixStream, ctx: &Ctx) {
    let (rd, wr) = conn.into_split();
    let (out, out_rx) = Outbox::new();
    let writer = outbox::spawn_writer(wr, out_rx);
    let mut relays: HashMap<u32, Relay> = HashMap::new();
    let snapshotting = Arc::new(AtomicBool::new(false));
    let mut frames = FrameReader::new(rd);
    while let Some(r) = frames.next().await {
        relays.retain(|_, r| !r.task.is_finished());
        let frame = match r {
            Ok(f) => f,
            Err(fcvm_proto::codec::CodecError::Decode(e, Some(stream))) => {
                // A malformed message on one stream ends that stream only.
                tracing::warn!("malformed frame from exec client on stream {stream}: {e}");
                if let Some(r) = relays.remove(&stream) {
                    r.task.abort();
                }
                out.send(error(stream, format!("malformed frame: {e}")))
                    .await;
                continue;
            }
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "bad frame from exec client"
                );
                continue;
            }
        };
        let stream = frame.stream;
        match frame.msg {
            Msg::SnapshotRequest { name } if stream == CONTROL => {
                snapshot(ctx, name, out.clone(), snapshotting.clone()).await;
            }
            Msg::Start { spec, target } => {
                let refusal = if stream == CONTROL {
                    Some("a process cannot run on the control stream")
                } else if target == Target::Container {
                    Some("the container's main process cannot be started by exec")
                } else if matches!(target, Target::PodContainer { .. }) {
                    // Its root map is the owner's to add and serve (fcvm::bundle).
                    Some("a pod container cannot be started by exec")
                } else if relays.contains_key(&stream) {
                    Some("this stream already runs a process")
                } else if relays.len() >= MAX_STREAMS {
                    Some("too many processes on one exec connection")
                } else {
                    None
                };
                if let Some(why) = refusal {
                    out.send(error(stream, why)).await;
                    continue;
                }
                if spec.detach {
                    detach(ctx, stream, spec, target, &out).await;
                    continue;
                }
                let relay = start(ctx, stream, spec, target, &out).await;
                relays.insert(stream, relay);
            }
            Msg::Credit(n) => {
                if let Some(r) = relays.get(&stream) {
                    r.to_client.add(n);
                }
            }
            Msg::Stdin(data) => {
                let Some(r) = relays.get(&stream) else {
                    continue;
                };
                if r.stdin.take(data.len()) {
                    r.sender.send(Msg::Stdin(data)).await;
                } else if let Some(r) = relays.remove(&stream) {
                    r.task.abort();
                    out.send(error(stream, "stdin sent beyond its credit"))
                        .await;
                }
            }
            msg @ (Msg::StdinEof | Msg::Resize { .. } | Msg::Signal(_)) => {
                if let Some(r) = relays.get(&stream) {
                    r.sender.send(msg).await;
                }
            }
            Msg::Close => {
                if let Some(r) = relays.remove(&stream) {
                    r.task.abort();
                }
            }
            other => tracing::debug!(stream, ?other, "ignored from an exec client"),
        }
    }
    // Client gone: aborting a relay drops its agent stream, which closes (kills) the process.
    for (_, r) in relays {
        r.task.abort();
    }
    writer.abort();
}

/// Serves one `SnapshotRequest`, one at a time per client, answering when it is done.
async fn snapshot(ctx: &Ctx, name: String, out: Outbox, busy: Arc<AtomicBool>) {
    let Some(snap) = ctx.snapshotter.clone() else {
        let error = "this VM cannot be snapshotted".into();
        out.send(Frame::control(Msg::SnapshotFailed { error }))
            .await;
        return;
    };
    if busy.swap(true, Ordering::SeqCst) {
        let error = "a snapshot requested on this connection is still being taken".into();
        out.send(Frame::control(Msg::SnapshotFailed { error }))
            .await;
        return;
    }
    tokio::spawn(async move {
        let msg = match snap(name.clone()).await {
            Ok(()) => Msg::SnapshotDone { name },
            Err(e) => Msg::SnapshotFailed {
                error: wire_text(&e),
            },
        };
        busy.store(false, Ordering::SeqCst);
        out.send(Frame::control(msg)).await;
    });
}

/// An error and its sources on one line, for a client to print.
fn wire_text(e: &(dyn std::error::Error + 'static)) -> String {
    crate::util::chain(e)
}

/// `exec -d`: starts the process, answers the client its `Started` (or its `Error`), and
/// drains the agent stream in a task of its own until the process ends.
async fn detach(
    ctx: &Ctx,
    stream: u32,
    spec: fcvm_proto::ProcessSpec,
    target: Target,
    out: &Outbox,
) {
    let Ok(permit) = ctx.detached.clone().try_acquire_owned() else {
        out.send(error(stream, "too many detached processes in this VM"))
            .await;
        return;
    };
    let mut proc = ctx
        .session
        .start(with_env(ctx, spec, &target), target)
        .await;
    loop {
        match proc.recv().await {
            Some(msg @ Msg::Started { .. }) => {
                out.send(Frame { stream, msg }).await;
                break;
            }
            Some(msg) if crate::session::queue::is_final(&msg) => {
                out.send(Frame { stream, msg }).await;
                return;
            }
            Some(_) => {}
            None => {
                out.send(error(stream, "Connection to the VM's agent was lost"))
                    .await;
                return;
            }
        }
    }
    tokio::spawn(async move {
        // Output is granted back as it arrives (no manual credit) and dropped.
        while let Some(msg) = proc.recv().await {
            if crate::session::queue::is_final(&msg) {
                break;
            }
        }
        drop(permit);
    });
}

/// A container exec inherits the container's environment, the client's entries on top.
fn with_env(
    ctx: &Ctx,
    mut spec: fcvm_proto::ProcessSpec,
    target: &Target,
) -> fcvm_proto::ProcessSpec {
    if *target == Target::ContainerExec {
        let mut merged = ctx.env.clone();
        for kv in spec.env.drain(..) {
            let key = kv.split('=').next().unwrap_or("");
            merged.retain(|e| e.split('=').next() != Some(key));
            merged.push(kv);
        }
        spec.env = merged;
    }
    spec
}

/// Starts the client's process on a fresh agent stream and its relay back.
async fn start(
    ctx: &Ctx,
    stream: u32,
    spec: fcvm_proto::ProcessSpec,
    target: Target,
    out: &Outbox,
) -> Relay {
    let spec = with_env(ctx, spec, &target);
    let proc = ctx.session.start(spec, target).await;
    let (to_client, stdin) = (
        Window::new(INITIAL_OUTPUT_CREDIT),
        Window::new(INITIAL_STDIN_CREDIT),
    );
    Relay {
        sender: proc.sender(),
        task: tokio::spawn(relay(
            proc,
            stream,
            out.clone(),
            to_client.clone(),
            stdin.clone(),
        )),
        to_client,
        stdin,
    }
}

/// The agent's frames of one process, on to the client's `stream`.
async fn relay(
    mut proc: Process,
    stream: u32,
    out: Outbox,
    to_client: Arc<Window>,
    stdin: Arc<Window>,
) {
    let credit = proc.manual_credit();
    loop {
        let msg = match proc.recv().await {
            Some(Msg::Stdout(d)) => (false, d),
            Some(Msg::Stderr(d)) => (true, d),
            Some(msg) => {
                if let Msg::Credit(n) = msg {
                    stdin.add(n);
                }
                let last = crate::session::queue::is_final(&msg);
                if !out.send(Frame { stream, msg }).await || last {
                    return;
                }
                continue;
            }
            None => {
                out.send(error(stream, "Connection to the VM's agent was lost"))
                    .await;
                return;
            }
        };
        let (stderr, mut data) = msg;
        while !data.is_empty() {
            let n = to_client.take_up_to(data.len()).await;
            let rest = data.split_off(n);
            let piece = std::mem::replace(&mut data, rest);
            let msg = if stderr {
                Msg::Stderr(piece)
            } else {
                Msg::Stdout(piece)
            };
            let credit = credit.clone();
            let written = Box::new(move || credit.drained(n));
            if !out.send_then(Frame { stream, msg }, written).await {
                return;
            }
        }
    }
}
