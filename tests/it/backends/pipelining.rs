//! With `auto_pipeline` (the default), the commands of concurrent requests to
//! one busy server are written together (`src/connection/link.rs`): each request still gets
//! its own reply, a server error stays with its command, a dropped request
//! strands nobody, and a frozen server fails the batch within the socket
//! timeout. (That the commands really share one write is a unit test in that
//! file.)

use std::sync::Arc;

use crate::common::{conn, record, servers};
use tower_sessions_core::SessionStore;
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, BreakerConfig, Config, MultiRedisStore};

async fn store(server: &RedisServer) -> MultiRedisStore {
    MultiRedisStore::builder().backend(Backend::url("main", server.url()).auto_pipeline(true)).build().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_reply() {
    let servers = servers(1);
    let store = store(&servers[0]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut rec = record(&format!("user{t}"));
            store.create(&mut rec).await.unwrap();
            for round in 0..20 {
                let mut loaded = store.load(&rec.id).await.unwrap().expect("own session");
                assert_eq!(loaded, rec, "task {t} got another request's reply");
                loaded.data.insert("round".to_owned(), serde_json::json!(round));
                store.save(&loaded).await.unwrap();
                rec = loaded;
            }
            store.delete(&rec.id).await.unwrap();
            assert_eq!(store.load(&rec.id).await.unwrap(), None);
        });
    }
    // Panics if a task panicked (a failed assertion inside it).
    tasks.join_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_stays_with_its_command() {
    let servers = servers(1);
    let store = store(&servers[0]).await;
    // One session key holds a list: GET on it is a WRONGTYPE error.
    let broken = record("broken");
    let _: () = redis::cmd("RPUSH")
        .arg(broken.id.to_string())
        .arg("x")
        .query_async(&mut conn(&servers[0]).await)
        .await
        .unwrap();
    let mut good = Vec::new();
    for u in 0..100 {
        let mut rec = record(&format!("u{u}"));
        store.create(&mut rec).await.unwrap();
        good.push(rec);
    }
    let good = Arc::new(good);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..100 {
        let (store, good) = (store.clone(), good.clone());
        tasks.spawn(async move {
            for _ in 0..20 {
                let err = store.load(&broken.id).await.expect_err("WRONGTYPE is an error");
                assert!(err.to_string().contains("main"), "names the backend: {err}");
                assert_eq!(store.load(&good[t].id).await.unwrap().as_ref(), Some(&good[t]));
            }
        });
    }
    // Panics if a task panicked (a failed assertion inside it).
    tasks.join_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_requests_strand_nobody() {
    let servers = servers(1);
    let store = store(&servers[0]).await;
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let (store, rec) = (store.clone(), rec.clone());
        tasks.spawn(async move {
            for i in 0..50 {
                if (t + i) % 2 == 0 {
                    // Dropped before, during or after its batch is sent.
                    let cut = std::time::Duration::from_micros((t * 37 + i * 11) as u64 % 300);
                    let _ = tokio::time::timeout(cut, store.load(&rec.id)).await;
                } else {
                    let loaded = tokio::time::timeout(std::time::Duration::from_secs(10), store.load(&rec.id))
                        .await
                        .expect("a request queued with dropped ones still completes");
                    assert_eq!(loaded.unwrap().as_ref(), Some(&rec));
                }
            }
        });
    }
    // Panics if a task panicked (a failed assertion inside it).
    tasks.join_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_fails_every_queued_command_within_the_timeout() {
    let servers = servers(1);
    let store = MultiRedisStore::builder()
        .backend(
            Backend::url("main", servers[0].url())
                .auto_pipeline(true)
                .socket_timeout(std::time::Duration::from_millis(300))
                .breaker(BreakerConfig::disabled()),
        )
        .build()
        .await
        .unwrap();
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    servers[0].freeze().unwrap();
    let started = std::time::Instant::now();
    let loads = futures_util::future::join_all((0..32).map(|_| store.load(&rec.id))).await;
    let waited = started.elapsed();
    servers[0].thaw().unwrap();
    for load in loads {
        let err = load.expect_err("a frozen server is an error, never None");
        assert!(err.to_string().contains("main"), "{err}");
    }
    assert!(waited < std::time::Duration::from_secs(5), "bounded by the socket timeout: {waited:?}");
    // And the connection recovers once the server answers again.
    let mut recovered = false;
    for _ in 0..50 {
        if store.load(&rec.id).await.is_ok_and(|r| r.as_ref() == Some(&rec)) {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "loads succeed again after the thaw");
}

#[tokio::test]
async fn config_files_set_auto_pipeline_and_tcp_nodelay() {
    let servers = servers(1);
    let config = Config::from_toml_str(&format!(
        "[[backends]]\nname = \"main\"\nmodes = [\"read\", \"write\"]\nurl = \"{}\"\nauto_pipeline = false\ntcp_nodelay = false\n",
        servers[0].url()
    ))
    .unwrap();
    let printed = format!("{config:?}");
    assert!(
        printed.contains("auto_pipeline: Some(false)") && printed.contains("tcp_nodelay: Some(false)"),
        "{printed}"
    );
    // Both off: every command handed to the connection as it comes.
    let store = config.into_builder().unwrap().build().await.unwrap();
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    assert_eq!(store.load(&rec.id).await.unwrap(), Some(rec));
    let err = Config::from_toml_str(
        "[[backends]]\nname = \"main\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://h\"\nauto_pipeline = \"yes\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("auto_pipeline"), "{err}");
}
