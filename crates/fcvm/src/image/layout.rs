//! OCI image layouts: a directory (`oci:`), a tar of one (`oci-archive:`), and the host's podman
//! store (`containers-storage:`, exported with `podman save --format oci-archive`).
//!
//! 1. `index.json` → the manifest tagged `org.opencontainers.image.ref.name=TAG` (or the only
//!    one); a nested index → the entry for linux/(host arch).
//! 2. Manifest and config blobs are read and sha256-checked against their descriptors.
//! 3. Layers stay where they are: [`super::unpack`] checks each blob before applying it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{host_arch, sha256_hex_of, Descriptor, ImageError, LayerBlob, Manifest, Resolved};
use crate::paths::Dirs;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    Ok(dir.join("blobs/sha256").join(sha256_hex_of(digest)?))
}

/// Reads a small blob (manifest, config) and checks its digest.
pub(crate) fn read_verified(dir: &Path, digest: &str, image: &str) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(dir, digest)?;
    let data = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::InvalidImage {
            image: image.to_string(),
            reason: format!("blob {digest} is missing"),
        },
        _ => ImageError::io(&path)(e),
    })?;
    if crate::util::sha256_hex(&data) != sha256_hex_of(digest)? {
        return Err(ImageError::BlobDigest(digest.to_string()));
    }
    Ok(data)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    data: &[u8],
    what: &str,
    image: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|e| ImageError::InvalidImage {
        image: image.to_string(),
        reason: format!("bad {what}: {e}"),
    })
}

/// The entry of a multi-arch index for this host.
pub(crate) fn pick_platform<'a>(
    entries: &'a [Descriptor],
    image: &str,
) -> Result<&'a Descriptor, ImageError> {
    if let [only] = entries {
        if only.platform.is_none() {
            return Ok(only);
        }
    }
    entries
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == host_arch())
        })
        .ok_or_else(|| ImageError::NotFound(format!("{image} (no linux/{} variant)", host_arch())))
}

/// Resolves the image tagged `tag` (or the only one) in the OCI layout `dir`.
pub(crate) fn resolve_dir(
    dir: &Path,
    tag: Option<&str>,
    image: &str,
) -> Result<Resolved, ImageError> {
    let index_path = dir.join("index.json");
    let index = std::fs::read(&index_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            ImageError::NotFound(format!("{image} (no OCI layout at {})", dir.display()))
        }
        _ => ImageError::io(&index_path)(e),
    })?;
    let index: Manifest = parse_json(&index, "index.json", image)?;
    let entries = index.manifests.unwrap_or_default();
    let mut desc = match tag {
        Some(t) => entries
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t)),
        None if entries.len() == 1 => entries.first(),
        None => None,
    }
    .ok_or_else(|| match tag {
        Some(_) => ImageError::NotFound(image.to_string()),
        None => ImageError::NotFound(format!(
            "{image} (the layout holds {} images: add :TAG)",
            entries.len()
        )),
    })?
    .clone();
    // Nested indexes (multi-arch images), at most a few levels deep.
    for _ in 0..4 {
        let raw = read_verified(dir, &desc.digest, image)?;
        let m: Manifest = parse_json(&raw, "manifest", image)?;
        if let Some(list) = &m.manifests {
            desc = pick_platform(list, image)?.clone();
            continue;
        }
        let config = m
            .config
            .ok_or_else(|| ImageError::UnsupportedMediaType(desc.media_type.clone()))?;
        if !config.media_type.is_empty()
            && !config.media_type.contains("image.config")
            && !config.media_type.contains("container.image")
        {
            return Err(ImageError::UnsupportedMediaType(config.media_type));
        }
        let config_raw = read_verified(dir, &config.digest, image)?;
        let layers = m
            .layers
            .iter()
            .map(|l| {
                Ok(LayerBlob {
                    path: blob_path(dir, &l.digest)?,
                    media_type: l.media_type.clone(),
                    digest: Some(l.digest.clone()),
                    diff_id: None,
                })
            })
            .collect::<Result<_, ImageError>>()?;
        return Ok(Resolved {
            digest: desc.digest.clone(),
            config_digest: config.digest,
            config_raw,
            layers,
            remote: None,
            keep: Vec::new(),
        });
    }
    Err(ImageError::InvalidImage {
        image: image.to_string(),
        reason: "indexes nested too deep".into(),
    })
}

/// Extracts a tar (maybe compressed) into `dest` with the tar crate's own path checks.
pub(crate) fn extract_archive(archive: &Path, dest: &Path) -> Result<(), ImageError> {
    let unreadable = |reason: String| ImageError::UnreadableArchive {
        path: archive.to_path_buf(),
        reason,
    };
    let f = std::fs::File::open(archive).map_err(|e| unreadable(e.to_string()))?;
    let r = super::unpack::decoder(f, super::unpack::Compression::Sniff)
        .map_err(|e| unreadable(e.to_string()))?;
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(false);
    a.unpack(dest).map_err(|e| {
        unreadable(format!(
            "not a valid tar archive ({})",
            e.to_string().replace('\n', " ")
        ))
    })
}

/// `oci-archive:PATH[:TAG]`: extracted under `dirs.tmp()` (kept until the build is done).
pub(crate) fn resolve_archive(
    dirs: &Dirs,
    path: &Path,
    tag: Option<&str>,
    image: &str,
) -> Result<Resolved, ImageError> {
    if !path.is_file() {
        return Err(ImageError::UnreadableArchive {
            path: path.to_path_buf(),
            reason: "no such file".into(),
        });
    }
    let tmp = crate::util::temp_dir_in(&dirs.tmp(), "oci-archive-")
        .map_err(ImageError::io(&dirs.tmp()))?;
    extract_archive(path, tmp.path())?;
    if !tmp.path().join("index.json").is_file() {
        return Err(ImageError::UnreadableArchive {
            path: path.to_path_buf(),
            reason: "not an OCI archive (no index.json)".into(),
        });
    }
    let mut r = resolve_dir(tmp.path(), tag, image)?;
    r.keep.push(tmp);
    Ok(r)
}

/// The host's podman store: `None` when podman is missing or does not have `name`.
pub(crate) fn resolve_podman(
    dirs: &Dirs,
    name: &str,
    image: &str,
) -> Result<Option<Resolved>, ImageError> {
    if crate::util::which("podman").is_none() {
        return Ok(None);
    }
    let exists = Command::new("podman")
        .args(["image", "exists", name])
        .output();
    if !exists.is_ok_and(|o| o.status.success()) {
        return Ok(None);
    }
    let step = crate::progress::step(format!("Exporting {name} from podman"));
    let tmp = crate::util::temp_dir_in(&dirs.tmp(), "podman-save-")
        .map_err(ImageError::io(&dirs.tmp()))?;
    let archive = tmp.path().join("image.tar");
    crate::util::run_tool(
        Command::new("podman")
            .args(["save", "--format", "oci-archive", "-o"])
            .arg(&archive)
            .arg(name),
        "podman",
    )?;
    step.finish();
    let mut r = resolve_archive(dirs, &archive, None, image)?;
    r.keep.push(tmp);
    Ok(Some(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str, arch: Option<&str>) -> Descriptor {
        serde_json::from_value(match arch {
            Some(a) => serde_json::json!({"digest": digest, "platform": {"architecture": a, "os": "linux"}}),
            None => serde_json::json!({"digest": digest}),
        })
        .unwrap()
    }

    #[test]
    fn picks_this_hosts_platform() {
        let list = [
            entry("a", Some("arm64")),
            entry("b", Some(host_arch())),
            entry("c", Some("s390x")),
        ];
        assert_eq!(pick_platform(&list, "x").unwrap().digest, "b");
        assert!(matches!(
            pick_platform(&list[..1], "x"),
            Err(ImageError::NotFound(_))
        ));
        // A single entry without a platform is taken as is (plain single-arch layouts).
        assert_eq!(pick_platform(&[entry("d", None)], "x").unwrap().digest, "d");
    }

    #[test]
    fn blob_digests_are_checked_and_must_be_sha256() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("blobs/sha256")).unwrap();
        let hex = crate::util::sha256_hex(b"{}");
        std::fs::write(t.path().join("blobs/sha256").join(&hex), b"{}").unwrap();
        assert_eq!(
            read_verified(t.path(), &format!("sha256:{hex}"), "x").unwrap(),
            b"{}"
        );
        std::fs::write(t.path().join("blobs/sha256").join(&hex), b"{ }").unwrap();
        assert!(matches!(
            read_verified(t.path(), &format!("sha256:{hex}"), "x"),
            Err(ImageError::BlobDigest(_))
        ));
        assert!(matches!(
            read_verified(t.path(), "sha256:../../etc/passwd", "x"),
            Err(ImageError::UnsupportedDigest(_))
        ));
        assert!(matches!(
            read_verified(t.path(), &format!("sha512:{hex}"), "x"),
            Err(ImageError::UnsupportedDigest(_))
        ));
    }
}
