//! Load latency with the old backend frozen (SIGSTOP, connections open),
//! `socket_timeout = 1s`, measured side by side in one run:
//!
//! 1. healthy: both servers answer;
//! 2. frozen, breaker open: "old" is skipped without touching the network;
//! 3. frozen, no breaker: every load waits for the timeout (a few samples).
//!
//! "old" is listed first, so every load consults it (a store that still reads
//! the old server first); sessions live in "new".
//!
//! ```sh
//! cargo bench --bench breaker --features test-util
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, BreakerConfig, BreakerState, Modes, MultiRedisStore};

const TASKS: usize = 16;

async fn store(old: &RedisServer, new: &RedisServer, breaker: BreakerConfig) -> MultiRedisStore {
    let b = |b: Backend| b.socket_timeout(Duration::from_secs(1)).breaker(breaker);
    MultiRedisStore::builder()
        .backend(b(Backend::url("old", old.url()).modes(Modes::READ_DELETE)))
        .backend(b(Backend::url("new", new.url())))
        .build()
        .await
        .unwrap()
}

/// `per_task` loads from each of `TASKS` tasks; the sorted latencies.
async fn measure(store: &MultiRedisStore, ids: &Arc<Vec<Id>>, per_task: usize) -> Vec<Duration> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let (store, ids) = (store.clone(), ids.clone());
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let id = ids[(t * 7919 + i * 104_729) % ids.len()];
                let started = Instant::now();
                let found = store.load(&id).await;
                out.push(started.elapsed());
                assert!(matches!(found, Ok(Some(_))) || found.is_err());
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    all.sort();
    all
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let (old, new) = (RedisServer::start().unwrap(), RedisServer::start().unwrap());
    let with_breaker = store(&old, &new, BreakerConfig::default()).await;
    let without = store(&old, &new, BreakerConfig::disabled()).await;
    let mut ids = Vec::new();
    for i in 0..1000 {
        let mut rec = Record {
            id: Id::default(),
            data: [("user".to_owned(), serde_json::json!(i))].into(),
            expiry_date: OffsetDateTime::now_utc() + time::Duration::hours(1),
        };
        with_breaker.create(&mut rec).await.unwrap();
        ids.push(rec.id);
    }
    let ids = Arc::new(ids);
    measure(&with_breaker, &ids, 200).await; // warm up
    let healthy = measure(&with_breaker, &ids, 1000).await;

    old.freeze().unwrap();
    // Trip the breaker: the first loads wait for the timeout.
    while with_breaker.health()[0].breaker != BreakerState::Open {
        let _ = with_breaker.load(&ids[0]).await;
    }
    let frozen = measure(&with_breaker, &ids, 1000).await;
    let still_open = with_breaker.health()[0].breaker == BreakerState::Open;
    let no_breaker = measure(&without, &ids, 2).await;
    old.thaw().unwrap();

    println!("| old backend | loads | p50 (ms) | p99 (ms) | p99 ratio to healthy |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, d: &[Duration]| {
        println!(
            "| {name} | {} | {:.3} | {:.3} | {:.2}x |",
            d.len(),
            pct(d, 0.5),
            pct(d, 0.99),
            pct(d, 0.99) / pct(&healthy, 0.99)
        );
    };
    row("healthy", &healthy);
    row("frozen, breaker open", &frozen);
    row("frozen, no breaker", &no_breaker);
    println!("(breaker stayed open through the measurement: {still_open})");
    let csv = format!(
        "case,loads,p50_ms,p99_ms\nhealthy,{},{:.4},{:.4}\nfrozen_breaker_open,{},{:.4},{:.4}\nfrozen_no_breaker,{},{:.4},{:.4}\n",
        healthy.len(),
        pct(&healthy, 0.5),
        pct(&healthy, 0.99),
        frozen.len(),
        pct(&frozen, 0.5),
        pct(&frozen, 0.99),
        no_breaker.len(),
        pct(&no_breaker, 0.5),
        pct(&no_breaker, 0.99)
    );
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/bench-breaker.csv", csv);
}
