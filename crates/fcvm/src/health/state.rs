//! The health state machine, pure: fed pass/fail results with the time since the monitor
//! started, it says when the health changes and how long to wait for the next probe.
//!
//! - `starting` until the first pass; `healthy` after a pass; `unhealthy` after `retries`
//!   consecutive counted failures; back to `healthy` on any pass.
//! - While starting, failures count on podman's schedule, not the probes': the first one an
//!   interval after the start (and not inside the start period), then at most one per interval.
//!   Probing fast finds `healthy` sooner but never makes a slow starter `unhealthy` sooner than
//!   podman would (its first check runs one interval after the container starts); it also
//!   keeps a probe that races the container's own start from counting.
//! - Probe delay while starting: 100 ms, doubling up to 1 s (never above the interval); after
//!   that, the interval.

use std::time::Duration;

use crate::vm::Health;

/// First delay between probes while starting, and the most it backs off to.
pub const FAST_FIRST: Duration = Duration::from_millis(100);
pub const FAST_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct HealthState {
    health: Health,
    retries: u32,
    interval: Duration,
    start_period: Duration,
    failures: u32,
    /// While starting: the earliest time the next failure counts.
    next_count: Duration,
    fast: Duration,
}

impl HealthState {
    pub fn new(retries: u32, interval: Duration, start_period: Duration) -> Self {
        HealthState {
            health: Health::Starting,
            retries: retries.max(1),
            interval,
            start_period,
            failures: 0,
            next_count: interval,
            fast: FAST_FIRST,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Consecutive failures counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records one probe result at `at` (since the monitor started); the new health if it
    /// changed.
    pub fn record(&mut self, pass: bool, at: Duration) -> Option<Health> {
        if pass {
            self.failures = 0;
            return self.set(Health::Healthy);
        }
        if self.health == Health::Starting {
            if at < self.start_period || at < self.next_count {
                return None;
            }
            self.next_count = at + self.interval;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.retries {
            return self.set(Health::Unhealthy);
        }
        None
    }

    /// How long to wait before the next probe.
    pub fn next_delay(&mut self) -> Duration {
        if self.health != Health::Starting {
            return self.interval;
        }
        let d = self.fast.min(self.interval);
        self.fast = (self.fast * 2).min(FAST_MAX);
        d
    }

    fn set(&mut self, h: Health) -> Option<Health> {
        if self.health == h {
            return None;
        }
        self.health = h;
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pass_makes_healthy_and_retries_make_unhealthy() {
        let mut s = HealthState::new(3, ms(1000), Duration::ZERO);
        assert_eq!(s.health(), Health::Starting);
        assert_eq!(s.record(false, ms(100)), None);
        assert_eq!(s.record(true, ms(200)), Some(Health::Healthy));
        assert_eq!(s.record(true, ms(1100)), None, "no change, no report");
        assert_eq!(s.record(false, ms(2100)), None);
        assert_eq!(s.record(false, ms(3100)), None);
        assert_eq!(s.failures(), 2);
        assert_eq!(s.record(false, ms(4100)), Some(Health::Unhealthy));
        assert_eq!(s.record(false, ms(5100)), None);
        assert_eq!(s.record(true, ms(6100)), Some(Health::Healthy));
        assert_eq!(s.failures(), 0);
        // consecutive means consecutive: a pass in between starts the count again
        s.record(false, ms(7100));
        s.record(false, ms(8100));
        s.record(true, ms(9100));
        s.record(false, ms(10100));
        s.record(false, ms(11100));
        assert_eq!(s.health(), Health::Healthy);
    }

    #[test]
    fn fast_probes_while_starting_count_one_failure_per_interval() {
        let mut s = HealthState::new(2, ms(1000), Duration::ZERO);
        for t in [100, 300, 700] {
            assert_eq!(s.record(false, ms(t)), None);
        }
        assert_eq!(s.failures(), 0, "the first failure counts one interval in");
        assert_eq!(s.record(false, ms(1500)), None);
        assert_eq!(s.failures(), 1);
        for t in [1600, 2000, 2499] {
            assert_eq!(s.record(false, ms(t)), None);
        }
        assert_eq!(s.failures(), 1, "paced to the interval");
        assert_eq!(s.record(false, ms(2500)), Some(Health::Unhealthy));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let mut s = HealthState::new(1, ms(500), ms(3000));
        for t in (0..3000).step_by(250) {
            assert_eq!(s.record(false, ms(t)), None, "at {t} ms");
        }
        assert_eq!(s.failures(), 0);
        assert_eq!(s.record(false, ms(3000)), Some(Health::Unhealthy));

        // a pass inside the start period ends it: later failures count at once
        let mut s = HealthState::new(1, ms(500), ms(60_000));
        assert_eq!(s.record(true, ms(200)), Some(Health::Healthy));
        assert_eq!(s.record(false, ms(700)), Some(Health::Unhealthy));
    }

    #[test]
    fn delays_start_fast_back_off_then_relax() {
        let mut s = HealthState::new(3, Duration::from_secs(30), Duration::ZERO);
        let d: Vec<u64> = (0..7).map(|_| s.next_delay().as_millis() as u64).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000, 1000]);
        s.record(true, ms(10));
        assert_eq!(s.next_delay(), Duration::from_secs(30));
        // never faster than... never slower than the interval either
        let mut s = HealthState::new(3, ms(300), Duration::ZERO);
        let d: Vec<u64> = (0..4).map(|_| s.next_delay().as_millis() as u64).collect();
        assert_eq!(d, [100, 200, 300, 300]);
    }
}
