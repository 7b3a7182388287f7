//! Process streams: one per `Start`, whatever its [`Target`].
//!
//! 1. [`command::check`]: the command (user, executable) inside the right root, so the host
//!    gets podman's error kinds before anything runs;
//! 2. by target, stdio wired (pipes, or a pty whose slave is all three) and the process
//!    spawned: [`container::run`] (the warm container's stand-in, or `crun run`),
//!    [`exec::start`] (`crun exec --process`), [`vm::start`] (the command itself),
//!    [`pod::run`] (`crun run` of a pod's further container, `crate::pods`) and
//!    [`exec::start_in`] for its execs;
//! 3. the [`Stream`] made, `Started{pid, spawn_us}` sent (for `crun run`: once the container
//!    exists) and its output and stdin threads ([`crate::pump`]) started on the pool.

mod command;
mod container;
mod exec;
mod pod;
mod spawn;
mod vm;

use crate::channel::Outbox;
use crate::error::{Error, Result};
use crate::pump::{pump, stdin_loop};
use crate::stream::{Handles, Stream, STDIN_QUEUE};
use fcvm_proto::{Msg, ProcessSpec, Target};
use spawn::{Announce, Spawned};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

/// Starts `spec` on stream `id` (see the module docs); `t0` is when Start arrived.
pub fn start(
    id: u32,
    spec: &ProcessSpec,
    target: &Target,
    out: &Outbox,
    t0: Instant,
) -> Result<Arc<Stream>> {
    let cmd = command::check(spec, target)?;
    let spawned = match target {
        Target::Container => container::run(spec, &cmd)?,
        Target::ContainerExec => exec::start(id, spec, &cmd)?,
        Target::Vm => vm::start(spec, &cmd)?,
        Target::PodContainer { id: pod, .. } => pod::run(pod, spec, &cmd, target)?,
        Target::PodExec { id: pod } => exec::start_in(id, spec, &cmd, pod)?,
    };
    attach(id, spec, target, out, t0, spawned)
}

/// Makes the stream of a spawned process and starts its threads.
fn attach(
    id: u32,
    spec: &ProcessSpec,
    target: &Target,
    out: &Outbox,
    t0: Instant,
    p: Spawned,
) -> Result<Arc<Stream>> {
    let spawn_us = t0.elapsed().as_micros() as u64;
    let (stdin_tx, stdin_rx) = sync_channel(STDIN_QUEUE);
    let stdin_tx = p.stdin.as_ref().map(|_| stdin_tx);
    let handles = Handles {
        pid: p.pid,
        pidfile: p.pidfile,
        stdin: stdin_tx,
        tty: p.tty,
    };
    let stream = Arc::new(Stream::new(id, target.clone(), handles, out, t0));
    match p.started {
        Announce::Now => stream.send(Msg::Started {
            pid: p.pid as u32,
            spawn_us,
        }),
        Announce::WhenCreated(size) => container::announce_when_created(stream.clone(), size),
    }
    // The pump first: after a restore it takes the thread started before the snapshot.
    let s = stream.clone();
    let (outputs, status, exited) = (p.outputs, p.status, crate::pump::pidfd(p.pid));
    crate::pool::run(Box::new(move || pump(&s, outputs, status, exited)))
        .map_err(|e| Error::Thread("output", e))?;
    if let Some(fd) = p.stdin {
        let s = stream.clone();
        let is_tty = spec.tty;
        let _ = crate::pool::run(Box::new(move || stdin_loop(&s, fd, stdin_rx, is_tty)));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fcvm_proto::codec::Decoder;
    use fcvm_proto::{Frame, INITIAL_OUTPUT_CREDIT};
    use std::sync::mpsc::Receiver;
    use std::time::Duration;

    /// What arrived on each stream: output bytes and exit code.
    #[derive(Default)]
    struct Seen {
        out: std::collections::HashMap<u32, Vec<u8>>,
        exit: std::collections::HashMap<u32, i32>,
    }

    impl Seen {
        /// Takes frames until `done` holds (true) or 10 s pass (false).
        fn until(&mut self, rx: &Receiver<Vec<u8>>, mut done: impl FnMut(&Seen) -> bool) -> bool {
            let mut d = Decoder::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !done(self) {
                if Instant::now() > deadline {
                    return false;
                }
                if let Ok(b) = rx.recv_timeout(Duration::from_millis(20)) {
                    d.feed(&b);
                }
                while let Some(Ok(Frame { stream, msg })) = d.next_frame() {
                    match msg {
                        Msg::Stdout(b) | Msg::Stderr(b) => {
                            self.out.entry(stream).or_default().extend(b)
                        }
                        Msg::Exit { code, .. } => {
                            self.exit.insert(stream, code);
                        }
                        _ => {}
                    }
                }
            }
            true
        }

        fn len(&self, id: u32) -> usize {
            self.out.get(&id).map_or(0, Vec::len)
        }
    }

    fn vm(args: &[&str]) -> ProcessSpec {
        ProcessSpec {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec!["PATH=/usr/bin:/bin".into()],
            ..Default::default()
        }
    }

    fn start_vm(id: u32, args: &[&str], out: &Outbox) -> Arc<Stream> {
        start(id, &vm(args), &Target::Vm, out, Instant::now()).expect("starts")
    }

    /// The output pump sends no more than its credit, stops reading while it has none (the
    /// process waits), and goes on with each grant; another stream meanwhile runs to its end.
    #[test]
    fn output_waits_for_credit_and_stalls_only_its_stream() {
        crate::reaper::start();
        let (out, rx, _) = Outbox::new();
        let initial = INITIAL_OUTPUT_CREDIT as usize;
        let big = start_vm(11, &["head", "-c", "1000000", "/dev/zero"], &out);
        let mut seen = Seen::default();
        assert!(
            seen.until(&rx, |s| s.len(11) >= initial),
            "the first credit's worth"
        );
        // Another stream is not held up by the stalled one.
        start_vm(12, &["echo", "other stream"], &out);
        assert!(seen.until(&rx, |s| s.exit.contains_key(&12)));
        assert_eq!(seen.out[&12], b"other stream\n");
        // Nothing more of the stalled stream, and no exit: `head` waits on its full pipe.
        std::thread::sleep(Duration::from_millis(300));
        assert!(seen.until(&rx, |_| true));
        assert_eq!(seen.len(11), initial, "no output beyond the credit");
        assert!(!seen.exit.contains_key(&11) && !big.finished());
        big.grant_output(1000);
        assert!(seen.until(&rx, |s| s.len(11) >= initial + 1000));
        std::thread::sleep(Duration::from_millis(100));
        assert!(seen.until(&rx, |_| true));
        assert_eq!(seen.len(11), initial + 1000, "exactly what was granted");
        big.grant_output(1_000_000);
        assert!(seen.until(&rx, |s| s.exit.contains_key(&11)), "it ends");
        assert_eq!(seen.exit[&11], 0);
        assert_eq!(seen.len(11), 1_000_000);
        assert!(seen.out[&11].iter().all(|&b| b == 0));
    }

    /// A cancelled stream's output is read and discarded, so a process that had no credit
    /// left runs to its end and its pump thread ends too.
    #[test]
    fn a_cancelled_stream_no_longer_waits_for_credit() {
        crate::reaper::start();
        let (out, rx, _) = Outbox::new();
        let s = start_vm(13, &["head", "-c", "2000000", "/dev/zero"], &out);
        let mut seen = Seen::default();
        let initial = INITIAL_OUTPUT_CREDIT as usize;
        assert!(seen.until(&rx, |s| s.len(13) >= initial));
        s.cancel();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(s.finished(), "the pump ended");
        assert!(seen.until(&rx, |_| true));
        assert_eq!(seen.len(13), initial, "nothing sent after the cancel");
        assert!(!seen.exit.contains_key(&13));
    }

    /// A process that exits while a child it left behind still holds its stdout: its exit
    /// is seen (the pidfd wakes the pump, which no timeout does while the process runs),
    /// its output sent, and `Exit` follows once the pipe stays quiet, long before the
    /// leftover ends.
    #[test]
    fn an_exit_is_seen_while_a_leftover_child_holds_the_pipe() {
        crate::reaper::start();
        let (out, rx, _) = Outbox::new();
        let t0 = Instant::now();
        start_vm(14, &["sh", "-c", "sleep 30 & echo done; exit 4"], &out);
        let mut seen = Seen::default();
        assert!(
            seen.until(&rx, |s| s.exit.contains_key(&14)),
            "Exit arrives"
        );
        assert_eq!(seen.exit[&14], 4);
        assert_eq!(seen.out[&14], b"done\n");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not after the leftover"
        );
    }

    /// The pidfd of a running child is not readable; once the child exits it is.
    #[test]
    fn a_pidfd_becomes_readable_when_its_process_exits() {
        use std::os::fd::AsRawFd;
        crate::reaper::start();
        let (out, _rx, _) = Outbox::new();
        let s = start_vm(15, &["sleep", "0.3"], &out);
        let fd = crate::pump::pidfd(s.pid).expect("pidfd_open");
        let readable = |ms| {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll of one valid pollfd.
            unsafe { libc::poll(&mut p, 1, ms) == 1 }
        };
        assert!(!readable(0), "running");
        assert!(readable(10_000), "exited");
    }
}
