//! One container's VM for an embedding runtime: launched from an erofs the caller built
//! ([`super::tree`]), restored from the image-cache snapshot of that erofs+shape when there
//! is one (else booted cold, prepared and snapshotted before any process starts), the
//! session open for the caller to start the container's main process and its execs.
//!
//! The VM shows in `fcvm ls` under the caller's name and serves `fcvm exec`. A pod's
//! further containers are added to it while it runs ([`super::pod`]).
//! [`BundleVm::stop`] (or dropping it) quits it and removes its directory and name.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::exec::server::ExecServer;
use crate::paths::Dirs;
use crate::run::{launch, DirGuard, Facts, Shape};
use crate::session::Session;
use crate::vm::names::NameLock;
use crate::vm::{VmDir, VmState, VmStatus};
use crate::vmm::{Vmm, VmmKind};

/// What the VM is made of.
#[derive(Debug, Clone)]
pub struct VmRequest {
    /// The VM's name in `fcvm ls` (must be free).
    pub name: String,
    pub hostname: String,
    /// The container's root: an erofs file, and what identifies it (`sha256:<key>`).
    pub rootfs: PathBuf,
    pub digest: String,
    /// Shown as the VM's image in `fcvm ls`.
    pub image: String,
    pub cpus: u32,
    pub mem_mib: u32,
    /// The container's environment (its PATH finds the commands the guest prefetches).
    pub env: Vec<String>,
    /// Commands whose files a cold boot caches before its snapshot.
    pub prefetch: Vec<String>,
    pub privileged: bool,
    /// Never save nor restore snapshots.
    pub no_snapshot: bool,
    /// Host directories bound into the container, as `--map`s (docs/volumes.md: their guest
    /// paths and modes are part of the snapshot key). A VM with maps adds no containers.
    pub maps: Vec<crate::map::Map>,
}

pub struct BundleVm {
    pub id: String,
    pub name: String,
    pub session: Arc<Session>,
    /// The snapshot the VM was restored from, if it was.
    pub restored_from: Option<String>,
    /// The VMM process on the host.
    pub vmm_pid: u32,
    pub mem_mib: u32,
    vm: Arc<dyn Vmm>,
    parts: Mutex<Option<Parts>>,
    /// The pod's further containers and the maps that are their roots ([`super::pod`]).
    pub(super) pod: super::pod::PodState,
}

/// What [`BundleVm::stop`] tears down, in order.
struct Parts {
    state: VmState,
    dir: VmDir,
    _exec: ExecServer,
    _net: crate::network::Network,
    _guard: DirGuard,
    _name: NameLock,
}

impl BundleVm {
    /// Launches the VM; returns once its container is prepared (no process runs yet).
    pub async fn launch(dirs: &Dirs, req: &VmRequest) -> Result<BundleVm> {
        let accel = crate::run::check_machine(VmmKind::Qemu, req.cpus, req.mem_mib)?;
        let name_lock = crate::vm::names::claim(dirs, &req.name)?;
        let d2 = dirs.clone();
        let assets = tokio::task::spawn_blocking(move || {
            crate::assets::ensure(&d2, &crate::assets::find_agent()?)
        })
        .await??;
        // No network device: a plain container's network namespace is empty (docs/containerd.md).
        let net_plan = crate::network::check(&crate::network::NetworkOptions {
            mode: crate::network::NetworkMode::None,
            ..Default::default()
        })?;
        let id = crate::vm::new_id();
        let vmdir = VmDir::new(dirs, &id);
        let guard = DirGuard(vmdir.clone());
        crate::owner_only::create_dir(&vmdir.path).context("Cannot create the VM directory")?;
        let net = crate::network::setup(&net_plan, &vmdir.path, &id)?;
        let facts = Facts {
            backend: VmmKind::Qemu,
            accel,
            cpus: req.cpus,
            mem_mib: req.mem_mib,
            assets,
            image: req.image.clone(),
            image_digest: req.digest.clone(),
            rootfs: req.rootfs.clone(),
            fstype: "erofs".into(),
            net_devices: false,
            nic: net.nic.clone(),
            container_env: req.env.clone(),
            prefetch: req.prefetch.clone(),
            shape: Shape {
                privileged: req.privileged,
                maps: req.maps.clone(),
                ..Default::default()
            },
        };
        let mut state = crate::run::new_state(&id, &req.name, &facts);
        state.network = Some(net.info.clone());
        let launched = launch::launch(
            dirs,
            &vmdir,
            &mut state,
            &facts,
            &net,
            &req.hostname,
            !req.no_snapshot,
        )
        .await?;
        let vm = launched.vm.clone();
        let session = Arc::new(launched.session);
        // Served from the start when the VM has no maps of its own: the pod's containers'
        // roots (with maps, the launch serves those and no container can be added).
        let pod = super::pod::PodState::serve(&session, vm.pid());
        let exec = crate::exec::server::serve(
            &vmdir.path.join(crate::exec::server::EXEC_SOCK),
            session.clone(),
            req.env.clone(),
            None,
        )
        .context("Cannot open the exec socket")?;
        state.status = VmStatus::Running;
        vmdir.write_state(&state)?;
        Ok(BundleVm {
            id,
            name: req.name.clone(),
            session,
            restored_from: launched.restored_from,
            vmm_pid: vm.pid(),
            mem_mib: req.mem_mib,
            vm,
            parts: Mutex::new(Some(Parts {
                state,
                dir: vmdir,
                _exec: exec,
                _net: net,
                _guard: guard,
                _name: name_lock,
            })),
            pod,
        })
    }

    /// Whether the VM still runs (not stopped, nor stopping now).
    pub fn running(&self) -> bool {
        matches!(self.parts.try_lock(), Ok(p) if p.is_some())
    }

    /// Stops the VM and removes everything it had; a second call does nothing, once the
    /// first one finished (it waits for that).
    pub fn stop(&self) {
        let mut slot = self.parts.lock().expect("parts");
        let Some(mut parts) = slot.take() else {
            return;
        };
        parts.state.status = VmStatus::Stopping;
        let _ = parts.dir.write_state(&parts.state);
        self.vm.quit();
        drop(parts);
        drop(slot);
    }
}

impl Drop for BundleVm {
    fn drop(&mut self) {
        self.stop();
    }
}
