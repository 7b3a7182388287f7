//! crun, sealed in memory once per VM ([`seal_once`], from the first Prepare): every later
//! `crun run`/`crun exec` runs from pages, and translations, that stay for the VM's life.

use crate::error::{Error, Result};
use crate::paths::CRUN;
use crate::{info, warn};
use nix::mount::{mount, MsFlags};
use std::path::Path;
use std::time::Instant;

/// Seals crun in memory ([`seal`]) the first time it is called.
pub fn seal_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let t0 = Instant::now();
        match seal(Path::new(CRUN)) {
            Ok(()) => info!("crun sealed in memory in {} ms", t0.elapsed().as_millis()),
            Err(e) => warn!("crun will copy itself on every run: {}", e.report()),
        }
    });
}

/// Replaces `crun` by a sealed in-memory copy of itself, bind-mounted over it.
///
/// Why: against CVE-2019-5736 every crun invocation copies its own binary into a fresh memfd
/// and re-executes it — unless it already runs from a fully sealed memfd. Under TCG that copy
/// is fresh physical memory each time, so QEMU translates all of crun's code again on every
/// `crun run`/`crun exec` (~0.2 s). One sealed copy is just as safe (sealed memfds
/// cannot be written, the property the check is for: it is runc's `memfd-bind`) and keeps its
/// pages, and their translations, for the VM's life — snapshots included.
fn seal(path: &Path) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let bin = std::fs::read(path).map_err(|e| Error::Read(path.into(), e))?;
    let fd = memfd_create(
        c"crun_cloned:/proc/self/exe",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .map_err(Error::MemfdCreate)?;
    let mut f = std::fs::File::from(fd);
    std::io::Write::write_all(&mut f, &bin)
        .map_err(|e| Error::Write("crun_cloned:/proc/self/exe".into(), e))?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(f.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).map_err(Error::Seal)?;
    // A memfd lives in the kernel's internal mount, which cannot be bind-mounted across
    // namespaces; its /proc magic link can (runc's memfd-bind does the same). The link
    // resolves through this process's fd table, so the memfd stays open for PID 1's life.
    let fd_link = format!("/proc/self/fd/{}", f.as_raw_fd());
    let link = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(&fd_link)
        .map_err(|e| Error::Open(fd_link.into(), e))?;
    let src = format!("/proc/self/fd/{}", link.as_raw_fd());
    let r = mount(
        Some(src.as_str()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::BindSealed(path.into(), e));
    if r.is_ok() {
        std::mem::forget(f);
    }
    r
}
