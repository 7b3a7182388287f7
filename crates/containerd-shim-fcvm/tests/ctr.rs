//! `ctr` against a real containerd (Debian's 1.6) with `--runtime io.containerd.fcvm.v2`:
//! each container runs in a real fcvm VM (QEMU, the agent, crun), from fcvm's builtin
//! busybox imported as an OCI archive.
//!
//! Needs: root, containerd, skopeo, and `FCVM_AGENT` (scripts/lib.sh's build_all) so the
//! shim finds the guest assets in the shared test data dir.

mod common;
use common::*;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

fn host_kernel() -> String {
    text(
        &std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string()
}

#[test]
fn run_rm_streams_exit_code_and_guest_kernel() {
    let c = Containerd::start();
    let o = c.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--rm",
        IMAGE,
        "t-rm",
        "sh",
        "-c",
        "echo out; echo err >&2; uname -r; exit 7",
    ]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(7), "stdout {out:?} stderr {err:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(lines[0], "out");
    assert_eq!(err, "err\n");
    assert!(!lines[1].is_empty() && lines[1] != host_kernel(), "{out:?}");

    // -t: the container's own process on a terminal (ctr wants one too: `script` gives it).
    let ctr_cmd = format!(
        "ctr -a {} -n {NS} run -t --rm --runtime {RUNTIME} {IMAGE} t-tty sh -c 'tty; exit 5'",
        c.sock().display()
    );
    let child = std::process::Command::new("script")
        .args(["-qec", &ctr_cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = wait_output(child, Duration::from_secs(300), &["run -t"]);
    let out = text(&o.stdout);
    assert!(out.contains("/dev/pts/"), "{out:?} {}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(5), "{out:?}");
    assert_nothing_left(&c, &["t-rm", "t-tty"]);
}

#[test]
fn a_second_identical_run_restores_the_image_cache_snapshot() {
    let c = Containerd::start();
    for id in ["t-c1", "t-c2"] {
        let o = c.ctr(&["run", "--runtime", RUNTIME, "--rm", IMAGE, id, "true"]);
        assert!(o.status.success(), "{id}: {}", text(&o.stderr));
    }
    let log = c.log();
    assert!(
        log.lines()
            .any(|l| l.contains("restored from image-cache snapshot") && l.contains("t-c2")),
        "no restore of t-c2 in the shim's log:\n{log}"
    );
    assert_nothing_left(&c, &["t-c1", "t-c2"]);
}

#[test]
fn detached_exec_kill_and_states() {
    let c = Containerd::start();
    let o = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "t-d",
        "sleep",
        "1000",
    ]);
    assert!(o.status.success(), "run -d: {}", text(&o.stderr));
    let ls = text(&c.ctr(&["task", "ls"]).stdout);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("t-d ") && l.contains("RUNNING")),
        "{ls}"
    );

    // Pids: the container's process in the guest; Stats: the VM's RAM as the memory limit.
    let ps = text(&c.ctr(&["task", "ps", "t-d"]).stdout);
    assert_eq!(ps.lines().count(), 2, "{ps}");
    let metrics = text(&c.ctr(&["task", "metrics", "t-d"]).stdout);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("memory.limit_in_bytes")
                && l.trim_end().ends_with(&(512u64 << 20).to_string())),
        "{metrics}"
    );

    // stdin through, the exec's own exit code back.
    let mut child = c
        .cmd(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "t-d",
            "sh",
            "-c",
            "cat; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello stdin\n")
        .unwrap();
    let o = wait_output(child, Duration::from_secs(120), &["exec e1"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hello stdin\n");

    // -t: a real terminal in the VM (ctr wants one on its side too: `script` gives it).
    let ctr_cmd = format!(
        "ctr -a {} -n {NS} task exec -t --exec-id e2 t-d sh -c 'tty; stty size; exit 4'",
        c.sock().display()
    );
    let child = std::process::Command::new("script")
        .args(["-qec", &ctr_cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = wait_output(child, Duration::from_secs(120), &["exec -t e2"]);
    let out = text(&o.stdout);
    assert!(out.contains("/dev/pts/"), "{out:?} {}", text(&o.stderr));
    // `script` has no terminal size to pass on (0x0): the terminal keeps its default.
    assert!(out.contains("24 80"), "{out:?}");
    assert_eq!(o.status.code(), Some(4), "{out:?}");

    let o = c.ctr(&["task", "kill", "-s", "SIGKILL", "t-d"]);
    assert!(o.status.success(), "kill: {}", text(&o.stderr));
    wait_for("t-d to stop", Duration::from_secs(60), || {
        text(&c.ctr(&["task", "ls"]).stdout)
            .lines()
            .any(|l| l.starts_with("t-d ") && l.contains("STOPPED"))
    });
    let o = c.ctr(&["task", "delete", "t-d"]);
    assert!(o.status.success(), "delete: {}", text(&o.stderr));
    let o = c.ctr(&["container", "delete", "t-d"]);
    assert!(o.status.success(), "container delete: {}", text(&o.stderr));
    assert_nothing_left(&c, &["t-d"]);
}

/// `ctr run --mount` of host directories: one read-write (the host's file read, a new one
/// written that the host then sees), one read-only (read, and a write fails with the exit
/// code the script gives it).
#[test]
fn a_lone_container_binds_host_directories() {
    let c = Containerd::start();
    let vol = c.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "from host\n").unwrap();
    let (rw, ro) = (
        format!("type=bind,src={},dst=/data,options=rbind:rw", vol.display()),
        format!("type=bind,src={},dst=/conf,options=rbind:ro", vol.display()),
    );
    let o = c.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--rm",
        "--mount",
        &rw,
        "--mount",
        &ro,
        IMAGE,
        "t-vol",
        "sh",
        "-c",
        "cat /data/in /conf/in && echo from guest > /data/out && \
         { echo no > /conf/no && exit 0; exit 5; }",
    ]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(5), "{out}{err}");
    assert_eq!(out, "from host\nfrom host\n", "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from guest\n"
    );
    assert!(!vol.join("no").exists());
    assert_nothing_left(&c, &["t-vol"]);
}

#[test]
fn an_unsupported_spec_field_is_refused_clearly() {
    let c = Containerd::start();
    let file = c.dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        file.display()
    );
    let o = c.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--rm",
        "--mount",
        &mount,
        IMAGE,
        "t-bad",
        "true",
    ]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    let want = format!(
        "fcvm cannot honour mount /data (bind from {}): only a host directory can be bound \
         into the VM, not a file",
        file.display()
    );
    assert!(err.contains(&want), "{err}");
    let _ = c.ctr(&["container", "delete", "t-bad"]);
    assert_nothing_left(&c, &["t-bad"]);
}

#[test]
fn a_killed_shim_leaves_nothing() {
    let c = Containerd::start();
    let o = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "t-k",
        "sleep",
        "1000",
    ]);
    assert!(o.status.success(), "run -d: {}", text(&o.stderr));
    let shims: Vec<u32> = processes_with("containerd-shim-fcvm-v2")
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&format!("-namespace {NS} ")) && cmd.contains("-id t-k "))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(shims.len(), 1, "{shims:?}");
    // `fcvm ls` (the library's list and observed status) shows the VM running, owned by the
    // shim; once the shim is killed, never running again.
    let dirs = fcvm::paths::Dirs::new(data_dir());
    let listed = || -> Vec<fcvm::vm::VmState> {
        fcvm::vm::list(&dirs)
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| s.name == format!("ctrd-{NS}-t-k"))
            .collect()
    };
    let before = listed();
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].observed(), fcvm::vm::Observed::Running);
    assert_eq!(before[0].pid, shims[0]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(
        "fcvm ls to stop showing t-k alive",
        Duration::from_secs(60),
        || listed().iter().all(|s| !s.observed().is_alive()),
    );
    // containerd sees the shim go, publishes the exit and runs the shim's `delete`.
    wait_for("t-k to stop", Duration::from_secs(60), || {
        !text(&c.ctr(&["task", "ls"]).stdout)
            .lines()
            .any(|l| l.starts_with("t-k ") && l.contains("RUNNING"))
    });
    let _ = c.ctr(&["task", "delete", "t-k"]);
    let o = c.ctr(&["container", "delete", "t-k"]);
    assert!(o.status.success(), "container delete: {}", text(&o.stderr));
    assert_nothing_left(&c, &["t-k"]);
    // `ctr run -d` keeps its FIFOs for a later attach; with the shim killed, nothing
    // removes them: the test does.
    for d in std::fs::read_dir("/run/containerd/fifo")
        .into_iter()
        .flatten()
        .flatten()
    {
        if d.path().join("t-k-stdout").exists() {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}
