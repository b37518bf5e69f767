//! The seed Django package's JSON shape (`ACS_SESSION_MULTISESSIONS_POOL`,
//! django-redis-sessions' `SESSION_REDIS_*` keys), read into this crate's
//! [`BackendConfig`]s with the meaning those keys had there.

use std::path::PathBuf;

use serde::Deserialize;

use super::{BackendConfig, MemberConfig};
use crate::mode::Mode;
use crate::redact::{RedisUrl, Secret};

/// The backends of a seed-shaped file (a JSON list of entries, or an object
/// holding `ACS_SESSION_MULTISESSIONS_POOL`); `None` for another shape.
pub(super) fn backends(probe: &serde_json::Value, text: &str) -> Option<Result<Vec<BackendConfig>, serde_json::Error>> {
    let entries = match probe {
        serde_json::Value::Array(_) => serde_json::from_str::<Vec<SeedEntry>>(text),
        serde_json::Value::Object(map) if map.contains_key("ACS_SESSION_MULTISESSIONS_POOL") => {
            serde_json::from_str::<SeedFile>(text).map(|file| file.pool)
        }
        _ => return None,
    };
    Some(entries.map(|entries| entries.into_iter().map(SeedEntry::into_backend_config).collect()))
}

/// `{"ACS_SESSION_MULTISESSIONS_POOL": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    #[serde(rename = "ACS_SESSION_MULTISESSIONS_POOL")]
    pool: Vec<SeedEntry>,
}

/// One entry of the seed's `ACS_SESSION_MULTISESSIONS_POOL`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedEntry {
    backend: NameOrNumber,
    modes: Vec<Mode>,
    #[serde(default)]
    setting: SeedSetting,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NameOrNumber {
    Name(String),
    Number(i64),
}

/// The seed's `setting` keys (those of django-redis-sessions).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
struct SeedSetting {
    session_redis_host: Option<String>,
    session_redis_port: Option<u16>,
    session_redis_db: Option<i64>,
    session_redis_username: Option<String>,
    session_redis_password: Option<Secret>,
    session_redis_prefix: Option<String>,
    session_redis_socket_timeout: Option<f64>,
    session_redis_retry_on_timeout: Option<bool>,
    session_redis_unix_domain_socket_path: Option<PathBuf>,
    session_redis_url: Option<String>,
    session_redis_pool: Option<Vec<SeedPoolMember>>,
    /// `[(host, port), ...]`: JSON arrays of two.
    session_redis_sentinel_list: Option<Vec<(String, u16)>>,
    session_redis_sentinel_master_alias: Option<String>,
    /// This crate's addition: `wait_replicas`.
    session_redis_wait_replicas: Option<u32>,
    /// This crate's addition: `wait_timeout` (seconds).
    session_redis_wait_timeout: Option<f64>,
}

/// One entry of the seed's `SESSION_REDIS_POOL`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE")]
struct SeedPoolMember {
    session_redis_host: Option<String>,
    session_redis_port: Option<u16>,
    session_redis_db: Option<i64>,
    session_redis_username: Option<String>,
    session_redis_password: Option<Secret>,
    session_redis_unix_domain_socket_path: Option<PathBuf>,
    session_redis_url: Option<String>,
    session_redis_weight: Option<u32>,
}

impl SeedPoolMember {
    fn into_member(self) -> MemberConfig {
        let url = set(self.session_redis_url);
        let unix_socket = self.session_redis_unix_domain_socket_path.filter(|p| !p.as_os_str().is_empty());
        let mut host = set(self.session_redis_host);
        if url.is_none() && unix_socket.is_none() && host.is_none() {
            host = Some("localhost".to_owned());
        }
        MemberConfig {
            port: if host.is_some() { self.session_redis_port } else { None },
            url: url.map(RedisUrl::from),
            host,
            unix_socket,
            db: self.session_redis_db,
            username: set(self.session_redis_username),
            password: self.session_redis_password.filter(|p| !p.expose().is_empty()),
            weight: self.session_redis_weight,
            ..MemberConfig::default()
        }
    }
}

/// `None` for `null` and `""`, as the seed's examples use both for "unset".
fn set(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

impl SeedEntry {
    fn into_backend_config(self) -> BackendConfig {
        let s = self.setting;
        let name = match self.backend {
            NameOrNumber::Name(name) => name,
            NameOrNumber::Number(n) => n.to_string(),
        };
        let members = s.session_redis_pool.map(|pool| pool.into_iter().map(SeedPoolMember::into_member).collect());
        let sentinels: Option<Vec<String>> = s.session_redis_sentinel_list.map(|list| {
            list.into_iter()
                .map(|(h, p)| if h.contains(':') { format!("[{h}]:{p}") } else { format!("{h}:{p}") })
                .collect()
        });
        let url = set(s.session_redis_url);
        let mut unix_socket = s.session_redis_unix_domain_socket_path.filter(|p| !p.as_os_str().is_empty());
        let mut host = set(s.session_redis_host);
        let mut port = s.session_redis_port;
        let (mut db, mut password) = (s.session_redis_db, s.session_redis_password.filter(|p| !p.expose().is_empty()));
        // django-redis-sessions' precedence: the URL, else the unix socket, else host and port.
        let ignored = |what: &str, by: &str| tracing::warn!(backend = %name, "{what} is ignored: {by} is given");
        if url.is_some() {
            for (what, given) in [
                ("SESSION_REDIS_HOST", host.take().is_some()),
                ("SESSION_REDIS_PORT", port.take().is_some()),
                ("SESSION_REDIS_DB", db.take().is_some()),
                ("SESSION_REDIS_PASSWORD", password.take().is_some()),
                ("SESSION_REDIS_UNIX_DOMAIN_SOCKET_PATH", unix_socket.take().is_some()),
            ] {
                if given {
                    ignored(what, "SESSION_REDIS_URL");
                }
            }
        } else if unix_socket.is_some() {
            for (what, given) in
                [("SESSION_REDIS_HOST", host.take().is_some()), ("SESSION_REDIS_PORT", port.take().is_some())]
            {
                if given {
                    ignored(what, "SESSION_REDIS_UNIX_DOMAIN_SOCKET_PATH");
                }
            }
        }
        if url.is_none() && unix_socket.is_none() && host.is_none() && members.is_none() && sentinels.is_none() {
            host = Some("localhost".to_owned());
        }
        BackendConfig {
            name,
            modes: self.modes,
            port: if host.is_some() { port } else { None },
            url: url.map(RedisUrl::from),
            host,
            unix_socket,
            db,
            username: set(s.session_redis_username),
            password,
            // django-redis-sessions stores a session under `prefix:key`.
            prefix: set(s.session_redis_prefix).map(|p| format!("{p}:")),
            socket_timeout: s.session_redis_socket_timeout,
            retry_on_timeout: s.session_redis_retry_on_timeout,
            members,
            sentinels,
            master: set(s.session_redis_sentinel_master_alias),
            wait_replicas: s.session_redis_wait_replicas,
            wait_timeout: s.session_redis_wait_timeout,
            ..BackendConfig::default()
        }
    }
}
