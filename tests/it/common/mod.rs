//! Helpers shared by the integration tests, and the acceptance suite every
//! store configuration must pass.
#![allow(dead_code)]

pub mod proxy;

use std::sync::Arc;

use redis::AsyncCommands;
use time::{Duration, OffsetDateTime};
use tower_sessions::Session;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_multi_redis_store::MultiRedisStore;
use tower_sessions_multi_redis_store::testing::RedisServer;

/// A small deterministic generator (xorshift), so failures can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// `op` retried until it succeeds (10 s at most): for checks after a fault
/// healed, where a backend may still answer slowly on a loaded machine and
/// trip its breaker (errors are allowed; the state is what is checked).
pub async fn patiently<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut op: impl FnMut() -> F,
) -> T {
    let mut last = String::new();
    for _ in 0..100 {
        match op().await {
            Ok(value) => return value,
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{what}: still failing after 10 s: {last}")
}

/// A live record for `user`, expiring in an hour.
pub fn record(user: &str) -> Record {
    Record {
        id: Id::default(),
        data: [("user".to_owned(), serde_json::json!(user))].into(),
        expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
    }
}

pub fn servers(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::start().expect("redis-server starts")).collect()
}

pub async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    server.client().unwrap().get_multiplexed_async_connection().await.expect("connect to test server")
}

/// Waits until the master at `url` has a replica that acknowledges writes
/// (a Sentinel backend waits for one before it acknowledges a write; a
/// replica's first sync waits out `repl-diskless-sync-delay`, 5 s).
pub async fn wait_for_replica(url: &str) {
    wait_for_replicas(url, 1).await;
}

/// Waits until the master at `url` has `n` replicas that acknowledge writes.
pub async fn wait_for_replicas(url: &str, n: u32) {
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    for _ in 0..150 {
        let _: () = redis::cmd("SET").arg("replica-probe").arg(1).query_async(&mut conn).await.unwrap();
        let acked: u32 = redis::cmd("WAIT").arg(n).arg(100).query_async(&mut conn).await.unwrap();
        if acked >= n {
            let _: () = redis::cmd("DEL").arg("replica-probe").query_async(&mut conn).await.unwrap();
            return;
        }
    }
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut conn).await.unwrap();
    panic!("no replica acknowledges writes on {url}: {info}");
}

/// `rec` written into `server` under `prefix` + its id, as
/// tower-sessions-redis-store (or a store not yet migrated) left it.
pub async fn plant(server: &RedisServer, prefix: &str, rec: &Record) {
    let bytes = tower_sessions_multi_redis_store::codec::encode(rec).unwrap();
    raw_set(server, &format!("{prefix}{}", rec.id), &bytes).await;
}

/// The raw value under `key` on `server`.
pub async fn raw_get(server: &RedisServer, key: &str) -> Option<Vec<u8>> {
    conn(server).await.get(key).await.unwrap()
}

/// Milliseconds to live of `key` (-2: absent, -1: no expiry).
pub async fn pttl(server: &RedisServer, key: &str) -> i64 {
    conn(server).await.pttl(key).await.unwrap()
}

/// The session keys on `server` (without the tombstones logouts leave and
/// the instances' announcements).
pub async fn session_keys(server: &RedisServer) -> Vec<String> {
    let keys: Vec<String> = conn(server).await.keys("*").await.unwrap();
    keys.into_iter().filter(|k| !k.ends_with(":tombstone") && !k.contains("multi-redis-sessions:instance:")).collect()
}

pub async fn exists(server: &RedisServer, key: &str) -> bool {
    conn(server).await.exists(key).await.unwrap()
}

pub async fn raw_set(server: &RedisServer, key: &str, value: &[u8]) {
    let _: () = conn(server).await.set_ex(key, value, 3600).await.unwrap();
}

pub async fn flushall(server: &RedisServer) {
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn(server).await).await.unwrap();
}

/// The `SessionStore` contract, run on any store configuration. Each step
/// asserts; `label` says which configuration failed.
pub async fn acceptance(store: &MultiRedisStore, label: &str) {
    // Unknown id.
    assert_eq!(store.load(&Id::default()).await.unwrap(), None, "{label}: unknown id");

    // create + load round trip.
    let mut ada = record("ada");
    store.create(&mut ada).await.unwrap();
    assert_eq!(store.load(&ada.id).await.unwrap().as_ref(), Some(&ada), "{label}: create/load");

    // save replaces the data and the expiry.
    ada.data.insert("visits".into(), serde_json::json!(3));
    ada.expiry_date += Duration::minutes(5);
    store.save(&ada).await.unwrap();
    assert_eq!(store.load(&ada.id).await.unwrap().as_ref(), Some(&ada), "{label}: save/load");

    // Two sessions are independent.
    let mut bob = record("bob");
    store.create(&mut bob).await.unwrap();
    assert_ne!(ada.id, bob.id, "{label}: distinct ids");
    assert_eq!(store.load(&bob.id).await.unwrap().as_ref(), Some(&bob), "{label}: second session");

    // Saving a session that does not exist writes nothing (no resurrection).
    let ghost = record("ghost");
    store.save(&ghost).await.unwrap();
    assert_eq!(store.load(&ghost.id).await.unwrap(), None, "{label}: save of unknown id");

    // delete, idempotently.
    store.delete(&ada.id).await.unwrap();
    assert_eq!(store.load(&ada.id).await.unwrap(), None, "{label}: deleted");
    store.delete(&ada.id).await.unwrap();
    store.delete(&Id::default()).await.unwrap();
    assert_eq!(store.load(&bob.id).await.unwrap().as_ref(), Some(&bob), "{label}: other session kept");

    // A save after a delete does not bring the session back.
    store.save(&ada).await.unwrap();
    assert_eq!(store.load(&ada.id).await.unwrap(), None, "{label}: save after delete");

    // An expired record is never returned.
    let mut expired = record("old");
    expired.expiry_date = OffsetDateTime::now_utc() - Duration::seconds(1);
    store.create(&mut expired).await.unwrap();
    assert_eq!(store.load(&expired.id).await.unwrap(), None, "{label}: expired");

    // Larger, unicode, nested data.
    let mut big = record("zoë 🦀");
    big.data.insert("blob".into(), serde_json::json!("x".repeat(10_000)));
    big.data.insert("nested".into(), serde_json::json!({"a": [1, 2.5, null, true], "b": {"c": "d"}}));
    store.create(&mut big).await.unwrap();
    assert_eq!(store.load(&big.id).await.unwrap().as_ref(), Some(&big), "{label}: big record");

    // Through tower-sessions' own Session: create, reload, cycle the id, flush.
    let shared = Arc::new(store.clone());
    let session = Session::new(None, shared.clone(), None);
    session.insert("n", 1).await.unwrap();
    session.save().await.unwrap();
    let first_id = session.id().expect("saved session has an id");
    let again = Session::new(Some(first_id), shared.clone(), None);
    assert_eq!(again.get::<i32>("n").await.unwrap(), Some(1), "{label}: Session reload");
    again.cycle_id().await.unwrap();
    again.save().await.unwrap();
    let cycled = again.id().expect("cycled id");
    assert_ne!(cycled, first_id, "{label}: cycle_id");
    assert_eq!(store.load(&first_id).await.unwrap(), None, "{label}: old id gone after cycle");
    let reloaded = Session::new(Some(cycled), shared.clone(), None);
    assert_eq!(reloaded.get::<i32>("n").await.unwrap(), Some(1), "{label}: data kept by cycle");
    reloaded.flush().await.unwrap();
    assert_eq!(store.load(&cycled).await.unwrap(), None, "{label}: flush");
}

/// A `tracing_subscriber` writer that keeps what was logged, for tests that
/// read the logs.
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
