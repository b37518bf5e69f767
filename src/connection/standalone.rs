//! One Redis server through `redis::aio::ConnectionManager`, which reconnects
//! by itself after the server restarts.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::link::Link;
use crate::backend::{Address, Backend};
use crate::error::Error;

/// What redis-rs needs to reach the backend's server, with the backend's
/// db/username/password applied over those of a URL.
pub(crate) fn connection_info(backend: &Backend) -> Result<ConnectionInfo, Error> {
    let name = Some(backend.name.as_str());
    let info = match &backend.address {
        Address::Url(url) => {
            if cfg!(not(feature = "tls")) && is_tls_url(url.expose()) {
                return Err(Error::config(name, "url", "rediss:// (TLS) needs the crate feature `tls`"));
            }
            url.expose().into_connection_info().map_err(|err| {
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
        Address::Partitioned(_) => {
            return Err(Error::config(name, "members", "a partitioned backend has no single server"));
        }
        Address::Sentinel { .. } => {
            return Err(Error::config(name, "sentinels", "a sentinel backend is reached through its sentinels"));
        }
        Address::Cluster(_) => {
            return Err(Error::config(name, "cluster", "a cluster backend has no single server"));
        }
    };
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    if !tls && backend.tls_root_ca.is_some() {
        return Err(Error::config(name, "tls_ca_file", "given for an address that is not rediss://"));
    }
    if !tls && backend.tls_client.is_some() {
        return Err(Error::config(name, "tls_cert_file", "given for an address that is not rediss://"));
    }
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
        redis = redis.set_password(password.expose());
    }
    // redis-rs 1.x leaves Nagle's algorithm on; see `Backend::tcp_nodelay`.
    let tcp = info.tcp_settings().clone().set_nodelay(backend.tcp_nodelay);
    Ok(info.set_redis_settings(redis).set_tcp_settings(tcp))
}

fn is_tls_url(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("valkeys://")
}

#[cfg(not(feature = "tls"))]
pub(crate) fn client(backend: &Backend, info: ConnectionInfo) -> Result<redis::Client, Error> {
    redis::Client::open(info).map_err(|err| Error::config(Some(&backend.name), "url", err.to_string()))
}

/// With TLS: rustls with the `ring` provider (installed as the process
/// default unless the application installed one first), the backend's CA
/// and client certificate when given, the system's roots otherwise.
#[cfg(feature = "tls")]
pub(crate) fn client(backend: &Backend, info: ConnectionInfo) -> Result<redis::Client, Error> {
    let name = Some(backend.name.as_str());
    if !matches!(info.addr(), ConnectionAddr::TcpTls { .. })
        || (backend.tls_root_ca.is_none() && backend.tls_client.is_none())
    {
        return redis::Client::open(info).map_err(|err| Error::config(name, "url", err.to_string()));
    }
    check_pem(backend)?;
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one provider wins.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let certificates = redis::TlsCertificates {
        client_tls: backend.tls_client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
            client_cert: cert.0.clone(),
            client_key: key.expose().clone(),
        }),
        root_cert: backend.tls_root_ca.as_ref().map(|ca| ca.0.clone()),
    };
    redis::Client::build_with_tls(info, certificates).map_err(|err| {
        Error::config(
            name,
            if backend.tls_root_ca.is_some() { "tls_ca_file" } else { "tls_cert_file" },
            format!("not usable PEM: {}", err.detail().unwrap_or("could not be read")),
        )
    })
}

/// Refuses PEM that holds no certificate (or no key), which rustls would
/// otherwise take as an empty trust store.
#[cfg(feature = "tls")]
fn check_pem(backend: &Backend) -> Result<(), Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let name = Some(backend.name.as_str());
    let has_certs = |pem: &[u8]| CertificateDer::pem_slice_iter(pem).next().is_some_and(|c| c.is_ok());
    if let Some(ca) = &backend.tls_root_ca
        && !has_certs(&ca.0)
    {
        return Err(Error::config(name, "tls_ca_file", "not usable PEM: no certificate found"));
    }
    if let Some((cert, key)) = &backend.tls_client {
        if !has_certs(&cert.0) {
            return Err(Error::config(name, "tls_cert_file", "not usable PEM: no certificate found"));
        }
        if PrivateKeyDer::from_pem_slice(key.expose()).is_err() {
            return Err(Error::config(name, "tls_key_file", "not usable PEM: no private key found"));
        }
    }
    Ok(())
}

/// A lazily connecting manager, behind a [`Link`] with the backend's
/// `auto_pipeline`: building a store never waits for a server.
pub(crate) fn open(backend: &Backend) -> Result<Link, Error> {
    let info = connection_info(backend)?;
    let client = client(backend, info)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(backend.socket_timeout))
        .set_response_timeout(Some(backend.socket_timeout))
        .set_number_of_retries(0)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(200));
    let connect = |client: redis::Client| {
        ConnectionManager::new_lazy_with_config(client, config.clone()).map_err(|err| Error::Redis {
            backend: backend.name.clone(),
            op: "connect",
            source: err,
        })
    };
    let link = Link::new(connect(client.clone())?, backend.auto_pipeline);
    if backend.wait_replicas == 0 {
        return Ok(link);
    }
    let wait = (backend.wait_replicas, backend.wait_millis());
    Ok(link.with_writes(Link::waiting(connect(client)?, wait)))
}
