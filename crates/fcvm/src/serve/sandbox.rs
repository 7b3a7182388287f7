//! One sandbox: one fcvm VM launched the way `fcvm podman run` launches one (restored from the
//! image-cache snapshot of its template when there is one, else booted cold and snapshotted for
//! the next), whose container's main process idles (`sleep infinity`) while the SDK's commands
//! run as container execs ([`super::process`]).
//!
//! The VM appears in `fcvm ls` under the name `sbx-<sandboxID>` and serves `fcvm exec` like any
//! other. [`Sandbox::stop`] quits the VM and removes its directory, network and name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use fcvm_proto::{Msg, ProcessSpec, Target};
use tokio::sync::Notify;

use super::process::Processes;
use crate::exec::ExecServer;
use crate::paths::Dirs;
use crate::run::{launch, DirGuard, Facts};
use crate::session::Session;
use crate::vm::names::NameLock;
use crate::vm::{VmDir, VmState, VmStatus};
use crate::vmm::Vmm;

/// What `templateID` names: an image made ready once, at server start.
#[derive(Clone)]
pub struct Template {
    pub id: String,
    pub image: String,
    pub facts: Facts,
    /// The container's idle main process (the image's environment, `sleep infinity`).
    pub idle: ProcessSpec,
}

impl Template {
    /// Makes image `image` ready (pulled or built, cached) as template `id`.
    pub async fn prepare(
        dirs: &Dirs,
        id: &str,
        image: &str,
        assets: &crate::assets::Assets,
        accel: crate::vmm::Accel,
        (cpus, mem_mib): (u32, u32),
    ) -> Result<Template> {
        let img = crate::image::prepare(dirs, image, &Default::default()).await?;
        let opts = crate::run::RunOptions {
            image: image.into(),
            command: vec!["sleep".into(), "infinity".into()],
            cpus,
            mem_mib,
            ..Default::default()
        };
        // The image's environment, directory and user, podman's way; its entrypoint and
        // command are replaced: the container only has to stay up.
        let mut idle = crate::run::process_spec(&opts, &img.config, vec![])?;
        idle.args = opts.command.clone();
        let facts = Facts {
            backend: crate::vmm::VmmKind::Qemu,
            accel,
            cpus,
            mem_mib,
            assets: assets.clone(),
            image: image.into(),
            image_digest: img.digest.clone(),
            rootfs: img.rootfs.clone(),
            fstype: img.fstype.clone(),
            net_devices: true,
            nic: None,
            container_env: idle.env.clone(),
            // The idle process and the SDK's shell: what a restored sandbox runs first.
            prefetch: vec!["sleep".into(), "/bin/bash".into()],
        };
        Ok(Template {
            id: id.into(),
            image: image.into(),
            facts,
            idle,
        })
    }
}

/// The create request's parts a sandbox keeps.
pub struct CreateParams {
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub timeout: Duration,
    pub access_token: Option<String>,
}

pub struct Sandbox {
    pub id: String,
    pub template_id: String,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub access_token: Option<String>,
    pub started_at: DateTime<Utc>,
    pub cpus: u32,
    pub mem_mib: u32,
    pub session: Arc<Session>,
    pub processes: Arc<Processes>,
    /// The container's environment: every exec starts from it.
    pub container_env: Vec<String>,
    end_at: Mutex<DateTime<Utc>>,
    /// Woken when `end_at` changes.
    pub timer: Notify,
    /// Woken once the container's main process ended (the sandbox is dead).
    pub died: Arc<Notify>,
    vm: Arc<dyn Vmm>,
    parts: Mutex<Option<Parts>>,
}

/// What [`Sandbox::stop`] tears down, in order.
struct Parts {
    state: VmState,
    dir: VmDir,
    _exec: ExecServer,
    _container: AbortOnDrop,
    _net: crate::network::Network,
    _guard: DirGuard,
    _name: NameLock,
}

impl Sandbox {
    /// Launches a sandbox of template `t`; returns once its container runs.
    pub async fn launch(dirs: &Dirs, t: &Template, p: CreateParams) -> Result<Sandbox> {
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
        let mut main = session.start(t.idle.clone(), Target::Container);
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
        let d = died.clone();
        let container = AbortOnDrop(tokio::spawn(async move {
            while let Some(m) = main.recv().await {
                if matches!(m, Msg::Exit { .. } | Msg::Error { .. }) {
                    break;
                }
            }
            d.notify_one();
        }));
        let exec = crate::exec::serve(
            &vmdir.path.join(crate::exec::EXEC_SOCK),
            session.clone(),
            facts.container_env.clone(),
            None,
        )
        .context("Cannot open the exec socket")?;
        state.status = VmStatus::Running;
        vmdir.write_state(&state)?;
        let now = Utc::now();
        Ok(Sandbox {
            id,
            template_id: t.id.clone(),
            metadata: p.metadata,
            env_vars: p.env_vars,
            access_token: p.access_token,
            started_at: now,
            cpus: facts.cpus,
            mem_mib: facts.mem_mib,
            session,
            processes: Arc::default(),
            container_env: facts.container_env.clone(),
            end_at: Mutex::new(after(now, p.timeout)),
            timer: Notify::new(),
            died,
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

    pub fn end_at(&self) -> DateTime<Utc> {
        *self.end_at.lock().expect("end_at")
    }

    /// E2B's timeout: the sandbox ends `timeout` from now (longer or shorter than before).
    pub fn set_timeout(&self, timeout: Duration) {
        *self.end_at.lock().expect("end_at") = after(Utc::now(), timeout);
        self.timer.notify_one();
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

    /// Every exec's environment: the container's, the sandbox's `envVars`, then the
    /// request's own `envs` (later entries of a key replace earlier ones).
    pub fn exec_env(&self, request: &BTreeMap<String, String>) -> Vec<String> {
        let mut env: Vec<String> = self.container_env.clone();
        for (k, v) in self.env_vars.iter().chain(request) {
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(key, _)| key) != k);
            env.push(format!("{k}={v}"));
        }
        env
    }
}

impl Drop for Sandbox {
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

/// `now + d`, saturating (E2B timeouts are at most a day, but a client may ask for more).
fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
