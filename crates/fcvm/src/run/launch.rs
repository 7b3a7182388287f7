//! Getting a VM to "container prepared, agent session open": from the image-cache snapshot
//! when one exists for this image+config, else by a cold boot that then saves that snapshot.
//!
//! A snapshot that fails to load is discarded, the run says so and boots cold. The snapshot is
//! taken after `Prepared` and before the user's process starts, so every later run starts its
//! process fresh (docs/design.md §10).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fcvm_proto::{ContainerPlan, Msg};

use super::{Facts, BOOT_TIMEOUT};
use crate::network::Network;
use crate::paths::Dirs;
use crate::session::Session;
use crate::snapshot::{self, restore, SnapshotError, SnapshotKind};
use crate::vm::{names::Name, VmDir, VmState};
use crate::vmm::{self, Disk, Memory, VmSpec, Vmm};

pub struct Launched {
    pub vm: Arc<dyn Vmm>,
    pub session: Session,
    /// The snapshot the VM was restored from, if it was.
    pub restored_from: Option<String>,
    /// When launching began, and how long it took until the agent was ready / prepared.
    pub t0: Instant,
    pub t_hello: Duration,
    pub t_ready: Duration,
}

/// A fresh session epoch (never 0: the exec socket's client sessions use 0).
pub fn new_epoch() -> u64 {
    rand::random::<u64>() | 1
}

pub async fn launch(
    dirs: &Dirs,
    vmdir: &VmDir,
    state: &mut VmState,
    facts: &Facts,
    net: &Network,
    hostname: &str,
    use_cache: bool,
) -> Result<Launched> {
    let cname = snapshot::cache_name(&facts.cache_key());
    if use_cache {
        if let Some(l) =
            restore_named(dirs, vmdir, state, net, hostname, &cname, &facts.shape.maps).await
        {
            return Ok(l);
        }
    }
    // The warm container is for the snapshot: a run that saves none starts with `crun run`.
    let warm = use_cache
        && matches!(
            snapshot::load(dirs, &cname),
            Err(SnapshotError::NotFound(_))
        );
    let launched = cold_boot(vmdir, state, facts, net, hostname, warm).await?;
    if use_cache
        && matches!(
            snapshot::load(dirs, &cname),
            Err(SnapshotError::NotFound(_))
        )
    {
        let m = facts.manifest(&cname, SnapshotKind::ImageCache, &state.name, false);
        let step = crate::progress::step(format!("Saving image-cache snapshot {cname}"));
        let created = snapshot::create::create(
            dirs,
            &*launched.vm,
            &vmdir.path,
            m,
            net.nic.as_ref(),
            &vmm::boot,
        )
        .await;
        match created {
            Ok(_) => step.finish(),
            // Another run is writing the same snapshot: one is enough.
            Err(SnapshotError::Busy(_)) => drop(step),
            Err(e) => {
                drop(step);
                let e = crate::util::chain(&e);
                tracing::warn!("image-cache snapshot not saved: {e}");
            }
        }
    }
    Ok(launched)
}

/// Restores the snapshot `sname` (a startup snapshot: its app runs) if it exists and loads;
/// None means "launch another way" (a damaged one is discarded, saying so).
pub async fn restore_named(
    dirs: &Dirs,
    vmdir: &VmDir,
    state: &mut VmState,
    net: &Network,
    hostname: &str,
    sname: &Name,
    maps: &[crate::map::Map],
) -> Option<Launched> {
    let (sdir, m) = match snapshot::load(dirs, sname) {
        Ok(x) => x,
        Err(SnapshotError::NotFound(_)) => return None,
        Err(e) => {
            discard(dirs, sname, &e);
            return None;
        }
    };
    match restore_as(&sdir, &m, vmdir, state, net, hostname, maps).await {
        Ok(l) => Some(l),
        Err(e) => {
            discard(dirs, sname, &e);
            None
        }
    }
}

/// Restores snapshot `m` (in `sdir`) as the VM of `vmdir` with a fresh identity and records
/// it in `state`; its map requests are served from `maps` (the guest's order).
pub async fn restore_as(
    sdir: &std::path::Path,
    m: &snapshot::Manifest,
    vmdir: &VmDir,
    state: &mut VmState,
    net: &Network,
    hostname: &str,
    maps: &[crate::map::Map],
) -> Result<Launched, SnapshotError> {
    let t0 = Instant::now();
    let plan = restore::plan(Some(hostname.into()), net.guest.clone());
    let r = restore::restore(
        sdir,
        m,
        &vmdir.path,
        net.nic.clone(),
        plan,
        new_epoch(),
        &vmm::boot,
    )
    .await?;
    // Requests the agent resent for the new epoch wait in the session's queue until now.
    crate::map::serve(&r.session, maps, r.vm.pid());
    state.snapshot = Some(m.name.clone());
    record_vmm(vmdir, state, &*r.vm).map_err(SnapshotError::Record)?;
    let t = t0.elapsed();
    Ok(Launched {
        vm: r.vm,
        session: r.session,
        restored_from: Some(m.name.clone()),
        t0,
        t_hello: t,
        t_ready: t,
    })
}

fn discard(dirs: &Dirs, name: &Name, e: &SnapshotError) {
    let e = crate::util::chain(e);
    tracing::warn!("snapshot {name} failed to load ({e}); discarding it and booting cold");
    let _ = snapshot::remove(dirs, name);
}

pub(crate) fn record_vmm(
    vmdir: &VmDir,
    state: &mut VmState,
    vm: &dyn Vmm,
) -> Result<(), crate::vm::VmError> {
    state.vmm_pid = Some(vm.pid());
    state.vmm_start = crate::procfs::process_start(vm.pid());
    vmdir.write_state(state)
}

/// Boots the kernel, opens the session, prepares the container's root.
async fn cold_boot(
    vmdir: &VmDir,
    state: &mut VmState,
    facts: &Facts,
    net: &Network,
    hostname: &str,
    warm: bool,
) -> Result<Launched> {
    // Leftovers of a failed restore attempt must not be mistaken for ours.
    let _ = std::fs::remove_file(vmdir.path.join(snapshot::RW_DISK));
    let rw = vmdir.path.join(snapshot::RW_DISK);
    super::make_rw_disk(&rw, facts.shape.rw_disk_mib)?;
    // Guest RAM holds the container's secrets: the file exists, private, before QEMU maps it.
    let ram = vmdir.path.join(snapshot::RAM_FILE);
    crate::owner_only::create_file(&ram).context("Cannot create the VM's RAM file")?;
    let vspec = VmSpec {
        kind: facts.backend,
        dir: vmdir.path.clone(),
        kernel: facts.assets.kernel.clone(),
        initramfs: facts.assets.initramfs.clone(),
        cpus: facts.cpus,
        mem_mib: facts.mem_mib,
        disks: [
            Disk {
                path: facts.rootfs.clone(),
                read_only: true,
                serial: None,
            },
            Disk {
                path: rw,
                read_only: false,
                serial: None,
            },
        ]
        .into_iter()
        .chain(extra_disks(vmdir, facts)?)
        .collect(),
        accel: facts.accel,
        nic: net.nic.clone(),
        memory: Memory::File {
            path: ram,
            shared: true,
        },
        incoming: false,
    };
    let t0 = Instant::now();
    let vm = vmm::boot(&vspec)?;
    record_vmm(vmdir, state, &*vm)?;
    let name = state.name.clone();
    let session = Session::connect(
        &vm.agent_socket(),
        new_epoch(),
        &*vm,
        BOOT_TIMEOUT,
        Some(vmdir.path.join("agent.log")),
    )
    .await
    .with_context(|| {
        // QEMU's own last word (a disk it could not open, a lock it could not take) says why
        // a VM that never ran its kernel died; the console says why a kernel died.
        let qemu = vm
            .last_message()
            .map(|m| format!(" (QEMU: {m})"))
            .unwrap_or_default();
        format!(
            "VM {name} did not boot{qemu}{}",
            super::console_tail(&vmdir.path)
        )
    })?;
    crate::map::serve(&session, &facts.shape.maps, vm.pid());
    let t_hello = t0.elapsed();
    let plan = ContainerPlan {
        image_fstype: facts.fstype.clone(),
        hostname: hostname.into(),
        network: net.guest.clone(),
        warm,
        prefetch: facts.prefetch.clone(),
        path: facts
            .container_env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or_default()
            .to_string(),
        privileged: facts.shape.privileged,
        disks: (facts.shape.disks.iter().enumerate())
            .map(|(i, d)| fcvm_proto::DiskMount {
                serial: crate::disks::serial(i),
                guest: d.guest.clone(),
            })
            .collect(),
        maps: crate::map::Map::mounts(&facts.shape.maps),
    };
    session
        .request(Msg::Prepare(plan), BOOT_TIMEOUT, |m| match m {
            Msg::Prepared => Some(Ok(())),
            Msg::PrepareFailed { error } => Some(Err(error)),
            _ => None,
        })
        .await
        .with_context(|| format!("VM {name}: preparing the container failed"))?;
    Ok(Launched {
        vm,
        session,
        restored_from: None,
        t0,
        t_hello,
        t_ready: t0.elapsed(),
    })
}

/// The extra disks (`--disk`) of a cold boot: a SIZE disk made now in the VM directory (as
/// the writable layer), a PATH disk used in place; each with the serial the agent finds it by.
fn extra_disks(vmdir: &VmDir, facts: &Facts) -> Result<Vec<Disk>> {
    let records = crate::disks::DiskRecord::of(&facts.shape.disks);
    let mut out = vec![];
    for (i, (d, r)) in facts.shape.disks.iter().zip(records).enumerate() {
        let path = r.path_in(&vmdir.path);
        if let crate::disks::DiskSource::Size(mib) = d.source {
            super::make_rw_disk(&path, mib)
                .with_context(|| format!("Cannot make --disk {}", d.guest))?;
        }
        out.push(Disk {
            path,
            read_only: false,
            serial: Some(crate::disks::serial(i)),
        });
    }
    Ok(out)
}
