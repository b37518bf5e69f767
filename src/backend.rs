//! One backend: its description ([`Backend`], what users configure) and its
//! live form ([`Node`], crate-internal: name, modes, key prefix, connection,
//! timeout), which runs the few Redis commands a session store needs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use std::time::Instant;

use redis::{Cmd, FromRedisValue, Pipeline, Value};

use crate::connection::Connection;
use crate::error::Error;
use crate::mode::Modes;
use crate::redact::redact_url;

/// The socket timeout used when none is configured: bounds connecting and
/// every command.
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a backend's server is.
#[derive(Clone, PartialEq, Eq)]
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
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Url(url) => f.debug_tuple("Url").field(&redact_url(url)).finish(),
            Address::Tcp { host, port } => f
                .debug_struct("Tcp")
                .field("host", host)
                .field("port", port)
                .finish(),
            Address::Unix(path) => f.debug_tuple("Unix").field(path).finish(),
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
}

impl Backend {
    /// A backend at `address`, reading and writing, with no key prefix.
    pub fn new(name: impl Into<String>, address: Address) -> Backend {
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
        }
    }

    /// A backend given by URL: `redis://[user][:password@]host[:port][/db]`,
    /// `rediss://...` (TLS), `redis+unix:///path?db=N` or `unix:///path`.
    pub fn url(name: impl Into<String>, url: impl Into<String>) -> Backend {
        Backend::new(name, Address::Url(url.into()))
    }

    /// A backend at `host:port`.
    pub fn tcp(name: impl Into<String>, host: impl Into<String>, port: u16) -> Backend {
        Backend::new(
            name,
            Address::Tcp {
                host: host.into(),
                port,
            },
        )
    }

    /// A backend behind a unix domain socket.
    pub fn unix(name: impl Into<String>, path: impl Into<PathBuf>) -> Backend {
        Backend::new(name, Address::Unix(path.into()))
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
    pub fn tls_client_cert(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Backend {
        self.tls_client = Some((cert_pem.into(), key_pem.into()));
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
            .field("allow_read_without_delete", &self.allow_read_without_delete)
            .field("tls_root_ca", &self.tls_root_ca.as_ref().map(|_| "<pem>"))
            .field(
                "tls_client",
                &self.tls_client.as_ref().map(|_| "<pem + redacted key>"),
            )
            .finish()
    }
}

/// The condition of a `SET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SetIf {
    /// `NX`: only when the key does not exist.
    Absent,
    /// `XX`: only when the key exists.
    Present,
}

/// A connected backend, as the store uses it.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) modes: Modes,
    pub(crate) prefix: String,
    conn: Connection,
    /// Hard bound of one command: connecting plus answering.
    op_timeout: Duration,
    retry_on_timeout: bool,
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
    pub(crate) fn connect(backend: &Backend) -> Result<Node, Error> {
        Ok(Node {
            name: backend.name.clone(),
            modes: backend.modes,
            prefix: backend.prefix.clone(),
            conn: Connection::open(backend)?,
            op_timeout: backend.socket_timeout * 2,
            retry_on_timeout: backend.retry_on_timeout,
        })
    }

    /// The hard bound of one command.
    pub(crate) fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// The Redis key of a session id.
    pub(crate) fn key(&self, id: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + id.len());
        key.push_str(&self.prefix);
        key.push_str(id);
        key
    }

    /// Runs one command, bounded by the timeout; retried once after a timeout
    /// when `idempotent` and the backend asks for it.
    async fn run<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &Cmd,
        idempotent: bool,
    ) -> Result<T, Error> {
        let attempts = if idempotent && self.retry_on_timeout {
            2
        } else {
            1
        };
        let mut last = None;
        for _ in 0..attempts {
            let err = match tokio::time::timeout(self.op_timeout, self.conn.query::<T>(cmd)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(source)) if !source.is_timeout() => {
                    return Err(Error::Redis {
                        backend: self.name.clone(),
                        op,
                        source,
                    });
                }
                Ok(Err(source)) => Error::Redis {
                    backend: self.name.clone(),
                    op,
                    source,
                },
                Err(_elapsed) => Error::Timeout {
                    backend: self.name.clone(),
                    op,
                    after: self.op_timeout,
                },
            };
            tracing::debug!(backend = %self.name, op, "timed out");
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| Error::Timeout {
            backend: self.name.clone(),
            op,
            after: self.op_timeout,
        }))
    }

    /// The session id of one of this backend's keys (the key without the prefix).
    pub(crate) fn id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())
    }

    /// `SCAN cursor MATCH <prefix>* COUNT count`: the next cursor and keys.
    pub(crate) async fn scan(
        &self,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<String>), Error> {
        let mut pattern = String::with_capacity(self.prefix.len() + 1);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        self.run("SCAN", &cmd, true).await
    }

    /// Sends a pipeline, bounded by the timeout (scaled for its length).
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &Pipeline,
        len: usize,
    ) -> Result<T, Error> {
        let bound = self.op_timeout * (1 + u32::try_from(len / 1000).unwrap_or(u32::MAX));
        match tokio::time::timeout(bound, self.conn.query_pipeline(pipe)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(Error::Redis {
                backend: self.name.clone(),
                op,
                source,
            }),
            Err(_) => Err(Error::Timeout {
                backend: self.name.clone(),
                op,
                after: bound,
            }),
        }
    }

    /// `PING`: the round-trip time.
    pub(crate) async fn ping(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        let _: String = self.run("PING", &redis::cmd("PING"), true).await?;
        Ok(started.elapsed())
    }

    /// `GET`: the stored bytes, if any.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        self.run("GET", redis::cmd("GET").arg(self.key(id)), true)
            .await
    }

    /// `SET key value PXAT expiry NX|XX`: whether the value was written.
    pub(crate) async fn set(
        &self,
        id: &str,
        value: &[u8],
        pxat: u64,
        cond: SetIf,
    ) -> Result<bool, Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(id)).arg(value).arg("PXAT").arg(pxat);
        let (op, idempotent) = match cond {
            SetIf::Absent => ("SET NX", false),
            SetIf::Present => ("SET XX", true),
        };
        cmd.arg(if cond == SetIf::Absent { "NX" } else { "XX" });
        let reply: Value = self.run(op, &cmd, idempotent).await?;
        Ok(!matches!(reply, Value::Nil))
    }

    /// `DEL`: whether a key was removed.
    pub(crate) async fn del(&self, id: &str) -> Result<bool, Error> {
        let removed: u64 = self
            .run("DEL", redis::cmd("DEL").arg(self.key(id)), true)
            .await?;
        Ok(removed > 0)
    }

    /// `EXISTS`: whether the key is there.
    pub(crate) async fn exists(&self, id: &str) -> Result<bool, Error> {
        let found: u64 = self
            .run("EXISTS", redis::cmd("EXISTS").arg(self.key(id)), true)
            .await?;
        Ok(found > 0)
    }
}
