//! `docker-archive:PATH[:NAME]`: the tarball `docker save` / `podman save` / skopeo write.
//!
//! ```text
//! manifest.json   [{"Config": "<hex>.json", "RepoTags": ["busybox:latest"],
//!                   "Layers": ["<hex>/layer.tar", …]}]
//! <hex>.json      the image config (its sha256 is the image id, our cache key)
//! …layer tars     usually uncompressed; checked against the config's rootfs.diff_ids
//! ```
//! The archive has no manifest digests for its layers, so each layer is verified by the sha256
//! of its uncompressed tar (the diff_id) while it is unpacked. The names manifest.json gives are
//! resolved inside the archive ([`archive::Extracted`]): a config or layer that is a link to a
//! host file, a device or a FIFO is refused, and manifest and config are bounded (4 MiB).

use std::path::Path;

use serde::Deserialize;

use super::member::{self, MemberError};
use super::{archive, ImageError, LayerBlob, Resolved, UnpackLimit};
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

pub(crate) fn resolve(
    dirs: &Dirs,
    path: &Path,
    name: Option<&str>,
    image: &str,
    limit: UnpackLimit,
) -> Result<Resolved, ImageError> {
    let unreadable = |reason: String| ImageError::UnreadableArchive {
        path: path.to_path_buf(),
        reason,
    };
    // Says what is wrong with a member the manifest names, never what is in it.
    let bad = |what: &str| {
        let what = what.to_string();
        move |e: MemberError| match e {
            MemberError::Io(source) => ImageError::Io {
                path: path.to_path_buf(),
                source,
            },
            e => unreadable(format!("{what}: {e}")),
        }
    };
    let extracted = archive::extract(path, &dirs.tmp(), "docker-archive-", limit)?;
    let manifest = extracted
        .read_metadata("manifest.json")
        .map_err(|e| match e {
            MemberError::Missing => unreadable("not a docker archive (no manifest.json)".into()),
            e => bad("manifest.json")(e),
        })?;
    let entries: Vec<Entry> = serde_json::from_slice(&manifest)
        .map_err(|e| unreadable(format!("bad manifest.json: {}", member::json_problem(&e))))?;
    let entry = pick(&entries, name, image)?;
    let config_raw = extracted
        .read_metadata(&entry.config)
        .map_err(bad(&format!("config {:?}", entry.config)))?;
    let config_digest = format!("sha256:{}", crate::util::sha256_hex(&config_raw));
    let layers = entry
        .layers
        .iter()
        .map(|l| {
            Ok(LayerBlob {
                root: extracted.root().to_path_buf(),
                path: extracted.file(l).map_err(bad(&format!("layer {l:?}")))?,
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
        keep: vec![extracted.dir],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testutil::{tar_file, M};

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
        let r = resolve(&dirs, &a, Some("x:1"), "x", UnpackLimit::default()).unwrap();
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
            resolve(&dirs, &a, None, "x", UnpackLimit::default()),
            Err(ImageError::UnreadableArchive { .. })
        ));
        let Err(e) = resolve(
            &dirs,
            &t.path().join("none.tar"),
            None,
            "x",
            UnpackLimit::default(),
        ) else {
            panic!("resolved a missing file")
        };
        assert!(
            e.to_string().starts_with("Cannot read image archive"),
            "{e}"
        );
    }

    /// A docker-archive of `members` (manifest.json first); returns resolve's error text.
    fn refusal(t: &Path, members: &[M]) -> String {
        let dirs = Dirs::new(t.join("data"));
        let a = tar_file(t, "evil.tar", members);
        let e = resolve(&dirs, &a, None, "x", UnpackLimit::default())
            .err()
            .expect("a hostile archive was accepted");
        assert!(matches!(e, ImageError::UnreadableArchive { .. }), "{e:?}");
        assert_eq!(
            std::fs::read_dir(dirs.tmp()).unwrap().count(),
            0,
            "temp dir left behind"
        );
        e.to_string()
    }

    const MANIFEST: &[u8] = br#"[{"Config":"c.json","Layers":["l.tar"]}]"#;

    #[test]
    fn members_that_link_out_are_refused_without_reading_them() {
        let t = tempfile::tempdir().unwrap();
        // A host file that is a perfectly good config: taken as the image's config before.
        let host = t.path().join("host-config.json");
        std::fs::write(
            &host,
            br#"{"architecture":"amd64","os":"linux","config":{"Env":["HOST_SECRET=hunter2"]},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let host = host.display().to_string();
        let layer: &[u8] = &[0; 1024];
        let e = refusal(
            t.path(),
            &[
                M::File("manifest.json", MANIFEST),
                M::Symlink("c.json", &host),
                M::File("l.tar", layer),
            ],
        );
        assert!(
            e.contains("config \"c.json\": leads outside the image"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        // Layers linking to a host secret or to an endless device, directly or through a
        // hard link or a linked directory: refused before anything opens them.
        for (name, link) in [
            ("l.tar", M::Symlink("l.tar", "/etc/shadow")),
            ("l.tar", M::Symlink("l.tar", "/dev/zero")),
            ("l.tar", M::Hardlink("l.tar", "../../../../etc/shadow")),
            ("d/l.tar", M::Symlink("d", "/etc")),
        ] {
            let manifest = format!(r#"[{{"Config":"c.json","Layers":["{name}"]}}]"#);
            let e = refusal(
                t.path(),
                &[
                    M::File("manifest.json", manifest.as_bytes()),
                    M::File("c.json", b"{}"),
                    link,
                ],
            );
            assert!(
                e.ends_with(&format!("layer {name:?}: leads outside the image")),
                "{e}"
            );
        }
        // A config that is /dev/zero (fcvm once grew to 2 GB reading it), a FIFO, a device.
        for config in [
            M::Symlink("c.json", "/dev/zero"),
            M::Fifo("c.json"),
            M::CharDev("c.json", 1, 5),
        ] {
            let e = refusal(t.path(), &[M::File("manifest.json", MANIFEST), config]);
            assert!(e.contains("config \"c.json\""), "{e}");
        }
    }

    #[test]
    fn oversized_or_unparsable_metadata_is_refused_without_quoting_it() {
        let t = tempfile::tempdir().unwrap();
        let mut big = MANIFEST.to_vec();
        big.resize(5 << 20, b' ');
        let e = refusal(t.path(), &[M::File("manifest.json", &big)]);
        assert!(e.ends_with("manifest.json: larger than 4 MiB"), "{e}");
        let e = refusal(
            t.path(),
            &[
                M::File("manifest.json", MANIFEST),
                M::Zeros("c.json", 5 << 20),
            ],
        );
        assert!(e.ends_with("config \"c.json\": larger than 4 MiB"), "{e}");
        // What /etc/shadow would have shown through a JSON error.
        let e = refusal(
            t.path(),
            &[M::File(
                "manifest.json",
                b"root:$6$hunter2:19000:0:99999:7:::",
            )],
        );
        assert!(e.contains("bad manifest.json: not valid JSON"), "{e}");
        let e = refusal(
            t.path(),
            &[M::File(
                "manifest.json",
                br#"[{"Config":["root:$6$hunter2"]}]"#,
            )],
        );
        assert!(!e.contains("hunter2"), "{e}");
    }
}
