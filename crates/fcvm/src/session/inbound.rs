//! What the host does with each frame its peer sends: the session's dispatch, without I/O
//! (the reader task in `session/mod.rs` feeds it decoded frames and carries out its
//! [`Effect`]s; the fuzz target `host_session` feeds it a hostile guest's bytes).
//!
//! 1. A process or probe stream's frame goes to that stream's [`StreamQueue`]; one for a
//!    stream nobody listens to is dropped. A stream whose peer sends output beyond its credit
//!    ends with an error, and the peer is told to close it ([`Effect::Close`]).
//! 2. A `Log` frame becomes a log line ([`Effect::Log`]) while the peer stays within
//!    [`LOG_RATE`]; beyond it lines are dropped and counted, and the count is logged once
//!    the rate allows again.
//! 3. A `MapRequest` goes to the map server's queue ([`Inbound::with_maps`]; bounded, a
//!    request beyond it is dropped: the agent keeps at most `MAP_IN_FLIGHT` unanswered).
//! 4. Every other control frame goes to the [`ControlQueue`] (newest kept).
//!
//! Nothing here grows with what the peer sends: the queues are bounded (see
//! [`super::queue`]), and the log budget is a token bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use fcvm_proto::codec::CodecError;
use fcvm_proto::{Frame, LogLevel, Msg, CONTROL};

use super::queue::{ControlQueue, Push, StreamKind, StreamQueue};

/// Log bytes per second the peer may send (each line costs [`LINE_COST`] more)…
pub const LOG_RATE: u64 = 64 * 1024;
/// …after a burst of this many.
const LOG_BURST: u64 = 256 * 1024;
const LINE_COST: u64 = 256;
/// Longest message kept of one `Log` frame.
pub const LOG_LINE_MAX: usize = 4096;

/// The streams a connection has open, by id.
#[derive(Clone, Default)]
pub struct Streams(Arc<Mutex<Table>>);

#[derive(Default)]
struct Table {
    open: HashMap<u32, Arc<StreamQueue>>,
    /// The connection is gone: a stream opened now is over at once.
    closed: bool,
}

impl Streams {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens stream `id` (replacing one of the same id).
    pub fn open(&self, id: u32, kind: StreamKind) -> Arc<StreamQueue> {
        let q = Arc::new(StreamQueue::new(kind));
        let mut t = self.lock();
        if t.closed {
            q.close();
        } else {
            t.open.insert(id, q.clone());
        }
        q
    }

    /// Stream `id` as it is open already (frames it got wait in it), else opened now.
    pub fn open_kept(&self, id: u32, kind: StreamKind) -> Arc<StreamQueue> {
        let existing = self.lock().open.get(&id).cloned();
        existing.unwrap_or_else(|| self.open(id, kind))
    }

    pub fn remove(&self, id: u32) {
        self.lock().open.remove(&id);
    }

    fn get(&self, id: u32) -> Option<Arc<StreamQueue>> {
        self.lock().open.get(&id).cloned()
    }

    /// The connection is gone: every stream ends once its queue is read.
    pub fn close_all(&self) {
        let mut t = self.lock();
        t.closed = true;
        for (_, q) in t.open.drain() {
            q.close();
        }
    }
}

/// What the caller must do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `Close` on this stream (its peer broke the protocol on it).
    Close(u32),
    /// Write this line to the VM's agent log (and tracing).
    Log(LogLevel, String),
}

/// A token bucket over log bytes.
struct LogGate {
    tokens: u64,
    at: Option<Instant>,
    dropped: u64,
}

impl LogGate {
    /// Whether a line of `len` bytes may be logged at `now`.
    fn admit(&mut self, now: Instant, len: usize) -> bool {
        let elapsed = self
            .at
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        let refill = (elapsed.as_micros() as u64).saturating_mul(LOG_RATE) / 1_000_000;
        if refill > 0 || self.at.is_none() {
            self.tokens = (self.tokens.saturating_add(refill)).min(LOG_BURST);
            self.at = Some(now);
        }
        let cost = LINE_COST + len as u64;
        if self.tokens < cost {
            self.dropped += 1;
            return false;
        }
        self.tokens -= cost;
        true
    }
}

/// The dispatch state of one connection.
pub struct Inbound {
    streams: Streams,
    control: Arc<ControlQueue>,
    gate: LogGate,
    /// Where `MapRequest`s go (docs/volumes.md); none: they are dropped.
    maps: Option<tokio::sync::mpsc::Sender<fcvm_proto::MapRequest>>,
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Inbound {
    pub fn new(streams: Streams, control: Arc<ControlQueue>) -> Inbound {
        Inbound {
            streams,
            control,
            gate: LogGate {
                tokens: LOG_BURST,
                at: None,
                dropped: 0,
            },
            maps: None,
        }
    }

    /// Routes `MapRequest`s to `tx` (the map server reads them when it is attached).
    pub fn with_maps(mut self, tx: tokio::sync::mpsc::Sender<fcvm_proto::MapRequest>) -> Self {
        self.maps = Some(tx);
        self
    }

    /// Handles one decoded frame (or the codec's complaint about one) arriving at `now`.
    pub fn frame(&mut self, r: Result<Frame, CodecError>, now: Instant) -> Option<Effect> {
        let frame = match r {
            Ok(f) => f,
            Err(e) => {
                if self.gate.admit(now, 0) {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "bad frame from the agent dropped"
                    );
                }
                return None;
            }
        };
        if frame.stream != CONTROL {
            let Some(q) = self.streams.get(frame.stream) else {
                tracing::trace!(
                    stream = frame.stream,
                    "frame for a stream nobody listens to"
                );
                return None;
            };
            return match q.push(frame.msg) {
                Push::Queued | Push::Dropped => None,
                Push::Overrun => {
                    tracing::warn!(
                        stream = frame.stream,
                        "the agent sent output beyond its credit: stream closed"
                    );
                    q.fail("the VM's agent sent output beyond its credit".into());
                    self.streams.remove(frame.stream);
                    Some(Effect::Close(frame.stream))
                }
            };
        }
        match frame.msg {
            Msg::Log { level, message } => {
                let line = truncate(&message, LOG_LINE_MAX);
                if !self.gate.admit(now, line.len()) {
                    return None;
                }
                let dropped = std::mem::take(&mut self.gate.dropped);
                let line = if dropped > 0 {
                    format!("{line} ({dropped} earlier agent log messages dropped: too many)")
                } else {
                    line.to_string()
                };
                Some(Effect::Log(level, line))
            }
            Msg::MapRequest(req) => {
                let queued = self.maps.as_ref().map(|tx| tx.try_send(req).is_ok());
                if queued != Some(true) && self.gate.admit(now, 0) {
                    tracing::warn!("map request dropped: more than the agent may have in flight");
                }
                None
            }
            msg => {
                if !self.control.push(msg) {
                    tracing::debug!("control queue full: oldest reply dropped");
                }
                None
            }
        }
    }

    /// The connection is gone: every stream and the control queue end.
    pub fn lost(&mut self) {
        self.streams.close_all();
        self.control.close();
    }
}
