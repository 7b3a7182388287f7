//! A real containerd for the tests: started with a private config (root, state, socket in a
//! temp dir; the shim found through PATH as `io.containerd.fcvm.v2`), fcvm's builtin busybox
//! imported as an OCI archive, and stopped at the end (drop) leaving nothing of its own.
//! [`Containerd::start_cri`] also loads its CRI plugin (runtime handler `fcvm`, a local
//! pause image as the sandbox image); [`cri`] is the CRI v1 client the tests drive it with.
#![allow(dead_code)]

pub mod cri;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const RUNTIME: &str = "io.containerd.fcvm.v2";
pub const IMAGE: &str = "docker.io/library/fcvm-busybox:latest";
pub const NS: &str = "fcvm-test";
/// The CRI plugin's namespace (its images and containers live there).
pub const CRI_NS: &str = "k8s.io";
/// The pods' sandbox image: busybox whose command sleeps (a pause), built locally.
pub const PAUSE_IMAGE: &str = "docker.io/library/fcvm-pause:latest";

/// Shared data dir of fcvm's tests: guest assets and images built once.
pub fn data_dir() -> PathBuf {
    std::env::var_os("FCVM_TEST_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fcvm-test-data")
        })
}

pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: Child,
    /// The namespace `ctr` works in (the CRI plugin's when it is loaded).
    pub ns: &'static str,
}

impl Containerd {
    pub fn start() -> Containerd {
        Containerd::start_with(false)
    }

    /// containerd with its CRI plugin: runtime handler `fcvm` is the shim, the sandbox image
    /// is [`PAUSE_IMAGE`]; no CNI is installed, so pods use the node's network option.
    pub fn start_cri() -> Containerd {
        Containerd::start_with(true)
    }

    fn start_with(cri: bool) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in(option_env!("CARGO_TARGET_TMPDIR").unwrap_or("/tmp"))
            .unwrap();
        let d = dir.path();
        let cri_config = if cri {
            // Port 0: the streaming server (attach, exec with a stream) of each test's
            // containerd on a port of its own.
            format!(
                r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.fcvm]
      runtime_type = "{RUNTIME}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}/bin"
    conf_dir = "{cni}/conf"
"#,
                cni = d.join("cni").display(),
            )
        } else {
            String::new()
        };
        let disabled = if cri {
            ""
        } else {
            r#""io.containerd.grpc.v1.cri", "#
        };
        std::fs::write(
            d.join("config.toml"),
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{disabled}"io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
{cri_config}"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = d.join("containerd.sock").display(),
            ),
        )
        .unwrap();
        let shim = shim_binary();
        let path = format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("FCVM_DATA_DIR", data_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian package containerd)");
        let ns = if cri { CRI_NS } else { NS };
        let c = Containerd { dir, child, ns };
        wait_for("containerd's socket", Duration::from_secs(30), || {
            c.ctr(&["version"]).status.success()
        });
        let archive = c.dir.path().join("busybox.tar");
        c.import(&busybox_archive(&archive, IMAGE, None));
        if cri {
            let archive = c.dir.path().join("pause.tar");
            c.import(&busybox_archive(
                &archive,
                PAUSE_IMAGE,
                Some(&["sleep", "2147483647"]),
            ));
        }
        c
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's own log, with the shims' logs copied into it.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(self.sock())
            .args(["-n", self.ns])
            .args(args);
        c.stdin(Stdio::null());
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        let child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child, Duration::from_secs(300), args)
    }

    fn import(&self, archive: &Path) {
        let o = self.ctr(&["image", "import", archive.to_str().unwrap()]);
        assert!(o.status.success(), "import: {}", text(&o.stderr));
    }
}

/// The shim binary: cargo names it to integration tests; an example finds it next to its
/// own directory (target/release/examples/..).
fn shim_binary() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_containerd-shim-fcvm-v2") {
        return PathBuf::from(p);
    }
    let me = std::env::current_exe().unwrap();
    me.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("containerd-shim-fcvm-v2")
}

/// fcvm's builtin busybox as an OCI archive named `name`; with `cmd`, its config's command
/// is that (the pause image: same layers, a command that sleeps).
fn busybox_archive(archive: &Path, name: &str, cmd: Option<&[&str]>) -> PathBuf {
    let mut layout = fcvm::image::ensure_builtin_busybox(&fcvm::paths::Dirs::new(data_dir()))
        .expect("builtin busybox");
    let copy = archive.with_extension("layout");
    if let Some(cmd) = cmd {
        copy_dir(&layout, &copy);
        set_command(&copy, cmd);
        layout = copy.clone();
    }
    let o = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("oci-archive:{}:{name}", archive.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo: {}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&copy);
    archive.to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// Rewrites the OCI layout's image config with `cmd` as its command (new config, manifest
/// and index, each written under its digest).
fn set_command(layout: &Path, cmd: &[&str]) {
    use sha2::Digest;
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let put = |data: &[u8]| -> (String, usize) {
        let d = hex::encode(sha2::Sha256::digest(data));
        std::fs::write(layout.join("blobs/sha256").join(&d), data).unwrap();
        (format!("sha256:{d}"), data.len())
    };
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let mut index = read(layout.join("index.json"));
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest = read(blob(&mdigest));
    let cdigest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config = read(blob(&cdigest));
    config["config"]["Cmd"] = serde_json::json!(cmd);
    config["config"]["Entrypoint"] = serde_json::Value::Null;
    let (d, n) = put(&serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = d.into();
    manifest["config"]["size"] = n.into();
    let (d, n) = put(&serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = d.into();
    index["manifests"][0]["size"] = n.into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers a failed test left: their shims stop their VMs.
        let o = self.ctr(&["task", "ls", "-q"]);
        for id in text(&o.stdout).lines() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["task", "delete", "-f", id]);
        }
        let o = self.ctr(&["container", "ls", "-q"]);
        for id in text(&o.stdout).lines() {
            let _ = self.ctr(&["container", "delete", id]);
        }
        let _ = self.ctr(&["image", "rm", IMAGE, PAUSE_IMAGE]);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // This containerd's layer directories die with it, and with them the keys of the
        // erofs and image-cache snapshots its containers made: remove those (only those:
        // the other tests' containerds, running meanwhile, share the namespace name).
        remove_cache_of(&format!("containerd:{}/", self.ns), self.dir.path());
        // Snapshots are overlay mounts under root, the CRI's sandbox /dev/shm tmpfs under
        // state: unmounted (deepest first) so the temp dir goes with them.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(self.dir.path()))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        // The shims' sockets and ctr's FIFOs live under containerd's fixed /run/containerd;
        // once empty, the directories go too (a busy one stays: remove_dir refuses it).
        for d in ["fifo", "s", ""] {
            let _ = std::fs::remove_dir(Path::new("/run/containerd").join(d));
        }
    }
}

/// Removes the image-cache snapshots (and their erofs) of VMs whose image starts with `prefix`
/// and whose erofs was made of layers under `root` (its `sources.json` says so).
pub fn remove_cache_of(prefix: &str, root: &Path) {
    let dirs = fcvm::paths::Dirs::new(data_dir());
    let ours = |digest: &str| {
        let Some(key) = digest.strip_prefix("sha256:") else {
            return false;
        };
        let sources = dirs.images().join("trees").join(key).join("sources.json");
        std::fs::read(sources)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<fcvm::bundle::Source>>(&b).ok())
            .is_some_and(|s| s.iter().any(|s| s.path.starts_with(root)))
    };
    for m in fcvm::snapshot::list(&dirs) {
        if !m.image.starts_with(prefix) || !ours(&m.image_digest) {
            continue;
        }
        if let Ok(name) = fcvm::vm::names::Name::new(m.name.clone()) {
            let _ = fcvm::snapshot::remove(&dirs, &name);
        }
        if let Some(key) = m.image_digest.strip_prefix("sha256:") {
            let _ = std::fs::remove_dir_all(dirs.images().join("trees").join(key));
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_output(mut child: Child, limit: Duration, what: &[&str]) -> Output {
    fn drain<R: std::io::Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what:?} did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && pid != std::process::id() {
                v.push((pid, cmd));
            }
        }
    }
    v
}

/// No shim of this containerd and no VM of its containers `ids` is left.
pub fn assert_nothing_left(c: &Containerd, ids: &[&str]) {
    let sock = c.sock().display().to_string();
    wait_for("the shims to exit", Duration::from_secs(30), || {
        processes_with("containerd-shim-fcvm-v2")
            .iter()
            .all(|(_, cmd)| !cmd.contains(&sock))
    });
    // A killed shim's socket is removed by its `delete`, which containerd runs on its own
    // time once it sees the shim gone (`task ls` may show the task stopped before); that
    // `delete` removes the VM's record and directory first, so wait for it before looking.
    for id in ids {
        let addr = containerd_shim::socket_address(&sock, c.ns, id);
        let path = addr.trim_start_matches("unix://").to_string();
        wait_for(
            &format!("shim socket {path} of {id} to go"),
            Duration::from_secs(60),
            || !std::path::Path::new(&path).exists(),
        );
    }
    let dirs = fcvm::paths::Dirs::new(data_dir());
    for id in ids {
        let image = format!("containerd:{}/{id}", c.ns);
        assert!(
            !fcvm::vm::list(&dirs).iter().any(|(_, s)| s.image == image),
            "VM of {id} still listed"
        );
    }
    // The shim logs each container's VM id; no VMM may still run in that VM's directory.
    let log = c.log();
    for id in ids {
        for vm in vm_ids(&log, id) {
            let dir = data_dir().join("vms").join(&vm);
            assert!(!dir.exists(), "VM directory {} left", dir.display());
            assert!(
                processes_with(&dir.display().to_string()).is_empty(),
                "VMM of {id} still runs"
            );
        }
    }
    let o = c.ctr(&["task", "ls", "-q"]);
    assert_eq!(text(&o.stdout).trim(), "", "tasks left");
}

/// The VM ids the shim logged for container `id`.
pub fn vm_ids(log: &str, id: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(&format!("id={id} ")))
        .filter_map(|l| l.split("vm=").nth(1))
        .filter_map(|v| v.split(|c: char| !c.is_ascii_alphanumeric()).next())
        .map(String::from)
        .collect()
}
