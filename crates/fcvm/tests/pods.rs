//! A pod: one real VM (QEMU, the agent, crun) through the library's `BundleVm`, its first
//! container from an erofs of fcvm's builtin busybox, two more containers added from host
//! directories (that busybox unpacked twice) served as maps.
//!
//! Plan:
//! 1. bad container ids are refused by the library and, sent raw, by the agent;
//! 2. container `srv` serves one TCP connection on 127.0.0.1:8080 (`nc -l -e echo hi`);
//!    container `cli` connects to it and reads "hi" (shared localhost), sees none of `srv`'s
//!    files, and exits 7: its exit code comes back;
//! 3. an exec into `srv` sees its own root (a file only in its directory), the pod's
//!    hostname, and writes a file that lands in the host directory; a host directory bound
//!    into `srv` read-write and again read-only: read through both, written through the
//!    first only; binds the agent refuses (a relative destination) or the library cannot
//!    serve (a file) fail the add and leave nothing mounted;
//! 4. removing both leaves no crun state, no map mount and no bundle in the guest, and no
//!    container in the library's list; a second removal is refused.
//!
//! Needs: root, qemu, `FCVM_AGENT` (scripts/lib.sh's build_all) for the guest assets.

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

use fcvm::bundle::{BundleVm, PodError, VmRequest};
use fcvm::session::{Process, Session};
use fcvm_proto::{Msg, ProcessSpec, Target};

/// The builtin busybox image's one layer, unpacked into `dest`; returns the layer's digest.
fn unpack_busybox(dest: &Path) -> String {
    let dirs = fcvm::paths::Dirs::new(data_dir());
    let layout = fcvm::image::ensure_builtin_busybox(&dirs).expect("builtin busybox");
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index = json(&layout.join("index.json"));
    let manifest = json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let gz = std::fs::File::open(blob(&layer)).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    tar.set_preserve_permissions(true);
    tar.unpack(dest).unwrap();
    layer
}

fn spec(script: &str) -> ProcessSpec {
    ProcessSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    }
}

/// A process's output (stdout and stderr, or the agent's error) and exit code.
async fn finish(mut p: Process) -> (String, i32) {
    let mut out = Vec::new();
    let all = async {
        while let Some(m) = p.recv().await {
            match m {
                Msg::Stdout(b) | Msg::Stderr(b) => out.extend(b),
                Msg::Exit { code, .. } => return code,
                Msg::Error { kind, message } => {
                    out.extend(message.as_bytes());
                    return kind.exit_code();
                }
                _ => {}
            }
        }
        -1
    };
    let code = tokio::time::timeout(Duration::from_secs(240), all)
        .await
        .expect("the process ends");
    (String::from_utf8_lossy(&out).into_owned(), code)
}

async fn in_vm(session: &Session, script: &str) -> (String, i32) {
    let mut s = spec(script);
    s.env = vec![];
    finish(session.start(s, Target::Vm).await).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pods_containers_share_localhost_and_keep_their_own_roots() {
    let dirs = fcvm::paths::Dirs::new(data_dir());
    let tmp = tempfile::tempdir().unwrap();
    let (sandbox, srv_root, cli_root) = (
        tmp.path().join("sandbox"),
        tmp.path().join("srv"),
        tmp.path().join("cli"),
    );
    let layer = unpack_busybox(&sandbox);
    unpack_busybox(&srv_root);
    unpack_busybox(&cli_root);
    std::fs::write(srv_root.join("only-in-srv"), "srv's own file\n").unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "volume\n").unwrap();
    let bind = |host: &Path, guest: &str, read_only| fcvm::map::Map {
        host: host.to_path_buf(),
        guest: guest.into(),
        read_only,
    };
    let key = layer.trim_start_matches("sha256:").to_string();
    let rootfs = fcvm::bundle::erofs_of_tree(&dirs, &key, &sandbox, &[]).expect("erofs");
    let req = VmRequest {
        name: name("pods"),
        hostname: "podhost".into(),
        rootfs,
        digest: format!("sha256:{key}"),
        image: "builtin:busybox".into(),
        cpus: 1,
        mem_mib: 512,
        env: vec!["PATH=/bin".into()],
        prefetch: vec![],
        privileged: false,
        no_snapshot: true,
        maps: vec![],
    };
    let vm = BundleVm::launch(&dirs, &req).await.expect("launch");
    let mut first = vm
        .session
        .start(spec("exec sleep 600"), Target::Container)
        .await;
    assert!(first.wait_started().await, "the first container runs");

    // 1. Bad ids: the library's check, and the agent's for a raw Start.
    for bad in ["../x", "a/b", "", ".x", &"x".repeat(65)] {
        let r = vm.add_container(bad, &srv_root).await;
        assert!(matches!(r, Err(PodError::BadId(_))), "{bad}: {r:?}");
    }
    let raw = Target::PodExec { id: "a/b".into() };
    let (out, code) = finish(vm.session.start(spec("true"), raw).await).await;
    assert_eq!(code, 125, "{out}");
    assert!(out.contains("Invalid container id"), "{out}");
    let raw = Target::PodContainer {
        id: "ok".into(),
        root: 99,
    };
    let (out, code) = finish(vm.session.start(spec("true"), raw).await).await;
    assert_eq!(code, 125, "{out}");
    assert!(out.contains("Map 99 is not mounted"), "{out}");

    // 2. Two containers from host directories, sharing the first one's localhost.
    let binds = [bind(&vol, "/vol", false), bind(&vol, "/etc/vol-ro", true)];
    let r = vm.add_container_with("srv", &srv_root, &binds).await;
    r.expect("add srv");
    vm.add_container("cli", &cli_root).await.expect("add cli");
    let dup = vm.add_container("srv", &srv_root).await;
    assert!(matches!(dup, Err(PodError::Duplicate(_))), "{dup:?}");
    let mut srv = vm
        .start_container("srv", spec("nc -l -p 8080 -e echo hi; exec sleep 600"))
        .await
        .unwrap();
    assert!(srv.wait_started().await, "srv runs");
    let cli = vm
        .start_container(
            "cli",
            spec(
                "test -e /only-in-srv && echo 'sees srv root'; \
                 for i in $(seq 1 300); do nc 127.0.0.1 8080 </dev/null && exit 7; sleep 0.2; done; \
                 exit 1",
            ),
        )
        .await
        .unwrap();
    let (out, code) = finish(cli).await;
    assert_eq!((out.as_str(), code), ("hi\n", 7));
    let again = vm.start_container("cli", spec("true")).await;
    assert!(
        matches!(again, Err(PodError::Started(_))),
        "{:?}",
        again.err()
    );

    // 3. An exec into srv: its own root, the pod's hostname; writes land in its directory.
    let exec = vm
        .exec_in(
            "srv",
            spec(
                "cat /only-in-srv; hostname; echo from-guest > /written; \
                 cat /vol/in /etc/vol-ro/in; echo bound > /vol/out; \
                 (echo no > /etc/vol-ro/no) 2>/dev/null || echo ro",
            ),
        )
        .await
        .unwrap();
    let (out, code) = finish(exec).await;
    let want = "srv's own file\npodhost\nvolume\nvolume\nro\n";
    assert_eq!((out.as_str(), code), (want, 0));
    assert_eq!(
        std::fs::read_to_string(srv_root.join("written")).unwrap(),
        "from-guest\n"
    );
    assert_eq!(std::fs::read_to_string(vol.join("out")).unwrap(), "bound\n");
    assert!(!vol.join("no").exists());
    let r = vm
        .add_container_with("bad", &cli_root, &[bind(&vol, "vol", false)])
        .await;
    let e = format!("{:#}", anyhow::Error::from(r.unwrap_err()));
    assert!(e.contains("Invalid bind destination \"vol\""), "{e}");
    let file = vol.join("in");
    let r = vm
        .add_container_with("bad", &cli_root, &[bind(&file, "/f", false)])
        .await;
    assert!(matches!(r, Err(PodError::BindNotDir(..))), "{r:?}");

    // 4. Removing them: srv's process ends, nothing of either is left in the guest.
    vm.remove_container("srv").await.expect("remove srv");
    vm.remove_container("cli").await.expect("remove cli");
    let (_, code) = finish(srv).await;
    assert_ne!(code, 0, "srv was killed");
    let (out, code) = in_vm(
        &vm.session,
        "ls /run/crun; grep -c fcvm-map /proc/mounts; ls /run/fcvm/pods",
    )
    .await;
    assert_eq!((out.as_str(), code), ("fcvm\n0\n", 0), "left in the guest");
    assert!(vm.containers().await.is_empty());
    let gone = vm.remove_container("srv").await;
    assert!(
        matches!(gone, Err(PodError::NoSuchContainer(_))),
        "{gone:?}"
    );
    let r = vm.exec_in("cli", spec("true")).await;
    assert!(
        matches!(r, Err(PodError::NoSuchContainer(_))),
        "{:?}",
        r.err()
    );

    // The first container ran all along.
    let e = vm.session.start(spec("echo first"), Target::ContainerExec);
    assert_eq!(finish(e.await).await, ("first\n".to_string(), 0));
    vm.stop();
    drop(first);
}
