//! The session: routes every frame from the host (docs/design.md §8).
//!
//! 1. Nothing is served before a `Hello` (or `Restored`) names an epoch.
//! 2. A new epoch drops every exec and VM stream of the old one (their processes are killed and
//!    their frames stop) but keeps the container's main process, and after a restore the
//!    streams its plan names (`keep_streams`: a paused sandbox's commands, which its host takes
//!    over): each kept stream is adopted, same id, its output credit back at the initial value
//!    (the new host starts from there; what the process writes beyond it waits in its pipe).
//!    A named stream that is gone is answered `Error{"No such stream"}`.
//! 3. `Hello` → `HelloAck`; `Restored` → restore steps → `RestoreComplete` (or `RestoreFailed`).
//!    The same epoch twice (either order) repeats the answer without dropping anything.
//! 4. Process frames go to their stream; an unknown stream gets `Error{Failed, "No such
//!    stream"}` (but a `Close` or an output `Credit` for it is dropped quietly).
//!    Execs start on worker threads ([`crate::pending`]); frames for them queue until then.
//! 5. `HttpGet` and `FsRequest` open a stream of their own, answered once from a worker
//!    thread ([`crate::probe`], [`crate::fs`]); a new epoch silences the old answers.
//! 6. A pod's further containers ([`crate::pods`]): `PodRequest`s run here and are answered
//!    `PodReply{seq}`; `Start{PodContainer}` claims its id here (before the worker thread
//!    starts it) and needs the first container running, whose namespaces it joins.

use crate::channel::Outbox;
use crate::error::{Error, Report};
use crate::pending::{self, Pending, Route};
use crate::process;
use crate::stream::Stream;
use crate::{error, info, warn};
use fcvm_proto::codec::CodecError;
use fcvm_proto::{AgentInfo, ContainerPlan, Frame, Msg, Target, CONTROL, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub struct Session {
    out: Outbox,
    epoch: Option<u64>,
    streams: HashMap<u32, Arc<Stream>>,
    /// Execs still being started on a worker thread.
    pending: HashMap<u32, Arc<Pending>>,
    plan: Option<ContainerPlan>,
    /// Every epoch this guest has served: one that comes back after another replaced it is
    /// stale (an old host, or a replayed message) and is refused.
    seen: std::collections::HashSet<u64>,
    /// The outcome of the current epoch's restore, answered again to a duplicate `Restored`
    /// instead of running the steps twice.
    restore_result: Option<(u64, Result<(), Arc<Error>>)>,
}

impl Session {
    pub fn new(out: Outbox) -> Self {
        Session {
            out,
            epoch: None,
            streams: HashMap::new(),
            pending: HashMap::new(),
            plan: None,
            seen: Default::default(),
            restore_result: None,
        }
    }

    /// A message naming `epoch` that is neither current nor new.
    fn stale(&self, epoch: u64) -> bool {
        self.epoch != Some(epoch) && self.seen.contains(&epoch)
    }

    fn reply(&self, stream: u32, msg: Msg) {
        self.out.send(Frame { stream, msg });
    }

    /// Handles one decoded frame, or reports one that failed to decode.
    pub fn handle(&mut self, frame: Result<Frame, CodecError>) {
        let frame = match frame {
            Ok(f) => f,
            Err(e @ CodecError::Decode(_, Some(stream))) if stream != CONTROL => {
                // A malformed message on a process stream ends that stream, with an error;
                // the session and every other stream go on.
                let e = Error::MalformedFrame(e);
                warn!("stream {stream}: {}", e.report());
                if let Some(st) = self.streams.remove(&stream) {
                    st.cancel();
                    st.kill();
                }
                if let Some(p) = self.pending.remove(&stream) {
                    p.cancel();
                }
                self.reply(stream, e.to_msg());
                return;
            }
            Err(e) => {
                warn!("dropped a bad frame from the host: {}", Report(&e));
                return;
            }
        };
        self.settle();
        self.streams.retain(|_, s| !s.finished());
        match frame.msg {
            Msg::Hello {
                epoch,
                version,
                random_seed,
            } => self.hello(epoch, version, &random_seed),
            Msg::Restored { epoch, plan } => self.restored(epoch, &plan),
            _ if self.epoch.is_none() => crate::console::console(&format!(
                "ignoring frame before Hello: {}",
                frame.msg.name()
            )),
            Msg::Prepare(plan) if frame.stream == CONTROL => self.prepare(plan),
            Msg::Shutdown if frame.stream == CONTROL => self.shutdown(),
            Msg::PodRequest { seq, op } if frame.stream == CONTROL => self.pod_request(seq, &op),
            Msg::Start { spec, target } => self.start(frame.stream, &spec, target),
            Msg::HttpGet { url, timeout_ms } if frame.stream != CONTROL => {
                crate::probe::start(frame.stream, url, timeout_ms, &self.out)
            }
            Msg::FsRequest(req) if frame.stream != CONTROL => {
                crate::fs::start(frame.stream, req, &self.out)
            }
            msg if frame.stream == CONTROL => warn!("unexpected control message {}", msg.name()),
            msg => self.on_stream(frame.stream, msg),
        }
    }

    /// Switches to `epoch` if it is new (returning the epoch it ends, if any): old exec/VM
    /// streams are killed and silenced, except those in `keep`.
    fn enter_epoch(&mut self, epoch: u64, keep: &[u32]) -> Option<Option<u64>> {
        if self.epoch == Some(epoch) {
            return None;
        }
        self.seen.insert(epoch);
        let old = self.epoch;
        self.streams.retain(|id, s| {
            if s.target == Target::Container || keep.contains(id) {
                s.new_epoch();
                return true;
            }
            s.cancel();
            s.kill();
            false
        });
        for p in self.pending.values() {
            p.cancel();
        }
        self.pending.clear();
        crate::probe::cancel_all();
        crate::fs::cancel_all();
        crate::fuse::new_epoch();
        self.epoch = Some(epoch);
        crate::log::set_session_open(true);
        Some(old)
    }

    fn hello(&mut self, epoch: u64, version: u32, random_seed: &[u8]) {
        if self.stale(epoch) {
            warn!("ignoring Hello for stale epoch {epoch}");
            return;
        }
        let uptime_ms = crate::console::uptime_ms();
        // Once per epoch: the host resends Hello until it hears back, and a booting guest
        // may find dozens queued (each console line costs ~1 ms under TCG).
        if let Some(old) = self.enter_epoch(epoch, &[]) {
            crate::console::console(&format!("hello epoch {epoch}, uptime {uptime_ms} ms"));
            if let Some(old) = old {
                info!("epoch {old} -> {epoch}: dropping its streams");
            }
            if !random_seed.is_empty() {
                if let Err(e) = crate::restore::reseed(random_seed) {
                    warn!("seeding the RNG: {}", e.report());
                }
            }
            if version != PROTOCOL_VERSION {
                warn!("host speaks protocol {version}, agent {PROTOCOL_VERSION}");
            }
        }
        let info = AgentInfo {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            uptime_ms,
            prepared: crate::container::prepared(),
        };
        self.reply(
            CONTROL,
            Msg::HelloAck {
                epoch,
                version: PROTOCOL_VERSION,
                info,
            },
        );
    }

    fn restored(&mut self, epoch: u64, plan: &fcvm_proto::RestorePlan) {
        let t0 = Instant::now();
        if self.stale(epoch) {
            warn!("refusing Restored for stale epoch {epoch}");
            let error = Error::StaleEpoch(epoch).wire();
            self.reply(CONTROL, Msg::RestoreFailed { epoch, error });
            return;
        }
        let mut ended = None;
        let result = match &self.restore_result {
            Some((e, r)) if *e == epoch => r.clone(),
            _ => {
                ended = self.enter_epoch(epoch, &plan.keep_streams).flatten();
                let current = self.plan.as_ref().and_then(|p| p.network.as_ref());
                let r = crate::restore::run(plan, current).map_err(Arc::new);
                if r.is_ok() {
                    // Containers started from now on carry the new identity.
                    if let (Some(p), Some(h)) = (self.plan.as_mut(), plan.hostname.as_ref()) {
                        p.hostname = h.clone();
                    }
                    if let (Some(p), Some(n)) = (self.plan.as_mut(), plan.network.as_ref()) {
                        p.network = Some(n.clone());
                    }
                }
                self.restore_result = Some((epoch, r.clone()));
                r
            }
        };
        match result {
            Ok(()) => {
                let ms = t0.elapsed().as_millis();
                // One log line, after the answer the host waits for.
                self.reply(CONTROL, Msg::RestoreComplete { epoch });
                // A stream the host means to take over that ended before the snapshot: its
                // host hears so instead of waiting for frames that never come.
                for id in plan
                    .keep_streams
                    .iter()
                    .filter(|id| !self.streams.contains_key(id))
                {
                    self.reply(*id, Error::NoSuchStream.to_msg());
                }
                let from = ended.map(|o| format!(" (from {o}: its streams dropped)"));
                info!(
                    "restore steps done for epoch {epoch}{} in {ms} ms",
                    from.unwrap_or_default()
                );
            }
            Err(e) => {
                error!("restore failed: {}", e.report());
                let error = e.wire();
                self.reply(CONTROL, Msg::RestoreFailed { epoch, error });
            }
        }
    }

    fn prepare(&mut self, plan: ContainerPlan) {
        let t0 = Instant::now();
        match crate::container::prepare(&plan) {
            Ok(()) => {
                info!("prepared in {} ms", t0.elapsed().as_millis());
                let t1 = Instant::now();
                if plan.warm {
                    match crate::warm::create(plan.privileged) {
                        Ok(()) => info!("warm container in {} ms", t1.elapsed().as_millis()),
                        Err(e) => warn!(
                            "no warm container, the run will use crun run: {}",
                            e.report()
                        ),
                    }
                    crate::warm::prefetch(&plan.prefetch, &plan.path);
                    crate::fuse::pin_buffer();
                }
                self.plan = Some(plan);
                self.reply(CONTROL, Msg::Prepared);
            }
            Err(e) => {
                error!("prepare failed: {}", e.report());
                let error = e.wire();
                self.reply(CONTROL, Msg::PrepareFailed { error });
            }
        }
    }

    fn container_running(&self) -> bool {
        self.streams.values().any(|s| s.target == Target::Container)
    }

    fn start(&mut self, id: u32, spec: &fcvm_proto::ProcessSpec, target: Target) {
        let t0 = Instant::now();
        if id == CONTROL || self.streams.contains_key(&id) || self.pending.contains_key(&id) {
            error!("Start on stream {id}, which is in use");
            return;
        }
        let check = match &target {
            Target::Container if self.container_running() => Err(Error::ContainerRunning),
            Target::Vm => Ok(()),
            _ if !crate::container::prepared() => Err(Error::NotPrepared),
            Target::ContainerExec if !self.container_running() => Err(Error::ContainerNotRunning),
            // Its namespaces are the first container's.
            Target::PodContainer { .. } if !self.container_running() => {
                Err(Error::ContainerNotRunning)
            }
            Target::PodContainer { id, root } => crate::pods::claim(id, *root),
            _ => Ok(()),
        };
        if let Err(e) = check {
            return self.reply(id, e.to_msg());
        }
        if target != Target::Container {
            let p = Pending::start(id, spec.clone(), target, &self.out);
            self.pending.insert(id, p);
            return;
        }
        match process::start(id, spec, &target, &self.out, t0) {
            Ok(s) => {
                self.streams.insert(id, s);
            }
            Err(e) => {
                // The host reports it to the user; agent.log keeps it.
                let (cmd, why) = (spec.args.first(), e.report());
                info!("stream {id}: {target:?} {cmd:?}: {why}");
                self.reply(id, e.to_msg());
            }
        }
    }

    /// Runs one pod operation ([`crate::pods`]) and answers it.
    fn pod_request(&mut self, seq: u64, op: &fcvm_proto::PodOp) {
        let error = match crate::pods::handle(op) {
            Ok(()) => None,
            Err(e) => {
                warn!("{op:?}: {}", e.report());
                Some(e.wire())
            }
        };
        self.reply(CONTROL, Msg::PodReply { seq, error });
    }

    /// Moves execs whose start is over from `pending` to `streams`.
    fn settle(&mut self) {
        let done: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.settled())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(s) = self.pending.remove(&id).and_then(|p| p.stream()) {
                self.streams.insert(id, s);
            }
        }
    }

    fn on_stream(&mut self, id: u32, msg: Msg) {
        let (s, msg) = if let Some(s) = self.streams.get(&id).cloned() {
            (s, msg)
        } else if let Some(p) = self.pending.get(&id).cloned() {
            match p.route(msg) {
                Route::Held => return,
                Route::Ready(s, msg) => {
                    self.pending.remove(&id);
                    self.streams.insert(id, s.clone());
                    (s, msg)
                }
                Route::Gone(msg) => {
                    self.pending.remove(&id);
                    return self.no_stream(id, &msg);
                }
            }
        } else {
            return self.no_stream(id, &msg);
        };
        let close = matches!(msg, Msg::Close);
        pending::deliver(&s, msg);
        if close {
            self.streams.remove(&id);
        }
    }

    /// A frame for a stream that does not exist (any more): answered with an error, except a
    /// `Close` or a `Credit` (the host grants as it drains, which may be after the `Exit`).
    fn no_stream(&self, id: u32, msg: &Msg) {
        if !matches!(msg, Msg::Close | Msg::Credit(_)) {
            self.reply(id, Error::NoSuchStream.to_msg());
        }
    }

    fn shutdown(&mut self) -> ! {
        info!("shutdown requested");
        let container: Vec<Arc<Stream>> = self.streams.values().cloned().collect();
        crate::init::shutdown(&container)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fcvm_proto::codec::Decoder;
    use fcvm_proto::ErrorKind;
    use std::sync::mpsc::Receiver;

    fn replies(rx: &Receiver<Vec<u8>>) -> Vec<Frame> {
        let mut d = Decoder::new();
        while let Ok(b) = rx.try_recv() {
            assert_eq!(b[0], 0, "every frame starts with a delimiter");
            d.feed(&b);
        }
        std::iter::from_fn(|| d.next_frame())
            .map(|f| f.unwrap())
            .collect()
    }

    fn frame(stream: u32, msg: Msg) -> Result<Frame, CodecError> {
        Ok(Frame { stream, msg })
    }

    /// The container's stream outlives an epoch, and its output credit starts over: the
    /// new host knows nothing of what the old one granted. A Credit for a stream that is
    /// gone gets no answer.
    #[test]
    fn a_new_epoch_restarts_the_container_streams_output_credit() {
        let (out, rx, _) = Outbox::new();
        let mut s = Session::new(out.clone());
        let hello = |epoch| {
            frame(
                CONTROL,
                Msg::Hello {
                    epoch,
                    version: PROTOCOL_VERSION,
                    random_seed: vec![],
                },
            )
        };
        s.handle(hello(1));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let handles = crate::stream::Handles {
            pid: child.id() as i32,
            pidfile: None,
            stdin: None,
            tty: None,
        };
        let c = Arc::new(Stream::new(
            fcvm_proto::CONTAINER_STREAM,
            Target::Container,
            handles,
            &out,
            Instant::now(),
        ));
        s.streams.insert(fcvm_proto::CONTAINER_STREAM, c.clone());
        c.credit.spend(usize::MAX);
        let none = std::time::Duration::ZERO;
        assert_eq!(c.credit.available(none), 0);
        s.handle(frame(fcvm_proto::CONTAINER_STREAM, Msg::Credit(5)));
        assert_eq!(c.credit.available(none), 5, "the host's grant");
        s.handle(hello(1));
        assert_eq!(
            c.credit.available(none),
            5,
            "the same epoch changes nothing"
        );
        s.handle(hello(2));
        let initial = fcvm_proto::INITIAL_OUTPUT_CREDIT as usize;
        assert_eq!(c.credit.available(none), initial, "a new epoch starts over");
        assert!(s.streams.contains_key(&fcvm_proto::CONTAINER_STREAM));
        replies(&rx);
        s.handle(frame(77, Msg::Credit(5)));
        assert!(replies(&rx).is_empty(), "a late Credit is dropped quietly");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A restore keeps the exec streams its plan names (a paused sandbox's commands), their
    /// credit back at the initial value, and kills every other one.
    #[test]
    fn a_restore_keeps_the_streams_its_plan_names() {
        let (out, rx, _) = Outbox::new();
        let mut s = Session::new(out.clone());
        s.handle(frame(
            CONTROL,
            Msg::Hello {
                epoch: 1,
                version: PROTOCOL_VERSION,
                random_seed: vec![],
            },
        ));
        let exec = |id: u32| {
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30");
            // SAFETY: setsid is async-signal-safe. A killed exec stream kills every process
            // of its session: this one's must not be the test runner's.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                })
            };
            let child = cmd.spawn().unwrap();
            let handles = crate::stream::Handles {
                pid: child.id() as i32,
                pidfile: None,
                stdin: None,
                tty: None,
            };
            let st = Arc::new(Stream::new(
                id,
                Target::ContainerExec,
                handles,
                &out,
                Instant::now(),
            ));
            (child, st)
        };
        let (mut kept_child, kept) = exec(5);
        let (mut other_child, other) = exec(6);
        s.streams.insert(5, kept.clone());
        s.streams.insert(6, other.clone());
        kept.credit.spend(usize::MAX);
        // 9 ended before the snapshot: its host is told so.
        let plan = fcvm_proto::RestorePlan {
            keep_streams: vec![5, 9],
            ..Default::default()
        };
        s.handle(frame(CONTROL, Msg::Restored { epoch: 2, plan }));
        let r = replies(&rx);
        assert!(r.iter().any(|f| f.msg == Msg::RestoreComplete { epoch: 2 }));
        assert!(r
            .iter()
            .any(|f| f.stream == 9 && matches!(f.msg, Msg::Error { .. })));
        assert!(
            !r.iter().any(|f| f.stream == 5),
            "the kept one is not told anything"
        );
        assert!(s.streams.contains_key(&5) && !s.streams.contains_key(&6));
        let initial = fcvm_proto::INITIAL_OUTPUT_CREDIT as usize;
        let none = std::time::Duration::ZERO;
        assert_eq!(kept.credit.available(none), initial);
        // The other one was killed (a zombie, or reaped if another test runs the reaper).
        let dead = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| {
                st.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !dead(other_child.id()) && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(dead(other_child.id()), "the stream not kept was killed");
        assert!(!dead(kept_child.id()), "the kept one runs");
        let _ = kept_child.kill();
        let _ = kept_child.wait();
        let _ = other_child.wait();
    }

    #[test]
    fn hello_epochs_and_unknown_streams() {
        let (out, rx, _) = Outbox::new();
        let mut s = Session::new(out);
        // nothing is served before Hello
        s.handle(frame(5, Msg::Signal(15)));
        s.handle(frame(CONTROL, Msg::Prepare(ContainerPlan::default())));
        assert!(replies(&rx).is_empty());
        s.handle(frame(
            CONTROL,
            Msg::Hello {
                epoch: 3,
                version: PROTOCOL_VERSION,
                random_seed: vec![],
            },
        ));
        let r = replies(&rx);
        assert_eq!(r.len(), 1);
        assert!(matches!(
            &r[0].msg,
            Msg::HelloAck { epoch: 3, version: PROTOCOL_VERSION, info } if !info.kernel.is_empty()
        ));
        // a bad frame is skipped; the session lives on
        s.handle(Err(CodecError::Checksum));
        s.handle(frame(5, Msg::Signal(15)));
        s.handle(frame(5, Msg::Close));
        s.handle(frame(
            6,
            Msg::Start {
                spec: fcvm_proto::ProcessSpec {
                    args: vec!["sh".into()],
                    ..Default::default()
                },
                target: Target::ContainerExec,
            },
        ));
        let r = replies(&rx);
        let no_stream = Msg::Error {
            kind: ErrorKind::Failed,
            message: "No such stream".into(),
        };
        assert_eq!(
            r[0],
            Frame {
                stream: 5,
                msg: no_stream
            }
        );
        assert_eq!(r.len(), 2, "Close on an unknown stream gets no answer");
        assert!(matches!(
            &r[1].msg,
            Msg::Error {
                kind: ErrorKind::Failed,
                ..
            }
        ));
        // the same epoch again: answered, nothing dropped; a new one: answered with its epoch
        s.handle(frame(
            CONTROL,
            Msg::Hello {
                epoch: 3,
                version: PROTOCOL_VERSION,
                random_seed: vec![],
            },
        ));
        s.handle(frame(
            CONTROL,
            Msg::Hello {
                epoch: 4,
                version: PROTOCOL_VERSION,
                random_seed: vec![],
            },
        ));
        let epochs: Vec<u64> = replies(&rx)
            .into_iter()
            .filter_map(|f| match f.msg {
                Msg::HelloAck { epoch, .. } => Some(epoch),
                _ => None,
            })
            .collect();
        assert_eq!(epochs, [3, 4]);
    }
}
