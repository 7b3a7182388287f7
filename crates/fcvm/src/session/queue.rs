//! The receive queues of a session, each bounded whatever its peer sends (docs/design.md,
//! "Backpressure").
//!
//! A process stream's output is credit-limited (protocol 5): the peer may send
//! [`INITIAL_OUTPUT_CREDIT`] bytes of `Stdout`/`Stderr` payload, and more only as the host
//! grants it with `Credit(n)` — which it does as its consumer drains the queue
//! ([`StreamQueue::drained`]), never ahead of it. So a [`StreamQueue`] holds at most the credit
//! outstanding; a peer that sends beyond it has broken the protocol, and its stream ends
//! ([`Push::Overrun`]) instead of growing. Every other message a stream takes is either
//! merged (`Credit`) or taken once (`Started`, the final frame), so the number of entries is
//! bounded too. The control queue keeps the newest [`CONTROL_QUEUE`] replies.
//!
//! No I/O here: the session's reader pushes, its consumers pop (`recv` waits on a `Notify`).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use fcvm_proto::{ErrorKind, Msg, INITIAL_OUTPUT_CREDIT, MAX_CHUNK};
use tokio::sync::Notify;

/// Drained bytes are granted back in steps of at least this much (one `Credit` frame each).
pub const GRANT_STEP: u64 = 64 * 1024;

/// Control replies kept while nobody waits for one; the oldest goes first.
pub const CONTROL_QUEUE: usize = 64;

/// Entries a stream queue holds before new output merges into an earlier entry of its kind
/// (reordering stdout against stderr only under pressure: the two are separate pipes in the
/// guest, whose relative order is never exact anyway).
const MERGE_AFTER: usize = 256;

/// Most output bytes a stream queue can hold: an attached stream's allowance.
pub const MAX_HELD: usize = 2 * INITIAL_OUTPUT_CREDIT as usize;

/// Most entries a stream queue can hold: past [`MERGE_AFTER`], an entry of one kind is added
/// only when the last one of its kind cannot take the new output, so any two such entries in
/// a row hold more than `MAX_CHUNK`; plus `Started`, `Credit` and the final frame.
pub const MAX_ENTRIES: usize = MERGE_AFTER + 2 * (2 * (MAX_HELD / MAX_CHUNK) + 2) + 3;

/// What a stream carries: a process's output, or one answer (a probe's or a file request's;
/// no output at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Process,
    /// A process that ran under an earlier epoch (the container of a restored VM): output the
    /// agent had queued for the old host may still come, on top of the new initial credit.
    Attached,
    Probe,
}

/// What became of a pushed message.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Not for this stream (or after its final frame): ignored.
    Dropped,
    /// Output beyond the credit granted: the stream must end.
    Overrun,
}

#[derive(Debug)]
struct State {
    kind: StreamKind,
    q: VecDeque<Msg>,
    /// Payload bytes the peer may still send: initial credit + grants − bytes received.
    allowance: u64,
    /// Bytes the consumer drained that were not granted back yet.
    ungranted: u64,
    /// Payload bytes held in `q`.
    held: usize,
    started: bool,
    /// A final frame was queued (or the stream failed): nothing more is taken.
    ended: bool,
    /// The connection is gone: `recv` returns what is queued, then `None`.
    closed: bool,
}

/// One stream's frames from the peer, in order, for one consumer.
#[derive(Debug)]
pub struct StreamQueue {
    state: Mutex<State>,
    ready: Notify,
}

fn payload(m: &Msg) -> Option<&Vec<u8>> {
    match m {
        Msg::Stdout(d) | Msg::Stderr(d) => Some(d),
        _ => None,
    }
}

/// Appends `data` to `entry` if it is output of the same kind with room for it.
fn merge(entry: &mut Msg, stderr: bool, data: &[u8]) -> bool {
    match (entry, stderr) {
        (Msg::Stdout(d), false) | (Msg::Stderr(d), true) if d.len() + data.len() <= MAX_CHUNK => {
            d.extend_from_slice(data);
            true
        }
        _ => false,
    }
}

pub(crate) fn is_final(m: &Msg) -> bool {
    matches!(
        m,
        Msg::Exit { .. }
            | Msg::Error { .. }
            | Msg::HttpStatus { .. }
            | Msg::FsReply(_)
            | Msg::FsError { .. }
    )
}

impl StreamQueue {
    pub fn new(kind: StreamKind) -> StreamQueue {
        let allowance = match kind {
            StreamKind::Process => INITIAL_OUTPUT_CREDIT as u64,
            StreamKind::Attached => MAX_HELD as u64,
            StreamKind::Probe => 0,
        };
        StreamQueue {
            state: Mutex::new(State {
                kind,
                q: VecDeque::new(),
                allowance,
                ungranted: 0,
                held: 0,
                started: false,
                ended: false,
                closed: false,
            }),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind: keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one message from the peer.
    pub fn push(&self, msg: Msg) -> Push {
        let mut s = self.lock();
        if s.ended || s.closed {
            return Push::Dropped;
        }
        let process = s.kind != StreamKind::Probe;
        match msg {
            Msg::Stdout(d) | Msg::Stderr(d) if d.is_empty() => return Push::Dropped,
            Msg::Stdout(d) | Msg::Stderr(d) if d.len() as u64 > s.allowance => {
                return Push::Overrun
            }
            Msg::Stdout(data) => s.push_output(false, data),
            Msg::Stderr(data) => s.push_output(true, data),
            Msg::Credit(n) if process => match s.q.iter_mut().find(|m| matches!(m, Msg::Credit(_)))
            {
                Some(Msg::Credit(c)) => *c = c.saturating_add(n),
                _ => s.q.push_back(Msg::Credit(n)),
            },
            Msg::Started { .. } if process && !s.started => {
                s.started = true;
                s.q.push_back(msg);
            }
            Msg::HttpStatus { .. } | Msg::FsReply(_) | Msg::FsError { .. } if process => {
                return Push::Dropped
            }
            Msg::Exit { .. } if !process => return Push::Dropped,
            m if is_final(&m) => {
                s.ended = true;
                s.q.push_back(m);
            }
            _ => return Push::Dropped,
        }
        drop(s);
        self.ready.notify_one();
        Push::Queued
    }

    /// Ends the stream with an error of ours (its queued output is dropped with it); after
    /// the error `recv` returns `None`.
    pub fn fail(&self, message: String) {
        let mut s = self.lock();
        s.q.retain(|m| payload(m).is_none());
        s.held = 0;
        s.ended = true;
        s.closed = true;
        s.q.push_back(Msg::Error {
            kind: ErrorKind::Failed,
            message,
        });
        drop(s);
        self.ready.notify_one();
    }

    /// The connection is gone: the consumer gets what is queued, then `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// The next message; `None` once the connection is gone and the queue is empty.
    pub async fn recv(&self) -> Option<Msg> {
        loop {
            if let Poll::Ready(m) = self.try_recv() {
                return m;
            }
            self.ready.notified().await;
        }
    }

    /// The next message if there is one (`Pending` if not yet).
    pub fn try_recv(&self) -> Poll<Option<Msg>> {
        let mut s = self.lock();
        if let Some(m) = s.q.pop_front() {
            if let Some(d) = payload(&m) {
                s.held -= d.len();
            }
            return Poll::Ready(Some(m));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Waits for `Started` and takes it out, leaving what came before it queued. False if the
    /// stream ended (or the connection dropped) without it.
    pub async fn wait_started(&self) -> bool {
        loop {
            {
                let mut s = self.lock();
                if let Some(i) = s.q.iter().position(|m| matches!(m, Msg::Started { .. })) {
                    s.q.remove(i);
                    return true;
                }
                if s.ended || s.closed {
                    return false;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The consumer has written `n` bytes of output out: returns the credit to grant now
    /// (in steps of [`GRANT_STEP`]), already counted as allowed before the caller sends it,
    /// so the peer can never use a grant the queue does not know of.
    pub fn drained(&self, n: usize) -> Option<u32> {
        let mut s = self.lock();
        s.ungranted += n as u64;
        if s.ungranted < GRANT_STEP || s.ended || s.closed {
            return None;
        }
        let grant = s.ungranted.min(u32::MAX as u64);
        s.ungranted -= grant;
        s.allowance += grant;
        Some(grant as u32)
    }

    /// (entries, payload bytes) held: for tests and the fuzz target's bounds.
    pub fn held(&self) -> (usize, usize) {
        let s = self.lock();
        (s.q.len(), s.held)
    }
}

impl State {
    fn push_output(&mut self, stderr: bool, data: Vec<u8>) {
        self.allowance -= data.len() as u64;
        self.held += data.len();
        if let Some(last) = self.q.back_mut() {
            if merge(last, stderr, &data) {
                return;
            }
        }
        if self.q.len() >= MERGE_AFTER {
            let same = |m: &Msg| {
                matches!(
                    (m, stderr),
                    (Msg::Stdout(_), false) | (Msg::Stderr(_), true)
                )
            };
            if let Some(i) = self.q.iter().rposition(same) {
                if merge(&mut self.q[i], stderr, &data) {
                    return;
                }
            }
        }
        self.q.push_back(if stderr {
            Msg::Stderr(data)
        } else {
            Msg::Stdout(data)
        });
    }
}

/// Control replies (stream 0), newest kept.
#[derive(Debug, Default)]
pub struct ControlQueue {
    state: Mutex<(VecDeque<Msg>, bool)>,
    ready: Notify,
}

impl ControlQueue {
    fn lock(&self) -> MutexGuard<'_, (VecDeque<Msg>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a reply; returns false if an older one had to go to make room.
    pub fn push(&self, msg: Msg) -> bool {
        let mut s = self.lock();
        let full = s.0.len() >= CONTROL_QUEUE;
        if full {
            s.0.pop_front();
        }
        s.0.push_back(msg);
        drop(s);
        self.ready.notify_one();
        !full
    }

    pub fn close(&self) {
        self.lock().1 = true;
        self.ready.notify_one();
    }

    pub async fn recv(&self) -> Option<Msg> {
        loop {
            {
                let mut s = self.lock();
                if let Some(m) = s.0.pop_front() {
                    return Some(m);
                }
                if s.1 {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Replies held (for tests and the fuzz target's bounds).
    pub fn held(&self) -> usize {
        self.lock().0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(n: usize) -> Msg {
        Msg::Stdout(vec![b'x'; n])
    }

    fn pop(q: &StreamQueue) -> Option<Msg> {
        match q.try_recv() {
            Poll::Ready(m) => m,
            Poll::Pending => None,
        }
    }

    #[test]
    fn output_within_credit_then_overrun() {
        let q = StreamQueue::new(StreamKind::Process);
        let chunk = MAX_CHUNK;
        for _ in 0..INITIAL_OUTPUT_CREDIT as usize / chunk {
            assert_eq!(q.push(out(chunk)), Push::Queued);
        }
        assert_eq!(q.held().1, INITIAL_OUTPUT_CREDIT as usize);
        assert_eq!(q.push(out(1)), Push::Overrun);
        // Drained output is granted back in steps, and only then may more come.
        for _ in 0..2 {
            pop(&q);
        }
        assert_eq!(q.drained(GRANT_STEP as usize - 1), None);
        assert_eq!(q.drained(1), Some(GRANT_STEP as u32));
        assert_eq!(q.push(out(chunk)), Push::Queued);
        assert_eq!(q.push(out(chunk)), Push::Queued);
        assert_eq!(q.push(out(1)), Push::Overrun);
    }

    #[test]
    fn small_output_merges_and_entries_stay_bounded() {
        let q = StreamQueue::new(StreamKind::Process);
        // Alternating one-byte chunks defeat merging with the last entry: past MERGE_AFTER
        // they merge further back instead of adding entries.
        for i in 0..INITIAL_OUTPUT_CREDIT as usize {
            let m = if i % 2 == 0 {
                Msg::Stdout(vec![1])
            } else {
                Msg::Stderr(vec![2])
            };
            assert_eq!(q.push(m), Push::Queued);
        }
        let (entries, bytes) = q.held();
        assert_eq!(bytes, INITIAL_OUTPUT_CREDIT as usize);
        assert!(
            entries <= MERGE_AFTER + 2 * bytes / MAX_CHUNK + 2,
            "{entries}"
        );
        // Same-kind output in a row is one entry.
        let q = StreamQueue::new(StreamKind::Process);
        for _ in 0..100 {
            q.push(out(10));
        }
        assert_eq!(q.held(), (1, 1000));
    }

    #[test]
    fn one_started_one_final_credits_merged() {
        let q = StreamQueue::new(StreamKind::Process);
        let started = Msg::Started {
            pid: 1,
            spawn_us: 0,
        };
        assert_eq!(q.push(started.clone()), Push::Queued);
        assert_eq!(q.push(started), Push::Dropped);
        for _ in 0..1000 {
            assert_eq!(q.push(Msg::Credit(u32::MAX)), Push::Queued);
        }
        assert_eq!(q.push(Msg::HttpStatus { code: 200 }), Push::Dropped);
        assert_eq!(
            q.push(Msg::Hello {
                epoch: 1,
                version: 1,
                random_seed: vec![]
            }),
            Push::Dropped
        );
        assert_eq!(q.push(Msg::Exit { code: 0, run_us: 0 }), Push::Queued);
        assert_eq!(q.push(out(1)), Push::Dropped);
        assert_eq!(q.held().0, 3);
        assert!(matches!(pop(&q), Some(Msg::Started { .. })));
        assert_eq!(pop(&q), Some(Msg::Credit(u32::MAX)));
    }

    #[test]
    fn probe_takes_no_output() {
        let q = StreamQueue::new(StreamKind::Probe);
        assert_eq!(q.push(out(1)), Push::Overrun);
        assert_eq!(q.push(Msg::Exit { code: 0, run_us: 0 }), Push::Dropped);
        assert_eq!(q.push(Msg::HttpStatus { code: 204 }), Push::Queued);
    }

    #[tokio::test]
    async fn fail_and_close_end_the_consumer() {
        let q = StreamQueue::new(StreamKind::Process);
        q.push(out(5));
        q.push(Msg::Started {
            pid: 1,
            spawn_us: 0,
        });
        q.fail("broken".into());
        assert!(q.wait_started().await);
        assert!(matches!(q.recv().await, Some(Msg::Error { message, .. }) if message == "broken"));
        let q = StreamQueue::new(StreamKind::Process);
        q.push(out(5));
        q.close();
        assert!(!q.wait_started().await);
        assert_eq!(q.recv().await, Some(out(5)));
        assert_eq!(q.recv().await, None);
    }

    #[test]
    fn control_keeps_the_newest() {
        let c = ControlQueue::default();
        for i in 0..1000 {
            c.push(Msg::RestoreComplete { epoch: i });
        }
        assert_eq!(c.held(), CONTROL_QUEUE);
        assert_eq!(
            c.lock().0.front(),
            Some(&Msg::RestoreComplete {
                epoch: 1000 - CONTROL_QUEUE as u64
            })
        );
    }
}
