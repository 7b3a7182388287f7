//! A container the shim runs: its VM, its init process and its execs.
//!
//! [`Container::create`] is containerd's Create: the bundle's spec is checked
//! ([`crate::spec`]), its rootfs becomes an erofs ([`crate::rootfs`]) and the VM is launched
//! (`fcvm::bundle`) — restored from the image-cache snapshot when there is one, booted cold
//! and snapshotted otherwise — with no process yet. A CRI pod's later container
//! ([`Role::Member`]) launches nothing: its rootfs is mounted on its bundle and added to
//! its sandbox's VM ([`crate::pod`]) with the host directories its spec binds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::protos::api;
use fcvm::bundle::{BundleVm, VmRequest};
use fcvm::paths::Dirs;

use crate::pod::{self, Role};
use crate::process::{Proc, Stdio};
use crate::{rootfs, spec};

pub struct Container {
    pub id: String,
    pub bundle: String,
    pub role: Role,
    /// Its own VM, or (a pod's member) its sandbox's.
    pub vm: Arc<BundleVm>,
    pub init: Arc<Proc>,
    pub execs: HashMap<String, Arc<Proc>>,
    /// An erofs built for this container alone (not an image's): removed at its Delete.
    pub one_off_rootfs: Option<PathBuf>,
    /// A pod member's rootfs, mounted on its bundle: unmounted at its Delete.
    pub mounted_rootfs: Option<PathBuf>,
}

impl Container {
    /// Checks the bundle, builds (or finds) its rootfs erofs and launches the VM; a pod's
    /// member joins `sandbox`'s VM (the shim's containers by id) instead.
    pub async fn create(
        dirs: &Dirs,
        namespace: &str,
        req: &api::CreateTaskRequest,
        sandbox: impl FnOnce(&str) -> Option<Arc<BundleVm>>,
    ) -> anyhow::Result<Container> {
        use anyhow::Context as _;
        let t0 = std::time::Instant::now();
        if !req.checkpoint.is_empty() {
            anyhow::bail!(
                "fcvm cannot honour checkpoint: restoring a CRIU checkpoint is not supported"
            );
        }
        // As `fcvm` at every start: the data directory exists and is the owner's alone.
        dirs.prepare().with_context(|| {
            format!(
                "Cannot prepare fcvm's data directory {}",
                dirs.root.display()
            )
        })?;
        let bundle = PathBuf::from(&req.bundle);
        let oci = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .context("Cannot read the bundle's config.json")?;
        let role = pod::role(&oci);
        let mut plan = spec::plan(&oci, !req.stdin.is_empty(), &role)?;
        plan.process.tty = plan.process.tty || req.terminal;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        if let Role::Member { sandbox: sid } = &role {
            let vm = sandbox(sid)
                .with_context(|| format!("the pod's sandbox {sid} does not run in this shim"))?;
            let target = pod::mount_rootfs(&bundle, &req.rootfs)?;
            if let Err(e) = vm.add_container_with(&req.id, &target, &plan.binds).await {
                pod::unmount_rootfs(&target);
                return Err(e).context("Cannot add the container to its pod's VM");
            }
            tracing::info!(id = %req.id, vm = %vm.id, ms = t0.elapsed().as_millis(), "added to pod {sid}");
            return Ok(Container {
                id: req.id.clone(),
                bundle: req.bundle.clone(),
                role,
                vm,
                init: Proc::new("", plan.process, stdio),
                execs: HashMap::new(),
                one_off_rootfs: None,
                mounted_rootfs: Some(target),
            });
        }
        let d2 = dirs.clone();
        let mounts = req.rootfs.clone();
        let root = tokio::task::spawn_blocking(move || rootfs::prepare(&d2, &mounts)).await??;
        let name = vm_name(namespace, &req.id);
        let vreq = VmRequest {
            name,
            hostname: if plan.hostname.is_empty() {
                req.id.chars().take(63).collect()
            } else {
                plan.hostname.clone()
            },
            rootfs: root.erofs.clone(),
            digest: root.digest.clone(),
            image: format!("containerd:{}/{}", namespace, req.id),
            cpus: plan.cpus,
            mem_mib: plan.mem_mib,
            env: plan.process.env.clone(),
            prefetch: plan.process.args.first().cloned().into_iter().collect(),
            privileged: plan.privileged,
            no_snapshot: root.one_off.is_some(),
            // One bind per destination: `spec::plan` refused any other.
            maps: plan.binds.clone(),
        };
        let vm = match BundleVm::launch(dirs, &vreq).await {
            Ok(vm) => vm,
            Err(e) => {
                if let Some(d) = &root.one_off {
                    let _ = std::fs::remove_dir_all(d);
                }
                return Err(e);
            }
        };
        match &vm.restored_from {
            Some(s) => {
                tracing::info!(id = %req.id, vm = %vm.id, ms = t0.elapsed().as_millis(), "restored from image-cache snapshot {s}")
            }
            None => {
                tracing::info!(id = %req.id, vm = %vm.id, ms = t0.elapsed().as_millis(), "booted cold (image-cache snapshot saved for the next)")
            }
        }
        Ok(Container {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            role,
            vm: Arc::new(vm),
            init: Proc::new("", plan.process, stdio),
            execs: HashMap::new(),
            one_off_rootfs: root.one_off,
            mounted_rootfs: None,
        })
    }
}

impl Container {
    /// Whether the container runs in a VM of its sandbox's (not one of its own).
    pub fn member(&self) -> bool {
        matches!(self.role, Role::Member { .. })
    }
}

/// The VM's name in `fcvm ls`: the container's, when fcvm's name rules take it.
pub fn vm_name(ns: &str, id: &str) -> String {
    let n = format!("ctrd-{ns}-{id}");
    if fcvm::vm::names::validate(&n).is_ok() {
        return n;
    }
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(format!("{ns}/{id}")));
    format!("ctrd-{}", &h[..16])
}
