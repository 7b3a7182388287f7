//! `fcvm podman run`: one container in one fresh VM.
//!
//! 1. Check every input before anything is created (name, env, memory, VMM binary, network).
//! 2. Guest assets and the image rootfs (both cached; built with progress on first use).
//! 3. VM directory + state.json, network, then the VM itself ([`launch`]): restored from the
//!    image-cache snapshot of this image+config if there is one, else booted cold, prepared
//!    and snapshotted for the next run (unless `--no-snapshot`).
//! 4. [`serve`]: the container runs, `fcvm exec` is served, health is watched; output streams
//!    until `Exit`; Ctrl-C/SIGTERM stop the container, then the VM.
//! 5. `--rm` semantics: the VM and its directory are removed; the container's code is returned.

pub mod clone;
pub mod container_log;
pub mod detach;
pub mod launch;
pub mod serve;
pub mod spec;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub use spec::{parse_label, process_spec, EnvArg, EnvFile};

use crate::image::PullOptions;
use crate::paths::Dirs;
use crate::snapshot::{self, Manifest, SnapshotKind};
use crate::vm::{names, VmDir, VmState, VmStatus};
use crate::vmm::{self, Accel, VmmKind};

/// Smallest guest memory the kernel + initramfs + crun boot in (see docs/run.md).
pub const MIN_MEM_MIB: u32 = 128;
/// Failure bound for a cold boot to the agent's HelloAck (TCG on 2 cores is the slow case).
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub name: Option<String>,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<EnvArg>,
    pub cpus: u32,
    pub mem_mib: u32,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Option<String>,
    pub hostname: Option<String>,
    pub hypervisor: Option<VmmKind>,
    pub interactive: bool,
    pub tty: bool,
    pub pull: PullOptions,
    pub network: crate::network::NetworkOptions,
    pub health: crate::health::HealthFlags,
    /// Never save nor restore snapshots for this run.
    pub no_snapshot: bool,
    /// `-d`: this process is the detached owner; the ready pipe's fd ([`detach`]).
    pub detached: Option<std::os::fd::RawFd>,
    /// What shapes the VM and its container beyond the image (`--rootfs-size`, ...).
    pub shape: Shape,
    /// `--label K=V`, kept in the VM's state (the last of a key wins, as in podman).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Default size of the writable layer (`--rootfs-size`): room to install packages. The disk
/// is sparse, so the size costs nothing until the container writes (docs/run.md).
pub const DEFAULT_RW_DISK_MIB: u64 = 10 << 10;
/// Smallest writable layer: ext4's own metadata needs a few MiB.
pub const MIN_RW_DISK_MIB: u64 = 64;
/// Largest writable layer: ext4 with 4 KiB blocks and no 64bit feature tops out at 16 TiB.
pub const MAX_RW_DISK_MIB: u64 = 16 << 20;

/// The run flags that shape the VM or the container prepared before an image-cache
/// snapshot: all of them are part of [`Facts::cache_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Size of the container's writable layer (`--rootfs-size`), MiB.
    pub rw_disk_mib: u64,
    /// `--privileged`: the container, warm or not, is prepared with every capability and
    /// device, so a privileged run must never restore an unprivileged one (or the reverse).
    pub privileged: bool,
    /// Extra disks (`--disk`): attached at boot, mounted before the container is created.
    pub disks: Vec<crate::disks::DiskPlan>,
    /// `--map`: the guest mounts them inside the prepared container; their guest paths and
    /// modes are part of the key, their host directories are not (docs/volumes.md).
    pub maps: Vec<crate::map::Map>,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            rw_disk_mib: DEFAULT_RW_DISK_MIB,
            privileged: false,
            disks: vec![],
            maps: vec![],
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Invalid --rootfs-size {0:?}: expected SIZE (e.g. 512M, 10G) between 64M and 16T")]
pub struct SizeError(String);

/// `--rootfs-size SIZE`: a number with an optional K/M/G/T suffix (bytes without one, as
/// podman's sizes), rounded up to MiB; clap's value parser.
pub fn parse_rootfs_size(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError(s.to_string());
    let bytes = crate::util::parse_size(s.trim()).ok_or_else(bad)?;
    let mib = bytes.div_ceil(1 << 20);
    if !(MIN_RW_DISK_MIB..=MAX_RW_DISK_MIB).contains(&mib) {
        return Err(bad());
    }
    Ok(mib)
}

/// What a VM is made of: everything a snapshot manifest records about it.
#[derive(Debug, Clone)]
pub struct Facts {
    pub backend: VmmKind,
    pub accel: Accel,
    pub cpus: u32,
    pub mem_mib: u32,
    pub assets: crate::assets::Assets,
    pub image: String,
    pub image_digest: String,
    pub rootfs: std::path::PathBuf,
    pub fstype: String,
    pub net_devices: bool,
    /// The VM's network card (a snapshot's rehydrating helper needs the same devices).
    pub nic: Option<vmm::Nic>,
    pub container_env: Vec<String>,
    /// Commands whose files the guest caches before an image-cache snapshot (not part of its
    /// key: only a hint for what a restored run will start).
    pub prefetch: Vec<String>,
    /// The writable layer's size and the container's privileges (part of the key).
    pub shape: Shape,
}

impl Facts {
    /// The image-cache key: everything that shapes the VM before the user's process starts.
    pub fn cache_key(&self) -> String {
        let disks = crate::disks::key_part(&self.shape.disks);
        let maps = crate::map::Map::key(&self.shape.maps);
        let parts: [&str; 11] = [
            &self.image_digest,
            &self.assets.kernel_id,
            &self.assets.initramfs_id,
            &vmm::kernel_args(self.accel),
            &self.cpus.to_string(),
            &self.mem_mib.to_string(),
            &format!("{:?}/{:?}/{}", self.backend, self.accel, vmm::TCG_CPU),
            // Not just whether there is a network device: user-mode networking (slirp) puts
            // its own section into the device state, so each backend needs its own snapshot.
            vmm::NetKind::of(self.nic.as_ref()).as_str(),
            &self.fstype,
            &self.shape.rw_disk_mib.to_string(),
            if self.shape.privileged {
                "privileged"
            } else {
                ""
            },
        ];
        // Without disks and maps the key is what it was before they existed.
        let parts: Vec<&str> = (parts.into_iter().chain(disks.as_deref()))
            .chain((!maps.is_empty()).then_some(maps.as_str()))
            .collect();
        snapshot::cache_key(&parts)
    }

    /// The startup-snapshot key: the image-cache key plus everything that shapes the running
    /// app (its process, and the health check that decided it was up).
    pub fn startup_key(&self, spec: &fcvm_proto::ProcessSpec, health_url: &str) -> String {
        let spec = serde_json::to_string(&(&spec.args, &spec.env, &spec.cwd, &spec.user, spec.tty))
            .expect("spec serialises");
        snapshot::cache_key(&[&self.cache_key(), &spec, health_url])
    }

    pub fn manifest(
        &self,
        name: &str,
        kind: SnapshotKind,
        source: &str,
        running: bool,
    ) -> Manifest {
        Manifest {
            version: snapshot::MANIFEST_VERSION,
            name: name.into(),
            kind,
            created_at: chrono::Utc::now(),
            key: None,
            source: source.into(),
            backend: self.backend,
            accel: self.accel,
            cpus: self.cpus,
            mem_mib: self.mem_mib,
            kernel: self.assets.kernel.clone(),
            kernel_id: self.assets.kernel_id.clone(),
            initramfs: self.assets.initramfs.clone(),
            initramfs_id: self.assets.initramfs_id.clone(),
            protocol: self.assets.protocol,
            image: self.image.clone(),
            image_digest: self.image_digest.clone(),
            rootfs: self.rootfs.clone(),
            fstype: self.fstype.clone(),
            net_devices: self.net_devices,
            container_running: running,
            container_env: self.container_env.clone(),
            files: vec![],
            disks: crate::disks::DiskRecord::of(&self.shape.disks),
            labels: Default::default(),
            maps: self
                .shape
                .maps
                .iter()
                .map(crate::map::MapRecord::from)
                .collect(),
        }
    }
}

/// Checks the flags every VM-starting command shares.
pub(crate) fn check_machine(kind: VmmKind, cpus: u32, mem_mib: u32) -> Result<Accel> {
    if mem_mib < MIN_MEM_MIB {
        bail!("--mem {mem_mib} MiB is below the {MIN_MEM_MIB} MiB the guest needs");
    }
    if cpus == 0 {
        bail!("--cpu must be at least 1");
    }
    vmm::probe(kind)?;
    Ok(Accel::detect())
}

/// A fresh state record for a VM this process owns.
pub(crate) fn new_state(id: &str, name: &str, facts: &Facts) -> VmState {
    let me = std::process::id();
    VmState {
        id: id.into(),
        name: name.into(),
        status: VmStatus::Starting,
        pid: me,
        pid_start: crate::procfs::process_start(me).unwrap_or(0),
        vmm_pid: None,
        vmm_start: None,
        backend: facts.backend,
        accel: facts.accel,
        image: facts.image.clone(),
        image_digest: facts.image_digest.clone(),
        cpus: facts.cpus,
        mem_mib: facts.mem_mib,
        started_at: chrono::Utc::now(),
        health: None,
        exit_code: None,
        network: None,
        snapshot: None,
        labels: Default::default(),
    }
}

pub async fn run(dirs: &Dirs, opts: RunOptions) -> Result<i32> {
    // 1. Inputs first: a bad flag changes nothing.
    let env = EnvArg::resolved(&opts.env);
    let kind = opts.hypervisor.unwrap_or(VmmKind::Qemu);
    let accel = check_machine(kind, opts.cpus, opts.mem_mib)?;
    let net_plan = crate::network::check(&opts.network)?;
    crate::map::Map::check_unique(&opts.shape.maps)?;
    let id = crate::vm::new_id();
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("fcvm-{}", &id[..8]));
    let _name_lock = names::claim(dirs, &name)?;

    // 2. Assets and image (cached).
    let d2 = dirs.clone();
    let assets = tokio::task::spawn_blocking(move || {
        crate::assets::ensure(&d2, &crate::assets::find_agent()?)
    })
    .await??;
    let image = crate::image::prepare(dirs, &opts.image, &opts.pull)
        .await
        .with_context(|| format!("Image {}", opts.image))?;
    let spec = process_spec(&opts, &image.config, env)?;
    let mut facts = Facts {
        backend: kind,
        accel,
        cpus: opts.cpus,
        mem_mib: opts.mem_mib,
        assets,
        image: opts.image.clone(),
        image_digest: image.digest.clone(),
        rootfs: image.rootfs.clone(),
        fstype: image.fstype.clone(),
        net_devices: opts.network.mode != crate::network::NetworkMode::None,
        nic: None,
        container_env: spec.env.clone(),
        // This run's command and the image's own, the likeliest for the next runs.
        prefetch: [
            spec.args.first(),
            image.config.entrypoint.first(),
            image.config.cmd.first(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect(),
        shape: opts.shape.clone(),
    };

    // 3. The VM.
    let vmdir = VmDir::new(dirs, &id);
    let guard = DirGuard(vmdir.clone());
    crate::owner_only::create_dir(&vmdir.path).context("Cannot create the VM directory")?;
    let net = crate::network::setup(&net_plan, &vmdir.path, &id)?;
    facts.nic = net.nic.clone();
    let mut state = new_state(&id, &name, &facts);
    state.network = Some(net.info.clone());
    state.labels = opts.labels.clone();
    let hostname = opts.hostname.clone().unwrap_or_else(|| name.clone());

    // With --health-check, a startup snapshot (taken once the app was first healthy) brings
    // the app back already running; else the image-cache snapshot, else a cold boot. A disk
    // that is a host file is data no earlier snapshot holds: such a run takes neither.
    let no_snapshot = opts.no_snapshot || crate::disks::has_file(&opts.shape.disks);
    let startup = match (&opts.health.check_url, no_snapshot) {
        (Some(url), false) => Some(snapshot::startup_name(&facts.startup_key(&spec, url))),
        _ => None,
    };
    let restored_app = match &startup {
        Some(sname) => {
            launch::restore_named(
                dirs,
                &vmdir,
                &mut state,
                &net,
                &hostname,
                sname,
                &facts.shape.maps,
            )
            .await
        }
        None => None,
    };
    let (launched, start, save_startup) = match restored_app {
        Some(l) => (l, None, None),
        None => {
            let l = launch::launch(
                dirs,
                &vmdir,
                &mut state,
                &facts,
                &net,
                &hostname,
                !no_snapshot,
            )
            .await?;
            (l, Some(spec), startup)
        }
    };

    // 4. Serve until the container ends.
    let code = serve::serve(serve::Serving {
        dirs,
        vmdir: &vmdir,
        state,
        launched,
        facts: &facts,
        start,
        attach: crate::attach::AttachOptions {
            // Detached: the container's stdin stays open with nothing to read it from.
            stdin: opts.interactive && opts.detached.is_none(),
            tty: opts.tty,
            stop_on_signal: true,
        },
        detached: opts.detached,
        health: &opts.health,
        image_config: &image.config,
        startup_snapshot: save_startup,
    })
    .await;
    drop(net);
    drop(guard);
    code
}

/// Removes the VM directory on every exit path that runs destructors.
pub(crate) struct DirGuard(pub VmDir);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

pub(crate) fn console_tail(dir: &Path) -> String {
    let Ok(s) = std::fs::read_to_string(dir.join(vmm::CONSOLE_LOG)) else {
        return String::new();
    };
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
    if tail.is_empty() {
        String::new()
    } else {
        format!("; console:\n  {tail}")
    }
}

/// A sparse ext4 disk for the container's writable layer. No journal: the disk never
/// outlives its VM (a snapshot copies it with the VM paused, consistent with its RAM), and
/// without one the guest mounts and writes it with less work (no jbd2 thread, no commits).
/// A new sparse file reads as zeros, so its inode tables are marked zeroed
/// (`assume_storage_prezeroed`, e2fsprogs 1.47): otherwise the guest's ext4lazyinit thread
/// writes zeros over them in the background for seconds after mounting — work a snapshot
/// taken meanwhile hands on to every restore of it.
pub fn make_rw_disk(path: &Path, size_mib: u64) -> Result<()> {
    let f = crate::owner_only::create_file(path).context("Cannot create the writable disk")?;
    f.set_len(size_mib << 20)?;
    drop(f);
    let mkfs = |extended: &str| {
        crate::util::run_tool(
            std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-E", extended])
                .arg(path),
            "e2fsprogs",
        )
    };
    // An older mke2fs does not know the option: it then leaves the work to the guest.
    mkfs("assume_storage_prezeroed=1")
        .or_else(|_| mkfs("lazy_itable_init=1,lazy_journal_init=1"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_sizes() {
        assert_eq!(parse_rootfs_size("10G").unwrap(), 10 << 10);
        assert_eq!(parse_rootfs_size("512m").unwrap(), 512);
        assert_eq!(parse_rootfs_size("100000000").unwrap(), 96); // bytes, rounded up
        for bad in [
            "0",
            "0G",
            "",
            "G",
            "-1G",
            "1X",
            "1M",
            "17T",
            "99999999999999999999T",
        ] {
            assert!(parse_rootfs_size(bad).is_err(), "{bad}");
        }
    }
}
