//! A sandbox: E2B's identity of one (its metadata, environment, access token, lifetime) over
//! one VM of that template ([`super::vm`]), which was launched for it, taken from the
//! template's warm pool ([`super::pool`]), or restored from a snapshot (a resume, a fork, a
//! sandbox made from a snapshot).
//!
//! A paused sandbox ([`Paused`]) has no VM: its identity, the snapshot its pause saved and the
//! processes that snapshot holds. A snapshot ([`Held`]) is removed once nothing holds it any
//! more: neither a paused sandbox, nor a VM that maps its RAM, nor the server's list of
//! snapshots (docs/serve.md).

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::process::{Kept, Processes};
use super::vm::SandboxVm;
use crate::paths::Dirs;
use crate::run::Facts;

/// The create request's parts a sandbox keeps.
pub struct CreateParams {
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub timeout: Duration,
    pub access_token: Option<String>,
    /// At its timeout the sandbox is paused rather than killed.
    pub auto_pause: bool,
}

/// What a sandbox is to E2B, whether it runs or is paused.
pub struct Identity {
    pub id: String,
    pub template_id: String,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub access_token: Option<String>,
    pub started_at: DateTime<Utc>,
    pub auto_pause: bool,
    pub cpus: u32,
    pub mem_mib: u32,
}

pub struct Sandbox {
    pub ident: Arc<Identity>,
    pub vm: SandboxVm,
    pub processes: Arc<Processes>,
    end_at: Mutex<DateTime<Utc>>,
    /// Woken when `end_at` changes.
    pub timer: Notify,
    /// The snapshot the VM was restored from, which it maps (declared after `vm`: dropped
    /// after it).
    _snapshot: Option<Arc<Held>>,
}

impl Deref for Sandbox {
    type Target = Identity;
    fn deref(&self) -> &Identity {
        &self.ident
    }
}

impl Sandbox {
    /// The sandbox `p` asks for, of template `template_id`, on `vm`; its lifetime starts now.
    pub fn new(template_id: &str, vm: SandboxVm, p: CreateParams) -> Sandbox {
        let ident = Identity {
            id: vm.id.clone(),
            template_id: template_id.into(),
            metadata: p.metadata,
            env_vars: p.env_vars,
            access_token: p.access_token,
            started_at: Utc::now(),
            auto_pause: p.auto_pause,
            cpus: vm.cpus,
            mem_mib: vm.mem_mib,
        };
        Sandbox::over(Arc::new(ident), vm, Arc::default(), p.timeout, None)
    }

    /// Sandbox `ident` on `vm` (restored from `snapshot`), running `processes`, ending
    /// `timeout` from now.
    pub fn over(
        ident: Arc<Identity>,
        vm: SandboxVm,
        processes: Arc<Processes>,
        timeout: Duration,
        snapshot: Option<Arc<Held>>,
    ) -> Sandbox {
        Sandbox {
            ident,
            vm,
            processes,
            end_at: Mutex::new(after(Utc::now(), timeout)),
            timer: Notify::new(),
            _snapshot: snapshot,
        }
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
        self.vm.stop();
        // Wakes the watcher, which finds the sandbox gone.
        self.vm.died.notify_one();
    }

    /// Every exec's environment: the container's, the sandbox's `envVars`, then the
    /// request's own `envs` (later entries of a key replace earlier ones).
    pub fn exec_env(&self, request: &BTreeMap<String, String>) -> Vec<String> {
        let mut env: Vec<String> = self.vm.container_env.clone();
        for (k, v) in self.env_vars.iter().chain(request) {
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(key, _)| key) != k);
            env.push(format!("{k}={v}"));
        }
        env
    }
}

/// A snapshot of a sandbox's VM: the processes it holds, the facts of the VM it was taken of,
/// and the snapshot itself, removed when the last holder lets go.
pub struct Frozen {
    pub held: Arc<Held>,
    pub facts: Facts,
    pub kept: Vec<Kept>,
}

/// A snapshot kept as a template (`POST /sandboxes/{id}/snapshots`).
pub struct SnapshotTemplate {
    pub frozen: Frozen,
    /// The sandbox it was taken of.
    pub source: String,
}

/// A paused sandbox: no VM, its pause's snapshot.
pub struct Paused {
    pub ident: Arc<Identity>,
    pub frozen: Frozen,
    pub paused_at: DateTime<Utc>,
}

/// A snapshot in `snapshots/`, removed when dropped.
pub struct Held {
    dirs: Dirs,
    pub name: String,
}

impl Held {
    pub fn new(dirs: &Dirs, name: &str) -> Arc<Held> {
        Arc::new(Held {
            dirs: dirs.clone(),
            name: name.into(),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Held {
    /// Removes the snapshot now (also while a VM still maps its RAM: the kernel keeps the
    /// pages until it unmaps them).
    pub fn remove(&self) {
        let Ok(name) = crate::snapshot::validate_name(&self.name) else {
            return;
        };
        let dir = crate::snapshot::dir(&self.dirs, &name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "snapshot {} not removed",
                    self.name
                );
            }
        }
    }
}

/// `now + d`, saturating (E2B timeouts are at most a day, but a client may ask for more).
pub fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held snapshot is removed with its last holder, and `remove` works while held.
    #[test]
    fn a_snapshot_goes_with_its_last_holder() {
        let d = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(d.path());
        let made = |name: &str| {
            let p = dirs.snapshots().join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join(crate::snapshot::MANIFEST), "{}").unwrap();
            p
        };
        let a = made("sbx-a");
        let held = Held::new(&dirs, "sbx-a");
        let second = held.clone();
        drop(held);
        assert!(a.exists(), "still held");
        drop(second);
        assert!(!a.exists(), "removed with the last holder");
        let b = made("sbx-b");
        let held = Held::new(&dirs, "sbx-b");
        held.remove();
        assert!(!b.exists());
        drop(held);
        // A name that is not a snapshot name removes nothing outside snapshots/.
        let outside = d.path().join("keep");
        std::fs::create_dir_all(&outside).unwrap();
        drop(Held::new(&dirs, "../keep"));
        assert!(outside.exists());
    }
}
