//! A sandbox: E2B's identity of one (its metadata,
//! environment, access token, lifetime) over one VM of that template ([`super::vm`]), which
//! was launched for it or taken from the template's warm pool ([`super::pool`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::process::Processes;
use super::template::Template;
use super::vm::SandboxVm;

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
    pub vm: SandboxVm,
    pub processes: Arc<Processes>,
    end_at: Mutex<DateTime<Utc>>,
    /// Woken when `end_at` changes.
    pub timer: Notify,
}

impl Sandbox {
    /// The sandbox `p` asks for, of template `t`, on `vm`; its lifetime starts now.
    pub fn new(t: &Template, vm: SandboxVm, p: CreateParams) -> Sandbox {
        let now = Utc::now();
        Sandbox {
            id: vm.id.clone(),
            template_id: t.id.clone(),
            metadata: p.metadata,
            env_vars: p.env_vars,
            access_token: p.access_token,
            started_at: now,
            vm,
            processes: Arc::default(),
            end_at: Mutex::new(after(now, p.timeout)),
            timer: Notify::new(),
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

/// `now + d`, saturating (E2B timeouts are at most a day, but a client may ask for more).
fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
