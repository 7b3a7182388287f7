//! The image cache: `images/<config hex>/{rootfs.erofs, config.json}`, built once.
//!
//! 1. [`cached`]: both files present → reuse (the directory only ever appears whole).
//! 2. [`lock`]: `locks/image-<hex>.lock` (exclusive) so concurrent runs build once; the
//!    caller checks the cache again after taking it.
//! 3. [`build`]: in a 0700 temp dir under `tmp/` (no other user may reach the tree's setuid
//!    files or device nodes while it is built): unpack layers into `root/` within the unpack
//!    limit, `mkfs.erofs`, write `config.json`, drop `root/`, then one rename into `images/`.
//!    Any error (the limit included) drops the temp dir, so nothing half-built is ever visible
//!    or left behind.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::limits::{Budget, UnpackLimit};
use super::{member, unpack, ImageConfig, ImageError, LayerBlob};
use crate::paths::Dirs;
use crate::util;

pub(crate) const ROOTFS: &str = "rootfs.erofs";
pub(crate) const CONFIG: &str = "config.json";

/// The cached rootfs of the image whose config digest is `hex`, if built.
pub(crate) fn cached(dirs: &Dirs, hex: &str) -> Option<PathBuf> {
    let dir = dirs.images().join(hex);
    let rootfs = dir.join(ROOTFS);
    (rootfs.is_file() && dir.join(CONFIG).is_file()).then_some(rootfs)
}

/// Takes the per-image build lock (blocking); released when the file is dropped.
pub(crate) fn lock(dirs: &Dirs, hex: &str) -> Result<File, ImageError> {
    let dir = dirs.locks();
    crate::owner_only::create_dir(&dir).map_err(ImageError::io(&dir))?;
    let path = dir.join(format!("image-{hex}.lock"));
    let f = crate::owner_only::open_lock(&path).map_err(ImageError::io(&path))?;
    f.lock().map_err(ImageError::io(&path))?;
    Ok(f)
}

/// Builds and publishes `images/<hex>`; returns the rootfs path.
pub(crate) fn build(
    dirs: &Dirs,
    hex: &str,
    layers: &[LayerBlob],
    config: &ImageConfig,
    limit: UnpackLimit,
) -> Result<PathBuf, ImageError> {
    let mkfs = util::which("mkfs.erofs").ok_or_else(|| util::ToolError::Missing {
        tool: "mkfs.erofs".into(),
        package: "erofs-utils".into(),
    })?;
    let tmp =
        member::private_temp_dir(&dirs.tmp(), "image-").map_err(ImageError::io(&dirs.tmp()))?;
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).map_err(ImageError::io(&root))?;
    // The image's / is usually not in any layer; give it the conventional mode.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io(&root))?;

    let step = crate::progress::step(format!(
        "Unpacking {} layer{}",
        layers.len(),
        if layers.len() == 1 { "" } else { "s" }
    ));
    let mut budget = Budget::new(limit);
    for (i, layer) in layers.iter().enumerate() {
        let at = format!("layer {} of {}", i + 1, layers.len());
        step.set_detail(&format!("{}/{}", i + 1, layers.len()));
        let r = unpack::unpack_layer(layer, &root, &mut budget).map_err(|e| match e {
            ImageError::UnpackLimit { what, .. } => ImageError::UnpackLimit { at, what },
            e => e,
        });
        if r.is_err() {
            // Dropping `tmp` would do it too, but not as non-root when a layer made 0555 dirs.
            let _ = remove_tree(&root);
        }
        r?;
    }
    step.finish();

    let step = crate::progress::step("Building root filesystem (erofs)");
    let image = tmp.path().join(ROOTFS);
    let mut cmd = Command::new(mkfs);
    cmd.arg("--quiet");
    if !nix::unistd::geteuid().is_root() {
        // Unprivileged unpacking could not chown: at least make the image root-owned, as
        // nearly all of a container's files are.
        cmd.arg("--all-root");
    }
    util::run_tool(cmd.arg(&image).arg(&root), "erofs-utils")?;
    // Read-only, and the owner's alone (docs/security.md).
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o400))
        .map_err(ImageError::io(&image))?;
    let json = serde_json::to_vec_pretty(config).expect("ImageConfig serialises");
    let config_path = tmp.path().join(CONFIG);
    util::write_atomic(&config_path, &json).map_err(ImageError::io(&config_path))?;
    remove_tree(&root).map_err(ImageError::io(&root))?;
    step.finish();

    let dest = dirs.images().join(hex);
    util::publish_dir(tmp, &dest).map_err(ImageError::io(&dest))?;
    Ok(dest.join(ROOTFS))
}

/// `remove_dir_all` that first makes read-only directories writable (layers may ship 0555
/// directories; as non-root we could not empty them otherwise).
fn remove_tree(p: &Path) -> std::io::Result<()> {
    if std::fs::remove_dir_all(p).is_ok() {
        return Ok(());
    }
    fn open_up(p: &Path) -> std::io::Result<()> {
        for e in std::fs::read_dir(p)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700));
                open_up(&e.path())?;
            }
        }
        Ok(())
    }
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
    open_up(p)?;
    std::fs::remove_dir_all(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_and_leaves_nothing_on_error() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path().join("data"));
        let layer_dir = t.path().join("layers");
        std::fs::create_dir(&layer_dir).unwrap();
        let path = layer_dir.join("l.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        b.append_data(&mut h, "bin/hello", &b"hello"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let good = LayerBlob {
            root: layer_dir.clone(),
            path: path.clone(),
            media_type: String::new(),
            digest: Some(format!("sha256:{}", util::sha256_file(&path).unwrap())),
            diff_id: None,
        };
        let hex = "ab".repeat(32);
        let cfg = ImageConfig {
            cmd: vec!["sh".into()],
            ..Default::default()
        };
        let rootfs = build(
            &dirs,
            &hex,
            std::slice::from_ref(&good),
            &cfg,
            UnpackLimit::default(),
        )
        .unwrap();
        assert_eq!(cached(&dirs, &hex), Some(rootfs.clone()));
        assert_eq!(std::fs::read_dir(dirs.tmp()).unwrap().count(), 0);
        let saved: ImageConfig =
            serde_json::from_slice(&std::fs::read(dirs.images().join(&hex).join(CONFIG)).unwrap())
                .unwrap();
        assert_eq!(saved, cfg);

        let bad = LayerBlob {
            digest: Some(format!("sha256:{}", "0".repeat(64))),
            ..good
        };
        let other = "cd".repeat(32);
        assert!(matches!(
            build(&dirs, &other, &[bad], &cfg, UnpackLimit::default()),
            Err(ImageError::LayerDigest(_))
        ));
        assert!(cached(&dirs, &other).is_none());
        assert!(!dirs.images().join(&other).exists());
        assert_eq!(std::fs::read_dir(dirs.tmp()).unwrap().count(), 0);
    }

    #[test]
    fn a_layer_past_the_unpack_limit_leaves_nothing() {
        use crate::image::testutil::{tar_gz, M};
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path().join("data"));
        let path = t.path().join("bomb.tar.gz");
        std::fs::write(
            &path,
            tar_gz(&[
                M::Dir("etc"),
                M::File("etc/x", b"x"),
                M::Zeros("zeros", 64 << 20),
            ]),
        )
        .unwrap();
        let bomb = LayerBlob {
            root: t.path().to_path_buf(),
            path,
            media_type: String::new(),
            digest: None,
            diff_id: None,
        };
        let hex = "ef".repeat(32);
        let limit = UnpackLimit {
            bytes: 1 << 20,
            ..Default::default()
        };
        let e = build(&dirs, &hex, &[bomb], &ImageConfig::default(), limit).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unpack limit reached in layer 1 of 1: more than 1 MiB unpacked \
             (raise it with --unpack-limit or FCVM_UNPACK_LIMIT)"
        );
        assert_eq!(std::fs::read_dir(dirs.tmp()).unwrap().count(), 0);
        assert!(!dirs.images().join(&hex).exists());
    }
}
