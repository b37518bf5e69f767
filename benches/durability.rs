//! What waiting for a replica costs: one "request" is `load` then `save` of
//! a small session, from 1, 16 and 64 concurrent tasks, against a master
//! with one replica, side by side in one run:
//!
//! * the master as a one-server backend (`wait_replicas(0)`, the default there);
//! * the same with `wait_replicas(1)`: every save followed by `WAIT 1`;
//! * the master behind Sentinel with the Sentinel default, `wait_replicas(1)`;
//! * the same with `wait_replicas(0)`.
//!
//! Cases are interleaved, three rounds of `BENCH_MILLIS` (default 2000) ms
//! each; the median round is reported with p50 and p99 of that round.
//!
//! ```sh
//! cargo bench --features test-util --bench durability
//! ```

#[path = "support/session.rs"]
mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tower_sessions_core::SessionStore;
use tower_sessions_core::session::Id;
use tower_sessions_multi_redis_store::testing::SentinelGroup;
use tower_sessions_multi_redis_store::{Backend, MultiRedisStore};

const SESSIONS: usize = 5_000;
const CONCURRENCY: [usize; 3] = [1, 16, 64];
const ROUNDS: usize = 3;

struct Round {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn run(store: &MultiRedisStore, ids: &Arc<Vec<Id>>, tasks: usize, millis: u64) -> Round {
    let until = Instant::now() + Duration::from_millis(millis);
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (store, ids) = (store.clone(), ids.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut i = t * 7919;
            while Instant::now() < until {
                i = (i + 104_729) % ids.len();
                let started = Instant::now();
                let rec = store.load(&ids[i]).await.expect("load").expect("session");
                store.save(&rec).await.expect("save");
                lat.push(started.elapsed());
            }
            lat
        });
    }
    let started = Instant::now();
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e6;
    Round { per_sec: all.len() as f64 / elapsed, p50_us: pct(0.5), p99_us: pct(0.99) }
}

#[tokio::main]
async fn main() {
    let millis = std::env::var("BENCH_MILLIS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let group = SentinelGroup::start("sessions", 1).unwrap();
    let master = &group.master;
    let build = |b: Backend| async move { MultiRedisStore::builder().backend(b).build().await.unwrap() };
    let sentinels = group.sentinel_addrs();
    let cases: Vec<(&str, MultiRedisStore)> = vec![
        ("one server, wait_replicas(0)", build(Backend::url("m", master.url())).await),
        ("one server, wait_replicas(1)", build(Backend::url("m", master.url()).wait_replicas(1)).await),
        ("Sentinel, wait_replicas(1) (default)", build(Backend::sentinel("ha", sentinels.clone(), "sessions")).await),
        ("Sentinel, wait_replicas(0)", build(Backend::sentinel("ha", sentinels, "sessions").wait_replicas(0)).await),
    ];
    let mut ids = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let mut rec = session::small_session();
        cases[0].1.create(&mut rec).await.unwrap();
        ids.push(rec.id);
    }
    let ids = Arc::new(ids);
    println!("| case | tasks | req/s | p50 µs | p99 µs | vs no wait, same kind |");
    println!("|---|---:|---:|---:|---:|---:|");
    for tasks in CONCURRENCY {
        let mut rounds: Vec<Vec<Round>> = (0..cases.len()).map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (c, (_, store)) in cases.iter().enumerate() {
                rounds[c].push(run(store, &ids, tasks, millis).await);
            }
        }
        let medians: Vec<Round> = rounds
            .into_iter()
            .map(|mut r| {
                r.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
                r.swap_remove(ROUNDS / 2)
            })
            .collect();
        for (c, (name, _)) in cases.iter().enumerate() {
            let m = &medians[c];
            // Pairs: 0 (no wait) with 1; 3 (no wait) with 2.
            let anchor = match c {
                0 | 1 => &medians[0],
                _ => &medians[3],
            };
            println!(
                "| {name} | {tasks} | {:.0} | {:.0} | {:.0} | {:.2}x |",
                m.per_sec,
                m.p50_us,
                m.p99_us,
                m.per_sec / anchor.per_sec
            );
        }
    }
}
