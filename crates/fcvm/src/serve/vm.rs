//! The VM under a sandbox: launched the way `fcvm podman run` launches one (restored from the
//! image-cache snapshot of its template when there is one, else booted cold and snapshotted for
//! the next), its container's main process idling (`sleep infinity`) while the SDK's commands
//! run as container execs ([`super::process`]).
//!
//! A paused sandbox comes back with [`SandboxVm::restore`] from the snapshot its pause saved
//! ([`SandboxVm::snapshot`]), under the same id; a fork or a sandbox made from a snapshot the
//! same way under a new one, with a new identity (fcvm's clone path, docs/design.md §9).
//!
//! The VM appears in `fcvm ls` as `sbx-<id>` and serves `fcvm exec` like any other.
//! [`SandboxVm::stop`] (or dropping it) quits it and removes its directory, network and name.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use fcvm_proto::{Msg, ProcessSpec, Target};
use tokio::sync::Notify;

use super::template::Template;
use crate::exec::server::ExecServer;
use crate::paths::Dirs;
use crate::run::{launch, DirGuard, Facts};
use crate::session::{Process, Session};
use crate::snapshot::{self, restore, Manifest, SnapshotKind};
use crate::vm::names::NameLock;
use crate::vm::{VmDir, VmState, VmStatus};
use crate::vmm::{self, Vmm};

pub struct SandboxVm {
    /// The VM's id, which is also the sandbox's id.
    pub id: String,
    pub cpus: u32,
    pub mem_mib: u32,
    pub session: Arc<Session>,
    /// The container's environment: every exec starts from it.
    pub container_env: Vec<String>,
    /// Woken once the container's main process ended (the VM is of no use any more).
    pub died: Arc<Notify>,
    dead: Arc<AtomicBool>,
    vm: Arc<dyn Vmm>,
    /// What the VM is made of (its snapshots' manifests are made from it).
    pub facts: Facts,
    parts: Mutex<Option<Parts>>,
}

/// What [`SandboxVm::stop`] tears down, in order.
struct Parts {
    state: VmState,
    dir: VmDir,
    _exec: ExecServer,
    _container: AbortOnDrop,
    _net: crate::network::Network,
    _guard: DirGuard,
    _name: NameLock,
}

/// A snapshot a sandbox VM comes back from ([`SandboxVm::restore`]).
pub struct FromSnapshot<'a> {
    pub dir: &'a Path,
    pub manifest: &'a Manifest,
    /// The facts of the VM it was taken of.
    pub facts: &'a Facts,
    /// A clone (fork, sandbox from a snapshot) gets a new hostname and machine-id; a resumed
    /// sandbox keeps its own.
    pub clone: bool,
    /// The streams of its commands, which go on running (docs/design.md §9).
    pub keep_streams: Vec<u32>,
}

impl SandboxVm {
    /// Launches a VM of template `t`; returns once its container runs.
    pub async fn launch(dirs: &Dirs, t: &Template) -> Result<SandboxVm> {
        let id = crate::vm::new_id();
        let mut up = Up::new(dirs, &id, &t.facts)?;
        let launched = launch::launch(
            dirs,
            &up.vmdir,
            &mut up.state,
            &up.facts,
            &up.net,
            &up.name,
            true,
        )
        .await
        .with_context(|| format!("Sandbox {id}"))?;
        let vm = launched.vm.clone();
        let session = Arc::new(launched.session);
        let mut main = session.start(t.idle.clone(), Target::Container).await;
        if !main.wait_started().await {
            vm.quit();
            let why = match main.recv().await {
                Some(Msg::Error { message, .. }) => message,
                Some(Msg::Exit { code, .. }) => format!("exited with {code}"),
                _ => "the VM's agent went away".into(),
            };
            anyhow::bail!("Sandbox {id}: the container did not start: {why}");
        }
        up.finish(id, vm, session, main)
    }

    /// Restores snapshot `from` as the VM of sandbox `id` (its container running as it was
    /// in the snapshot); returns once the agent completed the restore handshake.
    pub async fn restore(dirs: &Dirs, id: &str, from: FromSnapshot<'_>) -> Result<SandboxVm> {
        let mut up = Up::new(dirs, id, from.facts)?;
        let mut plan = restore::plan(from.clone.then(|| up.name.clone()), up.net.guest.clone());
        if !from.clone {
            plan.machine_id = None;
        }
        plan.keep_streams = from.keep_streams;
        let r = restore::restore(
            from.dir,
            from.manifest,
            &up.vmdir.path,
            up.net.nic.clone(),
            plan,
            launch::new_epoch(),
            &vmm::boot,
        )
        .await
        .with_context(|| format!("Sandbox {id}"))?;
        // Requests the agent resent for the new epoch wait in the session's queue until now.
        crate::map::serve(&r.session, &from.facts.shape.maps, r.vm.pid());
        up.state.snapshot = Some(from.manifest.name.clone());
        if let Err(e) = launch::record_vmm(&up.vmdir, &mut up.state, &*r.vm) {
            r.vm.quit();
            return Err(e).context("Cannot record the restored VM");
        }
        let session = Arc::new(r.session);
        let main = session.attach(fcvm_proto::CONTAINER_STREAM);
        up.finish(id.to_string(), r.vm, session, main)
    }

    /// Saves a snapshot `name` of the running VM (fcvm's snapshot path, docs/design.md §10);
    /// the VM runs on.
    pub async fn snapshot(&self, dirs: &Dirs, name: &str) -> Result<Manifest> {
        let dir = match self.parts.lock().expect("parts").as_ref() {
            Some(p) => p.dir.path.clone(),
            None => anyhow::bail!("the VM of sandbox {} has stopped", self.id),
        };
        let m = self
            .facts
            .manifest(name, SnapshotKind::User, &format!("sbx-{}", self.id), true);
        let nic = self.facts.nic.as_ref();
        let made = snapshot::create::create(dirs, &*self.vm, &dir, m, nic, &vmm::boot).await?;
        Ok(made)
    }

    /// Runs `warm` (the SDK's first command, with nothing to do) to its end: a VM restored
    /// from a snapshot translates the exec path once (docs/design.md §2), and a pooled VM pays
    /// that before its hand-over rather than in the user's first command. Best effort: an
    /// image without the command is simply not warmed.
    pub async fn warm(&self, warm: &ProcessSpec) {
        let mut p = self
            .session
            .start(warm.clone(), Target::ContainerExec)
            .await;
        while let Some(m) = p.recv().await {
            if matches!(m, Msg::Exit { .. } | Msg::Error { .. }) {
                break;
            }
        }
    }

    /// Whether the container's main process ended.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Stops the VM and removes everything it had; a second call does nothing.
    pub fn stop(&self) {
        let Some(mut parts) = self.parts.lock().expect("parts").take() else {
            return;
        };
        parts.state.status = VmStatus::Stopping;
        let _ = parts.dir.write_state(&parts.state);
        self.vm.quit();
        // Dropping the parts: exec socket, container watcher, network, directory, name.
        drop(parts);
    }
}

impl Drop for SandboxVm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A sandbox VM's directory, name, network and state, made before its VMM starts and
/// removed again if it never does.
struct Up {
    name: String,
    name_lock: NameLock,
    vmdir: VmDir,
    guard: DirGuard,
    net: crate::network::Network,
    facts: Facts,
    state: VmState,
}

impl Up {
    fn new(dirs: &Dirs, id: &str, facts: &Facts) -> Result<Up> {
        let name = format!("sbx-{id}");
        let name_lock = crate::vm::names::claim(dirs, &name)?;
        let net_plan = crate::network::check(&crate::network::NetworkOptions::default())?;
        let vmdir = VmDir::new(dirs, id);
        let guard = DirGuard(vmdir.clone());
        crate::owner_only::create_dir(&vmdir.path).context("Cannot create the VM directory")?;
        let net = crate::network::setup(&net_plan, &vmdir.path, id)?;
        let mut facts = facts.clone();
        facts.nic = net.nic.clone();
        let mut state = crate::run::new_state(id, &name, &facts);
        state.network = Some(net.info.clone());
        Ok(Up {
            name,
            name_lock,
            vmdir,
            guard,
            net,
            facts,
            state,
        })
    }

    /// The VM runs and its session is open; `main` is its container's main process.
    fn finish(
        self,
        id: String,
        vm: Arc<dyn Vmm>,
        session: Arc<Session>,
        mut main: Process,
    ) -> Result<SandboxVm> {
        // The main process idles; once it ends the container is gone and so is the sandbox.
        let died = Arc::new(Notify::new());
        let dead = Arc::new(AtomicBool::new(false));
        let (d, dd) = (died.clone(), dead.clone());
        let container = AbortOnDrop(tokio::spawn(async move {
            while let Some(m) = main.recv().await {
                if matches!(m, Msg::Exit { .. } | Msg::Error { .. }) {
                    break;
                }
            }
            dd.store(true, Ordering::SeqCst);
            d.notify_one();
        }));
        let exec = crate::exec::server::serve(
            &self.vmdir.path.join(crate::exec::server::EXEC_SOCK),
            session.clone(),
            self.facts.container_env.clone(),
            None,
        );
        let exec = match exec {
            Ok(e) => e,
            Err(e) => {
                vm.quit();
                return Err(e).context("Cannot open the exec socket");
            }
        };
        let mut state = self.state;
        state.status = VmStatus::Running;
        self.vmdir.write_state(&state)?;
        Ok(SandboxVm {
            id,
            cpus: self.facts.cpus,
            mem_mib: self.facts.mem_mib,
            session,
            container_env: self.facts.container_env.clone(),
            died,
            dead,
            vm,
            facts: self.facts,
            parts: Mutex::new(Some(Parts {
                state,
                dir: self.vmdir,
                _exec: exec,
                _container: container,
                _net: self.net,
                _guard: self.guard,
                _name: self.name_lock,
            })),
        })
    }
}

/// Aborts a task when its owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
