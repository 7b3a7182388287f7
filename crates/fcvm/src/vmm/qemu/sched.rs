//! How the host schedules a TCG QEMU: as batch work with a long time slice.
//!
//! Under TCG a VM's threads are CPU-bound emulation whose state is large and cache-hungry
//! (translated code, the soft TLB, the translation-block hash table). When more VMs start
//! than there are cores (ten pods at once on two), the default policy switches between them
//! every few milliseconds, and each switch costs the next one its caches: measured with
//! `bench/containerd.py --pods 10`, `qht_lookup_custom` and soft-TLB fills grew 2–3 × per pod
//! while translation stayed the same, and a pod's QEMU used ~0.75 s of CPU against ~0.45 s
//! alone. `SCHED_BATCH` (a waking VM does not preempt another) with a 20 ms slice (EEVDF's
//! per-task slice, Linux ≥ 6.12; older kernels keep their default) brought that to ~0.56 s.
//! Everything else on the host (fcvm, containerd, shells) keeps the normal policy and still
//! preempts a VM when it wakes. Under KVM the guest runs natively and a vCPU's wakeup
//! latency matters more than its caches: the default policy stays.

/// The slice asked for (nanoseconds; the kernel takes 0.1–100 ms).
const SLICE_NS: u64 = 20_000_000;

/// `struct sched_attr` of sched_setattr(2) (its first version, 48 bytes; not in libc).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Makes the calling process (and the threads it will start) batch work with a long slice,
/// or at least batch work where the kernel refuses the slice. Async-signal-safe (system
/// calls only): called between fork and exec. Best effort: QEMU runs either way.
pub fn batch_with_long_slice() {
    let mut attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_BATCH as u32,
        flags: 0,
        nice: 0,
        priority: 0,
        runtime: SLICE_NS,
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr(2) on this process with a valid, fully initialised attr.
    let set = |a: &SchedAttr| unsafe {
        libc::syscall(libc::SYS_sched_setattr, 0, a as *const SchedAttr, 0) == 0
    };
    if !set(&attr) {
        attr.runtime = 0;
        set(&attr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy takes (tried in a forked child, so the test process keeps its own).
    #[test]
    fn a_process_becomes_batch_work() {
        // SAFETY: fork in a test; the child makes system calls only and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            batch_with_long_slice();
            // SAFETY: plain system calls in the child, which exits at once.
            unsafe {
                let policy = libc::sched_getscheduler(0);
                libc::_exit(if policy == libc::SCHED_BATCH { 0 } else { 1 })
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(libc::WEXITSTATUS(status), 0, "the child is SCHED_BATCH");
    }
}
