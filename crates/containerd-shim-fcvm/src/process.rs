//! One containerd process (the container's init or an exec) running in the VM: its state as
//! `State` reports it, its stdio pumped between containerd's FIFOs and the agent's stream,
//! and its exit, published as `/tasks/exit` and handed to every `Wait`.
//!
//! Output is written to the FIFO before the next frame is taken, so a reader that stops
//! reading stops only this process's stream (the agent's credit is bounded). Stdin is
//! forwarded within the credit the agent grants, as `fcvm exec` does.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fcvm::session::{Process, ProcessSender};
use fcvm_proto::{Msg, ProcessSpec, INITIAL_STDIN_CREDIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch, Notify};

/// The FIFOs containerd made for a process (empty: none).
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub struct Exited {
    pub code: u32,
    pub at: SystemTime,
}

pub struct Proc {
    /// The exec id; empty for the container's init.
    pub exec_id: String,
    pub stdio: Stdio,
    pub spec: Mutex<ProcessSpec>,
    inner: Mutex<Inner>,
    exited: watch::Sender<Option<Exited>>,
    close_stdin: Notify,
}

struct Inner {
    status: Status,
    pid: u32,
    sender: Option<ProcessSender>,
}

impl Proc {
    pub fn new(exec_id: &str, spec: ProcessSpec, stdio: Stdio) -> Arc<Proc> {
        Arc::new(Proc {
            exec_id: exec_id.into(),
            stdio,
            spec: Mutex::new(spec),
            inner: Mutex::new(Inner {
                status: Status::Created,
                pid: 0,
                sender: None,
            }),
            exited: watch::channel(None).0,
            close_stdin: Notify::new(),
        })
    }

    pub fn status(&self) -> Status {
        self.inner.lock().expect("proc").status
    }

    /// The process's pid in the guest (0 until it started).
    pub fn pid(&self) -> u32 {
        self.inner.lock().expect("proc").pid
    }

    pub fn exit(&self) -> Option<Exited> {
        *self.exited.borrow()
    }

    /// Waits for the process's end.
    pub async fn wait(&self) -> Exited {
        let mut rx = self.exited.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as self: unreachable, but never spin.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Records the end (once); false if it had already ended.
    pub fn set_exited(&self, code: u32) -> bool {
        let mut inner = self.inner.lock().expect("proc");
        if inner.status == Status::Stopped {
            return false;
        }
        inner.status = Status::Stopped;
        inner.sender = None;
        drop(inner);
        self.exited.send_replace(Some(Exited {
            code,
            at: SystemTime::now(),
        }));
        true
    }

    /// Delivers a signal; false if the process is not running.
    pub fn signal(&self, sig: i32) -> bool {
        match &self.inner.lock().expect("proc").sender {
            Some(s) => s.try_send(Msg::Signal(sig)),
            None => false,
        }
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        // A client without a terminal of its own (ctr under a pipe) reports 0x0: not a size
        // to give the process's terminal.
        if rows == 0 || cols == 0 {
            return;
        }
        {
            let mut spec = self.spec.lock().expect("spec");
            spec.rows = rows;
            spec.cols = cols;
        }
        if let Some(s) = &self.inner.lock().expect("proc").sender {
            s.try_send(Msg::Resize { rows, cols });
        }
    }

    pub fn close_stdin(&self) {
        self.close_stdin.notify_one();
    }

    /// The stream started: record it and pump its stdio until it ends; `on_exit` runs once
    /// with the exit code when it does.
    pub fn running(
        self: &Arc<Self>,
        mut p: Process,
        pid: u32,
        early: Vec<Msg>,
        on_exit: impl FnOnce(u32) + Send + 'static,
    ) {
        {
            let mut inner = self.inner.lock().expect("proc");
            inner.status = Status::Running;
            inner.pid = pid;
            inner.sender = Some(p.sender());
        }
        let me = self.clone();
        tokio::spawn(async move {
            let code = me.pump(&mut p, early).await;
            if me.set_exited(code) {
                on_exit(code);
            }
        });
    }

    async fn pump(&self, p: &mut Process, early: Vec<Msg>) -> u32 {
        let mut out = Outputs {
            stdout: open_writer(&self.stdio.stdout).await,
            stderr: open_writer(&self.stdio.stderr).await,
            credit: INITIAL_STDIN_CREDIT as u64,
        };
        for m in early {
            if let Some(code) = out.take(Some(m)).await {
                return code;
            }
        }
        let mut stdin = (!self.stdio.stdin.is_empty()).then(|| spawn_reader(&self.stdio.stdin));
        let mut pending: Option<Vec<u8>> = None;
        let sender = p.sender();
        loop {
            let can_send = pending.is_some() && out.credit > 0;
            tokio::select! {
                m = p.recv() => if let Some(code) = out.take(m).await {
                    return code;
                },
                permit = sender.reserve(), if can_send => {
                    let Some(permit) = permit else { return 137 };
                    let mut chunk = pending.take().expect("guarded");
                    let n = (out.credit as usize).min(chunk.len());
                    let rest = chunk.split_off(n);
                    permit.send(Msg::Stdin(chunk));
                    out.credit -= n as u64;
                    if !rest.is_empty() {
                        pending = Some(rest);
                    }
                },
                chunk = async { stdin.as_mut().expect("guarded").recv().await },
                        if stdin.is_some() && pending.is_none() => match chunk {
                    Some(c) => pending = Some(c),
                    None => {
                        stdin = None;
                        sender.send(Msg::StdinEof).await;
                    }
                },
                _ = self.close_stdin.notified(), if stdin.is_some() => {
                    stdin = None;
                    pending = None;
                    sender.send(Msg::StdinEof).await;
                }
            }
        }
    }
}

/// Where a stream's frames go; its exit code once it ended.
struct Outputs {
    stdout: Option<pipe::Sender>,
    stderr: Option<pipe::Sender>,
    /// Stdin bytes the agent will take.
    credit: u64,
}

impl Outputs {
    async fn take(&mut self, m: Option<Msg>) -> Option<u32> {
        match m {
            Some(Msg::Stdout(d)) => write(&mut self.stdout, &d).await,
            // A terminal has one output (containerd then gives no stderr FIFO).
            Some(Msg::Stderr(d)) if self.stderr.is_none() => write(&mut self.stdout, &d).await,
            Some(Msg::Stderr(d)) => write(&mut self.stderr, &d).await,
            Some(Msg::Credit(n)) => self.credit += n as u64,
            Some(Msg::Exit { code, .. }) => return Some(code as u32),
            Some(Msg::Error { kind, message }) => {
                let line = format!("fcvm: {message}\n");
                write(&mut self.stderr, line.as_bytes()).await;
                return Some(kind.exit_code() as u32);
            }
            Some(_) => {}
            // The VM went away under the process.
            None => return Some(137),
        }
        None
    }
}

/// Waits for the agent's `Started`: the process's pid in the guest and the frames that came
/// before it; else why it did not start.
pub async fn started(p: &mut Process) -> Result<(u32, Vec<Msg>), String> {
    let mut early = Vec::new();
    loop {
        match p.recv().await {
            Some(Msg::Started { pid, .. }) => return Ok((pid, early)),
            Some(Msg::Error { message, .. }) => return Err(message),
            Some(Msg::Exit { code, .. }) => return Err(format!("exited with {code} at once")),
            None => return Err("the VM's agent went away".into()),
            Some(m) => early.push(m),
        }
    }
}

async fn open_writer(path: &str) -> Option<pipe::Sender> {
    if path.is_empty() {
        return None;
    }
    // containerd opened its reading end before asking for the process: no wait here.
    match pipe::OpenOptions::new().open_sender(path) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot open an output FIFO: {e}");
            None
        }
    }
}

/// Output whose reader went away is dropped (the process must still be able to end).
async fn write(w: &mut Option<pipe::Sender>, data: &[u8]) {
    if let Some(s) = w {
        if s.write_all(data).await.is_err() {
            *w = None;
        }
    }
}

/// Reads stdin's FIFO into a small bounded queue; its end closes the queue.
fn spawn_reader(path: &str) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    let path = PathBuf::from(path);
    tokio::spawn(async move {
        // Blocking open: the writer (ctr) may open its side only after the process started.
        let f = tokio::task::spawn_blocking(move || std::fs::File::open(&path)).await;
        let Ok(Ok(f)) = f else { return };
        let Ok(mut r) = pipe::Receiver::from_file(f) else {
            return;
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}
