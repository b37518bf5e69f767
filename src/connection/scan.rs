//! Walking every key of a backend under a literal prefix, whatever its
//! topology, with one cursor (a `u64`) the caller hands back:
//!
//! * one server (or a Sentinel group's master): `SCAN`'s own cursor;
//! * a partition: member after member, the member in the top 8 bits of the
//!   cursor and that member's `SCAN` cursor in the rest;
//! * a Redis Cluster: hash slot after hash slot, the cursor being the next
//!   slot (`cluster.rs` says why not `SCAN` per node).

use redis::{ErrorKind, RedisError, RedisResult};

use super::Connection;
use super::cluster::SLOTS;

/// Bits of a partition's cursor that hold the member.
const MEMBER_SHIFT: u32 = 56;
const INNER_MASK: u64 = (1 << MEMBER_SHIFT) - 1;

impl Connection {
    /// The keys starting with `literal` (taken literally: glob characters
    /// are escaped) from `cursor` on, about `count` at a time, and the
    /// cursor to go on from (`0`: done).
    pub(crate) async fn scan(&self, cursor: u64, count: usize, literal: &str) -> RedisResult<(u64, Vec<String>)> {
        let out_of_range = || RedisError::from((ErrorKind::Client, "SCAN cursor out of range"));
        if let Connection::Cluster(cluster) = self {
            let from = u16::try_from(cursor).ok().filter(|&slot| slot < SLOTS).ok_or_else(out_of_range)?;
            let slots = u16::try_from(count.clamp(64, 2048)).unwrap_or(2048);
            let (mut keys, next) = Box::pin(cluster.scan_slots(from, slots)).await?;
            keys.retain(|key| key.starts_with(literal));
            return Ok((next.map_or(0, u64::from), keys));
        }
        let (member, inner) = (cursor >> MEMBER_SHIFT, cursor & INNER_MASK);
        let members = self.members() as u64;
        if member >= members {
            return Err(out_of_range());
        }
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(inner).arg("MATCH").arg(pattern(literal)).arg("COUNT").arg(count);
        // Names as bytes: a key that is not UTF-8 (no session's: ids are
        // ASCII) is skipped, not a failed page that would stop every walk
        // at this cursor for good.
        let (next, keys): (u64, Vec<Vec<u8>>) = self.query(member as usize, &cmd).await?;
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
    fn glob_characters_are_taken_literally() {
        assert_eq!(super::pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
        assert_eq!(super::pattern(""), "*");
    }
}
