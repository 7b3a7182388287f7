//! Facts about host processes read from `/proc`: a process is identified by its pid *and* its
//! start time, so a recycled pid is never mistaken for the process recorded earlier.
//!
//! A leaf module: VM records (`vm`), bridged-network records (`network::netns`) and the run
//! code that writes them all use it, and it uses nothing of the crate.

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), or `None`
/// if it does not exist (or /proc cannot be read).
pub fn process_start(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Whether process `pid` still runs and is the one that started at `start`. A zombie does
/// not: it has exited, and stays listed only until its parent (for a detached owner, whatever
/// reaps orphans) collects it.
pub fn process_alive(pid: u32, start: u64) -> bool {
    stat(pid).is_some_and(|(state, s)| s == start && !matches!(state, 'Z' | 'X' | 'x'))
}

/// State letter (field 3) and start time (field 22) of /proc/PID/stat.
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name may contain spaces and parentheses: fields are counted after its
    // last ')'.
    let mut rest = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
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
    fn stat_fields_are_counted_after_the_command_name() {
        let line = |comm: &str, state: &str| {
            format!("42 ({comm}) {state} 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 1 2 3")
        };
        assert_eq!(parse_stat(&line("sh", "S")), Some(('S', 777)));
        assert_eq!(parse_stat(&line("a) Z (b", "R")), Some(('R', 777)));
        assert_eq!(parse_stat(&line("x", "Z")), Some(('Z', 777)));
        assert_eq!(parse_stat("42 (sh"), None);
        assert_eq!(parse_stat("42 (sh) S 1"), None);
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = process_start(pid).unwrap();
        // Exited but not yet waited for: a zombie, still in /proc with its start time.
        let t = std::time::Instant::now();
        while stat(pid).is_some_and(|(s, _)| s != 'Z') {
            assert!(t.elapsed().as_secs() < 10, "true did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(process_start(pid), Some(start));
        assert!(!process_alive(pid, start));
        child.wait().unwrap();
    }

    #[test]
    fn missing_process_has_no_start() {
        // Above the kernel's pid_max (4194304 at most).
        assert_eq!(process_start(u32::MAX), None);
        assert!(!process_alive(u32::MAX, 0));
    }
}
