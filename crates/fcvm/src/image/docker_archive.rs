//! `docker-archive:PATH[:NAME]`: the tarball `docker save` / `podman save` / skopeo write.
//!
//! ```text
//! manifest.json   [{"Config": "<hex>.json", "RepoTags": ["busybox:latest"],
//!                   "Layers": ["<hex>/layer.tar", …]}]
//! <hex>.json      the image config (its sha256 is the image id, our cache key)
//! …layer tars     usually uncompressed; checked against the config's rootfs.diff_ids
//! ```
//! The archive has no manifest digests for its layers, so each layer is verified by the sha256
//! of its uncompressed tar (the diff_id) while it is unpacked.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::{layout, ImageError, LayerBlob, Resolved};
use crate::paths::Dirs;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Entry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

/// Picks the image named `name` (docker's `NAME[:TAG]`, `:latest` implied) or the only one.
pub(crate) fn pick<'a>(
    entries: &'a [Entry],
    name: Option<&str>,
    image: &str,
) -> Result<&'a Entry, ImageError> {
    let matches = |want: &str, tag: &str| {
        let want = if want
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            want.to_string()
        } else {
            format!("{want}:latest")
        };
        tag == want
            || tag.strip_prefix("docker.io/library/") == Some(&want)
            || tag.strip_prefix("localhost/") == Some(&want)
    };
    match name {
        Some(n) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| matches(n, t)))
            .ok_or_else(|| ImageError::NotFound(image.to_string())),
        None if entries.len() == 1 => Ok(&entries[0]),
        None => Err(ImageError::NotFound(format!(
            "{image} (the archive holds {} images: add :NAME)",
            entries.len()
        ))),
    }
}

/// A path from manifest.json, kept inside the extracted archive.
fn inside(dir: &Path, p: &str, archive: &Path) -> Result<PathBuf, ImageError> {
    let rel = Path::new(p);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ImageError::UnreadableArchive {
            path: archive.to_path_buf(),
            reason: format!("bad path {p:?} in manifest.json"),
        });
    }
    Ok(dir.join(rel))
}

pub(crate) fn resolve(
    dirs: &Dirs,
    path: &Path,
    name: Option<&str>,
    image: &str,
) -> Result<Resolved, ImageError> {
    let unreadable = |reason: String| ImageError::UnreadableArchive {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(unreadable("no such file".into()));
    }
    let tmp = crate::util::temp_dir_in(&dirs.tmp(), "docker-archive-")
        .map_err(ImageError::io(&dirs.tmp()))?;
    layout::extract_archive(path, tmp.path())?;
    let manifest = std::fs::read(tmp.path().join("manifest.json"))
        .map_err(|_| unreadable("not a docker archive (no manifest.json)".into()))?;
    let entries: Vec<Entry> = serde_json::from_slice(&manifest)
        .map_err(|e| unreadable(format!("bad manifest.json: {e}")))?;
    let entry = pick(&entries, name, image)?;
    let config_path = inside(tmp.path(), &entry.config, path)?;
    let config_raw =
        std::fs::read(&config_path).map_err(|e| unreadable(format!("{}: {e}", entry.config)))?;
    let config_digest = format!("sha256:{}", crate::util::sha256_hex(&config_raw));
    let layers = entry
        .layers
        .iter()
        .map(|l| {
            let p = inside(tmp.path(), l, path)?;
            if !p.is_file() {
                return Err(unreadable(format!("layer {l} is missing")));
            }
            Ok(LayerBlob {
                path: p,
                media_type: String::new(),
                digest: None,
                diff_id: None,
            })
        })
        .collect::<Result<_, ImageError>>()?;
    Ok(Resolved {
        digest: config_digest.clone(),
        config_digest,
        config_raw,
        layers,
        remote: None,
        keep: vec![tmp],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        serde_json::from_str(
            r#"[{"Config":"aa.json","RepoTags":["busybox:latest","docker.io/library/busybox:1.36"],"Layers":["l1/layer.tar"]},
                {"Config":"bb.json","RepoTags":null,"Layers":[]},
                {"Config":"cc.json","RepoTags":["localhost/app:v2"],"Layers":[]}]"#,
        )
        .unwrap()
    }

    #[test]
    fn picks_by_name() {
        let e = entries();
        assert_eq!(pick(&e, Some("busybox"), "x").unwrap().config, "aa.json");
        assert_eq!(
            pick(&e, Some("busybox:1.36"), "x").unwrap().config,
            "aa.json"
        );
        assert_eq!(pick(&e, Some("app:v2"), "x").unwrap().config, "cc.json");
        assert!(matches!(
            pick(&e, Some("busybox:nope"), "x"),
            Err(ImageError::NotFound(_))
        ));
        assert!(matches!(pick(&e, None, "x"), Err(ImageError::NotFound(_))));
        assert_eq!(
            pick(&e[..1], None, "x").unwrap().layers,
            vec!["l1/layer.tar"]
        );
    }

    #[test]
    fn parses_an_archive_and_rejects_escapes() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path().join("data"));
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},
            "rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#;
        let build = |manifest: &str| {
            let path = t.path().join("a.tar");
            let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
            for (name, data) in [
                ("manifest.json", manifest.as_bytes()),
                ("c.json", &config[..]),
                ("l/layer.tar", &[0u8; 1024][..]),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, name, data).unwrap();
            }
            b.finish().unwrap();
            path
        };
        let a = build(r#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#);
        let r = resolve(&dirs, &a, Some("x:1"), "x").unwrap();
        assert_eq!(
            r.config_digest,
            format!("sha256:{}", crate::util::sha256_hex(config))
        );
        assert_eq!(r.layers.len(), 1);
        assert!(r.layers[0].path.is_file());
        drop(r);
        assert_eq!(
            std::fs::read_dir(dirs.tmp()).unwrap().count(),
            0,
            "temp dir left behind"
        );
        let a = build(r#"[{"Config":"../c.json","Layers":[]}]"#);
        assert!(matches!(
            resolve(&dirs, &a, None, "x"),
            Err(ImageError::UnreadableArchive { .. })
        ));
        let Err(e) = resolve(&dirs, &t.path().join("none.tar"), None, "x") else {
            panic!("resolved a missing file")
        };
        assert!(
            e.to_string().starts_with("Cannot read image archive"),
            "{e}"
        );
    }
}
