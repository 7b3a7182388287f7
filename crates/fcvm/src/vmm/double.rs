//! A test double of [`Vmm`] for unit tests of the logic above the seam (snapshot, restore,
//! rehydrate): it records every verb, writes a small file for a saved state, and fails the
//! verb it is told to. No process runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{StateScope, VmSpec, Vmm, VmmError, VmmFuture, VmmKind};

/// Everything the doubles of one test did, in order (`"helper: load WithRam"`, …).
#[derive(Default, Clone)]
pub struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    pub fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

pub struct Double {
    pub label: String,
    pub spec: VmSpec,
    pub journal: Journal,
    /// The verb that fails (`"pause"`, `"save"`, `"load"`, `"resume"`).
    pub fail: Option<&'static str>,
}

impl Double {
    fn verb(&self, verb: &'static str, detail: String) -> Result<(), VmmError> {
        self.journal.push(format!("{}: {verb}{detail}", self.label));
        if self.fail == Some(verb) {
            let e = std::io::Error::other(format!("{verb} refused"));
            return Err(VmmError::Control("drive", Box::new(e)));
        }
        Ok(())
    }
}

impl Vmm for Double {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }
    fn pid(&self) -> u32 {
        0
    }
    fn agent_socket(&self) -> PathBuf {
        self.spec.dir.join("agent.sock")
    }
    fn try_exited(&self) -> Option<String> {
        None
    }
    fn pause(&self) -> VmmFuture<'_, ()> {
        Box::pin(async move { self.verb("pause", String::new()) })
    }
    fn resume(&self) -> VmmFuture<'_, ()> {
        Box::pin(async move { self.verb("resume", String::new()) })
    }
    fn save_state<'a>(&'a self, path: &'a Path, scope: StateScope) -> VmmFuture<'a, ()> {
        Box::pin(async move {
            self.verb("save", format!(" {scope:?}"))?;
            std::fs::write(path, b"state").map_err(|e| VmmError::Control("save", Box::new(e)))
        })
    }
    fn load_state<'a>(&'a self, path: &'a Path, scope: StateScope) -> VmmFuture<'a, ()> {
        Box::pin(async move {
            self.verb("load", format!(" {scope:?}"))?;
            std::fs::read(path)
                .map(drop)
                .map_err(|e| VmmError::Control("load", Box::new(e)))
        })
    }
    fn quit(&self) {
        self.journal.push(format!("{}: quit", self.label));
    }
    fn last_message(&self) -> Option<String> {
        self.fail.map(|v| format!("{v} said no"))
    }
}
