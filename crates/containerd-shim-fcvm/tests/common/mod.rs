//! A real containerd for the tests: started with a private config (root, state, socket in a
//! temp dir; the shim found through PATH as `io.containerd.fcvm.v2`), fcvm's builtin busybox
//! imported as an OCI archive, and stopped at the end (drop) leaving nothing of its own.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const RUNTIME: &str = "io.containerd.fcvm.v2";
pub const IMAGE: &str = "docker.io/library/fcvm-busybox:latest";
pub const NS: &str = "fcvm-test";

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
}

impl Containerd {
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("config.toml"),
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = d.join("containerd.sock").display(),
            ),
        )
        .unwrap();
        let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-fcvm-v2"));
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
        let c = Containerd { dir, child };
        wait_for("containerd's socket", Duration::from_secs(30), || {
            c.ctr(&["version"]).status.success()
        });
        c.import_busybox();
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
        c.arg("-a").arg(self.sock()).args(["-n", NS]).args(args);
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

    fn import_busybox(&self) {
        let layout = fcvm::image::ensure_builtin_busybox(&fcvm::paths::Dirs::new(data_dir()))
            .expect("builtin busybox");
        let archive = self.dir.path().join("busybox.tar");
        let o = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q"])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("oci-archive:{}:{IMAGE}", archive.display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "skopeo: {}", text(&o.stderr));
        let o = self.ctr(&["image", "import", archive.to_str().unwrap()]);
        assert!(o.status.success(), "import: {}", text(&o.stderr));
    }
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
        let _ = self.ctr(&["image", "rm", IMAGE]);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // This containerd's layer directories die with it, and with them the keys of the
        // erofs and image-cache snapshots its containers made: remove those.
        remove_cache_of(&format!("containerd:{NS}/"));
        // Snapshots are overlay directories of root's; the temp dir goes with them.
        let _ = std::process::Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root"))
            .stderr(Stdio::null())
            .status();
        // The shims' sockets and ctr's FIFOs live under containerd's fixed /run/containerd;
        // once empty, the directories go too (a busy one stays: remove_dir refuses it).
        for d in ["fifo", "s", ""] {
            let _ = std::fs::remove_dir(Path::new("/run/containerd").join(d));
        }
    }
}

/// Removes the image-cache snapshots (and their erofs) of VMs whose image starts with `prefix`.
pub fn remove_cache_of(prefix: &str) {
    let dirs = fcvm::paths::Dirs::new(data_dir());
    for m in fcvm::snapshot::list(&dirs) {
        if !m.image.starts_with(prefix) {
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
