//! Guest assets (`fcvm setup`, and the first step of every run): kernel and initramfs.
//!
//! [`ensure`] builds what is missing and reuses what is there:
//! 1. kernel: the newest complete `assets/kernel-<version>/` (ELF vmlinux + modules), else
//!    Debian's current kernel package through apt ([`kernel`]),
//! 2. initramfs: `assets/initramfs-<id16>.cpio`, its id hashed from the kernel id, the agent,
//!    crun with its libraries and busybox, rebuilt when any of them changes ([`initramfs`]).
//!    Those hashes are memoized by file stat ([`fingerprint`]): an unchanged set costs a few
//!    `stat`s.
//!
//! Every asset is built in `tmp/` and renamed into place, so a crash never leaves a half-written
//! one behind. Building holds an exclusive lock on `locks/assets.lock`: two concurrent runs
//! build once. When everything is cached, nothing is printed and no lock or network is used.

mod cpio;
mod fingerprint;
mod initramfs;
mod kernel;
mod modules;
mod vmlinux;

use std::path::{Path, PathBuf};

use crate::paths::Dirs;
use crate::progress;
use crate::util::{sha256_hex, ToolError};

/// How to build the agent, for errors that need it.
const AGENT_BUILD: &str =
    "RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile agent -p fc-agent --target x86_64-unknown-linux-gnu";

/// The files a VM boots from.
#[derive(Debug, Clone)]
pub struct Assets {
    /// ELF vmlinux (PVH entry for QEMU microvm, and what Firecracker expects).
    pub kernel: PathBuf,
    /// Uncompressed newc cpio with the agent as /init.
    pub initramfs: PathBuf,
    pub kernel_id: String,
    pub initramfs_id: String,
    /// e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
    /// The protocol the initramfs's agent speaks: this build's for assets made here (its
    /// `HelloAck` is checked at every boot); a snapshot's record for a clone of it (`None`:
    /// taken before snapshots recorded it).
    pub protocol: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error(
        "Agent binary fc-agent not found (looked at {searched}); build it with `{AGENT_BUILD}`"
    )]
    AgentNotFound { searched: String },
    #[error("Agent {0} is not a static executable; build it with `{AGENT_BUILD}`")]
    AgentNotStatic(PathBuf),
    #[error("crun not found: install it with apt-get install crun")]
    CrunMissing,
    #[error("Library {0} of crun not found")]
    CrunLibrary(String),
    #[error("busybox not found at /bin/busybox: install it with apt-get install busybox-static")]
    BusyboxMissing,
    #[error("{0} is not a static executable: install busybox-static")]
    BusyboxNotStatic(PathBuf),
    #[error("No Debian kernel package found with `apt-cache depends linux-image-amd64`")]
    KernelPackage,
    #[error("Unexpected kernel package: {0}")]
    BadKernelPackage(String),
    #[error("No ELF kernel inside the kernel image (tried xz, zstd, gzip)")]
    NoVmlinux,
    #[error("Kernel module {0} not found")]
    ModuleMissing(String),
    #[error("Cannot lock {0}")]
    Lock(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("Cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `map_err` helper: `.map_err(io_err("read", &path))`.
pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AssetError {
    let path = path.to_path_buf();
    move |source| AssetError::Io { op, path, source }
}

/// Builds what is missing, reuses what is there (a no-op the second time), shows progress.
pub fn ensure(dirs: &Dirs, agent: &Path) -> Result<Assets, AssetError> {
    // Only the headers: the whole agent is read when an initramfs is built.
    let head = elf_head(agent).map_err(io_err("read", agent))?;
    if !is_static_elf(&head) {
        return Err(AssetError::AgentNotStatic(agent.to_path_buf()));
    }
    let mut memo = fingerprint::Memo::load(dirs.assets().join(fingerprint::FILE));
    let agent_sha = memo.sha256(agent).map_err(io_err("read", agent))?;
    let crun = initramfs::crun_files(&mut memo)?;
    let busybox = initramfs::busybox_file(&mut memo)?;
    memo.save();

    // Fast path: everything published is complete (atomic renames), so no lock is needed.
    if let Some(a) = cached(dirs, &agent_sha, &crun, &busybox) {
        return Ok(a);
    }
    let _lock = lock(dirs)?;
    clean_stale(dirs);
    // Another process may have built it while we waited.
    let kernel = match kernel::find_complete(&dirs.assets()) {
        Some(k) => k,
        None => kernel::build(dirs)?,
    };
    // The id hashes the very bytes archived: the agent may have been rebuilt since it was
    // hashed above.
    let agent_bytes = std::fs::read(agent).map_err(io_err("read", agent))?;
    if !is_static_elf(&agent_bytes) {
        return Err(AssetError::AgentNotStatic(agent.to_path_buf()));
    }
    let id = initramfs::id(&kernel.id, &sha256_hex(&agent_bytes), &crun, &busybox);
    let path = initramfs_path(dirs, &id);
    if !path.exists() {
        let step = progress::step("Building initramfs");
        let modules = kernel.dir.join("modules");
        let archive = initramfs::archive(agent_bytes, &modules, &crun, &busybox)?;
        initramfs::write(&archive, &dirs.tmp(), &path)?;
        step.finish();
    }
    Ok(assets(kernel, path, id))
}

fn cached(
    dirs: &Dirs,
    agent_sha: &str,
    crun: &[initramfs::HostFile],
    busybox: &initramfs::HostFile,
) -> Option<Assets> {
    let kernel = kernel::find_complete(&dirs.assets())?;
    let id = initramfs::id(&kernel.id, agent_sha, crun, busybox);
    let path = initramfs_path(dirs, &id);
    path.is_file().then(|| assets(kernel, path, id))
}

fn initramfs_path(dirs: &Dirs, id: &str) -> PathBuf {
    dirs.assets().join(format!("initramfs-{}.cpio", &id[..16]))
}

fn assets(kernel: kernel::Kernel, initramfs: PathBuf, initramfs_id: String) -> Assets {
    Assets {
        kernel: kernel.dir.join("vmlinux"),
        initramfs,
        kernel_id: kernel.id,
        initramfs_id,
        kernel_version: kernel.version,
        protocol: Some(fcvm_proto::PROTOCOL_VERSION),
    }
}

/// Takes `locks/assets.lock`, saying so when another fcvm holds it (it is building).
fn lock(dirs: &Dirs) -> Result<std::fs::File, AssetError> {
    let path = dirs.locks().join("assets.lock");
    let open = || {
        crate::owner_only::create_dir(&dirs.locks())?;
        crate::owner_only::open_lock(&path)
    };
    let file = open().map_err(|e| AssetError::Lock(path.clone(), e))?;
    if file.try_lock().is_err() {
        let step = progress::step("Waiting for another fcvm to finish building assets");
        file.lock().map_err(|e| AssetError::Lock(path.clone(), e))?;
        step.finish();
    }
    Ok(file)
}

/// Removes what an interrupted build left in `tmp/` (the unpacked kernel package is ~400 MB).
/// Only called under the lock, so no other build is using these.
fn clean_stale(dirs: &Dirs) {
    let Ok(entries) = std::fs::read_dir(dirs.tmp()) else {
        return;
    };
    let prefixes = kernel::TMP_PREFIXES.iter().chain([&initramfs::TMP_PREFIX]);
    let prefixes: Vec<&str> = prefixes.copied().collect();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            tracing::debug!(%name, "removing leftover of an interrupted build");
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// True for an x86-64 ELF executable without a program interpreter (PT_INTERP): a dynamic
/// agent would die as PID 1 with an unhelpful kernel panic, so it is refused here. `b` needs
/// only the file's start up to the end of its program headers ([`elf_head`]).
fn is_static_elf(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let Some((phoff, phentsize, phnum)) = program_headers(b) else {
        return false;
    };
    (0..phnum).all(|i| {
        let o = phoff.saturating_add(i * phentsize);
        b.get(o..)
            .and_then(|t| t.get(..4))
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != PT_INTERP)
    })
}

/// e_phoff, e_phentsize and e_phnum of an x86-64 ELF64 little-endian header, else `None`.
fn program_headers(b: &[u8]) -> Option<(usize, usize, usize)> {
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()) as usize)
    };
    // ELF64 (class 2), little-endian (1), x86-64 (62).
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 || u16_at(18) != Some(62) {
        return None;
    }
    Some((u64_at(32)?, u16_at(54)?, u16_at(56)?))
}

/// The start of the file at `path` up to the end of its ELF program headers (a few hundred
/// bytes), or just its first 64 bytes if it is no x86-64 ELF.
fn elf_head(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut head = Vec::new();
    (&mut f).take(64).read_to_end(&mut head)?;
    if let Some((phoff, phentsize, phnum)) = program_headers(&head) {
        let end = phoff.saturating_add(phentsize * phnum);
        // `take` stops at the end of the file, whatever a bogus header claims.
        f.take(end.saturating_sub(head.len()) as u64)
            .read_to_end(&mut head)?;
    }
    Ok(head)
}

/// Where the static agent binary is: `$FCVM_AGENT`, else `fc-agent` next to the current exe,
/// else the `agent` profile's output relative to it (test binaries live in `target/*/deps`).
pub fn find_agent() -> Result<PathBuf, AssetError> {
    if let Some(p) = std::env::var_os("FCVM_AGENT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(AssetError::AgentNotFound {
                searched: format!("$FCVM_AGENT={}", p.display()),
            })
        };
    }
    let exe = std::env::current_exe().map_err(io_err("locate", Path::new("current exe")))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // The static build's own directory first: in a cargo target dir, `fc-agent` next to the
    // exe is the dynamic one a plain `cargo build` makes, which cannot be PID 1.
    let candidates = [
        dir.join("../x86_64-unknown-linux-gnu/agent/fc-agent"),
        dir.join("../../x86_64-unknown-linux-gnu/agent/fc-agent"),
        dir.join("fc-agent"),
    ];
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.canonicalize().unwrap_or_else(|_| p.clone()));
    }
    let searched = candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(AssetError::AgentNotFound { searched })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_agent_honours_env_and_says_how_to_build() {
        // The only test that touches FCVM_AGENT.
        std::env::set_var("FCVM_AGENT", "/nonexistent/fc-agent");
        let e = find_agent().unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/fc-agent") && e.contains(AGENT_BUILD),
            "{e}"
        );
        assert!(e.contains("cargo build --profile agent -p fc-agent"), "{e}");
        std::env::set_var("FCVM_AGENT", "/bin/sh");
        assert_eq!(find_agent().unwrap(), PathBuf::from("/bin/sh"));
        std::env::remove_var("FCVM_AGENT");
    }

    #[test]
    fn static_check() {
        let ls = std::fs::read("/bin/ls").unwrap();
        assert!(!is_static_elf(&ls), "/bin/ls is dynamic");
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        if let Ok(bb) = std::fs::read("/bin/busybox") {
            assert!(is_static_elf(&bb), "busybox-static");
        }
    }

    #[test]
    fn static_check_needs_only_the_head() {
        let head = elf_head(Path::new("/bin/ls")).unwrap();
        assert!(head.len() < 4096 && head.len() > 64, "{}", head.len());
        assert!(!is_static_elf(&head), "/bin/ls is dynamic");
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        assert_eq!(elf_head(&script).unwrap(), b"#!/bin/sh\n");
        if Path::new("/bin/busybox").exists() {
            assert!(is_static_elf(&elf_head(Path::new("/bin/busybox")).unwrap()));
        }
        // A header claiming program headers far beyond the file: read up to its end only.
        let mut bogus = [0u8; 64];
        bogus[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bogus[18] = 62;
        bogus[32..40].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        bogus[54..58].copy_from_slice(&[56, 0, 0xff, 0xff]);
        std::fs::write(&script, bogus).unwrap();
        assert_eq!(elf_head(&script).unwrap(), bogus);
        assert!(!is_static_elf(&bogus));
    }

    /// Builds the real assets: `FCVM_DATA_DIR` (default /tmp/fcvm-assets-test), agent
    /// `FCVM_TEST_AGENT` (default /bin/busybox). Needs apt, network, dpkg-deb, depmod, crun.
    /// `cargo test -p fcvm --lib assets::tests::real_ensure -- --ignored --nocapture`
    #[test]
    #[ignore]
    #[allow(clippy::print_stderr, reason = "a timing probe run by hand")]
    fn real_ensure() {
        let root = std::env::var_os("FCVM_DATA_DIR").unwrap_or("/tmp/fcvm-assets-test".into());
        let agent = std::env::var_os("FCVM_TEST_AGENT").unwrap_or("/bin/busybox".into());
        let dirs = Dirs::new(root);
        let t = std::time::Instant::now();
        let a = ensure(&dirs, Path::new(&agent)).unwrap();
        eprintln!("first ensure: {:.2}s {a:#?}", t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        let b = ensure(&dirs, Path::new(&agent)).unwrap();
        eprintln!("second ensure (cached): {:.3}s", t.elapsed().as_secs_f64());
        assert_eq!(a.initramfs, b.initramfs);
        assert_eq!(&std::fs::read(&a.kernel).unwrap()[..4], b"\x7fELF");
    }
}
