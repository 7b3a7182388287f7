//! The VM under a sandbox: launched the way `fcvm podman run` launches one (restored from the
//! image-cache snapshot of its template when there is one, else booted cold and snapshotted for
//! the next), its container's main process idling (`sleep infinity`) while the SDK's commands
//! run as container execs ([`super::process`]).
//!
//! The VM appears in `fcvm ls` as `sbx-<id>` and serves `fcvm exec` like any other.
//! [`SandboxVm::stop`] (or dropping it) quits it and removes its directory, network and name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use fcvm_proto::{Msg, ProcessSpec, Target};
use tokio::sync::Notify;

use super::template::Template;
use crate::exec::server::ExecServer;
use crate::paths::Dirs;
use crate::run::{launch, DirGuard};
use crate::session::Session;
use crate::vm::names::NameLock;
use crate::vm::{VmDir, VmState, VmStatus};
use crate::vmm::Vmm;

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

impl SandboxVm {
    /// Launches a VM of template `t`; returns once its container runs.
    pub async fn launch(dirs: &Dirs, t: &Template) -> Result<SandboxVm> {
        let id = crate::vm::new_id();
        let name = format!("sbx-{id}");
        let name_lock = crate::vm::names::claim(dirs, &name)?;
        let net_plan = crate::network::check(&crate::network::NetworkOptions::default())?;
        let vmdir = VmDir::new(dirs, &id);
        let guard = DirGuard(vmdir.clone());
        crate::owner_only::create_dir(&vmdir.path).context("Cannot create the VM directory")?;
        let net = crate::network::setup(&net_plan, &vmdir.path, &id)?;
        let mut facts = t.facts.clone();
        facts.nic = net.nic.clone();
        let mut state = crate::run::new_state(&id, &name, &facts);
        state.network = Some(net.info.clone());
        let launched = launch::launch(dirs, &vmdir, &mut state, &facts, &net, &name, true)
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
            &vmdir.path.join(crate::exec::server::EXEC_SOCK),
            session.clone(),
            facts.container_env.clone(),
            None,
        )
        .context("Cannot open the exec socket")?;
        state.status = VmStatus::Running;
        vmdir.write_state(&state)?;
        Ok(SandboxVm {
            id,
            cpus: facts.cpus,
            mem_mib: facts.mem_mib,
            session,
            container_env: facts.container_env.clone(),
            died,
            dead,
            vm,
            parts: Mutex::new(Some(Parts {
                state,
                dir: vmdir,
                _exec: exec,
                _container: container,
                _net: net,
                _guard: guard,
                _name: name_lock,
            })),
        })
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

/// Aborts a task when its owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
