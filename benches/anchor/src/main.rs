//! `tsrs-anchor <redis-url> <concurrency> <millis> <sessions>`: creates
//! `sessions` sessions, then runs `concurrency` tasks doing requests (load then
//! save of a random session) for `millis` ms; prints one JSON line with the
//! request count, seconds and every latency percentile the main bench needs.

#[path = "../../support/session.rs"]
mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tower_sessions_core::SessionStore;
use tower_sessions_redis_store::fred::prelude::*;
use tower_sessions_redis_store::RedisStore;

use session::small_session;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, concurrency, millis, sessions): (&str, usize, u64, usize) =
        (&args[1], args[2].parse().unwrap(), args[3].parse().unwrap(), args[4].parse().unwrap());
    let config = Config::from_url(url).unwrap();
    // The crate's documented setup: a pool of 6 connections.
    let pool = Pool::new(config, None, None, None, 6).unwrap();
    pool.init().await.unwrap();
    let store = RedisStore::new(pool);
    let mut ids = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let mut rec = small_session();
        store.create(&mut rec).await.unwrap();
        ids.push(rec.id);
    }
    let ids = Arc::new(ids);
    let deadline = Instant::now() + Duration::from_millis(millis);
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let (store, ids) = (store.clone(), ids.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut i = t * 7919;
            while Instant::now() < deadline {
                i = i.wrapping_add(104_729);
                let id = ids[i % ids.len()];
                let begun = Instant::now();
                let mut rec = store.load(&id).await.unwrap().unwrap();
                rec.data.insert("n".to_owned(), serde_json::json!(i));
                store.save(&rec).await.unwrap();
                lat.push(begun.elapsed().as_nanos() as u64);
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds() - cpu_before) * 1e6 / all.len() as f64;
    all.sort_unstable();
    let p = |q: f64| all[((all.len() as f64 * q).ceil() as usize).clamp(1, all.len()) - 1];
    println!("{}", serde_json::json!({"requests": all.len(), "seconds": seconds, "p50_ns": p(0.5), "p99_ns": p(0.99), "cpu_us": cpu_us}));
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum::<f64>() / 100.0
}
