//! Health monitor (stub until the exec/health issue lands).

use std::sync::Arc;
use std::time::Duration;

use crate::session::Session;
use crate::vm::Health;

#[derive(Debug, Clone, Default)]
pub struct HealthFlags {
    pub check_url: Option<String>,
    pub cmd: Option<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

/// Runs until dropped; reports every change of health through the callback.
pub struct Monitor {
    _task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(t) = &self._task {
            t.abort();
        }
    }
}

pub fn spawn(
    _session: Arc<Session>,
    _flags: &HealthFlags,
    _image: &crate::image::ImageConfig,
    _on_change: Box<dyn Fn(Health) + Send + Sync>,
) -> Monitor {
    Monitor { _task: None }
}
