//! The rootfs mounts containerd passes → an erofs fcvm boots (docs/containerd.md).
//!
//! A container made from an image gets one overlay mount: the image's layers as read-only
//! `lowerdir`s (committed snapshots, never changed) and an empty `upperdir`. Its erofs is
//! cached under a key made of the lowerdirs' identities, so the second container of an
//! image skips both the mount and `mkfs.erofs`, and its VM restores the image-cache snapshot
//! keyed by that erofs. Anything else (a bind mount, an upperdir that already holds files)
//! is mounted and built under a one-off key, removed with the container. The bundle's own
//! `rootfs/` is left alone: nothing on the host runs in it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use sha2::{Digest, Sha256};

use fcvm::bundle::Source;
use fcvm::paths::Dirs;

/// The container's erofs and how it is kept.
pub struct Rootfs {
    pub erofs: PathBuf,
    /// `sha256:<key>`: the VM's image digest, hence its image-cache snapshot's key.
    pub digest: String,
    /// Built for this container alone: removed at its Delete.
    pub one_off: Option<PathBuf>,
}

/// Builds (or finds) the erofs of `mounts`, mounting them to read them only on a miss.
pub fn prepare(dirs: &Dirs, mounts: &[Mount]) -> Result<Rootfs> {
    if mounts.is_empty() {
        bail!("no rootfs mounts: fcvm needs the image's root (use an image, not a prepared rootfs directory)");
    }
    if mounts.len() > 1 {
        bail!("{} rootfs mounts: fcvm takes one", mounts.len());
    }
    let m = &mounts[0];
    let (key, sources) = match cache_key(m)? {
        Some(k) => k,
        None => (hex::encode(rand_bytes()), vec![]),
    };
    let one_off = sources.is_empty();
    let erofs = match fcvm::bundle::tree::cached(dirs, &key) {
        Some(p) => p,
        None => {
            // In a 0700 directory of fcvm's, read-only, nosuid, nodev: no other user reaches
            // the image's setuid files or device nodes while mkfs.erofs reads them
            // (docs/security.md).
            let tmp = fcvm::util::temp_dir_in(&dirs.tmp(), "rootfs-")
                .context("Cannot create a mount point")?;
            let target = tmp.path().join("root");
            fcvm::owner_only::create_dir(&target)
                .with_context(|| format!("Cannot create {}", target.display()))?;
            mount_one(m, &target, true)?;
            let built = fcvm::bundle::erofs_of_tree(dirs, &key, &target, &sources);
            let _ = umount2(&target, MntFlags::MNT_DETACH);
            built.context("Cannot build the container's root filesystem")?
        }
    };
    Ok(Rootfs {
        one_off: one_off.then(|| erofs.parent().expect("in a directory").to_path_buf()),
        erofs,
        digest: format!("sha256:{key}"),
    })
}

/// The key of an image's overlay (layers only, nothing written yet) and the layers it was
/// made of (for `fcvm snapshots prune`); None otherwise.
fn cache_key(m: &Mount) -> Result<Option<(String, Vec<Source>)>> {
    if m.type_ != "overlay" {
        return Ok(None);
    }
    let mut lower = None;
    for o in &m.options {
        if let Some(v) = o.strip_prefix("lowerdir=") {
            lower = Some(v.to_string());
        }
        if let Some(up) = o.strip_prefix("upperdir=") {
            let empty = std::fs::read_dir(up)
                .with_context(|| format!("Cannot read the rootfs upperdir {up}"))?
                .next()
                .is_none();
            if !empty {
                return Ok(None);
            }
        }
    }
    let Some(lower) = lower else {
        return Ok(None);
    };
    let mut h = Sha256::new();
    h.update(b"fcvm-overlay-lowerdirs-v1\0");
    let mut sources = vec![];
    for dir in lower.split(':') {
        // A committed snapshot never changes; its directory's identity names its content.
        let s = Source::of(Path::new(dir)).with_context(|| format!("Cannot read layer {dir}"))?;
        h.update(dir.as_bytes());
        h.update(format!(
            "\0{}:{}:{}.{}\0",
            s.dev, s.ino, s.ctime, s.ctime_nsec
        ));
        sources.push(s);
    }
    Ok(Some((hex::encode(h.finalize()), sources)))
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    // The one-off key only has to be unique; the time and pid make it so without a new crate.
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    b.copy_from_slice(&Sha256::digest(seed.as_bytes())[..16]);
    b
}

/// Mounts one containerd mount at `target` (as runc's shim does, without its fork): nosuid
/// and nodev always, read-only when `read_only` or the mount says `ro`.
pub fn mount_one(m: &Mount, target: &Path, read_only: bool) -> Result<()> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            o => data.push(o),
        }
    }
    let data = data.join(",");
    mount(
        Some(m.source.as_str()),
        target,
        Some(m.type_.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .with_context(|| {
        format!(
            "Cannot mount the rootfs ({}) at {}",
            m.type_,
            target.display()
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(lower: &str, upper: &Path) -> Mount {
        Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("lowerdir={lower}"),
                format!("upperdir={}", upper.display()),
                "workdir=/nonexistent".into(),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn an_image_overlay_has_a_stable_key() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, up) = (t.path().join("a"), t.path().join("b"), t.path().join("up"));
        for d in [&a, &b, &up] {
            std::fs::create_dir(d).unwrap();
        }
        let lower = format!("{}:{}", a.display(), b.display());
        let k1 = cache_key(&overlay(&lower, &up)).unwrap().unwrap();
        let k2 = cache_key(&overlay(&lower, &up)).unwrap().unwrap();
        assert_eq!(k1, k2);
        let other = format!("{}", a.display());
        assert_ne!(cache_key(&overlay(&other, &up)).unwrap().unwrap(), k1);
        // Something already written into the container's layer: not the image alone.
        std::fs::write(up.join("f"), "x").unwrap();
        assert_eq!(cache_key(&overlay(&lower, &up)).unwrap(), None);
        let bind = Mount {
            type_: "bind".into(),
            source: a.display().to_string(),
            options: vec!["rbind".into()],
            ..Default::default()
        };
        assert_eq!(cache_key(&bind).unwrap(), None);
    }
}
