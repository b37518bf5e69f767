//! The keys the store writes besides sessions, and how they are named.
//!
//! The tombstone key is the session key followed by [`TOMBSTONE_SUFFIX`], so
//! it falls under the same key prefix (ACL key patterns, `SCAN MATCH`). On a
//! Redis Cluster it must also share the session key's hash slot (a script
//! may only touch keys of one slot): there, a key without a hash tag of its
//! own is wrapped in one after the prefix, `<prefix>{<key>}:tombstone`. (A
//! prefix holding a lone `{` cannot start a key whose tag is the whole
//! session key: there the tombstone is `{<key>}:tombstone`, outside it.)
//!
//! An instance's announcement (`announce.rs`) lives at
//! `<prefix>`[`ANNOUNCE_TAIL`]`<fingerprint>:<instance>`, a user's session
//! index (`users.rs`) at `<prefix>`[`USER_TAIL`]`<user>`. None is a
//! session id (an id is 22 characters of base64url, never a `:`), so the
//! migrator, `verify` and `stats` pass them by.

/// What comes after a backend's prefix in an announcement's key.
pub(crate) const ANNOUNCE_TAIL: &str = "multi-redis-sessions:instance:";

/// The registry of announcements (a sorted set of their ids), after a
/// backend's prefix: read instead of scanning the keyspace for them
/// (`announce.rs`). Under [`ANNOUNCE_TAIL`], so passed by as the store's own.
pub(crate) const ANNOUNCE_REGISTRY: &str = "multi-redis-sessions:instance:all";

/// What comes after a backend's prefix in a user's session index
/// (`users.rs`), before the user.
pub(crate) const USER_TAIL: &str = "multi-redis-sessions:user:";

/// The id (the key without the backend's prefix) of `user`'s session index.
pub(crate) fn user_index(user: &str) -> String {
    format!("{USER_TAIL}{user}")
}

/// What every tombstone key ends with (a session id never holds a `:`).
pub(crate) const TOMBSTONE_SUFFIX: &str = ":tombstone";

/// The tombstone key of session key `key` (which starts with the backend's
/// `prefix`), on a cluster or not.
pub(crate) fn tombstone_key(prefix: &str, key: &str, cluster: bool) -> String {
    let mut tomb = String::with_capacity(prefix.len() + key.len() + TOMBSTONE_SUFFIX.len() + 2);
    if cluster && hash_tag(key).is_none() {
        if !prefix.contains('{') {
            tomb.push_str(prefix);
        }
        tomb.push('{');
        tomb.push_str(key);
        tomb.push('}');
    } else {
        tomb.push_str(key);
    }
    tomb.push_str(TOMBSTONE_SUFFIX);
    tomb
}

/// Whether a key found by `SCAN` is a tombstone, not a session.
pub(crate) fn is_tombstone(key: &str) -> bool {
    key.ends_with(TOMBSTONE_SUFFIX)
}

/// Whether a key found by `SCAN` is the store's own (a tombstone, an
/// instance's announcement), not a session.
pub(crate) fn is_internal(key: &str) -> bool {
    is_tombstone(key) || key.contains(ANNOUNCE_TAIL) || key.contains(USER_TAIL)
}

/// Redis Cluster's hash tag of `key`: what stands between the first `{` and
/// the first `}` after it, if not empty.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// Whether a key prefix lets a cluster tombstone share the session's hash
/// slot: it must not hold a `}` unless the key gets a hash tag of its own
/// (the id itself never holds braces).
pub(crate) fn prefix_fits_cluster(prefix: &str) -> bool {
    hash_tag(prefix).is_some() || !prefix.contains('}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tombstone_shares_the_session_keys_hash_slot_and_prefix() {
        for prefix in ["", "sess:", "{user1}:", "a{b}", "a{}", "x}", "a{b:"] {
            let key = format!("{prefix}abc");
            let plain = tombstone_key(prefix, &key, false);
            assert!(plain.starts_with(&key) && is_tombstone(&plain), "{plain}");
            if !prefix_fits_cluster(prefix) {
                assert!(prefix.contains('}') && hash_tag(prefix).is_none(), "{prefix}");
                continue;
            }
            let tomb = tombstone_key(prefix, &key, true);
            assert!(is_tombstone(&tomb));
            assert_eq!(hash_tag(&tomb), Some(hash_tag(&key).unwrap_or(&key)), "{key} -> {tomb}");
            // Under the prefix (ACL key patterns), but for a prefix with a lone `{`.
            assert!(tomb.starts_with(prefix) || prefix == "a{b:", "{key} -> {tomb}");
        }
        assert!(!is_tombstone("sess:AAAAAAAAAAAAAAAAAAAAAA"));
    }
}
