//! Host directories mapped into the container (`--map`/`-v`), end to end with real QEMU VMs,
//! the real agent (FUSE in the guest) and crun on the built-in busybox image.
//!
//! Plan: a file the host wrote is read in the container, and one the container wrote is read
//! on the host, also while the VM runs (no cache hides the other side's writes); `:ro` refuses
//! writes in the container and the host files stay as they were; symlinks in the share that
//! point outside it (relative and absolute, to a host file in a temp dir) never reach that
//! host file, for reading or writing; a snapshot of a VM with a map gives clones that read and
//! write the map — the snapshot's host directory, or another one given to the clone; bad
//! specs exit 125 with one line and leave nothing behind; the image-cache snapshot of a run
//! with a map serves the next run (same guest path) from that run's own host directory; files
//! of several MiB read and write whole (reads land in guest memory, writes go in parts).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const IMG: &str = "builtin:busybox";
const LIMIT: Duration = Duration::from_secs(120);

fn share() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fcvm-map-test")
        .tempdir()
        .unwrap()
}

fn spec(dir: &Path, guest: &str) -> String {
    format!("{}:{guest}", dir.display())
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn host_and_container_see_each_others_writes() {
    let dir = share();
    std::fs::write(dir.path().join("from-host"), "hello from the host\n").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    // One-shot: read the host's file, write one back; modes and owners are the host's.
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "-v",
        &spec(dir.path(), "/data"),
        IMG,
        "sh",
        "-c",
        "cat /data/from-host && echo from the container > /data/sub/from-guest && \
         chmod 640 /data/sub/from-guest && stat -c '%a %u' /data/sub/from-guest /data/from-host",
    ]);
    assert_eq!(code, 0, "{err}");
    let uid = nix::unistd::geteuid().as_raw();
    let host_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.path().join("from-host"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        out,
        format!("hello from the host\n640 {uid}\n{host_mode:o} {uid}\n")
    );
    assert_eq!(
        read(dir.path().join("sub/from-guest")),
        "from the container\n"
    );

    // While the VM runs: each side sees the other's later writes at once.
    // A program on the map runs as the container's own command and as an exec's.
    let prog = dir.path().join("prog.sh");
    std::fs::write(&prog, "#!/bin/sh\necho ran from the map \"$@\"\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let data = spec(dir.path(), "/data");
    let (code, out, err) = run_ok(&["podman", "run", "-v", &data, IMG, "/data/prog.sh", "1"]);
    assert_eq!((code, out.as_str()), (0, "ran from the map 1\n"), "{err}");
    let vm = Running::start("map-live", &["--map", &spec(dir.path(), "/data")]);
    assert_eq!(vm.sh("cat /data/from-host").1, "hello from the host\n");
    let (code, out, err) = vm.exec(&["-w", "/data", "--", "./prog.sh", "2"]);
    assert_eq!((code, out.as_str()), (0, "ran from the map 2\n"), "{err}");
    std::fs::write(dir.path().join("from-host"), "changed on the host\n").unwrap();
    std::fs::write(dir.path().join("new"), "new on the host\n").unwrap();
    let (code, out, err) = vm.sh("cat /data/from-host /data/new; ls /data");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "changed on the host\nnew on the host\nfrom-host\nnew\nprog.sh\nsub\n"
    );
    let (code, _, err) = vm.sh("echo again > /data/new && mkdir /data/d && mv /data/new /data/d/");
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(dir.path().join("d/new")), "again\n");
    // A directory of many entries lists whole, and `rm -rf` (which removes as it lists)
    // leaves nothing.
    std::fs::create_dir(dir.path().join("many")).unwrap();
    for i in 0..2000 {
        std::fs::write(dir.path().join(format!("many/entry-number-{i}")), "").unwrap();
    }
    let (code, out, err) = vm.sh("ls /data/many | wc -l && rm -rf /data/many");
    assert_eq!((code, out.trim()), (0, "2000"), "{err}");
    assert!(!dir.path().join("many").exists());
    // The map is visible inside the container's root (crun's bind mount), as a FUSE mount.
    let (_, mounts, _) = vm.sh("grep ' /data ' /proc/mounts");
    assert!(mounts.contains("fuse"), "{mounts}");
}

/// The image-cache snapshot of a run with a map is restored by the next run with the same
/// guest path, which is served from its own host directory.
#[test]
fn the_image_cache_restores_with_another_host_directory() {
    let run_once = |dir: &Path| {
        let out = fcvm()
            .env("FCVM_TIMINGS", "1")
            .args(["podman", "run", "-v", &spec(dir, "/cached"), IMG])
            .args(["sh", "-c", "cat /cached/id && echo seen > /cached/back"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        (text(&out.stdout), text(&out.stderr))
    };
    let (a, b) = (share(), share());
    std::fs::write(a.path().join("id"), "first\n").unwrap();
    std::fs::write(b.path().join("id"), "second\n").unwrap();
    assert_eq!(run_once(a.path()).0, "first\n");
    let (out, err) = run_once(b.path());
    assert_eq!(out, "second\n");
    assert!(
        err.contains("restored_from=cache-"),
        "did not restore: {err}"
    );
    assert_eq!(read(b.path().join("back")), "seen\n");
}

#[test]
fn read_only_map_refuses_writes() {
    let dir = share();
    std::fs::write(dir.path().join("f"), "kept\n").unwrap();
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "-v",
        &format!("{}:ro", spec(dir.path(), "/ro")),
        IMG,
        "sh",
        "-c",
        "cat /ro/f; echo x > /ro/f || echo write-refused; touch /ro/g || echo create-refused; \
         rm /ro/f || echo rm-refused",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "kept\nwrite-refused\ncreate-refused\nrm-refused\n");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(read(dir.path().join("f")), "kept\n");
    assert!(!dir.path().join("g").exists());
}

/// A symlink in the share is the guest's to resolve: one pointing outside the share (to a
/// host file beside it, relatively or absolutely) never reaches that file.
#[test]
fn symlinks_never_lead_outside_the_share_on_the_host() {
    let top = share();
    let outside = top.path().join("outside");
    let inside = top.path().join("share");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&inside).unwrap();
    let secret = outside.join("passwd");
    std::fs::write(&secret, "root:x:0:0:host-secret\n").unwrap();
    std::os::unix::fs::symlink("../outside/passwd", inside.join("rel")).unwrap();
    std::os::unix::fs::symlink(&secret, inside.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", inside.join("dir")).unwrap();
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "-v",
        &spec(&inside, "/data"),
        IMG,
        "sh",
        "-c",
        "cat /data/rel /data/abs /data/dir/passwd; readlink /data/rel; \
         echo pwned > /data/rel; echo pwned > /data/dir/passwd; echo pwned > /data/abs; \
         ls /data/dir/ 2>&1; true",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("host-secret"), "{out}");
    assert!(!err.contains("host-secret"), "{err}");
    assert!(out.starts_with("../outside/passwd\n"), "{out}");
    assert_eq!(
        read(&secret),
        "root:x:0:0:host-secret\n",
        "host file untouched"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn snapshot_clones_read_and_write_the_map() {
    let dir = share();
    std::fs::write(dir.path().join("a"), "source dir\n").unwrap();
    let vm = Running::start("map-src", &["-v", &spec(dir.path(), "/data")]);
    assert_eq!(vm.sh("cat /data/a").1, "source dir\n");
    let snap = name("mapsnap");
    let out = run(&["snapshot", "create", &vm.name, "--tag", &snap], BOOT);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The source VM goes on serving its map after the snapshot.
    assert_eq!(
        vm.sh("echo after > /data/after && cat /data/a").1,
        "source dir\n"
    );
    assert_eq!(read(dir.path().join("after")), "after\n");

    // A clone serves the snapshot's host directory…
    let (code, out, err) = run_ok(&[
        "snapshot",
        "run",
        &snap,
        "--exec",
        "cat /data/a && echo clone > /data/from-clone",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "source dir\n");
    assert_eq!(read(dir.path().join("from-clone")), "clone\n");

    // …or another one given for the same guest path.
    let other = share();
    std::fs::write(other.path().join("a"), "other dir\n").unwrap();
    let (code, out, err) = run_ok(&[
        "snapshot",
        "run",
        &snap,
        "-v",
        &spec(other.path(), "/data"),
        "--exec",
        "cat /data/a && echo clone2 > /data/w && ls /data",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "other dir\na\nw\n");
    assert_eq!(read(other.path().join("w")), "clone2\n");
    assert!(!dir.path().join("w").exists());

    // A guest path the snapshot has no map at: 125 before anything starts.
    let (code, _, err) = run_ok(&[
        "snapshot",
        "run",
        &snap,
        "-v",
        &spec(other.path(), "/elsewhere"),
        "--exec",
        "true",
    ]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("/elsewhere"), "{err}");
    drop(vm);
    let _ = run(&["snapshot", "rm", &snap], LIMIT);
}

/// Large files cross whole both ways: a read of 1 MiB is one request whose data the host
/// writes into the guest's memory, a read through a 7,777-byte buffer ends short at the
/// end of the file, and a 1 MiB write goes as several requests at once.
#[test]
fn large_files_are_read_and_written_whole() {
    let dir = share();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 12345)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.path().join("big"), &data).unwrap();
    let md5 = std::process::Command::new("md5sum")
        .arg(dir.path().join("big"))
        .output()
        .unwrap();
    let md5 = String::from_utf8(md5.stdout).unwrap();
    let md5 = md5.split_whitespace().next().unwrap();
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "-v",
        &spec(dir.path(), "/data"),
        IMG,
        "sh",
        "-c",
        "dd if=/data/big bs=1M 2>/dev/null | md5sum && dd if=/data/big bs=7777 2>/dev/null | \
         md5sum && dd if=/data/big of=/data/copy bs=1M 2>/dev/null && wc -c < /data/copy",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{md5}  -\n{md5}  -\n{}\n", data.len()));
    assert!(std::fs::read(dir.path().join("copy")).unwrap() == data);
}

#[test]
fn bad_specs_exit_125_and_leave_nothing() {
    let dir = share();
    let vms = data_dir().join("vms");
    // Other tests run VMs meanwhile: only a directory of one of this test's names counts.
    let ours = |names: &[String]| -> Vec<String> {
        let dirs = std::fs::read_dir(&vms).into_iter().flatten().flatten();
        dirs.filter_map(|d| std::fs::read_to_string(d.path().join("state.json")).ok())
            .filter(|st| names.iter().any(|n| st.contains(&format!("\"{n}\""))))
            .collect()
    };
    let mut names = vec![];
    let missing = dir.path().join("missing");
    let bad = [
        "relative:/x".to_string(),
        spec(&missing, "/x"),
        spec(dir.path(), "relative"),
        format!("{}:ro:extra", spec(dir.path(), "/x")),
    ];
    for (i, b) in bad.iter().enumerate() {
        let n = name(&format!("badmap{i}"));
        names.push(n.clone());
        let (code, out, err) = run_ok(&["podman", "run", "--name", &n, "-v", b, IMG, "true"]);
        assert_eq!(code, 125, "{b}: {err}");
        assert!(out.is_empty(), "{b}: {out}");
        assert!(err.contains("--map"), "{b}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{b}: {err}");
        assert_gone(&n, None);
    }
    // Two maps at one guest path.
    let n = name("badmap-dup");
    names.push(n.clone());
    let m = spec(dir.path(), "/x");
    let (code, _, err) = run_ok(&[
        "podman", "run", "--name", &n, "-v", &m, "-v", &m, IMG, "true",
    ]);
    assert_eq!(code, 125, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_gone(&n, None);
    assert_eq!(ours(&names), Vec::<String>::new(), "no VM directory left");
}
