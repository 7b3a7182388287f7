//! The agent's pinned buffer that the host writes map reads into (`MapOp::ReadPages`,
//! docs/volumes.md): the file data of a read never crosses the agent channel, whose every
//! byte costs the guest's emulated CPU under TCG (docs/design.md §20).
//!
//! 1. [`Pages::new`] maps [`SLOTS`] slots of `MAP_MAX_PLACED` (1 MiB) bytes, locks them in memory (no
//!    huge page; compaction told to leave locked pages where they are), and reads each page's
//!    guest-physical address from `/proc/self/pagemap` (the agent runs as root).
//! 2. A read [`Pages::take`]s a slot and names its pages in the request; the host writes the
//!    data there and answers how much; the FUSE reply is sent from the slot
//!    ([`Pages::data`]) and the slot is [`Pages::put`] back.
//! 3. A host that cannot write the VM's memory answers `EOPNOTSUPP`: [`Pages::disable`],
//!    and reads go through the channel from then on (that read is asked again as a `Read`).
//!    A restored VM keeps the buffer and its addresses (both are guest memory), so its new
//!    host writes the same pages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use fcvm_proto::map::{MAP_MAX_PLACED, MAP_PAGE, MAP_PAGES_BELOW};

/// Slots: reads in flight at once that go this way (more go through the channel). A single
/// reader has one at a time (the kernel's direct I/O), so a few serve several readers.
const SLOTS: usize = 4;
/// Pages per slot: the largest read the kernel sends (4 MiB locked in all).
const SLOT_PAGES: usize = MAP_MAX_PLACED / MAP_PAGE;

pub struct Pages {
    base: *mut u8,
    /// Guest-physical address of each page, slot after slot.
    addrs: Vec<u64>,
    free: Mutex<Vec<usize>>,
    off: AtomicBool,
}

// SAFETY: `base` is a private mapping this struct owns for the process's life; slots are
// handed to one user at a time through `free`, and the bytes are only read (by `data`).
unsafe impl Send for Pages {}
// SAFETY: see above.
unsafe impl Sync for Pages {}

impl Pages {
    /// The pinned buffer, or `None` (then reads go through the channel) if any step fails.
    pub fn new() -> Option<Pages> {
        let len = SLOTS * SLOT_PAGES * MAP_PAGE;
        // Locked pages stay at their physical address only if compaction leaves them be.
        let _ = std::fs::write("/proc/sys/vm/compact_unevictable_allowed", "0");
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the mapping just made, whole. A huge page could be split or collapsed
        // (moved); locked 4 KiB pages are not moved once compaction may not touch them.
        let pinned = unsafe {
            libc::madvise(base, len, libc::MADV_NOHUGEPAGE);
            libc::mlock(base, len) == 0
        };
        let base = base as *mut u8;
        // Each page written once, so it is a page of its own (not the shared zero page).
        for i in (0..len).step_by(MAP_PAGE) {
            // SAFETY: within the mapping.
            unsafe { base.add(i).write_volatile(1) };
        }
        let addrs = pinned
            .then(|| physical(base as usize, len / MAP_PAGE))
            .flatten();
        let Some(addrs) = addrs else {
            // SAFETY: the mapping made above, unused by anyone.
            unsafe { libc::munmap(base as *mut libc::c_void, len) };
            return None;
        };
        Some(Pages {
            base,
            addrs,
            free: Mutex::new((0..SLOTS).collect()),
            off: AtomicBool::new(false),
        })
    }

    /// A free slot and the guest-physical addresses of the pages that hold `len` bytes,
    /// unless the host cannot use them.
    pub fn take(&self, len: usize) -> Option<(usize, Vec<u64>)> {
        if self.off.load(Ordering::Relaxed) || len > SLOT_PAGES * MAP_PAGE {
            return None;
        }
        let slot = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        let first = slot * SLOT_PAGES;
        let pages = self.addrs[first..first + len.div_ceil(MAP_PAGE).max(1)].to_vec();
        Some((slot, pages))
    }

    pub fn put(&self, slot: usize) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
    }

    /// The host cannot write this VM's memory: stop asking it to.
    pub fn disable(&self) {
        self.off.store(true, Ordering::Relaxed);
    }

    /// The first `n` bytes of `slot`, as the host wrote them.
    pub fn data(&self, slot: usize, n: usize) -> &[u8] {
        // The host wrote the bytes through QEMU before its reply, which this thread read.
        std::sync::atomic::fence(Ordering::SeqCst);
        let n = n.min(SLOT_PAGES * MAP_PAGE);
        // SAFETY: within the mapping; the slot is the caller's until `put`, and the host
        // wrote it before answering, so nothing writes these bytes while the slice lives.
        unsafe { std::slice::from_raw_parts(self.base.add(slot * SLOT_PAGES * MAP_PAGE), n) }
    }
}

/// The guest-physical address of each of the `pages` pages from `addr` (`None` if any is
/// not present or above `MAP_PAGES_BELOW`, or the kernel hides frame numbers).
fn physical(addr: usize, pages: usize) -> Option<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/self/pagemap").ok()?;
    let mut raw = vec![0u8; pages * 8];
    f.read_exact_at(&mut raw, (addr / MAP_PAGE * 8) as u64)
        .ok()?;
    raw.chunks(8)
        .map(|e| {
            let e = u64::from_le_bytes(e.try_into().ok()?);
            let pfn = e & ((1 << 55) - 1);
            let gpa = pfn * MAP_PAGE as u64;
            (e >> 63 == 1 && pfn != 0 && gpa < MAP_PAGES_BELOW).then_some(gpa)
        })
        .collect()
}
