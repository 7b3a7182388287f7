//! `Stats`: the VM seen from the host, in cgroup v1 metrics (what `ctr task metrics` and the
//! kubelet read): memory usage is the VMM's resident memory, its limit the VM's RAM.

use containerd_shim::protos::cgroups::metrics::{MemoryEntry, MemoryStat, Metrics};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::{api, ttrpc};
use containerd_shim::TtrpcResult;
use fcvm::bundle::BundleVm;

pub fn stats(vm: &BundleVm) -> TtrpcResult<api::StatsResponse> {
    // A stopped VM's pid may already be another process's.
    let rss = if vm.running() {
        rss_bytes(vm.vmm_pid)
    } else {
        None
    }
    .unwrap_or(0);
    let m = Metrics {
        memory: MessageField::some(MemoryStat {
            rss,
            usage: MessageField::some(MemoryEntry {
                usage: rss,
                limit: (vm.mem_mib as u64) << 20,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let any = containerd_shim::util::convert_to_any(Box::new(m))
        .map_err(|e| ttrpc::Error::Others(format!("cannot encode stats: {e}")))?;
    Ok(api::StatsResponse {
        stats: MessageField::some(any),
        ..Default::default()
    })
}

/// `VmRSS` of a process, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}
