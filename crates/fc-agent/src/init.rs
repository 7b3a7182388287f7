//! PID 1 duties: the two boot stages and the final power-off.
//!
//! Stage 1 (the initramfs root):
//! 1. mount /proc, /sys, /dev (devtmpfs) and make /dev/console fds 0-2;
//! 2. load the modules named in /etc/fcvm/modules, in order (`finit_module`; EEXIST is fine);
//! 3. move the root to a tmpfs (crun's pivot_root fails on the initramfs, DESIGN §3): move every
//!    file into /newroot (the loaded modules are just deleted), move the pseudo filesystems,
//!    `mount --move . /`, chroot, and exec `/init stage2`.
//!
//! Stage 2: cgroup2 (controllers enabled for children), devpts, /dev/shm, /run, /tmp, `lo` up.
//! crun is sealed in memory ([`crate::crun::seal_once`]) by the first Prepare, not at boot:
//! the cost belongs to the container, not to the VM coming up.

use crate::console::console;
use crate::error::{Error, Result};
use crate::paths::{IMAGE_MNT, ROOTFS, RUN_DIR, RW_MNT};
use crate::stream::Stream;
use crate::{error, info, warn};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn mnt(src: &str, dst: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    let _ = std::fs::create_dir_all(dst);
    if let Err(e) = mount(Some(src), dst, Some(fstype), flags, data) {
        if e != nix::errno::Errno::EBUSY {
            error!("mount {fstype} on {dst}: {}", e.desc());
        }
    }
}

/// Points fds 0, 1, 2 at /dev/console (the kernel may have found no console in the initramfs).
fn console_fds() {
    let Ok(c) = CString::new("/dev/console") else {
        return;
    };
    // SAFETY: open/dup2/close on descriptors this process owns.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd >= 0 {
            for i in 0..3 {
                if fd != i {
                    libc::dup2(fd, i);
                }
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

fn pseudo_fs() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mnt("proc", "/proc", "proc", nosuid, None);
    mnt("sysfs", "/sys", "sysfs", nosuid, None);
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
}

/// Stage 1: never returns (execs stage 2), except on failure to move the root.
pub fn stage1() {
    pseudo_fs();
    console_fds();
    console("stage 1");
    load_modules();
    let t0 = Instant::now();
    match move_root() {
        Ok(()) => {
            console(&format!(
                "root moved to tmpfs in {} ms",
                t0.elapsed().as_millis()
            ));
            let args = [c"/init", c"stage2"];
            let argv = [args[0].as_ptr(), args[1].as_ptr(), std::ptr::null()];
            // SAFETY: NUL-terminated argv of static C strings.
            unsafe { libc::execv(args[0].as_ptr(), argv.as_ptr()) };
            error!("exec /init stage2: {}", std::io::Error::last_os_error());
        }
        Err(e) => error!(
            "moving the root to a tmpfs failed ({}); crun may not pivot_root",
            e.report()
        ),
    }
}

fn load_modules() {
    let list = std::fs::read_to_string("/etc/fcvm/modules").unwrap_or_default();
    let t0 = Instant::now();
    let mut n = 0;
    for name in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let path = Path::new("/lib/modules/fcvm").join(name);
        match load_module(&path, name) {
            Ok(()) => n += 1,
            Err(e) => error!("{}", e.report()),
        }
    }
    console(&format!(
        "{n} modules loaded in {} ms",
        t0.elapsed().as_millis()
    ));
}

/// `finit_module` of `path` (one already loaded is fine).
fn load_module(path: &Path, name: &str) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| Error::Open(path.into(), e))?;
    match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(Error::LoadModule(name.into(), e)),
    }
}

/// Moves `src` (file, dir, link, node) to `dst`, deleting the source as it goes.
fn move_entry(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        std::fs::create_dir_all(dst)?;
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            move_entry(&e.path(), &dst.join(e.file_name()))?;
        }
        let _ = std::fs::remove_dir(src);
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
        let _ = std::fs::remove_file(src);
    } else if ft.is_file() {
        std::fs::copy(src, dst)?;
        let _ = std::fs::remove_file(src);
    } else {
        let c = CString::new(dst.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: mknod with a valid path and the source's mode and device.
        if unsafe { libc::mknod(c.as_ptr(), meta.mode(), meta.rdev()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let _ = std::fs::remove_file(src);
    }
    let _ = std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()));
    Ok(())
}

fn move_root() -> Result<()> {
    let new = Path::new("/newroot");
    std::fs::create_dir_all(new).map_err(|e| Error::Mkdir(new.into(), e))?;
    mount(
        Some("rootfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|source| Error::Mount {
        src: "rootfs".into(),
        dst: "/newroot".into(),
        fstype: "tmpfs".into(),
        source,
    })?;
    let _ = std::fs::remove_dir_all("/lib/modules/fcvm"); // loaded already
    let root = std::fs::read_dir("/").map_err(|e| Error::Read("/".into(), e))?;
    for e in root.flatten() {
        let name = e.file_name();
        let dst = new.join(&name);
        match name.to_str() {
            Some("newroot") => {}
            Some("proc" | "sys" | "dev") => {
                std::fs::create_dir_all(&dst).map_err(|e| Error::Mkdir(dst.clone(), e))?;
                let src = Path::new("/").join(&name);
                mount(
                    Some(&src),
                    &dst,
                    None::<&str>,
                    MsFlags::MS_MOVE,
                    None::<&str>,
                )
                .map_err(|source| Error::MoveMount {
                    src: src.display().to_string(),
                    dst: dst.display().to_string(),
                    source,
                })?;
            }
            _ => move_entry(&e.path(), &dst).map_err(|err| Error::MoveEntry(e.path(), err))?,
        }
    }
    std::env::set_current_dir(new).map_err(|e| Error::Chdir(new.into(), e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|source| {
        Error::MoveMount {
            src: "/newroot".into(),
            dst: "/".into(),
            source,
        }
    })?;
    nix::unistd::chroot(".").map_err(Error::Chroot)?;
    std::env::set_current_dir("/").map_err(|e| Error::Chdir("/".into(), e))
}

/// Stage 2 mounts and the loopback interface.
pub fn stage2() {
    pseudo_fs();
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mnt(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid,
        Some("nsdelegate"),
    );
    enable_controllers();
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    );
    mnt("shm", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"));
    mnt(
        "run",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    );
    mnt(
        "tmp",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    for d in [RUN_DIR, IMAGE_MNT, RW_MNT, ROOTFS] {
        let _ = std::fs::create_dir_all(d);
    }
    if let Err(e) = lo_up() {
        warn!("lo up: {}", e.report());
    }
}

fn enable_controllers() {
    let ctl = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let want: Vec<String> = ctl.split_whitespace().map(|c| format!("+{c}")).collect();
    if !want.is_empty() {
        if let Err(e) = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", want.join(" ")) {
            warn!("enable cgroup controllers {}: {e}", want.join(" "));
        }
    }
}

fn lo_up() -> Result<()> {
    // SAFETY: a plain datagram socket for interface ioctls; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; the name fits; ioctls read/write that ifreq.
    let r = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            Err(Error::Ioctl("SIOCSIFFLAGS lo", err))
        } else {
            Ok(())
        }
    };
    r
}

/// Stops everything, flushes and unmounts the disks, and reboots (QEMU runs with -no-reboot,
/// so this ends the VM; RB_POWER_OFF may hang on microvm).
pub fn shutdown(streams: &[Arc<Stream>]) -> ! {
    let container: Vec<&Arc<Stream>> = streams
        .iter()
        .filter(|s| s.target == fcvm_proto::Target::Container)
        .collect();
    for s in &container {
        let _ = s.signal(libc::SIGTERM);
    }
    let t0 = Instant::now();
    while container.iter().any(|s| !s.finished()) && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for s in streams {
        s.kill();
    }
    crate::warm::discard();
    nix::unistd::sync();
    for m in [ROOTFS, RW_MNT, IMAGE_MNT] {
        if umount2(m, MntFlags::empty()).is_err() {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
    }
    nix::unistd::sync();
    info!("powering off");
    crate::log::flush(Duration::from_millis(200));
    // SAFETY: reboot(2) ends the VM; nothing runs after it.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
