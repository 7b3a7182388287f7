//! Connects a guest process stream to this process's stdio: output streamed live, stdin
//! forwarded within the agent's credit, the terminal in raw mode for `-t` (restored on every
//! exit path by a guard), window resizes forwarded, and SIGINT/SIGTERM turned into a stop of
//! the guest process (TERM, then KILL after a grace period) instead of killing fcvm.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use fcvm_proto::{Msg, INITIAL_STDIN_CREDIT, MAX_CHUNK};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::session::Process;

/// How long a process gets after SIGTERM before SIGKILL, and after SIGKILL before we give up.
const STOP_GRACE: Duration = Duration::from_secs(5);
const KILL_GRACE: Duration = Duration::from_secs(3);

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
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
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

pub async fn attach(mut proc: Process, opts: AttachOptions) -> Outcome {
    let _raw = RawMode::enable(opts.tty && std::io::IsTerminal::is_terminal(&std::io::stdin()));
    let mut first_output = None;
    let mut started = None;
    let mut sigint = signal(SignalKind::interrupt()).expect("signal handler");
    let mut sigterm = signal(SignalKind::terminate()).expect("signal handler");
    let mut sighup = signal(SignalKind::hangup()).expect("signal handler");
    let mut sigwinch = signal(SignalKind::window_change()).expect("signal handler");
    let mut stdin = opts.stdin.then(spawn_stdin_reader);
    let mut credit: u64 = INITIAL_STDIN_CREDIT as u64;
    let mut pending: Option<Vec<u8>> = None;
    let mut stop_stage = 0u8;
    let never = || tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut deadline = never();
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();

    let result = loop {
        // Forward buffered stdin as far as the credit goes.
        while let Some(chunk) = pending.take() {
            if credit == 0 {
                pending = Some(chunk);
                break;
            }
            let n = (credit as usize).min(chunk.len());
            proc.send(Msg::Stdin(chunk[..n].to_vec()));
            credit -= n as u64;
            if n < chunk.len() {
                pending = Some(chunk[n..].to_vec());
            }
        }
        let want_stdin = stdin.is_some() && pending.is_none();
        tokio::select! {
            m = proc.recv() => match m {
                Some(Msg::Stdout(d)) => {
                    first_output.get_or_insert_with(Instant::now);
                    let _ = out.write_all(&d).and_then(|_| out.flush());
                }
                Some(Msg::Stderr(d)) => {
                    first_output.get_or_insert_with(Instant::now);
                    let _ = err.write_all(&d).and_then(|_| err.flush());
                }
                Some(Msg::Credit(n)) => credit += n as u64,
                Some(Msg::Started { spawn_us, .. }) => started = Some((Instant::now(), spawn_us)),
                Some(Msg::Exit { code, .. }) => break Ok(code),
                Some(Msg::Error { kind, message }) => {
                    drop(_raw);
                    eprintln!("Error: {message}");
                    return Outcome { result: Ok(kind.exit_code()), first_output, started };
                }
                Some(_) => {}
                None => break Err(anyhow!("Connection to the VM's agent was lost")),
            },
            chunk = async { stdin.as_mut().expect("guarded").recv().await }, if want_stdin => match chunk {
                Some(c) => pending = Some(c),
                None => {
                    stdin = None;
                    proc.send(Msg::StdinEof);
                }
            },
            _ = sigwinch.recv() => {
                if let Some((rows, cols)) = terminal_size() {
                    proc.send(Msg::Resize { rows, cols });
                }
            }
            _ = async { tokio::select! { _ = sigint.recv() => {}, _ = sigterm.recv() => {}, _ = sighup.recv() => {} } } => {
                if !opts.stop_on_signal {
                    break Err(anyhow!("Interrupted"));
                }
                if stop_stage == 0 {
                    proc.send(Msg::Signal(libc::SIGTERM));
                    stop_stage = 1;
                    deadline = tokio::time::Instant::now() + STOP_GRACE;
                } else {
                    proc.send(Msg::Signal(libc::SIGKILL));
                    stop_stage = 2;
                    deadline = tokio::time::Instant::now() + KILL_GRACE;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if stop_stage == 1 {
                    proc.send(Msg::Signal(libc::SIGKILL));
                    stop_stage = 2;
                    deadline = tokio::time::Instant::now() + KILL_GRACE;
                } else {
                    break Ok(128 + libc::SIGKILL);
                }
            }
        }
    };
    Outcome {
        result,
        first_output,
        started,
    }
}
