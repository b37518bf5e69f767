//! `socket_timeout` bounds every command on a frozen (SIGSTOP) server, and
//! `retry_on_timeout` retries an idempotent command once.

use std::time::{Duration, Instant};

use crate::common::{record, servers};
use tower_sessions_core::SessionStore;
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, BreakerConfig, MultiRedisStore};

async fn store(server: &RedisServer, retry: bool) -> MultiRedisStore {
    MultiRedisStore::builder()
        .backend(
            Backend::url("frozen", server.url()).socket_timeout(Duration::from_millis(300)).retry_on_timeout(retry),
        )
        .build()
        .await
        .unwrap()
}

/// Freezes `server` now and thaws it after `ms`.
fn freeze_for(server: &RedisServer, ms: u64) -> std::thread::JoinHandle<()> {
    server.freeze_for(Duration::from_millis(ms)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_and_a_retry_rides_out_a_short_freeze() {
    let server = &servers(1)[0];
    let (once, twice) = (store(server, false).await, store(server, true).await);
    let mut rec = record("ada");
    once.create(&mut rec).await.unwrap();
    twice.load(&rec.id).await.unwrap(); // connect both before freezing

    // Without retry: an error naming the backend and the timeout, after about
    // one timeout (never a hang).
    let thaw = freeze_for(server, 450);
    let started = Instant::now();
    let err = once.load(&rec.id).await.unwrap_err().to_string();
    assert!(err.contains("backend `frozen`") && err.contains("GET"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "bounded by the timeout");
    thaw.join().unwrap();

    // With retry: the first attempt times out at 300 ms, the second is
    // answered once the server thaws at 450 ms.
    let thaw = freeze_for(server, 450);
    assert_eq!(twice.load(&rec.id).await.unwrap(), Some(rec.clone()));
    thaw.join().unwrap();
}

/// A connection whose peer went silent without closing (a load balancer
/// whose target vanished) is replaced after its first timeout: the next
/// request goes over a new connection. Before, a timeout left the
/// connection as it was, every request timed out until the circuit breaker
/// opened, and the breaker's probes went over the same dead socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_silent_is_replaced_after_its_first_timeout() {
    let server = &servers(1)[0];
    let proxy = crate::common::proxy::StallingProxy::start(server.port()).await;
    let store = MultiRedisStore::builder()
        .backend(Backend::url("main", proxy.url()).socket_timeout(Duration::from_millis(200)))
        .build()
        .await
        .unwrap();
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    proxy.stall();
    assert!(store.load(&rec.id).await.is_err(), "the silent connection times out");
    for attempt in 0..3 {
        match store.load(&rec.id).await {
            Ok(found) => {
                assert_eq!(found.map(|r| r.id), Some(rec.id));
                return;
            }
            Err(err) => eprintln!("attempt {attempt}: {err}"),
        }
    }
    panic!("still no answer over a new connection");
}

/// The same, when the store's operation deadline (100 ms) is shorter than the
/// socket timeout (1 s), so every request gives up before redis-rs does: a
/// request cut short leaves a `PING` behind, given the whole socket timeout,
/// whose silence replaces the connection. Before, no command ever timed out
/// on the connection itself and it was never replaced. (The breaker opens
/// meanwhile, rightly; its probe after the 1 s cool-down finds the new
/// connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_silent_is_replaced_when_the_deadline_ends_every_wait_first() {
    let server = &servers(1)[0];
    let proxy = crate::common::proxy::StallingProxy::start(server.port()).await;
    let store = MultiRedisStore::builder()
        .backend(
            Backend::url("main", proxy.url())
                .socket_timeout(Duration::from_secs(1))
                .breaker(BreakerConfig::default().cool_down(Duration::from_secs(1))),
        )
        .deadline(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    let (after, errors) = proxy.stall_until_answered(&store, &rec, Duration::from_secs(5)).await;
    eprintln!("answered over a new connection after {after:?} ({errors} errors)");
}
