//! Flags for real workloads, end to end with real QEMU VMs, the real agent and crun on the
//! built-in busybox image.
//!
//! Plan: `--rootfs-size` gives the container a writable layer of that size that really takes
//! 2 GiB of writes (and bad sizes exit 125 leaving nothing); inside `--privileged` (run, and
//! exec into a running VM) `mknod` and `mount -t tmpfs` work, and fail without it; `exec -d`
//! returns at once, printing nothing, while its process runs on (seen by a later exec), and a
//! command that cannot start is still its error; `--env-file` entries reach run and exec,
//! with `-e` winning; `--label` is kept in the VM's state, shown by `ls` and matched by its
//! `--filter label=KEY[=VALUE]` (all filters at once). `--disk`: a SIZE disk is mounted at
//! its mount point with its size, fresh on every run (also one restored from the image-cache
//! snapshot); a PATH disk's writes are in the host file after the run; a snapshot of a VM
//! with disks carries their data into each clone, every clone writing only its own copy;
//! bad specs exit 125 leaving nothing. A clone's labels are its snapshot's, `snapshot run
//! --label` adding and overriding.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

const IMG: &str = "builtin:busybox";

const LIMIT: Duration = Duration::from_secs(120);

/// What needs privileges: a device node and a mount. Prints one word per step.
const PRIV_CMD: &str = "mknod /tmp/x c 1 3 2>/dev/null && echo mknod-ok || echo mknod-denied; \
     mkdir -p /tmp/m; mount -t tmpfs t /tmp/m 2>/dev/null && echo mount-ok || echo mount-denied";

/// A 5G writable layer holds 2 GiB of real data (written, synced and counted in blocks, not
/// a sparse size), and `df` shows its size.
#[test]
fn rootfs_size_gives_room_to_write() {
    let n = name("rootfs");
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "--name",
        &n,
        "--rootfs-size",
        "5G",
        IMG,
        "sh",
        "-c",
        "df -m / | tail -1 | awk '{print $2}'; \
         dd if=/dev/zero of=/big bs=1M count=2048 2>/dev/null && sync && du -m /big",
    ]);
    assert_eq!(code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    let size: u64 = lines[0].trim().parse().expect("df size");
    assert!((4800..=5120).contains(&size), "df: {out}");
    // du counts the blocks the file takes, its extent tree's included: 2048 MiB or a bit more.
    let used: u64 = lines[1]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect("du");
    assert!((2048..2060).contains(&used), "{out}");
    assert_gone(&n, None);
}

#[test]
fn bad_rootfs_size_exits_125_and_creates_nothing() {
    for (i, bad) in ["0", "garbage", "12Q", "1M"].iter().enumerate() {
        let n = name(&format!("badsize{i}"));
        let out = run(
            &[
                "podman",
                "run",
                "--name",
                &n,
                "--rootfs-size",
                bad,
                IMG,
                "true",
            ],
            Duration::from_secs(60),
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{bad}: {err}");
        assert!(err.contains("--rootfs-size"), "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{bad}: {err}");
        assert!(vm(&n).is_none(), "{bad} left a VM record");
    }
}

#[test]
fn privileged_run_can_mknod_and_mount_and_plain_cannot() {
    for (flags, want) in [
        (&["--privileged"][..], "mknod-ok\nmount-ok\n"),
        (&[][..], "mknod-denied\nmount-denied\n"),
    ] {
        let n = name("priv");
        let mut args = vec!["podman", "run", "--name", &n];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMG, "sh", "-c", PRIV_CMD]);
        let (code, out, err) = run_ok(&args);
        assert_eq!(code, 0, "{flags:?}: {err}");
        assert_eq!(out, want, "{flags:?}");
        assert_gone(&n, None);
    }
    // The /dev/null made above is the VM's own: it reads as empty and swallows writes.
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "--privileged",
        IMG,
        "sh",
        "-c",
        "mknod /tmp/n c 1 3 && echo x > /tmp/n && wc -c < /tmp/n; \
         grep ' /sys ' /proc/mounts | grep -c rw,",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "0\n1\n");
}

#[test]
fn exec_privileged_gets_every_capability() {
    let vm = Running::start("xpriv", &[]);
    let caps = "grep CapEff /proc/self/status";
    let (code, plain, err) = vm.exec(&["sh", "-c", caps]);
    assert_eq!(code, 0, "{err}");
    let (code, privd, err) = vm.exec(&["--privileged", "sh", "-c", caps]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        plain.trim(),
        "CapEff:\t00000000800405fb",
        "fcvm's 11 default capabilities"
    );
    assert_eq!(
        privd.trim(),
        "CapEff:\t000001ffffffffff",
        "every capability"
    );
    let (_, out, _) = vm.exec(&[
        "--privileged",
        "sh",
        "-c",
        "mkdir -p /tmp/m; mount -t tmpfs t /tmp/m && echo ok",
    ]);
    assert_eq!(out, "ok\n");
}

#[test]
fn exec_detached_returns_at_once_and_keeps_running() {
    let vm = Running::start("xdet", &[]);
    // A sleep far longer than the test: returning at all proves exec -d did not wait.
    let (code, out, err) = vm.exec(&["-d", "sleep", "4321"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, ps, err) = vm.exec(&["ps"]);
    assert_eq!(code, 0, "{err}");
    assert!(ps.contains("sleep 4321"), "{ps}");
    // The process outlives its client, and more than one can run.
    let (code, _, err) = vm.exec(&["-d", "sh", "-c", "echo dropped; sleep 4322"]);
    assert_eq!(code, 0, "{err}");
    let (_, ps, _) = vm.exec(&["ps"]);
    assert!(
        ps.contains("sleep 4321") && ps.contains("sleep 4322"),
        "{ps}"
    );
    let (code, _, err) = vm.exec(&["-d", "no-such-command"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("no-such-command"), "{err}");
}

#[test]
fn env_file_reaches_run_and_exec_and_env_wins() {
    let dir = std::env::temp_dir().join(format!("fcvm-envfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("env");
    std::fs::write(
        &file,
        "# a comment\n\nA=from-file\n  B=two words\nFCVM_T_HOST\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let show = "echo \"$A|$B|$FCVM_T_HOST\"";
    let out = fcvm()
        .env("FCVM_T_HOST", "host-value")
        .args([
            "podman",
            "run",
            "--env-file",
            file,
            "-e",
            "A=from-flag",
            IMG,
        ])
        .args(["sh", "-c", show])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from-flag|two words|host-value\n");

    let vm = Running::start("xenv", &[]);
    let (code, out, err) = vm.exec(&["--env-file", file, "sh", "-c", show]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "from-file|two words|\n",
        "FCVM_T_HOST is unset for this exec"
    );
    let (_, out, _) = vm.exec(&["--env-file", file, "-e", "B=flag", "sh", "-c", show]);
    assert_eq!(out, "from-file|flag|\n");
    let (code, _, err) = vm.exec(&["--env-file", "/nonexistent/env", "true"]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("/nonexistent/env"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Names of the VMs `fcvm ls --json ARGS` lists.
fn ls_names(args: &[&str]) -> Vec<String> {
    let mut all = vec!["ls", "--json"];
    all.extend_from_slice(args);
    let out = run(&all, LIMIT);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = v
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn labels_are_listed_and_filtered() {
    let web = Running::start("lweb", &["--label", "app=web", "-l", "tier=front"]);
    let db = Running::start("ldb", &["--label", "app=db", "--label", "backup"]);
    let record = vm(&web.name).unwrap();
    assert_eq!(record["labels"]["app"], "web");
    assert_eq!(record["labels"]["tier"], "front");
    assert_eq!(vm(&db.name).unwrap()["labels"]["backup"], "");
    let both = {
        let mut v = vec![db.name.clone(), web.name.clone()];
        v.sort();
        v
    };
    let mine = |names: Vec<String>| -> Vec<String> {
        names.into_iter().filter(|n| both.contains(n)).collect()
    };
    assert_eq!(mine(ls_names(&["--filter", "label=app"])), both);
    assert_eq!(
        mine(ls_names(&["--filter", "label=app=web"])),
        vec![web.name.clone()]
    );
    assert_eq!(
        mine(ls_names(&["--filter", "label=backup"])),
        vec![db.name.clone()]
    );
    // Several filters: all must match.
    assert_eq!(
        mine(ls_names(&["-f", "label=app", "-f", "label=tier=front"])),
        vec![web.name.clone()]
    );
    assert!(mine(ls_names(&["--filter", "label=app=none"])).is_empty());
    // The table's last column.
    let out = run(&["ls", "--filter", "label=tier"], LIMIT);
    let table = text(&out.stdout);
    assert!(table.lines().next().unwrap().ends_with("LABELS"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&web.name))
        .expect(&table);
    assert!(row.ends_with("app=web,tier=front"), "{row}");
    for bad in ["status=running", "label="] {
        let out = run(&["ls", "--filter", bad], LIMIT);
        assert_eq!(out.status.code(), Some(125), "{bad}");
        assert_eq!(text(&out.stderr).trim().lines().count(), 1, "{bad}");
    }
    let out = run(&["podman", "run", "--label", "=x", IMG, "true"], LIMIT);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("--label"));
}

/// `df -m DIR`'s size column, for each line of `out` that `df -m DIR | tail -1` printed.
fn df_sizes(out: &str) -> Vec<u64> {
    out.lines()
        .filter(|l| l.contains('%'))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().expect(l))
        .collect()
}

/// SIZE disks: mounted where asked with their size, writable, and fresh on every run — the
/// second run restores the image-cache snapshot the first saved (the disks are part of its
/// key) and gets that snapshot's untouched copy.
#[test]
fn size_disks_appear_at_their_mount_points_with_their_sizes() {
    let cmd = "df -m /mnt/disk0 | tail -1; df -m /data | tail -1; ls /data; \
               echo written > /data/f && cat /data/f";
    for round in 0..2 {
        let (code, out, err) = run_ok(&[
            "podman",
            "run",
            "--disk",
            "256M",
            "--disk",
            "64M:/data",
            IMG,
            "sh",
            "-c",
            cmd,
        ]);
        assert_eq!(code, 0, "round {round}: {err}");
        let sizes = df_sizes(&out);
        assert_eq!(sizes.len(), 2, "{out}");
        assert!((200..=256).contains(&sizes[0]), "{out}");
        assert!((40..=64).contains(&sizes[1]), "{out}");
        // A fresh ext4 lists only lost+found: nothing of the previous run.
        assert!(
            out.contains("lost+found\nwritten\n"),
            "round {round}: {out}"
        );
    }
}

fn mkfs(path: &std::path::Path, size: &str) {
    std::fs::File::create(path).unwrap();
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .arg(size)
        .status()
        .expect("mkfs.ext4");
    assert!(st.success());
}

/// `debugfs -R 'cat FILE' IMG`: a file of an ext4 image, read on the host without mounting.
fn debugfs_cat(img: &std::path::Path, file: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(img)
        .output()
        .expect("debugfs");
    text(&out.stdout)
}

/// A PATH disk is the host file itself: what the container wrote is in it after the run
/// (the agent flushes the disk's journal before it reports the exit).
#[test]
fn path_disk_writes_are_in_the_host_file_after_exit() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("data.ext4");
    mkfs(&img, "32M");
    let spec = format!("{}:/data", img.display());
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "--disk",
        &spec,
        IMG,
        "sh",
        "-c",
        "echo hello from the vm > /data/greeting; mkdir /data/d; echo 2 > /data/d/two; ls /data",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("greeting"), "{out}");
    assert_eq!(debugfs_cat(&img, "/greeting"), "hello from the vm\n");
    assert_eq!(debugfs_cat(&img, "/d/two"), "2\n");
    // And a second run sees them.
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "--disk",
        &spec,
        IMG,
        "cat",
        "/data/greeting",
    ]);
    assert_eq!((code, out.as_str()), (0, "hello from the vm\n"), "{err}");
}

/// A snapshot of a VM with a SIZE and a PATH disk: data written before it is in every clone;
/// each clone writes its own copy (not the source's, not the host file, not another clone's).
#[test]
fn disks_are_carried_by_snapshots_into_each_clone() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("data.ext4");
    mkfs(&img, "32M");
    let spec = format!("{}:/data", img.display());
    let vm = Running::start("dsnap", &["--disk", "64M", "--disk", &spec]);
    let (code, _, err) = vm.exec(&[
        "sh",
        "-c",
        "echo before > /mnt/disk0/a && echo before > /data/b",
    ]);
    assert_eq!(code, 0, "{err}");
    let tag = name("dsnap-tag");
    let (code, _, err) = run_ok(&["snapshot", "create", &vm.name, "--tag", &tag]);
    assert_eq!(code, 0, "{err}");
    let show = "cat /mnt/disk0/a /data/b; ls /mnt/disk0 /data | tr '\\n' ' '; echo; \
                echo clone > /mnt/disk0/c; echo clone > /data/c";
    for i in 0..2 {
        let (code, out, err) = run_ok(&["snapshot", "run", &tag, "--exec", show]);
        assert_eq!(code, 0, "clone {i}: {err}");
        assert!(out.starts_with("before\nbefore\n"), "clone {i}: {out}");
        assert!(
            !out.contains(" c "),
            "clone {i} saw another clone's file: {out}"
        );
    }
    let (_, out, _) = vm.exec(&["ls", "/mnt/disk0", "/data"]);
    assert!(
        !out.lines().any(|l| l == "c"),
        "a clone wrote to its source's disks: {out}"
    );
    // `rm --force` stops it as podman's `rm -f` does (SIGTERM first, as Ctrl-C would): the
    // container's exit flushes the disk into the host file.
    let (code, _, err) = run_ok(&["rm", "--force", &vm.name]);
    assert_eq!(code, 0, "{err}");
    assert_gone(&vm.name, None);
    assert_eq!(debugfs_cat(&img, "/b"), "before\n");
    assert_eq!(
        debugfs_cat(&img, "/c"),
        "",
        "a clone wrote to the host file"
    );
    let (code, _, err) = run_ok(&["snapshot", "rm", &tag]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn bad_disk_specs_exit_125_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let missing = format!("{d}/missing.img");
    for (i, bad) in [
        vec!["--disk", "0"],
        vec!["--disk", &missing],
        vec!["--disk", "1G:relative/path"],
        vec!["--disk", &d],
        vec!["--disk", "/dev/null"],
        vec!["--disk", "1G:/x", "--disk", "2G:/x"],
    ]
    .into_iter()
    .enumerate()
    {
        let n = name(&format!("baddisk{i}"));
        let mut args = vec!["podman", "run", "--name", &n];
        args.extend_from_slice(&bad);
        args.extend_from_slice(&[IMG, "true"]);
        let out = run(&args, Duration::from_secs(60));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{bad:?}: {err}");
        assert!(err.contains("--disk"), "{bad:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{bad:?}: {err}");
        assert!(vm(&n).is_none(), "{bad:?} left a VM record");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A clone's labels are its snapshot's (the source VM's), `snapshot run --label` adding to
/// them and winning on a key both have, as podman's `run --label` does over an image's.
#[test]
fn clones_inherit_and_override_their_snapshots_labels() {
    let vm = Running::start("lsrc", &["--label", "app=web", "--label", "tier=front"]);
    let tag = name("lsrc-tag");
    let (code, _, err) = run_ok(&["snapshot", "create", &vm.name, "--tag", &tag]);
    assert_eq!(code, 0, "{err}");
    let clone = name("lclone");
    let mut owner = fcvm()
        .args(["snapshot", "run", &tag, "--name", &clone])
        .args(["--label", "app=api", "-l", "extra"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_running(&mut owner, &clone);
    let labels = vm_labels(&clone);
    let _ = run(&["rm", "--force", &clone], LIMIT);
    let _ = owner.wait();
    assert_eq!(
        labels,
        serde_json::json!({"app": "api", "tier": "front", "extra": ""})
    );
    let picked = ls_names(&["--filter", "label=tier=front"]);
    assert!(picked.contains(&vm.name), "{picked:?}");
    let out = run(
        &["snapshot", "run", &tag, "--label", "=x", "--exec", "true"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("--label"));
    drop(vm);
    let (code, _, err) = run_ok(&["snapshot", "rm", &tag]);
    assert_eq!(code, 0, "{err}");
}

fn vm_labels(name: &str) -> serde_json::Value {
    vm(name).expect("listed")["labels"].clone()
}
