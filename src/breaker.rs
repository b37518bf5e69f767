//! The circuit breaker of a backend (of each member of a partition): after
//! `failure_threshold` consecutive failures to reach it (timeouts, refused
//! or dropped connections) it *opens*: commands to it fail at once, without
//! touching the network, for `cool_down`. Then one command is let through as
//! a probe (*half-open*): its success closes the breaker, its failure opens
//! it again.
//!
//! Only unreachability counts: a server that answers with an error (OOM,
//! NOPERM, ...) is up, and its errors are reported as they are.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// When a backend's breaker opens and for how long.
///
/// ```
/// use std::time::Duration;
/// use tower_sessions_multi_redis_store::BreakerConfig;
///
/// let breaker = BreakerConfig::default().failure_threshold(3).cool_down(Duration::from_secs(2));
/// assert_ne!(breaker, BreakerConfig::disabled());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct BreakerConfig {
    pub(crate) failure_threshold: u32,
    pub(crate) cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: BreakerConfig::DEFAULT_FAILURE_THRESHOLD,
            cool_down: BreakerConfig::DEFAULT_COOL_DOWN,
        }
    }
}

impl BreakerConfig {
    /// Consecutive failures that open a breaker by default.
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;

    /// How long an open breaker skips its backend by default.
    pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(5);

    /// A breaker that never opens.
    pub fn disabled() -> Self {
        BreakerConfig { failure_threshold: 0, cool_down: Duration::ZERO }
    }

    /// Consecutive failures that open the breaker (0: never).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    /// How long an open breaker skips the backend before one probe.
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BreakerState {
    /// Commands go through.
    Closed,
    /// Commands fail at once until the cool-down ends.
    Open,
    /// One probe is in flight; others fail at once.
    HalfOpen,
}

/// `HalfOpen`: a probe went out at `since`. Its request may be dropped
/// before it reports (a client that went away): after another cool-down
/// without a report, the next command probes instead.
#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

/// What [`Breaker::allow`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Go ahead.
    Go,
    /// Go ahead as the probe of a half-open breaker.
    Probe,
    /// Do not send: the breaker is open (for this long at most).
    Refused(Duration),
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
    /// True while closed with no failure counted: the hot path reads only this.
    clean: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Breaker {
        Breaker { config, state: Mutex::new(State::Closed { failures: 0 }), clean: AtomicBool::new(true) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state invalid.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn allow(&self) -> Permit {
        if self.config.failure_threshold == 0 || self.clean.load(Ordering::Acquire) {
            return Permit::Go;
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Permit::Go,
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    Permit::Refused(until - now)
                } else {
                    *state = State::HalfOpen { since: now };
                    Permit::Probe
                }
            }
            State::HalfOpen { since } => {
                let now = Instant::now();
                if now < since + self.config.cool_down {
                    Permit::Refused(Duration::ZERO)
                } else {
                    // The probe never reported: probe again.
                    *state = State::HalfOpen { since: now };
                    Permit::Probe
                }
            }
        }
    }

    /// Records an outcome; returns true when this failure opened the breaker.
    pub(crate) fn record(&self, permit: &Permit, unreachable: bool) -> bool {
        if self.config.failure_threshold == 0 || (!unreachable && self.clean.load(Ordering::Acquire)) {
            return false;
        }
        let mut state = self.lock();
        let opened = self.transition(&mut state, permit, unreachable);
        self.clean.store(matches!(*state, State::Closed { failures: 0 }), Ordering::Release);
        opened
    }

    fn transition(&self, state: &mut State, permit: &Permit, unreachable: bool) -> bool {
        let open = State::Open { until: Instant::now() + self.config.cool_down };
        match (&*state, unreachable) {
            (_, false) => {
                if *permit == Permit::Probe || matches!(state, State::Closed { .. }) {
                    *state = State::Closed { failures: 0 };
                }
                false
            }
            (State::HalfOpen { .. }, true) if *permit == Permit::Probe => {
                *state = open;
                true
            }
            (State::Closed { failures }, true) => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold {
                    *state = open;
                    true
                } else {
                    *state = State::Closed { failures };
                    false
                }
            }
            _ => false,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig::default().failure_threshold(3).cool_down(Duration::from_secs(10)))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_probes_after_the_cool_down() {
        let b = breaker();
        for _ in 0..2 {
            assert!(!b.record(&b.allow(), true));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.record(&b.allow(), true), "third failure trips");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.allow(), Permit::Refused(d) if d == Duration::from_secs(10)));

        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(matches!(b.allow(), Permit::Refused(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.allow();
        assert_eq!(probe, Permit::Probe);
        assert!(matches!(b.allow(), Permit::Refused(_)), "one probe at a time");
        assert!(b.record(&probe, true), "failed probe opens again");
        assert_eq!(b.state(), BreakerState::Open);

        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.allow();
        assert!(!b.record(&probe, false));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.allow(), Permit::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_before_it_reports_does_not_keep_the_breaker_half_open() {
        let b = breaker();
        for _ in 0..3 {
            b.record(&b.allow(), true);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        // The probe's request is cancelled: no record() follows.
        assert_eq!(b.allow(), Permit::Probe);
        assert!(matches!(b.allow(), Permit::Refused(_)), "still one probe at a time");
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.allow();
        assert_eq!(probe, Permit::Probe, "a new probe after another cool-down");
        assert!(!b.record(&probe, false));
        assert_eq!(b.allow(), Permit::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_and_answers_do_not_count() {
        let b = breaker();
        b.record(&b.allow(), true);
        b.record(&b.allow(), true);
        b.record(&b.allow(), false);
        b.record(&b.allow(), true);
        b.record(&b.allow(), true);
        assert_eq!(b.state(), BreakerState::Closed);
        let off = Breaker::new(BreakerConfig::disabled());
        for _ in 0..100 {
            off.record(&off.allow(), true);
        }
        assert_eq!(off.allow(), Permit::Go);
    }
}
