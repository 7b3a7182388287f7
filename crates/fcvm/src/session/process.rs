//! One process stream as its consumer sees it: frames out of a bounded queue, sends into the
//! connection's [`Outbox`], and the output credit given back as the consumer drains.
//!
//! By default [`Process::recv`] grants the peer more output as soon as it hands a chunk out
//! (right for consumers that keep nothing: health checks, benchmarks). A consumer that hands
//! output on to a writer that may block — a terminal, a pipe, an exec client's socket — takes
//! the [`Credit`] with [`Process::manual_credit`] and grants only once the bytes are written:
//! then a reader that stops reading stops its own stream and nothing else.

use std::sync::Arc;

use fcvm_proto::{Frame, Msg};

use super::inbound::Streams;
use super::outbox::{Outbox, Permit};
use super::queue::{is_final, StreamQueue};

/// One process stream. Dropping it before the process ended sends `Close` (the agent kills it).
pub struct Process {
    pub id: u32,
    queue: Arc<StreamQueue>,
    out: Outbox,
    streams: Streams,
    done: bool,
    manual: bool,
}

impl Process {
    pub(super) fn new(id: u32, queue: Arc<StreamQueue>, out: Outbox, streams: Streams) -> Process {
        Process {
            id,
            queue,
            out,
            streams,
            done: false,
            manual: false,
        }
    }

    /// Next frame of this stream; `None` when the connection is gone.
    pub async fn recv(&mut self) -> Option<Msg> {
        let m = self.queue.recv().await;
        match &m {
            Some(Msg::Stdout(d) | Msg::Stderr(d)) if !self.manual => self.credit().drained(d.len()),
            Some(m) if !is_final(m) => {}
            _ => self.done = true,
        }
        m
    }

    /// From now on output is granted back only through the returned handle's
    /// [`Credit::drained`], by whoever writes it out.
    pub fn manual_credit(&mut self) -> Credit {
        self.manual = true;
        self.credit()
    }

    fn credit(&self) -> Credit {
        Credit {
            id: self.id,
            queue: self.queue.clone(),
            out: self.out.clone(),
        }
    }

    /// Waits for the agent's `Started` (for the container: crun has created it, so execs can
    /// join it). Frames that arrive first stay queued for `recv`. Returns false if the
    /// process ended (or the connection dropped) without starting.
    pub async fn wait_started(&mut self) -> bool {
        self.queue.wait_started().await
    }

    /// Sends on this stream, waiting for room; false once the connection is gone.
    pub async fn send(&self, msg: Msg) -> bool {
        self.sender().send(msg).await
    }

    /// A handle that sends on this stream while another task receives.
    pub fn sender(&self) -> ProcessSender {
        ProcessSender {
            id: self.id,
            out: self.out.clone(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.streams.remove(self.id);
        if !self.done {
            self.out.close(self.id);
        }
    }
}

#[derive(Clone)]
pub struct ProcessSender {
    id: u32,
    out: Outbox,
}

impl ProcessSender {
    fn frame(&self, msg: Msg) -> Frame {
        Frame {
            stream: self.id,
            msg,
        }
    }

    /// Sends, waiting for room; false once the connection is gone.
    pub async fn send(&self, msg: Msg) -> bool {
        self.out.send(self.frame(msg)).await
    }

    /// Sends if there is room now (signals, resizes: a peer that does not read gets none).
    pub fn try_send(&self, msg: Msg) -> bool {
        self.out.try_send(self.frame(msg))
    }

    /// Waits for room for one frame on this stream (cancel-safe, for `select!`).
    pub async fn reserve(&self) -> Option<StreamPermit<'_>> {
        let p = self.out.reserve().await?;
        Some(StreamPermit { id: self.id, p })
    }
}

pub struct StreamPermit<'a> {
    id: u32,
    p: Permit<'a>,
}

impl StreamPermit<'_> {
    pub fn send(self, msg: Msg) {
        self.p.send(Frame {
            stream: self.id,
            msg,
        });
    }
}

/// Grants a stream's peer output credit as its consumer writes the output out. Cheap to
/// clone and usable from any thread.
#[derive(Clone)]
pub struct Credit {
    id: u32,
    queue: Arc<StreamQueue>,
    out: Outbox,
}

impl Credit {
    /// `n` bytes of this stream's output were written out.
    pub fn drained(&self, n: usize) {
        if let Some(grant) = self.queue.drained(n) {
            self.out.credit(self.id, grant);
        }
    }
}
