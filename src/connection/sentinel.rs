//! A backend whose master is found through Redis Sentinel. redis-rs does not
//! follow a failover by itself, so this connection:
//!
//! * asks the sentinels (`SENTINEL GET-MASTER-ADDR-BY-NAME`) for the master
//!   and connects to it;
//! * asks again at most once per second while in use, and moves to the new
//!   master as soon as the sentinels name one (the demoted master would
//!   otherwise keep accepting writes until it is reconfigured, and lose them);
//! * after an I/O error, a dropped connection or a `READONLY` reply, forgets
//!   the master, asks again and retries the command once.

use std::sync::RwLock;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue, IntoConnectionInfo,
    Pipeline, RedisConnectionInfo, RedisError, RedisResult,
};
use tokio::time::Instant;

use crate::backend::{Address, Backend};
use crate::error::Error;

/// How often an open connection re-checks who the master is.
const RECHECK: Duration = Duration::from_secs(1);

struct Master {
    addr: (String, u16),
    conn: MultiplexedConnection,
    checked: Instant,
}

pub(crate) struct Sentinel {
    /// The backend's settings, for TLS clients.
    backend: Backend,
    sentinels: Vec<ConnectionInfo>,
    master_name: String,
    redis: RedisConnectionInfo,
    config: AsyncConnectionConfig,
    current: RwLock<Option<Master>>,
    /// Open connections to the sentinels (by index), kept between re-checks.
    sentinel_conns: std::sync::Mutex<Vec<Option<MultiplexedConnection>>>,
    /// One discovery at a time.
    discovering: tokio::sync::Mutex<()>,
}

/// Whether the master may have changed.
fn failover_sign(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// One command on the master's connection. `query_async` turns an error
/// reply into an error of its kind, so a `READONLY` from a demoted master is
/// a [`failover_sign`] (converting the raw reply made it a parse error).
async fn send<T: FromRedisValue>(mut conn: MultiplexedConnection, cmd: &Cmd) -> RedisResult<T> {
    cmd.query_async(&mut conn).await
}

/// A TCP address, with TLS when asked (verifying the host name).
fn addr(tls: bool, host: &str, port: u16) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: false, tls_params: None }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    }
}

/// `TCP_NODELAY` as asked (always on for the sentinels themselves).
fn nodelay(info: ConnectionInfo, on: bool) -> ConnectionInfo {
    let tcp = info.tcp_settings().clone().set_nodelay(on);
    info.set_tcp_settings(tcp)
}

impl Sentinel {
    pub(crate) fn open(backend: &Backend) -> Result<Sentinel, Error> {
        let name = Some(backend.name.as_str());
        let Address::Sentinel { sentinels, master } = &backend.address else {
            return Err(Error::config(name, "sentinels", "not a sentinel backend"));
        };
        if sentinels.is_empty() {
            return Err(Error::config(name, "sentinels", "no sentinel given"));
        }
        if master.is_empty() {
            return Err(Error::config(name, "master", "must not be empty"));
        }
        if backend.tls && cfg!(not(feature = "tls")) {
            return Err(Error::config(name, "tls", "TLS needs the crate feature `tls`"));
        }
        if !backend.tls && (backend.tls_root_ca.is_some() || backend.tls_client.is_some()) {
            return Err(Error::config(name, "tls", "TLS certificates given but `tls` is off"));
        }
        let mut sentinel_settings = RedisConnectionInfo::default();
        if let Some(password) = &backend.sentinel_password {
            sentinel_settings = sentinel_settings.set_password(password);
        }
        let sentinels = sentinels
            .iter()
            .map(|(host, port)| {
                addr(backend.tls, host, *port)
                    .into_connection_info()
                    .map(|info| nodelay(info.set_redis_settings(sentinel_settings.clone()), true))
                    .map_err(|err| Error::config(name, "sentinels", err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut redis = RedisConnectionInfo::default();
        if let Some(db) = backend.db {
            redis = redis.set_db(db);
        }
        if let Some(username) = &backend.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &backend.password {
            redis = redis.set_password(password);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(backend.socket_timeout))
            .set_response_timeout(Some(backend.socket_timeout));
        Ok(Sentinel {
            backend: backend.clone(),
            master_name: master.clone(),
            redis,
            config,
            sentinel_conns: std::sync::Mutex::new(vec![None; sentinels.len()]),
            sentinels,
            current: RwLock::new(None),
            discovering: tokio::sync::Mutex::new(()),
        })
    }

    /// The master's address as the first sentinel that answers names it.
    /// Connections to the sentinels are kept, so a re-check is one round trip.
    async fn master_addr(&self) -> RedisResult<(String, u16)> {
        let mut last = None;
        for (i, info) in self.sentinels.iter().enumerate() {
            let attempt = async {
                let mut conn = match self.sentinel_conn(i) {
                    Some(conn) => conn,
                    None => {
                        let conn = self
                            .client(info.clone())?
                            .get_multiplexed_async_connection_with_config(&self.config)
                            .await?;
                        self.set_sentinel_conn(i, Some(conn.clone()));
                        conn
                    }
                };
                let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.master_name)
                    .query_async(&mut conn)
                    .await?;
                addr.ok_or_else(|| RedisError::from((ErrorKind::Client, "the sentinels do not know this master")))
            };
            match attempt.await {
                Ok(addr) => return Ok(addr),
                Err(err) => {
                    // Reconnect to this sentinel next time.
                    self.set_sentinel_conn(i, None);
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::Client, "no sentinel"))))
    }

    fn sentinel_conn(&self, i: usize) -> Option<MultiplexedConnection> {
        let conns = self.sentinel_conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        conns.get(i).cloned().flatten()
    }

    fn set_sentinel_conn(&self, i: usize, conn: Option<MultiplexedConnection>) {
        let mut conns = self.sentinel_conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = conns.get_mut(i) {
            *slot = conn;
        }
    }

    fn snapshot(&self) -> Option<(MultiplexedConnection, bool)> {
        let guard = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.as_ref().map(|m| (m.conn.clone(), m.checked.elapsed() >= RECHECK))
    }

    /// The master's connection; (re)discovers it when there is none or the
    /// last check is a second old.
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        match self.snapshot() {
            Some((conn, false)) => return Ok(conn),
            Some((conn, true)) => {
                // Another request is already checking: use what we have.
                let Ok(_one) = self.discovering.try_lock() else { return Ok(conn) };
                return self.refresh(Some(conn)).await;
            }
            None => {}
        }
        let _one = self.discovering.lock().await;
        if let Some((conn, _)) = self.snapshot() {
            return Ok(conn); // another request connected meanwhile
        }
        self.refresh(None).await
    }

    async fn refresh(&self, current: Option<MultiplexedConnection>) -> RedisResult<MultiplexedConnection> {
        let addr = self.master_addr().await?;
        {
            let mut guard = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let (Some(master), Some(conn)) = (guard.as_mut(), current)
                && master.addr == addr
            {
                master.checked = Instant::now();
                return Ok(conn);
            }
        }
        let info = nodelay(
            self::addr(self.backend.tls, &addr.0, addr.1)
                .into_connection_info()?
                .set_redis_settings(self.redis.clone()),
            self.backend.tcp_nodelay,
        );
        let conn = self.client(info)?.get_multiplexed_async_connection_with_config(&self.config).await?;
        tracing::debug!(host = %addr.0, port = addr.1, "sentinel: connected to the master");
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Master { addr, conn: conn.clone(), checked: Instant::now() });
        Ok(conn)
    }

    /// A client for a sentinel or the master, with the backend's TLS settings.
    fn client(&self, info: ConnectionInfo) -> RedisResult<redis::Client> {
        super::standalone::client(&self.backend, info)
            .map_err(|err| RedisError::from((ErrorKind::InvalidClientConfig, "TLS settings", err.to_string())))
    }

    fn forget(&self) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Runs `send` on the master; after a sign of failover, once more on the
    /// master the sentinels name then.
    async fn with_master<T, F, Fut>(&self, send: F) -> RedisResult<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let first = match self.connection().await {
            Ok(conn) => send(conn).await,
            Err(err) => Err(err),
        };
        match first {
            Err(err) if failover_sign(&err) => {
                tracing::debug!(error = %err, "sentinel: asking for the master again");
                self.forget();
                send(self.connection().await?).await
            }
            other => other,
        }
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        self.with_master(|conn| send(conn, cmd)).await
    }

    pub(crate) async fn query_pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        self.with_master(|mut conn| async move { pipe.query_async(&mut conn).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    /// A demoted master answers writes with `READONLY`: that must read as a
    /// sign of failover (ask the sentinels again), not as a parse error.
    #[tokio::test]
    async fn a_readonly_reply_is_a_sign_of_failover() {
        let master = RedisServer::start().unwrap();
        let port = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
        let conn = replica.client().unwrap().get_multiplexed_async_connection().await.unwrap();
        let err = send::<()>(conn, redis::cmd("SET").arg("k").arg("v")).await.unwrap_err();
        assert!(failover_sign(&err), "{err:?}");
    }
}
