//! Snapshots, restores and clones with real QEMU VMs.
//!
//! Plan: one long-running source VM (`t-snapsrc`) is started for the whole file; it is itself
//! restored from the image-cache snapshot whenever one exists, so snapshotting it exercises the
//! "snapshot of a restored VM" path. Tests assert from fcvm's output and state, never timing:
//! a second run reports `restored_from=cache-…`; right after every restore 10 parallel execs
//! all succeed (the seed's regression, ejc3/fcvm #468), also in a clone of a snapshot of a
//! restored VM; 10 clones run at once with distinct hostnames and no shared writes; faults
//! (unknown name, damaged manifest, truncated RAM, removed kernel, rm while in use, a damaged
//! image-cache snapshot) give clear errors and leave nothing behind.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "figures and diagnostics"
)]

mod common;

use std::collections::HashSet;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

const IMG: &str = "builtin:busybox";

/// Runs `fcvm exec` `n` times in parallel in VM `name`; returns the outputs in order.
fn parallel_execs(name: &str, n: usize) -> Vec<(i32, String, String)> {
    let children: Vec<Child> = (0..n)
        .map(|i| {
            fcvm()
                .args(["exec", "--name", name, "--", "sh", "-c"])
                .arg(format!("echo exec-{i}; hostname"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let o = wait_output(c, Duration::from_secs(120), &["exec", name]);
            (
                o.status.code().unwrap_or(-1),
                text(&o.stdout),
                text(&o.stderr),
            )
        })
        .collect()
}

fn assert_execs_ok(name: &str, hostname: &str) {
    for (i, (code, out, err)) in parallel_execs(name, 10).into_iter().enumerate() {
        assert_eq!(code, 0, "exec {i} in {name} failed: {err}");
        assert_eq!(out, format!("exec-{i}\n{hostname}\n"), "exec {i} in {name}");
    }
}

/// A long-running VM; killed with SIGTERM on drop.
struct Running {
    child: Child,
    name: String,
}

impl Running {
    fn start(args: &[&str], name: &str) -> Running {
        let mut child = fcvm()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_running(&mut child, name);
        Running {
            child,
            name: name.into(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = run(&["rm", "-f", &self.name], Duration::from_secs(30));
    }
}

/// The shared source VM and a snapshot of it (`t-warm-<pid>`), made once.
fn warm() -> &'static str {
    static SNAP: OnceLock<String> = OnceLock::new();
    SNAP.get_or_init(|| {
        seed_cache();
        // Snapshots left by earlier runs of this file.
        for e in std::fs::read_dir(data_dir().join("snapshots"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("t-") && !n.ends_with(&format!("-{}", std::process::id())) {
                let _ = run(&["snapshot", "rm", &n], Duration::from_secs(30));
            }
        }
        let src = name("snapsrc");
        let snap = name("warm");
        let running = Running::start(
            &[
                "podman",
                "run",
                "--name",
                &src,
                "--network",
                "none",
                IMG,
                "--",
                "sh",
                "-c",
                "echo from-source > /tmp/state; exec sleep 100000",
            ],
            &src,
        );
        assert_execs_ok(&src, &src);
        let out = run(&["snapshot", "create", &src, "--tag", &snap], BOOT);
        assert!(
            out.status.success(),
            "snapshot create: {}",
            text(&out.stderr)
        );
        // The source runs on after its snapshot.
        assert_execs_ok(&src, &src);
        drop(running);
        snap
    })
}

#[test]
fn second_run_restores_from_the_image_cache() {
    let run_once = |tag: &str| {
        let out = fcvm()
            .env("FCVM_TIMINGS", "1")
            .args(["podman", "run", "--name", &name(tag), "--network", "none"])
            .args([IMG, "cat", "/etc/hostname"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{}\n", name(tag)));
        text(&out.stderr)
    };
    run_once("cache1");
    let err = run_once("cache2");
    assert!(
        err.contains("restored_from=cache-"),
        "second run did not restore: {err}"
    );
}

#[test]
fn a_restored_run_takes_any_command_user_and_directory() {
    seed_cache();
    let restored = |tag: &str, args: &[&str]| {
        let out = fcvm()
            .env("FCVM_TIMINGS", "1")
            .args(["podman", "run", "--name", &name(tag), "--network", "none"])
            .args(args)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(
            err.contains("restored_from=cache-"),
            "did not restore: {err}"
        );
        (out.status.code(), text(&out.stdout), err)
    };
    // Not the command the snapshot was made with (the agent's PATH index answers), as
    // another user, in another directory: the warm stand-in switches to them.
    let (code, out, err) = restored(
        "anycmd",
        &[
            "-u",
            "nobody",
            "-w",
            "/tmp",
            IMG,
            "sh",
            "-c",
            "id -u; id -g; pwd",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "65534\n65534\n/tmp\n");
    let (code, out, _) = restored("anycmd2", &[IMG, "env"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("HOME=/root"), "{out}");
    // podman's codes for a command that cannot run, on a restored run too.
    let (code, _, err) = restored("nocmd", &[IMG, "no-such-cmd"]);
    assert_eq!(code, Some(127), "{err}");
    let (code, _, err) = restored("noexec", &[IMG, "/etc/passwd"]);
    assert_eq!(code, Some(126), "{err}");
}

/// Makes sure the image-cache snapshot for busybox without network exists.
fn seed_cache() {
    static SEEDED: OnceLock<()> = OnceLock::new();
    SEEDED.get_or_init(|| {
        let out = run(&["podman", "run", "--network", "none", IMG, "true"], BOOT);
        assert!(out.status.success(), "{}", text(&out.stderr));
    });
}

/// `podman run --network none IMG sleep 100000` as `n`, stopped when dropped.
fn sleeping_vm(n: &str) -> Running {
    let args = [
        "podman",
        "run",
        "--name",
        n,
        "--network",
        "none",
        IMG,
        "sleep",
        "100000",
    ];
    Running::start(&args, n)
}

#[test]
fn ten_parallel_execs_right_after_a_restore() {
    seed_cache();
    let n = name("ppx");
    let _vm = sleeping_vm(&n);
    assert_eq!(
        vm(&n).unwrap()["snapshot"]
            .as_str()
            .map(|s| s.starts_with("cache-")),
        Some(true)
    );
    assert_execs_ok(&n, &n);
}

#[test]
fn clone_of_a_snapshot_of_a_restored_vm_serves_execs_at_once() {
    let snap = warm();
    let c = name("clone-x");
    let _vm = Running::start(&["snapshot", "run", snap, "--name", &c], &c);
    assert_execs_ok(&c, &c);
    // The app's state came along; the identity did not.
    let out = run(&["exec", "--name", &c, "--", "cat", "/tmp/state"], BOOT);
    assert_eq!(text(&out.stdout), "from-source\n");
}

#[test]
fn one_shot_clone_prints_and_cleans_up() {
    let snap = warm();
    let c = name("oneshot");
    let out = run(
        &[
            "snapshot",
            "run",
            snap,
            "--name",
            &c,
            "--exec",
            "cat /etc/hostname; exit 3",
        ],
        BOOT,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{c}\n"));
    assert_gone(&c, None);
}

#[test]
fn ten_clones_at_once_have_their_own_identity_and_writes() {
    let snap = warm();
    let names: Vec<String> = (0..10).map(|i| name(&format!("c{i}"))).collect();
    let children: Vec<Child> = names
        .iter()
        .map(|n| {
            fcvm()
                .args(["snapshot", "run", snap, "--name", n])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut running: Vec<Running> = vec![];
    for (mut child, n) in children.into_iter().zip(&names) {
        wait_running(&mut child, n);
        running.push(Running {
            child,
            name: n.clone(),
        });
    }
    let exec = |n: &str, cmd: &str| {
        let o = run(&["exec", "--name", n, "--", "sh", "-c", cmd], BOOT);
        assert!(o.status.success(), "{n}: {cmd}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    // Each clone has its own hostname, machine-id and random numbers (the CRNG is rekeyed
    // on restore, not just fed).
    let (mut ids, mut rands) = (HashSet::new(), HashSet::new());
    for n in &names {
        let out = exec(
            n,
            "hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1",
        );
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(n.as_str()));
        let id = lines.next().unwrap_or_default().to_string();
        assert_eq!(id.len(), 32, "{n}: machine-id {id:?}");
        assert!(
            ids.insert(id.clone()),
            "{n}: machine-id {id} is another clone's"
        );
        let rnd: String = lines.collect();
        assert!(rands.insert(rnd.clone()), "{n}: random bytes {rnd} repeat");
    }
    exec(&names[0], "echo mine > /tmp/only-in-first");
    assert_eq!(exec(&names[0], "cat /tmp/only-in-first"), "mine\n");
    for n in &names[1..] {
        assert_eq!(
            exec(
                n,
                "test -e /tmp/only-in-first && echo leaked || echo absent"
            ),
            "absent\n"
        );
    }
    // A snapshot in use by running clones cannot be removed.
    let out = run(&["snapshot", "rm", snap], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    drop(running);
    for n in &names {
        assert_gone(n, None);
    }
}

/// Copies the warm snapshot under a new name so a test can damage its copy.
fn copy_of_warm(tag: &str) -> (String, std::path::PathBuf) {
    let snap = warm();
    let copy = name(tag);
    let src = data_dir().join("snapshots").join(snap);
    let dst = data_dir().join("snapshots").join(&copy);
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        // Sparse: the writable disk is 10 GiB of mostly holes, which a plain copy writes out.
        fcvm::util::copy_sparse(&e.path(), &dst.join(e.file_name())).unwrap();
    }
    let m = dst.join("manifest.json");
    let s = std::fs::read_to_string(&m).unwrap().replace(
        &format!("\"name\": \"{snap}\""),
        &format!("\"name\": \"{copy}\""),
    );
    std::fs::write(&m, s).unwrap();
    (copy, dst)
}

fn assert_refused(snap: &str, needle: &str) {
    let c = name("refused");
    let out = run(
        &["snapshot", "run", snap, "--name", &c, "--exec", "true"],
        BOOT,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert_gone(&c, None);
}

#[test]
fn faults_give_clear_errors_and_leave_nothing() {
    assert_refused("no-such-snapshot", "No snapshot named");

    let (bad, dir) = copy_of_warm("badmanifest");
    std::fs::write(dir.join("manifest.json"), b"{ not json").unwrap();
    assert_refused(&bad, "damaged");

    let (trunc, dir) = copy_of_warm("truncram");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("ram"))
        .unwrap();
    f.set_len(4096).unwrap();
    assert_refused(&trunc, "damaged");

    let (nokernel, dir) = copy_of_warm("nokernel");
    let m = dir.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v["kernel"] = "/nonexistent/vmlinux".into();
    std::fs::write(&m, serde_json::to_vec(&v).unwrap()).unwrap();
    assert_refused(&nokernel, "kernel");

    // The agent in a snapshot's memory speaks the protocol of the build that took it.
    let (oldagent, dir) = copy_of_warm("oldagent");
    let m = dir.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    assert_eq!(v["protocol"], fcvm_proto::PROTOCOL_VERSION, "recorded");
    v["protocol"] = (fcvm_proto::PROTOCOL_VERSION - 1).into();
    std::fs::write(&m, serde_json::to_vec(&v).unwrap()).unwrap();
    assert_refused(&oldagent, "holds an agent speaking protocol");

    for s in [bad, trunc, nokernel, oldagent] {
        let out = run(&["snapshot", "rm", &s], Duration::from_secs(30));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

#[test]
fn a_damaged_image_cache_snapshot_is_discarded_and_the_run_boots_cold() {
    // Its own memory size gives this test its own cache key.
    let args = |n: &str| {
        vec![
            "podman".to_string(),
            "run".into(),
            "--name".into(),
            n.to_string(),
            "--network".into(),
            "none".into(),
            "--mem".into(),
            "384".into(),
            IMG.into(),
            "echo".into(),
            "ok".into(),
        ]
    };
    let go = |tag: &str| {
        let n = name(tag);
        let out = fcvm()
            .env("FCVM_TIMINGS", "1")
            .args(args(&n))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "ok\n");
        text(&out.stderr)
    };
    go("dmg1");
    // The snapshot a run with these flags restores (named by the run itself: the shared
    // data dir may hold older image-cache snapshots of other guest builds).
    let err = go("dmg1r");
    let cache = err
        .split_whitespace()
        .find_map(|w| w.strip_prefix("restored_from=cache-"))
        .unwrap_or_else(|| panic!("the second run did not restore: {err}"));
    let dir = data_dir().join("snapshots").join(format!("cache-{cache}"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("ram"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    let err = go("dmg2");
    assert!(
        err.contains("failed to load") && err.contains("booting cold"),
        "{err}"
    );
    assert!(err.contains("restored_from=-"), "{err}");
    // The cold run saved a good snapshot again.
    let err = go("dmg3");
    assert!(err.contains("restored_from=cache-"), "{err}");
}

#[test]
fn startup_snapshot_restores_the_app_already_running() {
    // Unique to this test run: the startup snapshot's key includes the command, and one
    // left in a reused data dir by an earlier run would be restored instead of saved anew.
    let app = format!(
        "echo up > /tmp/index.html; : {}; exec httpd -f -p 8080 -h /tmp",
        std::process::id()
    );
    let app = app.as_str();
    let start = |tag: &str| {
        let n = name(tag);
        let args = [
            "podman",
            "run",
            "--name",
            &n,
            "--network",
            "none",
            "--health-check",
            "http://localhost:8080/",
            IMG,
            "sh",
            "-c",
            app,
        ];
        (Running::start(&args, &n), n)
    };
    let healthy = |n: &str| vm(n).is_some_and(|v| v["health"] == "healthy");
    let (first, n1) = start("up1");
    wait_for("first VM healthy", BOOT, || healthy(&n1));
    let startup = || {
        let out = run(&["snapshot", "ls", "--json"], Duration::from_secs(30));
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        all.into_iter()
            .find(|m| m["kind"] == "startup" && m["source"] == n1.as_str())
    };
    wait_for("startup snapshot saved", BOOT, || startup().is_some());
    drop(first);
    let snap = startup().unwrap()["name"].as_str().unwrap().to_string();

    let (_second, n2) = start("up2");
    assert_eq!(
        vm(&n2).unwrap()["snapshot"],
        snap.as_str(),
        "not restored from {snap}"
    );
    // The app answers at once: no process start in between.
    let out = run(
        &[
            "exec",
            "--name",
            &n2,
            "--",
            "sh",
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 8080",
        ],
        BOOT,
    );
    assert!(text(&out.stdout).contains("up"), "{}", text(&out.stderr));
    assert_eq!(
        run(&["exec", "--name", &n2, "--", "hostname"], BOOT).stdout,
        format!("{n2}\n").into_bytes()
    );
    drop(_second);
    let _ = run(&["snapshot", "rm", &snap], Duration::from_secs(30));
}

#[test]
fn killing_the_owner_mid_save_never_leaves_half_a_snapshot() {
    seed_cache();
    let n = name("killsave");
    let mut vm = sleeping_vm(&n);
    let snap = name("halfsnap");
    let client = fcvm()
        .args(["snapshot", "create", &n, "--tag", &snap])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    vm.child.kill().unwrap();
    let out = wait_output(client, Duration::from_secs(120), &["snapshot", "create"]);
    let listed = run(&["snapshot", "ls", "--json"], Duration::from_secs(30));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    if all.iter().any(|m| m["name"] == snap.as_str()) {
        // The save won the race: then it is whole and restores.
        let o = run(&["snapshot", "run", &snap, "--exec", "echo whole"], BOOT);
        assert_eq!(text(&o.stdout), "whole\n", "{}", text(&o.stderr));
        let _ = run(&["snapshot", "rm", &snap], Duration::from_secs(30));
    } else {
        assert_ne!(
            out.status.code(),
            Some(0),
            "create claimed success without a snapshot"
        );
        assert!(!data_dir().join("snapshots").join(&snap).exists());
    }
    drop(vm);
}

#[test]
fn disk_full_while_saving_keeps_the_previous_snapshot() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    // Its own data dir (sharing the built assets and images) whose tmp/ is a 2 MiB tmpfs.
    let d = tempfile::tempdir().unwrap();
    for sub in ["assets", "images", "blobs"] {
        std::os::unix::fs::symlink(data_dir().join(sub), d.path().join(sub)).unwrap();
    }
    let own = |args: &[&str]| {
        let c = fcvm()
            .env("FCVM_DATA_DIR", d.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(c, BOOT, args)
    };
    let n = name("diskfull");
    let child = fcvm()
        .env("FCVM_DATA_DIR", d.path())
        .args([
            "podman",
            "run",
            "--name",
            &n,
            "--network",
            "none",
            IMG,
            "sh",
            "-c",
        ])
        .arg("echo v1 > /tmp/v; exec sleep 100000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stops the VM on every exit path, a failed assertion included.
    let mut vm = Running {
        child,
        name: n.clone(),
    };
    let start = std::time::Instant::now();
    while !text(&own(&["ls", "--json"]).stdout).contains("\"observed\": \"running\"") {
        assert!(vm.child.try_wait().unwrap().is_none(), "VM {n} exited");
        assert!(start.elapsed() < BOOT, "VM {n} never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let snap = "keep";
    let o = own(&["snapshot", "create", &n, "--tag", snap]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    own(&["exec", "--name", &n, "--", "sh", "-c", "echo v2 > /tmp/v"]);
    let tmp = d.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(mounted.success());
    let o = own(&["snapshot", "create", &n, "--tag", snap]);
    let _ = std::process::Command::new("umount").arg(&tmp).status();
    assert_eq!(o.status.code(), Some(125), "a full disk must fail the save");
    assert!(
        text(&o.stderr).contains("No space left"),
        "{}",
        text(&o.stderr)
    );
    // The previous snapshot is intact and still restores with its own state.
    let o = own(&["snapshot", "run", snap, "--exec", "cat /tmp/v"]);
    assert_eq!(text(&o.stdout), "v1\n", "{}", text(&o.stderr));
    drop(vm);
    assert!(!text(&own(&["ls", "--json"]).stdout).contains(&n));
}
