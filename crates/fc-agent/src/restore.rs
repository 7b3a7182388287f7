//! Restore steps (DESIGN §4, step 3), run when the host sends `Restored{epoch, plan}`:
//!
//! 1. set the wall clock from the host's (`clock_settime(CLOCK_REALTIME)`);
//! 2. reseed the RNG: mix the seed in with `RNDADDENTROPY`, then `RNDRESEEDCRNG` so the kernel's
//!    CRNG is rekeyed now — otherwise clones of one snapshot would draw the same random bytes
//!    until the kernel's next scheduled reseed (up to a minute later);
//! 3. new network config when given and not the one the VM already has (`crate::net`:
//!    address, default route, resolv.conf);
//! 4. new identity when given (hostname, machine-id; also the container's files).
//!
//! Every step must succeed before the session answers `RestoreComplete`. Right after a restore
//! under TCG every kernel path costs its translation (opening a file: milliseconds), so the
//! steps use files opened before the snapshot ([`arm`], [`crate::container`]'s identity files).

use crate::error::{Error, Result};
use fcvm_proto::{NetConfig, RestorePlan};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

/// `_IOW('R', 0x03, int[2])`
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

static URANDOM: OnceLock<File> = OnceLock::new();

/// Opens what the restore steps use, at boot (so a restore does not pay for the open).
pub fn arm() {
    let _ = urandom();
}

fn urandom() -> Result<&'static File> {
    if let Some(f) = URANDOM.get() {
        return Ok(f);
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| Error::Open("/dev/urandom".into(), e))?;
    Ok(URANDOM.get_or_init(|| f))
}

/// `current` is the network the snapshotted VM was configured with.
pub fn run(plan: &RestorePlan, current: Option<&NetConfig>) -> Result<()> {
    if plan.clock_unix_ns > 0 {
        let ts = libc::timespec {
            tv_sec: (plan.clock_unix_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (plan.clock_unix_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: clock_settime with a valid timespec.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(Error::SetClock(std::io::Error::last_os_error()));
        }
    }
    if !plan.random_seed.is_empty() {
        reseed(&plan.random_seed)?;
    }
    // Every step costs under TCG after a restore (QEMU translates each code path anew): an
    // unchanged network (user-mode networking: always the same address) is left as it is.
    if let Some(n) = plan.network.as_ref().filter(|n| Some(*n) != current) {
        crate::net::configure(n)?;
        crate::container::copy_resolv_conf()?;
    }
    crate::container::set_identity(plan.hostname.as_deref(), plan.machine_id.as_deref())
}

/// The `struct rand_pool_info` for `seed`: entropy bits, byte count, then the bytes.
pub fn pool_info(seed: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + seed.len());
    v.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    v.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    v.extend_from_slice(seed);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// Mixes `seed` into the kernel's RNG, credits it, and rekeys the CRNG at once (also used
/// for the host's seed at Hello).
pub fn reseed(seed: &[u8]) -> Result<()> {
    let fd = urandom()?.as_raw_fd();
    // RNDADDENTROPY mixes the bytes in as well: no separate write needed.
    let info = pool_info(seed);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of the size encoded in its header.
    if unsafe { libc::ioctl(fd, RNDADDENTROPY as _, info.as_ptr()) } != 0 {
        return Err(Error::Ioctl(
            "RNDADDENTROPY",
            std::io::Error::last_os_error(),
        ));
    }
    // Fails the restore if it fails: a clone that cannot rekey would share its siblings'
    // random bytes. (The 32-byte seed just credited makes the CRNG ready, so ENODATA cannot
    // happen; the guest kernel is ours, so ENOTTY cannot either.)
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(fd, RNDRESEEDCRNG as _) } != 0 {
        return Err(Error::Ioctl(
            "RNDRESEEDCRNG",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_info_layout() {
        let v = pool_info(&[1, 2, 3]);
        assert_eq!(&v[..4], &24i32.to_ne_bytes());
        assert_eq!(&v[4..8], &3i32.to_ne_bytes());
        assert_eq!(&v[8..], &[1, 2, 3, 0]);
    }
}
