//! The Lua scripts that make session writes safe when outcomes are unknown:
//! tombstones, and write deadlines.
//!
//! # Tombstones
//!
//! A logout runs [`LOGOUT`] on each write backend: it removes the session and,
//! in the same atomic step, leaves a tombstone key beside it, living
//! `tombstone_ttl` (default one hour). Every copy of a session into a write
//! backend (copy-on-read, a save filling a backend that missed it, the
//! migrator) runs [`COPY`] or [`FILL`], which write nothing where a
//! tombstone is. So a copy that is late, retried, or lands after the logout
//! returned cannot bring the session back, and no copy ever needs to be
//! checked or undone (the check-and-undo this replaces could undo newer
//! writes, and an undo whose reply was lost left the outcome unknown).
//!
//! Where a tombstone lives beside its session is `keys.rs`' business.
//!
//! # Write deadlines
//!
//! A command may still run long after it was sent: redis-rs cannot take
//! back what it sent, and a paused or frozen server runs what waited in its
//! buffers when it resumes, a whole connection at a time. Every script that
//! writes a session therefore carries a deadline on the server's clock
//! (`clock.rs` says how we know it) and writes nothing past it:
//!
//! * a save ([`SAVE`], and [`FILL`] for a backend it missed): the moment
//!   its sender stops waiting for it. A save that timed out either ran
//!   before its sender gave up or never runs, so it cannot run after a later
//!   save through another instance and undo it.
//! * a copy ([`COPY`]): half the tombstone's lifetime after the session was
//!   read from its source. A logout that removed the session from the source
//!   came after that read, and its tombstone outlives the copy's deadline,
//!   so a copy meets the tombstone or is refused, however late it arrives;
//!   and this holds whatever the session's own expiry.

/// A Lua script, sent as `EVALSHA` (its body only when the server does not
/// know it yet: after a restart, a failover or `SCRIPT FLUSH`).
pub(crate) struct Lua {
    /// The body.
    pub(crate) code: &'static str,
    sha: std::sync::OnceLock<String>,
}

impl Lua {
    const fn new(code: &'static str) -> Lua {
        Lua { code, sha: std::sync::OnceLock::new() }
    }

    /// The SHA1 that `EVALSHA` names the script by.
    pub(crate) fn sha(&self) -> &str {
        self.sha.get_or_init(|| redis::Script::new(self.code).get_hash().to_owned())
    }
}

/// `KEYS[1]` session, `KEYS[2]` its tombstone; `ARGV[1]` value, `ARGV[2]`
/// `PXAT`, `ARGV[3]` deadline (server clock, ms), `ARGV[4]` what to do:
/// `0` copy, `1` copy and hand back the value a key already there holds,
/// `2` only look (copy-on-read `off`). `SET NX` unless tombstoned or past
/// the deadline: `1` written, `-1` tombstoned (a logout ran), `-2` too late;
/// when the key was there (a copy, or a newer save: never overwritten), `0`,
/// or its value.
pub(crate) static COPY: Lua = Lua::new(concat!(
    "local t = redis.call('TIME')\n",
    "if t[1] * 1000 + math.floor(t[2] / 1000) > tonumber(ARGV[3]) then return -2 end\n",
    "if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end\n",
    "if ARGV[4] ~= '2' and redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2], 'NX') then return 1 end\n",
    "if ARGV[4] ~= '0' then return redis.call('GET', KEYS[1]) or 0 end\n",
    "return 0"
));

/// `KEYS[1]` session; `ARGV[1]` value, `ARGV[2]` `PXAT`, `ARGV[3]` deadline
/// (server clock, ms). `SET XX` unless past the deadline. Returns one
/// integer (a reply table costs the server more than the write): the
/// server's time (ms), positive when the session was there and is
/// overwritten, negated when it was missing (nothing written); too late,
/// `{time}` (rare: a table then carries the clock, so that an estimate
/// made wrong by a clock step heals).
pub(crate) static SAVE: Lua = Lua::new(concat!(
    "local t = redis.call('TIME')\n",
    "local now = t[1] * 1000 + math.floor(t[2] / 1000)\n",
    "if now > tonumber(ARGV[3]) then return {now} end\n",
    "if redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2], 'XX') then return now end\n",
    "return -now"
));

/// As [`COPY`], but a key already there is overwritten (`SET XX`): a save's
/// own record, newer than any copy made from a source; and, as [`SAVE`], not
/// past the deadline `ARGV[3]`. Returns as [`SAVE`] (the server's time
/// when the session was there and is overwritten, negated when it was
/// missing and is now written; `{time}` too late), or `-1` when tombstoned.
pub(crate) static FILL: Lua = Lua::new(concat!(
    "local t = redis.call('TIME')\n",
    "local now = t[1] * 1000 + math.floor(t[2] / 1000)\n",
    "if now > tonumber(ARGV[3]) then return {now} end\n",
    "if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end\n",
    "if redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2], 'NX') then return -now end\n",
    "redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2], 'XX')\n",
    "return now"
));

/// `KEYS[1]` session, `KEYS[2]` its tombstone; `ARGV[1]` how long the
/// tombstone lives (ms), `ARGV[2]` `1` to get the session's value back (to
/// find its user's index; a key of another type is deleted all the same). Deletes the session and leaves the tombstone
/// (never shortening one already there). Idempotent. Returns the value
/// when asked and there was one, else `1`.
pub(crate) static LOGOUT: Lua = Lua::new(concat!(
    "local value = ARGV[2] == '1' and redis.pcall('GET', KEYS[1])\n",
    "if type(value) ~= 'string' then value = nil end\n",
    "redis.call('DEL', KEYS[1])\n",
    "if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[1]) then\n",
    "  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])\n",
    "end\n",
    "return value or 1"
));

/// `KEYS[1]` a user's index (`users.rs`); `ARGV[1]` session id, `ARGV[2]`
/// its score (ms: at least its expiry), `ARGV[3]` `1` to get the other
/// entries back. Drops the entries whose score passed (server clock), adds
/// the session or raises its score, and makes the index expire with its
/// last entry. The score never goes down (the entry must outlive the
/// session, and a save that shortened its expiry may not have run), and it
/// changes on every call, by 1 ms if need be: [`PRUNE`] removes an entry
/// only if no index write touched it since it was read. When asked,
/// returns the other entries, oldest first, as id, score, id, score...
pub(crate) static INDEX: Lua = Lua::new(concat!(
    "local t = redis.call('TIME')\n",
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t[1] * 1000 + math.floor(t[2] / 1000))\n",
    "local score = tonumber(ARGV[2])\n",
    "local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))\n",
    "if old and old >= score then score = old + 1 end\n",
    "redis.call('ZADD', KEYS[1], string.format('%.0f', score), ARGV[1])\n",
    "local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')\n",
    "redis.call('PEXPIREAT', KEYS[1], last[2])\n",
    "if ARGV[3] ~= '1' then return {} end\n",
    "local others = {}\n",
    "local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')\n",
    "for i = 1, #all, 2 do\n",
    "  if all[i] ~= ARGV[1] then\n",
    "    others[#others + 1] = all[i]\n",
    "    others[#others + 1] = all[i + 1]\n",
    "  end\n",
    "end\n",
    "return others"
));

/// `KEYS[1]` a user's index; `ARGV` pairs of session id and the score
/// [`INDEX`] returned for it. Removes each entry whose score is still that
/// one: an entry that an index write touched since (a session written
/// there after it was found missing) stays. Returns how many went.
pub(crate) static PRUNE: Lua = Lua::new(concat!(
    "local n = 0\n",
    "for i = 1, #ARGV - 1, 2 do\n",
    "  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])\n",
    "  if score and tonumber(score) == tonumber(ARGV[i + 1]) then\n",
    "    n = n + redis.call('ZREM', KEYS[1], ARGV[i])\n",
    "  end\n",
    "end\n",
    "return n"
));
