//! The VM's metrics (`FsOp::Metrics`, protocol 7), as E2B's `GET /sandboxes/{id}/metrics`
//! reports them: CPUs and their busy share from `/proc/stat` (two samples [`SAMPLE`] apart),
//! memory from `/proc/meminfo`, disk from `statvfs` of the container's root.

use super::root::Root;
use super::{FsFailure, FsResult};
use fcvm_proto::VmMetrics;
use std::time::Duration;

/// Time between the two `/proc/stat` samples of the CPU share.
const SAMPLE: Duration = Duration::from_millis(100);

/// (busy, total) jiffies of all CPUs, and how many CPUs, from `/proc/stat`'s text.
pub fn cpu_times(stat: &str) -> Option<(u64, u64, u32)> {
    let mut lines = stat.lines();
    let first = lines.next()?;
    let mut fields = first.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let cpus = lines
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    Some((total.saturating_sub(idle), total, cpus.max(1)))
}

/// (total, used, cache) bytes from `/proc/meminfo`'s text.
pub fn memory(meminfo: &str) -> (u64, u64, u64) {
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let total = kib("MemTotal");
    let available = kib("MemAvailable");
    (
        total,
        total.saturating_sub(available),
        kib("Cached") + kib("Buffers"),
    )
}

fn read(path: &str) -> FsResult<String> {
    std::fs::read_to_string(path).map_err(|e| FsFailure::io("read", path, e))
}

/// Samples the VM (taking [`SAMPLE`]).
pub fn sample(root: &Root) -> FsResult<VmMetrics> {
    let bad = || FsFailure::new(fcvm_proto::FsErrorKind::Failed, "unreadable /proc/stat");
    let (busy0, total0, cpus) = cpu_times(&read("/proc/stat")?).ok_or_else(bad)?;
    std::thread::sleep(SAMPLE);
    let (busy1, total1, _) = cpu_times(&read("/proc/stat")?).ok_or_else(bad)?;
    let pct = match total1.saturating_sub(total0) {
        0 => 0.0,
        d => (busy1.saturating_sub(busy0) as f64 * 100.0 / d as f64) as f32,
    };
    let (mem_total, mem_used, mem_cache) = memory(&read("/proc/meminfo")?);
    let (disk_total, disk_used) = root
        .disk_usage()
        .map_err(|e| FsFailure::io("statvfs", "/", e))?;
    Ok(VmMetrics {
        cpu_count: cpus,
        cpu_used_pct: pct.clamp(0.0, 100.0),
        mem_total,
        mem_used,
        mem_cache,
        disk_total,
        disk_used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1\n";
        assert_eq!(cpu_times(stat), Some((150, 1000, 2)));
        assert_eq!(cpu_times("intr 1\n"), None);
        let meminfo = "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     400 kB\nBuffers:           10 kB\nCached:           200 kB\n";
        assert_eq!(memory(meminfo), (1_024_000, 614_400, 215_040));
    }

    #[test]
    fn this_machine_samples_sanely() {
        let root = Root::open("/").unwrap();
        let m = sample(&root).unwrap();
        assert!(m.cpu_count >= 1 && (0.0..=100.0).contains(&m.cpu_used_pct));
        assert!(m.mem_total > m.mem_used && m.mem_total > 0);
        assert!(m.disk_total >= m.disk_used && m.disk_total > 0);
    }
}
