//! Bad input gets a clear error naming the backend and the field, and
//! nothing is lost.

use std::io::Write;

use crate::common::{raw_get, raw_set, record, servers};
use tower_sessions_core::{SessionStore, session_store};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, Config, Error, Modes, MultiRedisStore};

#[tokio::test]
async fn garbage_under_a_session_key_is_a_decode_error_and_loses_nothing() {
    let server = &servers(1)[0];
    let store =
        MultiRedisStore::builder().backend(Backend::url("main", server.url()).prefix("s:")).build().await.unwrap();
    let mut good = record("ada");
    store.create(&mut good).await.unwrap();
    let bad = record("garbage");
    let key = format!("s:{}", bad.id);
    for garbage in [&b"\xc1\xff\x00 not msgpack"[..], b"", b"\x93\xc4\x10", b"{\"json\":true}"] {
        raw_set(server, &key, garbage).await;
        match store.load(&bad.id).await {
            Err(session_store::Error::Decode(msg)) => {
                assert!(msg.contains("backend `main`"), "{msg}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
        // Left in place for inspection; other sessions unaffected.
        assert_eq!(raw_get(server, &key).await.as_deref(), Some(garbage));
        assert_eq!(store.load(&good.id).await.unwrap(), Some(good.clone()));
    }
}

/// Builds and returns the error message, which must be a `Config` error.
async fn refused(builder: tower_sessions_multi_redis_store::MultiRedisStoreBuilder) -> String {
    match builder.build().await {
        Err(err @ Error::Config { .. }) => err.to_string(),
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(store) => panic!("expected a configuration error, got {store:?}"),
    }
}

#[tokio::test]
async fn every_validation_case_names_backend_and_field() {
    let ok = || Backend::url("main", "redis://127.0.0.1:1");
    let cases: Vec<(MultiRedisStoreBuilderFn, &str)> = vec![
        (Box::new(|b| b), "field `backends`: no backend configured"),
        (
            Box::new(move |b| b.backend(Backend::url("", "redis://127.0.0.1:1"))),
            "field `name`: backend #1 has an empty name",
        ),
        (
            Box::new(move |b| b.backend(ok()).backend(Backend::url("main", "redis://127.0.0.1:2"))),
            "backend `main`, field `name`: the name is used by another backend",
        ),
        (Box::new(move |b| b.backend(ok().modes(Modes::NONE))), "backend `main`, field `modes`: no mode given"),
        (
            Box::new(move |b| b.backend(ok().socket_timeout(std::time::Duration::ZERO))),
            "backend `main`, field `socket_timeout`: must be greater than zero",
        ),
        (
            Box::new(move |b| b.backend(ok()).backend(Backend::url("old", "redis://127.0.0.1:2").modes(Modes::READ))),
            "backend `old`, field `modes`: a `read` backend must also have `write` or `delete`",
        ),
        (Box::new(move |b| b.backend(ok().modes(Modes::WRITE))), "field `modes`: no backend has the `read` mode"),
        (
            Box::new(move |b| b.backend(ok().modes(Modes::READ_DELETE))),
            "field `modes`: no backend has the `write` mode",
        ),
        (
            Box::new(move |b| {
                b.backend(ok().modes(Modes::WRITE))
                    .backend(Backend::url("old", "redis://h:1").modes(Modes::READ_DELETE))
            }),
            "field `modes`: no backend has both `read` and `write`",
        ),
        (
            Box::new(move |b| b.backend(Backend::tcp("main", "127.0.0.1", 0))),
            "backend `main`, field `port`: must be between 1 and 65535",
        ),
        (Box::new(move |b| b.backend(Backend::tcp("main", "", 1))), "backend `main`, field `host`: must not be empty"),
        (
            Box::new(move |b| b.backend(Backend::unix("main", ""))),
            "backend `main`, field `unix_socket`: must not be empty",
        ),
        (Box::new(move |b| b.backend(ok().db(-1))), "backend `main`, field `db`: must not be negative"),
        (
            Box::new(move |b| b.backend(Backend::url("main", "redis://user:hunter2@127.0.0.1:1/-1"))),
            "backend `main`, field `url`: the database number must not be negative",
        ),
        (
            Box::new(move |b| b.backend(Backend::url("main", "http://user:hunter2@example.com"))),
            "backend `main`, field `url`: not a usable Redis URL",
        ),
        (
            Box::new(move |b| b.backend(ok().tls_root_ca(b"pem".to_vec()))),
            "backend `main`, field `tls_ca_file`: given for an address without TLS (rediss://, or `tls`)",
        ),
        // TLS asked for is never plain text instead.
        (
            Box::new(move |b| b.backend(Backend::url("main", "redis://user:hunter2@127.0.0.1:1").tls(true))),
            "backend `main`, field `tls`: on, but the url is not rediss://",
        ),
        (
            Box::new(move |b| b.backend(Backend::unix("main", "/tmp/r.sock").tls(true))),
            "backend `main`, field `tls`: a unix socket does not take TLS",
        ),
        (
            Box::new(move |b| b.backend(Backend::cluster("main", [("127.0.0.1", 1)]).tls_root_ca(b"pem".to_vec()))),
            "backend `main`, field `tls`: TLS certificates given but `tls` is off",
        ),
        #[cfg(not(feature = "tls"))]
        (
            Box::new(move |b| b.backend(Backend::tcp("main", "127.0.0.1", 1).tls(true))),
            "backend `main`, field `tls`: TLS needs the crate feature `tls`",
        ),
        #[cfg(not(feature = "tls"))]
        (
            Box::new(move |b| b.backend(Backend::cluster("main", [("127.0.0.1", 1)]).tls(true))),
            "backend `main`, field `tls`: TLS needs the crate feature `tls`",
        ),
        #[cfg(feature = "tls")]
        (
            Box::new(move |b| {
                b.backend(Backend::url("main", "rediss://user:hunter2@127.0.0.1:1").tls_root_ca(b"not pem".to_vec()))
            }),
            "backend `main`, field `tls_ca_file`: not usable PEM",
        ),
        #[cfg(not(feature = "tls"))]
        (
            Box::new(move |b| b.backend(Backend::url("main", "rediss://user:hunter2@127.0.0.1:1"))),
            "backend `main`, field `url`: rediss:// (TLS) needs the crate feature `tls`",
        ),
        (Box::new(move |b| b.backend(ok()).create_attempts(0)), "field `create_attempts`: must be at least 1"),
        (
            Box::new(move |b| b.backend(ok()).prune_index_every(std::time::Duration::from_secs(60))),
            "field `prune_index_every`: needs `user_key`",
        ),
        (
            Box::new(move |b| {
                b.backend(ok()).user_key("user").prune_index_every(std::time::Duration::from_micros(999))
            }),
            "field `prune_index_every`: must be zero (every write) or at least a millisecond",
        ),
        (
            Box::new(move |b| {
                b.backend(ok()).user_key("user").prune_index_every(std::time::Duration::from_secs(90_000))
            }),
            "field `prune_index_every`: must be at most a day",
        ),
        (
            Box::new(move |b| {
                b.backend(ok())
                    .user_key("user")
                    .refuse_late_writes(false)
                    .prune_index_every(std::time::Duration::from_secs(60))
            }),
            "field `prune_index_every`: needs `refuse_late_writes`",
        ),
    ];
    for (make, expected) in cases {
        let msg = refused(make(MultiRedisStore::builder())).await;
        assert!(msg.contains(expected), "{msg:?} should contain {expected:?}");
        assert!(!msg.contains("hunter2"), "password leaked: {msg}");
    }
}

type MultiRedisStoreBuilderFn = Box<
    dyn Fn(
        tower_sessions_multi_redis_store::MultiRedisStoreBuilder,
    ) -> tower_sessions_multi_redis_store::MultiRedisStoreBuilder,
>;

fn write_file(ext: &str, text: &str) -> tempfile::TempPath {
    let mut file = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.into_temp_path()
}

async fn config_error(ext: &str, text: &str) -> String {
    let path = write_file(ext, text);
    match MultiRedisStore::from_config_file(&path).await {
        Err(err) => err.to_string(),
        Ok(store) => panic!("{text} was accepted: {store:?}"),
    }
}

#[tokio::test]
async fn config_files_with_unknown_keys_or_modes_are_rejected_with_the_line() {
    let unknown_mode = "[[backends]]\nname = \"a\"\nmodes = [\"read\", \"wirte\"]\nurl = \"redis://127.0.0.1:1\"\n";
    let msg = config_error(".toml", unknown_mode).await;
    assert!(msg.contains("line 3") && msg.contains("unknown mode `wirte`"), "{msg}");

    let unknown_key =
        "[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://127.0.0.1:1\"\npasword = \"x\"\n";
    let msg = config_error(".toml", unknown_key).await;
    assert!(msg.contains("line 5") && msg.contains("unknown field `pasword`"), "{msg}");

    let json = "{\"backends\": [\n {\"name\": \"a\", \"modes\": [\"read\", \"write\"],\n  \"url\": \"redis://127.0.0.1:1\", \"colour\": 1}]}";
    let msg = config_error(".json", json).await;
    assert!(msg.contains("line 3") && msg.contains("unknown field `colour`"), "{msg}");

    let seed = "[{\"backend\": \"0\", \"modes\": [\"read\", \"write\"],\n \"setting\": {\"SESSION_REDIS_HOST\": \"localhost\",\n \"SESSION_REDIS_PROT\": 1}}]";
    let msg = config_error(".json", seed).await;
    assert!(msg.contains("line 3") && msg.contains("unknown field `SESSION_REDIS_PROT`"), "{msg}");

    let seed_mode = "[{\"backend\": \"0\",\n \"modes\": [\"read\", \"erase\"]}]";
    let msg = config_error(".json", seed_mode).await;
    assert!(msg.contains("line 2") && msg.contains("unknown mode `erase`"), "{msg}");

    let msg = config_error(".yaml", "backends: []").await;
    assert!(msg.contains("unknown extension"), "{msg}");
}

#[tokio::test]
async fn config_files_with_invalid_values_name_backend_and_field() {
    let cases = [
        (
            "[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://127.0.0.1:1\"\nhost = \"h\"\n",
            "backend `a`, field `host`: both `url` and `host` given",
        ),
        (
            "[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nhost = \"h\"\nunix_socket = \"/tmp/s\"\n",
            "backend `a`, field `unix_socket`",
        ),
        ("[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\n", "backend `a`, field `url`: no address"),
        (
            "[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nhost = \"h\"\nsocket_timeout = -1\n",
            "backend `a`, field `socket_timeout`",
        ),
        (
            "[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nhost = \"h\"\nsocket_timeout = 0\n",
            "backend `a`, field `socket_timeout`: must be greater than zero",
        ),
        (
            "[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://127.0.0.1:1\"\nport = 7\n",
            "backend `a`, field `port`",
        ),
        (
            "user_key = \"user\"\nprune_index_every = -1\n[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nhost = \"h\"\n",
            "field `prune_index_every`",
        ),
        (
            "user_key = \"user\"\nprune_index_every = 0.0005\n[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nhost = \"h\"\n",
            "field `prune_index_every`: must be zero (every write) or at least a millisecond",
        ),
        (
            "user_key = \"user\"\nprune_index_every = 1e-10\n[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nhost = \"h\"\n",
            "field `prune_index_every`: 0.0000000001 is less than a nanosecond",
        ),
    ];
    for (text, expected) in cases {
        let msg = config_error(".toml", text).await;
        assert!(msg.contains(expected), "{msg:?} should contain {expected:?}");
    }
}

#[tokio::test]
async fn the_seed_shape_loads_unchanged() {
    let servers = servers(2);
    // The seed README's example, pointed at throwaway servers.
    let text = format!(
        r#"{{"ACS_SESSION_MULTISESSIONS_POOL": [
        {{"backend": "0", "modes": ["read", "write"],
         "setting": {{"SESSION_REDIS_HOST": "127.0.0.1", "SESSION_REDIS_PORT": {},
                     "SESSION_REDIS_DB": 0, "SESSION_REDIS_PASSWORD": "",
                     "SESSION_REDIS_PREFIX": "ds_", "SESSION_REDIS_SOCKET_TIMEOUT": 5}}}},
        {{"backend": 1, "modes": ["read", "delete"],
         "setting": {{"SESSION_REDIS_UNIX_DOMAIN_SOCKET_PATH": "{}", "SESSION_REDIS_DB": 1,
                     "SESSION_REDIS_PASSWORD": null, "SESSION_REDIS_URL": null,
                     "SESSION_REDIS_PREFIX": "ds_", "SESSION_REDIS_SOCKET_TIMEOUT": 0.5,
                     "SESSION_REDIS_RETRY_ON_TIMEOUT": true}}}}]}}"#,
        servers[0].port(),
        servers[1].unix_socket().display()
    );
    let path = write_file(".json", &text);
    let store = MultiRedisStore::from_config_file(&path).await.unwrap();
    let names: Vec<_> = store.backends().map(|(n, m)| format!("{n}:{m}")).collect();
    assert_eq!(names, ["0:read+write", "1:read+delete"]);
    let mut rec = record("seed");
    store.create(&mut rec).await.unwrap();
    assert!(
        raw_get(&servers[0], &format!("ds_:{}", rec.id)).await.is_some(),
        "django-redis-sessions' layout, prefix:id"
    );
    crate::common::acceptance(&store, "seed config").await;

    // The plain list form (no wrapping object) too.
    let bare = text.replacen("{\"ACS_SESSION_MULTISESSIONS_POOL\": ", "", 1);
    let list = Config::from_json_str(bare.trim_end_matches('}'));
    assert_eq!(list.unwrap().backends.len(), 2);
}

#[tokio::test]
async fn no_public_type_prints_a_password() {
    let secret = "hunter2-secret";
    let backends = [
        Backend::url("a", format!("redis://user:{secret}@127.0.0.1:1/0")),
        Backend::tcp("b", "127.0.0.1", 1).username("u").password(secret),
        Backend::url("c", format!("redis+unix:///tmp/x.sock?db=1&pass={secret}")),
        Backend::unix("d", "/tmp/y.sock").password(secret).modes(Modes::READ_DELETE),
    ];
    let builder = MultiRedisStore::builder().backends(backends.clone());
    let mut printed = vec![format!("{builder:?}")];
    printed.extend(backends.iter().map(|b| format!("{b:?} {:?}", b.address())));
    let store = builder.build().await.unwrap();
    printed.push(format!("{store:?}"));
    // Errors of a wrong password on a real server.
    let server = RedisServer::start_with(&["--requirepass", "right-password"]).unwrap();
    let wrong = MultiRedisStore::builder()
        .backend(Backend::url("locked", format!("redis://:{secret}@127.0.0.1:{}", server.port())))
        .build()
        .await
        .unwrap();
    let err = wrong.load(&record("x").id).await.unwrap_err();
    printed.push(format!("{err} {err:?}"));
    let config = Config::from_toml_str(&format!(
        "[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://u:{secret}@h:1\"\npassword = \"{secret}\"\n"
    ))
    .unwrap();
    printed.push(format!("{config:?}"));
    for text in &printed {
        assert!(!text.contains(secret), "password printed: {text}");
    }
    assert!(printed[printed.len() - 2].contains("backend `locked`"), "{}", printed[printed.len() - 2]);
}

#[test]
fn ipv6_sentinels_and_cluster_seeds_take_brackets_and_a_bare_one_is_refused() {
    use tower_sessions_multi_redis_store::Address;
    let backend = |list: &str| {
        let text = format!(
            "[[backends]]\nname = \"ha\"\nmodes = [\"read\", \"write\"]\nsentinels = [{list}]\nmaster = \"m\"\n"
        );
        Config::from_toml_str(&text).and_then(|c| c.into_builder()).map(|_| ()).map_err(|e| e.to_string())
    };
    let address = |list: &str| {
        let text = format!(
            "[[backends]]\nname = \"ha\"\nmodes = [\"read\", \"write\"]\nsentinels = [{list}]\nmaster = \"m\"\n"
        );
        let config = Config::from_toml_str(&text).unwrap();
        match config.backends[0].clone().into_backend().unwrap().address().clone() {
            Address::Sentinel { sentinels, .. } => sentinels,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(address("\"[::1]:26380\", \"[fe80::1]\""), [("::1".to_owned(), 26380), ("fe80::1".to_owned(), 26_379)]);
    assert_eq!(address("\"10.0.0.1:26381\", \"h\""), [("10.0.0.1".to_owned(), 26381), ("h".to_owned(), 26_379)]);
    let err = backend("\"fe80::1\"").unwrap_err();
    assert!(err.contains("backend `ha`, field `sentinels`") && err.contains("in brackets"), "{err}");
    for bad in ["\"[::1\"", "\"[::1]x\"", "\"[]:1\"", "\":1\"", "\"h:99999\""] {
        let err = backend(bad).unwrap_err();
        assert!(err.contains("field `sentinels`"), "{bad}: {err}");
    }
}

/// A bare IPv6 address as a cluster seed is put in brackets for redis-rs
/// (before, the store could not be built).
#[tokio::test]
async fn an_ipv6_cluster_seed_builds() {
    let built = MultiRedisStore::builder().backend(Backend::cluster("c", [("::1", 1)])).build().await;
    assert!(built.is_ok(), "{:?}", built.err());
}

/// As in django-redis-sessions, `SESSION_REDIS_URL` wins over host, port, db
/// and password (which are ignored, with a warning).
#[tokio::test]
async fn in_the_seed_shape_the_url_wins_over_host_port_db_and_password() {
    let server = &servers(1)[0];
    let text = format!(
        r#"[{{"backend": "0", "modes": ["read", "write"],
             "setting": {{"SESSION_REDIS_URL": "redis://127.0.0.1:{}/2", "SESSION_REDIS_HOST": "nowhere.invalid",
                         "SESSION_REDIS_PORT": 1, "SESSION_REDIS_DB": 5, "SESSION_REDIS_PASSWORD": "hunter2",
                         "SESSION_REDIS_PREFIX": "session"}}}}]"#,
        server.port()
    );
    let path = write_file(".json", &text);
    let logs = crate::common::Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let store = {
        let _guard = tracing::subscriber::set_default(subscriber);
        MultiRedisStore::from_config_file(&path).await.unwrap()
    };
    let logged = logs.text();
    for ignored in ["SESSION_REDIS_HOST", "SESSION_REDIS_PORT", "SESSION_REDIS_DB", "SESSION_REDIS_PASSWORD"] {
        assert!(logged.contains(&format!("{ignored} is ignored: SESSION_REDIS_URL is given")), "{ignored}: {logged}");
    }
    assert!(!logged.contains("hunter2"), "no password is printed: {logged}");
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    let mut db2 = server.client().unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SELECT").arg(2).query_async(&mut db2).await.unwrap();
    let found: bool = redis::cmd("EXISTS").arg(format!("session:{}", rec.id)).query_async(&mut db2).await.unwrap();
    assert!(found, "in the URL's db 2, under `session:<id>`");
}

/// A password written as a number (as Django's settings allow) is its text,
/// in both shapes; one of another type is refused without its value in the
/// message (before, serde quoted it: "invalid type: integer `12345678`").
#[tokio::test]
async fn a_numeric_password_is_its_text_and_a_bad_one_is_never_quoted() {
    let server = RedisServer::start_with(&["--requirepass", "12345678"]).unwrap();
    let toml = format!(
        "[[backends]]\nname = \"main\"\nmodes = [\"read\", \"write\"]\nhost = \"127.0.0.1\"\nport = {}\npassword = 12345678\n",
        server.port()
    );
    let seed = format!(
        r#"[{{"backend": "main", "modes": ["read", "write"],
             "setting": {{"SESSION_REDIS_HOST": "127.0.0.1", "SESSION_REDIS_PORT": {}, "SESSION_REDIS_PASSWORD": 12345678}}}}]"#,
        server.port()
    );
    for (ext, text) in [(".toml", toml.as_str()), (".json", seed.as_str())] {
        let store = MultiRedisStore::from_config_file(&write_file(ext, text)).await.unwrap();
        let mut rec = record("ada");
        store.create(&mut rec).await.unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert!(store.load(&rec.id).await.unwrap().is_some(), "{ext}");
    }
    for (ext, text) in [
        (".toml", "[[backends]]\nname = \"m\"\nmodes = [\"read\", \"write\"]\nhost = \"h\"\npassword = 1234.5678\n"),
        (
            ".json",
            r#"[{"backend": "m", "modes": ["read", "write"], "setting": {"SESSION_REDIS_PASSWORD": 1234.5678}}]"#,
        ),
    ] {
        let msg = config_error(ext, text).await;
        assert!(msg.contains("a password must be a string or a whole number"), "{ext}: {msg}");
        assert!(!msg.contains("1234"), "{ext}: the value is quoted: {msg}");
    }
}
