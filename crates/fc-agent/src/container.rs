//! The container's root filesystem (Prepare) and identity files.
//!
//! Prepare (once per VM, idempotent):
//! 1. the virtio disk whose `/sys/block/vd*/ro` is 1 is the image, the other the writable disk;
//! 2. image (ro, `plan.image_fstype`) → /mnt/image, writable (ext4) → /mnt/rw;
//! 3. overlay `lower=/mnt/image, upper=/mnt/rw/upper, work=/mnt/rw/work` → /run/fcvm/rootfs;
//! 4. hostname for the VM (the container shares its UTS namespace); the container's
//!    /etc/hostname, /etc/hosts, /etc/resolv.conf and /etc/machine-id are files under [`ETC`]
//!    (tmpfs) that its config bind-mounts, as podman does for the first three. They stay open
//!    from Prepare on: a restore rewrites them in place without a path lookup or an open,
//!    each of which costs milliseconds of untranslated kernel code under TCG. The VM's own
//!    /etc/machine-id is a symlink to the same file;
//! 5. extra disks (`--disk`) on /run/fcvm/disks/N ([`crate::disks`]);
//! 6. crun sealed in memory, once per VM ([`crate::crun::seal_once`]).
//!
//! The OCI config that `crun` runs it with is written by [`crate::oci`].

use crate::error::{Error, Result};
use crate::paths::{ETC, ETC_FILES, IMAGE_MNT, ROOTFS, RW_MNT};
use fcvm_proto::ContainerPlan;
use nix::mount::{mount, MsFlags};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Set once the container root is mounted: a restore asks, and reading /proc/mounts right
/// after a restore is slow under TCG (every kernel path runs untranslated once).
static PREPARED: AtomicBool = AtomicBool::new(false);

const HOSTNAME: usize = 0;
const HOSTS: usize = 1;
const RESOLV_CONF: usize = 2;
const MACHINE_ID: usize = 3;

/// [`ETC_FILES`], open for writing, in that order.
static ETC_OPEN: OnceLock<Vec<File>> = OnceLock::new();
/// The length last written to each of [`ETC_OPEN`] (opened truncated).
static ETC_LEN: [AtomicU64; ETC_FILES.len()] = [const { AtomicU64::new(0) }; ETC_FILES.len()];

/// The image and writable disks under `sys_block` (`/sys/block`): (image, writable) device names.
pub fn find_disks(sys_block: &Path) -> (Option<String>, Option<String>) {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("vd") && !crate::disks::is_extra(sys_block, n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let (mut img, mut rw) = (None, None);
    for n in names {
        let ro = std::fs::read_to_string(sys_block.join(&n).join("ro")).unwrap_or_default();
        if ro.trim() == "1" {
            img.get_or_insert(n);
        } else {
            rw.get_or_insert(n);
        }
    }
    (img, rw)
}

/// `/etc/hosts` of the container.
pub fn hosts_text(hostname: &str) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.0.1\t{hostname}\n"));
    }
    s
}

fn is_mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(path)))
        .unwrap_or(false)
}

fn do_mount(src: &str, dst: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<()> {
    if is_mounted(dst) {
        return Ok(());
    }
    std::fs::create_dir_all(dst).map_err(|e| Error::Mkdir(dst.into(), e))?;
    mount(Some(src), dst, Some(fstype), flags, data).map_err(|source| Error::Mount {
        src: src.into(),
        dst: dst.into(),
        fstype: fstype.into(),
        source,
    })
}

/// Mounts the container root (idempotent: mounted steps are skipped).
pub fn prepare(plan: &ContainerPlan) -> Result<()> {
    let (img, rw) = find_disks(Path::new("/sys/block"));
    let img = img.ok_or(Error::NoImageDisk)?;
    let rw = rw.ok_or(Error::NoWritableDisk)?;
    let fstype = if plan.image_fstype.is_empty() {
        "erofs"
    } else {
        &plan.image_fstype
    };
    do_mount(
        &format!("/dev/{img}"),
        IMAGE_MNT,
        fstype,
        MsFlags::MS_RDONLY,
        None,
    )?;
    // No ext4lazyinit thread: it would prefetch block bitmaps (and zero inode tables the
    // host's mkfs did not mark zeroed) in the background for a while after mounting, and a
    // snapshot taken meanwhile hands the rest of that work, and the thread's exit, on to
    // every restore of it. The disk is the VM's own and throwaway: nothing needs either.
    do_mount(
        &format!("/dev/{rw}"),
        RW_MNT,
        "ext4",
        MsFlags::empty(),
        Some("noinit_itable,no_prefetch_block_bitmaps"),
    )?;
    for d in ["/mnt/rw/upper", "/mnt/rw/work"] {
        std::fs::create_dir_all(d).map_err(|e| Error::Mkdir(d.into(), e))?;
    }
    do_mount(
        "overlay",
        ROOTFS,
        "overlay",
        MsFlags::empty(),
        Some("lowerdir=/mnt/image,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"),
    )?;
    // Extra disks (`--disk`), before the container is created: its config binds them.
    crate::disks::mount(&plan.disks, |dev, at| {
        let opts = Some("noinit_itable,no_prefetch_block_bitmaps");
        do_mount(dev, at, "ext4", MsFlags::empty(), opts)
    })?;
    crate::fuse::mount_all(&plan.maps)?;
    PREPARED.store(true, Ordering::SeqCst);
    crate::crun::seal_once();
    if let Some(n) = &plan.network {
        crate::net::configure(n)?;
    }
    // Every bind-mounted file must exist, even with no hostname given.
    let current = nix::unistd::gethostname().unwrap_or_default();
    let current = current.to_string_lossy();
    let hostname = Some(plan.hostname.as_str())
        .filter(|h| !h.is_empty())
        .unwrap_or(&*current);
    let fresh_id = etc_files()?[MACHINE_ID].metadata().map(|m| m.len() == 0);
    let id = fresh_id.unwrap_or(true).then(random_machine_id);
    set_identity(Some(hostname), id.as_deref())?;
    let _ = std::fs::remove_file("/etc/machine-id");
    let _ = std::os::unix::fs::symlink(Path::new(ETC).join("machine-id"), "/etc/machine-id");
    copy_resolv_conf()
}

/// Sets the VM's (and so the container's) hostname and writes the container's identity files
/// (hostname, hosts, machine-id) — used by Prepare and by restore steps.
pub fn set_identity(hostname: Option<&str>, machine_id: Option<&str>) -> Result<()> {
    if let Some(h) = hostname.filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(|e| Error::SetHostname(h.into(), e))?;
        rewrite(HOSTNAME, format!("{h}\n").as_bytes())?;
        rewrite(HOSTS, hosts_text(h).as_bytes())?;
    }
    if let Some(id) = machine_id.filter(|m| !m.is_empty()) {
        rewrite(MACHINE_ID, format!("{id}\n").as_bytes())?;
    }
    Ok(())
}

/// Copies the VM's resolv.conf (written by [`crate::net`]; empty without a network) to the
/// container's.
pub fn copy_resolv_conf() -> Result<()> {
    let r = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    rewrite(RESOLV_CONF, &r)
}

/// Opens (creating) the identity files once.
fn etc_files() -> Result<&'static [File]> {
    if let Some(f) = ETC_OPEN.get() {
        return Ok(f);
    }
    std::fs::create_dir_all(ETC).map_err(|e| Error::Mkdir(ETC.into(), e))?;
    let files = ETC_FILES
        .iter()
        .map(|name| {
            let path = Path::new(ETC).join(name);
            let mut o = std::fs::OpenOptions::new();
            o.write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| Error::Open(path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ETC_OPEN.get_or_init(|| files))
}

/// Replaces the contents of identity file `i` in place: the bind mounts keep pointing at
/// these inodes. Truncates only a file that got shorter: a restore rewrites the same kinds
/// of names and ids, and the truncation path is one more to translate under TCG.
fn rewrite(i: usize, contents: &[u8]) -> Result<()> {
    let f = &etc_files()?[i];
    let err = |e| Error::Write(Path::new(ETC).join(ETC_FILES[i]), e);
    f.write_all_at(contents, 0).map_err(err)?;
    let len = contents.len() as u64;
    if ETC_LEN[i].swap(len, Ordering::SeqCst) > len {
        f.set_len(len).map_err(err)?;
    }
    Ok(())
}

/// 32 hex digits from the kernel's RNG, as systemd writes a machine-id. GRND_INSECURE: an
/// id needs uniqueness, not secrecy, and must not wait for the RNG (a restore rewrites it
/// with the host's anyway); /dev/urandom if that fails.
fn random_machine_id() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = crate::reaper::retry_eintr(|| unsafe {
        libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_INSECURE)
    });
    if n != b.len() as isize {
        use std::io::Read;
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether the container root is mounted.
pub fn prepared() -> bool {
    PREPARED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_by_ro_flag() {
        let dir = std::env::temp_dir().join(format!("fc-agent-disks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (n, ro) in [("vda", "0"), ("vdb", "1"), ("loop0", "1")] {
            std::fs::create_dir_all(dir.join(n)).unwrap();
            std::fs::write(dir.join(n).join("ro"), format!("{ro}\n")).unwrap();
        }
        assert_eq!(find_disks(&dir), (Some("vdb".into()), Some("vda".into())));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(find_disks(&dir), (None, None));
        assert!(hosts_text("box").contains("127.0.0.1\tbox"));
    }
}
