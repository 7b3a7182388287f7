//! The processes of one sandbox, as envd's `process.Process` service sees them: started as
//! container execs over the sandbox's agent session, named by their pid (or a tag), outliving
//! the HTTP stream that started them (an SDK handle may disconnect and `Connect` again).
//!
//! Each process has one relay task ([`super::relay`]) that owns its agent stream: it reads
//! every frame as it arrives — with or without a client attached — and hands output to the
//! attached streams through bounded queues, so a slow client slows only its own process.
//! Control requests (signals, stdin, resize, new subscribers) reach the relay through a
//! bounded queue too. Stdin is sent within the agent's credit (docs/protocol.md §5); what
//! does not fit yet waits in the relay, up to [`MAX_PENDING_STDIN`].
//!
//! The table outlives a pause ([`Processes::kept`], [`Processes::adopt`]): a restored VM keeps
//! the processes' agent streams, and new relays take them over (docs/serve.md).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use fcvm_proto::{ErrorKind, Msg, ProcessSpec, Target, INITIAL_STDIN_CREDIT};
use tokio::sync::{mpsc, oneshot};

use super::connect::{Code, RpcError};
use super::pb::{Event, ProcessConfig, ProcessInfo, ProcessSelector};
pub use super::relay::MAX_PENDING_STDIN;
use super::relay::{lost, Control, Relay};
use crate::session::{Process, Session};

/// Events queued for one attached stream before the relay waits for its client.
const EVENT_QUEUE: usize = 64;
/// Control requests queued for one relay.
const CONTROL_QUEUE: usize = 16;
/// Processes alive in one sandbox at a time.
pub const MAX_PROCESSES: usize = 1024;

#[derive(Clone)]
struct Entry {
    tag: Option<String>,
    config: ProcessConfig,
    control: mpsc::Sender<Control>,
    /// Its agent stream and whether it has a pty: what a restored sandbox needs to take the
    /// process over ([`Processes::adopt`]).
    stream: u32,
    tty: bool,
}

/// A process as a snapshot of its sandbox holds it: it runs on in the guest under its agent
/// stream, which a VM restored from that snapshot keeps (docs/design.md §9).
#[derive(Clone, Debug)]
pub struct Kept {
    pub pid: u32,
    pub tag: Option<String>,
    pub config: ProcessConfig,
    pub stream: u32,
    pub tty: bool,
}

/// A started (or connected-to) process: its pid and the stream of its events, beginning with
/// `Event::Start` and ending with `Event::End`.
pub struct Attached {
    pub pid: u32,
    pub events: mpsc::Receiver<Event>,
}

#[derive(Default)]
pub struct Processes {
    map: Mutex<HashMap<u32, Entry>>,
}

impl Processes {
    /// Starts `spec` in the container and returns once the agent reported it running.
    pub async fn start(
        self: &Arc<Self>,
        session: &Session,
        spec: ProcessSpec,
        tag: Option<String>,
        config: ProcessConfig,
    ) -> Result<Attached, RpcError> {
        if self.map.lock().expect("processes").len() >= MAX_PROCESSES {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("{MAX_PROCESSES} processes already run in this sandbox"),
            ));
        }
        let tty = spec.tty;
        let mut proc = session.start(spec, Target::ContainerExec).await;
        let mut early = Vec::new();
        let pid = loop {
            match proc.recv().await {
                Some(Msg::Started { pid, .. }) => break pid,
                Some(Msg::Error { kind, message }) => return Err(start_error(kind, message)),
                Some(Msg::Exit { code, .. }) => {
                    return Err(start_error(
                        ErrorKind::Failed,
                        format!("exited with {code} before it started"),
                    ))
                }
                Some(other) => early.push(other),
                None => return Err(lost()),
            }
        };
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let _ = tx.try_send(Event::Start { pid });
        let kept = Kept {
            pid,
            tag,
            config,
            stream: proc.id,
            tty,
        };
        self.relay(proc, kept, vec![tx], early);
        Ok(Attached { pid, events: rx })
    }

    /// Enters `k` in the table and starts its relay over `proc`.
    fn relay(
        self: &Arc<Self>,
        proc: Process,
        k: Kept,
        subscribers: Vec<mpsc::Sender<Event>>,
        early: Vec<Msg>,
    ) {
        let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
        let entry = Entry {
            tag: k.tag,
            config: k.config,
            control: ctl_tx.clone(),
            stream: k.stream,
            tty: k.tty,
        };
        self.map.lock().expect("processes").insert(k.pid, entry);
        let relay = Relay {
            proc,
            pid: k.pid,
            tty: k.tty,
            subscribers,
            credit: INITIAL_STDIN_CREDIT as usize,
            pending: VecDeque::new(),
            pending_bytes: 0,
            eof: false,
            eof_sent: false,
        };
        let (table, pid) = (Arc::downgrade(self), k.pid);
        // Removes this entry, not a later process's with a recycled pid.
        let ended = move || {
            if let Some(t) = table.upgrade() {
                t.remove(pid, &ctl_tx);
            }
        };
        tokio::spawn(relay.run(ctl_rx, early, ended));
    }

    /// Every process that runs, as a snapshot taken now holds it.
    pub fn kept(&self) -> Vec<Kept> {
        let map = self.map.lock().expect("processes");
        let mut v: Vec<Kept> = map
            .iter()
            .map(|(pid, e)| Kept {
                pid: *pid,
                tag: e.tag.clone(),
                config: e.config.clone(),
                stream: e.stream,
                tty: e.tty,
            })
            .collect();
        v.sort_by_key(|k| k.pid);
        v
    }

    /// The processes of a VM restored from a snapshot that held `kept`, taken over on
    /// `session` (whose restore plan kept their streams), no client attached yet. A process
    /// that ended meanwhile reports its end to nobody and leaves the table, as any other.
    pub fn adopt(session: &Session, kept: &[Kept]) -> Arc<Processes> {
        let table = Arc::new(Processes::default());
        for k in kept {
            table.relay(session.attach(k.stream), k.clone(), vec![], vec![]);
        }
        table
    }

    fn find(&self, sel: Option<&ProcessSelector>) -> Result<(u32, Entry), RpcError> {
        let map = self.map.lock().expect("processes");
        let found = match sel {
            Some(ProcessSelector { pid: Some(pid), .. }) => map.get(pid).map(|e| (*pid, e.clone())),
            Some(ProcessSelector { tag: Some(tag), .. }) => map
                .iter()
                .find(|(_, e)| e.tag.as_deref() == Some(tag.as_str()))
                .map(|(p, e)| (*p, e.clone())),
            _ => {
                return Err(RpcError::new(
                    Code::InvalidArgument,
                    "no process selected (pid or tag)",
                ))
            }
        };
        found.ok_or_else(|| RpcError::new(Code::NotFound, "process not found"))
    }

    async fn control(&self, sel: Option<&ProcessSelector>, c: Control) -> Result<u32, RpcError> {
        let (pid, e) = self.find(sel)?;
        e.control
            .send(c)
            .await
            .map_err(|_| RpcError::new(Code::NotFound, "process not found"))?;
        Ok(pid)
    }

    /// Attaches a new stream to a running process (`Connect`).
    pub async fn connect(&self, sel: Option<&ProcessSelector>) -> Result<Attached, RpcError> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let pid = self.control(sel, Control::Subscribe(tx)).await?;
        Ok(Attached { pid, events: rx })
    }

    /// Delivers `signal`; SIGKILL ends the process and every process it started.
    pub async fn signal(&self, sel: Option<&ProcessSelector>, signal: i32) -> Result<(), RpcError> {
        let c = match signal {
            libc::SIGKILL => Control::Kill,
            0 => return Err(RpcError::new(Code::InvalidArgument, "no signal given")),
            s => Control::Signal(s),
        };
        self.control(sel, c).await.map(drop)
    }

    pub async fn send_input(
        &self,
        sel: Option<&ProcessSelector>,
        data: Vec<u8>,
    ) -> Result<(), RpcError> {
        let (ack, done) = oneshot::channel();
        self.control(sel, Control::Stdin(data, ack)).await?;
        done.await
            .unwrap_or_else(|_| Err(RpcError::new(Code::NotFound, "process ended")))
    }

    pub async fn close_stdin(&self, sel: Option<&ProcessSelector>) -> Result<(), RpcError> {
        self.control(sel, Control::StdinEof).await.map(drop)
    }

    pub async fn resize(
        &self,
        sel: Option<&ProcessSelector>,
        rows: u16,
        cols: u16,
    ) -> Result<(), RpcError> {
        self.control(sel, Control::Resize(rows, cols))
            .await
            .map(drop)
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        let map = self.map.lock().expect("processes");
        let mut v: Vec<ProcessInfo> = map
            .iter()
            .map(|(pid, e)| ProcessInfo {
                config: e.config.clone(),
                pid: *pid,
                tag: e.tag.clone(),
            })
            .collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    fn remove(&self, pid: u32, control: &mpsc::Sender<Control>) {
        let mut map = self.map.lock().expect("processes");
        if map
            .get(&pid)
            .is_some_and(|e| e.control.same_channel(control))
        {
            map.remove(&pid);
        }
    }
}

fn start_error(kind: ErrorKind, message: String) -> RpcError {
    let code = match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::NotExecutable => Code::PermissionDenied,
        ErrorKind::Failed => Code::Unknown,
    };
    RpcError::new(code, message)
}
