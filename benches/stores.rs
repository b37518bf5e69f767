//! Side by side, in one run, against the same local redis-server: one
//! "request" is `load` then `save` of a small session (three fields, ~150
//! bytes encoded), from 1, 16 and 64 concurrent tasks.
//!
//! * raw redis-rs: the same commands (`GET`, `SET ... PXAT XX`) and the same
//!   encoding on one multiplexed connection, the floor: with redis-rs 1.x's
//!   defaults (Nagle's algorithm on), and with `TCP_NODELAY` like the store;
//! * MultiRedisStore, one backend: default settings (`TCP_NODELAY`,
//!   `auto_pipeline`), the same with `tcp_nodelay(false)`, and with
//!   `auto_pipeline(false)` (every command handed to redis-rs as it comes);
//! * MultiRedisStore, `new: read+write, old: read+delete`, session in "new";
//! * the same, first touch of a session still only in "old" (copy-on-read);
//! * the same, a logout (`delete`) of a session still only in "old";
//! * one backend with `refuse_late_writes(false)`: saves as a bare `SET XX`;
//! * one backend with `user_key("user_id")` (one user per session): a save
//!   writes its user's index only when this instance's last index write does
//!   not cover it, and reads it when the user's prune is due (a minute);
//!   and `load` alone, with and without it; and with `prune_index_every(0)`,
//!   where every save reads the index beside its session write and prunes;
//! * tower-sessions-redis-store 0.16 (fred, 6-connection pool), the anchor,
//!   run as a subprocess (`benches/anchor`, built by `scripts/bench`).
//!
//! Cases are interleaved, three rounds; the median round is reported. Then an
//! end-to-end run: an axum app with `SessionManagerLayer`, over real HTTP with
//! cookies, on MultiRedisStore and on MemoryStore.
//!
//! ```sh
//! ./scripts/bench          # builds the anchor, then cargo bench --bench stores
//! ```
//! Writes `target/bench-stores.csv` and `benches/stores.svg`. `BENCH_PIN=1`
//! pins the servers to CPU 0 and the client to CPU 1 (Linux `taskset`).
//!
//! For profiling one case: `BENCH_CASES=raw,one` (of anchor, raw,
//! raw-nodelay, one, one-nagle, one-direct, two, first, logout, one-unguarded, indexed, one-load, indexed-load,
//! indexed-every), `BENCH_TASKS=64`,
//! `BENCH_MILLIS=5000`, `BENCH_ROUNDS=1`, `BENCH_HTTP=0`; a partial run leaves
//! the chart alone. `BENCH_LINK=veth` puts the servers behind a veth link
//! (root only; see `support/veth.rs`), `BENCH_DELAY_MS=n` puts a proxy that
//! delays every chunk by `n` ms each way in front of each server
//! (`support/delay.rs`), `BENCH_PAD=n` adds `n` bytes to the session.

#[path = "../examples/shared/app.rs"]
mod app;
#[path = "support/delay.rs"]
mod delay;
#[path = "support/session.rs"]
mod session;
#[path = "support/mod.rs"]
mod support;
#[path = "support/veth.rs"]
mod veth;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tower_sessions::MemoryStore;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::Id;
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore, codec};

use session::small_session;

const SESSIONS: usize = 10_000;
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Short names of [`CASES`], for `BENCH_CASES`.
const CASE_KEYS: [&str; 14] = [
    "anchor",
    "raw",
    "raw-nodelay",
    "one",
    "one-nagle",
    "one-direct",
    "two",
    "first",
    "logout",
    "one-unguarded",
    "indexed",
    "one-load",
    "indexed-load",
    "indexed-every",
];

/// Knobs from the environment (see the module docs); the defaults are the full run.
struct Knobs {
    millis: u64,
    rounds: usize,
    tasks: Vec<usize>,
    cases: Vec<bool>,
    http: bool,
    /// `BENCH_PIN=1`.
    pin: bool,
    /// `BENCH_LINK=veth` (else loopback).
    veth: bool,
    /// `BENCH_DELAY_MS`.
    delay: Option<Duration>,
    /// `BENCH_PAD` (read by `support/session.rs`, which the anchor shares).
    pad: bool,
}

impl Knobs {
    fn from_env() -> Knobs {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let list = |name: &str| var(name).map(|v| v.split(',').map(str::trim).map(str::to_owned).collect::<Vec<_>>());
        let tasks = list("BENCH_TASKS")
            .map_or(CONCURRENCY.to_vec(), |l| l.iter().map(|t| t.parse().expect("BENCH_TASKS: numbers")).collect());
        let cases = list("BENCH_CASES").map_or(vec![true; CASES.len()], |l| {
            for name in &l {
                assert!(CASE_KEYS.contains(&name.as_str()), "BENCH_CASES: unknown case {name}");
            }
            CASE_KEYS.iter().map(|k| l.iter().any(|n| n == k)).collect()
        });
        Knobs {
            millis: var("BENCH_MILLIS").map_or(1500, |v| v.parse().expect("BENCH_MILLIS: a number")),
            rounds: var("BENCH_ROUNDS").map_or(3, |v| v.parse().expect("BENCH_ROUNDS: a number")),
            tasks,
            cases,
            http: var("BENCH_HTTP").as_deref() != Some("0"),
            pin: var("BENCH_PIN").as_deref() == Some("1"),
            veth: match var("BENCH_LINK").as_deref() {
                None | Some("lo") => false,
                Some("veth") => true,
                Some(other) => panic!("BENCH_LINK: `lo` or `veth`, not `{other}`"),
            },
            delay: var("BENCH_DELAY_MS").map(|v| Duration::from_millis(v.parse().expect("BENCH_DELAY_MS: a number"))),
            pad: var("BENCH_PAD").is_some(),
        }
    }

    /// Whether this is the full run (the only one that redraws the chart).
    fn full(&self) -> bool {
        let standard = !self.veth && self.delay.is_none() && !self.pad;
        self.tasks == CONCURRENCY && self.cases.iter().all(|&c| c) && self.http && standard
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time of the client process per request (µs), user + system.
    cpu_us: f64,
}

fn summarize(mut lat: Vec<u64>, seconds: f64) -> Sample {
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1] as f64 / 1000.0;
    Sample { rps: lat.len() as f64 / seconds, p50_us: p(0.5), p99_us: p(0.99), cpu_us: 0.0 }
}

/// `concurrency` tasks calling `request(task, i)` for `millis` ms.
async fn drive<F, Fut>(millis: u64, concurrency: usize, request: F) -> Sample
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let deadline = Instant::now() + Duration::from_millis(millis);
    let started = Instant::now();
    let cpu_before = support::cpu_seconds(std::process::id());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let request = request.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut i = t * 7919;
            while Instant::now() < deadline {
                i = i.wrapping_add(104_729);
                let begun = Instant::now();
                request(t, i).await;
                lat.push(begun.elapsed().as_nanos() as u64);
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    let requests = all.len() as f64;
    let cpu = support::cpu_seconds(std::process::id()) - cpu_before;
    Sample { cpu_us: cpu * 1e6 / requests, ..summarize(all, started.elapsed().as_secs_f64()) }
}

async fn store_request(store: MultiRedisStore, id: Id, i: usize) {
    let mut rec = store.load(&id).await.unwrap().expect("session exists");
    rec.data.insert("n".to_owned(), serde_json::json!(i));
    store.save(&rec).await.unwrap();
}

/// The same request as [`store_request`], in plain redis-rs commands.
async fn raw_request(mut conn: redis::aio::MultiplexedConnection, id: Id, i: usize) {
    let key = id.to_string();
    let bytes: Vec<u8> = conn.get(&key).await.unwrap();
    let mut rec = codec::decode(&bytes).unwrap();
    rec.data.insert("n".to_owned(), serde_json::json!(i));
    let bytes = codec::encode(&rec).unwrap();
    let _: redis::Value = redis::cmd("SET")
        .arg(&key)
        .arg(bytes)
        .arg("PXAT")
        .arg(codec::expiry_millis(rec.expiry_date))
        .arg("XX")
        .query_async(&mut conn)
        .await
        .unwrap();
}

fn anchor_binary() -> Option<PathBuf> {
    let path = std::env::var_os("ANCHOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/anchor/target/release/tsrs-anchor"));
    path.exists().then_some(path)
}

fn anchor(bin: &PathBuf, url: &str, millis: u64, concurrency: usize, pinned: bool) -> Sample {
    let mut command = std::process::Command::new(bin);
    if pinned {
        // Like this process: one worker on its one core.
        command.env("TOKIO_WORKER_THREADS", "1");
    }
    let out = command
        .args([url, &concurrency.to_string(), &millis.to_string(), &SESSIONS.to_string()])
        .output()
        .expect("run the anchor");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("anchor JSON");
    Sample {
        rps: v["requests"].as_f64().unwrap() / v["seconds"].as_f64().unwrap(),
        p50_us: v["p50_ns"].as_f64().unwrap() / 1000.0,
        p99_us: v["p99_ns"].as_f64().unwrap() / 1000.0,
        cpu_us: v["cpu_us"].as_f64().unwrap_or(f64::NAN),
    }
}

const CASES: [&str; 14] = [
    "tower-sessions-redis-store 0.16",
    "raw redis-rs",
    "raw redis-rs, TCP_NODELAY",
    "MultiRedisStore, 1 backend",
    "MultiRedisStore, 1 backend, Nagle",
    "MultiRedisStore, 1 backend, no auto_pipeline",
    "MultiRedisStore, 2 backends, in new",
    "MultiRedisStore, 2 backends, first touch",
    "MultiRedisStore, 2 backends, logout",
    "MultiRedisStore, 1 backend, refuse_late_writes(false)",
    "MultiRedisStore, 1 backend, user_key (per-user index)",
    "MultiRedisStore, 1 backend, load only",
    "MultiRedisStore, 1 backend, user_key, load only",
    "MultiRedisStore, 1 backend, user_key, prune_index_every(0)",
];
// Indices into CASES.
const ANCHOR: usize = 0;
const RAW: usize = 1;
const RAW_NODELAY: usize = 2;
const ONE: usize = 3;
const ONE_NAGLE: usize = 4;
const ONE_DIRECT: usize = 5;
const TWO: usize = 6;
const FIRST: usize = 7;
const LOGOUT: usize = 8;
const ONE_UNGUARDED: usize = 9;
const INDEXED: usize = 10;
const ONE_LOAD: usize = 11;
const INDEXED_LOAD: usize = 12;
const INDEXED_EVERY: usize = 13;

/// With `BENCH_PIN=1`: redis-servers on CPU 0, this process (and the anchor it
/// starts) on CPU 1, so server and client stop competing for one core.
fn pin(servers: [u32; 2]) {
    let taskset = |cpu: &str, pid: u32| {
        let ok = std::process::Command::new("taskset").args(["-a", "-p", "-c", cpu, &pid.to_string()]).output();
        assert!(ok.is_ok_and(|o| o.status.success()), "taskset failed");
    };
    for pid in servers {
        taskset("0", pid);
    }
    taskset("1", std::process::id());
    eprintln!("pinned: redis-server on CPU 0, client on CPU 1 (one runtime worker thread)");
}

/// The two servers of a run ("main" and "old"), and the URLs the client uses.
struct Servers {
    urls: (String, String),
    pids: [u32; 2],
    _running: Running,
}

/// The server processes (and their namespace), kept until the run ends.
enum Running {
    Loopback { _servers: [RedisServer; 2] },
    // Fields drop in order: the servers, then their namespace.
    Veth { _servers: [veth::NsServer; 2], _link: veth::Veth },
}

impl Servers {
    /// On loopback, or across a veth link (`support/veth.rs`); with
    /// `BENCH_DELAY_MS`, each behind a delaying proxy (`support/delay.rs`).
    fn start(knobs: &Knobs) -> Servers {
        let (urls, pids, running) = if knobs.veth {
            let link = veth::Veth::create().expect("BENCH_LINK=veth needs Linux, root and iproute2");
            let start = |port| link.start_server(port).expect("redis-server in the namespace");
            let servers = [start(7001), start(7002)];
            eprintln!("link: veth, servers at {}", link.server_ip);
            let urls = (servers[0].url(), servers[1].url());
            let pids = [servers[0].pid(), servers[1].pid()];
            (urls, pids, Running::Veth { _servers: servers, _link: link })
        } else {
            let servers = [RedisServer::start().unwrap(), RedisServer::start().unwrap()];
            let urls = (servers[0].url(), servers[1].url());
            let pids = [servers[0].pid().unwrap(), servers[1].pid().unwrap()];
            (urls, pids, Running::Loopback { _servers: servers })
        };
        let urls = match knobs.delay {
            Some(delay) => {
                eprintln!("each server behind a proxy holding every chunk {delay:?} each way");
                (delay::start(&urls.0, delay), delay::start(&urls.1, delay))
            }
            None => urls,
        };
        Servers { urls, pids, _running: running }
    }
}

fn main() {
    let knobs = Knobs::from_env();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if knobs.pin {
        // One core, one worker: two workers on one core only trade it back and forth.
        runtime.worker_threads(1);
    }
    runtime.enable_all().build().unwrap().block_on(run(knobs));
}

async fn run(knobs: Knobs) {
    let servers = Servers::start(&knobs);
    if knobs.pin {
        pin(servers.pids);
    }
    let (main_url, old_url) = servers.urls.clone();
    let one = MultiRedisStore::builder().backend(Backend::url("main", main_url.clone())).build().await.unwrap();
    let one_with = |backend: Backend| MultiRedisStore::builder().backend(backend).build();
    let one_nagle = one_with(Backend::url("main", main_url.clone()).tcp_nodelay(false)).await.unwrap();
    let one_direct = one_with(Backend::url("main", main_url.clone()).auto_pipeline(false)).await.unwrap();
    let one_unguarded = MultiRedisStore::builder()
        .backend(Backend::url("main", main_url.clone()))
        .refuse_late_writes(false)
        .build()
        .await
        .unwrap();
    let indexed = MultiRedisStore::builder()
        .backend(Backend::url("main", main_url.clone()).prefix("idx:"))
        .user_key("user_id")
        .build()
        .await
        .unwrap();
    // Another instance on the same sessions and index, pruning at every write.
    let indexed_every = MultiRedisStore::builder()
        .backend(Backend::url("main", main_url.clone()).prefix("idx:"))
        .user_key("user_id")
        .prune_index_every(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let two = MultiRedisStore::builder()
        .backend(Backend::url("new", main_url.clone()).prefix("two:"))
        .backend(Backend::url("old", old_url.clone()).prefix("two:").modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    let raw_conn = |nodelay: bool| {
        let info = redis::IntoConnectionInfo::into_connection_info(main_url.as_str()).unwrap();
        let tcp = info.tcp_settings().clone().set_nodelay(nodelay);
        let client = redis::Client::open(info.set_tcp_settings(tcp)).unwrap();
        async move { client.get_multiplexed_async_connection().await }
    };
    let (raw, raw_nodelay) = (raw_conn(false).await.unwrap(), raw_conn(true).await.unwrap());
    // Created 100 at a time (a slow link would make one at a time slow).
    let create = |store: MultiRedisStore| async move {
        let mut ids = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS / 100 {
            ids.extend(
                futures_util::future::join_all((0..100).map(|_| async {
                    let mut rec = small_session();
                    store.create(&mut rec).await.unwrap();
                    rec.id
                }))
                .await,
            );
        }
        ids
    };
    let (one_ids, two_ids) = (create(one.clone()).await, create(two.clone()).await);
    // One user per session, as in an app where each user has a few.
    let mut indexed_ids = Vec::with_capacity(SESSIONS);
    if knobs.cases[INDEXED] || knobs.cases[INDEXED_LOAD] || knobs.cases[INDEXED_EVERY] {
        for chunk in 0..SESSIONS / 100 {
            indexed_ids.extend(
                futures_util::future::join_all((0..100).map(|i| {
                    let store = indexed.clone();
                    async move {
                        let mut rec = small_session();
                        rec.data.insert("user_id".to_owned(), serde_json::json!(chunk * 100 + i));
                        store.create(&mut rec).await.unwrap();
                        rec.id
                    }
                }))
                .await,
            );
        }
    }
    let indexed_ids = Arc::new(indexed_ids);
    eprintln!("session size: {} bytes", codec::encode(&small_session()).unwrap().len());
    let (one_ids, two_ids) = (Arc::new(one_ids), Arc::new(two_ids));
    // Sessions only in "old", one per first-touch (or logout) request.
    let old_only = |wanted: bool, per_request_speed: u64| {
        let old_url = old_url.clone();
        async move {
            let mut conn =
                redis::Client::open(old_url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
            let mut ids = Vec::new();
            let chunks = if wanted {
                60 * per_request_speed * knobs.millis.div_ceil(1500) * knobs.rounds.div_ceil(3) as u64
            } else {
                0
            };
            for _ in 0..chunks {
                let mut pipe = redis::pipe();
                for _ in 0..10_000 {
                    let rec = small_session();
                    pipe.cmd("SET")
                        .arg(format!("two:{}", rec.id))
                        .arg(codec::encode(&rec).unwrap())
                        .arg("EX")
                        .arg(3600)
                        .ignore();
                    ids.push(rec.id);
                }
                let _: () = pipe.query_async(&mut conn).await.unwrap();
            }
            Arc::new(ids)
        }
    };
    let fresh: Arc<Vec<Id>> = old_only(knobs.cases[FIRST], 1).await;
    // A logout is one round trip, where a first touch is several.
    let doomed: Arc<Vec<Id>> = old_only(knobs.cases[LOGOUT], 3).await;
    let next_doomed = Arc::new(AtomicUsize::new(0));
    let next_fresh = Arc::new(AtomicUsize::new(0));
    let anchor_bin = anchor_binary().filter(|_| knobs.cases[ANCHOR]);
    if anchor_bin.is_none() && knobs.cases[ANCHOR] {
        eprintln!(
            "anchor not built: run ./scripts/bench (or build benches/anchor) to measure tower-sessions-redis-store"
        );
    }

    // results[case][concurrency index] = samples of every round
    let millis = knobs.millis;
    let mut results = vec![vec![Vec::new(); knobs.tasks.len()]; CASES.len()];
    for round in 0..knobs.rounds {
        for (ci, &c) in knobs.tasks.iter().enumerate() {
            if let Some(bin) = &anchor_bin {
                results[ANCHOR][ci].push(anchor(bin, &main_url, millis, c, knobs.pin));
            }
            for (case, conn) in [(RAW, &raw), (RAW_NODELAY, &raw_nodelay)] {
                if knobs.cases[case] {
                    let (ids, conn) = (one_ids.clone(), conn.clone());
                    results[case][ci]
                        .push(drive(millis, c, move |_, i| raw_request(conn.clone(), ids[i % ids.len()], i)).await);
                }
            }
            for (case, store, ids) in [
                (ONE, &one, &one_ids),
                (ONE_NAGLE, &one_nagle, &one_ids),
                (ONE_DIRECT, &one_direct, &one_ids),
                (ONE_UNGUARDED, &one_unguarded, &one_ids),
                (INDEXED, &indexed, &indexed_ids),
                (INDEXED_EVERY, &indexed_every, &indexed_ids),
                (TWO, &two, &two_ids),
            ] {
                if knobs.cases[case] {
                    let (store, ids) = (store.clone(), ids.clone());
                    results[case][ci]
                        .push(drive(millis, c, move |_, i| store_request(store.clone(), ids[i % ids.len()], i)).await);
                }
            }
            for (case, store, ids) in [(ONE_LOAD, &one, &one_ids), (INDEXED_LOAD, &indexed, &indexed_ids)] {
                if knobs.cases[case] {
                    let (store, ids) = (store.clone(), ids.clone());
                    results[case][ci].push(
                        drive(millis, c, move |_, i| {
                            let (store, id) = (store.clone(), ids[i % ids.len()]);
                            async move {
                                store.load(&id).await.unwrap().expect("session exists");
                            }
                        })
                        .await,
                    );
                }
            }
            if knobs.cases[FIRST] {
                let (store, fresh, next) = (two.clone(), fresh.clone(), next_fresh.clone());
                results[FIRST][ci].push(
                    drive(millis, c, move |_, i| {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        store_request(store.clone(), fresh[k % fresh.len()], i)
                    })
                    .await,
                );
            }
            if knobs.cases[LOGOUT] {
                // A logout of a session not yet migrated (in "old" only).
                let (store, doomed, next) = (two.clone(), doomed.clone(), next_doomed.clone());
                results[LOGOUT][ci].push(
                    drive(millis, c, move |_, _| {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let (store, id) = (store.clone(), doomed[k % doomed.len()]);
                        async move { store.delete(&id).await.unwrap() }
                    })
                    .await,
                );
            }
            eprintln!("round {round}, concurrency {c} done");
        }
    }
    assert!(next_fresh.load(Ordering::Relaxed) <= fresh.len(), "ran out of first-touch sessions");
    assert!(next_doomed.load(Ordering::Relaxed) <= doomed.len(), "ran out of sessions to log out");

    // The median round by requests/s.
    let median = |samples: &Vec<Sample>| -> Option<Sample> {
        let mut s = samples.clone();
        s.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        s.get(s.len() / 2).copied()
    };
    let table: Vec<Vec<Option<Sample>>> = results.iter().map(|per_c| per_c.iter().map(median).collect()).collect();
    println!(
        "| store | tasks | requests/s | p50 (µs) | p99 (µs) | client CPU (µs/request) | vs tower-sessions-redis-store | vs raw redis-rs | vs raw, TCP_NODELAY |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut csv = String::from(
        "store,tasks,requests_per_s,p50_us,p99_us,cpu_us_per_request,ratio_anchor,ratio_raw,ratio_raw_nodelay\n",
    );
    for (ci, &c) in knobs.tasks.iter().enumerate() {
        for (k, name) in CASES.iter().enumerate() {
            let Some(s) = table[k][ci] else { continue };
            let ratio = |base: Option<Sample>| base.map_or(f64::NAN, |b| s.rps / b.rps);
            let (ra, rr, rn) = (ratio(table[ANCHOR][ci]), ratio(table[RAW][ci]), ratio(table[RAW_NODELAY][ci]));
            println!(
                "| {name} | {c} | {:.0} | {:.0} | {:.0} | {:.1} | {ra:.2}x | {rr:.2}x | {rn:.2}x |",
                s.rps, s.p50_us, s.p99_us, s.cpu_us
            );
            csv.push_str(&format!(
                "{name},{c},{:.0},{:.1},{:.1},{:.2},{ra:.3},{rr:.3},{rn:.3}\n",
                s.rps, s.p50_us, s.p99_us, s.cpu_us
            ));
        }
    }
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/bench-stores.csv", &csv);
    if knobs.full() {
        let _ = std::fs::write(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/stores.svg"), chart(&table));
    }
    if !knobs.http {
        return;
    }

    // End to end over HTTP.
    println!();
    println!("| app store (axum, HTTP, cookies) | clients | requests/s | p50 (µs) | p99 (µs) | vs MemoryStore |");
    println!("|---|---:|---:|---:|---:|---:|");
    for c in [16, 64] {
        let memory = http(millis, app::app(MemoryStore::default()), c).await;
        let multi = http(millis, app::app(one.clone()), c).await;
        for (name, s) in [("MemoryStore", memory), ("MultiRedisStore, 1 backend", multi)] {
            println!(
                "| {name} | {c} | {:.0} | {:.0} | {:.0} | {:.2}x |",
                s.rps,
                s.p50_us,
                s.p99_us,
                s.rps / memory.rps
            );
            csv.push_str(&format!("http {name},{c},{:.0},{:.1},{:.1},{:.2},,,\n", s.rps, s.p50_us, s.p99_us, s.cpu_us));
        }
    }
    let _ = std::fs::write("target/bench-stores.csv", &csv);
}

/// `clients` users, each with its own cookie jar, logged in, then GET /me
/// (loads and saves the session) for `millis` ms.
async fn http(millis: u64, app: axum::Router, clients: usize) -> Sample {
    let (addr, server) = app::serve(app).await.unwrap();
    let mut users = Vec::new();
    for u in 0..clients {
        let client = reqwest::Client::builder().cookie_store(true).build().unwrap();
        client.post(format!("http://{addr}/login/u{u}")).send().await.unwrap().error_for_status().unwrap();
        users.push(client);
    }
    let users = Arc::new(users);
    let sample = drive(millis, clients, move |t, _| {
        let client = users[t].clone();
        async move {
            let r = client.get(format!("http://{addr}/me")).send().await.unwrap();
            assert!(r.status().is_success());
            let _ = r.bytes().await.unwrap();
        }
    })
    .await;
    server.abort();
    sample
}

/// Grouped bars: requests/s by concurrency for each store.
fn chart(table: &[Vec<Option<Sample>>]) -> String {
    let colors =
        ["#888888", "#1f77b4", "#aec7e8", "#2ca02c", "#98df8a", "#9467bd", "#d62728", "#ff7f0e", "#8c564b", "#17becf"];
    let max = table.iter().flatten().flatten().map(|s| s.rps).fold(1.0, f64::max) * 1.1;
    let (w, h, left, bottom) = (760.0, 380.0, 70.0, 330.0);
    let group = (w - left - 20.0) / CONCURRENCY.len() as f64;
    let bar = group / (CASES.len() as f64 + 1.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"20\" font-size=\"14\">requests/s (load + save) by concurrent tasks, one local redis-server</text>\n",
        h + 110.0
    );
    for tick in 0..=5 {
        let v = max * tick as f64 / 5.0;
        let y = bottom - (bottom - 40.0) * tick as f64 / 5.0;
        svg.push_str(&format!("<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}k</text>\n", w - 20.0, left - 6.0, y + 4.0, v / 1000.0));
    }
    for (ci, c) in CONCURRENCY.iter().enumerate() {
        let x0 = left + group * ci as f64 + bar / 2.0;
        for (k, row) in table.iter().enumerate() {
            if let Some(s) = row[ci] {
                let bh = (bottom - 40.0) * s.rps / max;
                svg.push_str(&format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"/>\n",
                    x0 + bar * k as f64,
                    bottom - bh,
                    bar * 0.9,
                    colors[k]
                ));
            }
        }
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c} tasks</text>\n",
            x0 + bar * CASES.len() as f64 / 2.0,
            bottom + 18.0
        ));
    }
    for (k, name) in CASES.iter().enumerate() {
        let y = bottom + 40.0 + 16.0 * k as f64;
        svg.push_str(&format!("<rect x=\"{left}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n", y - 10.0, colors[k], left + 18.0, y));
    }
    svg.push_str("</svg>\n");
    svg
}
