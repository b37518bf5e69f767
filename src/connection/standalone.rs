//! One Redis server through `redis::aio::ConnectionManager`, which reconnects
//! by itself after the server restarts.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::backend::{Address, Backend};
use crate::error::Error;

/// What redis-rs needs to reach the backend's server, with the backend's
/// db/username/password applied over those of a URL.
pub(crate) fn connection_info(backend: &Backend) -> Result<ConnectionInfo, Error> {
    let name = Some(backend.name.as_str());
    let info = match &backend.address {
        Address::Url(url) => {
            if url.starts_with("rediss://") || url.starts_with("valkeys://") {
                return Err(Error::config(
                    name,
                    "url",
                    "rediss:// (TLS) is not supported by this build of the crate",
                ));
            }
            url.as_str().into_connection_info().map_err(|err| {
                Error::config(
                    name,
                    "url",
                    format!(
                        "not a usable Redis URL ({}); expected redis://, rediss://, redis+unix:// or unix://",
                        err.detail().unwrap_or("did not parse")
                    ),
                )
            })?
        }
        Address::Tcp { host, port } => {
            if host.is_empty() {
                return Err(Error::config(name, "host", "must not be empty"));
            }
            if *port == 0 {
                return Err(Error::config(name, "port", "must be between 1 and 65535"));
            }
            ConnectionAddr::Tcp(host.clone(), *port)
                .into_connection_info()
                .map_err(|err| Error::config(name, "host", err.to_string()))?
        }
        Address::Unix(path) => {
            if path.as_os_str().is_empty() {
                return Err(Error::config(name, "unix_socket", "must not be empty"));
            }
            ConnectionAddr::Unix(path.clone())
                .into_connection_info()
                .map_err(|err| Error::config(name, "unix_socket", err.to_string()))?
        }
    };
    let mut redis = info.redis_settings().clone();
    if let Some(db) = backend.db {
        if db < 0 {
            return Err(Error::config(name, "db", "must not be negative"));
        }
        redis = redis.set_db(db);
    }
    if let Some(username) = &backend.username {
        redis = redis.set_username(username);
    }
    if let Some(password) = &backend.password {
        redis = redis.set_password(password);
    }
    Ok(info.set_redis_settings(redis))
}

/// A lazily connecting manager: building a store never waits for a server.
pub(crate) fn open(backend: &Backend) -> Result<ConnectionManager, Error> {
    let info = connection_info(backend)?;
    let client = redis::Client::open(info)
        .map_err(|err| Error::config(Some(&backend.name), "url", err.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(backend.socket_timeout))
        .set_response_timeout(Some(backend.socket_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|err| Error::Redis {
        backend: backend.name.clone(),
        op: "connect",
        source: err,
    })
}
