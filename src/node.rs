//! One backend's live form ([`Node`], crate-internal: name, modes, key
//! prefix, connection, breaker, timeouts), which runs the few Redis
//! commands a session store needs.

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Cmd, FromRedisValue, Value};

use crate::backend::{Address, Backend};
use crate::breaker::{Breaker, BreakerState, Permit};
use crate::clock::{self, ServerClocks};
use crate::connection::{Connection, Walk};
use crate::error::Error;
use crate::health::{BackendCounters, BackendHealth, Counter};
use crate::keys;
use crate::mode::Modes;
use crate::scripts::{COPY, FILL, INDEX, LOGOUT, Lua, PRUNE, SAVE};

/// The instant an operation must be done by, if any.
pub(crate) type Deadline = Option<tokio::time::Instant>;

/// What a copy into a write backend is to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopyMode {
    /// Copy.
    Copy,
    /// Copy, and hand back the value a key already there holds.
    CopyAndShow,
    /// Write nothing: only look for a tombstone, and hand back a value there.
    Look,
}

impl CopyMode {
    /// [`COPY`](crate::scripts::COPY)'s `ARGV[4]`.
    fn arg(self) -> &'static [u8] {
        match self {
            CopyMode::Copy => b"0",
            CopyMode::CopyAndShow => b"1",
            CopyMode::Look => b"2",
        }
    }
}

/// What a conditional copy into a write backend found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Copied {
    /// The session was missing and is now written.
    Written,
    /// The session was there: kept (a copy; with its value when asked for)
    /// or overwritten (a fill).
    Present(Option<Vec<u8>>),
    /// A logout left a tombstone: nothing written.
    Tombstoned,
}

impl Copied {
    /// From the reply of [`COPY`](crate::scripts::COPY) or the code of
    /// [`FILL`](crate::scripts::FILL): `Err(true)` when the server refused
    /// it as too late, `Err(false)` for a reply of another shape.
    pub(crate) fn from_reply(reply: Value) -> Result<Copied, bool> {
        match reply {
            Value::Int(1) => Ok(Copied::Written),
            Value::Int(0) => Ok(Copied::Present(None)),
            Value::Int(-1) => Ok(Copied::Tombstoned),
            Value::Int(-2) => Err(true),
            Value::BulkString(bytes) => Ok(Copied::Present(Some(bytes))),
            _ => Err(false),
        }
    }
}

/// A connected backend, as the store uses it.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) modes: Modes,
    pub(crate) prefix: String,
    conn: Connection,
    /// Hard bound of one command: connecting plus answering.
    op_timeout: Duration,
    /// How long redis-rs waits for an answer.
    socket_timeout: Duration,
    /// What we know of the servers' clocks, for write deadlines.
    clocks: ServerClocks,
    /// Whether saves carry a deadline the server enforces.
    refuse_late_writes: bool,
    /// How long a logout's tombstone lives.
    tombstone_ttl: Duration,
    /// Replicas a write waits for, and for how long (ms): `None` when off.
    wait: Option<crate::connection::Wait>,
    retry_on_timeout: bool,
    /// Per member, its circuit breaker and health: a partition's member
    /// that is down must neither keep the others' answers from counting
    /// against it nor take them down with it.
    members: Box<[Member]>,
    counters: [AtomicU64; 7],
    last_error: Mutex<Option<String>>,
    /// The `metrics` handles of the counters, registered once.
    #[cfg(feature = "metrics")]
    metrics: [metrics::Counter; 7],
}

/// The `metrics` names of the counters, in [`Counter`] order.
#[cfg(feature = "metrics")]
const METRIC_NAMES: [&str; 7] = [
    "tower_sessions_redis_hits_total",
    "tower_sessions_redis_misses_total",
    "tower_sessions_redis_copies_total",
    "tower_sessions_redis_errors_total",
    "tower_sessions_redis_timeouts_total",
    "tower_sessions_redis_breaker_trips_total",
    "tower_sessions_redis_index_pruned_total",
];

/// One server of a backend (a partition's member, or the one server): its
/// circuit breaker, and whether its last command succeeded (an operation on
/// every member, such as a walk, counts for each).
struct Member {
    breaker: Breaker,
    last_ok: AtomicBool,
}

impl Member {
    fn answered(&self) {
        // Read first: writing a shared flag on every command would bounce
        // its cache line between worker threads.
        if !self.last_ok.load(Ordering::Relaxed) {
            self.last_ok.store(true, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("modes", &self.modes)
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Prepares the connection; nothing is sent over the network yet, so a
    /// store can be built while one of its servers is down.
    pub(crate) fn connect(backend: &Backend, refuse_late_writes: bool, tombstone_ttl: Duration) -> Result<Node, Error> {
        let conn = Connection::open(backend)?;
        let members = conn.members();
        let shared_clock = matches!(backend.address, Address::Sentinel { .. } | Address::Cluster(_));
        Ok(Node {
            name: backend.name.clone(),
            modes: backend.modes,
            prefix: backend.prefix.clone(),
            clocks: ServerClocks::new(conn.members(), shared_clock),
            conn,
            op_timeout: backend.socket_timeout * 2,
            socket_timeout: backend.socket_timeout,
            refuse_late_writes,
            tombstone_ttl,
            wait: backend.wait(),
            retry_on_timeout: backend.retry_on_timeout,
            members: (0..members)
                .map(|_| Member { breaker: Breaker::new(backend.breaker), last_ok: AtomicBool::new(true) })
                .collect(),
            counters: Default::default(),
            last_error: Mutex::new(None),
            #[cfg(feature = "metrics")]
            metrics: METRIC_NAMES.map(|name| metrics::counter!(name, "backend" => backend.name.clone())),
        })
    }

    /// The Redis key of a session id: the prefix, then the id.
    pub(crate) fn key(&self, id: &(impl fmt::Display + ?Sized)) -> String {
        use fmt::Write;
        let mut key = String::with_capacity(self.prefix.len() + 24);
        key.push_str(&self.prefix);
        let _ = write!(key, "{id}");
        key
    }

    /// Adds one to a counter (and to the `metrics` facade with that feature).
    pub(crate) fn count(&self, counter: Counter) {
        self.count_n(counter, 1);
    }

    /// Adds `n` to a counter (and to the `metrics` facade with that feature).
    fn count_n(&self, counter: Counter, n: u64) {
        self.counters[counter as usize].fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics[counter as usize].increment(n);
    }

    /// What the store saw of this backend.
    pub(crate) fn health(&self) -> BackendHealth {
        let c = |counter: Counter| self.counters[counter as usize].load(Ordering::Relaxed);
        let states: Vec<BreakerState> = self.members.iter().map(|m| m.breaker.state()).collect();
        // Reported: the worst member's.
        let breaker = states.iter().copied().max_by_key(|state| match state {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        });
        let breaker = breaker.unwrap_or(BreakerState::Closed);
        // Up while some member answered its last command and is not
        // skipped: a partition with one member down still serves the
        // others' sessions (and every instance would be unready at once). A
        // member whose breaker went half-open without traffic to probe it
        // does not count against it.
        let up = states
            .iter()
            .zip(&self.members)
            .any(|(state, m)| *state != BreakerState::Open && m.last_ok.load(Ordering::Relaxed));
        BackendHealth {
            name: self.name.clone(),
            modes: self.modes,
            up,
            breaker,
            last_error: self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            counters: BackendCounters {
                hits: c(Counter::Hit),
                misses: c(Counter::Miss),
                copies: c(Counter::Copy),
                errors: c(Counter::Error),
                timeouts: c(Counter::Timeout),
                breaker_trips: c(Counter::BreakerTrip),
                index_pruned: c(Counter::IndexPruned),
            },
        }
    }

    /// Runs `attempt` (given its time bound) through member `member`'s
    /// circuit breaker, bounded by the command timeout and the operation's
    /// `deadline`, retried once after a timeout when `idempotent` and the
    /// backend asks for it. `None`: an operation on every member (a walk,
    /// loading scripts), through the breaker only when there is one member:
    /// a partition's member that is down is the walk's own error to report.
    async fn guarded<T, F, Fut>(
        &self,
        op: &'static str,
        member: Option<usize>,
        deadline: Option<tokio::time::Instant>,
        idempotent: bool,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        // The one member it goes to; `None`: every member.
        let one = match member {
            Some(member) => self.members.get(member),
            None if self.members.len() == 1 => self.members.first(),
            None => None,
        };
        let permit = one.map_or(Permit::Go, |m| m.breaker.allow());
        if let Permit::Refused(retry_in) = permit {
            self.count(Counter::Error);
            return Err(Error::Unavailable { backend: self.name.clone(), retry_in });
        }
        let attempts = if idempotent && self.retry_on_timeout { 2 } else { 1 };
        let mut attempt_no = 0;
        let result = loop {
            attempt_no += 1;
            // redis-rs bounds connecting and answering (`socket_timeout` each);
            // a timer of our own is armed only for an operation deadline.
            let result = match deadline {
                None => attempt().await.map_err(|source| Error::Redis { backend: self.name.clone(), op, source }),
                Some(at) => {
                    let bound = self.op_timeout.min(at.saturating_duration_since(tokio::time::Instant::now()));
                    // Boxed: a timer is large, and most stores set no deadline.
                    match Box::pin(tokio::time::timeout(bound, attempt())).await {
                        Ok(Ok(value)) => Ok(value),
                        Ok(Err(source)) => Err(Error::Redis { backend: self.name.clone(), op, source }),
                        Err(_elapsed) => Err(Error::Timeout { backend: self.name.clone(), op, after: bound }),
                    }
                }
            };
            match &result {
                Err(err)
                    if attempt_no < attempts
                        && err.is_timeout()
                        && deadline.is_none_or(|at| tokio::time::Instant::now() < at) =>
                {
                    tracing::debug!(backend = %self.name, op, "timed out; retrying");
                }
                _ => break result,
            }
        };
        let unreachable = result.as_ref().err().is_some_and(|e| e.is_timeout() || e.is_connection_error());
        if one.is_some_and(|m| m.breaker.record(&permit, unreachable)) {
            self.count(Counter::BreakerTrip);
            tracing::warn!(backend = %self.name, "circuit breaker open: backend skipped during its cool-down");
        }
        tracing::trace!(backend = %self.name, op, ok = result.is_ok(), "command");
        let members = one.map_or(&self.members[..], std::slice::from_ref);
        match &result {
            Ok(_) => members.iter().for_each(Member::answered),
            Err(err) => self.failed(members, err),
        }
        result
    }

    /// `members` failed with `err`.
    fn failed(&self, members: &[Member], err: &Error) {
        self.count(Counter::Error);
        if err.is_timeout() {
            self.count(Counter::Timeout);
        }
        for member in members {
            member.last_ok.store(false, Ordering::Relaxed);
        }
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(err.to_string());
    }

    /// One command, to member `member` of the backend.
    async fn run<T: FromRedisValue>(
        &self,
        op: &'static str,
        member: usize,
        cmd: &Cmd,
        idempotent: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<T, Error> {
        self.guarded(op, Some(member), deadline, idempotent, || self.conn.query::<T>(member, cmd)).await
    }

    /// A session write to member `member`, acknowledged once the replicas
    /// this backend waits for hold it.
    async fn run_write<T: FromRedisValue>(
        &self,
        op: &'static str,
        member: usize,
        cmd: &Cmd,
        idempotent: bool,
        deadline: Deadline,
    ) -> Result<T, Error> {
        self.guarded(op, Some(member), deadline, idempotent, || self.send_write(member, cmd)).await
    }

    /// Sends a write, followed by `WAIT` when this backend waits for replicas.
    async fn send_write<T: FromRedisValue>(&self, member: usize, cmd: &Cmd) -> redis::RedisResult<T> {
        match self.wait {
            None => self.conn.query(member, cmd).await,
            // Boxed: keeps the futures of backends without it small.
            Some(wait) => Box::pin(self.conn.query_replicated(member, cmd, wait)).await,
        }
    }

    /// `SET key value PXAT expiry <condition>` (`NX` or `XX`): whether the
    /// value was written.
    async fn set_if(
        &self,
        op: &'static str,
        condition: &'static str,
        id: &(impl fmt::Display + ?Sized),
        (value, pxat): (&[u8], u64),
        idempotent: bool,
        deadline: Deadline,
    ) -> Result<bool, Error> {
        let (key, member) = self.route(id);
        // Sized up front: the value is most of the command.
        let mut cmd = redis::Cmd::with_capacity(6, key.len() + value.len() + 32);
        cmd.arg("SET").arg(&key).arg(value).arg("PXAT").arg(pxat).arg(condition);
        let reply: Value = self.run_write(op, member, &cmd, idempotent, deadline).await?;
        Ok(!matches!(reply, Value::Nil))
    }

    /// The key of session `id` and the member that holds it, formatting the id once.
    fn route(&self, id: &(impl fmt::Display + ?Sized)) -> (String, usize) {
        let key = self.key(id);
        let member = self.conn.member_of(&key[self.prefix.len()..]);
        (key, member)
    }

    /// The session id of one of this backend's keys (the key without the prefix).
    pub(crate) fn id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())
    }

    /// `SCAN` for this backend's keys, from `cursor` on (`0` to start); the
    /// next cursor (`0`: done) and keys. `connection/scan.rs` says how a
    /// partition and a cluster are walked.
    pub(crate) async fn scan(&self, cursor: u64, count: usize, walk: &Walk) -> Result<(u64, Vec<String>), Error> {
        self.scan_after_prefix(cursor, count, "", walk).await
    }

    /// As [`scan`](Self::scan), for the keys that go on with `tail` after
    /// the prefix.
    pub(crate) async fn scan_after_prefix(
        &self,
        cursor: u64,
        count: usize,
        tail: &str,
        walk: &Walk,
    ) -> Result<(u64, Vec<String>), Error> {
        let literal = format!("{}{tail}", self.prefix);
        self.guarded("SCAN", None, None, true, || self.conn.scan(cursor, count, &literal, walk)).await
    }

    /// Sends commands, each to its member, in one pipeline per member (run
    /// concurrently). Replies come back in order; a command's error is its
    /// reply. With `write`, the batch counts as done once the replicas this
    /// backend waits for hold it (a `WAIT` ends each member's pipeline).
    pub(crate) async fn batch(
        &self,
        op: &'static str,
        items: Vec<(usize, Cmd)>,
        write: bool,
        bound: Deadline,
    ) -> Result<Vec<Value>, Error> {
        let batch = self.conn.batch(items);
        let wait = if write { self.wait } else { None };
        // Bounded as one command (redis-rs's response timeout covers a whole
        // pipeline), and by the operation's deadline when it has one; the
        // migrator's batches are idempotent, so one that timed out is
        // reported and redone.
        let own = tokio::time::Instant::now() + self.op_timeout;
        let deadline = bound.map_or(own, |at| at.min(own));
        let replies = futures_util::future::join_all(batch.pipelines().map(|(member, pipe)| {
            self.guarded(op, Some(member), Some(deadline), false, move || {
                self.conn.query_pipeline_write(member, pipe, wait)
            })
        }))
        .await;
        // A command's error reply is its own, but one saying the server
        // cannot serve now is the member's failure, as a failed command's
        // would be (health, `is_ready`).
        for ((member, _), reply) in batch.pipelines().zip(&replies) {
            if let Ok(values) = reply
                && let Some(source) = values.iter().find_map(cannot_serve)
            {
                let members = self.members.get(member..=member).unwrap_or_default();
                self.failed(members, &Error::Redis { backend: self.name.clone(), op, source });
            }
        }
        batch.replies(replies)
    }

    /// A probe for [`MultiRedisStore::is_ready`](crate::MultiRedisStore::is_ready):
    /// `PING`s, concurrently, the members whose last command failed and
    /// whose breaker lets a command through (its cool-down over); each
    /// outcome is recorded as any command's.
    pub(crate) async fn probe(&self) {
        let down = (0..self.conn.members()).filter(|&member| {
            self.members
                .get(member)
                .is_some_and(|m| !m.last_ok.load(Ordering::Relaxed) && m.breaker.state() != BreakerState::Open)
        });
        let ping = redis::cmd("PING");
        let pings = down.map(|member| self.run::<String>("PING", member, &ping, true, None));
        futures_util::future::join_all(pings).await;
    }

    /// `PING` of every member: the slowest round trip.
    pub(crate) async fn ping(&self) -> Result<Duration, Error> {
        let mut slowest = Duration::ZERO;
        for member in 0..self.conn.members() {
            let started = Instant::now();
            let _: String = self.run("PING", member, &redis::cmd("PING"), true, None).await?;
            slowest = slowest.max(started.elapsed());
        }
        Ok(slowest)
    }

    /// `GET`: the stored bytes, if any.
    pub(crate) async fn get(
        &self,
        id: &(impl fmt::Display + ?Sized),
        deadline: Deadline,
    ) -> Result<Option<Vec<u8>>, Error> {
        let (key, member) = self.route(id);
        self.run("GET", member, redis::cmd("GET").arg(key), true, deadline).await
    }

    /// `SET key value PXAT expiry NX`: whether the value was written. Not
    /// retried: its first attempt may have landed.
    pub(crate) async fn set_new(
        &self,
        id: &(impl fmt::Display + ?Sized),
        value: &[u8],
        pxat: u64,
        deadline: Deadline,
    ) -> Result<bool, Error> {
        self.set_if("SET NX", "NX", id, (value, pxat), false, deadline).await
    }

    /// One of the [`scripts`](crate::scripts) on session `id`, routed to the
    /// member that holds the session: `EVALSHA sha 2 key tombstone args...`,
    /// or `... 1 key args...` without `tombstone`; `EVAL` with the body when
    /// `body` (the server does not know the script yet, or a pipeline that
    /// cannot fall back).
    pub(crate) fn script(
        &self,
        script: &Lua,
        body: bool,
        id: &(impl fmt::Display + ?Sized),
        tombstone: bool,
        args: &[&[u8]],
    ) -> (usize, Cmd) {
        let (key, member) = self.route(id);
        (member, self.script_on(script, body, &key, tombstone, args))
    }

    /// [`script`](Self::script) on a key already routed.
    fn script_on(&self, script: &Lua, body: bool, key: &str, tombstone: bool, args: &[&[u8]]) -> Cmd {
        let mut cmd = redis::Cmd::with_capacity(5 + args.len(), 2 * key.len() + 128);
        if body {
            cmd.arg("EVAL").arg(script.code);
        } else {
            cmd.arg("EVALSHA").arg(script.sha());
        }
        if tombstone {
            let tomb = keys::tombstone_key(&self.prefix, key, self.conn.is_cluster());
            cmd.arg(2).arg(key).arg(tomb);
        } else {
            cmd.arg(1).arg(key);
        }
        for arg in args {
            cmd.arg(*arg);
        }
        cmd
    }

    /// Runs a script by its SHA1, and again with its body when the server
    /// answers `NOSCRIPT` (it ran nothing, so resending is safe; it is not a
    /// failure of the backend). Every script here may also be retried: all
    /// are idempotent in effect, but `INDEX`, whose retry raises an entry's
    /// score by one more millisecond.
    async fn run_script<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Lua,
        (key, member): (&str, usize),
        tombstone: bool,
        args: &[&[u8]],
        deadline: Deadline,
    ) -> Result<T, Error> {
        let by_sha = self.script_on(script, false, key, tombstone, args);
        let attempt = || async {
            match self.send_write::<T>(member, &by_sha).await {
                Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    let with_body = self.script_on(script, true, key, tombstone, args);
                    // Boxed: rare (once per server and script), and large.
                    Box::pin(self.send_write::<T>(member, &with_body)).await
                }
                other => other,
            }
        };
        self.guarded(op, Some(member), deadline, true, attempt).await
    }

    /// Learns the clock of the server holding session key `key`'s member
    /// with `TIME`, unless known: a write must never go out without a deadline.
    async fn know_clock(&self, member: usize, deadline: Deadline) -> Result<(), Error> {
        if self.clocks.known(member) {
            return Ok(());
        }
        let sent = clock::now_ms();
        let (secs, micros): (i64, i64) = self.run("TIME", member, &redis::cmd("TIME"), true, deadline).await?;
        self.clocks.observe(member, secs.saturating_mul(1000).saturating_add(micros / 1000), sent);
        Ok(())
    }

    /// When a save's [`fill`](Self::fill) sent at `from` (a
    /// [`clock::now_ms`] reading) has run or never will, whatever its
    /// reply said: its deadline on the server's clock is then past.
    pub(crate) fn fill_settled_at(&self, from: i64) -> i64 {
        from.saturating_add(i64::try_from(self.socket_timeout.as_millis()).unwrap_or(i64::MAX))
    }

    /// Prepares every server of this backend for pipelined copies (the
    /// migrator's batches): learns their clocks, and loads the copy and index scripts
    /// so a pipeline can name them by their SHA1 (a batch cannot fall back on
    /// `NOSCRIPT`; a server that restarts mid-run answers it, and those
    /// sessions are reported and redone by a later run).
    pub(crate) async fn prepare_copies(&self) -> Result<(), Error> {
        for script in [&COPY, &INDEX] {
            self.guarded("SCRIPT LOAD", None, None, true, || self.conn.load_script(script.code)).await?;
        }
        for member in 0..self.conn.members() {
            self.know_clock(member, None).await?;
        }
        Ok(())
    }

    /// The `COPY` of session `id` into this backend (for a pipeline), given
    /// the time ([`clock::now_ms`]) it was read from its source: its deadline
    /// is half a tombstone's life after that (`scripts.rs`). `None` while
    /// this member's clock is unknown (see [`prepare_copies`](Self::prepare_copies)).
    pub(crate) fn copy_cmd(&self, id: &str, value: &[u8], pxat: u64, read_at: i64) -> Option<(usize, Cmd)> {
        let member = self.conn.member_of(id);
        let at = self.clocks.deadline(member, read_at, self.tombstone_ttl / 2)?.to_string();
        let pxat = pxat.to_string();
        Some(self.script(&COPY, false, id, true, &[value, pxat.as_bytes(), at.as_bytes(), CopyMode::Copy.arg()]))
    }

    /// Writes a session read from a source at `read_at` unless a logout left
    /// a tombstone ([`COPY`](crate::scripts::COPY): never overwrites), per
    /// `mode`. Idempotent in effect, so it may be retried.
    pub(crate) async fn copy(
        &self,
        id: &(impl fmt::Display + ?Sized),
        value: &[u8],
        pxat: u64,
        read_at: i64,
        mode: CopyMode,
        deadline: Deadline,
    ) -> Result<Copied, Error> {
        let (key, member) = self.route(id);
        self.know_clock(member, deadline).await?;
        let at = self.clocks.deadline(member, read_at, self.tombstone_ttl / 2).unwrap_or(0).to_string();
        let pxat = pxat.to_string();
        let args = [value, pxat.as_bytes(), at.as_bytes(), mode.arg()];
        let reply: Value = self.run_script("COPY", &COPY, (&key, member), true, &args, deadline).await?;
        self.copied(reply, "COPY")
    }

    /// A copy's reply: refused as too late is this backend's timeout
    /// (nothing was written); another shape, an error naming it.
    fn copied(&self, reply: Value, op: &'static str) -> Result<Copied, Error> {
        Copied::from_reply(reply.clone()).map_err(|late| {
            if late {
                self.late(op)
            } else {
                let detail = format!("{reply:?}");
                Error::Redis {
                    backend: self.name.clone(),
                    op,
                    source: redis::RedisError::from((redis::ErrorKind::Client, "unexpected reply", detail)),
                }
            }
        })
    }

    /// A save's `SET XX`, refused by the server past the moment we give up
    /// on it ([`SAVE`](crate::scripts::SAVE)): whether the key was there.
    pub(crate) async fn save(
        &self,
        id: &(impl fmt::Display + ?Sized),
        value: &[u8],
        pxat: u64,
        deadline: Deadline,
    ) -> Result<bool, Error> {
        if !self.refuse_late_writes {
            return self.set_if("SET XX", "XX", id, (value, pxat), true, deadline).await;
        }
        // Boxed: keeps every save's future small (tower-sessions boxes it too).
        let found = Box::pin(self.run_timed("SAVE", &SAVE, false, id, value, pxat, clock::now_ms(), deadline)).await?;
        Ok(found == Some(true))
    }

    /// A save's record written where a backend missed it, over any copy,
    /// unless tombstoned or past the moment the save (begun at `from`, a
    /// [`clock::now_ms`] reading) gives up ([`FILL`](crate::scripts::FILL)).
    pub(crate) async fn fill(
        &self,
        id: &(impl fmt::Display + ?Sized),
        value: &[u8],
        pxat: u64,
        from: i64,
        deadline: Deadline,
    ) -> Result<Copied, Error> {
        Ok(match self.run_timed("FILL", &FILL, true, id, value, pxat, from, deadline).await? {
            Some(true) => Copied::Present(None),
            Some(false) => Copied::Written,
            None => Copied::Tombstoned,
        })
    }

    /// Runs [`SAVE`](crate::scripts::SAVE) or [`FILL`](crate::scripts::FILL)
    /// with a deadline on the server's clock: `from` (a [`clock::now_ms`]
    /// reading) plus how long we wait for the answer. Learns the server's
    /// clock from the reply. Whether the session was there before (`None`:
    /// a tombstone). "Too late" is this backend's timeout: nothing was written.
    #[allow(clippy::too_many_arguments)]
    async fn run_timed(
        &self,
        op: &'static str,
        script: &Lua,
        tombstone: bool,
        id: &(impl fmt::Display + ?Sized),
        value: &[u8],
        pxat: u64,
        from: i64,
        deadline: Deadline,
    ) -> Result<Option<bool>, Error> {
        let (key, member) = self.route(id);
        let at = if self.refuse_late_writes {
            self.know_clock(member, deadline).await?;
            // We stop waiting after the socket timeout, or sooner at the
            // operation's deadline.
            let wait = match deadline {
                Some(at) => self.socket_timeout.min(at.saturating_duration_since(tokio::time::Instant::now())),
                None => self.socket_timeout,
            };
            self.clocks.deadline(member, from, wait).unwrap_or(0)
        } else {
            u64::MAX
        };
        let (pxat, at) = (pxat.to_string(), at.to_string());
        let args: [&[u8]; 3] = [value, pxat.as_bytes(), at.as_bytes()];
        let sent = clock::now_ms();
        let reply: Value = self.run_script(op, script, (&key, member), tombstone, &args, deadline).await?;
        match reply {
            Value::Int(-1) => Ok(None),
            Value::Int(now) if now != 0 => {
                self.clocks.observe(member, now.saturating_abs(), sent);
                Ok(Some(now > 0))
            }
            // Too late: nothing written; the reply carries the server's clock.
            Value::Array(ref late) if let [Value::Int(now)] = late.as_slice() => {
                self.clocks.observe(member, *now, sent);
                Err(self.late(op))
            }
            other => Err(Error::Redis {
                backend: self.name.clone(),
                op,
                source: redis::RedisError::from((redis::ErrorKind::Client, "unexpected reply", format!("{other:?}"))),
            }),
        }
    }

    /// The error of a write the server refused as too late: a timeout, and
    /// nothing was written.
    fn late(&self, op: &'static str) -> Error {
        Error::Timeout { backend: self.name.clone(), op, after: self.socket_timeout }
    }

    /// Deletes a session and leaves its tombstone for `keep`
    /// ([`LOGOUT`](crate::scripts::LOGOUT)). Idempotent.
    pub(crate) async fn logout(
        &self,
        id: &(impl fmt::Display + ?Sized),
        want_value: bool,
        deadline: Deadline,
    ) -> Result<Option<Vec<u8>>, Error> {
        let keep = self.tombstone_ttl.as_millis().max(1).to_string();
        let (key, member) = self.route(id);
        let args = [keep.as_bytes(), if want_value { b"1" } else { b"0" }];
        // Boxed, as every rare path: keeps `delete`'s future small.
        let logout = self.run_script("LOGOUT", &LOGOUT, (&key, member), true, &args, deadline);
        match Box::pin(logout).await? {
            Value::BulkString(value) => Ok(Some(value)),
            _ => Ok(None),
        }
    }

    /// Where `user`'s session index is here: its key, and the member
    /// holding it.
    fn user_route(&self, user: &str) -> (String, usize) {
        self.route(&keys::user_index(user))
    }

    /// Adds session `id` with `score` (ms, at least its expiry) to `user`'s
    /// session index here ([`INDEX`](crate::scripts::INDEX)); with
    /// `others`, the other entries (id, score), oldest first.
    pub(crate) async fn index(
        &self,
        user: &str,
        id: &(impl fmt::Display + ?Sized),
        score: u64,
        others: bool,
        deadline: Deadline,
    ) -> Result<Vec<(String, u64)>, Error> {
        let (key, member) = self.user_route(user);
        let (id, score) = (id.to_string(), score.to_string());
        let args = [id.as_bytes(), score.as_bytes(), if others { b"1" } else { b"0" }];
        let flat: Vec<String> =
            Box::pin(self.run_script("INDEX", &INDEX, (&key, member), false, &args, deadline)).await?;
        let mut flat = flat.into_iter();
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        while let (Some(id), Some(score)) = (flat.next(), flat.next()) {
            // A score that is no number (set by hand) is not ours to prune.
            if let Ok(score) = score.parse() {
                pairs.push((id, score_ms(score)));
            }
        }
        Ok(pairs)
    }

    /// Removes from `user`'s index here the `entries` (id, score as
    /// [`index`](Self::index) or [`index_entries`](Self::index_entries)
    /// read it) that no index write touched since
    /// ([`PRUNE`](crate::scripts::PRUNE)).
    pub(crate) async fn prune(&self, user: &str, entries: &[(String, u64)], deadline: Deadline) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let (key, member) = self.user_route(user);
        let scores: Vec<String> = entries.iter().map(|(_, score)| score.to_string()).collect();
        let args: Vec<&[u8]> =
            entries.iter().zip(&scores).flat_map(|((id, _), score)| [id.as_bytes(), score.as_bytes()]).collect();
        let pruned: u64 = Box::pin(self.run_script("PRUNE", &PRUNE, (&key, member), false, &args, deadline)).await?;
        self.count_n(Counter::IndexPruned, pruned);
        Ok(())
    }

    /// [`index`](Self::index) as a command for a pipeline, not a login (the
    /// migrator's batches: see [`prepare_copies`](Self::prepare_copies)).
    pub(crate) fn index_cmd(&self, user: &str, id: &str, score: u64) -> (usize, Cmd) {
        let score = score.to_string();
        self.script(&INDEX, false, &keys::user_index(user), false, &[id.as_bytes(), score.as_bytes(), b"0"])
    }

    /// The entries of `user`'s session index here: session id and expiry (ms).
    pub(crate) async fn index_entries(&self, user: &str, deadline: Deadline) -> Result<Vec<(String, u64)>, Error> {
        let (key, member) = self.user_route(user);
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(&key).arg(0).arg(-1).arg("WITHSCORES");
        let entries: Vec<(String, f64)> = self.run("ZRANGE", member, &cmd, true, deadline).await?;
        Ok(entries.into_iter().map(|(id, score)| (id, score_ms(score))).collect())
    }

    /// Removes `ids` from `user`'s session index here.
    pub(crate) async fn index_remove(&self, user: &str, ids: &[String], deadline: Deadline) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let (key, member) = self.user_route(user);
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(&key).arg(ids);
        let _: u64 = self.run_write("ZREM", member, &cmd, true, deadline).await?;
        Ok(())
    }

    /// `op key` for each session of `ids`, one pipeline per member, the
    /// replies as `T` (an error reply, or one of another type, fails the
    /// whole batch). A `DEL` counts once the replicas this backend waits
    /// for hold it.
    pub(crate) async fn per_session<'a, T: FromRedisValue>(
        &self,
        op: &'static str,
        ids: impl IntoIterator<Item = &'a str>,
        deadline: Deadline,
    ) -> Result<Vec<T>, Error> {
        self.per_session_each(op, ids, deadline).await?.into_iter().collect()
    }

    /// [`per_session`](Self::per_session), each reply on its own: an error
    /// reply (`WRONGTYPE` from a key of another type under the prefix) or
    /// one that does not convert is that session's error, not its batch's.
    /// The whole is an error only when the batch failed (a connection, a
    /// timeout): one odd key must not stop a migration at every run.
    pub(crate) async fn per_session_each<'a, T: FromRedisValue>(
        &self,
        op: &'static str,
        ids: impl IntoIterator<Item = &'a str>,
        deadline: Deadline,
    ) -> Result<Vec<Result<T, Error>>, Error> {
        self.per_key(op, ids, |key| key, deadline).await
    }

    /// Whether each of the sessions `ids` has a tombstone here: a logout
    /// ran here (`scripts.rs`).
    pub(crate) async fn tombstoned<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
        deadline: Deadline,
    ) -> Result<Vec<bool>, Error> {
        let cluster = self.conn.is_cluster();
        self.per_key("EXISTS", ids, |key| keys::tombstone_key(&self.prefix, &key, cluster), deadline)
            .await?
            .into_iter()
            .collect()
    }

    /// `op` on the key `key_of` makes of each session's key, as
    /// [`per_session`](Self::per_session) (a key beside a session's lives on
    /// its member).
    async fn per_key<'a, T: FromRedisValue>(
        &self,
        op: &'static str,
        ids: impl IntoIterator<Item = &'a str>,
        key_of: impl Fn(String) -> String,
        deadline: Deadline,
    ) -> Result<Vec<Result<T, Error>>, Error> {
        let items = ids
            .into_iter()
            .map(|id| {
                let (key, member) = self.route(id);
                (member, redis::cmd(op).arg(key_of(key)).to_owned())
            })
            .collect();
        let values = self.batch(op, items, op == "DEL", deadline).await?;
        let convert = |v: Value| {
            // An error reply is an error of its kind (`WRONGTYPE`), not a
            // failed conversion.
            let value = v.extract_error()?;
            redis::from_redis_value(value).map_err(redis::RedisError::from)
        };
        Ok(values
            .into_iter()
            .map(|v| convert(v).map_err(|source| Error::Redis { backend: self.name.clone(), op, source }))
            .collect())
    }

    /// `SET <prefix><id> value PX ttl`: an instance's announcement (`announce.rs`).
    pub(crate) async fn announce(&self, id: &str, value: &str, ttl: Duration) -> Result<(), Error> {
        let (key, member) = self.route(id);
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let cmd = redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ttl).to_owned();
        let _: Value = self.run("SET", member, &cmd, true, None).await?;
        Ok(())
    }

    /// Adds announcement `id` to the `registry` here with `score` (ms), and
    /// drops the entries scored before `stale_before` (an instance gone
    /// without withdrawing): one round trip (`announce.rs`).
    pub(crate) async fn register(&self, registry: &str, id: &str, score: u64, stale_before: u64) -> Result<(), Error> {
        let (key, member) = self.route(registry);
        let add = redis::cmd("ZADD").arg(&key).arg(score).arg(id).to_owned();
        let prune = redis::cmd("ZREMRANGEBYSCORE").arg(&key).arg("-inf").arg(format!("({stale_before}")).to_owned();
        let replies = self.batch("ZADD", vec![(member, add), (member, prune)], false, None).await?;
        match replies.into_iter().find_map(|reply| reply.extract_error().err()) {
            Some(source) => Err(Error::Redis { backend: self.name.clone(), op: "ZADD", source }),
            None => Ok(()),
        }
    }

    /// The announcements in the `registry` here.
    pub(crate) async fn registered(&self, registry: &str) -> Result<Vec<String>, Error> {
        let (key, member) = self.route(registry);
        self.run("ZRANGE", member, redis::cmd("ZRANGE").arg(key).arg(0).arg(-1), true, None).await
    }

    /// Removes announcement `id` from the `registry` here.
    pub(crate) async fn unregister(&self, registry: &str, id: &str) -> Result<(), Error> {
        let (key, member) = self.route(registry);
        let _: u64 = self.run("ZREM", member, redis::cmd("ZREM").arg(key).arg(id), true, None).await?;
        Ok(())
    }

    /// `DEL`: whether a key was removed.
    pub(crate) async fn del(&self, id: &(impl fmt::Display + ?Sized), deadline: Deadline) -> Result<bool, Error> {
        let (key, member) = self.route(id);
        let removed: u64 = self.run_write("DEL", member, redis::cmd("DEL").arg(&key), true, deadline).await?;
        Ok(removed > 0)
    }

    /// `EXISTS`: whether the key is there.
    pub(crate) async fn exists(&self, id: &(impl fmt::Display + ?Sized), deadline: Deadline) -> Result<bool, Error> {
        let (key, member) = self.route(id);
        let found: u64 = self.run("EXISTS", member, redis::cmd("EXISTS").arg(key), true, deadline).await?;
        Ok(found > 0)
    }
}

/// An error reply that says the server cannot serve now (a cluster down, a
/// slot on the move, a server loading its data, a demoted primary), as an
/// error; `None` for a reply that is the key's own (`WRONGTYPE`, ...).
fn cannot_serve(value: &Value) -> Option<redis::RedisError> {
    match value {
        Value::ServerError(err)
            if matches!(err.code(), "CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN" | "LOADING" | "READONLY") =>
        {
            Some(err.clone().into())
        }
        _ => None,
    }
}

/// An index score as whole milliseconds: the store writes only those, well
/// within f64's exact range; a score set by hand (`inf`, negative, NaN)
/// saturates.
fn score_ms(score: f64) -> u64 {
    if score.is_nan() { 0 } else { score as u64 }
}
