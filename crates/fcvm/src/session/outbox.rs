//! The sending side of a framed connection: a bounded queue of frames, plus the credit grants
//! and closes that must never wait for room, kept coalesced per stream beside it.
//!
//! Frames (`Start`, `Stdin`, requests…) wait for room in a queue of [`OUT_QUEUE`]: a peer that
//! stops reading holds up their senders, never memory. A grant (`Credit`) or a `Close` comes
//! from places that cannot wait (a stdout writer thread, a `Drop`); those add to one counter
//! or flag per stream, so they stay bounded by the number of streams however long the peer
//! stalls. The one writer task sends them after the frames queued before them, so a `Close`
//! never overtakes its stream's `Start`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use fcvm_proto::{codec, Frame, Msg};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// Frames queued for the peer before senders wait.
pub const OUT_QUEUE: usize = 32;

/// Runs once a frame's bytes were written (the exec relay grants the agent credit there).
pub type Then = Box<dyn FnOnce() + Send>;

/// One queued frame and what to do once it is written.
pub struct Out {
    frame: Frame,
    then: Option<Then>,
}

#[derive(Default)]
struct Side {
    credits: BTreeMap<u32, u64>,
    closes: BTreeSet<u32>,
}

struct Shared {
    side: Mutex<Side>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Side> {
        self.side.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Cloneable handle for every sender of one connection.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Out>,
    shared: Arc<Shared>,
}

/// The writer's end, for [`spawn_writer`].
pub struct OutboxRx {
    rx: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
}

/// A reserved place in the queue (waiting for it is cancel-safe).
pub struct Permit<'a>(mpsc::Permit<'a, Out>);

impl Permit<'_> {
    pub fn send(self, frame: Frame) {
        self.0.send(Out { frame, then: None });
    }
}

impl Outbox {
    pub fn new() -> (Outbox, OutboxRx) {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let shared = Arc::new(Shared {
            side: Mutex::default(),
            wake: Notify::new(),
        });
        (
            Outbox {
                tx,
                shared: shared.clone(),
            },
            OutboxRx { rx, shared },
        )
    }

    /// Queues a frame, waiting for room; false once the connection is gone.
    pub async fn send(&self, frame: Frame) -> bool {
        self.tx.send(Out { frame, then: None }).await.is_ok()
    }

    /// Like [`send`](Self::send), and runs `then` once the frame is written.
    pub async fn send_then(&self, frame: Frame, then: Then) -> bool {
        let out = Out {
            frame,
            then: Some(then),
        };
        self.tx.send(out).await.is_ok()
    }

    /// Queues a frame if there is room now; false if there is none (or no connection).
    pub fn try_send(&self, frame: Frame) -> bool {
        self.tx.try_send(Out { frame, then: None }).is_ok()
    }

    pub async fn reserve(&self) -> Option<Permit<'_>> {
        self.tx.reserve().await.ok().map(Permit)
    }

    /// Grants the peer `n` more bytes of output on `stream`.
    pub fn credit(&self, stream: u32, n: u32) {
        let mut s = self.shared.lock();
        if !s.closes.contains(&stream) {
            *s.credits.entry(stream).or_default() += n as u64;
        }
        drop(s);
        self.shared.wake.notify_one();
    }

    /// Tells the peer the stream is over (it kills the process).
    pub fn close(&self, stream: u32) {
        let mut s = self.shared.lock();
        s.credits.remove(&stream);
        s.closes.insert(stream);
        drop(s);
        self.shared.wake.notify_one();
    }
}

impl OutboxRx {
    /// The grants and the closes added since the last call, as frames.
    fn side_frames(&self) -> (Vec<Frame>, Vec<Frame>) {
        let side = std::mem::take(&mut *self.shared.lock());
        let credits = side.credits.into_iter().flat_map(|(stream, mut n)| {
            std::iter::from_fn(move || {
                let c = n.min(u32::MAX as u64);
                n -= c;
                (c > 0).then_some(Frame {
                    stream,
                    msg: Msg::Credit(c as u32),
                })
            })
        });
        let closes = side.closes.into_iter().map(|stream| Frame {
            stream,
            msg: Msg::Close,
        });
        (credits.collect(), closes.collect())
    }
}

async fn write(wr: &mut OwnedWriteHalf, out: Out) -> bool {
    let bytes = match codec::encode(&out.frame) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "dropping a frame that does not encode"
            );
            return true;
        }
    };
    if wr.write_all(&bytes).await.is_err() {
        return false;
    }
    if let Some(then) = out.then {
        then();
    }
    true
}

async fn write_all(wr: &mut OwnedWriteHalf, frames: Vec<Frame>) -> bool {
    for frame in frames {
        if !write(wr, Out { frame, then: None }).await {
            return false;
        }
    }
    true
}

/// The one writer of a framed connection, until the peer goes away or every sender is gone.
/// Each round writes the grants added so far, then the queued frames, then the closes added
/// before those frames were taken — so a grant goes out ahead of frames queued after it, and
/// a `Close` never overtakes its stream's `Start`. It starts with a lone delimiter: the peer
/// may hold half a frame from an earlier writer (a restored guest never saw its old host
/// leave); this ends it as a bad frame.
pub fn spawn_writer(mut wr: OwnedWriteHalf, mut rx: OutboxRx) -> JoinHandle<()> {
    tokio::spawn(async move {
        if wr.write_all(&[0]).await.is_err() {
            return;
        }
        // A frame received while idle, written in the next round.
        let mut next: Option<Out> = None;
        loop {
            let (credits, closes) = rx.side_frames();
            let mut wrote = !credits.is_empty() || !closes.is_empty();
            if !write_all(&mut wr, credits).await {
                return;
            }
            // At most what was queued when the closes were taken (the queue's capacity and
            // `next`), so a sender that keeps the queue full cannot hold back grants.
            for _ in 0..=OUT_QUEUE {
                let Some(out) = next.take().or_else(|| rx.rx.try_recv().ok()) else {
                    break;
                };
                wrote = true;
                if !write(&mut wr, out).await {
                    return;
                }
            }
            if !write_all(&mut wr, closes).await {
                return;
            }
            if wrote {
                continue;
            }
            tokio::select! {
                out = rx.rx.recv() => match out {
                    Some(out) => next = Some(out),
                    None => {
                        let (credits, closes) = rx.side_frames();
                        let _ = write_all(&mut wr, credits).await && write_all(&mut wr, closes).await;
                        return;
                    }
                },
                _ = rx.shared.wake.notified() => {}
            }
        }
    })
}
