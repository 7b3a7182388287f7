//! The host channel: one virtio-serial port named [`fcvm_proto::PORT_NAME`] (DESIGN §4).
//!
//! 1. [`open_port`] finds `/sys/class/virtio-ports/vport*/name` == `fcvm.agent` and opens
//!    `/dev/<vportNpM>` once (the port allows a single opener); the writer gets a `dup`.
//! 2. The writer thread owns all writes: every other thread queues encoded frames through an
//!    [`Outbox`]. Writes block while no host is connected (virtio_console does that) and a
//!    failed write drops its frame; each frame is preceded by a 0x00 so a torn earlier frame
//!    can never swallow it.
//! 3. [`read_loop`] feeds the codec; a read of 0 bytes means no host is connected right now:
//!    it drops any partial frame, retries after a few ms and never gives up. (A restored guest
//!    may never see that EOF: the host should start with a 0x00 to end any stale partial frame.)

use crate::error::{Error, Result};
use fcvm_proto::codec::{encode, CodecError, Decoder};
use fcvm_proto::{Frame, PORT_NAME};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Output queued beyond this makes the stream pumps wait (backpressure while no host reads).
const CONGESTED_BYTES: usize = 4 << 20;

/// The sending side of the writer thread; cheap to clone, shared by every thread.
#[derive(Clone)]
pub struct Outbox {
    tx: Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

impl Outbox {
    /// Creates an outbox and the receiver the writer thread drains.
    pub fn new() -> (Outbox, Receiver<Vec<u8>>, Arc<AtomicUsize>) {
        let (tx, rx) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Outbox {
                tx,
                queued: queued.clone(),
            },
            rx,
            queued,
        )
    }

    /// Queues one frame (console-logs frames that do not encode; never blocks).
    pub fn send(&self, frame: Frame) {
        match encode(&frame) {
            Ok(mut bytes) => {
                bytes.insert(0, 0);
                self.queued.fetch_add(bytes.len(), Ordering::SeqCst);
                let _ = self.tx.send(bytes);
            }
            Err(e) => {
                crate::console::console(&format!("dropping a frame that does not encode: {e}"))
            }
        }
    }

    /// Bytes queued but not yet written.
    pub fn pending(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Whether so much output waits that producers should pause.
    pub fn congested(&self) -> bool {
        self.queued.load(Ordering::SeqCst) > CONGESTED_BYTES
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
