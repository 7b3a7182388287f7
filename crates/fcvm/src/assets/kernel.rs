//! The guest kernel: Debian's current `linux-image-*-amd64`, as `assets/kernel-<version>/`.
//!
//! ```text
//! kernel-6.1.0-56-amd64/
//!   vmlinux            ELF, extracted from the bzImage (see vmlinux.rs)
//!   modules/*.ko       the wanted modules and their dependencies, plain .ko
//!   modules/modules.order
//!   complete           "<LAYOUT>\n<kernel id>\n", written last
//! ```
//! Building (only when no complete kernel dir exists; a found one is reused without any apt or
//! network call):
//! 1. `apt-cache depends linux-image-amd64` names the current package (`apt-get update` once if
//!    the lists are empty or stale), `apt-get download` fetches it: apt picks the mirror,
//! 2. `dpkg-deb -x` unpacks it, `depmod -b` writes the modules.dep the .deb lacks,
//! 3. vmlinux and modules go into a temp dir under `tmp/`, which is renamed into place.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io_err, modules, vmlinux, AssetError};
use crate::paths::Dirs;
use crate::progress;
use crate::util::{self, run_tool, sha256_file};

/// Bump when the kernel dir's layout or the module list changes: old dirs are then rebuilt.
const LAYOUT: &str = "fcvm-kernel-2";
const META_PACKAGE: &str = "linux-image-amd64";
/// Prefixes of the temp dirs in `tmp/` (a crash can leave them; see `clean_stale`).
pub(super) const TMP_PREFIXES: [&str; 2] = ["kernel-pkg.", "kernel."];

pub(super) struct Kernel {
    pub dir: PathBuf,
    pub version: String,
    /// sha256 over vmlinux and the modules: part of the initramfs id.
    pub id: String,
}

/// The newest complete kernel dir under `assets`, if any.
pub(super) fn find_complete(assets: &Path) -> Option<Kernel> {
    let mut found: Vec<Kernel> = std::fs::read_dir(assets)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("kernel-")?.to_string();
            let marker = std::fs::read_to_string(e.path().join("complete")).ok()?;
            let (layout, id) = marker.split_once('\n')?;
            (layout == LAYOUT).then(|| Kernel {
                dir: e.path(),
                version,
                id: id.trim().to_string(),
            })
        })
        .collect();
    found.sort_by_key(|k| version_key(&k.version));
    found.pop()
}

/// Orders "6.1.0-9" before "6.1.0-10": digit runs compare as numbers.
fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let text_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (text, tail) = tail.split_at(text_len);
        key.push((num.parse().unwrap_or(0), text.to_string()));
        rest = tail;
    }
    key
}

/// The versioned package `linux-image-amd64` depends on, or `None` (e.g. empty apt lists).
fn resolve_package() -> Option<String> {
    let out = run_tool(
        Command::new("apt-cache").args(["depends", META_PACKAGE]),
        "apt",
    )
    .ok()?;
    parse_depends(&String::from_utf8_lossy(&out))
}

fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|p| p.trim().trim_matches(|c| c == '<' || c == '>'))
        .find(|p| p.starts_with("linux-image-") && *p != META_PACKAGE)
        .map(str::to_string)
}

fn apt_update() -> Result<(), AssetError> {
    let step = progress::step("Updating apt package lists (apt-get update)");
    run_tool(Command::new("apt-get").args(["update", "-qq"]), "apt")?;
    step.finish();
    Ok(())
}

/// Downloads the kernel package into `dir`; returns its path.
fn download(dir: &Path) -> Result<PathBuf, AssetError> {
    let mut updated = false;
    loop {
        let pkg = match resolve_package() {
            Some(p) => p,
            None if !updated => {
                apt_update()?;
                updated = true;
                continue;
            }
            None => return Err(AssetError::KernelPackage),
        };
        let step = progress::step(format!("Fetching kernel package {pkg}"));
        let got = run_tool(
            Command::new("apt-get")
                .args(["download", "-q", &pkg])
                .current_dir(dir),
            "apt",
        );
        match got {
            Ok(_) => step.finish(),
            // Stale lists name a version the mirror no longer has: refresh once and retry.
            Err(_) if !updated => {
                drop(step);
                apt_update()?;
                updated = true;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let deb = std::fs::read_dir(dir)
            .map_err(io_err("read", dir))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"));
        return deb.ok_or_else(|| {
            AssetError::BadKernelPackage(format!("apt-get download left no .deb for {pkg}"))
        });
    }
}

/// Fetches, unpacks and publishes a new kernel dir. The caller holds the assets lock.
pub(super) fn build(dirs: &Dirs) -> Result<Kernel, AssetError> {
    let work =
        util::temp_dir_in(&dirs.tmp(), TMP_PREFIXES[0]).map_err(io_err("create", &dirs.tmp()))?;
    let deb = download(work.path())?;

    let step = progress::step("Unpacking kernel package");
    let root = work.path().join("root");
    run_tool(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg",
    )?;
    // bookworm ships lib/modules; merged-/usr packages ship usr/lib/modules, which depmod -b
    // still looks for under lib/.
    if !root.join("lib/modules").exists() && root.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).map_err(io_err("link", &root))?;
    }
    let mods_root = root.join("lib/modules");
    let version = std::fs::read_dir(&mods_root)
        .map_err(io_err("read", &mods_root))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| AssetError::BadKernelPackage("no lib/modules/<version>".into()))?;
    run_tool(
        Command::new("depmod").arg("-b").arg(&root).arg(&version),
        "kmod",
    )?;
    step.finish();

    let step = progress::step("Extracting vmlinux");
    let out =
        util::temp_dir_in(&dirs.tmp(), TMP_PREFIXES[1]).map_err(io_err("create", &dirs.tmp()))?;
    let bz_path = root.join("boot").join(format!("vmlinuz-{version}"));
    let bz = std::fs::read(&bz_path).map_err(io_err("read", &bz_path))?;
    let elf = vmlinux::extract(&bz)
        .map_err(io_err("decompress", &bz_path))?
        .ok_or(AssetError::NoVmlinux)?;
    let vmlinux_path = out.path().join("vmlinux");
    std::fs::write(&vmlinux_path, &elf).map_err(io_err("write", &vmlinux_path))?;
    let names = modules::install(&mods_root.join(&version), &out.path().join("modules"))?;
    drop(work); // the unpacked package is ~400 MB: remove it while the step is still shown

    let mut ids = format!("{LAYOUT}\n{version}\nvmlinux {}\n", util::sha256_hex(&elf));
    for n in &names {
        let p = out.path().join("modules").join(n);
        ids += &format!("{n} {}\n", sha256_file(&p).map_err(io_err("read", &p))?);
    }
    let id = util::sha256_hex(ids.as_bytes());
    let marker = out.path().join("complete");
    std::fs::write(&marker, format!("{LAYOUT}\n{id}\n")).map_err(io_err("write", &marker))?;

    let dest = dirs.assets().join(format!("kernel-{version}"));
    if dest.exists() {
        // Incomplete or from an older LAYOUT (find_complete skipped it): replace it.
        std::fs::remove_dir_all(&dest).map_err(io_err("remove", &dest))?;
    }
    util::publish_dir(out, &dest).map_err(io_err("publish", &dest))?;
    step.finish();
    tracing::info!(%version, modules = ?names, "kernel assets built");
    Ok(Kernel {
        dir: dest,
        version,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_depends("E: No packages found\n"), None);
    }

    #[test]
    fn picks_newest_complete_dir() {
        let d = tempfile::tempdir().unwrap();
        for (v, layout) in [
            ("6.1.0-9-amd64", LAYOUT),
            ("6.1.0-10-amd64", LAYOUT),
            ("6.1.0-11-amd64", "old"),
        ] {
            let k = d.path().join(format!("kernel-{v}"));
            std::fs::create_dir_all(&k).unwrap();
            std::fs::write(k.join("complete"), format!("{layout}\nid-{v}\n")).unwrap();
        }
        std::fs::create_dir_all(d.path().join("kernel-6.1.0-12-amd64")).unwrap(); // no marker
        let k = find_complete(d.path()).unwrap();
        assert_eq!(k.version, "6.1.0-10-amd64");
        assert_eq!(k.id, "id-6.1.0-10-amd64");
        assert!(find_complete(&d.path().join("missing")).is_none());
    }
}
