//! This process's stdout and stderr, written on a thread of their own.
//!
//! A write to a pipe nobody reads blocks for as long as nobody reads; on the runtime's one
//! thread it would stop everything else this process does (execs it serves, signals, the
//! VM's teardown). Here only this thread blocks: output waits in a queue of [`QUEUE`]
//! chunks, and the stream's output credit is granted back as each chunk is written
//! ([`Credit::drained`]), so a stalled reader stops the guest process, not this one. A
//! process being stopped may have its queued output dropped ([`Output::discard`]): its
//! credit then lets the guest drain the rest and report the exit.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::{oneshot, Notify};

use crate::session::Credit;

/// Chunks (of at most `MAX_CHUNK` bytes each) waiting to be written.
const QUEUE: usize = 8;

/// Output bound for stdout or stderr.
pub enum Chunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

impl Chunk {
    pub fn len(&self) -> usize {
        match self {
            Chunk::Stdout(d) | Chunk::Stderr(d) => d.len(),
        }
    }
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    /// Nothing more comes: the writer ends once the queue is empty.
    closed: bool,
    /// The writer thread is gone (or never started).
    gone: bool,
    /// Since when the writer has been in its current write.
    writing: Option<Instant>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here for chunks.
    more: Condvar,
    /// The producer waits here for room.
    room: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Output {
    shared: Arc<Shared>,
    credit: Credit,
    done: oneshot::Receiver<()>,
}

/// Writes all of `buf` to `fd`, waiting out a non-blocking descriptor's EAGAIN.
fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> nix::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                poll(&mut fds, PollTimeout::NONE)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The writer thread: chunks in order until the queue is closed and empty. A descriptor that
/// fails (EPIPE: the reader went away) gets nothing more, as with `cat`; its chunks are still
/// credited, so the process can finish.
fn writer(shared: Arc<Shared>, credit: Credit, done: oneshot::Sender<()>) {
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let mut broken = [false; 2];
    loop {
        let chunk = {
            let mut q = shared.lock();
            loop {
                if let Some(c) = q.chunks.pop_front() {
                    q.writing = Some(Instant::now());
                    break Some(c);
                }
                if q.closed {
                    break None;
                }
                q = shared.more.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        shared.room.notify_one();
        let Some(chunk) = chunk else {
            break;
        };
        let (i, fd, data) = match &chunk {
            Chunk::Stdout(d) => (0, stdout.as_fd(), d),
            Chunk::Stderr(d) => (1, stderr.as_fd(), d),
        };
        if !broken[i] && write_all(fd, data).is_err() {
            broken[i] = true;
        }
        shared.lock().writing = None;
        credit.drained(chunk.len());
    }
    shared.lock().gone = true;
    let _ = done.send(());
}

impl Output {
    /// Starts the writer; `credit` is granted each chunk's length once it is written (or
    /// dropped).
    pub fn spawn(credit: Credit) -> Output {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            more: Condvar::new(),
            room: Notify::new(),
        });
        let (done_tx, done) = oneshot::channel();
        let (s, c) = (shared.clone(), credit.clone());
        // A plain thread, not tokio's blocking pool: a write that never returns must not
        // hold up the runtime's shutdown.
        let spawned = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || writer(s, c, done_tx));
        if let Err(e) = spawned {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "no output thread: output is dropped"
            );
            shared.lock().gone = true;
        }
        Output {
            shared,
            credit,
            done,
        }
    }

    /// Queues a chunk if there is room; gives it back if there is none. Without a writer the
    /// chunk is dropped (and credited).
    pub fn try_send(&self, chunk: Chunk) -> Result<(), Chunk> {
        let mut q = self.shared.lock();
        if q.gone {
            drop(q);
            self.credit.drained(chunk.len());
            return Ok(());
        }
        if q.chunks.len() >= QUEUE {
            return Err(chunk);
        }
        q.chunks.push_back(chunk);
        drop(q);
        self.shared.more.notify_one();
        Ok(())
    }

    /// Resolves once there is room for a chunk (cancel-safe).
    pub async fn room(&self) {
        loop {
            {
                let q = self.shared.lock();
                if q.gone || q.chunks.len() < QUEUE {
                    return;
                }
            }
            self.shared.room.notified().await;
        }
    }

    /// Whether one write has been blocked for longer than `limit` (its reader stalls).
    pub fn stalled(&self, limit: Duration) -> bool {
        let q = self.shared.lock();
        q.writing.is_some_and(|t| t.elapsed() > limit)
    }

    /// Drops what is queued and not being written yet, and credits it.
    pub fn discard(&self) {
        let n: usize = self.shared.lock().chunks.drain(..).map(|c| c.len()).sum();
        self.credit.drained(n);
        self.shared.room.notify_one();
    }

    /// Queues `rest` after everything else and resolves once all of it is written.
    pub async fn finish(self, rest: impl IntoIterator<Item = Chunk>) {
        {
            let mut q = self.shared.lock();
            q.chunks.extend(rest);
            q.closed = true;
        }
        self.shared.more.notify_one();
        let _ = self.done.await;
    }
}
