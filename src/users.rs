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
//! sorted set of the user's session ids scored by their expiry (ms). It
//! cleans itself without keyspace notifications: every write to it drops
//! the entries that expired, and the key expires with its last entry. A
//! score is only ever raised: a save that shortened a session's expiry may
//! not have run, and the entry must outlive the session.
//!
//! It is written by `create` (after the session, before `create` returns),
//! by `save` (before the session: so a session is never stored with a
//! user, or with a later expiry, that its index does not cover, whatever a
//! timeout or a dropped connection left undone), by copy-on-read (beside
//! the copy: until the copy is indexed, the source's own index names it),
//! and by the migrator, which indexes every session it finds in the source
//! in every target before it removes any from the source. A logout
//! removes its session from the index in a second round, once its script
//! handed back the session's value (the only place that names the user).
//!
//! The index is a separate key, so on a partition or a cluster it may live
//! on another server (or slot) than the session: no script needs both.
//!
//! # Revoking
//!
//! [`MultiRedisStore::revoke_user`] reads the user's index in every backend
//! that reads or deletes, then logs each session out exactly as `delete`
//! does (a tombstone in every backend it deletes from). So it has delete's
//! guarantees for every session of the user indexed when it started: no
//! copy, fill or save, however late, brings one back. A session is indexed
//! before its save with the user is acknowledged, so every session the app
//! saw saved with the user is covered. Sessions written before `user_key`
//! was configured, or by another store, are not indexed until they are
//! saved, copied or migrated; run `multi-redis-sessions migrate` first.

use std::collections::BTreeSet;
use std::str::FromStr;

use futures_util::future::join_all;
use serde::Serialize;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};

use crate::error::Error;
use crate::store::MultiRedisStore;

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

impl FromStr for UserKey {
    type Err = String;

    fn from_str(text: &str) -> Result<UserKey, String> {
        if text.is_empty() || text == "/" {
            return Err("must name a key of the session data, e.g. `user_id` or `/axum-login.data/user_id`".into());
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
        let value = data.get(&self.top)?;
        let value = if self.rest.is_empty() { value } else { value.pointer(&self.rest)? };
        match value {
            serde_json::Value::String(user) if !user.is_empty() => Some(user.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// The per-user index settings of a store.
#[derive(Clone, Debug)]
pub(crate) struct Users {
    pub(crate) key: UserKey,
    /// At most this many sessions per user (0: no cap); the oldest (first
    /// to expire) are logged out when a login goes past it.
    pub(crate) cap: u32,
}

/// One session of a user, from [`MultiRedisStore::sessions_of`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UserSession {
    /// The session id.
    #[serde(serialize_with = "as_text")]
    pub id: Id,
    /// When it expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expiry: OffsetDateTime,
    /// The backend that holds it (a session being migrated may be listed
    /// once per backend).
    pub backend: String,
}

fn as_text<S: serde::Serializer>(id: &Id, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(id)
}

impl MultiRedisStore {
    /// The user a record belongs to, when the store indexes users.
    pub(crate) fn user_of(&self, record: &Record) -> Option<String> {
        self.users()?.key.user_of(&record.data)
    }

    fn users_or_err(&self) -> Result<&Users, Error> {
        self.users().ok_or_else(|| Error::config(None, "user_key", "not set: the store keeps no index of users"))
    }

    /// Every live session of `user`, in every backend that reads, from its
    /// index there (each entry checked: an entry whose session is gone is
    /// not listed, and is removed).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without [`user_key`](crate::MultiRedisStoreBuilder::user_key);
    /// a backend's error when one cannot be read.
    pub async fn sessions_of(&self, user: &str) -> Result<Vec<UserSession>, Error> {
        self.users_or_err()?;
        let now = crate::clock::now_ms();
        let mut out = Vec::new();
        for node in self.nodes().iter().filter(|n| n.modes.can_read()) {
            let entries: Vec<(String, u64)> =
                node.index_entries(user, None).await?.into_iter().filter(|(_, pxat)| *pxat as i64 > now).collect();
            let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
            let here = node.exist(&ids).await?;
            let mut gone = Vec::new();
            for ((id, pxat), here) in entries.into_iter().zip(here) {
                let parsed = Id::from_str(&id).ok();
                match (here, parsed) {
                    (true, Some(id)) => out.push(UserSession {
                        id,
                        expiry: OffsetDateTime::from_unix_timestamp_nanos(i128::from(pxat) * 1_000_000)
                            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                        backend: node.name.clone(),
                    }),
                    _ => gone.push(id),
                }
            }
            if node.modes.can_delete()
                && let Err(err) = node.index_remove(user, &gone, None).await
            {
                tracing::debug!(error = %err, "sessions_of: stale index entries stay for now");
            }
        }
        Ok(out)
    }

    /// Logs out every session of `user`: those named by the user's index in
    /// any backend that reads or deletes, each as [`delete`] would (a
    /// tombstone in every backend the store deletes from). Once it returned
    /// Ok, none of them loads again, whatever copies, saves or migrations
    /// race it. Returns how many sessions were logged out.
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
        self.users_or_err()?;
        let keep = keep.map(Id::to_string);
        let mut ids = BTreeSet::new();
        for node in self.nodes().iter().filter(|n| n.modes.can_read() || n.modes.can_delete()) {
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

    /// Logs out the sessions `ids` of `user`, then removes them from the
    /// user's index: not before, so that a revoke that fails half-way still
    /// finds them next time.
    pub(crate) async fn log_out(&self, user: &str, ids: &[String]) -> Result<(), Error> {
        let mut failures = Vec::new();
        // A bounded number at once: a user may have thousands of sessions.
        for chunk in ids.chunks(64) {
            let results = join_all(chunk.iter().map(|id| async move {
                match Id::from_str(id) {
                    Ok(sid) => self.delete_record(&sid).await,
                    // Not a session id: nothing to log out, only to forget.
                    Err(_) => Ok(()),
                }
            }))
            .await;
            failures.extend(results.into_iter().filter_map(Result::err));
        }
        if !failures.is_empty() {
            return Err(Error::from_failures(failures));
        }
        let removed = join_all(
            self.nodes().iter().filter(|n| n.modes.can_delete()).map(|node| node.index_remove(user, ids, None)),
        )
        .await;
        for err in removed.into_iter().filter_map(Result::err) {
            tracing::debug!(error = %err, "revoke: index entries stay until they expire or are read");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
