//! What another local user can reach of fcvm's data (docs/security.md), with real VMs.
//!
//! Plan: under umask 000, build a new image (a copy of the built-in busybox layout with a
//! config of its own, so its root filesystem is unpacked and built by this run), run a
//! detached VM from it with a secret in its environment, and snapshot that VM. Then, while
//! the VM runs: every directory and file this run made (the VM's directory with its RAM,
//! disk, logs and sockets; the snapshot; the image) grants nothing to group or others, and an
//! unprivileged user (uid 65534) can open, list or connect to nothing under the data
//! directory. The probe is this test binary itself, re-run as that user on a list of paths.
//! Also: a detached run's log is capped whatever its container prints, and neither a detached
//! owner nor a QEMU keeps a descriptor fcvm was handed open.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "figures and diagnostics"
)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const PROBE_LIST: &str = "FCVM_PROBE_LIST";

/// Every path under `root` (entries vanishing under concurrent tests are skipped).
fn walk(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&p, out);
        }
    }
}

/// Paths under `root` whose mode grants anything to group or others (symlinks excepted).
fn open_to_others(root: &Path) -> Vec<String> {
    let mut all = vec![root.to_path_buf()];
    walk(root, &mut all);
    all.iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(p).ok()?;
            (!m.file_type().is_symlink() && m.mode() & 0o077 != 0)
                .then(|| format!("{} {:o}", p.display(), m.mode() & 0o7777))
        })
        .collect()
}

/// A copy of the built-in busybox layout whose config carries `tag` (a new config digest,
/// so fcvm builds its root filesystem anew): its reference and its config digest's hex.
fn unique_layout(dir: &Path, tag: &str) -> (String, String) {
    use sha2::Digest;
    let src = data_dir().join("images/builtin/busybox");
    let cp = Command::new("cp")
        .args(["-a", &src.display().to_string(), &dir.display().to_string()])
        .status()
        .unwrap();
    assert!(cp.success());
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |v: &serde_json::Value| {
        let data = serde_json::to_vec(v).unwrap();
        let hex = hex::encode(sha2::Sha256::digest(&data));
        std::fs::write(dir.join("blobs/sha256").join(&hex), &data).unwrap();
        (format!("sha256:{hex}"), data.len())
    };
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let mut index = read(dir.join("index.json"));
    let mut manifest = read(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let mut config = read(blob(manifest["config"]["digest"].as_str().unwrap()));
    let env = &mut config["config"]["Env"];
    if !env.is_array() {
        *env = serde_json::json!([]);
    }
    let env = env.as_array_mut().expect("an array now");
    env.push(format!("FCVM_SECURITY_TEST={tag}").into());
    let (cd, cs) = put(&config);
    let config_hex = cd.trim_start_matches("sha256:").to_string();
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md, ms) = put(&manifest);
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = ms.into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (format!("oci:{}:latest", dir.display()), config_hex)
}

/// Where fcvm is handed a file open (see [`spawn_handing`]).
const INHERITED_FD: i32 = 50;

/// The file a test hands fcvm open (one per test: they run at once).
fn inherited_file(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fcvm-inherited-{}-{tag}", std::process::id()))
}

/// fcvm under umask 000, holding `file` at [`INHERITED_FD`] without close-on-exec, as a
/// caller's open files arrive.
fn spawn_handing(args: &[&str], file: &Path) -> std::process::Child {
    let held = std::fs::File::create(file).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&held);
    let mut c = fcvm();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: umask and dup2 are async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            libc::umask(0);
            if libc::dup2(raw, INHERITED_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.spawn().unwrap()
}

/// fcvm under umask 000, handed [`inherited_file`]`("umask")`.
fn fcvm_open_umask(args: &[&str]) -> std::process::Output {
    wait_output(spawn_handing(args, &inherited_file("umask")), BOOT, args)
}

/// The descriptors of process `pid` open on `file` (the same device and inode).
fn holds(pid: u32, file: &Path) -> Vec<String> {
    let want = std::fs::metadata(file).expect("the handed file");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::metadata(e.path())
                .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
        })
        .map(|e| format!("{pid}: fd {}", e.file_name().to_string_lossy()))
        .collect()
}

/// The VM's owner and QEMU, from its record.
fn owner_and_vmm(name: &str) -> [u32; 2] {
    let v = common::vm(name).expect("listed");
    let pid = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}")) as u32;
    [pid("pid"), pid("vmm_pid")]
}

/// The paths (of `list`) that uid 65534 can open, list or connect to.
fn reachable_by_nobody(list: &[PathBuf]) -> Vec<String> {
    // The probe is this binary, copied where the unprivileged user can run it.
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = t.path().join("probe");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let listing = t.path().join("list");
    let text: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&listing, text.join("\n")).unwrap();
    std::fs::set_permissions(&listing, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(&exe)
        .args(["--exact", "probe_as_another_user", "--nocapture"])
        .env(PROBE_LIST, &listing)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(out.status.success(), "probe failed: {}", text_of(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("REACHED ").map(String::from))
        .collect()
}

fn text_of(o: &std::process::Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

/// Run as uid 65534 by [`reachable_by_nobody`]: tries every listed path; a no-op otherwise.
#[test]
fn probe_as_another_user() {
    let Some(list) = std::env::var_os(PROBE_LIST) else {
        return;
    };
    for line in std::fs::read_to_string(list).unwrap().lines() {
        let p = Path::new(line);
        let reached = std::fs::File::open(p).is_ok()
            || std::fs::read_dir(p).is_ok()
            || std::os::unix::net::UnixStream::connect(p).is_ok()
            || std::fs::OpenOptions::new().write(true).open(p).is_ok();
        if reached {
            println!("REACHED {line}");
        }
    }
}

#[test]
fn nothing_under_the_data_dir_is_reachable_by_another_user() {
    let out = run(&["setup"], BOOT);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = tempfile::tempdir().unwrap();
    let tag = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let (image, config_hex) = unique_layout(&t.path().join("layout"), &tag);
    let vm = name("private");
    let snap = name("private-snap");
    let out = fcvm_open_umask(&[
        "podman",
        "run",
        "-d",
        "--name",
        &vm,
        "-e",
        "SECRET=hunter2",
        &image,
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "run -d: {}", text_of(&out));
    let id = text(&out.stdout).trim().to_string();
    let out = fcvm_open_umask(&["snapshot", "create", &vm, "--tag", &snap]);
    assert!(out.status.success(), "snapshot create: {}", text_of(&out));

    let data = data_dir();
    let vm_dir = data.join("vms").join(&id);
    assert!(vm_dir.join("ram").exists() && vm_dir.join("agent.sock").exists());
    // Neither the detached owner nor its QEMU keeps a descriptor fcvm was handed.
    let held: Vec<String> = owner_and_vmm(&vm)
        .iter()
        .flat_map(|&p| holds(p, &inherited_file("umask")))
        .collect();
    assert!(held.is_empty(), "inherited descriptors kept: {held:?}");
    let _ = std::fs::remove_file(inherited_file("umask"));
    // What this run made, whole; the shared top-level directories themselves.
    let made = [
        vm_dir,
        data.join("snapshots").join(&snap),
        data.join("images").join(&config_hex),
        data.join("locks").join(format!("name-{vm}.lock")),
        data.join("locks").join(format!("snapshot-{snap}.lock")),
        data.join("locks").join(format!("image-{config_hex}.lock")),
    ];
    for m in &made {
        assert!(m.exists(), "{} was not made", m.display());
        let open = open_to_others(m);
        assert!(
            open.is_empty(),
            "open to others under {}: {open:#?}",
            m.display()
        );
    }
    for d in [
        "",
        "vms",
        "snapshots",
        "images",
        "tmp",
        "locks",
        "assets",
        "blobs",
    ] {
        let p = data.join(d);
        if let Ok(m) = std::fs::metadata(&p) {
            assert_eq!(m.mode() & 0o077, 0, "{} is {:o}", p.display(), m.mode());
        }
    }
    let mut all = vec![data.clone()];
    walk(&data, &mut all);
    let reached = reachable_by_nobody(&all);
    assert!(reached.is_empty(), "uid 65534 reached: {reached:#?}");

    let out = run(&["rm", "--force", &vm], Duration::from_secs(60));
    assert!(out.status.success(), "{}", text_of(&out));
    let out = run(&["snapshot", "rm", &snap], Duration::from_secs(60));
    assert!(out.status.success(), "{}", text_of(&out));
}

/// A foreground run's QEMU keeps no descriptor its fcvm was handed (QEMU parses what the
/// guest sends: it holds only what it needs).
#[test]
fn qemu_keeps_no_descriptor_fcvm_was_handed() {
    let n = name("fds");
    let file = inherited_file("fds");
    let args = [
        "podman",
        "run",
        "--name",
        &n,
        "--network",
        "none",
        "builtin:busybox",
        "sleep",
        "600",
    ];
    let mut child = spawn_handing(&args, &file);
    wait_running(&mut child, &n);
    let [owner, qemu] = owner_and_vmm(&n);
    // The foreground fcvm is the owner and keeps what it was handed: the look finds it there.
    assert_eq!(owner, child.id());
    assert_eq!(
        holds(owner, &file).len(),
        1,
        "the handed file not seen in fcvm"
    );
    let held = holds(qemu, &file);
    let out = run(&["rm", "--force", &n], Duration::from_secs(60));
    assert!(out.status.success(), "{}", text_of(&out));
    let _ = child.wait();
    let _ = std::fs::remove_file(&file);
    assert!(held.is_empty(), "QEMU kept: {held:?}");
}

/// A detached run's `container.log` is capped (docs/run.md): a container that prints 20 MB
/// leaves at most 8 MiB in `container.log` and 8 MiB in `container.log.1`, and `fcvm logs`
/// still ends with its last line.
#[test]
fn a_detached_runs_log_is_capped_and_rotated() {
    let n = name("logcap");
    let out = run(
        &[
            "podman",
            "run",
            "-d",
            "--name",
            &n,
            "builtin:busybox",
            "sh",
            "-c",
            "head -c 20000000 /dev/zero | tr '\\0' x; echo; echo the-end; sleep 100000",
        ],
        BOOT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let logs = || run(&["logs", &n], Duration::from_secs(60)).stdout;
    wait_for("the container's last line", BOOT, || {
        logs().ends_with(b"the-end\n")
    });
    let dir = data_dir().join("vms").join(&id);
    let size = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
    let (now, old) = (size("container.log"), size("container.log.1"));
    let printed = logs().len() as u64;
    let _ = run(&["rm", "--force", &n], Duration::from_secs(60));
    assert!(now <= 8 << 20, "container.log has {now} bytes");
    assert!(old > 0 && old <= 8 << 20, "container.log.1 has {old} bytes");
    // Both files, oldest first.
    assert!(
        printed > 8 << 20 && printed <= 16 << 20,
        "fcvm logs printed {printed} bytes"
    );
}
