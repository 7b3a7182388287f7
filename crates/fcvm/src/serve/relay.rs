//! The relay of one process ([`super::process`]): the one task that owns its agent stream,
//! reads every frame as it arrives (with or without a client attached), fans output out to
//! the attached streams through bounded queues, and carries out control requests (signals,
//! stdin within the agent's credit, resizes, new subscribers).

use std::collections::VecDeque;

use fcvm_proto::{Msg, MAX_CHUNK};
use tokio::sync::{mpsc, oneshot};

use super::connect::{Code, RpcError};
use super::pb::{Bytes, Data, End, Event};
use crate::session::Process;

/// Streams attached to one process at a time.
const MAX_SUBSCRIBERS: usize = 16;
/// Stdin bytes accepted beyond the agent's credit before SendInput is refused.
pub const MAX_PENDING_STDIN: usize = 1 << 20;

/// What a relay is asked to do.
pub(super) enum Control {
    Subscribe(mpsc::Sender<Event>),
    Signal(i32),
    Kill,
    Stdin(Vec<u8>, oneshot::Sender<Result<(), RpcError>>),
    StdinEof,
    Resize(u16, u16),
}

pub(super) fn lost() -> RpcError {
    RpcError::new(
        Code::Unavailable,
        "connection to the sandbox's agent was lost",
    )
}

pub(super) struct Relay {
    pub proc: Process,
    pub pid: u32,
    pub tty: bool,
    pub subscribers: Vec<mpsc::Sender<Event>>,
    pub credit: usize,
    pub pending: VecDeque<Vec<u8>>,
    pub pending_bytes: usize,
    /// Stdin's end was asked for; sent once `pending` is empty.
    pub eof: bool,
    pub eof_sent: bool,
}

impl Relay {
    /// Relays until the process ends; `ended` then takes it out of its table (before its
    /// clients hear of the end).
    pub async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        early: Vec<Msg>,
        ended: impl FnOnce(),
    ) {
        let mut end = None;
        for m in early {
            end = end.or(self.on_frame(Some(m)).await);
        }
        let end = match end {
            Some(e) => e,
            None => loop {
                tokio::select! {
                    m = self.proc.recv() => if let Some(e) = self.on_frame(m).await { break e },
                    c = control.recv() => if let Some(e) = self.on_control(c).await { break e },
                }
            },
        };
        drop(control);
        ended();
        self.fanout(Event::End(end)).await;
        // Dropping the stream now: after Exit it is done; after a kill it sends Close, which
        // makes the agent kill the process and everything left in its session.
    }

    /// Handles one agent frame; Some(end) when the process is over.
    async fn on_frame(&mut self, m: Option<Msg>) -> Option<End> {
        match m {
            Some(Msg::Stdout(b)) => {
                let d = if self.tty {
                    Data::Pty(Bytes(b))
                } else {
                    Data::Stdout(Bytes(b))
                };
                self.fanout(Event::Data(d)).await;
            }
            Some(Msg::Stderr(b)) => self.fanout(Event::Data(Data::Stderr(Bytes(b)))).await,
            Some(Msg::Credit(n)) => {
                self.credit += n as usize;
                self.flush_stdin().await;
            }
            Some(Msg::Exit { code, .. }) => {
                return Some(End {
                    exit_code: code,
                    exited: true,
                    status: format!("exit status {code}"),
                    error: None,
                })
            }
            Some(Msg::Error { kind, message }) => {
                return Some(End {
                    exit_code: kind.exit_code(),
                    exited: false,
                    status: "error".into(),
                    error: Some(message),
                })
            }
            Some(_) => {}
            None => {
                return Some(End {
                    exit_code: -1,
                    exited: false,
                    status: "error".into(),
                    error: Some(lost().message),
                })
            }
        }
        None
    }

    async fn on_control(&mut self, c: Option<Control>) -> Option<End> {
        match c {
            Some(Control::Subscribe(tx)) => {
                if self.subscribers.len() < MAX_SUBSCRIBERS
                    && tx.send(Event::Start { pid: self.pid }).await.is_ok()
                {
                    self.subscribers.push(tx);
                }
            }
            Some(Control::Signal(s)) => {
                self.proc.send(Msg::Signal(s)).await;
            }
            Some(Control::Stdin(data, ack)) => {
                let r = if self.eof {
                    Err(RpcError::new(Code::FailedPrecondition, "stdin is closed"))
                } else if self.pending_bytes + data.len() > MAX_PENDING_STDIN {
                    Err(RpcError::new(
                        Code::ResourceExhausted,
                        "the process does not read its stdin fast enough",
                    ))
                } else {
                    for chunk in data.chunks(MAX_CHUNK) {
                        self.pending_bytes += chunk.len();
                        self.pending.push_back(chunk.to_vec());
                    }
                    self.flush_stdin().await;
                    Ok(())
                };
                let _ = ack.send(r);
            }
            Some(Control::StdinEof) => {
                self.eof = true;
                self.flush_stdin().await;
            }
            Some(Control::Resize(rows, cols)) => {
                self.proc.send(Msg::Resize { rows, cols }).await;
            }
            // Killed, or the sandbox is going away: envd reports a killed process this way.
            Some(Control::Kill) | None => {
                return Some(End {
                    exit_code: -1,
                    exited: false,
                    status: "signal: killed".into(),
                    error: None,
                })
            }
        }
        None
    }

    async fn flush_stdin(&mut self) {
        while let Some(chunk) = self.pending.front() {
            if chunk.len() > self.credit {
                return;
            }
            let chunk = self.pending.pop_front().expect("front exists");
            self.credit -= chunk.len();
            self.pending_bytes -= chunk.len();
            self.proc.send(Msg::Stdin(chunk)).await;
        }
        if self.eof && !self.eof_sent && self.pending.is_empty() {
            self.eof_sent = true;
            self.proc.send(Msg::StdinEof).await;
        }
    }

    /// Hands `ev` to every attached stream; a stream whose client is gone is dropped.
    async fn fanout(&mut self, ev: Event) {
        let mut alive = Vec::with_capacity(self.subscribers.len());
        for s in self.subscribers.drain(..) {
            if s.send(ev.clone()).await.is_ok() {
                alive.push(s);
            }
        }
        self.subscribers = alive;
    }
}
