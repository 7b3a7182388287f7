//! A launched VM at work: the container's main process runs (or, in a VM restored with its app
//! running, is attached to), `fcvm exec` and `fcvm snapshot create` are served on the VM's
//! exec socket, the health monitor starts — only now, after the agent confirmed it is ready —
//! and output streams until the container exits. Then the VM is torn down.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use fcvm_proto::{ProcessSpec, Target};

use super::launch::Launched;
use super::Facts;
use crate::attach::{attach, AttachOptions};
use crate::exec::server::{self as exec_server, Snapshotter};
use crate::paths::Dirs;
use crate::snapshot::SnapshotKind;
use crate::vm::{VmDir, VmState, VmStatus};

pub struct Serving<'a> {
    pub dirs: &'a Dirs,
    pub vmdir: &'a VmDir,
    pub state: VmState,
    pub launched: Launched,
    pub facts: &'a Facts,
    /// The container's process to start; None attaches to the one already running.
    pub start: Option<ProcessSpec>,
    pub attach: AttachOptions,
    pub health: &'a crate::health::HealthFlags,
    pub image_config: &'a crate::image::ImageConfig,
    /// Take this startup snapshot after the first healthy check (if it does not exist yet).
    pub startup_snapshot: Option<crate::vm::names::Name>,
    /// `-d`: the ready pipe to report on once the VM runs (`super::detach`).
    pub detached: Option<std::os::fd::RawFd>,
}

#[allow(
    clippy::print_stderr,
    reason = "FCVM_TIMINGS asks for its line on stderr"
)]
pub async fn serve(s: Serving<'_>) -> Result<i32> {
    let Launched {
        vm,
        session,
        restored_from,
        t0,
        t_hello,
        t_ready,
    } = s.launched;
    let mut state = s.state;
    let name = state.name.clone();
    let session = Arc::new(session);
    let fresh = s.start.is_some();
    let mut proc = match s.start {
        Some(spec) => session.start(spec, Target::Container).await,
        None => session.attach(fcvm_proto::CONTAINER_STREAM),
    };
    // Explicit readiness: the VM is "running" (and takes execs) once the agent reported the
    // container created, not when we asked for it. A restored app is already running.
    // A detached run reports only a container that started: one that could not (127, 126)
    // ends here with its code and message, as `podman run -d` does.
    let started = !fresh || proc.wait_started().await;
    let t_started = t0.elapsed();
    let _exec = exec_server::serve(
        &s.vmdir.path.join(exec_server::EXEC_SOCK),
        session.clone(),
        s.facts.container_env.clone(),
        Some(snapshotter(s.dirs, s.vmdir, s.facts, &state, vm.clone())),
    )
    .context("Cannot open the exec socket")?;
    // Only now do `fcvm ls` and `fcvm exec` see it running: its exec socket already listens.
    state.status = VmStatus::Running;
    s.vmdir.write_state(&state)?;
    if let Some(fd) = s.detached.filter(|_| started) {
        super::detach::report_ready(fd, &s.vmdir.path, &state.id)
            .context("Cannot detach from the terminal")?;
    }
    let shared = Arc::new(Mutex::new(state));
    // Only the first healthy result counts: one slot, later ones are not queued.
    let (healthy_tx, mut healthy_rx) = tokio::sync::mpsc::channel::<()>(1);
    let _startup = s.startup_snapshot.map(|snap| {
        // Once, on the first healthy result: the app is up, so the next run can skip its start.
        let (dirs, dir, facts, vm_name, vm) = (
            s.dirs.clone(),
            s.vmdir.path.clone(),
            s.facts.clone(),
            name.clone(),
            vm.clone(),
        );
        AbortOnDrop(tokio::spawn(async move {
            if healthy_rx.recv().await.is_none() {
                return;
            }
            if crate::snapshot::load(&dirs, &snap).is_ok() {
                return;
            }
            let m = facts.manifest(&snap, SnapshotKind::Startup, &vm_name, true);
            let nic = facts.nic.as_ref();
            let boot = &crate::vmm::boot;
            match crate::snapshot::create::create(&dirs, &*vm, &dir, m, nic, boot).await {
                Ok(_) => tracing::info!("startup snapshot {snap} saved"),
                Err(e) => tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "startup snapshot not saved"
                ),
            }
        }))
    });
    let health = {
        let (shared, vmdir) = (shared.clone(), s.vmdir.clone());
        crate::health::spawn(
            session.clone(),
            s.health,
            s.image_config,
            Box::new(move |h| {
                if h == crate::vm::Health::Healthy {
                    let _ = healthy_tx.try_send(());
                }
                let mut st = shared.lock().expect("state");
                st.health = Some(h);
                let _ = vmdir.write_state(&st);
            }),
        )
    };
    let outcome = attach(proc, s.attach).await;
    if std::env::var_os("FCVM_TIMINGS").is_some() {
        eprintln!(
            "fcvm timings: accel={:?} restored_from={} agent_hello_ms={} guest_uptime_ms={} ready_ms={} started_ms={} first_output_ms={} total_ms={}",
            s.facts.accel,
            restored_from.as_deref().unwrap_or("-"),
            t_hello.as_millis(),
            session.info.uptime_ms,
            t_ready.as_millis(),
            t_started.as_millis(),
            outcome
                .first_output
                .map(|t| (t - t0).as_millis() as i64)
                .unwrap_or(-1),
            t0.elapsed().as_millis()
        );
    }

    drop(health);
    let mut state = shared.lock().expect("state").clone();
    state.status = VmStatus::Stopping;
    let _ = s.vmdir.write_state(&state);
    vm.quit();
    match outcome.result {
        Ok(code) => Ok(code),
        Err(e) => {
            let why = vm.try_exited().unwrap_or_default();
            Err(e).with_context(|| format!("VM {name} ({why})"))
        }
    }
}

/// Aborts a background task when the VM stops serving.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `fcvm snapshot create` requests arrive here: the owner snapshots its own VM.
fn snapshotter(
    dirs: &Dirs,
    vmdir: &VmDir,
    facts: &Facts,
    state: &VmState,
    vm: Arc<dyn crate::vmm::Vmm>,
) -> Snapshotter {
    let (dirs, dir, facts, vm_name, labels) = (
        dirs.clone(),
        vmdir.path.clone(),
        facts.clone(),
        state.name.clone(),
        state.labels.clone(),
    );
    Arc::new(move |snap: String| {
        let (dirs, dir, vm) = (dirs.clone(), dir.clone(), vm.clone());
        let mut m = facts.manifest(&snap, SnapshotKind::User, &vm_name, true);
        // Its clones' labels, as an image's labels are its containers' in podman.
        m.labels = labels.clone();
        let nic = facts.nic.clone();
        Box::pin(async move {
            crate::snapshot::create::create(&dirs, &*vm, &dir, m, nic.as_ref(), &crate::vmm::boot)
                .await
                .map(|_| ())
        })
    })
}
