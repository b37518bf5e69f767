//! What every kind of connection takes from a backend's description, read
//! once: who to log in as, how long to wait, `TCP_NODELAY`, pipelining,
//! replication and TLS. Standalone servers, partition members, a Sentinel
//! group's master and a cluster's nodes are all reached with these.

use std::time::Duration;

use redis::{AsyncConnectionConfig, ConnectionInfo, RedisConnectionInfo};

use super::replication::Wait;
use crate::backend::Backend;
use crate::error::Error;
use crate::redact::{Pem, Secret};

/// A backend's connection settings.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The backend's name (`backend/member` for a partition's member).
    pub(crate) name: String,
    db: Option<i64>,
    username: Option<String>,
    password: Option<Secret>,
    /// Bounds connecting and each command.
    pub(crate) socket_timeout: Duration,
    pub(crate) tcp_nodelay: bool,
    pub(crate) auto_pipeline: bool,
    /// Replicas a write waits for, and how long (`None`: it does not wait).
    pub(crate) wait: Option<Wait>,
    /// The sentinels' own password.
    sentinel_password: Option<Secret>,
    /// TLS for a `host`/`port`, Sentinel or Cluster backend (a URL says
    /// `rediss://` itself).
    pub(crate) tls: bool,
    pub(crate) tls_root_ca: Option<Pem>,
    pub(crate) tls_client: Option<(Pem, Secret<Vec<u8>>)>,
}

impl Settings {
    pub(crate) fn of(backend: &Backend) -> Settings {
        Settings {
            name: backend.name.clone(),
            db: backend.db,
            username: backend.username.clone(),
            password: backend.password.clone(),
            socket_timeout: backend.socket_timeout,
            tcp_nodelay: backend.tcp_nodelay,
            auto_pipeline: backend.auto_pipeline,
            wait: backend.wait(),
            sentinel_password: backend.sentinel_password.clone(),
            tls: backend.tls,
            tls_root_ca: backend.tls_root_ca.clone(),
            tls_client: backend.tls_client.clone(),
        }
    }

    /// A partition's `member`: its own server, credentials and certificates;
    /// the timeouts, pipelining and replication of the backend.
    pub(crate) fn member(&self, member: &Backend) -> Settings {
        Settings {
            name: format!("{}/{}", self.name, member.name),
            socket_timeout: self.socket_timeout,
            tcp_nodelay: self.tcp_nodelay,
            auto_pipeline: self.auto_pipeline,
            wait: self.wait,
            // A member without TLS settings of its own takes the backend's.
            tls: self.tls || member.tls,
            tls_root_ca: member.tls_root_ca.clone().or_else(|| self.tls_root_ca.clone()),
            tls_client: member.tls_client.clone().or_else(|| self.tls_client.clone()),
            ..Settings::of(member)
        }
    }

    /// `base` (what a URL gave, or nothing) with this backend's db, user
    /// name and password over it.
    pub(crate) fn login(&self, base: RedisConnectionInfo) -> Result<RedisConnectionInfo, Error> {
        let mut redis = base;
        if let Some(db) = self.db {
            if db < 0 {
                return Err(Error::config(Some(&self.name), "db", "must not be negative"));
            }
            redis = redis.set_db(db);
        }
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password.expose());
        }
        Ok(redis)
    }

    /// How to log in to a sentinel.
    pub(crate) fn sentinel_login(&self) -> RedisConnectionInfo {
        match &self.sentinel_password {
            Some(password) => RedisConnectionInfo::default().set_password(password.expose()),
            None => RedisConnectionInfo::default(),
        }
    }

    /// The database number, when one is set.
    pub(crate) fn db(&self) -> Option<i64> {
        self.db
    }

    /// The user name and password, for redis-rs's cluster client.
    pub(crate) fn credentials(&self) -> (Option<&str>, Option<&str>) {
        (self.username.as_deref(), self.password.as_ref().map(|p| p.expose().as_str()))
    }

    /// Connect and response timeouts: the socket timeout.
    pub(crate) fn timeouts(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.socket_timeout))
            .set_response_timeout(Some(self.socket_timeout))
    }

    /// `info` with `TCP_NODELAY` as configured.
    pub(crate) fn nodelay(&self, info: ConnectionInfo) -> ConnectionInfo {
        let tcp = info.tcp_settings().clone().set_nodelay(self.tcp_nodelay);
        info.set_tcp_settings(tcp)
    }
}
