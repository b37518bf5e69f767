//! One backend: its description ([`Backend`], what users configure) and its
//! live form ([`Node`], crate-internal: name, modes, key prefix, connection,
//! timeout), which runs the few Redis commands a session store needs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use redis::{Cmd, FromRedisValue, Pipeline, Value};
use serde::Serialize;

use crate::breaker::{Breaker, BreakerConfig, BreakerState, Permit};
use crate::clock::{self, ServerClocks};
use crate::connection::Connection;
use crate::error::Error;
use crate::mode::Modes;
use crate::redact::redact_url;
use crate::scripts::{COPY, FILL, LOGOUT, Lua, SAVE};

/// The socket timeout used when none is configured: bounds connecting and
/// every command.
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a backend's server is.
#[derive(Clone)]
#[non_exhaustive]
pub enum Address {
    /// `redis://`, `rediss://`, `redis+unix://` or `unix://` URL (may carry credentials).
    Url(String),
    /// Host name or IP and port.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// Path of a unix domain socket.
    Unix(PathBuf),
    /// Several servers, each holding the sessions whose ids hash to it
    /// (weighted rendezvous hashing, see [`Partition`](crate::Partition)).
    /// Each member is a one-server [`Backend`]: its name labels it in the
    /// hash, its [`weight`](Backend::weight) sets its share.
    Partitioned(Vec<Backend>),
    /// The master of `master` as named by these sentinels (host, port);
    /// re-discovered after a failover.
    Sentinel {
        /// Sentinel addresses.
        sentinels: Vec<(String, u16)>,
        /// The monitored master's name (`SESSION_REDIS_SENTINEL_MASTER_ALIAS`).
        master: String,
    },
    /// A Redis Cluster, reached through these seed nodes (host, port).
    Cluster(Vec<(String, u16)>),
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Url(url) => f.debug_tuple("Url").field(&redact_url(url)).finish(),
            Address::Tcp { host, port } => f.debug_struct("Tcp").field("host", host).field("port", port).finish(),
            Address::Unix(path) => f.debug_tuple("Unix").field(path).finish(),
            Address::Partitioned(members) => f.debug_tuple("Partitioned").field(members).finish(),
            Address::Sentinel { sentinels, master } => {
                f.debug_struct("Sentinel").field("sentinels", sentinels).field("master", master).finish()
            }
            Address::Cluster(seeds) => f.debug_tuple("Cluster").field(seeds).finish(),
        }
    }
}

/// The description of one backend: a name, its [`Modes`], where it is, and
/// how to talk to it. Add it to a store with
/// [`MultiRedisStoreBuilder::backend`](crate::MultiRedisStoreBuilder::backend).
///
/// New backends read and write; set [`modes`](Backend::modes) for anything else.
///
/// ```
/// use std::time::Duration;
/// use tower_sessions_multi_redis_store::{Backend, Modes};
///
/// let new = Backend::url("new", "redis://127.0.0.1:6380/0");
/// let old = Backend::tcp("old", "10.0.0.5", 6379)
///     .db(1)
///     .password("s3cret")
///     .prefix("ds_")
///     .modes(Modes::READ_DELETE)
///     .socket_timeout(Duration::from_millis(500));
/// assert!(!format!("{old:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
#[must_use]
pub struct Backend {
    pub(crate) name: String,
    pub(crate) modes: Modes,
    pub(crate) prefix: String,
    pub(crate) address: Address,
    pub(crate) db: Option<i64>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) socket_timeout: Duration,
    pub(crate) retry_on_timeout: bool,
    pub(crate) allow_read_without_delete: bool,
    pub(crate) tls_root_ca: Option<Vec<u8>>,
    pub(crate) tls_client: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) breaker: BreakerConfig,
    pub(crate) weight: u32,
    pub(crate) sentinel_password: Option<String>,
    pub(crate) tls: bool,
    pub(crate) tcp_nodelay: bool,
    pub(crate) auto_pipeline: bool,
    pub(crate) wait_replicas: u32,
    pub(crate) wait_timeout: Option<Duration>,
}

impl Backend {
    /// A backend at `address`, reading and writing, with no key prefix.
    pub fn new(name: impl Into<String>, address: Address) -> Backend {
        // A Sentinel group exists to fail over to a replica: there, a write
        // is acknowledged once one replica holds it (see `wait_replicas`).
        let wait_replicas = u32::from(matches!(address, Address::Sentinel { .. }));
        Backend {
            name: name.into(),
            modes: Modes::READ_WRITE,
            prefix: String::new(),
            address,
            db: None,
            username: None,
            password: None,
            socket_timeout: DEFAULT_SOCKET_TIMEOUT,
            retry_on_timeout: false,
            allow_read_without_delete: false,
            tls_root_ca: None,
            tls_client: None,
            breaker: BreakerConfig::default(),
            weight: 1,
            sentinel_password: None,
            tls: false,
            tcp_nodelay: true,
            auto_pipeline: true,
            wait_replicas,
            wait_timeout: None,
        }
    }

    /// A backend given by URL: `redis://[user][:password@]host[:port][/db]`,
    /// `rediss://...` (TLS), `redis+unix:///path?db=N` or `unix:///path`.
    pub fn url(name: impl Into<String>, url: impl Into<String>) -> Backend {
        Backend::new(name, Address::Url(url.into()))
    }

    /// A backend at `host:port`.
    pub fn tcp(name: impl Into<String>, host: impl Into<String>, port: u16) -> Backend {
        Backend::new(name, Address::Tcp { host: host.into(), port })
    }

    /// A backend behind a unix domain socket.
    pub fn unix(name: impl Into<String>, path: impl Into<PathBuf>) -> Backend {
        Backend::new(name, Address::Unix(path.into()))
    }

    /// A backend partitioned over several servers by weighted rendezvous
    /// hashing of the session id. Members are one-server backends (their
    /// modes and prefix are those of this backend; their socket timeout too).
    ///
    /// ```
    /// use tower_sessions_multi_redis_store::Backend;
    ///
    /// let pool = Backend::partitioned("pool", [
    ///     Backend::tcp("a", "10.0.0.1", 6379),
    ///     Backend::tcp("b", "10.0.0.2", 6379).weight(2),
    /// ]);
    /// ```
    pub fn partitioned(name: impl Into<String>, members: impl IntoIterator<Item = Backend>) -> Backend {
        Backend::new(name, Address::Partitioned(members.into_iter().collect()))
    }

    /// A backend whose master Redis Sentinel names (and names again after a
    /// failover). `db`, `username` and `password` are the master's.
    ///
    /// ```
    /// use tower_sessions_multi_redis_store::Backend;
    ///
    /// let ha = Backend::sentinel("ha", [("10.0.0.1", 26379), ("10.0.0.2", 26379)], "sessions").password("pw");
    /// ```
    pub fn sentinel<H: Into<String>>(
        name: impl Into<String>,
        sentinels: impl IntoIterator<Item = (H, u16)>,
        master: impl Into<String>,
    ) -> Backend {
        let sentinels = sentinels.into_iter().map(|(h, p)| (h.into(), p)).collect();
        Backend::new(name, Address::Sentinel { sentinels, master: master.into() })
    }

    /// A Redis Cluster reached through these seed nodes. `username` and
    /// `password` apply to every node.
    ///
    /// ```
    /// use tower_sessions_multi_redis_store::Backend;
    ///
    /// let cluster = Backend::cluster("cluster", [("10.0.0.1", 7000), ("10.0.0.2", 7000)]);
    /// ```
    pub fn cluster<H: Into<String>>(name: impl Into<String>, seeds: impl IntoIterator<Item = (H, u16)>) -> Backend {
        Backend::new(name, Address::Cluster(seeds.into_iter().map(|(h, p)| (h.into(), p)).collect()))
    }

    /// For a Sentinel backend: reach the sentinels and the master over TLS
    /// (with [`tls_root_ca`](Self::tls_root_ca) and
    /// [`tls_client_cert`](Self::tls_client_cert) when given). Needs the `tls`
    /// feature. URL backends choose TLS with `rediss://`.
    pub fn tls(mut self, tls: bool) -> Backend {
        self.tls = tls;
        self
    }

    /// The password of the sentinels themselves (never printed).
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Backend {
        self.sentinel_password = Some(password.into());
        self
    }

    /// This member's share in a partitioned backend (default 1).
    pub fn weight(mut self, weight: u32) -> Backend {
        self.weight = weight;
        self
    }

    /// What the store may do with this backend (default: read and write).
    pub fn modes(mut self, modes: impl Into<Modes>) -> Backend {
        self.modes = modes.into();
        self
    }

    /// Prefix put before the session id to make the key (default: none, as
    /// `tower-sessions-redis-store`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Backend {
        self.prefix = prefix.into();
        self
    }

    /// Database number (overrides the one of a URL).
    pub fn db(mut self, db: i64) -> Backend {
        self.db = Some(db);
        self
    }

    /// ACL user name (overrides the one of a URL).
    pub fn username(mut self, username: impl Into<String>) -> Backend {
        self.username = Some(username.into());
        self
    }

    /// Password (overrides the one of a URL). Never printed.
    pub fn password(mut self, password: impl Into<String>) -> Backend {
        self.password = Some(password.into());
        self
    }

    /// Bounds connecting and every command (default [`DEFAULT_SOCKET_TIMEOUT`]).
    pub fn socket_timeout(mut self, timeout: Duration) -> Backend {
        self.socket_timeout = timeout;
        self
    }

    /// Send each command at once (`TCP_NODELAY`, the default), or let the
    /// kernel coalesce small writes (Nagle's algorithm, `false`).
    ///
    /// Keep the default across a network: with Nagle, a command that spans
    /// more than one TCP segment (a session over ~1.4 KB) can wait for the
    /// server's delayed ACK, up to 40 ms on Linux, and many commands in flight
    /// on one connection wait for ACKs too (redis-rs 2.0 makes `TCP_NODELAY`
    /// its default for this reason). On loopback, with many concurrent
    /// requests and small sessions, Nagle's coalescing saves system calls and
    /// wake-ups: see `BENCHMARKS.md`.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Backend {
        self.tcp_nodelay = nodelay;
        self
    }

    /// Write the commands of concurrent requests together once the
    /// connection is busy (default: yes).
    ///
    /// A command goes out at once when nothing is in flight on the
    /// connection. Otherwise it joins the next batch, sent as one pipeline
    /// (each command keeping its own reply) as soon as it holds a third as
    /// many commands as are in flight, and at the latest once the runtime
    /// has run the other tasks that were ready: a command waits at most one
    /// turn of the tokio scheduler, never for a timer or a round trip. Under
    /// load that means far fewer system calls, packets and server wake-ups:
    /// on this project's machine one connection does 1.3-2.1x the requests at
    /// 64 concurrent requests, and no fewer at 1 and 16, on loopback, across
    /// a veth link and behind a slow proxy (`BENCHMARKS.md`). `false` hands
    /// every command to the connection as it comes. For one-server and
    /// partitioned backends; Sentinel and Cluster backends send each command
    /// as it comes.
    pub fn auto_pipeline(mut self, on: bool) -> Backend {
        self.auto_pipeline = on;
        self
    }

    /// Acknowledge a session write (create, save, copy, logout) only once
    /// `replicas` replicas hold it: each write is followed, on the same
    /// connection, by `WAIT replicas timeout` (see
    /// [`wait_timeout`](Self::wait_timeout)). Fewer acknowledgements in time
    /// make the write an error (its outcome unknown, as after a timeout),
    /// and a Sentinel backend asks the sentinels who the master is.
    ///
    /// Redis replicates asynchronously: without this, a write the master
    /// acknowledged and had not yet sent to a replica is lost when that
    /// replica is promoted (a login that returned Ok, gone on the next
    /// request; a logout undone). With it, a write acknowledged here is on
    /// `replicas` replicas, which a failover promotes from. The price is one
    /// replication round trip per write and, while fewer replicas are
    /// connected, errors instead of writes that may vanish.
    ///
    /// Default: 1 for a [`sentinel`](Self::sentinel) backend (it exists to
    /// fail over to a replica, so it has one), 0 (off) otherwise: a single
    /// server has no replica to wait for, and a Cluster's replicas are
    /// optional; set it when yours has them.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_sessions_multi_redis_store::Backend;
    ///
    /// let ha = Backend::sentinel("ha", [("10.0.0.1", 26379)], "sessions");
    /// let faster_but_lossy = ha.clone().wait_replicas(0);
    /// let cluster = Backend::cluster("c", [("10.0.0.1", 7000)])
    ///     .wait_replicas(1)
    ///     .wait_timeout(Duration::from_millis(200));
    /// ```
    pub fn wait_replicas(mut self, replicas: u32) -> Backend {
        self.wait_replicas = replicas;
        self
    }

    /// How long a write waits for [`wait_replicas`](Self::wait_replicas)
    /// (default: half the socket timeout). It must be shorter than the
    /// socket timeout, which bounds the write and its `WAIT` together.
    pub fn wait_timeout(mut self, timeout: Duration) -> Backend {
        self.wait_timeout = Some(timeout);
        self
    }

    /// How long `WAIT` may take, in milliseconds (at least 1: `WAIT n 0`
    /// would wait for ever).
    pub(crate) fn wait_millis(&self) -> u64 {
        let timeout = self.wait_timeout.unwrap_or(self.socket_timeout / 2);
        u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// Retry an idempotent command (`GET`, `EXISTS`, `DEL`, `SET XX`) once after
    /// a timeout (default: no). `SET NX` is never retried: its first attempt
    /// may have landed.
    pub fn retry_on_timeout(mut self, retry: bool) -> Backend {
        self.retry_on_timeout = retry;
        self
    }

    /// Accept a `read` backend that `delete` never reaches (neither `write`
    /// nor `delete`). Such a backend keeps logged-out sessions loadable, so the
    /// store refuses it unless this is set.
    pub fn allow_read_without_delete(mut self, allow: bool) -> Backend {
        self.allow_read_without_delete = allow;
        self
    }

    /// For a `rediss://` backend: trust this CA (PEM) instead of the system's
    /// roots. Needs the `tls` feature to connect.
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Backend {
        self.tls_root_ca = Some(pem.into());
        self
    }

    /// For a `rediss://` backend: present this client certificate and key
    /// (PEM) to a server that authenticates clients. The key is never printed.
    pub fn tls_client_cert(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Backend {
        self.tls_client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The circuit breaker of this backend (default [`BreakerConfig::default`]:
    /// open after 5 consecutive failures to reach it, for 5 s).
    pub fn breaker(mut self, breaker: BreakerConfig) -> Backend {
        self.breaker = breaker;
        self
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend's modes.
    pub fn get_modes(&self) -> Modes {
        self.modes
    }

    /// The key prefix.
    pub fn get_prefix(&self) -> &str {
        &self.prefix
    }

    /// Where the server is.
    pub fn address(&self) -> &Address {
        &self.address
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("modes", &self.modes)
            .field("prefix", &self.prefix)
            .field("address", &self.address)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("socket_timeout", &self.socket_timeout)
            .field("retry_on_timeout", &self.retry_on_timeout)
            .field("tcp_nodelay", &self.tcp_nodelay)
            .field("auto_pipeline", &self.auto_pipeline)
            .field("allow_read_without_delete", &self.allow_read_without_delete)
            .field("tls_root_ca", &self.tls_root_ca.as_ref().map(|_| "<pem>"))
            .field("tls_client", &self.tls_client.as_ref().map(|_| "<pem + redacted key>"))
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .finish_non_exhaustive()
    }
}

/// The instant an operation must be done by, if any.
pub(crate) type Deadline = Option<tokio::time::Instant>;

/// Bits of a composite SCAN cursor that hold the member of a partitioned backend.
const MEMBER_SHIFT: u32 = 56;
const INNER_MASK: u64 = (1 << MEMBER_SHIFT) - 1;

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

/// Counts of what happened on one backend since the store was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BackendCounters {
    /// `load` found the session here.
    pub hits: u64,
    /// `load` asked here and the session was not here.
    pub misses: u64,
    /// Sessions copied here (copy-on-read, or a save of a not-yet-migrated session).
    pub copies: u64,
    /// Commands that failed (including timeouts and refusals by the breaker).
    pub errors: u64,
    /// Commands that timed out.
    pub timeouts: u64,
    /// Times the circuit breaker opened.
    pub breaker_trips: u64,
}

/// A counter of [`BackendCounters`], for [`Node::count`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Hit,
    Miss,
    Copy,
    Error,
    Timeout,
    BreakerTrip,
}

/// The health of one backend, from what the store saw (no network traffic):
/// see [`MultiRedisStore::health`](crate::MultiRedisStore::health).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct BackendHealth {
    /// The backend's name.
    pub name: String,
    /// Its modes, e.g. `read+delete`.
    pub modes: String,
    /// Whether its last command succeeded and its breaker is closed.
    pub up: bool,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// The last error, if the last command failed.
    pub last_error: Option<String>,
    /// What happened on it so far.
    pub counters: BackendCounters,
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
    wait: Option<(u32, u64)>,
    retry_on_timeout: bool,
    breaker: Breaker,
    counters: [AtomicU64; 6],
    last_ok: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// The `metrics` handles of the counters, registered once.
    #[cfg(feature = "metrics")]
    metrics: [metrics::Counter; 6],
}

/// The `metrics` names of the counters, in [`Counter`] order.
#[cfg(feature = "metrics")]
const METRIC_NAMES: [&str; 6] = [
    "tower_sessions_redis_hits_total",
    "tower_sessions_redis_misses_total",
    "tower_sessions_redis_copies_total",
    "tower_sessions_redis_errors_total",
    "tower_sessions_redis_timeouts_total",
    "tower_sessions_redis_breaker_trips_total",
];

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
            wait: (backend.wait_replicas > 0).then(|| (backend.wait_replicas, backend.wait_millis())),
            retry_on_timeout: backend.retry_on_timeout,
            breaker: Breaker::new(backend.breaker),
            counters: Default::default(),
            last_ok: AtomicBool::new(true),
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
        self.counters[counter as usize].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics[counter as usize].increment(1);
    }

    /// What the store saw of this backend.
    pub(crate) fn health(&self) -> BackendHealth {
        let c = |counter: Counter| self.counters[counter as usize].load(Ordering::Relaxed);
        let breaker = self.breaker.state();
        BackendHealth {
            name: self.name.clone(),
            modes: self.modes.to_string(),
            up: self.last_ok.load(Ordering::Relaxed) && breaker == BreakerState::Closed,
            breaker,
            last_error: self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            counters: BackendCounters {
                hits: c(Counter::Hit),
                misses: c(Counter::Miss),
                copies: c(Counter::Copy),
                errors: c(Counter::Error),
                timeouts: c(Counter::Timeout),
                breaker_trips: c(Counter::BreakerTrip),
            },
        }
    }

    /// Runs `attempt` (given its time bound) through the circuit breaker,
    /// bounded by the command timeout and the operation's `deadline`, retried
    /// once after a timeout when `idempotent` and the backend asks for it.
    async fn guarded<T, F, Fut>(
        &self,
        op: &'static str,
        deadline: Option<tokio::time::Instant>,
        idempotent: bool,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let permit = self.breaker.allow();
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
        if self.breaker.record(&permit, unreachable) {
            self.count(Counter::BreakerTrip);
            tracing::warn!(backend = %self.name, "circuit breaker open: backend skipped during its cool-down");
        }
        tracing::trace!(backend = %self.name, op, ok = result.is_ok(), "command");
        match &result {
            // Read first: writing a shared flag on every command would bounce
            // its cache line between worker threads.
            Ok(_) if !self.last_ok.load(Ordering::Relaxed) => self.last_ok.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(err) => {
                self.count(Counter::Error);
                if err.is_timeout() {
                    self.count(Counter::Timeout);
                }
                self.last_ok.store(false, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(err.to_string());
            }
        }
        result
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
        self.guarded(op, deadline, idempotent, || self.conn.query::<T>(member, cmd)).await
    }

    /// A session write to member `member` (`key` routes it on a cluster),
    /// acknowledged once the replicas this backend waits for hold it.
    async fn run_write<T: FromRedisValue>(
        &self,
        op: &'static str,
        (key, member): (&str, usize),
        cmd: &Cmd,
        idempotent: bool,
        deadline: Deadline,
    ) -> Result<T, Error> {
        self.guarded(op, deadline, idempotent, || self.send_write(member, key, cmd)).await
    }

    /// Sends a write, followed by `WAIT` when this backend waits for replicas.
    async fn send_write<T: FromRedisValue>(&self, member: usize, key: &str, cmd: &Cmd) -> redis::RedisResult<T> {
        match self.wait {
            None => self.conn.query(member, cmd).await,
            // Boxed: keeps the futures of backends without it small.
            Some(wait) => Box::pin(self.conn.query_replicated(member, key, cmd, wait)).await,
        }
    }

    /// The key of session `id` and the member that holds it, formatting the id once.
    fn route(&self, id: &(impl fmt::Display + ?Sized)) -> (String, usize) {
        let key = self.key(id);
        let member = self.conn.member_of(&key[self.prefix.len()..]);
        (key, member)
    }

    /// The member (of a partitioned backend; else 0) that holds session `id`.
    pub(crate) fn member_of(&self, id: &str) -> usize {
        self.conn.member_of(id)
    }

    /// The session id of one of this backend's keys (the key without the prefix).
    pub(crate) fn id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())
    }

    /// `SCAN cursor MATCH <prefix>* COUNT count`: the next cursor and keys.
    /// A partitioned backend is walked member after member; the member is
    /// kept in the top 8 bits of the cursor. A cluster is walked hash slot
    /// by hash slot, the cursor being the next slot (`cluster.rs` says why).
    pub(crate) async fn scan(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>), Error> {
        self.scan_after_prefix(cursor, count, "").await
    }

    /// `SCAN cursor MATCH <prefix><tail>*`, prefix and `tail` taken literally
    /// (glob characters escaped).
    pub(crate) async fn scan_after_prefix(
        &self,
        cursor: u64,
        count: usize,
        tail: &str,
    ) -> Result<(u64, Vec<String>), Error> {
        let out_of_range = || Error::Redis {
            backend: self.name.clone(),
            op: "SCAN",
            source: redis::RedisError::from((redis::ErrorKind::Client, "SCAN cursor out of range")),
        };
        if let Some(cluster) = self.conn.cluster() {
            let from = u16::try_from(cursor).ok().filter(|&slot| slot < crate::connection::CLUSTER_SLOTS);
            let from = from.ok_or_else(out_of_range)?;
            let slots = u16::try_from(count.clamp(64, 2048)).unwrap_or(2048);
            let (mut keys, next) = self.guarded("SCAN", None, true, || cluster.scan_slots(from, slots)).await?;
            let literal = format!("{}{tail}", self.prefix);
            keys.retain(|key| key.starts_with(&literal));
            return Ok((next.map_or(0, u64::from), keys));
        }
        let mut pattern = String::with_capacity(self.prefix.len() + tail.len() + 1);
        for c in self.prefix.chars().chain(tail.chars()) {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let (member, inner) = (cursor >> MEMBER_SHIFT, cursor & INNER_MASK);
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(inner).arg("MATCH").arg(pattern).arg("COUNT").arg(count);
        let members = self.conn.members() as u64;
        let (next, keys): (u64, Vec<String>) = self.run("SCAN", member as usize, &cmd, true, None).await?;
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

    /// Sends commands, each to its member, in one pipeline per member (run
    /// concurrently). Replies
    /// come back in order; a command's error is its reply.
    /// With `write`, the batch counts as done once the replicas this backend
    /// waits for hold it (a `WAIT` after each member's pipeline).
    pub(crate) async fn batch(
        &self,
        op: &'static str,
        items: Vec<(usize, Cmd)>,
        write: bool,
    ) -> Result<Vec<Value>, Error> {
        let len = items.len();
        let members = self.conn.members();
        let mut pipes: Vec<(Pipeline, Vec<usize>)> = (0..members)
            .map(|_| {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                (pipe, Vec::new())
            })
            .collect();
        for (i, (member, cmd)) in items.into_iter().enumerate() {
            let (pipe, order) = &mut pipes[member.min(members - 1)];
            pipe.add_command(cmd);
            order.push(i);
        }
        // Bounded as one command (redis-rs's response timeout covers a whole
        // pipeline); the migrator's batches are idempotent, so one that
        // timed out is reported and redone.
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        let replies =
            futures_util::future::join_all(pipes.iter().enumerate().filter(|(_, (_, order))| !order.is_empty()).map(
                |(member, (pipe, order))| async move {
                    let send = || async {
                        match (write, self.wait) {
                            (true, Some(wait)) => self.conn.query_pipeline_replicated(member, pipe, wait).await,
                            _ => self.conn.query_pipeline::<Vec<Value>>(member, pipe).await,
                        }
                    };
                    let result = self.guarded(op, Some(deadline), false, send).await;
                    (order, result)
                },
            ))
            .await;
        let mut out = vec![Value::Nil; len];
        for (order, result) in replies {
            for (&i, value) in order.iter().zip(result?) {
                out[i] = value;
            }
        }
        Ok(out)
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
        let (key, member) = self.route(id);
        // Sized up front: the value is most of the command.
        let mut cmd = redis::Cmd::with_capacity(6, key.len() + value.len() + 32);
        cmd.arg("SET").arg(&key).arg(value).arg("PXAT").arg(pxat).arg("NX");
        let reply: Value = self.run_write("SET NX", (&key, member), &cmd, false, deadline).await?;
        Ok(!matches!(reply, Value::Nil))
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
            let tomb = crate::scripts::tombstone_key(key, self.conn.is_cluster());
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
    /// failure of the backend). Every script here is idempotent in effect,
    /// so it may also be retried.
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
            match self.send_write::<T>(member, key, &by_sha).await {
                Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    let with_body = self.script_on(script, true, key, tombstone, args);
                    // Boxed: rare (once per server and script), and large.
                    Box::pin(self.send_write::<T>(member, key, &with_body)).await
                }
                other => other,
            }
        };
        self.guarded(op, deadline, true, attempt).await
    }

    /// Learns the clock of the server holding session key `key`'s member
    /// with `TIME`, unless known: a write must never go out without a deadline.
    async fn know_clock(&self, member: usize, deadline: Deadline) -> Result<(), Error> {
        if self.clocks.known(member) {
            return Ok(());
        }
        let (secs, micros): (i64, i64) = self.run("TIME", member, &redis::cmd("TIME"), true, deadline).await?;
        self.clocks.observe(member, secs.saturating_mul(1000).saturating_add(micros / 1000));
        Ok(())
    }

    /// The cluster's primaries (host, port), when this backend is a cluster.
    async fn cluster_primaries(&self) -> Result<Option<Vec<(String, u16)>>, Error> {
        match self.conn.cluster_primaries().await {
            None => Ok(None),
            Some(primaries) => primaries.map(Some).map_err(|source| Error::Redis {
                backend: self.name.clone(),
                op: "CLUSTER NODES",
                source,
            }),
        }
    }

    /// Prepares every server of this backend for pipelined copies (the
    /// migrator's batches): learns their clocks, and loads the copy script
    /// so a pipeline can name it by its SHA1 (a batch cannot fall back on
    /// `NOSCRIPT`; a server that restarts mid-run answers it, and those
    /// sessions are reported and redone by a later run).
    pub(crate) async fn prepare_copies(&self) -> Result<(), Error> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(COPY.code);
        match self.cluster_primaries().await? {
            Some(primaries) => {
                for addr in &primaries {
                    let _: String =
                        self.guarded("SCRIPT LOAD", None, true, || self.conn.query_cluster_node(addr, &load)).await?;
                }
            }
            None => {
                for member in 0..self.conn.members() {
                    let _: String = self.run("SCRIPT LOAD", member, &load, true, None).await?;
                }
            }
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
            let (key, member) = self.route(id);
            let mut cmd = redis::Cmd::with_capacity(6, key.len() + value.len() + 32);
            cmd.arg("SET").arg(&key).arg(value).arg("PXAT").arg(pxat).arg("XX");
            let reply: Value = self.run_write("SET XX", (&key, member), &cmd, true, deadline).await?;
            return Ok(!matches!(reply, Value::Nil));
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
        let reply: Value = self.run_script(op, script, (&key, member), tombstone, &args, deadline).await?;
        match reply {
            Value::Int(-1) => Ok(None),
            Value::Int(now) if now != 0 => {
                self.clocks.observe(member, now.saturating_abs());
                Ok(Some(now > 0))
            }
            // Too late: nothing written; the reply carries the server's clock.
            Value::Array(ref late) if let [Value::Int(now)] = late.as_slice() => {
                self.clocks.observe(member, *now);
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
    pub(crate) async fn logout(&self, id: &(impl fmt::Display + ?Sized), deadline: Deadline) -> Result<(), Error> {
        let keep = self.tombstone_ttl.as_millis().max(1).to_string();
        // Boxed, as every rare path: keeps `delete`'s future small.
        let (key, member) = self.route(id);
        let args = [keep.as_bytes()];
        let logout = self.run_script("LOGOUT", &LOGOUT, (&key, member), true, &args, deadline);
        let _: i64 = Box::pin(logout).await?;
        Ok(())
    }

    /// `SET <prefix><id> value PX ttl`: an instance's announcement (`announce.rs`).
    pub(crate) async fn announce(&self, id: &str, value: &str, ttl: Duration) -> Result<(), Error> {
        let (key, member) = self.route(id);
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let cmd = redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ttl).to_owned();
        let _: Value = self.run("SET", member, &cmd, true, None).await?;
        Ok(())
    }

    /// `DEL`: whether a key was removed.
    pub(crate) async fn del(&self, id: &(impl fmt::Display + ?Sized), deadline: Deadline) -> Result<bool, Error> {
        let (key, member) = self.route(id);
        let removed: u64 = self.run_write("DEL", (&key, member), redis::cmd("DEL").arg(&key), true, deadline).await?;
        Ok(removed > 0)
    }

    /// `EXISTS`: whether the key is there.
    pub(crate) async fn exists(&self, id: &(impl fmt::Display + ?Sized), deadline: Deadline) -> Result<bool, Error> {
        let (key, member) = self.route(id);
        let found: u64 = self.run("EXISTS", member, redis::cmd("EXISTS").arg(key), true, deadline).await?;
        Ok(found > 0)
    }
}
