//! Reused threads for short-lived work: exec starts, output pumps, stdin loops, probes.
//!
//! Every exec used to create two or three threads, and under TCG a thread costs the guest
//! real time: `clone`, a stack `mmap` with its guard page, and the `munmap` at exit, each
//! emulated (and, right after a restore, each kernel path translated first: ~1,600
//! translation blocks, 8 % of a cached start). A thread that finishes a job waits for the
//! next one instead, up to [`MAX_IDLE`] of them; [`prestart`] makes one before a snapshot so
//! the restored VM's first Start finds it waiting.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

pub type Job = Box<dyn FnOnce() + Send>;

/// Idle threads kept; more exit when their job is done.
const MAX_IDLE: usize = 8;

struct Pool {
    tx: Mutex<Sender<Job>>,
    rx: Mutex<Receiver<Job>>,
    /// Threads waiting for a job and not yet promised one.
    idle: AtomicUsize,
}

fn global() -> &'static Arc<Pool> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    POOL.get_or_init(Pool::new)
}

/// Runs `job` on an idle thread, or on a new one if none is idle.
pub fn run(job: Job) -> std::io::Result<()> {
    global().run(job)
}

/// Starts `n` threads that wait for jobs.
pub fn prestart(n: usize) {
    for _ in 0..n {
        let _ = global().spawn(None);
    }
}

impl Pool {
    fn new() -> Arc<Pool> {
        let (tx, rx) = channel();
        Arc::new(Pool {
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
            idle: AtomicUsize::new(0),
        })
    }

    fn run(self: &Arc<Self>, job: Job) -> std::io::Result<()> {
        // Promise the job to one idle thread: it is counted out before the job is sent, so
        // two callers never count on the same thread.
        let take = |n: usize| n.checked_sub(1);
        if self.idle.fetch_update(SeqCst, SeqCst, take).is_ok() {
            if let Ok(tx) = self.tx.lock() {
                if tx.send(job).is_ok() {
                    return Ok(());
                }
            }
            return Err(std::io::Error::other("thread pool closed"));
        }
        self.spawn(Some(job))
    }

    fn spawn(self: &Arc<Self>, first: Option<Job>) -> std::io::Result<()> {
        let p = self.clone();
        std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || {
                if let Some(job) = first {
                    job();
                }
                loop {
                    // Join the idle count only if there is room: once counted, a caller may
                    // have promised this thread a job, so it can never back out.
                    let join = |n: usize| (n < MAX_IDLE).then_some(n + 1);
                    if p.idle.fetch_update(SeqCst, SeqCst, join).is_err() {
                        return;
                    }
                    let job = match p.rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    #[test]
    fn runs_every_job_and_reuses_idle_threads() {
        let pool = Pool::new();
        let run = |job: Job| pool.run(job);
        let (tx, rx) = sync_channel(64);
        for i in 0..20 {
            let tx = tx.clone();
            run(Box::new(move || {
                let _ = tx.send((i, std::thread::current().id()));
            }))
            .unwrap();
        }
        let mut got: Vec<_> = (0..20)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort_by_key(|(i, _)| *i);
        assert_eq!(
            got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
        // Sequential jobs after the burst run on threads that already exist.
        let wait_idle = || {
            let t0 = std::time::Instant::now();
            while pool.idle.load(SeqCst) == 0 && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let before: std::collections::HashSet<_> = got.iter().map(|(_, t)| *t).collect();
        for i in 0..5 {
            wait_idle();
            let tx = tx.clone();
            run(Box::new(move || {
                let _ = tx.send((i, std::thread::current().id()));
            }))
            .unwrap();
            let (_, t) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(before.contains(&t), "job {i} ran on a new thread");
        }
    }

    #[test]
    fn bursts_beyond_the_idle_cap_lose_no_job() {
        let pool = Pool::new();
        let (tx, rx) = sync_channel(1024);
        for round in 0..20 {
            for i in 0..(3 * MAX_IDLE) {
                let tx = tx.clone();
                pool.run(Box::new(move || {
                    let _ = tx.send(round * 100 + i);
                }))
                .unwrap();
            }
        }
        for _ in 0..20 * 3 * MAX_IDLE {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("a job was lost");
        }
        assert!(pool.idle.load(SeqCst) <= MAX_IDLE);
        // And the pool still runs jobs afterwards.
        let (tx2, rx2) = sync_channel(1);
        pool.run(Box::new(move || {
            let _ = tx2.send(());
        }))
        .unwrap();
        rx2.recv_timeout(Duration::from_secs(10))
            .expect("pool dead");
    }

    #[test]
    fn jobs_that_block_do_not_hold_up_others() {
        let pool = Pool::new();
        let run = |job: Job| pool.run(job);
        let (block_tx, block_rx) = sync_channel::<()>(0);
        run(Box::new(move || {
            let _ = block_rx.recv();
        }))
        .unwrap();
        let (tx, rx) = sync_channel(1);
        run(Box::new(move || {
            let _ = tx.send(7);
        }))
        .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
        drop(block_tx);
    }
}
