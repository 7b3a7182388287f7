//! The console (`/dev/console`, fds 0-2 of PID 1; the host captures ttyS0 to a file): raw lines
//! prefixed `fc-agent:` and the guest uptime. A leaf: the channel writes its own failures here
//! (it cannot report them through itself), and [`crate::log`] writes here until a session is
//! open.

use std::io::Write;

/// Milliseconds since boot (CLOCK_BOOTTIME), for log prefixes and `AgentInfo::uptime_ms`.
pub fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Writes one line to the console only (never fails, never panics).
pub fn console(msg: &str) {
    let t = uptime_ms();
    let line = format!("fc-agent: [{:>4}.{:03}] {msg}\n", t / 1000, t % 1000);
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Writes `line` to the console as is (plus a newline).
pub fn console_raw(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}
