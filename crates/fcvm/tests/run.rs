//! `fcvm podman run` end to end, with real QEMU VMs running the real agent and crun.
//!
//! Plan: every test runs the built-in busybox image (built once into the shared data dir) and
//! asserts on output, exit codes and what is left behind: output and codes propagate with
//! stderr kept apart; env/workdir/user/entrypoint/hostname take effect; the process started
//! through the warm container is the command itself (PID 1, default signals, no leaked fds,
//! no capabilities as a non-root user); 127/126 for commands
//! that cannot run; SIGTERM to fcvm stops a long-running container and leaves nothing;
//! SIGKILL of QEMU is reported, not hung on; SIGKILL of fcvm leaves a `dead` VM (its QEMU
//! gone) that `fcvm rm` removes; bad input exits 125 and creates no VM; `-d` returns the id
//! of a running VM whose output `fcvm logs` shows, and a start failure as the command's own.

mod common;

use std::process::Stdio;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use common::*;

const IMG: &str = "builtin:busybox";

/// `fcvm ls` reaps a VM whose owner is dead (tests/dead_vms.rs), and the other tests here call
/// it while they wait: the test that keeps a dead VM until its own `fcvm rm` holds this lock
/// alone, every other test shares it.
static LS: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    LS.read().unwrap_or_else(|e| e.into_inner())
}

fn alone() -> RwLockWriteGuard<'static, ()> {
    LS.write().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn output_and_exit_code_propagate_with_stderr_apart() {
    let _ls = shared();
    let n = name("out");
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "--name",
        &n,
        IMG,
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exit 42",
    ]);
    assert_eq!(code, 42, "stderr: {err}");
    assert_eq!(out, "to-stdout\n");
    assert!(err.contains("to-stderr"), "{err}");
    assert!(!out.contains("to-stderr"));
    assert_gone(&n, None);
}

#[test]
fn env_workdir_user_entrypoint_and_hostname_take_effect() {
    let _ls = shared();
    let n = name("flags");
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "--name",
        &n,
        "-e",
        "FOO=bar baz",
        "--env",
        "EMPTY=",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "--hostname",
        "box1",
        "--entrypoint",
        "/bin/sh",
        IMG,
        "-c",
        "echo \"$FOO\"; echo \"[$EMPTY]\"; pwd; id -u; hostname",
    ]);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "bar baz\n[]\n/tmp\n65534\nbox1\n");
}

/// The container's process is started through the agent's warm container (a stand-in that
/// crun created ahead of time execs the command): nothing of the stand-in may show.
#[test]
fn the_container_process_is_the_command_itself_with_clean_signals_fds_and_caps() {
    let _ls = shared();
    let n = name("warm");
    let script = "tr '\\0' ' ' < /proc/1/cmdline; echo; \
                  for f in /proc/1/fd/*; do readlink $f; done; cat /proc/1/personality";
    let (code, out, err) = run_ok(&[
        "podman", "run", "--name", &n, "-u", "nobody", IMG, "--", "sh", "-c", script,
    ]);
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("sh -c "),
        "PID 1 is not the command: {out}"
    );
    assert!(
        !out.contains("socket:"),
        "the stand-in's socket leaked: {out}"
    );
    assert!(!out.contains("fc-agent") && !out.contains("init"), "{out}");
    // crun ran with a fixed address layout; the container's process has its ASLR back.
    assert_eq!(out.lines().last(), Some("00000000"), "{out}");
    // The command as PID 1 itself (a shell would ignore SIGQUIT on its own).
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "--name",
        &n,
        "-u",
        "nobody",
        IMG,
        "--",
        "grep",
        "-E",
        "^(SigIgn|SigBlk|CapEff):",
        "/proc/self/status",
    ]);
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    for line in [
        "SigIgn:\t0000000000000000",
        "SigBlk:\t0000000000000000",
        "CapEff:\t0000000000000000",
    ] {
        assert!(out.contains(line), "{line:?} missing: {out}");
    }
}

#[test]
fn missing_command_is_127_and_non_executable_is_126() {
    let _ls = shared();
    let (code, out, err) = run_ok(&["podman", "run", "--name", &name("nf"), IMG, "no-such-cmd"]);
    assert_eq!(code, 127, "out: {out} err: {err}");
    assert!(
        err.contains("no-such-cmd") && err.contains("not found"),
        "{err}"
    );
    let (code, _, err) = run_ok(&["podman", "run", "--name", &name("nx"), IMG, "/etc/passwd"]);
    assert_eq!(code, 126, "err: {err}");
    assert!(err.to_lowercase().contains("permission denied"), "{err}");
}

#[test]
fn sigterm_stops_a_long_running_container_and_leaves_nothing() {
    let _ls = shared();
    let n = name("term");
    let mut child = fcvm()
        .args([
            "podman",
            "run",
            "--name",
            &n,
            IMG,
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_running(&mut child, &n)["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The container's first line proves it runs before it is asked to stop.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(first, "started\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = wait_output(child, Duration::from_secs(60), &["run", "term"]);
    // sleep as PID 1 of its namespace ignores TERM: fcvm escalates to KILL.
    assert_eq!(
        out.status.code(),
        Some(137),
        "stderr: {}",
        text(&out.stderr)
    );
    assert_gone(&n, Some(&id));
}

#[test]
fn sigkill_of_qemu_is_reported_not_hung_on() {
    let _ls = shared();
    let n = name("qkill");
    let mut child = fcvm()
        .args(["podman", "run", "--name", &n, IMG, "--", "sleep", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let v = wait_running(&mut child, &n);
    let id = v["id"].as_str().unwrap().to_string();
    let qpid = v["vmm_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qpid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = wait_output(child, Duration::from_secs(60), &["run", "qkill"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {err}");
    assert!(err.contains("killed by signal 9"), "{err}");
    assert_gone(&n, Some(&id));
}

#[test]
fn sigkill_of_fcvm_leaves_a_dead_vm_that_rm_removes() {
    let _ls = alone();
    let n = name("fkill");
    let mut child = fcvm()
        .args(["podman", "run", "--name", &n, IMG, "--", "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = wait_running(&mut child, &n)["id"]
        .as_str()
        .unwrap()
        .to_string();
    child.kill().unwrap();
    child.wait().unwrap();
    // Its QEMU dies with it (parent-death signal). (Not checked through `fcvm ls`, which
    // reaps such a VM: tests/dead_vms.rs.)
    let dir = data_dir().join("vms").join(&id);
    wait_for("QEMU gone", Duration::from_secs(30), || {
        process_with_arg(&dir.display().to_string()).is_none()
    });
    // The name stays taken until the leftovers are removed.
    let (code, _, err) = run_ok(&["podman", "run", "--name", &n, IMG, "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("fcvm rm"), "{err}");
    let out = run(&["rm", &n], Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_gone(&n, Some(&id));
}

#[test]
fn bad_input_exits_125_and_creates_nothing() {
    let _ls = shared();
    let cases: &[(&[&str], &str)] = &[
        (&["-e", "=x", IMG, "true"], "--env"),
        (&["--mem", "64", IMG, "true"], "--mem"),
        (&["--bogus-flag", IMG, "true"], "--bogus-flag"),
        (&["--hypervisor", "nope", IMG, "true"], "nope"),
        (&["oci:/nonexistent/layout", "true"], "/nonexistent/layout"),
    ];
    for (i, (rest, needle)) in cases.iter().enumerate() {
        let n = name(&format!("bad{i}"));
        let mut args = vec!["podman", "run", "--name", &n];
        args.extend_from_slice(rest);
        let out = run(&args, Duration::from_secs(120));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: error should name {needle:?}: {err}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one-line error expected: {err}"
        );
        assert!(vm(&n).is_none(), "{args:?} left a VM record");
    }
    for (args, needle) in [
        (
            vec!["podman", "run", "--name", "a/b", IMG, "true"],
            "Invalid name",
        ),
        (vec!["rm", "no-such-vm-xyz"], "no-such-vm-xyz"),
    ] {
        let out = run(&args, Duration::from_secs(60));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // QEMU missing: say how to install it.
    let n = name("noqemu");
    let out = fcvm()
        .env("FCVM_QEMU", "/nonexistent/qemu-system-x86_64")
        .args(["podman", "run", "--name", &n, IMG, "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains("apt-get install qemu-system-x86"), "{err}");
    assert!(vm(&n).is_none());
}

#[test]
fn images_from_an_oci_layout_a_docker_archive_and_a_loopback_registry_run() {
    let _ls = shared();
    // The built-in image's OCI layout is the source of the other two transports.
    let out = run(&["setup"], BOOT);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let layout = data_dir().join("images/builtin/busybox");
    let oci = format!("oci:{}:latest", layout.display());
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let skopeo = |args: &[&str]| {
        let o = std::process::Command::new("skopeo")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "skopeo {args:?}: {}", text(&o.stderr));
    };
    skopeo(&[
        "copy",
        "-q",
        &oci,
        &format!("docker-archive:{}:busybox:latest", archive.display()),
    ]);
    let registry = common::registry::Registry::start();
    let remote = format!("127.0.0.1:{}/fcvm/busybox:latest", registry.port);
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &oci,
        &format!("docker://{remote}"),
    ]);
    for (tag, image) in [
        ("src-oci", oci.clone()),
        (
            "src-docker",
            format!("docker-archive:{}", archive.display()),
        ),
        ("src-registry", remote.clone()),
    ] {
        let (code, out, err) = run_ok(&[
            "podman",
            "run",
            "--name",
            &name(tag),
            &image,
            "sh",
            "-c",
            "echo $0 ok",
            tag,
        ]);
        assert_eq!(code, 0, "{image}: {err}");
        assert_eq!(out, format!("{tag} ok\n"), "{image}");
    }
}

#[test]
fn detached_run_prints_its_id_keeps_its_output_and_stops_with_rm_force() {
    let _ls = shared();
    let n = name("det");
    let script = "echo hello; echo oops >&2; exec sleep 1000";
    let (code, out, err) = run_ok(&[
        "podman", "run", "-d", "--name", &n, IMG, "--", "sh", "-c", script,
    ]);
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    let id = out.trim().to_string();
    // The command returned: the VM runs on, owned by the detached fcvm.
    let v = vm(&n).expect("listed");
    assert_eq!(
        (v["id"].as_str(), v["observed"].as_str()),
        (Some(id.as_str()), Some("running"))
    );
    let logs = || text(&run(&["logs", &n], Duration::from_secs(30)).stdout);
    wait_for("the container's output in fcvm logs", BOOT, || {
        let l = logs();
        l.contains("hello\n") && l.contains("oops\n")
    });
    let o = run(&["exec", "--name", &n, "--", "echo", "hi"], BOOT);
    assert_eq!(text(&o.stdout), "hi\n", "{}", text(&o.stderr));
    let o = run(&["rm", "--force", &n], BOOT);
    assert!(o.status.success(), "{}", text(&o.stderr));
    wait_for("the detached VM to go", BOOT, || vm(&n).is_none());
    assert_gone(&n, Some(&id));
    // A container that cannot start is reported by the command itself, as podman does.
    let n2 = name("det-bad");
    let (code, out, err) = run_ok(&["podman", "run", "-d", "--name", &n2, IMG, "no-such-cmd"]);
    assert_eq!(code, 127, "stdout: {out} stderr: {err}");
    assert!(
        out.is_empty() && err.contains("no-such-cmd"),
        "stdout: {out} stderr: {err}"
    );
    wait_for("the failed VM to go", BOOT, || vm(&n2).is_none());
}
