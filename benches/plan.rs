//! A whole migration plan under continuous traffic: sessions in "old" as
//! tower-sessions-redis-store wrote them; two app instances serve requests
//! (a `load` and a `save` of a random session) from 32 tasks; the instances
//! walk through the plan's five steps one at a time (`plan.rs`), and each
//! step's script runs once both are on it, while the traffic goes on.
//!
//! ```sh
//! cargo bench --bench plan --features test-util                     # 1,000,000 sessions
//! BENCH_SESSIONS=100000 BENCH_PHASE_MS=1000 cargo bench --bench plan --features test-util
//! ```
//!
//! Prints, per phase: how long it took, requests/s and their ratio to the
//! first phase (every instance on `[old]` alone), and requests that failed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_multi_redis_store::migrate::{self, Migrator};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Config, MultiRedisStore, codec, plan};

const TASKS: usize = 32;

fn session() -> Record {
    Record {
        id: Id::default(),
        data: [("user".to_owned(), serde_json::json!("someone")), ("n".to_owned(), serde_json::json!(0))].into(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(2),
    }
}

struct Traffic {
    instances: Mutex<Vec<Arc<MultiRedisStore>>>,
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

async fn build(toml: &str) -> MultiRedisStore {
    Config::from_toml_str(toml).unwrap().into_builder().unwrap().announce(false).build().await.unwrap()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let sessions: usize = std::env::var("BENCH_SESSIONS").map_or(1_000_000, |v| v.parse().expect("a number"));
    let phase = Duration::from_millis(std::env::var("BENCH_PHASE_MS").map_or(3000, |v| v.parse().expect("a number")));
    let (old, new) = (RedisServer::start().unwrap(), RedisServer::start().unwrap());
    let one = |name: &str, url: String| {
        format!("[[backends]]\nname = \"{name}\"\nmodes = [\"read\", \"write\"]\nurl = \"{url}\"\n")
    };
    let steps = plan::plan(&one("old", old.url()), &one("new", new.url())).unwrap();

    let mut ids = Vec::with_capacity(sessions);
    let mut conn = old.client().unwrap().get_multiplexed_async_connection().await.unwrap();
    for start in (0..sessions).step_by(10_000) {
        let mut pipe = redis::pipe();
        for _ in start..(start + 10_000).min(sessions) {
            let rec = session();
            pipe.cmd("SET").arg(rec.id.to_string()).arg(codec::encode(&rec).unwrap()).arg("EX").arg(7200).ignore();
            ids.push(rec.id);
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    eprintln!("{sessions} sessions in old");
    let ids = Arc::new(ids);

    let first = Arc::new(build(&steps[0].config).await);
    let traffic = Arc::new(Traffic {
        instances: Mutex::new(vec![first.clone(), first]),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let (traffic, ids) = (traffic.clone(), ids.clone());
        tasks.spawn(async move {
            let mut i = t.wrapping_mul(7919);
            while !traffic.stop.load(Ordering::Relaxed) {
                i = i.wrapping_add(104_729);
                let store = traffic.instances.lock().unwrap()[i % 2].clone();
                let id = ids[i % ids.len()];
                let done = match store.load(&id).await {
                    Ok(Some(mut rec)) => {
                        rec.data.insert("n".to_owned(), serde_json::json!(i));
                        store.save(&rec).await.is_ok()
                    }
                    // Every session lives two hours: "not found" is a failure.
                    _ => false,
                };
                let counter = if done { &traffic.ok } else { &traffic.failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let mut rows = Vec::new();
    let measure = |what: String, started: Instant, before: (u64, u64)| {
        let (ok, failed) = (traffic.ok.load(Ordering::Relaxed), traffic.failed.load(Ordering::Relaxed));
        let seconds = started.elapsed().as_secs_f64();
        (what, seconds, (ok - before.0) as f64 / seconds, failed - before.1)
    };
    let counts = || (traffic.ok.load(Ordering::Relaxed), traffic.failed.load(Ordering::Relaxed));

    let (started, before) = (Instant::now(), counts());
    tokio::time::sleep(phase).await;
    rows.push(measure("01 on both instances ([old] alone)".into(), started, before));
    for (i, step) in steps.iter().enumerate().skip(1) {
        let n = i + 1;
        for instance in 0..2 {
            let store = Arc::new(build(&step.config).await);
            let (started, before) = (Instant::now(), counts());
            traffic.instances.lock().unwrap()[instance] = store;
            tokio::time::sleep(phase).await;
            let what = if instance == 0 { format!("{:02} beside {n:02}", n - 1) } else { format!("{n:02} on both") };
            rows.push(measure(what, started, before));
        }
        if step.then.is_some() {
            let store = build(&step.config).await;
            let (started, before) = (Instant::now(), counts());
            let what = if n == 2 {
                let report = Migrator::new(&store, Some("old"), &["new"], migrate::Options::default())
                    .unwrap()
                    .repair()
                    .await
                    .unwrap();
                format!("{n:02}.sh: repair ({} checked, {} removed)", report.checked, report.removed)
            } else {
                let migrator = Migrator::for_store(&store, migrate::Options::default().move_sessions(true)).unwrap();
                let report = migrator.run(|_| {}, std::future::pending()).await.unwrap();
                let left = migrator.verify().await.unwrap().checked;
                format!(
                    "{n:02}.sh: migrate --move ({} moved), verify --empty ({left} left)",
                    report.progress.removed_from_source
                )
            };
            rows.push(measure(what, started, before));
        }
    }
    traffic.stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}

    let base = rows[0].2;
    println!("| phase | seconds | requests/s | vs [old] alone | failed |");
    println!("|---|---:|---:|---:|---:|");
    for (what, seconds, rps, failed) in &rows {
        println!("| {what} | {seconds:.1} | {rps:.0} | {:.2}x | {failed} |", rps / base);
    }
    let failed: u64 = rows.iter().map(|r| r.3).sum();
    println!("\n{sessions} sessions; requests failed in all: {failed}");
}
