//! The kernel modules the guest needs, resolved through `modules.dep` into a load order.
//!
//! Every virtio, vsock, ext4, overlay and erofs driver in Debian's kernel is a module, and the
//! agent (PID 1, no modprobe) loads them with `finit_module` in the order of `modules.order`:
//! 1. parse `modules.dep` (written by `depmod -b`; the .deb ships none),
//! 2. visit each wanted module's dependencies depth-first, so dependencies come first,
//! 3. copy each file as a plain `<name>.ko` (decompressing `.ko.xz` / `.ko.zst`: the agent has
//!    no decompressor), and write their file names, one a line, to `modules.order`.
//!
//! A wanted module listed in `modules.builtin` is part of the kernel image and is skipped.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use super::{io_err, AssetError};

/// What the guest loads, in this order. `crc32c_generic` comes first: libcrc32c (erofs) and
/// ext4/jbd2 need a crc32c implementation through a softdep that modules.dep does not show.
pub(super) const WANTED: &[&str] = &[
    "crc32c_generic",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "ext4",
    "overlay",
    "erofs",
    "vmw_vsock_virtio_transport",
    // `--map`: the agent serves host directories over FUSE (docs/volumes.md).
    "fuse",
];

/// The module name of a path in modules.dep: `kernel/fs/ext4/ext4.ko.xz` → `ext4`.
/// Names treat `-` and `_` alike, as the kernel does.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Resolves `wanted` into module paths (relative to the module dir), dependencies first.
pub(super) fn load_order(
    dep: &str,
    builtin: &str,
    wanted: &[&str],
) -> Result<Vec<String>, AssetError> {
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(path, rest.split_whitespace().collect());
        by_name.insert(module_name(path), path);
    }
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for want in wanted {
        let name = want.replace('-', "_");
        match by_name.get(&name) {
            Some(path) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.contains(&name) => tracing::debug!(module = %name, "built in, skipped"),
            None => return Err(AssetError::ModuleMissing(name)),
        }
    }
    Ok(order)
}

fn visit<'a>(
    path: &'a str,
    deps: &HashMap<&'a str, Vec<&'a str>>,
    seen: &mut HashSet<&'a str>,
    order: &mut Vec<String>,
) {
    if !seen.insert(path) {
        return;
    }
    for d in deps.get(path).into_iter().flatten() {
        visit(d, deps, seen, order);
    }
    order.push(path.to_string());
}

/// Reads a module file, decompressing `.ko.xz` / `.ko.zst`.
fn read_module(path: &Path) -> std::io::Result<Vec<u8>> {
    let raw = std::fs::read(path)?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(&raw[..]).read_to_end(&mut out)?;
    } else if name.ends_with(".zst") {
        out = zstd::decode_all(&raw[..])?;
    } else {
        out = raw;
    }
    Ok(out)
}

/// Copies the wanted modules from `moddir` (`lib/modules/<version>` after depmod) into `out` as
/// plain `.ko` files plus `modules.order`. Returns the file names in load order.
pub(super) fn install(moddir: &Path, out: &Path) -> Result<Vec<String>, AssetError> {
    let read = |name: &str| {
        let p = moddir.join(name);
        std::fs::read_to_string(&p).map_err(io_err("read", &p))
    };
    let dep = read("modules.dep")?;
    let builtin = read("modules.builtin").unwrap_or_default();
    let order = load_order(&dep, &builtin, WANTED)?;

    crate::owner_only::create_dir(out).map_err(io_err("create", out))?;
    let mut names = Vec::new();
    for rel in &order {
        let src = moddir.join(rel);
        let base = rel.rsplit('/').next().unwrap_or(rel);
        let file = format!("{}.ko", base.split(".ko").next().unwrap_or(base));
        let data = read_module(&src).map_err(io_err("read", &src))?;
        let dst = out.join(&file);
        std::fs::write(&dst, data).map_err(io_err("write", &dst))?;
        names.push(file);
    }
    let list = out.join("modules.order");
    let text: String = names.iter().map(|n| format!("{n}\n")).collect();
    std::fs::write(&list, text).map_err(io_err("write", &list))?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/block/virtio-blk.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn dependencies_come_first_and_once() {
        let order = load_order(
            DEP,
            "",
            &["crc32c_generic", "virtio_blk", "virtio_mmio", "ext4"],
        )
        .unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "crc32c_generic",
                "virtio",
                "virtio_ring",
                "virtio_blk",
                "virtio_mmio",
                "crc16",
                "mbcache",
                "jbd2",
                "ext4"
            ]
        );
    }

    #[test]
    fn builtin_is_skipped_unknown_is_an_error() {
        let builtin = "kernel/fs/overlayfs/overlay.ko\n";
        let order = load_order(DEP, builtin, &["overlay", "crc32c_generic"]).unwrap();
        assert_eq!(order, ["kernel/crypto/crc32c_generic.ko"]);
        let e = load_order(DEP, builtin, &["no_such"]).unwrap_err();
        assert!(
            matches!(e, AssetError::ModuleMissing(ref n) if n == "no_such"),
            "{e}"
        );
    }

    #[test]
    fn install_decompresses_and_writes_order() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("mods");
        for (rel, body) in [
            ("a/virtio.ko", b"V".to_vec()),
            ("a/virtio_ring.ko", b"R".to_vec()),
        ] {
            std::fs::create_dir_all(m.join("a")).unwrap();
            std::fs::write(m.join(rel), body).unwrap();
        }
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(b"\x7fELF blk").unwrap();
        std::fs::write(m.join("a/virtio-blk.ko.xz"), xz.finish().unwrap()).unwrap();
        let dep = "a/virtio-blk.ko.xz: a/virtio.ko a/virtio_ring.ko\na/virtio_ring.ko: a/virtio.ko\na/virtio.ko:\n";
        std::fs::write(m.join("modules.dep"), dep).unwrap();
        // Everything else in WANTED is "built in" here.
        let builtin: String = WANTED.iter().map(|w| format!("k/{w}.ko\n")).collect();
        std::fs::write(
            m.join("modules.builtin"),
            builtin.replace("k/virtio_blk.ko\n", ""),
        )
        .unwrap();

        let out = d.path().join("out");
        let names = install(&m, &out).unwrap();
        assert_eq!(names, ["virtio.ko", "virtio_ring.ko", "virtio-blk.ko"]);
        assert_eq!(
            std::fs::read(out.join("virtio-blk.ko")).unwrap(),
            b"\x7fELF blk"
        );
        let order = std::fs::read_to_string(out.join("modules.order")).unwrap();
        assert_eq!(order, "virtio.ko\nvirtio_ring.ko\nvirtio-blk.ko\n");
    }
}
