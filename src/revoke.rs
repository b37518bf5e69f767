//! Listing and revoking a user's sessions ([`MultiRedisStore::sessions_of`],
//! [`MultiRedisStore::revoke_user`]), from the per-user index `users.rs`
//! describes.

use std::collections::BTreeSet;
use std::str::FromStr;

use time::{OffsetDateTime, PrimitiveDateTime};
use tower_sessions_core::session::Id;

use crate::error::Error;
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
    /// index there (each entry checked: one whose session is gone is not
    /// listed; it leaves the index at the user's next login or index
    /// write, or when its score passes: only then without
    /// [`refuse_late_writes`](crate::MultiRedisStoreBuilder::refuse_late_writes)).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without [`user_key`](crate::MultiRedisStoreBuilder::user_key);
    /// a backend's error when one cannot be read.
    pub async fn sessions_of(&self, user: &str) -> Result<Vec<UserSession>, Error> {
        self.require_users()?;
        let now = unix_ms();
        let mut out = Vec::new();
        for node in self.nodes().iter().filter(|n| n.modes.can_read()) {
            let ids: Vec<(Id, String)> = node
                .index_entries(user, None)
                .await?
                .into_iter()
                .filter(|(_, score)| *score > now)
                .filter_map(|(id, _)| Some((Id::from_str(&id).ok()?, id)))
                .collect();
            let ttls: Vec<i64> = node.per_session("PTTL", ids.iter().map(|(_, id)| id.as_str()), None).await?;
            let read = OffsetDateTime::now_utc();
            for ((id, _), millis) in ids.into_iter().zip(ttls) {
                // Gone (logged out, expired), or without expiry (not a session).
                if millis < 0 {
                    continue;
                }
                // Clamped: a hand-set expiry past year 9999 must not panic.
                let expiry = read
                    .checked_add(time::Duration::milliseconds(millis))
                    .unwrap_or(PrimitiveDateTime::MAX.assume_utc());
                out.push(UserSession { id, expiry, backend: node.name.clone() });
            }
        }
        Ok(out)
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
