//! Output credit of one process stream (protocol 5; the rule is in `fcvm_proto`'s docs): how
//! many more bytes of `Stdout`/`Stderr` payload the host takes. The stream starts with
//! [`fcvm_proto::INITIAL_OUTPUT_CREDIT`]; every `Credit(n)` from the host adds n. The output
//! pump ([`crate::pump`]) reads no more of the process's pipe than it may send, and waits here
//! while it may send nothing: the process then blocks in its own write, and only its stream
//! stalls. A leaf: it names no other module.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub struct Credit {
    state: Mutex<State>,
    /// Signalled when bytes are granted or the limit is lifted.
    granted: Condvar,
}

struct State {
    bytes: u64,
    /// No limit: the stream was cancelled, its output is discarded (the process must not
    /// block on a pipe nobody reads any more).
    unlimited: bool,
}

impl Credit {
    pub fn new(bytes: u32) -> Credit {
        Credit {
            state: Mutex::new(State {
                bytes: bytes.into(),
                unlimited: false,
            }),
            granted: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host's `Credit(n)`.
    pub fn grant(&self, n: u32) {
        let mut st = self.lock();
        st.bytes = st.bytes.saturating_add(n.into());
        self.granted.notify_all();
    }

    /// Starts over at `bytes` (a new epoch: its host knows nothing of what the old one granted).
    pub fn reset(&self, bytes: u32) {
        let mut st = self.lock();
        st.bytes = bytes.into();
        self.granted.notify_all();
    }

    /// Lifts the limit for good (the stream was cancelled).
    pub fn unlimit(&self) {
        self.lock().unlimited = true;
        self.granted.notify_all();
    }

    /// How many bytes may be sent now; while none, waits up to `timeout` for a grant (and then
    /// returns 0 if none came).
    pub fn available(&self, timeout: Duration) -> usize {
        let st = self.lock();
        let (st, _) = self
            .granted
            .wait_timeout_while(st, timeout, |s| s.bytes == 0 && !s.unlimited)
            .unwrap_or_else(|e| e.into_inner());
        if st.unlimited {
            usize::MAX
        } else {
            usize::try_from(st.bytes).unwrap_or(usize::MAX)
        }
    }

    /// `n` bytes were sent.
    pub fn spend(&self, n: usize) {
        let mut st = self.lock();
        st.bytes = st.bytes.saturating_sub(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn spends_grants_and_waits_for_a_grant() {
        let c = Arc::new(Credit::new(10));
        assert_eq!(c.available(Duration::ZERO), 10);
        c.spend(10);
        assert_eq!(c.available(Duration::from_millis(20)), 0, "none left");
        c.grant(5);
        c.grant(7);
        assert_eq!(c.available(Duration::ZERO), 12);
        c.spend(12);
        let g = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            g.grant(3);
        });
        let t0 = Instant::now();
        assert_eq!(
            c.available(Duration::from_secs(30)),
            3,
            "woken by the grant"
        );
        assert!(t0.elapsed() < Duration::from_secs(30));
        t.join().unwrap();
        c.reset(100);
        assert_eq!(c.available(Duration::ZERO), 100);
        c.spend(1000);
        assert_eq!(c.available(Duration::ZERO), 0, "never below zero");
        c.unlimit();
        assert_eq!(c.available(Duration::ZERO), usize::MAX);
    }
}
