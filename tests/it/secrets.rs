//! No password in any `Debug`, `Display`, error message or
//! log line, including the logs of failing connections.

use std::time::Duration;

use crate::common::{Captured, record};
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::Id;
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, Config, Modes, MultiRedisStore};

const SECRET: &str = "Tr0ub4dor-and-3";

#[tokio::test]
async fn failing_connections_log_no_password() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let locked = RedisServer::start_with(&["--requirepass", "the-right-one"]).unwrap();
    let mut dead = RedisServer::start().unwrap();
    let dead_port = dead.port();
    dead.kill();
    let quick = |b: Backend| b.socket_timeout(Duration::from_millis(200));
    let store = MultiRedisStore::builder()
        .backend(quick(Backend::url("wrong-pass", format!("redis://app:{SECRET}@127.0.0.1:{}", locked.port()))))
        .backend(quick(Backend::tcp("dead", "127.0.0.1", dead_port).password(SECRET).modes(Modes::READ_DELETE)))
        .backend(quick(
            Backend::url("unix", format!("redis+unix:///nonexistent.sock?pass={SECRET}")).modes(Modes::READ_DELETE),
        ))
        .build()
        .await
        .unwrap();

    let mut printed = Vec::new();
    let mut rec = record("ada");
    for _ in 0..3 {
        printed.push(format!("{:?}", store.load(&Id::default()).await));
        printed.push(format!("{:?}", store.create(&mut rec).await));
        printed.push(format!("{:?}", store.save(&rec).await));
        printed.push(format!("{:?}", store.delete(&rec.id).await));
    }
    printed.push(format!("{store:?}"));
    printed.push(format!("{:?}", store.health()));
    printed.push(serde_json::to_string(&store.health()).unwrap());
    printed.push(format!("{:?}", store.stats().await));
    let config = Config::from_toml_str(&format!(
        "[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://u:{SECRET}@h:1\"\n\n[[backends]]\nname = \"b\"\nmodes = [\"read\", \"delete\"]\nhost = \"h\"\npassword = \"{SECRET}\"\n"
    ))
    .unwrap();
    printed.push(format!("{config:?}"));
    printed.push(format!("{:?}", config.into_builder().unwrap()));

    let logs = logs.text();
    assert!(logs.contains("backend"), "logs were captured: {logs}");
    assert!(logs.contains("wrong-pass") && logs.contains("dead"), "failures were logged");
    assert!(!logs.contains(SECRET), "password in the logs:\n{logs}");
    for text in &printed {
        assert!(!text.contains(SECRET), "password printed: {text}");
    }
    assert!(printed.iter().any(|t| t.contains("backend `wrong-pass`")), "{printed:?}");
}
