//! A VM whose fcvm was SIGKILLed pins nothing: `fcvm ls` and `fcvm snapshots prune` reap it.
//!
//! Plan: a run with its own memory size (so its own image-cache key) saves an image-cache
//! snapshot; a detached run (`podman run -d`) restores from it, which pins the snapshot
//! (`snapshot rm` refuses it). Its owner (pid from `ls --json`) is SIGKILLed: its QEMU dies with
//! it (parent-death signal); `ls --json` then removes the VM, says so on stderr and stays valid
//! JSON on stdout; `snapshots prune` removes the snapshot only that VM had pinned, and nothing
//! of the VM is left (record, directory, process).
//!
//! Note: `snapshots prune` removes every unpinned image-cache snapshot of the shared data dir;
//! later runs of other tests boot cold once more and save theirs again.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const IMG: &str = "builtin:busybox";
const QUICK: Duration = Duration::from_secs(60);

fn run_ok(args: &[&str]) -> (String, String) {
    let out = run(args, BOOT);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    (stdout, stderr)
}

#[test]
fn a_killed_owners_vm_is_reaped_by_ls_and_unpins_its_snapshot() {
    let flags = ["--network", "none", "--mem", "448"];
    let seed = name("reap-seed");
    let mut args = vec!["podman", "run", "--name", &seed];
    args.extend(flags);
    args.extend([IMG, "true"]);
    run_ok(&args);

    let n = name("reap");
    let mut args = vec!["podman", "run", "-d", "--name", &n];
    args.extend(flags);
    args.extend([IMG, "sleep", "100000"]);
    let (out, _) = run_ok(&args);
    let id = out.trim().to_string();
    let v = vm(&n).expect("the detached VM is listed");
    assert_eq!(v["observed"], "running");
    let snap = v["snapshot"]
        .as_str()
        .expect("restored from the image-cache snapshot")
        .to_string();
    assert!(snap.starts_with("cache-"), "{snap}");
    let snap_dir = data_dir().join("snapshots").join(&snap);
    // While the VM runs, its snapshot is pinned.
    let out = run(&["snapshot", "rm", &snap], QUICK);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );

    let owner = v["pid"].as_i64().expect("owner pid") as i32;
    kill(Pid::from_raw(owner), Signal::SIGKILL).expect("SIGKILL the owner");
    let vm_dir = data_dir().join("vms").join(&id);
    wait_for("QEMU to die with its owner", QUICK, || {
        process_with_arg(&vm_dir.display().to_string()).is_none()
    });

    let said = format!("fcvm: removed dead VM {n} (its fcvm was killed)");
    wait_for("ls to reap the dead VM", QUICK, || {
        let out = run(&["ls", "--json"], QUICK);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("ls --json stays JSON");
        let listed = rows.iter().any(|r| r["name"] == n.as_str());
        let reaped = text(&out.stderr).lines().any(|l| l == said);
        // Never silently gone: the run that removes it says so.
        assert_eq!(listed, !reaped, "{}", text(&out.stderr));
        reaped
    });
    assert!(!vm_dir.exists(), "{} left behind", vm_dir.display());
    // Said once: nothing is left to reap.
    let out = run(&["ls"], QUICK);
    assert!(!text(&out.stderr).contains(&n), "{}", text(&out.stderr));

    let (out, err) = run_ok(&["snapshots", "prune"]);
    assert!(
        out.lines().any(|l| l == snap),
        "prune kept {snap}: {out} {err}"
    );
    assert!(!snap_dir.exists(), "{} left behind", snap_dir.display());
    assert_gone(&n, Some(&id));
}
