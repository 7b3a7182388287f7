//! The host channel: one virtio-serial port named [`fcvm_proto::PORT_NAME`] (DESIGN §4).
//!
//! 1. [`open_port`] finds `/sys/class/virtio-ports/vport*/name` == `fcvm.agent` and opens
//!    `/dev/<vportNpM>` once (the port allows a single opener); the writer gets a `dup`.
//! 2. The writer thread owns all writes: every other thread queues encoded frames through an
//!    [`Outbox`]. Writes block while no host is connected (virtio_console does that) and a
//!    failed write drops its frame; each frame is preceded by a 0x00 so a torn earlier frame
//!    can never swallow it. The queue is bounded ([`QUEUE_FRAMES`]); when it is full, because
//!    the host reads slower than the agent writes or no host is connected:
//!    - process output waits (the pump blocks; what one stream can have queued is bounded by
//!      its output credit anyway, see `fcvm_proto`'s flow control), and so does every other
//!      frame (replies, `Started`, `Exit`, stdin `Credit`: few, and each answers the host);
//!    - `Log` frames are dropped and counted instead ([`Outbox::send_log`]): logging never
//!      blocks the session or a thread that holds a lock; the next Log frame that fits says
//!      how many were lost.
//! 3. [`read_loop`] feeds the codec; a read of 0 bytes means no host is connected right now:
//!    it drops any partial frame, retries after a few ms and never gives up. (A restored guest
//!    may never see that EOF: the host should start with a 0x00 to end any stale partial frame.)

use crate::error::{Error, Result};
use fcvm_proto::codec::{encode, CodecError, Decoder};
use fcvm_proto::{Frame, PORT_NAME};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Frames the writer queue holds (at most ~32 KiB each: ~4 MiB of output, the most any
/// number of streams can have waiting; a single stream has at most its credit, 256 KiB).
pub const QUEUE_FRAMES: usize = 128;

/// The sending side of the writer thread; cheap to clone, shared by every thread.
#[derive(Clone)]
pub struct Outbox {
    tx: SyncSender<Vec<u8>>,
    /// Bytes queued and not yet written (for [`crate::log::flush`]).
    queued: Arc<AtomicUsize>,
    /// Log frames dropped because the queue was full, not yet reported.
    dropped_logs: Arc<AtomicU64>,
}

impl Outbox {
    /// Creates an outbox of [`QUEUE_FRAMES`] and the receiver the writer thread drains.
    pub fn new() -> (Outbox, Receiver<Vec<u8>>, Arc<AtomicUsize>) {
        Outbox::with_capacity(QUEUE_FRAMES)
    }

    /// Creates an outbox that holds `frames` frames.
    pub fn with_capacity(frames: usize) -> (Outbox, Receiver<Vec<u8>>, Arc<AtomicUsize>) {
        let (tx, rx) = sync_channel(frames);
        let queued = Arc::new(AtomicUsize::new(0));
        let out = Outbox {
            tx,
            queued: queued.clone(),
            dropped_logs: Arc::default(),
        };
        (out, rx, queued)
    }

    /// Queues one frame, waiting while the queue is full (console-logs a frame that does not
    /// encode).
    pub fn send(&self, frame: Frame) {
        if let Some(bytes) = self.encode(&frame) {
            let n = bytes.len();
            self.queued.fetch_add(n, Ordering::SeqCst);
            if self.tx.send(bytes).is_err() {
                self.queued.fetch_sub(n, Ordering::SeqCst);
            }
        }
    }

    /// Queues a `Log` frame unless the queue is full: then it is dropped and counted (see the
    /// module docs). Returns whether it was queued.
    pub fn send_log(&self, frame: Frame) -> bool {
        let Some(bytes) = self.encode(&frame) else {
            return false;
        };
        let n = bytes.len();
        self.queued.fetch_add(n, Ordering::SeqCst);
        match self.tx.try_send(bytes) {
            Ok(()) => true,
            Err(_) => {
                self.queued.fetch_sub(n, Ordering::SeqCst);
                self.dropped_logs.fetch_add(1, Ordering::SeqCst);
                false
            }
        }
    }

    /// Log frames dropped since the last call.
    pub fn take_dropped_logs(&self) -> u64 {
        self.dropped_logs.swap(0, Ordering::SeqCst)
    }

    /// Counts `n` dropped Log frames again (their report did not fit either).
    pub fn count_dropped_logs(&self, n: u64) {
        self.dropped_logs.fetch_add(n, Ordering::SeqCst);
    }

    /// The frame's bytes with the leading delimiter.
    fn encode(&self, frame: &Frame) -> Option<Vec<u8>> {
        match encode(frame) {
            Ok(mut bytes) => {
                bytes.insert(0, 0);
                Some(bytes)
            }
            Err(e) => {
                let why = crate::error::Report(&e);
                crate::console::console(&format!("dropping a frame that does not encode: {why}"));
                None
            }
        }
    }

    /// Bytes queued but not yet written.
    pub fn pending(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

/// Finds and opens the agent port, waiting up to `timeout` for the device to appear.
pub fn open_port(timeout: Duration) -> Result<File> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(dev) = find_port() {
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)
                .map_err(|e| Error::Open(dev.into(), e));
        }
        if Instant::now() > deadline {
            return Err(Error::NoPort);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn find_port() -> Option<String> {
    for e in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            let dev = format!("/dev/{}", e.file_name().to_string_lossy());
            if std::path::Path::new(&dev).exists() {
                return Some(dev);
            }
        }
    }
    None
}

/// Starts the writer thread on a duplicate of `port`.
pub fn start_writer(port: &File, rx: Receiver<Vec<u8>>, queued: Arc<AtomicUsize>) -> Result<()> {
    // SAFETY: dup of an fd we own; the result is owned by the new File.
    let fd = unsafe { libc::fcntl(port.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(Error::Dup(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let mut w = unsafe { File::from_raw_fd(fd) };
    std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            for bytes in rx {
                if let Err(e) = w.write_all(&bytes) {
                    crate::console::console(&format!("channel write failed, frame dropped: {e}"));
                }
                queued.fetch_sub(bytes.len(), Ordering::SeqCst);
            }
        })
        .map(|_| ())
        .map_err(|e| Error::Thread("writer", e))
}

/// Reads frames forever, handing each decoded frame (or codec error) to `on_frame`.
pub fn read_loop(mut port: File, mut on_frame: impl FnMut(Result<Frame, CodecError>)) -> ! {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut idle_ms = 1;
    loop {
        match port.read(&mut buf) {
            Ok(0) => {
                // No host connected: a partial frame of the host that left must not swallow
                // the next host's Hello. Retry soon (the next host starts with Hello).
                dec.reset();
                std::thread::sleep(Duration::from_millis(idle_ms));
                idle_ms = (idle_ms * 2).min(8);
            }
            Ok(n) => {
                idle_ms = 1;
                dec.feed(&buf[..n]);
                while let Some(f) = dec.next_frame() {
                    on_frame(f);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::console::console(&format!("channel read failed: {e}"));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fcvm_proto::{LogLevel, Msg};

    fn log(m: &str) -> Frame {
        Frame::control(Msg::Log {
            level: LogLevel::Info,
            message: m.into(),
        })
    }

    fn output(b: u8) -> Frame {
        Frame {
            stream: 3,
            msg: Msg::Stdout(vec![b; 10]),
        }
    }

    #[test]
    fn a_full_queue_drops_log_frames_and_makes_other_senders_wait() {
        let (out, rx, queued) = Outbox::with_capacity(2);
        assert!(out.send_log(log("kept")));
        out.send(output(1));
        assert!(!out.send_log(log("dropped")), "the queue is full");
        assert!(!out.send_log(log("dropped too")));
        assert_eq!(out.take_dropped_logs(), 2);
        assert_eq!(out.take_dropped_logs(), 0, "counted once");
        // Output waits for room instead.
        let o = out.clone();
        let t = std::thread::spawn(move || o.send(output(2)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!t.is_finished(), "the sender waits while the queue is full");
        // The writer takes a frame (and counts it written, as the writer thread does).
        let take = || {
            let b = rx.recv().unwrap();
            queued.fetch_sub(b.len(), Ordering::SeqCst);
            b
        };
        let first = take();
        t.join().unwrap();
        let mut d = Decoder::new();
        for b in [first, take(), take()] {
            d.feed(&b);
        }
        let got: Vec<Frame> = std::iter::from_fn(|| d.next_frame())
            .map(|f| f.unwrap())
            .collect();
        assert_eq!(got, [log("kept"), output(1), output(2)]);
        assert_eq!(out.pending(), 0, "dropped frames are not counted as queued");
    }
}
