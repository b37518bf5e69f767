//! Walking every key of a backend under a literal prefix, whatever its
//! topology, with one cursor (a `u64`) the caller hands back:
//!
//! * one server (or a Sentinel group's master): `SCAN`'s own cursor;
//! * a partition: member after member, the member in the top 8 bits of the
//!   cursor and that member's `SCAN` cursor in the rest;
//! * a Redis Cluster: hash slot after hash slot, the cursor being the next
//!   slot (`cluster.rs` says why not `SCAN` per node).
//!
//! A `SCAN` cursor means something only to the server process that handed
//! it out (each seeds its hash table at random): after a restart or a
//! failover, a walk that went on from its cursor would pass over keys, and
//! a migration or a `verify --empty` would report clean while the source
//! still held sessions. So each page also reads the server's `run_id`, in
//! the same pipeline (one connection, one process), and a [`Walk`] that
//! sees it change starts that server's walk over. A hash slot means the
//! same to every node: a cluster's walk needs no such check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::{ErrorKind, RedisError, RedisResult, Value};

use super::Connection;
use super::cluster::SLOTS;

/// Bits of a partition's cursor that hold the member.
const MEMBER_SHIFT: u32 = 56;
const INNER_MASK: u64 = (1 << MEMBER_SHIFT) - 1;

impl Connection {
    /// The keys starting with `literal` (taken literally: glob characters
    /// are escaped) from `cursor` on, about `count` at a time, and the
    /// cursor to go on from (`0`: done).
    pub(crate) async fn scan(
        &self,
        cursor: u64,
        count: usize,
        literal: &str,
        walk: &Walk,
    ) -> RedisResult<(u64, Vec<String>)> {
        let out_of_range = || RedisError::from((ErrorKind::Client, "SCAN cursor out of range"));
        if let Connection::Cluster(cluster) = self {
            let from = u16::try_from(cursor).ok().filter(|&slot| slot < SLOTS).ok_or_else(out_of_range)?;
            let slots = u16::try_from(count.clamp(64, 2048)).unwrap_or(2048);
            let (mut keys, next) = Box::pin(cluster.scan_slots(from, slots, count)).await?;
            keys.retain(|key| key.starts_with(literal));
            return Ok((next.map_or(0, u64::from), keys));
        }
        let (member, inner) = (cursor >> MEMBER_SHIFT, cursor & INNER_MASK);
        let members = self.members() as u64;
        if member >= members {
            return Err(out_of_range());
        }
        let (mut inner, mut tries) = (inner, 0);
        let (next, keys) = loop {
            let mut pipe = redis::pipe();
            pipe.ignore_errors().cmd("INFO").arg("server");
            pipe.cmd("SCAN").arg(inner).arg("MATCH").arg(pattern(literal)).arg("COUNT").arg(count);
            let replies: Vec<Value> = self.query_pipeline(member as usize, &pipe).await?;
            let mut replies = replies.into_iter();
            // A server that refuses `INFO` (an ACL): not checked.
            let run_id = replies.next().and_then(|info| redis::from_redis_value::<String>(info).ok()).and_then(run_id);
            // Names as bytes: a key that is not UTF-8 (no session's: ids are
            // ASCII) is skipped, not a failed page that would stop every walk
            // at this cursor for good.
            let page: (u64, Vec<Vec<u8>>) =
                redis::from_redis_value(replies.next().unwrap_or(Value::Nil).extract_error()?)?;
            tries += 1;
            if walk.same_server(member, inner, run_id) || tries > 3 {
                break page;
            }
            if walk.restarts() > MAX_RESTARTS {
                // Not one server behind this address (a proxy in front of
                // several?): no walk of it can be complete.
                return Err(RedisError::from((
                    ErrorKind::Client,
                    "SCAN: the server behind this backend keeps changing",
                    format!("{} restarts in one walk", walk.restarts()),
                )));
            }
            tracing::warn!(
                member,
                "SCAN: the server restarted or failed over mid-walk; walking it again from the start"
            );
            inner = 0;
        };
        let keys = keys.into_iter().filter_map(|key| String::from_utf8(key).ok()).collect();
        if next > INNER_MASK {
            return Err(out_of_range());
        }
        let next = match next {
            0 if member + 1 < members => (member + 1) << MEMBER_SHIFT,
            0 => 0,
            inner => (member << MEMBER_SHIFT) | inner,
        };
        Ok((next, keys))
    }
}

/// How often one walk may start a server over before it gives up.
const MAX_RESTARTS: u64 = 8;

/// Which server process each member's cursor of one walk came from.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    run_ids: Mutex<HashMap<u64, String>>,
    restarts: AtomicU64,
}

impl Walk {
    /// How often a member's walk started over (a key may have been seen
    /// twice since).
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Whether a page read at `inner` from `member` came from the process
    /// that handed out the cursor; records `run_id` as the member's. A
    /// member's first page of this walk (a cursor resumed from another run
    /// cannot be checked) and one at its start always do.
    fn same_server(&self, member: u64, inner: u64, run_id: Option<String>) -> bool {
        let Some(run_id) = run_id else { return true };
        let mut run_ids = self.run_ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = run_ids.insert(member, run_id.clone());
        if inner == 0 || before.is_none_or(|before| before == run_id) {
            return true;
        }
        self.restarts.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// The `run_id` line of `INFO server`.
fn run_id(info: String) -> Option<String> {
    info.lines().find_map(|line| line.strip_prefix("run_id:")).map(|id| id.trim().to_owned())
}

/// `SCAN MATCH`'s pattern for the keys starting with `literal`.
fn pattern(literal: &str) -> String {
    let mut pattern = String::with_capacity(literal.len() + 1);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_walk_starts_a_member_over_when_its_server_changed() {
        let walk = super::Walk::default();
        let id = |s: &str| Some(s.to_owned());
        assert!(walk.same_server(0, 0, id("a")));
        assert!(walk.same_server(0, 17, id("a")));
        assert!(!walk.same_server(0, 33, id("b")), "restarted mid-walk");
        assert!(walk.same_server(0, 0, id("b")), "from the start again");
        assert!(walk.same_server(1, 5, id("c")), "a member's first page: cannot tell");
        assert!(walk.same_server(1, 9, None), "INFO refused: cannot tell");
        assert_eq!(walk.restarts(), 1);
        assert_eq!(super::run_id("# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\n".into()), id("abc123"));
    }

    #[test]
    fn glob_characters_are_taken_literally() {
        assert_eq!(super::pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
        assert_eq!(super::pattern(""), "*");
    }
}
