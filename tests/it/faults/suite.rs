//! A two-backend store (`new: read+write`, `old: read+delete`)
//! under steady concurrent load, one fault per scenario on a real server.
//! For each: no panic, no session lost or resurrected, every error names a
//! backend, and the store recovers by itself once the fault ends.
//!
//! A model tracks every session: a `load` answering "not found" for a live
//! session (lost) or a session for a confirmed logout (resurrected) fails the
//! test; so does a counter outside [last confirmed save, last attempted save].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::{Rng, conn, plant, record};
use redis::AsyncCommands;
use tokio::sync::Mutex;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, BreakerConfig, Modes, MultiRedisStore};

#[derive(Clone, Debug)]
enum Slot {
    Alive {
        rec: Record,
        confirmed: u64,
        attempted: u64,
    },
    /// A delete failed: either state is fine until a delete succeeds.
    Deleting(Id),
    Deleted(Id),
}

fn n_of(rec: &Record) -> u64 {
    rec.data.get("n").and_then(|v| v.as_u64()).unwrap_or(0)
}

fn start() -> RedisServer {
    // Durable, so a restart loses nothing by itself; DEBUG SLEEP allowed.
    RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always", "--enable-debug-command", "yes"])
        .expect("redis-server")
}

async fn store(new: &RedisServer, old: &RedisServer) -> MultiRedisStore {
    let breaker = BreakerConfig::default().failure_threshold(3).cool_down(Duration::from_millis(400));
    let backend = |b: Backend| b.socket_timeout(Duration::from_millis(250)).breaker(breaker);
    MultiRedisStore::builder()
        .backend(backend(Backend::url("new", new.url())))
        .backend(backend(Backend::url("old", old.url()).modes(Modes::READ_DELETE)))
        .build()
        .await
        .unwrap()
}

/// Checks one `load` answer against the model.
fn check_load(slot: &Slot, loaded: &Option<Record>, what: &str) {
    match (slot, loaded) {
        (Slot::Alive { .. }, None) => panic!("{what}: a live session was lost"),
        (Slot::Deleted(_), Some(_)) => panic!("{what}: a logged-out session came back"),
        (Slot::Alive { confirmed, attempted, .. }, Some(rec)) => {
            let n = n_of(rec);
            assert!(*confirmed <= n && n <= *attempted, "{what}: n={n} outside [{confirmed}, {attempted}]");
        }
        _ => {}
    }
}

fn id_of(slot: &Slot) -> Id {
    match slot {
        Slot::Alive { rec, .. } => rec.id,
        Slot::Deleting(id) | Slot::Deleted(id) => *id,
    }
}

/// Errors seen under load; each must name a backend.
fn note_error(err: &tower_sessions_core::session_store::Error, errors: &AtomicU64) {
    errors.fetch_add(1, Ordering::Relaxed);
    let text = err.to_string();
    assert!(text.contains("backend `"), "error without a backend: {text}");
}

async fn one_request(app: &MultiRedisStore, slots: &[Mutex<Slot>], rng: &mut Rng, errors: &AtomicU64) {
    let i = rng.below(slots.len());
    let mut slot = slots[i].lock().await;
    let id = id_of(&slot);
    let roll = rng.below(100);
    match app.load(&id).await {
        Ok(loaded) => check_load(&slot, &loaded, "under load"),
        Err(err) => return note_error(&err, errors),
    }
    match &mut *slot {
        Slot::Alive { rec, confirmed, attempted } if roll < 70 => {
            let n = *attempted + 1;
            rec.data.insert("n".into(), serde_json::json!(n));
            *attempted = n;
            match app.save(rec).await {
                Ok(()) => *confirmed = n,
                Err(err) => note_error(&err, errors),
            }
        }
        Slot::Alive { .. } | Slot::Deleting(_) if roll >= 95 => match app.delete(&id).await {
            Ok(()) => *slot = Slot::Deleted(id),
            Err(err) => {
                note_error(&err, errors);
                *slot = Slot::Deleting(id);
            }
        },
        _ => {}
    }
}

/// Runs the load, applies `fault` then `heal`, waits for recovery, verifies.
async fn scenario<F, H>(name: &str, fault: F, heal: H)
where
    F: AsyncFnOnce(&mut RedisServer, &mut RedisServer),
    H: AsyncFnOnce(&mut RedisServer, &mut RedisServer),
{
    let (mut new, mut old) = (start(), start());
    let app = store(&new, &old).await;
    let mut slots = Vec::new();
    for i in 0..300 {
        let mut rec = record(&format!("u{i}"));
        if i % 2 == 0 {
            // Not yet migrated: only in old.
            plant(&old, "", &rec).await;
        } else {
            app.create(&mut rec).await.unwrap();
        }
        slots.push(Mutex::new(Slot::Alive { rec, confirmed: 0, attempted: 0 }));
    }
    let slots = Arc::new(slots);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut load = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let (app, slots, stop, errors) = (app.clone(), slots.clone(), stop.clone(), errors.clone());
        load.spawn(async move {
            let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (t + 1));
            while !stop.load(Ordering::Relaxed) {
                one_request(&app, &slots, &mut rng, &errors).await;
            }
        });
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    fault(&mut new, &mut old).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    heal(&mut new, &mut old).await;

    // Recovery, by itself: the same store object serves again.
    let mut recovered = false;
    for _ in 0..100 {
        let mut probe = record("probe");
        if app.load(&Id::default()).await.is_ok()
            && app.create(&mut probe).await.is_ok()
            && app.delete(&probe.id).await.is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(result) = load.join_next().await {
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(recovered, "{name}: the store did not recover");

    // Final state: finish pending logouts, then every session is where it should be.
    for slot in slots.iter() {
        let mut slot = slot.lock().await;
        if let Slot::Deleting(id) = *slot {
            crate::common::patiently(name, || app.delete(&id)).await;
            *slot = Slot::Deleted(id);
        }
        let id = id_of(&slot);
        let loaded = crate::common::patiently(name, || app.load(&id)).await;
        check_load(&slot, &loaded, name);
        if let Slot::Deleted(id) = *slot {
            for server in [&new, &old] {
                let found: bool = conn(server).await.exists(id.to_string()).await.unwrap();
                assert!(!found, "{name}: logged-out session still stored");
            }
        }
    }
    let health = app.health();
    assert!(health.iter().all(|h| h.up), "{name}: {health:?}");
    eprintln!("{name}: {} errors under load, all naming a backend", errors.load(Ordering::Relaxed));
}

async fn redis_cmd(server: &RedisServer, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut conn(server).await).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_old_backend() {
    scenario("SIGKILL old", async |_, old| old.kill(), async |_, old| old.restart().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_then_sigcont_of_the_old_backend() {
    scenario("SIGSTOP old", async |_, old| old.freeze().unwrap(), async |_, old| old.thaw().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_the_old_backend_on_the_same_port() {
    scenario("restart old", async |_, old| old.restart().unwrap(), async |_, _| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_the_stores_connections() {
    scenario(
        "CLIENT KILL",
        async |new, old| {
            for _ in 0..4 {
                for server in [&*new, &*old] {
                    redis_cmd(server, &["CLIENT", "KILL", "TYPE", "normal"]).await;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        },
        async |_, _| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_on_the_write_backend() {
    scenario(
        "OOM new",
        async |new, _| {
            redis_cmd(new, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).await;
            redis_cmd(new, &["CONFIG", "SET", "maxmemory", "1"]).await;
        },
        async |new, _| redis_cmd(new, &["CONFIG", "SET", "maxmemory", "0"]).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_old_backend() {
    scenario(
        "DEBUG SLEEP old",
        async |_, old| {
            for _ in 0..3 {
                // Blocks the server for 400 ms, longer than the 250 ms socket timeout.
                let mut c = conn(old).await;
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    redis::cmd("DEBUG").arg("SLEEP").arg("0.4").query_async::<redis::Value>(&mut c),
                )
                .await;
            }
        },
        async |_, _| {},
    )
    .await;
}
