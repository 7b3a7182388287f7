//! The guest initramfs: the agent as `/init`, the kernel modules, crun and its libraries, and
//! busybox as the VM's own shell and tools (`fcvm exec --vm`).
//!
//! Content-addressed: the id hashes everything that goes in (kernel id, agent, crun and each
//! library, busybox, [`LAYOUT`]), so a rebuilt agent or an upgraded crun gives a new
//! `assets/initramfs-<id16>.cpio` and an unchanged set reuses the old file. The layout, which
//! the agent relies on:
//! ```text
//! /init                         the agent (static), 0755
//! /etc/fcvm/modules             module file names, one a line, in load order
//! /lib/modules/fcvm/<name>.ko   the modules
//! /usr/bin/crun + every library `ldd` lists, at the same absolute path (symlinks resolved:
//!                               the real file is stored under the linked name)
//! /usr/local/bin/busybox        the host's busybox-static, and a symlink to it per applet
//! /usr/local/bin/<applet>       (`busybox --list`): on the agent's default PATH, where
//!                               neither the kernel (/sbin/modprobe, /sbin/init) nor crun's
//!                               helpers (PATH without /usr/local) look
//! /dev/console (c 5 1), empty /proc /sys /dev /tmp /run /mnt /etc /root /var /usr/sbin /bin /sbin
//! ```
//! Uncompressed: QEMU loads it with a memcpy, while a gzip one is inflated by the guest's CPU,
//! which under TCG is emulated.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cpio::{Archive, Data};
use super::fingerprint::Memo;
use super::{io_err, AssetError};
use crate::util::{run_tool, sha256_hex};

/// Bump when the layout above changes, so every initramfs is rebuilt.
pub(super) const LAYOUT: &str = "fcvm-initramfs-2";
/// Prefix of the temp file in `tmp/` (a crash can leave one; see `clean_stale`).
pub(super) const TMP_PREFIX: &str = "initramfs.";
pub(super) const CRUN: &str = "/usr/bin/crun";
/// Debian's busybox-static, a run dependency of fcvm (the builtin image takes its own copy).
pub(super) const BUSYBOX: &str = "/bin/busybox";
/// Where the guest gets busybox and its applets.
const TOOLS_DIR: &str = "/usr/local/bin";
/// What `ldd` lists for crun depends on: crun and what the loader reads to find libraries
/// (ldconfig rewrites the cache whenever libraries are installed, moved or removed; dpkg runs
/// it).
const LDD_INPUTS: [&str; 3] = [CRUN, "/etc/ld.so.cache", "/etc/ld.so.preload"];
const EMPTY_DIRS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/tmp",
    "/run",
    "/mnt",
    "/etc",
    "/root",
    "/var",
    "/usr/sbin",
    "/bin",
    "/sbin",
];

/// A host file copied to the same path in the guest, with its content hash.
pub(super) struct HostFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// crun and the shared libraries it loads (including the dynamic loader), hashed. Both the
/// `ldd` list and the hashes come from `memo` while the files they depend on are unchanged.
pub(super) fn crun_files(memo: &mut Memo) -> Result<Vec<HostFile>, AssetError> {
    if !Path::new(CRUN).is_file() {
        return Err(AssetError::CrunMissing);
    }
    let libs = memo.paths(&ldd_key(), &LDD_INPUTS.map(Path::new), || {
        let out = run_tool(Command::new("ldd").arg(CRUN), "libc-bin")?;
        parse_ldd(&String::from_utf8_lossy(&out))
    })?;
    std::iter::once(PathBuf::from(CRUN))
        .chain(libs)
        .map(|path| {
            let sha256 = memo.sha256(&path).map_err(io_err("read", &path))?;
            Ok(HostFile { path, sha256 })
        })
        .collect()
}

/// The host's busybox, hashed (through `memo`).
pub(super) fn busybox_file(memo: &mut Memo) -> Result<HostFile, AssetError> {
    let path = PathBuf::from(BUSYBOX);
    if !path.is_file() {
        return Err(AssetError::BusyboxMissing);
    }
    let sha256 = memo.sha256(&path).map_err(io_err("read", &path))?;
    Ok(HostFile { path, sha256 })
}

/// The applet names `busybox --list` prints, one a line; anything that is not a plain file
/// name is skipped (a link is made per name in one directory).
fn parse_applets(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "." && *a != "..")
        .filter(|a| *a != "busybox")
        .collect()
}

/// Names the `ldd` run, with the environment the loader takes library paths, preloads and
/// tunables (e.g. which `glibc-hwcaps` variant to load) from.
fn ldd_key() -> String {
    let mut env: Vec<String> = std::env::vars_os()
        .map(|(n, v)| format!("{}={}", n.to_string_lossy(), v.to_string_lossy()))
        .filter(|kv| kv.starts_with("LD_") || kv.starts_with("GLIBC_TUNABLES="))
        .collect();
    env.sort();
    env.insert(0, format!("ldd {CRUN}"));
    env.join(" ")
}

/// The absolute library paths in `ldd` output, in its order. The vDSO has no file; a
/// library ldd cannot find would make crun fail in the guest, so it is an error here.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, AssetError> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((name, rest)) if rest.trim().starts_with("not found") => {
                return Err(AssetError::CrunLibrary(name.trim().to_string()))
            }
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(t) = target.filter(|t| t.starts_with('/')) {
            libs.push(PathBuf::from(t));
        }
    }
    Ok(libs)
}

/// The initramfs id: sha256 over the layout version and every input's hash.
pub(super) fn id(
    kernel_id: &str,
    agent_sha256: &str,
    crun: &[HostFile],
    busybox: &HostFile,
) -> String {
    let mut s = format!("{LAYOUT}\nkernel {kernel_id}\nagent {agent_sha256}\n");
    s += &format!("busybox {}\n", busybox.sha256);
    for f in crun {
        s += &format!("{} {}\n", f.path.display(), f.sha256);
    }
    sha256_hex(s.as_bytes())
}

/// Assembles the archive. `modules_dir` holds the `.ko` files and `modules.order`.
/// `agent` is the binary's content as hashed into the id (a rebuild meanwhile cannot slip in).
pub(super) fn archive(
    agent: Vec<u8>,
    modules_dir: &Path,
    crun: &[HostFile],
    busybox: &HostFile,
) -> Result<Archive, AssetError> {
    let mut a = Archive::new();
    for d in EMPTY_DIRS {
        a.dir(d);
    }
    a.char_dev("/dev/console", 0o600, 5, 1);
    a.file("/init", 0o755, Data::Bytes(agent));

    let order_path = modules_dir.join("modules.order");
    let order = std::fs::read_to_string(&order_path).map_err(io_err("read", &order_path))?;
    for name in order.lines().filter(|l| !l.is_empty()) {
        a.file(
            &format!("/lib/modules/fcvm/{name}"),
            0o644,
            Data::File(modules_dir.join(name)),
        );
    }
    a.file("/etc/fcvm/modules", 0o644, Data::Bytes(order.into_bytes()));

    for f in crun {
        // canonicalize: the guest gets the real file's bytes under the linked name.
        let real = f.path.canonicalize().map_err(io_err("resolve", &f.path))?;
        a.file(&f.path.to_string_lossy(), 0o755, Data::File(real));
    }
    add_busybox(&mut a, &busybox.path)?;
    Ok(a)
}

/// `TOOLS_DIR/busybox` and a relative symlink to it per applet. A dynamic busybox would need
/// libraries the guest may not have: only busybox-static is taken.
fn add_busybox(a: &mut Archive, busybox: &Path) -> Result<(), AssetError> {
    let real = busybox.canonicalize().map_err(io_err("resolve", busybox))?;
    let head = super::elf_head(&real).map_err(io_err("read", &real))?;
    if !super::is_static_elf(&head) {
        return Err(AssetError::BusyboxNotStatic(busybox.to_path_buf()));
    }
    let list = run_tool(Command::new(&real).arg("--list"), "busybox-static")?;
    let list = String::from_utf8_lossy(&list);
    a.file(&format!("{TOOLS_DIR}/busybox"), 0o755, Data::File(real));
    for applet in parse_applets(&list) {
        a.symlink(&format!("{TOOLS_DIR}/{applet}"), "busybox");
    }
    Ok(())
}

/// Writes `archive` to `dest` atomically (a temp file in `tmp`, on the same filesystem).
pub(super) fn write(archive: &Archive, tmp: &Path, dest: &Path) -> Result<(), AssetError> {
    crate::owner_only::create_dir(tmp).map_err(io_err("create", tmp))?;
    let file = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(tmp)
        .map_err(io_err("create a file in", tmp))?;
    let mut w = BufWriter::new(file);
    archive.write_to(&mut w).map_err(io_err("write", dest))?;
    let file = w
        .into_inner()
        .map_err(|e| io_err("write", dest)(e.into_error()))?;
    // tempfile creates 0600, and so it stays: QEMU runs as fcvm's own user.
    file.as_file().sync_all().map_err(io_err("write", dest))?;
    file.persist(dest)
        .map_err(|e| io_err("publish", dest)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD: &str = "\tlinux-vdso.so.1 (0x00007ffc7d5f8000)
\tlibsystemd.so.0 => /lib/x86_64-linux-gnu/libsystemd.so.0 (0x00007f2b)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2a)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f2b2c)
";

    #[test]
    fn parses_ldd_output() {
        let libs = parse_ldd(LDD).unwrap();
        let want = [
            "/lib/x86_64-linux-gnu/libsystemd.so.0",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ];
        assert_eq!(libs, want.map(PathBuf::from));
        let e = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(e.to_string().contains("libfoo.so.1"), "{e}");
    }

    #[test]
    fn id_changes_with_any_input() {
        let f = |sha: &str| {
            vec![HostFile {
                path: CRUN.into(),
                sha256: sha.into(),
            }]
        };
        let bb = |sha: &str| HostFile {
            path: BUSYBOX.into(),
            sha256: sha.into(),
        };
        let base = id("k", "a", &f("c"), &bb("b"));
        assert_eq!(base, id("k", "a", &f("c"), &bb("b")));
        assert_ne!(base, id("k2", "a", &f("c"), &bb("b")));
        assert_ne!(base, id("k", "a2", &f("c"), &bb("b")));
        assert_ne!(base, id("k", "a", &f("c2"), &bb("b")));
        assert_ne!(base, id("k", "a", &f("c"), &bb("b2")));
    }

    #[test]
    fn applets_are_plain_names() {
        let list = "[\n[[\nash\nbusybox\ncat\n\n../x\nsh\n.\n";
        assert_eq!(parse_applets(list), ["[", "[[", "ash", "cat", "sh"]);
    }

    #[test]
    fn a_dynamic_busybox_is_refused() {
        let e = add_busybox(&mut Archive::new(), Path::new("/bin/ls")).unwrap_err();
        assert!(matches!(e, AssetError::BusyboxNotStatic(_)), "{e}");
    }

    #[test]
    fn layout_as_the_agent_expects() {
        let d = tempfile::tempdir().unwrap();
        let mods = d.path().join("modules");
        std::fs::create_dir(&mods).unwrap();
        std::fs::write(mods.join("virtio.ko"), b"v").unwrap();
        std::fs::write(mods.join("modules.order"), "virtio.ko\n").unwrap();
        let agent = d.path().join("agent");
        std::fs::write(&agent, b"\x7fELF").unwrap();
        let link = d.path().join("liblink.so");
        std::os::unix::fs::symlink(&agent, &link).unwrap();
        let crun = [HostFile {
            path: link.clone(),
            sha256: String::new(),
        }];
        // The host's busybox-static (a run dependency of fcvm).
        let busybox = HostFile {
            path: BUSYBOX.into(),
            sha256: String::new(),
        };

        let dest = d.path().join("out.cpio");
        write(
            &archive(std::fs::read(&agent).unwrap(), &mods, &crun, &busybox).unwrap(),
            &d.path().join("tmp"),
            &dest,
        )
        .unwrap();
        let out = Command::new("cpio")
            .args(["-itv", "-F"])
            .arg(&dest)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        for want in [
            "init",
            "etc/fcvm/modules",
            "lib/modules/fcvm/virtio.ko",
            "dev/console",
            "usr/sbin",
            "sbin",
            "usr/local/bin/busybox",
        ] {
            assert!(
                list.lines().any(|l| l.ends_with(&format!(" {want}"))),
                "{want} missing:\n{list}"
            );
        }
        // The VM's shell and tools: links to busybox, on the agent's default PATH.
        for applet in ["sh", "cat", "ls", "head"] {
            let want = format!(" usr/local/bin/{applet} -> busybox");
            assert!(
                list.lines()
                    .any(|l| l.starts_with('l') && l.ends_with(&want)),
                "{applet} missing:\n{list}"
            );
        }
        assert!(fcvm_proto::DEFAULT_PATH.split(':').any(|d| d == TOOLS_DIR));
        // The symlink is stored as a regular file under its own name.
        let rel = link.to_string_lossy().trim_start_matches('/').to_string();
        let line = list.lines().find(|l| l.ends_with(&rel)).unwrap();
        assert!(line.starts_with("-rwxr-xr-x"), "{line}");
    }
}
