//! OCI image layouts: a directory (`oci:`), a tar of one (`oci-archive:`), and the host's podman
//! store (`containers-storage:`, exported with `podman save --format oci-archive`).
//!
//! 1. `index.json` → the manifest tagged `org.opencontainers.image.ref.name=TAG` (or the only
//!    one); a nested index → the entry for linux/(host arch).
//! 2. Manifest and config blobs are read (bounded, [`member::read_metadata`]) and sha256-checked
//!    against their descriptors.
//! 3. Layers stay where they are: [`super::unpack`] checks each blob before applying it.
//!
//! Every member is read inside the layout, as a regular file: a directory through
//! [`member::open`] (no link out of it), an archive through [`archive::Extracted`] (links
//! resolved by name inside the archive).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::archive::{self, Extracted};
use super::member::{self, MemberError};
use super::{
    host_arch, sha256_hex_of, Descriptor, ImageError, LayerBlob, Manifest, Resolved, UnpackLimit,
};
use crate::paths::Dirs;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Where a layout's members are read from.
#[derive(Clone, Copy)]
pub(crate) enum Tree<'a> {
    /// A layout directory on the host (`oci:DIR`, the builtin image).
    Dir(&'a Path),
    /// An extracted oci-archive.
    Archive(&'a Extracted),
}

impl Tree<'_> {
    fn root(&self) -> &Path {
        match self {
            Tree::Dir(d) => d,
            Tree::Archive(a) => a.root(),
        }
    }

    fn read_metadata(&self, rel: &str) -> Result<Vec<u8>, MemberError> {
        match self {
            Tree::Dir(d) => member::read_metadata(d, Path::new(rel)),
            Tree::Archive(a) => a.read_metadata(rel),
        }
    }

    /// A blob's path, once it is known to be a regular file inside the tree.
    fn file(&self, rel: &str) -> Result<PathBuf, MemberError> {
        match self {
            Tree::Dir(d) => member::open(d, Path::new(rel)).map(|_| d.join(rel)),
            Tree::Archive(a) => a.file(rel),
        }
    }
}

fn blob_name(digest: &str) -> Result<String, ImageError> {
    Ok(format!("blobs/sha256/{}", sha256_hex_of(digest)?))
}

/// A member's problem as an [`ImageError`] naming the member, never its content.
fn member_error(tree: Tree, what: &str, image: &str) -> impl FnOnce(MemberError) -> ImageError {
    let root = tree.root().to_path_buf();
    let (what, image) = (what.to_string(), image.to_string());
    move |e| match e {
        MemberError::Io(source) => ImageError::Io { path: root, source },
        e => ImageError::InvalidImage {
            image,
            reason: format!("{what}: {e}"),
        },
    }
}

/// Reads a small blob (manifest, config), bounded, and checks its digest.
pub(crate) fn read_verified(tree: Tree, digest: &str, image: &str) -> Result<Vec<u8>, ImageError> {
    let name = blob_name(digest)?;
    let data =
        tree.read_metadata(&name)
            .map_err(member_error(tree, &format!("blob {digest}"), image))?;
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
        reason: format!("bad {what}: {}", member::json_problem(&e)),
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

/// Resolves the image tagged `tag` (or the only one) in the OCI layout directory `dir`.
pub(crate) fn resolve_dir(
    dir: &Path,
    tag: Option<&str>,
    image: &str,
) -> Result<Resolved, ImageError> {
    resolve_tree(Tree::Dir(dir), tag, image)
}

fn resolve_tree(tree: Tree, tag: Option<&str>, image: &str) -> Result<Resolved, ImageError> {
    let index = tree.read_metadata("index.json").map_err(|e| match e {
        MemberError::Missing => match tree {
            Tree::Dir(dir) => {
                ImageError::NotFound(format!("{image} (no OCI layout at {})", dir.display()))
            }
            Tree::Archive(_) => ImageError::InvalidImage {
                image: image.to_string(),
                reason: "not an OCI archive (no index.json)".into(),
            },
        },
        e => member_error(tree, "index.json", image)(e),
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
        let raw = read_verified(tree, &desc.digest, image)?;
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
        let config_raw = read_verified(tree, &config.digest, image)?;
        let layers = m
            .layers
            .iter()
            .map(|l| {
                let name = blob_name(&l.digest)?;
                let path = tree.file(&name).map_err(member_error(
                    tree,
                    &format!("layer {}", l.digest),
                    image,
                ))?;
                Ok(LayerBlob {
                    root: tree.root().to_path_buf(),
                    path,
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

/// `oci-archive:PATH[:TAG]`: extracted under `dirs.tmp()` (kept until the build is done).
pub(crate) fn resolve_archive(
    dirs: &Dirs,
    path: &Path,
    tag: Option<&str>,
    image: &str,
    limit: UnpackLimit,
) -> Result<Resolved, ImageError> {
    let extracted = archive::extract(path, &dirs.tmp(), "oci-archive-", limit)?;
    let mut r = resolve_tree(Tree::Archive(&extracted), tag, image)?;
    r.keep.push(extracted.dir);
    Ok(r)
}

/// The host's podman store: `None` when podman is missing or does not have `name`.
pub(crate) fn resolve_podman(
    dirs: &Dirs,
    name: &str,
    image: &str,
    limit: UnpackLimit,
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
    let tmp = member::private_temp_dir(&dirs.tmp(), "podman-save-")
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
    let mut r = resolve_archive(dirs, &archive, None, image, limit)?;
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
            read_verified(Tree::Dir(t.path()), &format!("sha256:{hex}"), "x").unwrap(),
            b"{}"
        );
        std::fs::write(t.path().join("blobs/sha256").join(&hex), b"{ }").unwrap();
        assert!(matches!(
            read_verified(Tree::Dir(t.path()), &format!("sha256:{hex}"), "x"),
            Err(ImageError::BlobDigest(_))
        ));
        assert!(matches!(
            read_verified(Tree::Dir(t.path()), "sha256:../../etc/passwd", "x"),
            Err(ImageError::UnsupportedDigest(_))
        ));
        assert!(matches!(
            read_verified(Tree::Dir(t.path()), &format!("sha512:{hex}"), "x"),
            Err(ImageError::UnsupportedDigest(_))
        ));
    }

    /// Writes `data` as a blob of the layout `dir`; returns its digest.
    fn blob(dir: &Path, data: &[u8]) -> String {
        let hex = crate::util::sha256_hex(data);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
        format!("sha256:{hex}")
    }

    /// A one-layer layout; returns (config digest, layer digest).
    fn layout(dir: &Path) -> (String, String) {
        let config = blob(dir, br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#);
        let layer = blob(dir, &[0; 1024]);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer}],
        });
        let m = blob(dir, manifest.to_string().as_bytes());
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": m}]});
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
        (config, layer)
    }

    fn relink(dir: &Path, digest: &str, to: &str) {
        let p = dir.join(blob_name(digest).unwrap());
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(to, p).unwrap();
    }

    #[test]
    fn a_layout_dir_is_read_only_inside_itself() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let (config, layer) = layout(&dir);
        resolve_dir(&dir, None, "x").unwrap();
        // A link inside the layout is fine.
        let layer_copy = dir.join("blobs/layer-copy");
        std::fs::copy(dir.join(blob_name(&layer).unwrap()), &layer_copy).unwrap();
        relink(&dir, &layer, "../layer-copy");
        resolve_dir(&dir, None, "x").unwrap();

        let err = |dir: &Path| resolve_dir(dir, None, "x").err().unwrap().to_string();
        relink(&dir, &layer, "/etc/shadow");
        let e = err(&dir);
        assert!(
            e.ends_with(&format!("layer {layer}: leads outside the image")),
            "{e}"
        );
        relink(&dir, &layer, "../../../layout/../../etc/shadow");
        assert!(err(&dir).ends_with("leads outside the image"));
        // fcvm once grew to 2 GB reading a config that was /dev/zero.
        relink(&dir, &config, "/dev/zero");
        let e = err(&dir);
        assert!(
            e.ends_with(&format!("blob {config}: leads outside the image")),
            "{e}"
        );
        let fifo = dir.join(blob_name(&config).unwrap());
        std::fs::remove_file(&fifo).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = err(&dir);
        assert!(
            e.ends_with(&format!("blob {config}: not a regular file")),
            "{e}"
        );

        let secret = t.path().join("secret");
        std::fs::write(&secret, "root:$6$hunter2:19000:0:99999:7:::").unwrap();
        std::fs::remove_file(dir.join("index.json")).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("index.json")).unwrap();
        let e = err(&dir);
        assert!(e.ends_with("index.json: leads outside the image"), "{e}");
        // Inside the layout, the same text is not quoted either.
        std::fs::remove_file(dir.join("index.json")).unwrap();
        std::fs::copy(&secret, dir.join("index.json")).unwrap();
        let e = err(&dir);
        assert!(
            e.contains("bad index.json: not valid JSON") && !e.contains("hunter2"),
            "{e}"
        );
    }
}
