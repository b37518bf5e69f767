//! The store's policies: what to do with a session found in a backend that is
//! not written to ([`CopyOnRead`]), with a read backend that fails
//! ([`ReadPolicy`]), and with a write backend that fails ([`WritePolicy`]).

use serde::{Deserialize, Serialize};

/// What `load` does with a session found in a backend that is not written to.
///
/// ```
/// use tower_sessions_multi_redis_store::CopyOnRead;
///
/// assert_eq!(CopyOnRead::default(), CopyOnRead::Copy);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CopyOnRead {
    /// Leave it where it is (a later `save` still writes it into the write
    /// backends). The write backends are still asked, in one script each,
    /// whether a logout left a tombstone or they hold another copy.
    Off,
    /// Copy it into every write backend, keeping its expiry, unless a logout
    /// left a tombstone there (the default).
    #[default]
    Copy,
    /// Copy it, then delete it from the source (when the source has
    /// `delete`) once every write backend holds it.
    Move,
}

/// What `load` does when a read backend fails (error, timeout, open breaker,
/// undecodable value).
///
/// Either way, `load` never answers "not found" after a failure: that would
/// log the user out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReadPolicy {
    /// Ask the next read backend; if none has the session, `Err` (the default).
    #[default]
    FallThrough,
    /// Return the error at once.
    StopOnError,
}

/// When `create` and `save` succeed although a write backend failed.
/// `delete` is not affected: it fails whenever a backend could not forget the
/// session, so a logout that did not happen never looks like it did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WritePolicy {
    /// Every write backend must succeed; `create` undoes its writes otherwise
    /// (the default).
    #[default]
    All,
    /// One write backend is enough, provided it includes the first backend
    /// that reads and writes (`load` asks it first); the failures are logged
    /// and counted.
    Any,
}
