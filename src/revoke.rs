//! Listing and revoking a user's sessions ([`MultiRedisStore::sessions_of`],
//! [`MultiRedisStore::revoke_user`]), from the per-user index `users.rs`
//! describes.

use std::collections::BTreeSet;
use std::str::FromStr;

use time::{OffsetDateTime, PrimitiveDateTime};
use tower_sessions_core::session::Id;

use crate::error::Error;
use crate::node::Node;
use crate::store::MultiRedisStore;
use crate::users::{UserSession, unix_ms};

impl MultiRedisStore {
    /// An error unless the store keeps an index of users.
    fn require_users(&self) -> Result<(), Error> {
        match self.users() {
            Some(_) => Ok(()),
            None => Err(Error::config(None, "user_key", "not set: the store keeps no index of users")),
        }
    }

    /// Every live session of `user`, in every backend that reads, from its
    /// index there, each once (where a write backend holds it, that one is
    /// named). Each entry is checked: one whose session is gone is not
    /// listed (it leaves the index at the user's next login or index write,
    /// or when its score passes: only then without
    /// [`refuse_late_writes`](crate::MultiRedisStoreBuilder::refuse_late_writes)),
    /// nor is a source's copy of a session logged out in a write backend
    /// (its logout's `DEL` there failed: it does not load).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without [`user_key`](crate::MultiRedisStoreBuilder::user_key);
    /// a backend's error when one cannot be read.
    pub async fn sessions_of(&self, user: &str) -> Result<Vec<UserSession>, Error> {
        self.require_users()?;
        // Sources first, as `revoke` reads them: a move indexes a session in
        // the write backends before it removes it from a source, so one that
        // leaves a source's index while this reads is in a write backend's
        // by the time that is read.
        let (sources, writers): (Vec<&Node>, Vec<&Node>) =
            self.nodes().iter().filter(|n| n.modes.can_read()).partition(|n| !n.modes.can_write());
        let mut in_sources = Vec::new();
        for node in sources {
            in_sources.extend(live_sessions(node, user).await?);
        }
        if !writers.is_empty() {
            in_sources = self.not_logged_out(in_sources).await?;
        }
        // Each once: a write backend's copy is the one `load` serves.
        let mut out: Vec<UserSession> = Vec::new();
        let mut add = |sessions: Vec<UserSession>| {
            for session in sessions {
                if !out.iter().any(|s| s.id == session.id) {
                    out.push(session);
                }
            }
        };
        for node in writers {
            add(live_sessions(node, user).await?);
        }
        add(in_sources);
        Ok(out)
    }

    /// Of `found` in a source, those without a tombstone in any write
    /// backend.
    async fn not_logged_out(&self, found: Vec<UserSession>) -> Result<Vec<UserSession>, Error> {
        let ids: Vec<String> = found.iter().map(|s| s.id.to_string()).collect();
        let mut out_now = vec![false; found.len()];
        for writer in self.nodes().iter().filter(|n| n.modes.can_write()) {
            let tombstoned = writer.tombstoned(ids.iter().map(String::as_str), None).await?;
            out_now.iter_mut().zip(tombstoned).for_each(|(out, here)| *out |= here);
        }
        Ok(found.into_iter().zip(out_now).filter_map(|(session, out)| (!out).then_some(session)).collect())
    }

    /// Logs out every session of `user`: those named by the user's index in
    /// any backend that reads or deletes, each as [`delete`] would (a
    /// tombstone in every backend the store deletes from). Once it returned
    /// Ok, none of them loads again, whatever copies, saves or migrations
    /// race it. Returns how many index entries it logged out (sessions
    /// that had already expired included).
    ///
    /// [`delete`]: tower_sessions_core::SessionStore::delete
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without [`user_key`](crate::MultiRedisStoreBuilder::user_key);
    /// a backend's error when an index cannot be read or a logout failed
    /// (the others are still done: run it again).
    pub async fn revoke_user(&self, user: &str) -> Result<usize, Error> {
        self.revoke(user, None).await
    }

    /// As [`revoke_user`](Self::revoke_user), but keeps the session `keep`
    /// ("sign out other devices": `keep` is the current session's id).
    ///
    /// # Errors
    ///
    /// As [`revoke_user`](Self::revoke_user).
    pub async fn revoke_user_except(&self, user: &str, keep: &Id) -> Result<usize, Error> {
        self.revoke(user, Some(keep)).await
    }

    async fn revoke(&self, user: &str, keep: Option<&Id>) -> Result<usize, Error> {
        self.require_users()?;
        let keep = keep.map(Id::to_string);
        let mut ids = BTreeSet::new();
        // Backends the store does not write first: a move indexes a session
        // in every write backend before it removes it from a source, so
        // whatever leaves a source's index while this reads is in a write
        // backend's by then.
        let (unwritten, written): (Vec<&crate::node::Node>, Vec<&crate::node::Node>) = self
            .nodes()
            .iter()
            .filter(|n| n.modes.can_read() || n.modes.can_delete())
            .partition(|n| !n.modes.can_write());
        for node in unwritten.into_iter().chain(written) {
            for (id, _) in node.index_entries(user, None).await? {
                if Some(&id) != keep.as_ref() {
                    ids.insert(id);
                }
            }
        }
        let ids: Vec<String> = ids.into_iter().collect();
        self.log_out(user, &ids).await?;
        Ok(ids.len())
    }
}

/// The sessions `user`'s index on `node` names that live there (an entry
/// whose session is gone, or whose key has no expiry, is no session).
async fn live_sessions(node: &Node, user: &str) -> Result<Vec<UserSession>, Error> {
    let now = unix_ms();
    let ids: Vec<(Id, String)> = node
        .index_entries(user, None)
        .await?
        .into_iter()
        .filter(|(_, score)| *score > now)
        .filter_map(|(id, _)| Some((Id::from_str(&id).ok()?, id)))
        .collect();
    let ttls: Vec<i64> = node.per_session("PTTL", ids.iter().map(|(_, id)| id.as_str()), None).await?;
    let read = OffsetDateTime::now_utc();
    Ok(ids
        .into_iter()
        .zip(ttls)
        .filter(|(_, millis)| *millis >= 0)
        .map(|((id, _), millis)| {
            // Clamped: a hand-set expiry past year 9999 must not panic.
            let expiry =
                read.checked_add(time::Duration::milliseconds(millis)).unwrap_or(PrimitiveDateTime::MAX.assume_utc());
            UserSession { id, expiry, backend: node.name.clone() }
        })
        .collect())
}
