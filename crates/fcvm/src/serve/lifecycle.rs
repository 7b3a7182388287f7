//! Pause, resume, fork and snapshots: fcvm snapshots of a sandbox's VM (docs/serve.md).
//!
//! - **pause** saves a snapshot of the VM (fcvm's snapshot path, through the `Vmm` verbs) with
//!   the sandbox's processes as its table holds them, then stops the VM; the sandbox is listed
//!   `paused` and keeps its id, metadata and access token.
//! - **resume** (`/resume`, or `/connect` of a paused sandbox) restores that snapshot under the
//!   same id: files and memory as they were, and every process still running, its agent stream
//!   kept across the restore (`RestorePlan::keep_streams`, docs/design.md §9) and taken over by
//!   a new relay ([`Processes::adopt`]).
//! - **fork** snapshots a running sandbox (it runs on) and restores `count` clones of it, each
//!   with a new id, hostname, machine-id and RNG seed (fcvm's clone path); **snapshots** keep
//!   such a snapshot as a template that creates restore.
//!
//! A snapshot is removed with its last holder ([`Held`]): the paused sandbox, the VMs that map
//! its RAM, the snapshot list. A client attached to a process when its sandbox pauses sees its
//! stream end; `Connect` after the resume attaches again.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;

use super::process::Processes;
use super::sandbox::{CreateParams, Frozen, Held, Identity, Paused, Sandbox};
use super::vm::{FromSnapshot, SandboxVm};
use super::{ApiError, Server};
use crate::snapshot;

/// Paused sandboxes kept at a time (each holds a snapshot on disk).
pub const MAX_PAUSED: usize = 256;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn conflict(m: String) -> ApiError {
    ApiError(StatusCode::CONFLICT, m)
}

/// One pause, resume or snapshot of a sandbox at a time: a second one waits for the first,
/// then finds the sandbox as the first left it.
struct Changing<'a> {
    server: &'a Server,
    id: String,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl<'a> Changing<'a> {
    async fn take(server: &'a Server, id: &str) -> Changing<'a> {
        let lock = server
            .changing
            .lock()
            .expect("changing")
            .entry(id.into())
            .or_default()
            .clone();
        Changing {
            server,
            id: id.into(),
            _turn: lock.lock_owned().await,
        }
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        let mut all = self.server.changing.lock().expect("changing");
        // Only the table and this guard's lock hold it: nobody waits for a turn.
        if all.get(&self.id).is_some_and(|l| Arc::strong_count(l) <= 2) {
            all.remove(&self.id);
        }
    }
}

/// Snapshots the running `sbx` under a fresh name; its VM runs on.
async fn freeze(s: &Server, sbx: &Sandbox) -> Result<Frozen, ApiError> {
    let name = format!("sbx-{}", hex::encode(rand::random::<[u8; 8]>()));
    // The table before the snapshot: a process started after it is not taken over (its
    // stream is killed at the restore); one that ended is answered "No such stream".
    let kept = sbx.processes.kept();
    let held = Held::new(&s.dirs, &name);
    {
        let mut taken = s.taken.lock().expect("taken");
        taken.retain(|h| h.strong_count() > 0);
        taken.push(Arc::downgrade(&held));
    }
    sbx.vm.snapshot(&s.dirs, &name).await.map_err(|e| {
        tracing::error!(sandbox = sbx.id, "snapshot failed: {e:#}");
        internal(format!("snapshot of sandbox {} failed: {e:#}", sbx.id))
    })?;
    Ok(Frozen {
        held,
        facts: sbx.vm.facts.clone(),
        kept,
    })
}

/// Pauses running sandbox `id`: 409 if it is paused already.
pub(super) async fn pause(s: &Arc<Server>, id: &str) -> Result<(), ApiError> {
    let _one = Changing::take(s, id).await;
    {
        let paused = s.paused.lock().expect("paused");
        if paused.contains_key(id) {
            return Err(conflict(format!("sandbox {id} is already paused")));
        }
        if paused.len() >= MAX_PAUSED {
            return Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                format!("at most {MAX_PAUSED} sandboxes may be paused: kill one"),
            ));
        }
    }
    let sbx = s.get(id).ok_or_else(|| ApiError::not_found(id))?;
    let frozen = freeze(s, &sbx).await?;
    {
        let mut running = s.sandboxes.lock().expect("sandboxes");
        if !running.get(id).is_some_and(|x| Arc::ptr_eq(x, &sbx)) {
            // Killed while its snapshot was taken: the snapshot goes with `frozen`.
            return Err(ApiError::not_found(id));
        }
        running.remove(id);
        let p = Paused {
            ident: sbx.ident.clone(),
            frozen,
            paused_at: Utc::now(),
        };
        s.paused
            .lock()
            .expect("paused")
            .insert(id.into(), Arc::new(p));
    }
    sbx.stop();
    tracing::info!(sandbox = id, "sandbox paused");
    Ok(())
}

/// Resumes paused sandbox `id` with `timeout`; None if it is not paused.
pub(super) async fn resume(
    s: &Arc<Server>,
    id: &str,
    timeout: Duration,
) -> Result<Option<Arc<Sandbox>>, ApiError> {
    let _one = Changing::take(s, id).await;
    let Some(p) = s.paused.lock().expect("paused").get(id).cloned() else {
        return Ok(None);
    };
    let slot = super::body::Slot::take(s)?;
    let sbx = restore(s, p.ident.clone(), &p.frozen, false, timeout).await?;
    {
        let mut running = s.sandboxes.lock().expect("sandboxes");
        if s.paused.lock().expect("paused").remove(id).is_none() {
            // Killed while it was being restored.
            drop(running);
            sbx.stop();
            return Err(ApiError::not_found(id));
        }
        running.insert(id.into(), sbx.clone());
    }
    s.watch(sbx.clone());
    drop(slot);
    tracing::info!(sandbox = id, "sandbox resumed");
    Ok(Some(sbx))
}

/// Restores `frozen` as sandbox `ident` (a clone: with a new identity), its processes taken
/// over.
async fn restore(
    s: &Server,
    ident: Arc<Identity>,
    frozen: &Frozen,
    clone: bool,
    timeout: Duration,
) -> Result<Arc<Sandbox>, ApiError> {
    let name = snapshot::validate_name(&frozen.held.name).map_err(internal)?;
    let (dir, manifest) = snapshot::load(&s.dirs, &name).map_err(internal)?;
    let from = FromSnapshot {
        dir: &dir,
        manifest: &manifest,
        facts: &frozen.facts,
        clone,
        keep_streams: frozen.kept.iter().map(|k| k.stream).collect(),
    };
    let vm = SandboxVm::restore(&s.dirs, &ident.id, from)
        .await
        .map_err(|e| {
            tracing::error!(sandbox = ident.id, "restore failed: {e:#}");
            internal(format!("{e:#}"))
        })?;
    let processes = Processes::adopt(&vm.session, &frozen.kept);
    Ok(Arc::new(Sandbox::over(
        ident,
        vm,
        processes,
        timeout,
        Some(frozen.held.clone()),
    )))
}

/// A new sandbox of template `template_id` restored from `frozen` with a new identity.
pub(super) async fn clone_of(
    s: &Arc<Server>,
    frozen: &Frozen,
    template_id: &str,
    p: CreateParams,
) -> Result<Arc<Sandbox>, ApiError> {
    let slot = super::body::Slot::take(s)?;
    let ident = Arc::new(Identity {
        id: crate::vm::new_id(),
        template_id: template_id.into(),
        metadata: p.metadata,
        env_vars: p.env_vars,
        access_token: p.access_token,
        started_at: Utc::now(),
        auto_pause: p.auto_pause,
        cpus: frozen.facts.cpus,
        mem_mib: frozen.facts.mem_mib,
    });
    let sbx = restore(s, ident, frozen, true, p.timeout).await?;
    s.insert(sbx.clone());
    drop(slot);
    tracing::info!(sandbox = sbx.id, template = template_id, "sandbox cloned");
    Ok(sbx)
}

/// Snapshots running sandbox `id` for a fork or a snapshot template.
pub(super) async fn snapshot_of(s: &Arc<Server>, id: &str) -> Result<Frozen, ApiError> {
    // Not while it is being paused (or another snapshot of it is taken): one at a time.
    let _one = Changing::take(s, id).await;
    let sbx = match s.get(id) {
        Some(x) => x,
        None if s.paused.lock().expect("paused").contains_key(id) => {
            return Err(conflict(format!("sandbox {id} is paused")))
        }
        None => return Err(ApiError::not_found(id)),
    };
    freeze(s, &sbx).await
}
