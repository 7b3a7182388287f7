//! Connects a guest process stream to this process's stdio: output streamed live, stdin
//! forwarded within the agent's credit, the terminal in raw mode for `-t` (restored on every
//! exit path by a guard), window resizes forwarded, and SIGINT/SIGTERM turned into a stop of
//! the guest process (TERM, then KILL after a grace period) instead of killing fcvm.
//!
//! Output is written on its own thread ([`output`]) and credited back to the guest as it is
//! written: a stdout nobody reads stalls the guest process, never this loop, so signals,
//! stdin and (in a VM's owner) everything else the process serves go on.

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use fcvm_proto::{Msg, INITIAL_STDIN_CREDIT, MAX_CHUNK};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::session::Process;
use output::{Chunk, Output};

mod output;

/// How long a process gets after SIGTERM before SIGKILL, and after SIGKILL before we give up.
const STOP_GRACE: Duration = Duration::from_secs(5);
const KILL_GRACE: Duration = Duration::from_secs(3);
/// A write blocked this long means nobody reads our output: while stopping, it is dropped.
const STALLED: Duration = Duration::from_millis(500);
/// How long output may take to be written once the process was stopped.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    pub stdin: bool,
    pub tty: bool,
    /// Whether SIGINT/SIGTERM to fcvm stop the process (run) rather than only detach.
    pub stop_on_signal: bool,
}

pub struct Outcome {
    /// The process's exit code (126/127/125 for processes that could not run).
    pub result: Result<i32>,
    pub first_output: Option<Instant>,
    /// When `Started` arrived, and how long the guest said spawning took (`FCVM_TIMINGS`).
    pub started: Option<(Instant, u64)>,
}

/// Rows and columns of the terminal on stdin/stdout, if there is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enable(on: bool) -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        if !on {
            return RawMode(None);
        }
        let stdin = std::io::stdin();
        let Ok(orig) = tcgetattr(stdin.as_fd()) else {
            return RawMode(None);
        };
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// Reads stdin on a plain thread, not tokio's blocking pool: a read that never returns (a
/// terminal nobody types into) must not hold up the runtime's shutdown after the process ended.
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    rx
}

/// Stdin for the guest process: bytes, or its end.
enum Input {
    Data(Vec<u8>),
    Eof,
}

pub async fn attach(mut proc: Process, opts: AttachOptions) -> Outcome {
    let raw = RawMode::enable(opts.tty && std::io::IsTerminal::is_terminal(&std::io::stdin()));
    let mut first_output = None;
    let mut started = None;
    let mut sigint = signal(SignalKind::interrupt()).expect("signal handler");
    let mut sigterm = signal(SignalKind::terminate()).expect("signal handler");
    let mut sighup = signal(SignalKind::hangup()).expect("signal handler");
    let mut sigwinch = signal(SignalKind::window_change()).expect("signal handler");
    let credit = proc.manual_credit();
    let output = Output::spawn(credit.clone());
    let sender = proc.sender();
    let mut stdin = opts.stdin.then(spawn_stdin_reader);
    let mut stdin_credit: u64 = INITIAL_STDIN_CREDIT as u64;
    let mut input: Option<Input> = None;
    // Output taken from the stream that waits for room in the writer's queue: while it
    // waits, no more is taken (and the guest gets no more credit).
    let mut held: Option<Chunk> = None;
    let mut last_words = None;
    let mut stop_stage = 0u8;
    let never = || tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut deadline = never();

    let result = loop {
        if stop_stage > 0 && output.stalled(STALLED) {
            // Stopping, and our stdout's reader does not read: what waits for it is dropped
            // (and credited), so the guest process can be drained and reach its end.
            output.discard();
            if let Some(c) = held.take() {
                credit.drained(c.len());
            }
        }
        let send_input = match &input {
            Some(Input::Data(_)) => stdin_credit > 0,
            Some(Input::Eof) => true,
            None => false,
        };
        tokio::select! {
            m = proc.recv(), if held.is_none() => match m {
                Some(Msg::Stdout(d)) => {
                    first_output.get_or_insert_with(Instant::now);
                    held = Some(Chunk::Stdout(d));
                }
                Some(Msg::Stderr(d)) => {
                    first_output.get_or_insert_with(Instant::now);
                    held = Some(Chunk::Stderr(d));
                }
                Some(Msg::Credit(n)) => stdin_credit += n as u64,
                Some(Msg::Started { spawn_us, .. }) => started = Some((Instant::now(), spawn_us)),
                Some(Msg::Exit { code, .. }) => break Ok(code),
                Some(Msg::Error { kind, message }) => {
                    let eol = if raw.0.is_some() { "\r\n" } else { "\n" };
                    last_words = Some(Chunk::Stderr(format!("Error: {message}{eol}").into_bytes()));
                    break Ok(kind.exit_code());
                }
                Some(_) => {}
                None => break Err(anyhow!("Connection to the VM's agent was lost")),
            },
            _ = output.room(), if held.is_some() => {
                if let Some(Err(c)) = held.take().map(|c| output.try_send(c)) {
                    held = Some(c);
                }
            },
            permit = sender.reserve(), if send_input => {
                let Some(p) = permit else {
                    input = None;
                    continue;
                };
                match input.take().expect("guarded") {
                    Input::Eof => p.send(Msg::StdinEof),
                    Input::Data(mut chunk) => {
                        let n = (stdin_credit as usize).min(chunk.len());
                        let rest = chunk.split_off(n);
                        p.send(Msg::Stdin(chunk));
                        stdin_credit -= n as u64;
                        if !rest.is_empty() {
                            input = Some(Input::Data(rest));
                        }
                    }
                }
            },
            chunk = async { stdin.as_mut().expect("guarded").recv().await }, if stdin.is_some() && input.is_none() => {
                input = Some(match chunk {
                    Some(c) => Input::Data(c),
                    None => {
                        stdin = None;
                        Input::Eof
                    }
                });
            },
            _ = sigwinch.recv() => {
                if let Some((rows, cols)) = terminal_size() {
                    sender.try_send(Msg::Resize { rows, cols });
                }
            }
            _ = async { tokio::select! { _ = sigint.recv() => {}, _ = sigterm.recv() => {}, _ = sighup.recv() => {} } } => {
                if !opts.stop_on_signal {
                    break Err(anyhow!("Interrupted"));
                }
                // A signal that finds no room is lost: the deadline still ends the wait.
                if stop_stage == 0 {
                    tracing::debug!(stream = proc.id, "stopping the process: SIGTERM");
                    sender.try_send(Msg::Signal(libc::SIGTERM));
                    stop_stage = 1;
                    deadline = tokio::time::Instant::now() + STOP_GRACE;
                } else {
                    tracing::debug!(stream = proc.id, "stopping the process: SIGKILL");
                    sender.try_send(Msg::Signal(libc::SIGKILL));
                    stop_stage = 2;
                    deadline = tokio::time::Instant::now() + KILL_GRACE;
                }
            }
            // While stopping: look again whether output stalls.
            _ = tokio::time::sleep(STALLED), if stop_stage > 0 => {}
            _ = tokio::time::sleep_until(deadline) => {
                if stop_stage == 1 {
                    tracing::debug!(stream = proc.id, "no exit after SIGTERM: SIGKILL");
                    sender.try_send(Msg::Signal(libc::SIGKILL));
                    stop_stage = 2;
                    deadline = tokio::time::Instant::now() + KILL_GRACE;
                } else {
                    tracing::debug!(stream = proc.id, "no exit after SIGKILL: giving up on it");
                    break Ok(128 + libc::SIGKILL);
                }
            }
        }
    };
    // The rest of the output is written before this returns — unless a signal says stop
    // waiting (a reader that never reads), or we are stopping already.
    // Output still held is written too, unless we are stopping.
    let rest = held
        .filter(|_| stop_stage == 0)
        .into_iter()
        .chain(last_words);
    let output_stalled = output.stalled(STALLED);
    let flushed = output.finish(rest);
    tracing::debug!(
        stream = proc.id,
        ?result,
        "process over: writing the rest of its output"
    );
    if stop_stage > 0 {
        // Stopped with a reader that does not read: nothing more will be written.
        let grace = if output_stalled {
            Duration::ZERO
        } else {
            FLUSH_GRACE
        };
        if tokio::time::timeout(grace, flushed).await.is_err() {
            tracing::debug!(stream = proc.id, "output not written: dropped");
        }
    } else {
        tokio::select! {
            _ = flushed => {}
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
            _ = sighup.recv() => {}
        }
    }
    drop(raw);
    Outcome {
        result,
        first_output,
        started,
    }
}
