//! The warm pool of one template (`fcvm serve --pool N`): up to N VMs launched, their
//! container idling and their exec path warmed ([`SandboxVm::warm`]), waiting for a create to
//! take one. A create then only hands a running VM over: no restore, no first translation.
//!
//! One refill task per template keeps the pool full: it launches a VM whenever the pool has
//! fewer than N, one at a time (a launch competes with the sandboxes for the host's CPUs), and
//! sleeps until a create takes one. A VM whose container died while waiting is dropped at
//! the next take. A failed launch is retried after [`RETRY`]: the error is logged, and creates
//! meanwhile launch their own VMs as without a pool.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::template::Template;
use super::vm::SandboxVm;
use crate::paths::Dirs;

/// How long the refill waits after a failed launch.
const RETRY: Duration = Duration::from_secs(5);

pub struct Pool {
    size: usize,
    ready: Mutex<VecDeque<SandboxVm>>,
    /// Woken when a VM was taken.
    taken: Notify,
}

impl Pool {
    pub fn new(size: usize) -> Arc<Pool> {
        Arc::new(Pool {
            size,
            ready: Mutex::default(),
            taken: Notify::new(),
        })
    }

    /// A waiting VM, if there is a live one.
    pub fn take(&self) -> Option<SandboxVm> {
        let mut ready = self.ready.lock().expect("pool");
        let vm = loop {
            match ready.pop_front() {
                // Dropping a dead one stops it and removes what it had.
                Some(vm) if vm.is_dead() => continue,
                other => break other,
            }
        };
        drop(ready);
        self.taken.notify_one();
        vm
    }

    fn len(&self) -> usize {
        self.ready.lock().expect("pool").len()
    }

    /// Stops every waiting VM.
    pub fn clear(&self) {
        let drained: Vec<SandboxVm> = self.ready.lock().expect("pool").drain(..).collect();
        drop(drained);
    }

    /// Keeps the pool full until the task is aborted.
    pub fn spawn_refill(self: &Arc<Self>, dirs: Dirs, t: Template) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                if pool.len() >= pool.size {
                    pool.taken.notified().await;
                    continue;
                }
                match SandboxVm::launch(&dirs, &t).await {
                    Ok(vm) => {
                        vm.warm(&t.warm).await;
                        tracing::info!(template = t.id, vm = vm.id, "pooled VM ready");
                        pool.ready.lock().expect("pool").push_back(vm);
                    }
                    Err(e) => {
                        tracing::warn!(template = t.id, "pooled VM not launched: {e:#}");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        })
    }
}
