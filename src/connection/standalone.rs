//! One Redis server through `redis::aio::ConnectionManager`, which reconnects
//! by itself after the server restarts, replaced when it goes silent
//! (`renewing.rs`).

use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::link::Link;
use super::renewing::Renewing;
use super::settings::Settings;
use crate::backend::Address;
use crate::error::Error;

/// What redis-rs needs to reach the server at `address`, with the backend's
/// db/username/password applied over those of a URL.
pub(crate) fn connection_info(address: &Address, settings: &Settings) -> Result<ConnectionInfo, Error> {
    let name = Some(settings.name.as_str());
    let info = match address {
        Address::Url(url) => {
            if cfg!(not(feature = "tls")) && is_tls_url(url.expose()) {
                return Err(Error::config(name, "url", "rediss:// (TLS) needs the crate feature `tls`"));
            }
            if settings.tls && !is_tls_url(url.expose()) {
                // Never fall back to plain text (and send the password in it).
                return Err(Error::config(name, "tls", "on, but the url is not rediss://: a URL says TLS itself"));
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
            tcp_addr(settings, host, *port)?
                .into_connection_info()
                .map_err(|err| Error::config(name, "host", err.to_string()))?
        }
        Address::Unix(path) => {
            if path.as_os_str().is_empty() {
                return Err(Error::config(name, "unix_socket", "must not be empty"));
            }
            if settings.tls {
                return Err(Error::config(name, "tls", "a unix socket does not take TLS"));
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
    if !tls && settings.tls_root_ca.is_some() {
        return Err(Error::config(name, "tls_ca_file", "given for an address without TLS (rediss://, or `tls`)"));
    }
    if !tls && settings.tls_client.is_some() {
        return Err(Error::config(name, "tls_cert_file", "given for an address without TLS (rediss://, or `tls`)"));
    }
    if info.redis_settings().db() < 0 {
        return Err(Error::config(name, "url", "the database number must not be negative"));
    }
    let redis = settings.login(info.redis_settings().clone())?;
    // redis-rs 1.x leaves Nagle's algorithm on; see `Backend::tcp_nodelay`.
    Ok(settings.nodelay(info.set_redis_settings(redis)))
}

/// The server at `host`:`port`, over TLS when the backend says so.
pub(crate) fn tcp_addr(settings: &Settings, host: &str, port: u16) -> Result<ConnectionAddr, Error> {
    if !settings.tls {
        return Ok(ConnectionAddr::Tcp(host.to_owned(), port));
    }
    if cfg!(not(feature = "tls")) {
        return Err(Error::config(Some(&settings.name), "tls", "TLS needs the crate feature `tls`"));
    }
    Ok(ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: false, tls_params: None })
}

fn is_tls_url(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("valkeys://")
}

#[cfg(not(feature = "tls"))]
pub(crate) fn client(settings: &Settings, info: ConnectionInfo) -> Result<redis::Client, Error> {
    redis::Client::open(info).map_err(|err| Error::config(Some(&settings.name), "url", err.to_string()))
}

/// With TLS: rustls with the `ring` provider (installed as the process
/// default unless the application installed one first), the backend's CA
/// and client certificate when given, the system's roots otherwise.
#[cfg(feature = "tls")]
pub(crate) fn client(settings: &Settings, info: ConnectionInfo) -> Result<redis::Client, Error> {
    let name = Some(settings.name.as_str());
    let certificates = match info.addr() {
        ConnectionAddr::TcpTls { .. } => certificates(settings)?,
        _ => None,
    };
    let Some(certificates) = certificates else {
        return redis::Client::open(info).map_err(|err| Error::config(name, "url", err.to_string()));
    };
    redis::Client::build_with_tls(info, certificates).map_err(|err| {
        Error::config(
            name,
            if settings.tls_root_ca.is_some() { "tls_ca_file" } else { "tls_cert_file" },
            format!("not usable PEM: {}", err.detail().unwrap_or("could not be read")),
        )
    })
}

/// The backend's CA and client certificate, checked, when it has any; and
/// rustls's `ring` provider installed as the process default unless the
/// application installed one first.
#[cfg(feature = "tls")]
pub(crate) fn certificates(settings: &Settings) -> Result<Option<redis::TlsCertificates>, Error> {
    if settings.tls_root_ca.is_none() && settings.tls_client.is_none() {
        return Ok(None);
    }
    check_pem(settings)?;
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one provider wins.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    Ok(Some(redis::TlsCertificates {
        client_tls: settings.tls_client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
            client_cert: cert.0.clone(),
            client_key: key.expose().clone(),
        }),
        root_cert: settings.tls_root_ca.as_ref().map(|ca| ca.0.clone()),
    }))
}

/// Refuses PEM that holds no certificate (or no key), which rustls would
/// otherwise take as an empty trust store.
#[cfg(feature = "tls")]
fn check_pem(settings: &Settings) -> Result<(), Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let name = Some(settings.name.as_str());
    let has_certs = |pem: &[u8]| CertificateDer::pem_slice_iter(pem).next().is_some_and(|c| c.is_ok());
    if let Some(ca) = &settings.tls_root_ca
        && !has_certs(&ca.0)
    {
        return Err(Error::config(name, "tls_ca_file", "not usable PEM: no certificate found"));
    }
    if let Some((cert, key)) = &settings.tls_client {
        if !has_certs(&cert.0) {
            return Err(Error::config(name, "tls_cert_file", "not usable PEM: no certificate found"));
        }
        if PrivateKeyDer::from_pem_slice(key.expose()).is_err() {
            return Err(Error::config(name, "tls_key_file", "not usable PEM: no private key found"));
        }
    }
    Ok(())
}

/// A lazily connecting manager to the server at `address`, behind a
/// [`Link`] with the backend's `auto_pipeline`: building a store never waits
/// for a server.
pub(crate) fn open(address: &Address, settings: &Settings) -> Result<Link, Error> {
    let info = connection_info(address, settings)?;
    let client = client(settings, info)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.socket_timeout))
        .set_response_timeout(Some(settings.socket_timeout))
        .set_number_of_retries(0)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(200));
    let connect = |client: redis::Client| {
        Renewing::new(client, config.clone()).map_err(|err| Error::Redis {
            backend: settings.name.clone(),
            op: "connect",
            source: err,
        })
    };
    let link = Link::new(connect(client.clone())?, settings.auto_pipeline);
    match settings.wait {
        None => Ok(link),
        Some(wait) => Ok(link.with_writes(Link::waiting(connect(client)?, wait))),
    }
}
