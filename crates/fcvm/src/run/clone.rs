//! `fcvm snapshot run SNAP`: a new VM restored from a snapshot — a clone with its own name,
//! hostname, machine-id, RNG seed, disk (copy of the snapshot's) and RAM (the snapshot's file
//! mapped copy-on-write, so clones share unchanged pages through the page cache).
//!
//! With the app running in the snapshot the clone attaches to it like `podman run` would;
//! `--exec CMD` instead runs one command in the clone, prints its output and removes the clone.

use anyhow::{bail, Context, Result};
use fcvm_proto::{ProcessSpec, Target};

use super::launch::{restore_as, Launched};
use super::{check_machine, new_state, DirGuard, Facts};
use crate::attach::{attach, AttachOptions};
use crate::network::{NetworkMode, NetworkOptions};
use crate::paths::Dirs;
use crate::snapshot;
use crate::vm::{names, VmDir};

#[derive(Debug, Clone)]
pub struct CloneOptions {
    pub snapshot: names::Name,
    pub name: Option<String>,
    /// One-shot: run this shell command in the clone, print its output, clean up.
    pub exec: Option<String>,
    pub network: NetworkOptions,
    pub health: crate::health::HealthFlags,
    /// `--label K=V`: added to the snapshot's labels (a key given here wins), as podman
    /// adds `run --label` to the image's.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--map`: other host directories for the snapshot's guest paths (docs/volumes.md).
    pub maps: Vec<crate::map::Map>,
}

pub async fn run_clone(dirs: &Dirs, o: CloneOptions) -> Result<i32> {
    let (sdir, m) = snapshot::load(dirs, &o.snapshot)?;
    let accel = check_machine(m.backend, m.cpus, m.mem_mib)?;
    if accel != m.accel {
        bail!(
            "Snapshot {} was taken under {:?} and cannot be restored under {accel:?}",
            m.name,
            m.accel
        );
    }
    let mut net_opts = o.network.clone();
    if !m.net_devices {
        // The clone must have the snapshot's devices: no network device, no network.
        if net_opts.mode != NetworkMode::None && !net_opts.publish.is_empty() {
            bail!(
                "Snapshot {} has no network device: --publish cannot apply",
                m.name
            );
        }
        net_opts.mode = NetworkMode::None;
    } else if net_opts.mode == NetworkMode::None {
        bail!(
            "Snapshot {} has a network device: --network none cannot apply",
            m.name
        );
    }
    let net_plan = crate::network::check(&net_opts)?;
    let maps = crate::map::Map::for_clone(&m.maps, &o.maps)?;
    if o.exec.is_none() && !m.container_running {
        bail!(
            "Snapshot {} has no running container: give a command with --exec",
            m.name
        );
    }
    let id = crate::vm::new_id();
    let name = o
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", m.name, &id[..6]));
    let _lock = names::claim(dirs, &name)?;

    let mut facts = Facts {
        backend: m.backend,
        accel,
        cpus: m.cpus,
        mem_mib: m.mem_mib,
        assets: crate::assets::Assets {
            kernel: m.kernel.clone(),
            initramfs: m.initramfs.clone(),
            kernel_id: m.kernel_id.clone(),
            initramfs_id: m.initramfs_id.clone(),
            kernel_version: String::new(),
            protocol: m.protocol,
        },
        image: m.image.clone(),
        image_digest: m.image_digest.clone(),
        rootfs: m.rootfs.clone(),
        fstype: m.fstype.clone(),
        net_devices: m.net_devices,
        nic: None,
        container_env: m.container_env.clone(),
        prefetch: vec![],
        // Only a cold boot makes the disk and the container: a clone has both already, and
        // its extra disks are copies of the snapshot's (its own snapshots copy them on).
        shape: super::Shape {
            disks: (m.disks.iter())
                .map(|d| crate::disks::DiskPlan {
                    source: crate::disks::DiskSource::Restored,
                    guest: d.guest.clone(),
                })
                .collect(),
            ..Default::default()
        },
    };
    let vmdir = VmDir::new(dirs, &id);
    let guard = DirGuard(vmdir.clone());
    crate::owner_only::create_dir(&vmdir.path).context("Cannot create the VM directory")?;
    let net = crate::network::setup(&net_plan, &vmdir.path, &id)?;
    facts.nic = net.nic.clone();
    // A snapshot of this clone records the maps it serves.
    facts.shape.maps = maps.clone();
    let mut state = new_state(&id, &name, &facts);
    state.network = Some(net.info.clone());
    state.labels = m.labels.clone();
    state.labels.extend(o.labels.clone());
    let launched = restore_as(&sdir, &m, &vmdir, &mut state, &net, &name, &maps).await?;

    let code = match &o.exec {
        Some(cmd) => one_shot(launched, &facts, cmd, m.container_running).await,
        None => {
            super::serve::serve(super::serve::Serving {
                dirs,
                vmdir: &vmdir,
                state,
                launched,
                facts: &facts,
                start: None,
                attach: AttachOptions {
                    stdin: false,
                    tty: false,
                    stop_on_signal: true,
                },
                health: &o.health,
                image_config: &crate::image::ImageConfig::default(),
                startup_snapshot: None,
                detached: None,
            })
            .await
        }
    };
    drop(net);
    drop(guard);
    code
}

/// Runs `cmd` in the clone — in its running container, or as the container's process where
/// none runs yet (an image-cache snapshot) — and tears the clone down.
async fn one_shot(l: Launched, facts: &Facts, cmd: &str, in_container: bool) -> Result<i32> {
    let spec = ProcessSpec {
        args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        env: facts.container_env.clone(),
        ..Default::default()
    };
    let target = if in_container {
        Target::ContainerExec
    } else {
        Target::Container
    };
    let proc = l.session.start(spec, target).await;
    let outcome = attach(
        proc,
        AttachOptions {
            stdin: false,
            tty: false,
            stop_on_signal: true,
        },
    )
    .await;
    l.vm.quit();
    outcome.result
}
