//! Streams being started on a worker thread.
//!
//! Starting a process waits for its exec (`crate::reaper`), a few milliseconds under TCG; on
//! the session thread ten concurrent execs would start strictly one after another. So execs
//! (`ContainerExec`, `Vm`) start on a thread each, and the session keeps a [`Pending`] for
//! the stream meanwhile: frames that arrive for it (stdin, signals, resize, close) queue
//! there and are delivered, in order, the moment the process exists. A new epoch or a
//! `Close` cancels it: the worker then kills what it started and sends nothing.
//! The container's own Start stays on the session thread (once per VM; the session's
//! "container running" checks depend on it).

use crate::channel::Outbox;
use crate::error::Error;
use crate::process;
use crate::stream::{StdinMsg, Stream};
use crate::{info, warn};
use fcvm_proto::{Frame, Msg, ProcessSpec, Target};
use std::sync::{Arc, Mutex};
use std::time::Instant;

enum State {
    Starting {
        queued: Vec<Msg>,
        cancelled: bool,
    },
    /// Started (Some) or failed to start (None, the error already sent).
    Done(Option<Arc<Stream>>),
}

pub struct Pending {
    state: Mutex<State>,
}

/// What the session should do with a frame for a pending stream.
pub enum Route {
    /// Queued (or dropped because the stream is cancelled).
    Held,
    /// The stream exists now: deliver to it.
    Ready(Arc<Stream>, Msg),
    /// It failed to start.
    Gone(Msg),
}

impl Pending {
    /// Starts `spec` on a worker thread for stream `id`.
    pub fn start(id: u32, spec: ProcessSpec, target: Target, out: &Outbox) -> Arc<Pending> {
        let t0 = Instant::now();
        let p = Arc::new(Pending {
            state: Mutex::new(State::Starting {
                queued: Vec::new(),
                cancelled: false,
            }),
        });
        let (pw, wout) = (p.clone(), out.clone());
        let spawned = crate::pool::run(Box::new(move || pw.run(id, &spec, &target, &wout, t0)));
        if let Err(e) = spawned {
            p.finish(None);
            out.send(Frame {
                stream: id,
                msg: Error::Thread("start", e).to_msg(),
            });
        }
        p
    }

    fn run(&self, id: u32, spec: &ProcessSpec, target: &Target, out: &Outbox, t0: Instant) {
        match process::start(id, spec, target, out, t0) {
            Ok(s) => {
                self.finish(Some(s));
            }
            Err(e) => {
                let cancelled = self.finish(None);
                if !cancelled {
                    // The host reports it to the user; agent.log keeps it.
                    let (cmd, why) = (spec.args.first(), e.report());
                    info!("stream {id}: {target:?} {cmd:?}: {why}");
                    out.send(Frame {
                        stream: id,
                        msg: e.to_msg(),
                    });
                }
            }
        }
    }

    /// Records the outcome and delivers what queued meanwhile; returns whether it was cancelled.
    fn finish(&self, stream: Option<Arc<Stream>>) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return true;
        };
        let (queued, cancelled) = match &mut *st {
            State::Starting { queued, cancelled } => (std::mem::take(queued), *cancelled),
            State::Done(_) => return true,
        };
        match (&stream, cancelled) {
            (Some(s), true) => {
                s.cancel();
                s.kill();
                *st = State::Done(None);
            }
            (Some(s), false) => {
                for m in queued {
                    deliver(s, m);
                }
                *st = State::Done(stream.clone());
            }
            (None, _) => *st = State::Done(None),
        }
        cancelled
    }

    /// Routes a frame that arrived while (or after) the stream was being started.
    pub fn route(&self, msg: Msg) -> Route {
        let Ok(mut st) = self.state.lock() else {
            return Route::Gone(msg);
        };
        match &mut *st {
            State::Starting { queued, cancelled } => {
                if matches!(msg, Msg::Close) {
                    *cancelled = true;
                } else if !*cancelled {
                    queued.push(msg);
                }
                Route::Held
            }
            State::Done(Some(s)) => Route::Ready(s.clone(), msg),
            State::Done(None) => Route::Gone(msg),
        }
    }

    /// Cancels a start still in progress (a new epoch, a malformed frame).
    pub fn cancel(&self) {
        if let Ok(mut st) = self.state.lock() {
            match &mut *st {
                State::Starting { cancelled, .. } => *cancelled = true,
                State::Done(Some(s)) => {
                    s.cancel();
                    s.kill();
                }
                State::Done(None) => {}
            }
        }
    }

    /// The started stream once there is one (None while starting or after a failure).
    pub fn stream(&self) -> Option<Arc<Stream>> {
        match &*self.state.lock().ok()? {
            State::Done(s) => s.clone(),
            State::Starting { .. } => None,
        }
    }

    /// Whether starting is over (started or failed).
    pub fn settled(&self) -> bool {
        matches!(self.state.lock().as_deref(), Ok(State::Done(_)) | Err(_))
    }
}

/// Applies one process frame to a running stream.
pub fn deliver(s: &Arc<Stream>, msg: Msg) {
    let id = s.id;
    match msg {
        Msg::Stdin(bytes) => {
            if !s.stdin(StdinMsg::Data(bytes)) {
                warn!("stream {id}: stdin dropped (no stdin, or credit overrun)");
            }
        }
        Msg::StdinEof => {
            s.stdin(StdinMsg::Eof);
        }
        Msg::Signal(sig) => {
            if let Err(e) = s.signal(sig) {
                warn!("stream {id}: {}", e.report());
            }
        }
        Msg::Resize { rows, cols } => s.resize(rows, cols),
        Msg::Credit(n) => s.grant_output(n),
        Msg::Close => {
            s.cancel();
            s.kill();
        }
        other => warn!("stream {id}: unexpected {}", other.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fcvm_proto::codec::Decoder;

    /// Stdin and EOF sent before the process exists are delivered, in order, once it does.
    #[test]
    fn frames_queued_while_starting_reach_the_process() {
        crate::reaper::start();
        let (out, rx, _) = Outbox::new();
        let spec = ProcessSpec {
            args: vec!["cat".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            stdin: true,
            ..Default::default()
        };
        let p = Pending::start(7, spec, Target::Vm, &out);
        for m in [
            Msg::Stdin(b"queued ".to_vec()),
            Msg::Stdin(b"in order".to_vec()),
        ] {
            match p.route(m) {
                Route::Held => {}
                Route::Ready(s, m) => deliver(&s, m),
                Route::Gone(_) => panic!("cat failed to start"),
            }
        }
        match p.route(Msg::StdinEof) {
            Route::Held => {}
            Route::Ready(s, m) => deliver(&s, m),
            Route::Gone(_) => panic!("cat failed to start"),
        }
        let mut d = Decoder::new();
        let (mut stdout, mut code) = (Vec::new(), None);
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while code.is_none() && Instant::now() < deadline {
            if let Ok(b) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
                d.feed(&b);
            }
            while let Some(Ok(f)) = d.next_frame() {
                match f.msg {
                    Msg::Stdout(b) => stdout.extend(b),
                    Msg::Exit { code: c, .. } => code = Some(c),
                    _ => {}
                }
            }
        }
        assert_eq!(code, Some(0));
        assert_eq!(String::from_utf8_lossy(&stdout), "queued in order");
        assert!(p.settled() && p.stream().is_some());
    }

    /// A Close while starting cancels: the process is killed and nothing more is sent.
    #[test]
    fn close_while_starting_cancels() {
        crate::reaper::start();
        let (out, rx, _) = Outbox::new();
        let spec = ProcessSpec {
            args: vec!["sleep".into(), "30".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            ..Default::default()
        };
        let p = Pending::start(8, spec, Target::Vm, &out);
        match p.route(Msg::Close) {
            Route::Held => {}
            Route::Ready(s, m) => deliver(&s, m), // it started first: Close kills it
            Route::Gone(_) => panic!("sleep failed to start"),
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !p.settled() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(p.settled());
        // Whatever raced (Started may precede the Close), no Exit for a cancelled stream.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut d = Decoder::new();
        while let Ok(b) = rx.try_recv() {
            d.feed(&b);
        }
        while let Some(Ok(f)) = d.next_frame() {
            assert!(!matches!(f.msg, Msg::Exit { .. }), "{f:?}");
        }
    }
}
