//! Facts about host processes read from `/proc`: a process is identified by its pid *and* its
//! start time, so a recycled pid is never mistaken for the process recorded earlier.
//!
//! A leaf module: VM records (`vm`), bridged-network records (`network::netns`) and the run
//! code that writes them all use it, and it uses nothing of the crate.

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), or `None`
/// if it does not exist (or /proc cannot be read).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` still runs and is the one that started at `start`.
pub fn process_alive(pid: u32, start: u64) -> bool {
    process_start(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_fake_start_is_not() {
        let me = std::process::id();
        let start = process_start(me).unwrap();
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
    }

    #[test]
    fn missing_process_has_no_start() {
        // Above the kernel's pid_max (4194304 at most).
        assert_eq!(process_start(u32::MAX), None);
        assert!(!process_alive(u32::MAX, 0));
    }
}
