//! File data written straight into the VM's memory (`MapOp::ReadPages`, docs/volumes.md).
//!
//! Under TCG every byte the guest's CPU touches is emulated, and a `Read` reply crosses the
//! agent channel 4 KiB per `read(2)` and is COBS-decoded, checksummed and copied by the agent
//! (docs/design.md §20). For `ReadPages` the host instead writes the data into the pages of
//! the agent's pinned buffer, through QEMU's own mapping of guest RAM, and the reply only says
//! how much was written: the guest copies the data once, into the reader's pages.
//!
//! 1. [`GuestMem::open`] (once per served VM) opens `/proc/<qemu>/mem` — bound to that
//!    process's memory, so a recycled pid can never be written — and finds QEMU's mapping of
//!    the guest RAM file (`memory-backend-file`, [`crate::vmm::RAM_FILE`]; shared for a
//!    booted VM, private for a restored one: the write then lands in QEMU's copy, never in the
//!    snapshot's file).
//! 2. [`GuestMem::write_pages`] checks every guest-physical page the guest named lies in the
//!    low RAM that microvm maps at the same offset of the RAM file, then writes it. The guest
//!    can only ever make the host write file data it may read into its own memory.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use fcvm_proto::map::{MapData, MAP_MAX_PLACED, MAP_PAGE};
use nix::errno::Errno;

use super::host::Root;

/// Guest-physical addresses below this are RAM at the same offset of the RAM file on
/// microvm (its RAM below 4 GiB is at least this; higher pages are refused, the agent then
/// reads through the channel). The agent uses no buffer above it (`MAP_PAGES_BELOW`).
const LOW_RAM: u64 = fcvm_proto::map::MAP_PAGES_BELOW;

#[derive(Debug, thiserror::Error)]
pub enum GuestMemError {
    #[error("Cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("No mapping of the guest RAM file in {0}")]
    NoRam(PathBuf),
}

/// QEMU's mapping of guest RAM, writable through `/proc/<pid>/mem`.
pub struct GuestMem {
    mem: File,
    /// QEMU's address of guest-physical address 0.
    base: u64,
    /// Bytes of guest RAM reachable from `base` (at most [`LOW_RAM`]).
    len: u64,
}

impl GuestMem {
    /// Finds the guest RAM of the QEMU process `pid`.
    pub fn open(pid: u32) -> Result<GuestMem, GuestMemError> {
        let mem_path = PathBuf::from(format!("/proc/{pid}/mem"));
        // Opened first: the maps read next then describe this same process.
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&mem_path)
            .map_err(|e| GuestMemError::Open(mem_path, e))?;
        let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
        let maps = std::fs::read_to_string(&maps_path)
            .map_err(|e| GuestMemError::Open(maps_path.clone(), e))?;
        let (base, len) = ram_mapping(&maps).ok_or(GuestMemError::NoRam(maps_path))?;
        Ok(GuestMem {
            mem,
            base,
            len: len.min(LOW_RAM),
        })
    }

    /// Writes `data` into the guest-physical pages `pages`, one page after another.
    pub fn write_pages(&self, data: &[u8], pages: &[u64]) -> Result<(), Errno> {
        if data.len().div_ceil(MAP_PAGE) > pages.len() {
            return Err(Errno::EINVAL);
        }
        let pages = &pages[..data.len().div_ceil(MAP_PAGE)];
        // A page this host cannot place: the agent reads through the channel instead.
        if pages
            .iter()
            .any(|&a| a % MAP_PAGE as u64 != 0 || a.saturating_add(MAP_PAGE as u64) > self.len)
        {
            return Err(Errno::EOPNOTSUPP);
        }
        // One write per run of consecutive pages.
        let mut i = 0;
        while i < pages.len() {
            let mut run = 1;
            while i + run < pages.len() && pages[i + run] == pages[i] + (run * MAP_PAGE) as u64 {
                run += 1;
            }
            let from = i * MAP_PAGE;
            let to = ((i + run) * MAP_PAGE).min(data.len());
            self.mem
                .write_all_at(&data[from..to], self.base + pages[i])
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            i += run;
        }
        Ok(())
    }
}

/// `ReadPages`: reads like `Read`, then writes the data into the guest's pages.
pub fn read_pages(
    root: &Root,
    guest: &GuestMem,
    path: &str,
    offset: u64,
    len: u32,
    pages: &[u64],
) -> Result<MapData, Errno> {
    if pages.len() > MAP_MAX_PLACED / MAP_PAGE {
        return Err(Errno::EINVAL);
    }
    let len = (len as usize).min(pages.len() * MAP_PAGE);
    let data = root.read(path, offset, len)?;
    guest.write_pages(&data, pages)?;
    Ok(MapData::Placed(data.len() as u32))
}

/// The start and length of the largest mapping, from offset 0, of a file named
/// [`crate::vmm::RAM_FILE`] in a `/proc/<pid>/maps` text.
fn ram_mapping(maps: &str) -> Option<(u64, u64)> {
    maps.lines()
        .filter_map(|l| {
            // start-end perms offset dev inode path
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let offset = f.next()?;
            let path = f.nth(2)?;
            let name = path.rsplit('/').next()?;
            let from_start = u64::from_str_radix(offset, 16).ok()? == 0;
            if name != crate::vmm::RAM_FILE || !perms.starts_with("rw") || !from_start {
                return None;
            }
            let (s, e) = range.split_once('-')?;
            let (s, e) = (
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            );
            Some((s, e.checked_sub(s)?))
        })
        .max_by_key(|&(_, len)| len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ram_mapping_is_found_in_maps() {
        let maps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 42 /usr/bin/qemu-system-x86_64
7f0000000000-7f0040000000 rw-s 00000000 08:01 7 /var/lib/fcvm/vms/x/ram
7f0040000000-7f0040001000 rw-p 00000000 00:00 0
7f0050000000-7f0050001000 rw-s 00001000 08:01 7 /var/lib/fcvm/vms/x/ram
7f0060000000-7f0060001000 r--p 00000000 08:01 9 /x/ram
";
        assert_eq!(ram_mapping(maps), Some((0x7f00_0000_0000, 0x4000_0000)));
        assert_eq!(ram_mapping("7f0-7f1 rw-p 00000000 00:00 0 [heap]\n"), None);
    }

    /// Pages are written in order into this process's own memory (standing in for QEMU's);
    /// a page outside guest RAM or not page-aligned is refused.
    #[test]
    fn pages_are_written_in_order_and_checked() {
        let mut ram = vec![0u8; 4 * MAP_PAGE];
        let ptr = ram.as_mut_ptr();
        let g = GuestMem {
            mem: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/proc/self/mem")
                .unwrap(),
            base: ptr as u64,
            len: ram.len() as u64,
        };
        let data: Vec<u8> = (0..MAP_PAGE + 10).map(|i| (i % 251) as u8).collect();
        g.write_pages(&data, &[2 * MAP_PAGE as u64, 0]).unwrap();
        // A run of consecutive pages (one write).
        let page = MAP_PAGE as u64;
        g.write_pages(&data, &[0, page, 3 * page]).unwrap();
        // SAFETY: in bounds of `ram`, which lives on; volatile, as the write bypassed Rust.
        let got: Vec<u8> = (0..ram.len())
            .map(|i| unsafe { std::ptr::read_volatile(ptr.add(i)) })
            .collect();
        assert_eq!(&got[2 * MAP_PAGE..3 * MAP_PAGE], &data[..MAP_PAGE]);
        assert_eq!(&got[..MAP_PAGE + 10], &data[..]);
        for bad in [4 * MAP_PAGE as u64, 1, !4095] {
            assert_eq!(g.write_pages(&data[..1], &[bad]), Err(Errno::EOPNOTSUPP));
        }
        assert_eq!(
            g.write_pages(&data, &[0]),
            Err(Errno::EINVAL),
            "too few pages"
        );
    }
}
