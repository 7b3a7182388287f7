//! Host side of the agent session (docs/design.md, "Session"): one connection to the VM's
//! channel socket, multiplexed into a control stream and one stream per process.
//!
//! 1. [`Session::connect`] dials the channel socket (retrying until the VMM has created it),
//!    starts a reader and a writer task, and sends `Hello{epoch}` until the agent answers
//!    `HelloAck{epoch}`. The resend is needed because the guest kernel discards port data that
//!    arrives before the agent opened the port; the ack, not a timer, is the readiness signal.
//! 2. The reader hands each frame to [`inbound::Inbound`]: control replies (`Prepared`,
//!    `RestoreComplete`, …) to one queue, `Log` frames to tracing and the VM's `agent.log`
//!    ([`agent_log`]), process frames to their stream's queue.
//! 3. [`Session::start`] opens a process stream; [`Process`] yields its frames.
//!
//! Memory stays bounded whatever the agent does: output is credit-limited per stream
//! ([`queue`]), sends wait for room in a bounded [`outbox`], the log is rate-limited and
//! capped. If the connection drops, every stream ends (`recv` returns `None`) and the control
//! queue closes: callers turn that into "VM connection lost", never a hang.

pub mod agent_log;
pub mod fs;
pub mod inbound;
pub mod outbox;
pub mod process;
pub mod queue;
#[cfg(test)]
pub(crate) mod test_peer;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fcvm_proto::codec::{self, Decoder};
use fcvm_proto::{
    AgentInfo, Frame, LogLevel, Msg, ProcessSpec, RestorePlan, Target, PROTOCOL_VERSION,
};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::vmm::Vmm;
use agent_log::AgentLog;
use inbound::{Effect, Inbound, Streams};
use outbox::Outbox;
pub use process::{Credit, Process, ProcessSender};
use queue::{ControlQueue, StreamKind};

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

pub struct Session {
    out: Outbox,
    control: Arc<ControlQueue>,
    /// One control request at a time: its reply is the first one it accepts.
    requests: tokio::sync::Mutex<()>,
    streams: Streams,
    next_id: AtomicU32,
    reader: JoinHandle<()>,
    pub epoch: u64,
    pub info: AgentInfo,
    /// The agent's `MapRequest`s, until the map server takes them ([`Session::map_channel`]).
    maps: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<fcvm_proto::MapRequest>>>,
}

/// How often Hello is resent while the agent has not opened its port yet.
const HELLO_RESEND: Duration = Duration::from_millis(20);

/// How long connecting may take, from when it began.
#[derive(Debug, Clone, Copy)]
struct Wait {
    start: Instant,
    timeout: Duration,
}

impl Wait {
    fn new(timeout: Duration) -> Wait {
        Wait {
            start: Instant::now(),
            timeout,
        }
    }

    fn over(&self) -> bool {
        self.start.elapsed() > self.timeout
    }
}

/// Polled while waiting for the agent: the VM's exit reason once it has exited.
pub type Exited<'a> = &'a mut (dyn FnMut() -> Option<String> + Send);

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
        let wait = Wait::new(timeout);
        let mut exited = || vmm.try_exited();
        let stream = dial(sock, &mut exited, wait).await?;
        Session::hello(stream, epoch, &mut exited, wait, log).await
    }

    /// Connects to the agent of a VM just restored from a snapshot (docs/design.md, "Restore"):
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
        let wait = Wait::new(timeout);
        let mut exited = || vmm.try_exited();
        let stream = dial(sock, &mut exited, wait).await?;
        Session::restored(stream, epoch, plan, &mut exited, wait, log).await
    }

    /// Opens session `epoch` on a connected stream: `Hello` until `HelloAck{epoch}`.
    async fn hello(
        stream: UnixStream,
        epoch: u64,
        exited: Exited<'_>,
        wait: Wait,
        log: Option<PathBuf>,
    ) -> Result<Session, SessionError> {
        let hello = Msg::Hello {
            epoch,
            version: PROTOCOL_VERSION,
            random_seed: rand::random::<[u8; 32]>().to_vec(),
        };
        Session::over(stream, epoch, log)
            .open(exited, wait, (hello, HELLO_RESEND), |m| match m {
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
            })
            .await
    }

    /// Opens session `epoch` of a restored VM on a connected stream.
    async fn restored(
        stream: UnixStream,
        epoch: u64,
        plan: RestorePlan,
        exited: Exited<'_>,
        wait: Wait,
        log: Option<PathBuf>,
    ) -> Result<Session, SessionError> {
        let session = Session::over(stream, epoch, log);
        // The streams the new epoch keeps are listened to before Restored goes out: their
        // processes run on, and what they sent since the VM resumed waits for `attach`. Their
        // ids are never handed out again.
        for &id in &plan.keep_streams {
            session.streams.open(id, StreamKind::Attached);
            session
                .next_id
                .fetch_max(id.saturating_add(1), Ordering::Relaxed);
        }
        let restored = Msg::Restored { epoch, plan };
        // The restored guest already has its port open: Restored arrives the first time; the
        // slow resend only covers a guest that was snapshotted before its agent opened it.
        let resend = Duration::from_millis(500);
        session
            .open(exited, wait, (restored, resend), |m| match m {
                Msg::RestoreComplete { epoch: e } if e == epoch => Some(Ok(AgentInfo {
                    prepared: true,
                    ..Default::default()
                })),
                Msg::RestoreFailed { epoch: e, error } if e == epoch => {
                    Some(Err(SessionError::Agent(format!("restore failed: {error}"))))
                }
                _ => None,
            })
            .await
    }

    /// Runs [`Session::handshake`] and keeps the agent's info it ends with.
    async fn open(
        mut self,
        exited: Exited<'_>,
        wait: Wait,
        first: (Msg, Duration),
        accept: impl FnMut(Msg) -> Option<Result<AgentInfo, SessionError>>,
    ) -> Result<Session, SessionError> {
        self.info = self.handshake(exited, wait, first, accept).await?;
        Ok(self)
    }

    /// Sends `first` until `accept` takes a control reply. The resend covers a guest that has
    /// not opened its port yet (the guest kernel discards port data until then); the agent
    /// answers a repeated message of its current epoch idempotently.
    async fn handshake(
        &self,
        exited: Exited<'_>,
        wait: Wait,
        (first, resend): (Msg, Duration),
        mut accept: impl FnMut(Msg) -> Option<Result<AgentInfo, SessionError>>,
    ) -> Result<AgentInfo, SessionError> {
        let _one = self.requests.lock().await;
        let mut tick = tokio::time::interval(resend);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(why) = exited() {
                        return Err(SessionError::VmExited(why));
                    }
                    if wait.over() {
                        return Err(SessionError::Timeout(wait.timeout));
                    }
                    // No room: the agent has not read the last ones yet; the next tick retries.
                    self.out.try_send(Frame::control(first.clone()));
                }
                m = self.control.recv() => match m {
                    Some(m) => {
                        if let Some(r) = accept(m) {
                            return r;
                        }
                    }
                    None => {
                        // The socket closed: QEMU is going away; report why if it has.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return Err(match exited() {
                            Some(why) => SessionError::VmExited(why),
                            None => SessionError::Lost,
                        });
                    }
                },
            }
        }
    }

    /// Wraps an already connected stream without a handshake: used by `fcvm exec`, whose peer
    /// is the exec server of the fcvm process that owns the VM (it relays to the agent).
    pub fn client(stream: UnixStream) -> Session {
        Session::over(stream, 0, None)
    }

    /// Wraps an already connected stream (the handshake is the caller's).
    fn over(stream: UnixStream, epoch: u64, log: Option<PathBuf>) -> Session {
        let (rd, wr) = stream.into_split();
        let (out, out_rx) = Outbox::new();
        let control = Arc::new(ControlQueue::default());
        let streams = Streams::default();
        outbox::spawn_writer(wr, out_rx);
        let (map_tx, map_rx) = tokio::sync::mpsc::channel(fcvm_proto::map::MAP_IN_FLIGHT);
        let inbound = Inbound::new(streams.clone(), control.clone()).with_maps(map_tx);
        let reader = spawn_reader(rd, inbound, out.clone(), log.map(AgentLog::new));
        Session {
            out,
            control,
            requests: tokio::sync::Mutex::new(()),
            streams,
            next_id: AtomicU32::new(fcvm_proto::CONTAINER_STREAM + 1),
            reader,
            epoch,
            info: AgentInfo::default(),
            maps: std::sync::Mutex::new(Some(map_rx)),
        }
    }

    /// The agent's map requests (queued since the session opened) and the outbox for the
    /// replies, for the map server ([`crate::map::serve`]); `None` once taken.
    pub fn map_channel(
        &self,
    ) -> Option<(tokio::sync::mpsc::Receiver<fcvm_proto::MapRequest>, Outbox)> {
        let rx = self.maps.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some((rx, self.out.clone()))
    }

    /// Sends a control request and waits for the first reply `pick` accepts
    /// (`Ok` = success, `Err` = the agent's error text); other control frames are skipped.
    pub async fn request<T>(
        &self,
        msg: Msg,
        timeout: Duration,
        mut pick: impl FnMut(Msg) -> Option<Result<T, String>>,
    ) -> Result<T, SessionError> {
        let exchange = async {
            let _one = self.requests.lock().await;
            if !self.out.send(Frame::control(msg)).await {
                return Err(SessionError::Lost);
            }
            loop {
                match self.control.recv().await {
                    None => return Err(SessionError::Lost),
                    Some(m) => match pick(m) {
                        Some(Ok(v)) => return Ok(v),
                        Some(Err(e)) => return Err(SessionError::Agent(e)),
                        None => {}
                    },
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(SessionError::Timeout(timeout)))
    }

    /// Opens a process stream and sends `Start`. Frames arrive through the returned [`Process`].
    /// The container's main process always gets [`fcvm_proto::CONTAINER_STREAM`].
    pub async fn start(&self, spec: ProcessSpec, target: Target) -> Process {
        let id = match target {
            Target::Container => fcvm_proto::CONTAINER_STREAM,
            _ => self.next_id.fetch_add(1, Ordering::Relaxed),
        };
        let proc = self.open_process(id, StreamKind::Process);
        // If the connection is gone the stream is already over: `recv` says so.
        proc.send(Msg::Start { spec, target }).await;
        proc
    }

    /// Receives the frames of a stream that already runs in the guest (the container of a
    /// VM restored from a snapshot taken while it ran, or a stream its restore plan kept,
    /// with what it sent since).
    pub fn attach(&self, id: u32) -> Process {
        let queue = self.streams.open_kept(id, StreamKind::Attached);
        Process::new(id, queue, self.out.clone(), self.streams.clone())
    }

    fn open_process(&self, id: u32, kind: StreamKind) -> Process {
        let queue = self.streams.open(id, kind);
        Process::new(id, queue, self.out.clone(), self.streams.clone())
    }

    /// HTTP GET `url` from inside the VM (a probe stream): the response's status code, or the
    /// agent's reason it got none. `timeout` bounds the agent's attempt; the wait here allows
    /// a little more for the channel before it reports `Timeout`.
    pub async fn probe_http(&self, url: &str, timeout: Duration) -> Result<u16, SessionError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = self.streams.open(id, StreamKind::Probe);
        let get = Msg::HttpGet {
            url: url.into(),
            timeout_ms: timeout.as_millis().clamp(1, u32::MAX as u128) as u32,
        };
        let wait = async {
            if !self
                .out
                .send(Frame {
                    stream: id,
                    msg: get,
                })
                .await
            {
                return Err(SessionError::Lost);
            }
            match queue.recv().await {
                Some(Msg::HttpStatus { code }) => Ok(code),
                Some(Msg::Error { message, .. }) => Err(SessionError::Agent(message)),
                // A probe stream takes nothing else (see queue::StreamQueue::push).
                Some(_) | None => Err(SessionError::Lost),
            }
        };
        let r = tokio::time::timeout(timeout + Duration::from_secs(2), wait)
            .await
            .unwrap_or(Err(SessionError::Timeout(timeout)));
        self.streams.remove(id);
        r
    }
}

impl Drop for Session {
    /// Streams that outlive their session end, instead of waiting for frames nobody reads.
    fn drop(&mut self) {
        self.reader.abort();
        self.streams.close_all();
        self.control.close();
    }
}

/// Dials the channel socket until the VMM has created it (or exited, or the wait is over).
async fn dial(sock: &Path, exited: Exited<'_>, wait: Wait) -> Result<UnixStream, SessionError> {
    loop {
        match UnixStream::connect(sock).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                if let Some(why) = exited() {
                    return Err(SessionError::VmExited(why));
                }
                if wait.over() {
                    return Err(SessionError::Connect(sock.into(), e));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// The reader task: frames through [`Inbound`], its effects carried out, until the peer is
/// gone; then every stream ends.
fn spawn_reader(
    rd: tokio::net::unix::OwnedReadHalf,
    mut inbound: Inbound,
    out: Outbox,
    mut log: Option<AgentLog>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut frames = FrameReader::new(rd);
        while let Some(r) = frames.next().await {
            match inbound.frame(r, Instant::now()) {
                Some(Effect::Close(id)) => out.close(id),
                Some(Effect::Log(level, line)) => {
                    log_agent(level, &line);
                    if let Some(l) = log.as_mut() {
                        l.write(level, &line);
                    }
                }
                None => {}
            }
        }
        inbound.lost();
    })
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

fn log_agent(level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!("agent: {message}"),
        LogLevel::Warn => tracing::warn!("agent: {message}"),
        LogLevel::Info => tracing::info!("agent: {message}"),
        LogLevel::Debug => tracing::debug!("agent: {message}"),
    }
}
