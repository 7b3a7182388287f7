//! Hostile images through the real binary: each fails before any VM boots, on one line with
//! exit 125, and leaves nothing in the data dir.
//!
//! Plan:
//! 1. A docker-archive whose one gzip layer holds 8 MiB of zeros (a few KiB compressed, with the
//!    right diff_id, so only the limit can stop it): `fcvm podman run --unpack-limit 1M` exits
//!    125 with "Unpack limit reached in layer 1 of 1: more than 1 MiB unpacked", and so does
//!    `FCVM_UNPACK_LIMIT=1M`; no `images/<config hex>`, nothing new in `tmp/`, no VM record.
//! 2. A docker-archive whose config is a symlink to a host file (a valid config): exit 125, the
//!    error names the config and says it leads outside the image, and no byte of the host file
//!    is printed.
//! 3. A malformed `--unpack-limit` is a usage error (125, one line).
//!
//! Needs: the guest assets (built into the shared data dir on first use, like every VM test).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::{data_dir, fcvm, name, text, vm, wait_output, BOOT};
use sha2::{Digest, Sha256};

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A docker-archive at `path` with the given config and members; returns the config's hex.
fn docker_archive(path: &Path, config: &[u8], members: &[(&str, &[u8])], link: Option<&str>) {
    let hex = sha256(config);
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    let layers: Vec<&str> = members.iter().map(|(n, _)| *n).collect();
    let manifest = serde_json::json!([{
        "Config": format!("{hex}.json"),
        "RepoTags": ["hostile:latest"],
        "Layers": layers,
    }]);
    add("manifest.json", manifest.to_string().as_bytes());
    for (n, data) in members {
        add(n, data);
    }
    match link {
        None => add(&format!("{hex}.json"), config),
        Some(target) => {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, format!("{hex}.json"), target)
                .unwrap();
        }
    }
    b.finish().unwrap();
}

/// (uncompressed tar, gzip of it) of one file of `n` zero bytes.
fn zeros_layer(n: u64) -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(n);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    b.append_data(&mut h, "zeros", std::io::repeat(0).take(n))
        .unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (tar, gz.finish().unwrap())
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["true"], "Env": ["HOST_SECRET=hunter2"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes()
}

fn tmp_entries() -> BTreeSet<PathBuf> {
    std::fs::read_dir(data_dir().join("tmp"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// Runs `fcvm podman run` and returns (exit code, stderr).
fn podman_run(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = fcvm();
    cmd.envs(env.iter().copied())
        .arg("podman")
        .arg("run")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = wait_output(cmd.spawn().unwrap(), BOOT, args);
    (out.status.code(), text(&out.stderr))
}

#[test]
fn an_image_past_the_unpack_limit_fails_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (tar, gz) = zeros_layer(8 << 20);
    let cfg = config(&[format!("sha256:{}", sha256(&tar))]);
    let archive = t.path().join("bomb.tar");
    docker_archive(&archive, &cfg, &[("layer.tar.gz", &gz)], None);
    let image = format!("docker-archive:{}", archive.display());
    let cached = data_dir().join("images").join(sha256(&cfg));
    let before = tmp_entries();

    for (env, flags) in [
        (vec![], vec!["--unpack-limit", "1M"]),
        (vec![("FCVM_UNPACK_LIMIT", "1M")], vec![]),
    ] {
        let n = name("bomb");
        let mut args = vec!["--name", n.as_str()];
        args.extend(flags);
        args.extend([image.as_str(), "true"]);
        let (code, err) = podman_run(&env, &args);
        assert_eq!(code, Some(125), "{env:?} {args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
        assert!(
            err.contains("Unpack limit reached in layer 1 of 1: more than 1 MiB unpacked"),
            "{err}"
        );
        assert!(err.contains("--unpack-limit"), "{err}");
        assert!(vm(&n).is_none(), "a VM record was left");
        assert!(
            !cached.exists(),
            "the image was cached: {}",
            cached.display()
        );
        let left: Vec<_> = tmp_entries().difference(&before).cloned().collect();
        assert!(left.is_empty(), "left in tmp/: {left:?}");
    }
}

#[test]
fn a_config_linked_to_a_host_file_is_refused_without_its_content() {
    let t = tempfile::tempdir().unwrap();
    let (tar, _) = zeros_layer(16);
    let host = t.path().join("host-config.json");
    std::fs::write(&host, config(&[format!("sha256:{}", sha256(&tar))])).unwrap();
    let archive = t.path().join("link.tar");
    docker_archive(
        &archive,
        b"unused",
        &[("layer.tar", &tar)],
        Some(host.to_str().unwrap()),
    );
    let n = name("hostcfg");
    let image = format!("docker-archive:{}", archive.display());
    let (code, err) = podman_run(&[], &["--name", &n, &image, "true"]);
    assert_eq!(code, Some(125), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(".json\": leads outside the image"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(vm(&n).is_none());
}

#[test]
fn a_malformed_unpack_limit_is_a_usage_error() {
    for bad in ["lots", "1Q", "0"] {
        let (code, err) = podman_run(&[], &["--unpack-limit", bad, "builtin:busybox", "true"]);
        assert_eq!(code, Some(125), "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("Invalid unpack limit"), "{bad}: {err}");
    }
}

/// The same image through a loopback registry: the layer blob this run downloaded goes too.
#[test]
fn a_registry_image_past_the_unpack_limit_leaves_no_blob() {
    let t = tempfile::tempdir().unwrap();
    // A different size than the archive test's, so this run downloads a blob of its own.
    let (tar, gz) = zeros_layer(9 << 20);
    let cfg = config(&[format!("sha256:{}", sha256(&tar))]);
    let archive = t.path().join("bomb.tar");
    docker_archive(&archive, &cfg, &[("layer.tar.gz", &gz)], None);
    let registry = common::registry::Registry::start();
    let remote = format!("127.0.0.1:{}/fcvm/bomb:latest", registry.port);
    let o = std::process::Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("docker://{remote}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo: {}", text(&o.stderr));
    let blobs = || -> BTreeSet<PathBuf> {
        std::fs::read_dir(data_dir().join("blobs/sha256"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let before = blobs();
    let n = name("rbomb");
    let (code, err) = podman_run(
        &[],
        &["--name", &n, "--unpack-limit", "1M", &remote, "true"],
    );
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("Unpack limit reached"), "{err}");
    let left: Vec<_> = blobs().difference(&before).cloned().collect();
    assert!(left.is_empty(), "downloaded blobs stayed: {left:?}");
    assert!(!data_dir().join("images").join(sha256(&cfg)).exists());
}
