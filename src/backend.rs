//! One backend as users describe it ([`Backend`]): a name, its modes, where
//! its server is, and how to talk to it. Its live form is `node.rs`.

use std::path::PathBuf;
use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::mode::Modes;
use crate::redact::{Pem, RedisUrl, Secret};

/// Where a backend's server is.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Address {
    /// `redis://`, `rediss://`, `redis+unix://` or `unix://` URL (may carry credentials).
    Url(RedisUrl),
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
    /// (weighted rendezvous hashing: the member with the highest
    /// `weight / -ln(u)`, `u` uniform from a fixed hash of its name and the
    /// id). Each member is a one-server [`Backend`]: its name labels it in the
    /// hash, its [`weight`](Backend::weight) sets its share; adding a member
    /// moves only the sessions it takes. The mapping is the same in every
    /// process and release.
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
#[derive(Clone, Debug)]
#[must_use]
pub struct Backend {
    pub(crate) name: String,
    pub(crate) modes: Modes,
    pub(crate) prefix: String,
    pub(crate) address: Address,
    pub(crate) db: Option<i64>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) socket_timeout: Duration,
    pub(crate) retry_on_timeout: bool,
    pub(crate) allow_read_without_delete: bool,
    pub(crate) tls_root_ca: Option<Pem>,
    pub(crate) tls_client: Option<(Pem, Secret<Vec<u8>>)>,
    pub(crate) breaker: BreakerConfig,
    pub(crate) weight: u32,
    pub(crate) sentinel_password: Option<Secret>,
    pub(crate) tls: bool,
    pub(crate) tcp_nodelay: bool,
    pub(crate) auto_pipeline: bool,
    pub(crate) wait_replicas: u32,
    pub(crate) wait_timeout: Option<Duration>,
}

impl Backend {
    /// The socket timeout used when none is configured: bounds connecting and
    /// every command.
    pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

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
            socket_timeout: Backend::DEFAULT_SOCKET_TIMEOUT,
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
    pub fn url(name: impl Into<String>, url: impl Into<RedisUrl>) -> Backend {
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

    /// Reach the server over TLS: a `host`/`port` backend, a Sentinel
    /// backend (the sentinels and the master), a Cluster backend (every
    /// node), or a partition's members; with
    /// [`tls_root_ca`](Self::tls_root_ca) and
    /// [`tls_client_cert`](Self::tls_client_cert) when given. Needs the `tls`
    /// feature. A URL says TLS itself (`rediss://`); with `tls` on, a
    /// `redis://` URL or a unix socket is refused, never plain text.
    pub fn tls(mut self, tls: bool) -> Backend {
        self.tls = tls;
        self
    }

    /// The password of the sentinels themselves (never printed).
    pub fn sentinel_password(mut self, password: impl Into<Secret>) -> Backend {
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
    pub fn password(mut self, password: impl Into<Secret>) -> Backend {
        self.password = Some(password.into());
        self
    }

    /// Bounds connecting and every command (default [`Backend::DEFAULT_SOCKET_TIMEOUT`]).
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

    /// The replicas a write waits for and how long `WAIT` may take, in
    /// milliseconds (at least 1: `WAIT n 0` would wait for ever); `None`
    /// when writes do not wait.
    pub(crate) fn wait(&self) -> Option<(u32, u64)> {
        let timeout = self.wait_timeout.unwrap_or(self.socket_timeout / 2);
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        (self.wait_replicas > 0).then_some((self.wait_replicas, millis))
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
        self.tls_root_ca = Some(Pem(pem.into()));
        self
    }

    /// For a `rediss://` backend: present this client certificate and key
    /// (PEM) to a server that authenticates clients. The key is never printed.
    pub fn tls_client_cert(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Backend {
        self.tls_client = Some((Pem(cert_pem.into()), Secret::new(key_pem.into())));
        self
    }

    /// The circuit breaker of this backend (default [`BreakerConfig::default`]:
    /// open after 5 consecutive failures to reach it, for 5 s); a
    /// partitioned backend gives each member one of its own.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Backend {
        self.breaker = breaker;
        self
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the server is.
    pub fn address(&self) -> &Address {
        &self.address
    }
}
