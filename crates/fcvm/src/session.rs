//! Host side of the agent session (DESIGN §4): one connection to the VM's channel socket,
//! multiplexed into a control stream and one stream per process.
//!
//! 1. [`Session::connect`] dials the channel socket (retrying until the VMM has created it),
//!    starts a reader and a writer task, and sends `Hello{epoch}` until the agent answers
//!    `HelloAck{epoch}`. The resend is needed because the guest kernel discards port data that
//!    arrives before the agent opened the port; the ack, not a timer, is the readiness signal.
//! 2. Control replies (`Prepared`, `RestoreComplete`, …) arrive on one queue; `Log` frames go
//!    to tracing and the VM's agent log.
//! 3. [`Session::start`] opens a process stream; [`Process`] yields its frames.
//!
//! If the connection drops, every stream ends (`recv` returns `None`) and the control queue
//! closes: callers turn that into "VM connection lost", never a hang.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fcvm_proto::codec::{self, Decoder};
use fcvm_proto::{
    AgentInfo, Frame, LogLevel, Msg, ProcessSpec, RestorePlan, Target, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::vmm::Vmm;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("VM exited before its agent answered ({0})")]
    VmExited(String),
    #[error("Agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Agent speaks protocol {0}, fcvm speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("Connection to the VM's agent was lost")]
    Lost,
    #[error("Cannot connect to the agent socket {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("{0}")]
    Agent(String),
}

type Streams = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Msg>>>>;

pub struct Session {
    out: mpsc::UnboundedSender<Frame>,
    control: tokio::sync::Mutex<mpsc::UnboundedReceiver<Msg>>,
    streams: Streams,
    next_id: AtomicU32,
    pub epoch: u64,
    pub info: AgentInfo,
}

/// How often Hello is resent while the agent has not opened its port yet.
const HELLO_RESEND: Duration = Duration::from_millis(20);

impl Session {
    /// Connects to the agent of a freshly booted VM and opens session `epoch` (Hello/HelloAck).
    /// `vmm` is polled so that a VM that dies during boot ends the wait with its reason.
    /// `log` receives the agent's Log frames (the VM's agent.log).
    pub async fn connect(
        sock: &Path,
        epoch: u64,
        vmm: &dyn Vmm,
        timeout: Duration,
        log: Option<PathBuf>,
    ) -> Result<Session, SessionError> {
        let hello = Msg::Hello {
            epoch,
            version: PROTOCOL_VERSION,
            random_seed: rand::random::<[u8; 32]>().to_vec(),
        };
        Session::open(
            sock,
            epoch,
            vmm,
            timeout,
            log,
            (hello, HELLO_RESEND),
            |m| match m {
                Msg::HelloAck {
                    epoch: e,
                    version,
                    info,
                } if e == epoch => Some(if version == PROTOCOL_VERSION {
                    Ok(info)
                } else {
                    Err(SessionError::Version(version))
                }),
                _ => None,
            },
        )
        .await
    }

    /// Connects to the agent of a VM just restored from a snapshot (DESIGN §4 steps 2-4):
    /// `Restored{epoch}` → the agent's restore steps → `RestoreComplete{epoch}`. Only then is
    /// the VM ready; a `RestoreFailed` or a stale epoch's answer never counts.
    pub async fn connect_restored(
        sock: &Path,
        epoch: u64,
        plan: RestorePlan,
        vmm: &dyn Vmm,
        timeout: Duration,
        log: Option<PathBuf>,
    ) -> Result<Session, SessionError> {
        let restored = Msg::Restored { epoch, plan };
        // The restored guest already has its port open: Restored arrives the first time; the
        // slow resend only covers a guest that was snapshotted before its agent opened it.
        let resend = Duration::from_millis(500);
        Session::open(
            sock,
            epoch,
            vmm,
            timeout,
            log,
            (restored, resend),
            |m| match m {
                Msg::RestoreComplete { epoch: e } if e == epoch => Some(Ok(AgentInfo {
                    prepared: true,
                    ..Default::default()
                })),
                Msg::RestoreFailed { epoch: e, error } if e == epoch => {
                    Some(Err(SessionError::Agent(format!("restore failed: {error}"))))
                }
                _ => None,
            },
        )
        .await
    }

    /// Dials the channel, sends `first` until `accept` takes a control reply. The resend
    /// covers a guest that has not opened its port yet (the guest kernel discards port data
    /// until then); the agent answers a repeated message of its current epoch idempotently.
    async fn open(
        sock: &Path,
        epoch: u64,
        vmm: &dyn Vmm,
        timeout: Duration,
        log: Option<PathBuf>,
        (first, resend): (Msg, Duration),
        mut accept: impl FnMut(Msg) -> Option<Result<AgentInfo, SessionError>>,
    ) -> Result<Session, SessionError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(sock).await {
                Ok(s) => break s,
                Err(e) => {
                    if let Some(why) = vmm.try_exited() {
                        return Err(SessionError::VmExited(why));
                    }
                    if start.elapsed() > timeout {
                        return Err(SessionError::Connect(sock.into(), e));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let session = Session::over(stream, epoch, log);
        let mut ctl = session.control.lock().await;
        let mut tick = tokio::time::interval(resend);
        let info = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(why) = vmm.try_exited() {
                        return Err(SessionError::VmExited(why));
                    }
                    if start.elapsed() > timeout {
                        return Err(SessionError::Timeout(timeout));
                    }
                    session.send_control(first.clone());
                }
                m = ctl.recv() => match m {
                    Some(m) => {
                        if let Some(r) = accept(m) {
                            break r?;
                        }
                    }
                    None => {
                        // The socket closed: QEMU is going away; report why if it has.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return Err(match vmm.try_exited() {
                            Some(why) => SessionError::VmExited(why),
                            None => SessionError::Lost,
                        });
                    }
                },
            }
        };
        drop(ctl);
        Ok(Session { info, ..session })
    }

    /// Wraps an already connected stream without a handshake: used by `fcvm exec`, whose peer
    /// is the exec server of the fcvm process that owns the VM (it relays to the agent).
    pub fn client(stream: UnixStream) -> Session {
        Session::over(stream, 0, None)
    }

    /// Wraps an already connected stream (the handshake is the caller's).
    fn over(stream: UnixStream, epoch: u64, log: Option<PathBuf>) -> Session {
        let (rd, wr) = stream.into_split();
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Frame>();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel::<Msg>();
        let streams: Streams = Arc::default();

        spawn_writer(wr, out_rx);

        let streams_rd = streams.clone();
        tokio::spawn(async move {
            let mut frames = FrameReader::new(rd);
            let mut log = log.and_then(|p| crate::owner_only::append_file(&p).ok());
            while let Some(r) = frames.next().await {
                let frame = match r {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("bad frame from agent dropped: {e}");
                        continue;
                    }
                };
                if frame.stream == fcvm_proto::CONTROL {
                    if let Msg::Log { level, message } = &frame.msg {
                        log_agent(*level, message, log.as_mut());
                        continue;
                    }
                    let _ = ctl_tx.send(frame.msg);
                } else {
                    let tx = streams_rd
                        .lock()
                        .expect("streams")
                        .get(&frame.stream)
                        .cloned();
                    match tx {
                        Some(tx) => {
                            let _ = tx.send(frame.msg);
                        }
                        None => tracing::debug!(stream = frame.stream, "frame for unknown stream"),
                    }
                }
            }
            // Connection gone: end every stream and the control queue.
            streams_rd.lock().expect("streams").clear();
            drop(ctl_tx);
        });

        Session {
            out: out_tx,
            control: tokio::sync::Mutex::new(ctl_rx),
            streams,
            next_id: AtomicU32::new(fcvm_proto::CONTAINER_STREAM + 1),
            epoch,
            info: AgentInfo::default(),
        }
    }

    pub fn send_control(&self, msg: Msg) {
        let _ = self.out.send(Frame::control(msg));
    }

    /// Sends a control request and waits for the first reply `pick` accepts
    /// (`Ok` = success, `Err` = the agent's error text); other control frames are skipped.
    pub async fn request<T>(
        &self,
        msg: Msg,
        timeout: Duration,
        mut pick: impl FnMut(Msg) -> Option<Result<T, String>>,
    ) -> Result<T, SessionError> {
        let mut ctl = self.control.lock().await;
        self.send_control(msg);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, ctl.recv()).await {
                Err(_) => return Err(SessionError::Timeout(timeout)),
                Ok(None) => return Err(SessionError::Lost),
                Ok(Some(m)) => match pick(m) {
                    Some(Ok(v)) => return Ok(v),
                    Some(Err(e)) => return Err(SessionError::Agent(e)),
                    None => {}
                },
            }
        }
    }

    /// Opens a process stream and sends `Start`. Frames arrive through the returned [`Process`].
    /// The container's main process always gets [`fcvm_proto::CONTAINER_STREAM`].
    pub fn start(&self, spec: ProcessSpec, target: Target) -> Process {
        let id = match target {
            Target::Container => fcvm_proto::CONTAINER_STREAM,
            _ => self.next_id.fetch_add(1, Ordering::Relaxed),
        };
        let proc = self.attach(id);
        proc.send(Msg::Start { spec, target });
        proc
    }

    /// Receives the frames of a stream that already runs in the guest (the container of a
    /// VM restored from a snapshot taken while it ran).
    pub fn attach(&self, id: u32) -> Process {
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams.lock().expect("streams").insert(id, tx);
        Process {
            id,
            rx,
            out: self.out.clone(),
            streams: self.streams.clone(),
            done: false,
            pending: Default::default(),
        }
    }

    /// HTTP GET `url` from inside the VM (a probe stream): the response's status code, or the
    /// agent's reason it got none. `timeout` bounds the agent's attempt; the wait here allows
    /// a little more for the channel before it reports `Timeout`.
    pub async fn probe_http(&self, url: &str, timeout: Duration) -> Result<u16, SessionError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.streams.lock().expect("streams").insert(id, tx);
        let _ = self.out.send(Frame {
            stream: id,
            msg: Msg::HttpGet {
                url: url.to_string(),
                timeout_ms: timeout.as_millis().clamp(1, u32::MAX as u128) as u32,
            },
        });
        let wait = async {
            loop {
                match rx.recv().await {
                    Some(Msg::HttpStatus { code }) => return Ok(code),
                    Some(Msg::Error { message, .. }) => return Err(SessionError::Agent(message)),
                    Some(other) => tracing::debug!(?other, "ignored on a probe stream"),
                    None => return Err(SessionError::Lost),
                }
            }
        };
        let r = tokio::time::timeout(timeout + Duration::from_secs(2), wait)
            .await
            .unwrap_or(Err(SessionError::Timeout(timeout)));
        self.streams.lock().expect("streams").remove(&id);
        r
    }
}

/// The reading side of a framed connection: bytes in, frames (or codec errors) out, `None`
/// once the peer is gone.
pub(crate) struct FrameReader {
    rd: tokio::net::unix::OwnedReadHalf,
    dec: Decoder,
    buf: Vec<u8>,
}

impl FrameReader {
    pub(crate) fn new(rd: tokio::net::unix::OwnedReadHalf) -> FrameReader {
        FrameReader {
            rd,
            dec: Decoder::new(),
            buf: vec![0u8; 64 * 1024],
        }
    }

    pub(crate) async fn next(&mut self) -> Option<Result<Frame, codec::CodecError>> {
        loop {
            if let Some(r) = self.dec.next_frame() {
                return Some(r);
            }
            match self.rd.read(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.dec.feed(&self.buf[..n]),
            }
        }
    }
}

/// The one writer of a framed connection: encodes frames from `rx` in order until the peer
/// goes away. It starts with a lone delimiter: the peer may hold half a frame from an earlier
/// writer (a restored guest never saw its old host leave); this ends it as a bad frame.
pub(crate) fn spawn_writer(
    mut wr: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Frame>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if wr.write_all(&[0]).await.is_err() {
            return;
        }
        while let Some(f) = rx.recv().await {
            let bytes = match codec::encode(&f) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("dropping frame that does not encode: {e}");
                    continue;
                }
            };
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    })
}

fn log_agent(level: LogLevel, message: &str, file: Option<&mut std::fs::File>) {
    match level {
        LogLevel::Error => tracing::error!("agent: {message}"),
        LogLevel::Warn => tracing::warn!("agent: {message}"),
        LogLevel::Info => tracing::info!("agent: {message}"),
        LogLevel::Debug => tracing::debug!("agent: {message}"),
    }
    if let Some(f) = file {
        let _ = writeln!(f, "{level:?}: {message}");
    }
}

/// One process stream. Dropping it before the process ended sends `Close` (the agent kills it).
pub struct Process {
    pub id: u32,
    rx: mpsc::UnboundedReceiver<Msg>,
    out: mpsc::UnboundedSender<Frame>,
    streams: Streams,
    done: bool,
    /// Frames taken out by [`Process::wait_started`] for later `recv`s.
    pending: std::collections::VecDeque<Msg>,
}

impl Process {
    /// Next frame of this stream; `None` when the connection is gone.
    pub async fn recv(&mut self) -> Option<Msg> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        let m = self.rx.recv().await;
        if matches!(m, Some(Msg::Exit { .. }) | Some(Msg::Error { .. }) | None) {
            self.done = true;
        }
        m
    }

    pub fn send(&self, msg: Msg) {
        self.sender().send(msg);
    }

    /// Waits for the agent's `Started` (for the container: crun has created it, so execs can
    /// join it). Other frames that arrive first are kept for `recv`. Returns false if the
    /// process ended (or the connection dropped) without starting.
    pub async fn wait_started(&mut self) -> bool {
        loop {
            match self.rx.recv().await {
                Some(Msg::Started { .. }) => return true,
                Some(m) => {
                    let last = matches!(m, Msg::Exit { .. } | Msg::Error { .. });
                    self.pending.push_back(m);
                    if last {
                        return false;
                    }
                }
                None => return false,
            }
        }
    }

    /// A handle that sends on this stream while another task receives.
    pub fn sender(&self) -> ProcessSender {
        ProcessSender {
            id: self.id,
            out: self.out.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ProcessSender {
    id: u32,
    out: mpsc::UnboundedSender<Frame>,
}

impl ProcessSender {
    pub fn send(&self, msg: Msg) {
        let _ = self.out.send(Frame {
            stream: self.id,
            msg,
        });
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.streams.lock().expect("streams").remove(&self.id);
        if !self.done {
            self.send(Msg::Close);
        }
    }
}
