//! The [`Vmm`](crate::vmm::Vmm) lifecycle verbs for QEMU, over QMP (docs/design.md §5).
//!
//! - pause / resume: `stop` / `cont`.
//! - save state: `x-ignore-shared` on for [`StateScope::Devices`] (RAM stays in the VM's
//!   shared RAM file; the stream holds ~60 KB of device state) or off for
//!   [`StateScope::WithRam`] (a VM that maps its snapshot's RAM copy-on-write has its
//!   changed pages only in QEMU's memory); then `migrate` into a file fcvm opened and handed
//!   over (`getfd`, `fd:NAME`), and wait for its `MIGRATION` event.
//! - load state: into a QEMU started with `-incoming defer`: the same capability (both ends
//!   of a stream must agree: it changes the format), `migrate-incoming` from a handed-over
//!   file, wait for `completed`. The VM stays paused: a restored VM comes up paused because
//!   its source was stopped when it was saved.
//!
//! One QMP connection per VM, opened at the first verb and kept while the VM is paused (a
//! pause/save/load/resume sequence shares it); [`resume`] closes it, so while the VM runs
//! QEMU's monitor — which serves one client at a time — is free for other clients
//! (`bench/translation.py`, a person debugging). An I/O failure drops it too.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::qmp::{Qmp, QmpError};
use super::{cmdline, Qemu};
use crate::vmm::{StateScope, VmmError};

/// Failure bound for QMP's greeting and for one migration (device state is ~60 KB; a full
/// stream of a few hundred MB takes seconds under load): only ends a hung QEMU.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

fn control(what: &'static str) -> impl FnOnce(QmpError) -> VmmError {
    move |e| VmmError::Control(what, Box::new(e))
}

/// Runs `f` on the VM's QMP connection, connecting first if needed.
async fn with_qmp<T, F>(q: &Qemu, what: &'static str, f: F) -> Result<T, VmmError>
where
    F: for<'c> FnOnce(
        &'c mut Qmp,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, QmpError>> + Send + 'c>,
    >,
{
    let mut guard = q.qmp.lock().await;
    if guard.is_none() {
        let sock = q.dir.join(cmdline::QMP_SOCK);
        *guard = Some(
            Qmp::connect(&sock, STEP_TIMEOUT)
                .await
                .map_err(control(what))?,
        );
    }
    let qmp = guard.as_mut().expect("connected above");
    let r = f(qmp).await;
    if matches!(r, Err(QmpError::Io(_) | QmpError::Closed)) {
        *guard = None;
    }
    r.map_err(control(what))
}

pub(super) async fn pause(q: &Qemu) -> Result<(), VmmError> {
    with_qmp(q, "pause", |m| {
        Box::pin(async move { m.execute("stop", json!({})).await.map(drop) })
    })
    .await
}

pub(super) async fn resume(q: &Qemu) -> Result<(), VmmError> {
    let r = with_qmp(q, "resume", |m| {
        Box::pin(async move { m.execute("cont", json!({})).await.map(drop) })
    })
    .await;
    *q.qmp.lock().await = None;
    r
}

pub(super) async fn save_state(q: &Qemu, path: &Path, scope: StateScope) -> Result<(), VmmError> {
    let file = crate::owner_only::create_file(path)
        .map_err(|e| VmmError::Control("save the state of", Box::new(e)))?;
    with_qmp(q, "save the state of", move |m| {
        Box::pin(async move {
            m.set_ignore_shared(scope == StateScope::Devices).await?;
            m.migrate_to(&file).await?;
            m.wait_migration(STEP_TIMEOUT).await
        })
    })
    .await
}

pub(super) async fn load_state(q: &Qemu, path: &Path, scope: StateScope) -> Result<(), VmmError> {
    let file = std::fs::File::open(path)
        .map_err(|e| VmmError::Control("load the state of", Box::new(e)))?;
    with_qmp(q, "load the state of", move |m| {
        Box::pin(async move {
            m.set_ignore_shared(scope == StateScope::Devices).await?;
            m.migrate_in_from(&file).await?;
            m.wait_migration(STEP_TIMEOUT).await
        })
    })
    .await
}
