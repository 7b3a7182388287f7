//! `builtin:busybox` and `builtin:base`: images that need no registry, made from Debian's
//! busybox-static (and, for `base`, bash-static: the E2B SDK runs every command with
//! `/bin/bash -l -c`, so `fcvm serve`'s default template needs a bash).
//!
//! 1. `apt-get download busybox-static` (the host's own apt sources, never a fixed mirror; one
//!    `apt-get update` if the package lists are empty), `dpkg-deb -x`, take `bin/busybox`;
//!    for `base` the same for bash-static's `bin/bash-static`.
//! 2. One layer: busybox, a symlink per applet (`busybox --list`) in bin/, a minimal etc/passwd
//!    and etc/group, tmp/ (1777), root/, proc/ sys/ dev/. `base` adds bin/bash and E2B's
//!    default account, `user` (1000:1000, home /home/user). Fixed mtimes, owners and order, and
//!    a gzip header without a timestamp: the same packages give the same digest.
//! 3. An OCI layout (oci-layout, index.json tagged `latest`, blobs/sha256/…) built in tmp/ and
//!    renamed to `images/builtin/<name>`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::ImageError;
use crate::paths::Dirs;
use crate::util::{self, run_tool, sha256_hex};

/// 2000-01-01: any fixed time works; 0 trips up some tools.
const MTIME: u64 = 946_684_800;
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
/// `base`'s extra account: E2B templates' default user.
const BASE_PASSWD: &str = "user:x:1000:1000:user:/home/user:/bin/bash\n";
const BASE_GROUP: &str = "user:x:1000:\n";

fn builtin_err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Builtin(e.to_string().replace('\n', " "))
}

/// Builds (once) the busybox OCI layout; returns its directory (tag `latest`).
pub fn ensure_builtin_busybox(dirs: &Dirs) -> Result<PathBuf, ImageError> {
    ensure_builtin(dirs, "busybox")
}

/// Builds (once) the OCI layout of builtin image `name` (one of `reference::BUILTINS`);
/// returns its directory (tag `latest`).
pub fn ensure_builtin(dirs: &Dirs, name: &str) -> Result<PathBuf, ImageError> {
    let dest = dirs.images().join("builtin").join(name);
    if dest.join("index.json").is_file() {
        return Ok(dest);
    }
    let _lock = super::rootfs::lock(dirs, &format!("builtin-{name}"))?;
    if dest.join("index.json").is_file() {
        return Ok(dest);
    }
    let step = crate::progress::step(format!("Building the builtin {name} image"));
    let work =
        util::temp_dir_in(&dirs.tmp(), "busybox-deb-").map_err(ImageError::io(&dirs.tmp()))?;
    let busybox = fetch_deb(
        work.path(),
        "busybox-static",
        &["bin/busybox", "usr/bin/busybox"],
    )?;
    let bash = match name {
        "base" => {
            let bash = fetch_deb(work.path(), "bash-static", &["bin/bash-static"])?;
            Some(std::fs::read(&bash).map_err(ImageError::io(&bash))?)
        }
        _ => None,
    };
    let applets = String::from_utf8_lossy(&run_tool(
        Command::new(&busybox).arg("--list"),
        "busybox-static",
    )?)
    .lines()
    .map(str::trim)
    .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
    // base's /bin/bash is bash itself, never a busybox applet of that name.
    .filter(|a| bash.is_none() || *a != "bash")
    .map(str::to_string)
    .collect::<Vec<_>>();
    let binary = std::fs::read(&busybox).map_err(ImageError::io(&busybox))?;
    let tar = layer_tar(&binary, &applets, bash.as_deref()).map_err(builtin_err)?;
    let layout = super::member::private_temp_dir(&dirs.tmp(), "busybox-layout-")
        .map_err(ImageError::io(&dirs.tmp()))?;
    write_layout(layout.path(), &tar, name).map_err(ImageError::io(layout.path()))?;
    util::publish_dir(layout, &dest).map_err(ImageError::io(&dest))?;
    step.finish();
    Ok(dest)
}

/// Downloads and unpacks Debian package `package` into its own directory under `work`;
/// returns the first of `candidates` (paths inside the package) that it has.
fn fetch_deb(work: &Path, package: &str, candidates: &[&str]) -> Result<PathBuf, ImageError> {
    let work = work.join(package);
    let work = work.as_path();
    std::fs::create_dir_all(work).map_err(ImageError::io(work))?;
    let download = || {
        run_tool(
            Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(work),
            "apt",
        )
    };
    if download().is_err() {
        // Usually empty package lists (fresh containers): refresh them once and retry.
        run_tool(Command::new("apt-get").args(["update", "-q"]), "apt")?;
        download()?;
    }
    let deb = std::fs::read_dir(work)
        .map_err(ImageError::io(work))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| builtin_err("apt-get download left no .deb"))?;
    let x = work.join("x");
    run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x), "dpkg")?;
    candidates
        .iter()
        .map(|p| x.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| builtin_err(format!("{package} has no {}", candidates[0])))
}

/// The layer, as an uncompressed tar with fixed metadata; with `bash`, `base`'s.
fn layer_tar(busybox: &[u8], applets: &[String], bash: Option<&[u8]>) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Directory, mode, 0),
            format!("{dir}/"),
            std::io::empty(),
        )?;
    }
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, busybox.len() as u64),
        "bin/busybox",
        busybox,
    )?;
    let mut applets: Vec<&String> = applets.iter().collect();
    applets.sort();
    applets.dedup();
    for a in applets {
        b.append_link(
            &mut header(tar::EntryType::Symlink, 0o777, 0),
            format!("bin/{a}"),
            "busybox",
        )?;
    }
    let (passwd, group) = match bash {
        Some(_) => (
            format!("{PASSWD}{BASE_PASSWD}"),
            format!("{GROUP}{BASE_GROUP}"),
        ),
        None => (PASSWD.to_string(), GROUP.to_string()),
    };
    for (name, data) in [("etc/passwd", passwd), ("etc/group", group)] {
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, data.len() as u64),
            name,
            data.as_bytes(),
        )?;
    }
    if let Some(bash) = bash {
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o755, bash.len() as u64),
            "bin/bash",
            bash,
        )?;
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            "home/",
            std::io::empty(),
        )?;
        let mut home = header(tar::EntryType::Directory, 0o755, 0);
        home.set_uid(1000);
        home.set_gid(1000);
        b.append_data(&mut home, "home/user/", std::io::empty())?;
    }
    b.into_inner()
}

/// Writes a blob under `dir/blobs/sha256/`; returns its descriptor fields.
/// Writes a new file, 0600 (docs/security.md).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    crate::owner_only::create_file(path)?.write_all(data)
}

fn put_blob(dir: &Path, media_type: &str, data: &[u8]) -> std::io::Result<serde_json::Value> {
    let hex = sha256_hex(data);
    let blobs = dir.join("blobs/sha256");
    crate::owner_only::create_dir(&blobs)?;
    write_private(&blobs.join(&hex), data)?;
    Ok(json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()}))
}

fn write_layout(dir: &Path, tar: &[u8], name: &str) -> std::io::Result<()> {
    // flate2's GzEncoder writes mtime 0 and a fixed OS byte: deterministic.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(tar)?;
    let gz = gz.finish()?;
    let layer = put_blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &gz)?;
    let config = json!({
        "architecture": super::host_arch(),
        "os": "linux",
        "config": {"Env": [PATH_ENV], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(tar))]},
        "history": [{"created_by": format!("fcvm builtin:{name} (Debian busybox-static{})", if name == "base" { ", bash-static" } else { "" })}],
    });
    let config = put_blob(
        dir,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config)?,
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let mut manifest = put_blob(
        dir,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest)?,
    )?;
    manifest["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    manifest["platform"] = json!({"architecture": super::host_arch(), "os": "linux"});
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest]});
    write_private(&dir.join("index.json"), &serde_json::to_vec(&index)?)?;
    write_private(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic_and_readable() {
        let t = tempfile::tempdir().unwrap();
        let tar = layer_tar(
            b"#!fake busybox",
            &["sh".into(), "ls".into(), "sh".into()],
            None,
        )
        .unwrap();
        assert_eq!(
            tar,
            layer_tar(b"#!fake busybox", &["ls".into(), "sh".into()], None).unwrap()
        );
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_layout(&a, &tar, "busybox").unwrap();
        write_layout(&b, &tar, "busybox").unwrap();
        let index = std::fs::read(a.join("index.json")).unwrap();
        assert_eq!(index, std::fs::read(b.join("index.json")).unwrap());
        let r = super::super::layout::resolve_dir(&a, Some("latest"), "t").unwrap();
        let (cfg, diff_ids) = super::super::config::parse(&r.config_raw, "t").unwrap();
        assert_eq!(cfg.cmd, vec!["sh"]);
        assert_eq!(cfg.env, vec![PATH_ENV]);
        assert_eq!(diff_ids.len(), 1);
        assert_eq!(r.layers.len(), 1);
    }

    #[test]
    fn base_has_bash_and_the_e2b_user() {
        let tar = layer_tar(b"#!fake busybox", &["sh".into()], Some(b"#!fake bash")).unwrap();
        let mut entries = std::collections::BTreeMap::new();
        let mut archive = tar::Archive::new(tar.as_slice());
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let uid = e.header().uid().unwrap();
            let mut data = String::new();
            std::io::Read::read_to_string(&mut e, &mut data).unwrap_or_default();
            entries.insert(path, (uid, data));
        }
        assert_eq!(entries["bin/bash"].1, "#!fake bash");
        assert!(entries["etc/passwd"]
            .1
            .contains("user:x:1000:1000:user:/home/user:/bin/bash"));
        assert!(entries["etc/group"].1.contains("user:x:1000:"));
        assert_eq!(entries["home/user/"].0, 1000);
        let plain = layer_tar(b"#!fake busybox", &["sh".into()], None).unwrap();
        assert!(!String::from_utf8_lossy(&plain).contains("home/user"));
    }
}
