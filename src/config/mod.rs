//! Configuration files: TOML or JSON (by extension), in this crate's shape or
//! in the seed Django package's own JSON shape, turned into the same builder.
//!
//! This crate's shape (TOML shown; JSON is the same tree):
//!
//! ```
//! use tower_sessions_multi_redis_store::Config;
//!
//! let config = Config::from_toml_str(r#"
//! copy_on_read = "copy"          # off | copy | move
//!
//! [[backends]]
//! name = "new"
//! modes = ["read", "write"]
//! url = "redis://127.0.0.1:6380/0"
//!
//! [[backends]]
//! name = "old"
//! modes = ["read", "delete"]
//! host = "127.0.0.1"
//! port = 6381
//! db = 1
//! password = "s3cret"
//! prefix = "ds_"
//! socket_timeout = 0.5           # seconds
//! retry_on_timeout = true
//! "#).unwrap();
//! assert_eq!(config.backends.len(), 2);
//! assert!(!format!("{config:?}").contains("s3cret"));
//! ```
//!
//! The seed's shape (`ACS_SESSION_MULTISESSIONS_POOL` as a JSON list, or an
//! object holding that key) loads unchanged:
//!
//! ```
//! use tower_sessions_multi_redis_store::Config;
//!
//! let config = Config::from_json_str(r#"[
//!   {"backend": "0", "modes": ["read", "write"],
//!    "setting": {"SESSION_REDIS_HOST": "localhost", "SESSION_REDIS_PORT": 6379,
//!                "SESSION_REDIS_DB": 0, "SESSION_REDIS_PASSWORD": "",
//!                "SESSION_REDIS_PREFIX": "ds_", "SESSION_REDIS_SOCKET_TIMEOUT": 5}}
//! ]"#).unwrap();
//! assert_eq!(config.backends[0].name, "0");
//! ```
//!
//! Unknown keys and unknown modes are errors that give the line. In the seed
//! shape, `null` and `""` mean "not set", an entry without host, socket or URL
//! means `localhost:6379` (as in django-redis-sessions), a prefix `p` means
//! keys `p:<id>` (django-redis-sessions' layout: sessions that Django app
//! wrote load unchanged), and as there a `SESSION_REDIS_URL` wins over the
//! host, port, db, password and unix socket, and a unix socket over host and
//! port; what it overrides is ignored with a logged warning.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod seed;

use crate::backend::{Address, Backend};
use crate::breaker::BreakerConfig;
use crate::builder::MultiRedisStoreBuilder;
use crate::error::Error;
use crate::mode::{Mode, Modes};
use crate::policy::{CopyOnRead, ReadPolicy, WritePolicy};
use crate::redact::{RedisUrl, Secret};
use crate::store::MultiRedisStore;

/// A whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The copy-on-read policy (default `copy`).
    #[serde(default)]
    pub copy_on_read: CopyOnRead,
    /// `fall_through` (default) or `stop_on_error`.
    #[serde(default)]
    pub read_policy: ReadPolicy,
    /// `all` (default) or `any`.
    #[serde(default)]
    pub write_policy: WritePolicy,
    /// Seconds bounding each store operation (default: none).
    pub deadline: Option<f64>,
    /// Seconds a logout's tombstone lives at least (default one hour).
    pub tombstone_ttl: Option<f64>,
    /// Whether the server refuses a save once its sender gave up on it (default true).
    pub refuse_late_writes: Option<bool>,
    /// Whether instances announce their configuration's fingerprint (default true).
    pub announce: Option<bool>,
    /// Where the user is in a session's data (a key, or a JSON pointer such
    /// as `/axum-login.data/user_id`): the store then indexes each user's
    /// sessions. Default: none.
    pub user_key: Option<String>,
    /// At most this many sessions per user (with `user_key`). Default: no cap.
    pub max_sessions_per_user: Option<u32>,
    /// Seconds: the longest one user's saves through an instance go
    /// without pruning the user's index (with `user_key`); 0: every write
    /// of the user prunes it. Default 60.
    pub prune_index_every: Option<f64>,
    /// The backends, in order.
    pub backends: Vec<BackendConfig>,
}

/// One `[[backends]]` entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackendConfig {
    /// Unique name, used in errors and logs.
    pub name: String,
    /// `read`, `write`, `delete`.
    pub modes: Vec<Mode>,
    /// `redis://`, `rediss://`, `redis+unix://` or `unix://` URL.
    pub url: Option<RedisUrl>,
    /// Host name or IP (with `port`, default 6379).
    pub host: Option<String>,
    /// TCP port.
    pub port: Option<u16>,
    /// Unix domain socket path.
    pub unix_socket: Option<PathBuf>,
    /// Database number.
    pub db: Option<i64>,
    /// ACL user name.
    pub username: Option<String>,
    /// Password (never printed).
    pub password: Option<Secret>,
    /// Key prefix.
    pub prefix: Option<String>,
    /// Seconds (fractions allowed) bounding connect and each command.
    pub socket_timeout: Option<f64>,
    /// Retry idempotent commands once after a timeout.
    pub retry_on_timeout: Option<bool>,
    /// `TCP_NODELAY` (default true); see [`Backend::tcp_nodelay`].
    pub tcp_nodelay: Option<bool>,
    /// Write concurrent requests' commands together when busy (default true); see [`Backend::auto_pipeline`].
    pub auto_pipeline: Option<bool>,
    /// Accept a read backend without write or delete.
    pub allow_read_without_delete: Option<bool>,
    /// With TLS: PEM file of the CA to trust instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// With TLS: PEM file of the client certificate (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// With TLS: PEM file of the client key.
    pub tls_key_file: Option<PathBuf>,
    /// Consecutive failures that open the circuit breaker (0: never; default 5).
    pub breaker_failures: Option<u32>,
    /// Seconds an open breaker skips the backend (default 5).
    pub breaker_cool_down: Option<f64>,
    /// A partitioned backend's members (instead of `url`/`host`/`unix_socket`).
    pub members: Option<Vec<MemberConfig>>,
    /// Sentinels as `"host:port"` (instead of `url`/`host`/`unix_socket`); with `master`.
    pub sentinels: Option<Vec<String>>,
    /// The master's name the sentinels monitor.
    pub master: Option<String>,
    /// The sentinels' own password (never printed).
    pub sentinel_password: Option<Secret>,
    /// Redis Cluster seed nodes as `"host:port"` (instead of `url`/`host`/`unix_socket`).
    pub cluster: Option<Vec<String>>,
    /// TLS for a `host`/`port`, Sentinel or Cluster backend, or a
    /// partition's members (a URL says `rediss://` itself).
    pub tls: Option<bool>,
    /// Replicas that must hold a write before it is acknowledged (`WAIT`; 0
    /// turns it off; default 1 for Sentinel backends, else 0).
    pub wait_replicas: Option<u32>,
    /// Seconds a write waits for them (default: half the socket timeout).
    pub wait_timeout: Option<f64>,
}

/// One member of a partitioned backend (`[[backends.members]]`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MemberConfig {
    /// Label in the hash (default: the address, password redacted). Renaming
    /// a member moves its sessions.
    pub name: Option<String>,
    /// URL.
    pub url: Option<RedisUrl>,
    /// Host (with `port`, default 6379).
    pub host: Option<String>,
    /// TCP port.
    pub port: Option<u16>,
    /// Unix socket path.
    pub unix_socket: Option<PathBuf>,
    /// Database number.
    pub db: Option<i64>,
    /// ACL user name.
    pub username: Option<String>,
    /// Password (never printed).
    pub password: Option<Secret>,
    /// Share of sessions (default 1).
    pub weight: Option<u32>,
}

/// The address given by `url`, `host`/`port` or `unix_socket`: exactly one.
fn address(
    name: Option<&str>,
    url: Option<RedisUrl>,
    host: Option<String>,
    port: Option<u16>,
    unix_socket: Option<PathBuf>,
) -> Result<Address, Error> {
    match (url, host, unix_socket) {
        (Some(url), None, None) => {
            if port.is_some() {
                return Err(Error::config(name, "port", "cannot be combined with `url` (put the port in the URL)"));
            }
            Ok(Address::Url(url))
        }
        (None, Some(host), None) => Ok(Address::Tcp { host, port: port.unwrap_or(6379) }),
        (None, None, Some(path)) => Ok(Address::Unix(path)),
        (None, None, None) => Err(Error::config(name, "url", "no address: give `url`, `host` or `unix_socket`")),
        (Some(_), Some(_), _) => Err(Error::config(name, "host", "both `url` and `host` given; use one")),
        (_, _, Some(_)) => Err(Error::config(name, "unix_socket", "given together with `url` or `host`; use one")),
    }
}

impl MemberConfig {
    fn into_backend(self, backend: &str) -> Result<Backend, Error> {
        let label = self.name.clone();
        let address = address(Some(backend), self.url, self.host, self.port, self.unix_socket)?;
        let label = label.unwrap_or_else(|| match &address {
            Address::Url(url) => url.to_string(),
            Address::Tcp { host, port } => format!("{host}:{port}/{}", self.db.unwrap_or(0)),
            Address::Unix(path) => format!("{}/{}", path.display(), self.db.unwrap_or(0)),
            Address::Partitioned(_) | Address::Sentinel { .. } | Address::Cluster(_) => String::new(),
        });
        let mut member = Backend::new(label, address).weight(self.weight.unwrap_or(1));
        if let Some(db) = self.db {
            member = member.db(db);
        }
        if let Some(username) = self.username {
            member = member.username(username);
        }
        if let Some(password) = self.password {
            member = member.password(password);
        }
        Ok(member)
    }
}

impl Config {
    /// Reads a `.toml` or `.json` file.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`] when the file cannot be read or parsed (with the
    /// line), or has another extension.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, Error> {
        let path = path.as_ref();
        let file_error = |reason: String| Error::ConfigFile { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|err| file_error(err.to_string()))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Config::from_toml_str(&text),
            Some("json") => Config::from_json_str(&text),
            _ => Err(file_error("unknown extension: use .toml or .json".into())),
        }
        .map_err(|err| match err {
            Error::ConfigFile { reason, .. } => file_error(reason),
            other => other,
        })
    }

    /// Parses this crate's shape from TOML.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`] with the line and column.
    pub fn from_toml_str(text: &str) -> Result<Config, Error> {
        toml::from_str(text).map_err(|err: toml::de::Error| {
            let place = err
                .span()
                .map(|span| {
                    let (line, col) = line_col(text, span.start);
                    // The key of that line (never its value, which may be a password).
                    let key = text.lines().nth(line - 1).and_then(|l| l.split_once('=')).map(|(k, _)| k.trim());
                    match key {
                        Some(key) if !key.is_empty() => format!("line {line}, column {col}, key `{key}`: "),
                        _ => format!("line {line}, column {col}: "),
                    }
                })
                .unwrap_or_default();
            parse_error(format!("{place}{}", err.message().trim_end()))
        })
    }

    /// Parses this crate's shape or the seed's shape from JSON.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`] with the line and column.
    pub fn from_json_str(text: &str) -> Result<Config, Error> {
        let json_error = |err: serde_json::Error| parse_error(err.to_string());
        let probe: serde_json::Value = serde_json::from_str(text).map_err(json_error)?;
        match seed::backends(&probe, text) {
            Some(backends) => Ok(Config { backends: backends.map_err(json_error)?, ..Config::default() }),
            None => serde_json::from_str(text).map_err(json_error),
        }
    }

    /// The builder this configuration describes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the backend and field (e.g. both `url` and
    /// `host`, a negative timeout).
    pub fn into_builder(self) -> Result<MultiRedisStoreBuilder, Error> {
        let mut builder = crate::MultiRedisStore::builder()
            .copy_on_read(self.copy_on_read)
            .read_policy(self.read_policy)
            .write_policy(self.write_policy);
        if let Some(seconds) = self.deadline {
            builder = builder.deadline(seconds_field(None, "deadline", seconds)?);
        }
        if let Some(announce) = self.announce {
            builder = builder.announce(announce);
        }
        if let Some(key) = self.user_key {
            builder = builder.user_key(key);
        }
        if let Some(cap) = self.max_sessions_per_user {
            builder = builder.max_sessions_per_user(cap);
        }
        if let Some(seconds) = self.prune_index_every {
            builder = builder.prune_index_every(seconds_field(None, "prune_index_every", seconds)?);
        }
        if let Some(refuse) = self.refuse_late_writes {
            builder = builder.refuse_late_writes(refuse);
        }
        if let Some(seconds) = self.tombstone_ttl {
            builder = builder.tombstone_ttl(seconds_field(None, "tombstone_ttl", seconds)?);
        }
        for backend in self.backends {
            builder = builder.backend(backend.into_backend()?);
        }
        Ok(builder)
    }
}

impl BackendConfig {
    /// The backend this entry describes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the backend and the field.
    pub fn into_backend(self) -> Result<Backend, Error> {
        let name = Some(self.name.as_str());
        // At most one of the multi-server kinds, and then no single address.
        let kinds = [
            ("members", self.members.is_some()),
            ("sentinels", self.sentinels.is_some()),
            ("cluster", self.cluster.is_some()),
        ];
        let mut given = kinds.iter().filter(|(_, is)| *is).map(|(kind, _)| *kind);
        if let Some(kind) = given.next() {
            if let Some(other) = given.next() {
                return Err(Error::config(name, other, format!("given together with `{kind}`; use one")));
            }
            if self.url.is_some() || self.host.is_some() || self.unix_socket.is_some() || self.port.is_some() {
                return Err(Error::config(name, kind, "given together with an address; use one"));
            }
        }
        if self.master.is_some() && self.sentinels.is_none() {
            return Err(Error::config(name, "master", "given without `sentinels`"));
        }
        let address = if let Some(seeds) = &self.cluster {
            Address::Cluster(host_ports(name, "cluster", seeds, 6379)?)
        } else if let Some(sentinels) = &self.sentinels {
            let master = self
                .master
                .clone()
                .ok_or_else(|| Error::config(name, "master", "a sentinel backend needs the master's name"))?;
            Address::Sentinel { sentinels: host_ports(name, "sentinels", sentinels, 26379)?, master }
        } else if let Some(members) = self.members {
            if self.db.is_some() || self.username.is_some() || self.password.is_some() {
                return Err(Error::config(name, "members", "give `db`, `username` and `password` per member"));
            }
            Address::Partitioned(members.into_iter().map(|m| m.into_backend(&self.name)).collect::<Result<_, _>>()?)
        } else {
            address(name, self.url, self.host, self.port, self.unix_socket)?
        };
        let mut backend = Backend::new(self.name.clone(), address).modes(Modes::from(self.modes));
        if let Some(prefix) = self.prefix {
            backend = backend.prefix(prefix);
        }
        if let Some(db) = self.db {
            backend = backend.db(db);
        }
        if let Some(username) = self.username {
            backend = backend.username(username);
        }
        if let Some(password) = self.password {
            backend = backend.password(password);
        }
        if let Some(seconds) = self.socket_timeout {
            backend = backend.socket_timeout(seconds_field(name, "socket_timeout", seconds)?);
        }
        if self.breaker_failures.is_some() || self.breaker_cool_down.is_some() {
            let mut breaker = BreakerConfig::default();
            if let Some(n) = self.breaker_failures {
                breaker = breaker.failure_threshold(n);
            }
            if let Some(seconds) = self.breaker_cool_down {
                breaker = breaker.cool_down(seconds_field(name, "breaker_cool_down", seconds)?);
            }
            backend = backend.breaker(breaker);
        }
        if let Some(retry) = self.retry_on_timeout {
            backend = backend.retry_on_timeout(retry);
        }
        if let Some(nodelay) = self.tcp_nodelay {
            backend = backend.tcp_nodelay(nodelay);
        }
        if let Some(on) = self.auto_pipeline {
            backend = backend.auto_pipeline(on);
        }
        if let Some(password) = self.sentinel_password {
            backend = backend.sentinel_password(password);
        }
        if let Some(tls) = self.tls {
            backend = backend.tls(tls);
        }
        if let Some(replicas) = self.wait_replicas {
            backend = backend.wait_replicas(replicas);
        }
        if let Some(seconds) = self.wait_timeout {
            backend = backend.wait_timeout(seconds_field(name, "wait_timeout", seconds)?);
        }
        if let Some(allow) = self.allow_read_without_delete {
            backend = backend.allow_read_without_delete(allow);
        }
        let read = |field: &'static str, path: &Path| {
            std::fs::read(path).map_err(|err| Error::config(name, field, format!("{}: {err}", path.display())))
        };
        if let Some(path) = &self.tls_ca_file {
            backend = backend.tls_root_ca(read("tls_ca_file", path)?);
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                backend = backend.tls_client_cert(read("tls_cert_file", cert)?, read("tls_key_file", key)?);
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::config(name, "tls_key_file", "missing: `tls_cert_file` needs it"));
            }
            (None, Some(_)) => {
                return Err(Error::config(name, "tls_cert_file", "missing: `tls_key_file` needs it"));
            }
        }
        Ok(backend)
    }
}

/// `"host:port"` strings (the port defaulting to `default_port`); an IPv6
/// address in brackets, `[::1]:26379` or `[::1]`. A bare IPv6 address is
/// ambiguous (is `fe80::1` host `fe80:` port 1?) and refused.
fn host_ports(
    backend: Option<&str>,
    field: &'static str,
    list: &[String],
    default_port: u16,
) -> Result<Vec<(String, u16)>, Error> {
    let bad = |s: &str, why: &str| Error::config(backend, field, format!("`{s}` {why}"));
    list.iter()
        .map(|s| {
            let (host, port) = if let Some(rest) = s.strip_prefix('[') {
                let (host, after) = rest.split_once(']').ok_or_else(|| bad(s, "lacks its closing `]`"))?;
                match after {
                    "" => (host, None),
                    _ => (host, Some(after.strip_prefix(':').ok_or_else(|| bad(s, "is not [host]:port"))?)),
                }
            } else if s.matches(':').count() > 1 {
                return Err(bad(s, "is ambiguous: write an IPv6 address in brackets, `[::1]:26379`"));
            } else {
                match s.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (s.as_str(), None),
                }
            };
            if host.is_empty() {
                return Err(bad(s, "has no host"));
            }
            let port = match port {
                Some(port) => port.parse::<u16>().map_err(|_| bad(s, "is not host:port"))?,
                None => default_port,
            };
            Ok((host.to_owned(), port))
        })
        .collect()
}

/// A number of seconds from a config file.
fn seconds_field(backend: Option<&str>, field: &'static str, seconds: f64) -> Result<Duration, Error> {
    match Duration::try_from_secs_f64(seconds) {
        // Not zero in the file, so not to be read as zero (which can mean
        // "every time", as `prune_index_every` does).
        Ok(duration) if duration.is_zero() && seconds > 0.0 => {
            Err(Error::config(backend, field, format!("{seconds} is less than a nanosecond")))
        }
        Ok(duration) => Ok(duration),
        Err(_) => Err(Error::config(backend, field, format!("{seconds} is not a number of seconds"))),
    }
}

fn parse_error(reason: String) -> Error {
    Error::ConfigFile { path: PathBuf::from("<text>"), reason }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

impl MultiRedisStore {
    /// Builds a store from a TOML or JSON file (chosen by extension); see
    /// [`Config`] for the shapes accepted.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or parsed, or the configuration is invalid.
    pub async fn from_config_file(path: impl AsRef<Path>) -> Result<MultiRedisStore, Error> {
        Config::from_file(path)?.into_builder()?.build().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;

    /// Issue 13: how many replicas a write waits for, in both shapes; the
    /// default is 1 for a Sentinel backend only.
    #[test]
    fn wait_replicas_in_both_shapes_and_its_defaults() {
        let toml = Config::from_toml_str(
            r#"
            [[backends]]
            name = "ha"
            modes = ["read", "write"]
            sentinels = ["127.0.0.1:26379"]
            master = "sessions"

            [[backends]]
            name = "cluster"
            modes = ["read", "write"]
            cluster = ["127.0.0.1:7000"]
            wait_replicas = 2
            wait_timeout = 0.2

            [[backends]]
            name = "plain"
            modes = ["read", "delete"]
            url = "redis://127.0.0.1:6380"
            "#,
        )
        .unwrap();
        let backends: Vec<Backend> = toml.backends.into_iter().map(|b| b.into_backend().unwrap()).collect();
        assert_eq!(backends[0].wait(), Some((1, 1000)), "Sentinel: on by default, half the socket timeout");
        assert_eq!(backends[1].wait(), Some((2, 200)));
        assert_eq!(backends[2].wait(), None, "one server: off");

        let seed = Config::from_json_str(
            r#"[{"backend": "ha", "modes": ["read", "write"],
                 "setting": {"SESSION_REDIS_SENTINEL_LIST": [["127.0.0.1", 26379]],
                             "SESSION_REDIS_SENTINEL_MASTER_ALIAS": "sessions",
                             "SESSION_REDIS_WAIT_REPLICAS": 0}}]"#,
        )
        .unwrap();
        let ha = seed.backends.into_iter().next().unwrap().into_backend().unwrap();
        assert_eq!(ha.wait_replicas, 0, "turned off in the seed's shape");

        let slow = Backend::sentinel("ha", [("127.0.0.1", 26379)], "m")
            .socket_timeout(Duration::from_millis(100))
            .wait_timeout(Duration::from_millis(100));
        let err = crate::MultiRedisStore::builder().backend(slow).validate().unwrap_err().to_string();
        assert!(err.contains("`ha`") && err.contains("wait_timeout"), "{err}");
    }
}
