//! Agent logging: lines go to the console ([`crate::console`]) until a session is open; from then on as a
//! `Log{level, message}` frame on the control stream, which the host keeps in agent.log —
//! warnings and errors to both (DESIGN: never fail silently). The session stays "open" once
//! a host has said Hello: the channel is a virtio port that outlives host connections (a
//! restore reconnects to the same agent).

use crate::channel::Outbox;
use crate::console::console;
use fcvm_proto::{Frame, LogLevel, Msg};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static OUTBOX: OnceLock<Outbox> = OnceLock::new();
static SESSION_OPEN: AtomicBool = AtomicBool::new(false);

/// Installs the outbox that Log frames travel through.
pub fn set_outbox(out: Outbox) {
    let _ = OUTBOX.set(out);
}

/// Waits (bounded) until every queued frame has been written.
pub fn flush(timeout: std::time::Duration) {
    let t0 = std::time::Instant::now();
    while let Some(out) = OUTBOX.get() {
        if out.pending() == 0 || t0.elapsed() > timeout {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Marks whether a host session is open (Log frames are only sent then).
pub fn set_session_open(open: bool) {
    SESSION_OPEN.store(open, Ordering::SeqCst);
}

/// A Log frame when a session is open (the host keeps it in agent.log), else a console line.
/// Never blocks: a Log frame that finds the channel's queue full is dropped and counted
/// (`crate::channel`).
/// Warnings and errors also go to the console, in case the channel itself is what failed.
/// Info lines do not: under TCG every console line runs the serial driver (~1 ms, and tens
/// of ms of cold code right after a restore), which the host's copy makes redundant.
pub fn log(level: LogLevel, msg: &str) {
    let open = SESSION_OPEN.load(Ordering::SeqCst);
    if !open || matches!(level, LogLevel::Warn | LogLevel::Error) {
        console(msg);
    }
    if open {
        if let Some(out) = OUTBOX.get() {
            let dropped = out.take_dropped_logs();
            if dropped > 0 {
                let message = format!("{dropped} log lines dropped: the channel was full");
                let level = LogLevel::Warn;
                if !out.send_log(Frame::control(Msg::Log { level, message })) {
                    out.count_dropped_logs(dropped);
                }
            }
            out.send_log(Frame::control(Msg::Log {
                level,
                message: msg.to_string(),
            }));
        }
    }
}

#[macro_export]
macro_rules! info {
    ($($a:tt)*) => { $crate::log::log(fcvm_proto::LogLevel::Info, &format!($($a)*)) };
}
#[macro_export]
macro_rules! warn {
    ($($a:tt)*) => { $crate::log::log(fcvm_proto::LogLevel::Warn, &format!($($a)*)) };
}
#[macro_export]
macro_rules! error {
    ($($a:tt)*) => { $crate::log::log(fcvm_proto::LogLevel::Error, &format!($($a)*)) };
}
