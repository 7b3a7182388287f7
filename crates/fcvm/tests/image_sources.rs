//! Every image source, end to end, with real tools and a real registry (no mocks).
//!
//! Plan:
//! 1. Build `builtin:busybox` from Debian's busybox-static into a fresh data dir and prepare it:
//!    the erofs image holds bin/busybox (`dump.erofs`), the config's cmd is `["sh"]`; preparing
//!    the same image again as `oci:LAYOUT:latest` is a cache hit (rootfs mtime unchanged).
//! 2. skopeo turns that layout into a docker-archive and an oci-archive; each is prepared in its
//!    own fresh data dir (so each really unpacks).
//! 3. Debian's `docker-registry` serves on 127.0.0.1:<free port> (killed by a drop guard); skopeo
//!    pushes the image; `127.0.0.1:PORT/busybox:latest` is prepared over plain http; an unknown
//!    tag is "Image not found"; a closed port is "unreachable".
//!    A multi-arch index (an arm64 decoy + the real amd64 manifest) resolves to the amd64 entry,
//!    both from an OCI layout and pushed to the registry with `skopeo copy --all`.
//!    A registry with htpasswd auth refuses anonymous pulls and accepts `PullOptions::creds` and
//!    an auth.json named by $REGISTRY_AUTH_FILE.
//! 4. A copied layout with one flipped byte in its layer blob fails with "digest mismatch" and
//!    leaves nothing in images/ or tmp/.
//! 5. A hand-made two-layer docker-archive (gzip sniffed) applies `.wh.` and opaque whiteouts
//!    and carries a Healthcheck; a layer that does not match its diff_id is refused.
//! 6. Two concurrent prepares of one image in one data dir both succeed and share one rootfs.
//!
//! Needs: apt access (busybox-static), erofs-utils, skopeo, docker-registry. The busybox layout
//! the other tests read is built once into `$CARGO_TARGET_TMPDIR/image-sources-shared`.

mod common;
use common::registry::Registry;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use fcvm::image::{ensure_builtin_busybox, prepare, ImageError, PreparedImage, PullOptions};
use fcvm::paths::Dirs;

fn quiet() {
    std::env::set_var("FCVM_QUIET", "1");
}

/// The busybox layout, built once per target dir and shared by the tests that only read it.
fn shared_layout() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dirs = Dirs::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-sources-shared"));
        ensure_builtin_busybox(&dirs).expect("builtin busybox")
    })
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn skopeo_copy(from: &str, to: &str, extra: &[&str]) {
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q"])
        .args(extra)
        .args([from, to]));
}

/// Asserts the image is a usable busybox rootfs.
fn assert_busybox(img: &PreparedImage) {
    assert_eq!(img.fstype, "erofs");
    assert!(img.rootfs.is_file(), "{}", img.rootfs.display());
    assert!(img.digest.starts_with("sha256:"), "{}", img.digest);
    assert_eq!(img.config.cmd, vec!["sh"]);
    assert!(img.config.env.iter().any(|e| e.starts_with("PATH=")));
    let out = Command::new("dump.erofs")
        .arg("--path=/bin/busybox")
        .arg(&img.rootfs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Size:"), "{text}");
    let out = Command::new("dump.erofs")
        .args(["--path=/bin", "--ls"])
        .arg(&img.rootfs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("busybox") && text.contains(" sh"), "{text}");
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn builtin_busybox_then_cache_hit() {
    quiet();
    let t = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(t.path());
    let opts = PullOptions::default();
    let img = prepare(&dirs, "builtin:busybox", &opts).await.unwrap();
    assert_busybox(&img);
    assert_eq!(entries(&dirs.tmp()), 0, "tmp/ not cleaned");

    let layout = dirs.images().join("builtin/busybox");
    let mtime = std::fs::metadata(&img.rootfs).unwrap().modified().unwrap();
    let again = prepare(&dirs, &format!("oci:{}:latest", layout.display()), &opts)
        .await
        .unwrap();
    assert_eq!(again.rootfs, img.rootfs);
    assert_eq!(again.digest, img.digest);
    assert_eq!(
        std::fs::metadata(&again.rootfs)
            .unwrap()
            .modified()
            .unwrap(),
        mtime,
        "rebuilt instead of reusing the cache"
    );
    // Same Debian package → same layout, byte for byte (digest stability).
    let shared = shared_layout();
    assert_eq!(
        std::fs::read(shared.join("index.json")).unwrap(),
        std::fs::read(layout.join("index.json")).unwrap()
    );

    let e = prepare(&dirs, &format!("oci:{}:nope", layout.display()), &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::NotFound(_)), "{e}");
    assert!(e.to_string().starts_with("Image not found"), "{e}");
}

#[tokio::test]
async fn docker_and_oci_archives() {
    quiet();
    let layout = shared_layout();
    let t = tempfile::tempdir().unwrap();
    let src = format!("oci:{}:latest", layout.display());
    let docker = t.path().join("busybox-docker.tar");
    let oci = t.path().join("busybox-oci.tar");
    skopeo_copy(
        &src,
        &format!("docker-archive:{}:busybox:latest", docker.display()),
        &[],
    );
    skopeo_copy(&src, &format!("oci-archive:{}:latest", oci.display()), &[]);

    for reference in [
        format!("docker-archive:{}", docker.display()),
        format!("docker-archive:{}:busybox:latest", docker.display()),
        format!("oci-archive:{}:latest", oci.display()),
        format!("oci-archive:{}", oci.display()),
    ] {
        let dirs = Dirs::new(t.path().join(format!("data-{}", reference.len())));
        let img = prepare(&dirs, &reference, &PullOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_busybox(&img);
        assert_eq!(entries(&dirs.tmp()), 0, "{reference}: tmp/ not cleaned");
    }

    let dirs = Dirs::new(t.path().join("data-bad"));
    let e = prepare(
        &dirs,
        &format!("docker-archive:{}", t.path().join("missing.tar").display()),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ImageError::UnreadableArchive { .. }), "{e}");
}

#[tokio::test]
async fn loopback_registry() {
    quiet();
    let layout = shared_layout();
    let reg = Registry::start();
    let name = format!("127.0.0.1:{}/busybox:latest", reg.port);
    skopeo_copy(
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{name}"),
        &["--dest-tls-verify=false"],
    );

    let t = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(t.path());
    let opts = PullOptions::default();
    let img = prepare(&dirs, &name, &opts).await.unwrap();
    assert_busybox(&img);
    // The layer blob is cached by digest for later pulls.
    assert_eq!(entries(&dirs.blobs().join("sha256")), 1);
    assert_eq!(entries(&dirs.tmp()), 0);

    let missing = format!("127.0.0.1:{}/busybox:nope", reg.port);
    let e = prepare(&dirs, &missing, &opts).await.unwrap_err();
    assert!(matches!(e, ImageError::NotFound(_)), "{e}");
    let e = prepare(
        &dirs,
        &format!("127.0.0.1:{}/nothing:latest", reg.port),
        &opts,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ImageError::NotFound(_)), "{e}");

    drop(reg);
    let e = prepare(&dirs, &name.replace("latest", "other"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::RegistryUnreachable { .. }), "{e:?}");
    assert_eq!(e.to_string().lines().count(), 1, "{e}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn corrupt_layer_is_refused() {
    quiet();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    copy_dir(shared_layout(), &layout);
    // index → manifest → the one layer blob.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(d.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&index["manifests"][0]["digest"])).unwrap())
            .unwrap();
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layer = blob(&manifest["layers"][0]["digest"]);
    let mut data = std::fs::read(&layer).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&layer, data).unwrap();

    let dirs = Dirs::new(t.path().join("data"));
    let e = prepare(
        &dirs,
        &format!("oci:{}:latest", layout.display()),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("Layer {layer_digest} digest mismatch")
    );
    assert_eq!(entries(&dirs.images()), 0, "something left in images/");
    assert_eq!(entries(&dirs.tmp()), 0, "something left in tmp/");
}

fn write_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    use sha2::Digest;
    let hex = hex::encode(sha2::Sha256::digest(data));
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

/// A copy of the busybox layout whose `latest` is a multi-arch index: an arm64 decoy (same
/// content, different manifest digest) listed before the real amd64 manifest. Returns the amd64
/// manifest digest.
fn multi_arch_layout(layout: &Path) -> String {
    copy_dir(shared_layout(), layout);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let amd64 = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let amd64_size = index["manifests"][0]["size"].clone();
    let mut decoy: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(amd64.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    decoy["annotations"] = serde_json::json!({"fcvm.test": "arm64 decoy"});
    let (decoy, decoy_size) = write_blob(layout, &serde_json::to_vec(&decoy).unwrap());
    let m = "application/vnd.oci.image.manifest.v1+json";
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": m, "digest": decoy, "size": decoy_size,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": m, "digest": amd64, "size": amd64_size,
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    });
    let (nested, nested_size) = write_blob(layout, &serde_json::to_vec(&nested).unwrap());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested,
                       "size": nested_size,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    amd64
}

#[tokio::test]
async fn multi_arch_index_picks_amd64() {
    quiet();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("multi");
    let amd64 = multi_arch_layout(&layout);
    let dirs = Dirs::new(t.path().join("data"));
    let img = prepare(
        &dirs,
        &format!("oci:{}:latest", layout.display()),
        &PullOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(img.digest, amd64);
    assert_busybox(&img);

    let reg = Registry::start();
    let name = format!("127.0.0.1:{}/busybox:multi", reg.port);
    skopeo_copy(
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{name}"),
        &["--all", "--dest-tls-verify=false"],
    );
    let dirs = Dirs::new(t.path().join("data2"));
    let img = prepare(&dirs, &name, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(img.digest, amd64);
    assert_busybox(&img);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_prepares_share_one_build() {
    quiet();
    let t = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(t.path());
    let reference = format!("oci:{}:latest", shared_layout().display());
    let opts = PullOptions::default();
    let (a, b, c) = tokio::join!(
        prepare(&dirs, &reference, &opts),
        prepare(&dirs, &reference, &opts),
        prepare(&dirs, &reference, &opts)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.rootfs, b.rootfs);
    assert_eq!(a.rootfs, c.rootfs);
    assert_busybox(&a);
    assert_eq!(entries(&dirs.images()), 1);
    assert_eq!(entries(&dirs.tmp()), 0);
}

/// A tar of (path, contents) files; directories are implied.
fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, p, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn ls_erofs(rootfs: &Path, dir: &str) -> String {
    let out = Command::new("dump.erofs")
        .arg(format!("--path={dir}"))
        .arg("--ls")
        .arg(rootfs)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn whiteouts_through_a_docker_archive() {
    use sha2::Digest;
    use std::io::Write;
    quiet();
    let t = tempfile::tempdir().unwrap();
    let l1 = tar_of(&[("etc/a", "a"), ("etc/b", "b"), ("d/old", "o")]);
    let l2 = tar_of(&[("etc/.wh.a", ""), ("d/.wh..wh..opq", ""), ("d/new", "n")]);
    // The second layer gzipped: docker-archive gives no media types, so it must be sniffed.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&l2).unwrap();
    let l2_gz = gz.finish().unwrap();
    let diff_id = |d: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(d)));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"], "Healthcheck": {"Test": ["CMD", "true"], "Interval": 2_000_000_000u64}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id(&l1), diff_id(&l2)]},
    });
    let build = |l2_bytes: &[u8], name: &str| {
        let manifest = serde_json::json!([{"Config": "c.json", "RepoTags": ["wh:1"],
                                           "Layers": ["1/layer.tar", "2/layer.tar"]}]);
        let path = t.path().join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = serde_json::to_vec(&manifest).unwrap();
        for (p, data) in [
            ("manifest.json", &manifest[..]),
            ("c.json", &config[..]),
            ("1/layer.tar", &l1[..]),
            ("2/layer.tar", l2_bytes),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, p, data).unwrap();
        }
        b.finish().unwrap();
        path
    };
    let good = build(&l2_gz, "good.tar");
    let dirs = Dirs::new(t.path().join("data"));
    let img = prepare(
        &dirs,
        &format!("docker-archive:{}:wh:1", good.display()),
        &PullOptions::default(),
    )
    .await
    .unwrap();
    let etc = ls_erofs(&img.rootfs, "/etc");
    assert!(etc.contains(" b") && !etc.contains(" a"), "{etc}");
    let d = ls_erofs(&img.rootfs, "/d");
    assert!(d.contains("new") && !d.contains("old"), "{d}");
    let hc = img.config.healthcheck.expect("healthcheck");
    assert_eq!(
        (hc.test, hc.interval_s),
        (vec!["CMD".into(), "true".into()], 2)
    );

    // Same archive, second layer not what the config's diff_id promises.
    let bad = build(&tar_of(&[("d/new", "N")]), "bad.tar");
    let dirs = Dirs::new(t.path().join("data-bad"));
    let e = prepare(
        &dirs,
        &format!("docker-archive:{}", bad.display()),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("Layer {} digest mismatch", diff_id(&l2))
    );
    assert_eq!(entries(&dirs.images()), 0);
    assert_eq!(entries(&dirs.tmp()), 0);
}

#[tokio::test]
async fn registry_credentials() {
    quiet();
    // bcrypt of "s3cret" (cost 4, to keep the test fast).
    let reg = Registry::start_with_htpasswd(Some(
        "alice:$2b$04$3Bh3NeuCSfbZj4QgaIj15OUXlQsww0CSp3uSIDHW/lQiyC5c3vmEq",
    ));
    let name = format!("127.0.0.1:{}/private/busybox:latest", reg.port);
    skopeo_copy(
        &format!("oci:{}:latest", shared_layout().display()),
        &format!("docker://{name}"),
        &["--dest-tls-verify=false", "--dest-creds", "alice:s3cret"],
    );
    let t = tempfile::tempdir().unwrap();

    let dirs = Dirs::new(t.path().join("anon"));
    let e = prepare(&dirs, &name, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Unauthorized(_)), "{e:?}");

    let dirs = Dirs::new(t.path().join("creds"));
    let opts = PullOptions {
        creds: Some(("alice".into(), "s3cret".into())),
        ..Default::default()
    };
    assert_busybox(&prepare(&dirs, &name, &opts).await.unwrap());

    // podman's auth.json format, found through $REGISTRY_AUTH_FILE ("alice:s3cret" in base64).
    let auth = t.path().join("auth.json");
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#,
            reg.port
        ),
    )
    .unwrap();
    std::env::set_var("REGISTRY_AUTH_FILE", &auth);
    let dirs = Dirs::new(t.path().join("authfile"));
    let got = prepare(&dirs, &name, &PullOptions::default()).await;
    std::env::remove_var("REGISTRY_AUTH_FILE");
    assert_busybox(&got.unwrap());
}

/// A hostile registry on loopback: `/v2/` answers, and every manifest request gets 64 MiB of
/// blanks (no length given). fcvm stops reading past 4 MiB and says so; nothing is kept.
#[tokio::test]
async fn an_endless_registry_manifest_is_refused_at_its_bound() {
    quiet();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let _ = r.read_line(&mut line);
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            if line.contains("/manifests/") {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: \
                            application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n";
                let _ = conn.write_all(head.as_bytes());
                let blank = vec![b' '; 1 << 20];
                for _ in 0..64 {
                    if conn.write_all(&blank).is_err() {
                        break;
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            } else {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                );
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    let e = prepare(
        &dirs,
        &format!("127.0.0.1:{port}/hostile:latest"),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("manifest") && msg.contains("larger than 4 MiB"),
        "{msg}"
    );
    // It stopped reading soon after the bound (the server's socket buffers take a few more).
    let sent = served.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent < 32, "{sent} MiB sent before fcvm stopped");
    assert_eq!(entries(&dirs.images()), 0);
}
