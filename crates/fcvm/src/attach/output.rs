//! This process's stdout and stderr, written on a thread of their own.
//!
//! A write to a pipe nobody reads blocks for as long as nobody reads; on the runtime's one
//! thread it would stop everything else this process does (execs it serves, signals, the
//! VM's teardown). Here only this thread blocks: output waits in a queue of [`QUEUE`]
//! chunks, and the stream's output credit is granted back as each chunk is written
//! ([`Credit::drained`]), so a stalled reader stops the guest process, not this one.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::{mpsc, oneshot};

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

pub struct Output {
    tx: mpsc::Sender<Chunk>,
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

impl Output {
    /// Starts the writer; `credit` is granted each chunk's length once it is written (or
    /// dropped because its descriptor is broken: the process must still be able to finish).
    pub fn spawn(credit: Credit) -> Output {
        let (tx, mut rx) = mpsc::channel::<Chunk>(QUEUE);
        let (done_tx, done) = oneshot::channel();
        // A plain thread, not tokio's blocking pool: a write that never returns must not
        // hold up the runtime's shutdown.
        let spawned = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
                let mut broken = [false; 2];
                while let Some(chunk) = rx.blocking_recv() {
                    let n = chunk.len();
                    let (i, fd, data) = match &chunk {
                        Chunk::Stdout(d) => (0, stdout.as_fd(), d),
                        Chunk::Stderr(d) => (1, stderr.as_fd(), d),
                    };
                    // A reader that went away (EPIPE) gets nothing more, as with `cat`.
                    if !broken[i] && write_all(fd, data).is_err() {
                        broken[i] = true;
                    }
                    credit.drained(n);
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "no output thread: output is dropped"
            );
        }
        Output { tx, done }
    }

    /// Waits for room for one chunk (cancel-safe); `None` if the writer is gone.
    pub async fn reserve(&self) -> Option<mpsc::Permit<'_, Chunk>> {
        self.tx.reserve().await.ok()
    }

    /// Queues a chunk if there is room now; gives it back if there is none.
    pub fn try_send(&self, chunk: Chunk) -> Result<(), Chunk> {
        self.tx.try_send(chunk).map_err(|e| match e {
            mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
        })
    }

    /// Queues `rest` after everything else and resolves once all of it is written.
    pub async fn finish(self, rest: impl IntoIterator<Item = Chunk>) {
        for c in rest {
            let _ = self.tx.send(c).await;
        }
        drop(self.tx);
        let _ = self.done.await;
    }
}
