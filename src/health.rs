//! What the store saw of each backend: counters of hits, misses, copies and
//! failures, and the health report built from them (no network traffic).

use serde::Serialize;

use crate::mode::Modes;

use crate::breaker::BreakerState;

/// Counts of what happened on one backend since the store was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BackendCounters {
    /// `load` found the session here.
    pub hits: u64,
    /// `load` asked here and the session was not here.
    pub misses: u64,
    /// Sessions copied here (copy-on-read, or a save of a not-yet-migrated session).
    pub copies: u64,
    /// Commands that failed (including timeouts and refusals by the breaker).
    pub errors: u64,
    /// Commands that timed out.
    pub timeouts: u64,
    /// Times the circuit breaker opened.
    pub breaker_trips: u64,
    /// Entries of the per-user index removed here because their session was
    /// gone without a logout (expired, or moved away).
    pub index_pruned: u64,
}

/// A counter of [`BackendCounters`], for [`Node::count`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Hit,
    Miss,
    Copy,
    Error,
    Timeout,
    BreakerTrip,
    IndexPruned,
}

/// The health of one backend, from what the store saw (no network traffic):
/// see [`MultiRedisStore::health`](crate::MultiRedisStore::health).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct BackendHealth {
    /// The backend's name.
    pub name: String,
    /// Its modes (serialized as e.g. `"read+delete"`).
    pub modes: Modes,
    /// Whether its last command succeeded and its breaker is not open (its
    /// cool-down is over when half-open); a partition's: whether that holds
    /// for some member.
    pub up: bool,
    /// Its circuit breaker (a partition's: its worst member's).
    pub breaker: BreakerState,
    /// The last error, if the last command failed.
    pub last_error: Option<String>,
    /// What happened on it so far.
    pub counters: BackendCounters,
}
