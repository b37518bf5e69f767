//! [`MultiRedisStoreBuilder`]: collects backends and options, validates the
//! whole shape, and connects.

use std::collections::HashSet;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::Error;
use crate::node::Node;
use crate::policy::{CopyOnRead, ReadPolicy, WritePolicy};
use crate::store::{MultiRedisStore, Options};
use crate::users::{UserKey, Users};

/// Describes a [`MultiRedisStore`]; [`build`](Self::build) validates it.
///
/// ```
/// use tower_sessions_multi_redis_store::{Backend, CopyOnRead, Error, Modes, MultiRedisStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // A read backend that `delete` never reaches would keep logged-out users logged in.
/// let err = MultiRedisStore::builder()
///     .backend(Backend::url("new", "redis://127.0.0.1:6380"))
///     .backend(Backend::url("old", "redis://127.0.0.1:6381").modes(Modes::READ))
///     .copy_on_read(CopyOnRead::Move)
///     .build()
///     .await
///     .unwrap_err();
/// assert!(err.to_string().contains("backend `old`, field `modes`"));
/// # });
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct MultiRedisStoreBuilder {
    backends: Vec<Backend>,
    copy_on_read: CopyOnRead,
    read_policy: ReadPolicy,
    write_policy: WritePolicy,
    deadline: Option<Duration>,
    create_attempts: Option<usize>,
    tombstone_ttl: Option<Duration>,
    refuse_late_writes: Option<bool>,
    announce: Option<bool>,
    user_key: Option<String>,
    max_sessions_per_user: Option<u32>,
    prune_index_every: Option<Duration>,
}

impl MultiRedisStoreBuilder {
    /// How many ids `create` tries before giving up (a collision of 128-bit
    /// random ids is already astronomically unlikely).
    pub const DEFAULT_CREATE_ATTEMPTS: usize = 8;

    /// The longest socket timeout, operation deadline or breaker cool-down
    /// accepted: a day. Longer ones are refused rather than overflow a clock.
    pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

    /// The longest tombstone life accepted: thirty days.
    pub const MAX_TOMBSTONE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

    /// How long a logout's tombstone lives when none is configured.
    pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

    /// The longest one user's saves through an instance go without pruning
    /// the user's index, when none is configured.
    pub const DEFAULT_PRUNE_INDEX_EVERY: Duration = Duration::from_secs(60);

    /// Appends a backend; order matters (`load` asks readers in this order).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backends.push(backend);
        self
    }

    /// Appends several backends.
    pub fn backends(mut self, backends: impl IntoIterator<Item = Backend>) -> Self {
        self.backends.extend(backends);
        self
    }

    /// The copy-on-read policy (default [`CopyOnRead::Copy`]).
    pub fn copy_on_read(mut self, policy: CopyOnRead) -> Self {
        self.copy_on_read = policy;
        self
    }

    /// What `load` does when a read backend fails (default [`ReadPolicy::FallThrough`]).
    pub fn read_policy(mut self, policy: ReadPolicy) -> Self {
        self.read_policy = policy;
        self
    }

    /// When `create`/`save` succeed despite a failing write backend (default
    /// [`WritePolicy::All`]).
    pub fn write_policy(mut self, policy: WritePolicy) -> Self {
        self.write_policy = policy;
        self
    }

    /// An overall bound of each store operation, on top of the backends'
    /// timeouts (default: none).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// How many ids `create` tries (default [`MultiRedisStoreBuilder::DEFAULT_CREATE_ATTEMPTS`]).
    pub fn create_attempts(mut self, attempts: usize) -> Self {
        self.create_attempts = Some(attempts);
        self
    }

    /// How long the tombstone a logout leaves in each write backend lives
    /// (default [`MultiRedisStoreBuilder::DEFAULT_TOMBSTONE_TTL`]; at least four socket timeouts). A
    /// copy of a session into a write backend is refused by the server once
    /// half this time has passed since the session was read from its source,
    /// so no copy, however late, outlives the tombstone it must meet.
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = Some(ttl);
        self
    }

    /// Whether a save carries a deadline that the server enforces (default
    /// `true`): the moment its sender gives up waiting for the answer. Past
    /// it, the server refuses the write, so a save that timed out either ran
    /// before or never runs. Without it, a save that timed out on one app
    /// instance can still run after a later save of the same session
    /// through another instance (a paused or frozen server resumes a whole
    /// connection at a time) and undo it: the user's last change is lost, or
    /// a privilege that change removed comes back.
    ///
    /// It makes a save a short script (`EVALSHA`) reading the server's clock
    /// instead of a bare `SET XX`: about twice a `SET`'s server time
    /// (`BENCHMARKS.md`). Turn it off only with a single app instance, or
    /// when losing a change after a timeout is acceptable. Without it, the
    /// per-user index ([`user_key`](Self::user_key)) is not pruned either:
    /// an entry whose session is gone stays until its score passes.
    pub fn refuse_late_writes(mut self, refuse: bool) -> Self {
        self.refuse_late_writes = Some(refuse);
        self
    }

    /// Whether the store announces its configuration's fingerprint in its
    /// backends, so that `multi-redis-sessions status` and
    /// [`MultiRedisStore::live_configurations`] show which configurations run
    /// and how many instances run each (default `true`; one `SET` per backend
    /// it writes or deletes from, every five seconds).
    pub fn announce(mut self, announce: bool) -> Self {
        self.announce = Some(announce);
        self
    }

    /// Where the user is in a session's data, e.g. `"user_id"` or the JSON
    /// pointer `"/axum-login.data/user_id"` (see [`UserKey`]): the store
    /// then keeps an index of each user's sessions, for
    /// [`MultiRedisStore::sessions_of`], [`MultiRedisStore::revoke_user`]
    /// and a [cap](Self::max_sessions_per_user) (default: none; `users.rs`
    /// says what it costs).
    pub fn user_key(mut self, key: impl Into<String>) -> Self {
        self.user_key = Some(key.into());
        self
    }

    /// At most this many sessions per user (needs [`user_key`](Self::user_key)):
    /// a login (`create`: tower-sessions creates on `cycle_id`, as a login
    /// should) past it logs out the user's sessions that expire first,
    /// before it returns. Default: no cap.
    pub fn max_sessions_per_user(mut self, sessions: u32) -> Self {
        self.max_sessions_per_user = Some(sessions);
        self
    }

    /// The longest the saves of one user through this instance go without
    /// pruning the user's index of sessions that are gone (needs
    /// [`user_key`](Self::user_key)); at most a day. A login prunes it too,
    /// and so does a save once a session of the user that the instance saw
    /// expired, which can be sooner. A save that prunes reads the index
    /// beside its session write (a `ZRANGE`, in the same round trip) and
    /// then the `PTTL` of the user's other sessions, if it has any: at the default,
    /// about one save a minute of each active user, per instance. (Up to a
    /// quarter of the interval earlier, at random, so that users who came
    /// due together, say when an instance started, drift apart.)
    ///
    /// Zero prunes at every write of the user through this instance (every
    /// login, save and logout, best effort, in the write backends): an
    /// entry of a session that is gone goes at the user's next write
    /// through it, unless a logout left a tombstone there (its logout may
    /// be half done; the entry stays until the logout's own removal of
    /// it, or until the tombstone expires). It costs every save a read of the
    /// index, and every save and logout of a user with other sessions a
    /// tidy (their `PTTL`) (BENCHMARKS.md has the figures). Otherwise at
    /// least a millisecond.
    ///
    /// Pruning needs
    /// [`refuse_late_writes`](Self::refuse_late_writes): with
    /// `refuse_late_writes(false)`, nothing is pruned and setting this is
    /// an error.
    /// Default [`DEFAULT_PRUNE_INDEX_EVERY`](Self::DEFAULT_PRUNE_INDEX_EVERY).
    pub fn prune_index_every(mut self, every: Duration) -> Self {
        self.prune_index_every = Some(every);
        self
    }

    /// Whether saves carry write deadlines (the default).
    fn refuses_late_writes(&self) -> bool {
        self.refuse_late_writes.unwrap_or(true)
    }

    /// The per-user index settings, validated.
    fn users(&self) -> Result<Option<Users>, Error> {
        let Some(key) = &self.user_key else {
            return match (self.max_sessions_per_user, self.prune_index_every) {
                (Some(_), _) => Err(Error::config(None, "max_sessions_per_user", "needs `user_key`")),
                (_, Some(_)) => Err(Error::config(None, "prune_index_every", "needs `user_key`")),
                (None, None) => Ok(None),
            };
        };
        let key: UserKey = key
            .parse()
            .map_err(|err: crate::users::InvalidUserKey| Error::config(None, "user_key", err.to_string()))?;
        if self.max_sessions_per_user == Some(0) {
            return Err(Error::config(None, "max_sessions_per_user", "must be at least 1"));
        }
        let every = self.prune_index_every.unwrap_or(Self::DEFAULT_PRUNE_INDEX_EVERY);
        if every > Self::MAX_WAIT {
            return Err(Error::config(None, "prune_index_every", "must be at most a day"));
        }
        if !every.is_zero() && every < Duration::from_millis(1) {
            return Err(Error::config(
                None,
                "prune_index_every",
                "must be zero (every write) or at least a millisecond",
            ));
        }
        // Pruning needs write deadlines (`users.rs`).
        if !self.refuses_late_writes() && self.prune_index_every.is_some() {
            return Err(Error::config(
                None,
                "prune_index_every",
                "needs `refuse_late_writes`: without, nothing is pruned",
            ));
        }
        let prune = self.refuses_late_writes().then_some(every);
        Ok(Some(Users::new(key, self.max_sessions_per_user.unwrap_or(0), prune)))
    }

    /// Checks every rule that does not need the network.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the backend and the field at fault.
    pub fn validate(&self) -> Result<(), Error> {
        if self.backends.is_empty() {
            return Err(Error::config(None, "backends", "no backend configured"));
        }
        self.users()?;
        if self.deadline == Some(Duration::ZERO) {
            return Err(Error::config(None, "deadline", "must be greater than zero"));
        }
        if self.deadline.is_some_and(|d| d > MultiRedisStoreBuilder::MAX_WAIT) {
            return Err(Error::config(None, "deadline", "must be at most a day"));
        }
        if self.tombstone_ttl.is_some_and(|t| t > MultiRedisStoreBuilder::MAX_TOMBSTONE_TTL) {
            return Err(Error::config(None, "tombstone_ttl", "must be at most thirty days"));
        }
        if self.tombstone_ttl.is_some_and(|t| t.as_millis() == 0) {
            return Err(Error::config(None, "tombstone_ttl", "must be at least a millisecond"));
        }
        if self.create_attempts == Some(0) {
            return Err(Error::config(None, "create_attempts", "must be at least 1"));
        }
        let mut names = HashSet::new();
        for (position, b) in self.backends.iter().enumerate() {
            let name = Some(b.name.as_str());
            if b.name.trim().is_empty() {
                return Err(Error::config(None, "name", format!("backend #{} has an empty name", position + 1)));
            }
            if !names.insert(b.name.as_str()) {
                return Err(Error::config(name, "name", "the name is used by another backend"));
            }
            if b.modes.is_empty() {
                return Err(Error::config(name, "modes", "no mode given (read, write, delete)"));
            }
            if b.socket_timeout == Duration::ZERO {
                return Err(Error::config(name, "socket_timeout", "must be greater than zero"));
            }
            if b.socket_timeout > MultiRedisStoreBuilder::MAX_WAIT {
                return Err(Error::config(name, "socket_timeout", "must be at most a day"));
            }
            if b.wait_replicas > 0 && b.wait_timeout.is_some_and(|t| t.is_zero() || t >= b.socket_timeout) {
                return Err(Error::config(
                    name,
                    "wait_timeout",
                    "must be greater than zero and shorter than socket_timeout (which bounds a write and its WAIT)",
                ));
            }
            if b.breaker.cool_down > MultiRedisStoreBuilder::MAX_WAIT {
                return Err(Error::config(name, "breaker_cool_down", "must be at most a day"));
            }
            if b.modes.can_read() && !b.modes.can_delete() && !b.allow_read_without_delete {
                return Err(Error::config(
                    name,
                    "modes",
                    "a `read` backend must also have `write` or `delete`, or a logout leaves the session \
                     loadable there (set allow_read_without_delete to accept that)",
                ));
            }
            if matches!(b.address, crate::Address::Cluster(_)) && !crate::keys::prefix_fits_cluster(&b.prefix) {
                return Err(Error::config(
                    name,
                    "prefix",
                    "a `}` without a hash tag `{...}` before it: a logout's tombstone could not share the \
                     session's hash slot",
                ));
            }
            if self.tombstone_ttl.is_some_and(|t| t < b.socket_timeout.saturating_mul(4)) {
                return Err(Error::config(
                    name,
                    "tombstone_ttl",
                    "must be at least four times every backend's socket_timeout: a copy may arrive up to \
                     half a tombstone's life after it was read",
                ));
            }
            crate::connection::validate(b)?;
        }
        if !self.backends.iter().any(|b| b.modes.can_read()) {
            return Err(Error::config(None, "modes", "no backend has the `read` mode"));
        }
        if !self.backends.iter().any(|b| b.modes.can_write()) {
            return Err(Error::config(None, "modes", "no backend has the `write` mode"));
        }
        if !self.backends.iter().any(|b| b.modes.can_read() && b.modes.can_write()) {
            return Err(Error::config(
                None,
                "modes",
                "no backend has both `read` and `write`: new sessions could never be loaded",
            ));
        }
        Ok(())
    }

    /// Validates and connects. Connections are made lazily, so a backend that
    /// is down does not stop the app from starting; its errors show on use.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the backend and the field at fault.
    pub async fn build(self) -> Result<MultiRedisStore, Error> {
        self.validate()?;
        let refuse_late_writes = self.refuses_late_writes();
        let tombstone_ttl = self.tombstone_ttl.unwrap_or(MultiRedisStoreBuilder::DEFAULT_TOMBSTONE_TTL);
        let nodes = self
            .backends
            .iter()
            .map(|b| Node::connect(b, refuse_late_writes, tombstone_ttl))
            .collect::<Result<Vec<_>, _>>()?;
        let store = MultiRedisStore::from_nodes(
            nodes,
            Options {
                copy_on_read: self.copy_on_read,
                read_policy: self.read_policy,
                write_policy: self.write_policy,
                deadline: self.deadline,
                create_attempts: self.create_attempts.unwrap_or(MultiRedisStoreBuilder::DEFAULT_CREATE_ATTEMPTS),
                refuse_late_writes,
                tombstone_ttl,
            },
            self.users()?,
        );
        if self.announce.unwrap_or(true) {
            crate::announce::start(&store);
        }
        Ok(store)
    }
}

impl MultiRedisStore {
    /// Starts describing a store.
    pub fn builder() -> MultiRedisStoreBuilder {
        MultiRedisStoreBuilder::default()
    }
}
