//! Every session of one user: a per-user index in each backend, to list a
//! user's sessions, log them all out (after a password change, a ban) or
//! all but one ("sign out other devices"), and cap how many a user has.
//!
//! The store learns the user from the session's data, through
//! configuration only ([`UserKey`]). Records without it are not indexed.
//!
//! # The index
//!
//! In each write backend, `<prefix>multi-redis-sessions:user:<user>` is a
//! sorted set of the user's session ids. An entry's score is at least its
//! session's expiry (ms): the expiry plus the session's remaining life when
//! it was indexed, and only ever raised (a save that shortened an expiry
//! may not have run, and the entry must outlive the session). The slack
//! lets an instance skip the index write of a save whose expiry its last
//! index write already covers (it remembers what it indexed): a steady
//! save costs nothing more; about one save per session lifetime does, and
//! the user's saves that prune (below): about one a minute of each active
//! user, per instance, and one more each time another session of the user
//! that the instance knew of reaches its expiry (with [`prune_index_every`]
//! zero, every save).
//!
//! It cleans itself without keyspace notifications: every write to it drops the
//! entries whose score passed, the key expires with its last entry, and a
//! logout removes its own entry (its script hands back the session's value, the
//! only place that names the user; with [`prune_index_every`] zero, it then
//! tidies the others too, as below). An entry whose session is gone otherwise
//! (expired, or moved away) goes at the user's next write that tidies: a
//! login, a save that writes the index, or a save whose tidy is due (below).
//! Such a write gets the user's other entries (an index write returns them, a
//! due save reads them); the store reads their sessions' `PTTL` and prunes the entries
//! whose session is missing, unless a tombstone says it was logged out there:
//! then its logout may not be done everywhere yet (a revoke that failed
//! half-way keeps its entries so that it finds them when run again, and this
//! entry may be the only one naming a session still in a source), and the entry
//! goes with the logout's own `unindex`, or once the tombstone or its score
//! passed. A save that the instance's memory covers writes no
//! index, unless the user's next tidy through this instance is due: when the
//! expiry that the instance saw, at its last tidy, for one of the user's other
//! sessions has passed (the session may have been extended meanwhile), and at
//! the latest [`prune_index_every`] (a minute) after that tidy (or after the
//! user's first save that its memory covered; up to a quarter of that earlier,
//! at random, so that users who came due together drift apart), for the
//! sessions other instances indexed since (with zero, at every save). Then the save reads the index
//! beside its session write (the entry already covers the save, so their
//! order does not matter; a `ZRANGE` costs the server less than an index
//! write) and tidies. So an expired
//! session's entry goes at the user's next write through an instance that knew
//! of it; and whoever indexed it, at the user's next login, or next save
//! through an instance whose last tidy of the user is a minute old. (A
//! `ZRANGE` of the index on every save, to prune at the very next one, is
//! what zero does: 0.67x–0.78x the saves without an index, BENCHMARKS.md,
//! run 16; so not by default.) That races
//! the writes that make a session exist where it was not, and is safe because
//! each of them writes the entry *after* the session, and an entry is pruned
//! only if no index write touched it since it was read
//! (`MultiRedisStore::tidy_on` has the argument). A write whose outcome is
//! unknown may land after its entry: a save's fill has its entry written again
//! once the fill's deadline passed; a copy (copy-on-read, the migrator) that
//! failed is not moved, so its source, whose index names the session, keeps it,
//! with the same expiry as the late copy. Only with write deadlines
//! ([`refuse_late_writes`], the default); without, nothing is pruned and an
//! entry stays until its score passes. Until then, [`sessions_of`] checks each
//! entry, and the cap counts only sessions that exist.
//!
//! A save that tidies also looks for its own session's entry, and writes
//! the index where the entry is missing or scored below the session's
//! expiry (wherever the save landed): an active session whose entry went
//! missing without a logout (removed by hand, or by a prune that a stale
//! `PTTL` misled during a failover), or whose last raise was lost in a
//! failover, is indexed again by its first save once its user's tidy is
//! due.
//!
//! [`refuse_late_writes`]: crate::MultiRedisStoreBuilder::refuse_late_writes
//!
//! [`prune_index_every`]: crate::MultiRedisStoreBuilder::prune_index_every
//!
//! [`sessions_of`]: crate::MultiRedisStore::sessions_of
//!
//! Who writes it, and when:
//!
//! * `create`: after the session, before `create` returns (an index write
//!   that fails undoes the login, by the write policy), then tidies; with a
//!   cap, a login past it logs out the user's sessions that expire first
//!   (the cap applies to logins: `create`, which tower-sessions runs on
//!   `cycle_id`);
//! * `save`: *before* the session (when not already covered), so that no
//!   session is ever stored with a user, or an expiry, its index does not
//!   cover, whatever a timeout or a dropped connection leaves undone; where
//!   the save creates the session (a backend that missed it), again after
//!   it (after its deadline, when its outcome is unknown); then tidies; a
//!   save whose tidy is due and whose read of the index finds its own entry
//!   missing or scored below its expiry writes it again, after the session
//!   (it was indexed before, and the entry was lost since);
//! * copy-on-read: once the copies answered (until then the source's index
//!   names the session); a copy that failed or is not indexed everywhere
//!   is not moved;
//! * the migrator: in every target, after the batch of the copies; a
//!   session not indexed in every target is not removed from the source.
//!
//! The index is a key of its own, so on a partition or a cluster it may
//! live on another server (or slot) than the session: no script needs both.
//!
//! # Revoking
//!
//! [`MultiRedisStore::revoke_user`](crate::MultiRedisStore::revoke_user) reads the user's index in every backend
//! that reads or deletes (those the store does not write first: a move
//! indexes a session in the write backends before removing it from a
//! source), then logs each session out exactly as `delete` does (a
//! tombstone in every backend the store deletes from), and only then
//! removes the entries. So it has delete's guarantees for every session of
//! the user indexed when it started: no copy, fill or save, however late,
//! brings one back; and a revoke that failed half-way finds the rest when
//! run again (a logout that failed anywhere keeps its entry). A session is
//! indexed before a save with the user is acknowledged, so every session
//! the app saw saved with the user is covered.
//!
//! Not covered, and said where it matters: sessions written before
//! `user_key` was set everywhere, or by another store (indexed once saved,
//! copied or migrated: `plan::check` flags two configurations that differ
//! in `user_key`); a session whose user changed from `a` to `b` without a
//! new id stays in `a`'s index too, so revoking `a` logs it out as well.

use std::str::FromStr;

use crate::recent::Recent;

use time::OffsetDateTime;
use tower_sessions_core::session::Id;

/// Where the user is in a session's data: a top-level key (`"user_id"`) or
/// a JSON pointer (`"/axum-login.data/user_id"`), whose first segment names
/// the top-level key. A string is the user as it is; a number or a boolean,
/// its JSON text; anything else (absent, null, an object) means "no user".
///
/// ```
/// use tower_sessions_multi_redis_store::UserKey;
///
/// let key: UserKey = "/axum-login.data/user_id".parse().unwrap();
/// let data = [("axum-login.data".to_owned(), serde_json::json!({"user_id": 42}))].into();
/// assert_eq!(key.user_of(&data).as_deref(), Some("42"));
/// assert!("".parse::<UserKey>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserKey {
    /// The top-level key.
    top: String,
    /// A JSON pointer into its value (empty: the value itself).
    rest: String,
}

/// A `user_key` that names no key of the session data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must name a key of the session data, e.g. `user_id` or `/axum-login.data/user_id`")]
#[non_exhaustive]
pub struct InvalidUserKey;

impl FromStr for UserKey {
    type Err = InvalidUserKey;

    fn from_str(text: &str) -> Result<UserKey, InvalidUserKey> {
        if text.is_empty() || text == "/" {
            return Err(InvalidUserKey);
        }
        let Some(pointer) = text.strip_prefix('/') else {
            return Ok(UserKey { top: text.to_owned(), rest: String::new() });
        };
        let (top, rest) = match pointer.find('/') {
            Some(at) => (&pointer[..at], &pointer[at..]),
            None => (pointer, ""),
        };
        // RFC 6901 escapes in the first segment; `serde_json` undoes them in the rest.
        Ok(UserKey { top: top.replace("~1", "/").replace("~0", "~"), rest: rest.to_owned() })
    }
}

impl UserKey {
    /// The user a session's data names, if any.
    pub fn user_of(&self, data: &std::collections::HashMap<String, serde_json::Value>) -> Option<String> {
        self.user_in(data).map(std::borrow::Cow::into_owned)
    }

    /// As [`user_of`](Self::user_of), borrowing a string user from `data`
    /// (every save asks; most need no copy).
    pub(crate) fn user_in<'d>(
        &self,
        data: &'d std::collections::HashMap<String, serde_json::Value>,
    ) -> Option<std::borrow::Cow<'d, str>> {
        let value = data.get(&self.top)?;
        let value = if self.rest.is_empty() { value } else { value.pointer(&self.rest)? };
        match value {
            serde_json::Value::String(user) if !user.is_empty() => Some(user.as_str().into()),
            serde_json::Value::Number(n) => Some(n.to_string().into()),
            serde_json::Value::Bool(b) => Some(b.to_string().into()),
            _ => None,
        }
    }
}

/// What a save does with the index, by [`Users::cover`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cover {
    /// This instance's last index write does not cover the save: the save
    /// writes the index before the session.
    No,
    /// It does: no index write.
    Yes,
    /// It does, and the user's tidy is due: the save reads the index
    /// beside the session write (for the other entries, to tidy them).
    Due,
}

/// The per-user index settings of a store, and what this instance knows it
/// indexed.
pub(crate) struct Users {
    pub(crate) key: UserKey,
    /// At most this many sessions per user (0: no cap); the oldest (first
    /// to expire) are logged out when a login goes past it.
    pub(crate) cap: u32,
    /// The longest (ms) a user's saves through this instance go without a
    /// tidy (0: every save and logout tidies); `None`: they never tidy (no
    /// write deadlines, so nothing is pruned).
    prune_every: Option<u64>,
    /// Session → (user, score) this instance indexed it with: a save whose
    /// expiry the score already covers needs no index write. Remembered
    /// only once both the index write and the session write it goes with
    /// succeeded on every W backend; forgotten when a save misses or fails
    /// on one. Sound because scores only rise and an entry only leaves an
    /// index once its score passed, its session was logged out (after which
    /// no save writes it again), or a tidy found its session missing there
    /// (then this instance's next save there misses, and forgets; whoever
    /// writes the session there again indexes it after). Bounded: what was
    /// not used for a while is forgotten ([`Recent`]).
    ///
    /// And per user, when its saves through this instance tidy next (Unix
    /// ms): when the first of the other sessions this instance saw at its
    /// last tidy of the user expires, and at most [`prune_every`] after
    /// that tidy (a session another instance indexed may be gone). The
    /// user's next save then gets the index (a covered one reads it beside
    /// its session write: [`Cover::Due`]) and tidies. A user it has no due time for is
    /// due one interval after its first covered save. (An interval is up to
    /// a quarter shorter, at random: [`Users::next_due`].)
    ///
    /// [`prune_every`]: Self::prune_every
    memory: std::sync::Mutex<Memory>,
    /// Draws how much earlier than [`prune_every`](Self::prune_every) a
    /// user's next tidy is due ([`next_due`](Self::next_due)).
    spread: std::hash::RandomState,
}

/// What [`Users::memory`] holds.
struct Memory {
    indexed: Recent<Id, (String, u64)>,
    tidy_due: Recent<String, u64>,
}

/// Without the sessions it remembers: their ids are bearer tokens.
impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("key", &self.key)
            .field("cap", &self.cap)
            .field("prune_every_ms", &self.prune_every)
            .finish_non_exhaustive()
    }
}

/// Now, in Unix milliseconds (the unit of expiries and index scores).
pub(crate) fn unix_ms() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// How many sessions, and how many users, [`Users::memory`] remembers in
/// each of its two generations (about 5 MB each, so 20 MB at most).
const REMEMBERED: usize = 100_000;

impl Users {
    pub(crate) fn new(key: UserKey, cap: u32, prune_every: Option<std::time::Duration>) -> Users {
        let prune_every = prune_every.map(|every| u64::try_from(every.as_millis()).unwrap_or(u64::MAX));
        let memory = Memory { indexed: Recent::new(REMEMBERED), tidy_due: Recent::new(REMEMBERED) };
        let spread = std::hash::RandomState::new();
        Users { key, cap, prune_every, memory: std::sync::Mutex::new(memory), spread }
    }

    /// The score of a session expiring at `pxat` (Unix ms), indexed now:
    /// its expiry plus its remaining life again, so that the saves of about
    /// one more lifetime need no index write. An entry outlives its
    /// session by that much at most (`sessions_of` checks each).
    pub(crate) fn score(pxat: u64) -> u64 {
        pxat.saturating_add(pxat.saturating_sub(unix_ms()))
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this instance indexed session `id` for `user` with a score
    /// that covers `pxat`, and if so, whether the user's next tidy is due.
    pub(crate) fn cover(&self, id: &Id, user: &str, pxat: u64) -> Cover {
        let mut memory = self.memory();
        if memory.indexed.get(id, |(u, score)| u == user && *score >= pxat) != Some(true) {
            return Cover::No;
        }
        let Some(every) = self.prune_every else { return Cover::Yes };
        if every == 0 {
            return Cover::Due;
        }
        let now = unix_ms();
        let due = memory.tidy_due.get(user, |&due| due);
        // Past it, this save tidies; the next is due one interval on (until
        // `tidied` says when), so that the saves that come while this one
        // runs do not tidy too. Without one (not tidied here yet: a session
        // copied on read; or forgotten), due one interval on, not at once.
        if due.is_none_or(|due| due <= now) {
            memory.tidy_due.insert(user.to_owned(), self.next_due(user, now, every));
        }
        match due {
            Some(due) if due <= now => Cover::Due,
            _ => Cover::Yes,
        }
    }

    /// After a tidy of `user` on every W backend: the first of the other
    /// live sessions it saw expires at `first` (`Some(None)`: none); the
    /// next tidy is due then, or [`prune_every`](Self::prune_every) from
    /// now if sooner. `None`: the tidy was not complete (a backend failed,
    /// or the deadline passed); a due time that passed (or none) is put
    /// off by as much, so that a tidy that keeps failing does not make
    /// every save of the user tidy. (A save whose own session or index
    /// write fails on a backend is not covered at all: it writes the
    /// index every time, by design, until it succeeds everywhere.)
    pub(crate) fn tidied(&self, user: &str, first: Option<Option<u64>>) {
        // Zero: every save tidies, whenever it is due.
        let Some(every) = self.prune_every.filter(|&every| every > 0) else { return };
        let mut memory = self.memory();
        let now = unix_ms();
        let next = self.next_due(user, now, every);
        let due = match first {
            Some(first) => first.map_or(next, |first| first.min(next)),
            None => match memory.tidy_due.get(user, |&due| due) {
                Some(due) if due > now => return,
                _ => next,
            },
        };
        memory.tidy_due.insert(user.to_owned(), due);
    }

    /// Whether every write of a user tidies its index (`prune_index_every`
    /// zero): its logouts too.
    pub(crate) fn tidies_every_write(&self) -> bool {
        self.prune_every == Some(0)
    }

    /// `every` ms from `now`, less up to a quarter of it, drawn at random
    /// per user and time: users whose tidies came due together (all those
    /// active when an instance started) drift apart instead of pruning in
    /// the same second, interval after interval.
    fn next_due(&self, user: &str, now: u64, every: u64) -> u64 {
        let early = std::hash::BuildHasher::hash_one(&self.spread, (user, now)) % (every / 4 + 1);
        now.saturating_add(every - early)
    }

    /// Forgets what this instance indexed for session `id`: a save found
    /// the session missing in a write backend, whose entry a tidy may
    /// have pruned.
    pub(crate) fn forget(&self, id: &Id) {
        self.memory().indexed.remove(id);
    }

    /// Remembers that session `id` is indexed for `user` with `score`.
    pub(crate) fn remember(&self, id: Id, user: String, score: u64) {
        self.memory().indexed.insert(id, (user, score));
    }
}

/// One session of a user, from [`MultiRedisStore::sessions_of`](crate::MultiRedisStore::sessions_of). Its id is
/// the session's bearer token: show it only to its user.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserSession {
    /// The session id.
    pub id: Id,
    /// When it expires.
    pub expiry: OffsetDateTime,
    /// The backend that holds it (a session being migrated may be listed
    /// once per backend).
    pub backend: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_tidy_goes_to_one_save_and_an_unknown_user_waits_an_interval() {
        let users = Users::new("user".parse().unwrap(), 0, Some(std::time::Duration::from_secs(60)));
        let (id, later) = (Id::default(), unix_ms() + 3_600_000);
        users.remember(id, "ann".to_owned(), later);
        assert_eq!(users.cover(&id, "ann", later), Cover::Yes, "not tidied here yet: due in a minute");
        users.tidied("ann", Some(Some(unix_ms() - 1)));
        assert_eq!(users.cover(&id, "ann", later), Cover::Due, "due: this save tidies");
        assert_eq!(users.cover(&id, "ann", later), Cover::Yes, "and only that one, while it runs");
        assert_eq!(users.cover(&id, "ann", later + 3_600_001), Cover::No, "a later expiry than indexed");

        // Due within the interval, at most a quarter of it early, and spread.
        let dues: std::collections::BTreeSet<u64> =
            (0..100).map(|u| users.next_due(&format!("u{u}"), 0, 60_000)).collect();
        assert!(dues.iter().all(|due| (45_000..=60_000).contains(due)), "{dues:?}");
        assert!(dues.len() > 50, "{} distinct of 100", dues.len());

        let not_pruning = Users::new("user".parse().unwrap(), 0, None);
        not_pruning.remember(id, "ann".to_owned(), later);
        not_pruning.tidied("ann", Some(Some(0)));
        assert_eq!(not_pruning.cover(&id, "ann", later), Cover::Yes, "without pruning, never due");
    }

    fn data(json: serde_json::Value) -> std::collections::HashMap<String, serde_json::Value> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_top_level_key_or_a_pointer() {
        let top: UserKey = "user_id".parse().unwrap();
        assert_eq!(top.user_of(&data(serde_json::json!({"user_id": "ann"}))).as_deref(), Some("ann"));
        assert_eq!(top.user_of(&data(serde_json::json!({"user_id": 7}))).as_deref(), Some("7"));
        assert_eq!(top.user_of(&data(serde_json::json!({"user_id": null}))), None);
        assert_eq!(top.user_of(&data(serde_json::json!({"user_id": {"a": 1}}))), None);
        assert_eq!(top.user_of(&data(serde_json::json!({"user_id": ""}))), None);
        assert_eq!(top.user_of(&data(serde_json::json!({}))), None);

        let nested: UserKey = "/axum-login.data/user_id".parse().unwrap();
        let session = data(serde_json::json!({"axum-login.data": {"user_id": "bob", "auth_hash": [1, 2]}}));
        assert_eq!(nested.user_of(&session).as_deref(), Some("bob"));
        let escaped: UserKey = "/a~1b/c".parse().unwrap();
        assert_eq!(escaped.user_of(&data(serde_json::json!({"a/b": {"c": true}}))).as_deref(), Some("true"));
        let whole: UserKey = "/user".parse().unwrap();
        assert_eq!(whole.user_of(&data(serde_json::json!({"user": "cy"}))).as_deref(), Some("cy"));
        assert!("".parse::<UserKey>().is_err() && "/".parse::<UserKey>().is_err());
    }
}
