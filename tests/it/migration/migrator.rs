//! The bulk migrator against real servers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{Rng, conn, exists, pttl, raw_get, record, servers};
use redis::AsyncCommands;
use tokio::sync::Mutex;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_multi_redis_store::migrate::{self, Migrator};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore, codec};

const PREFIX: &str = "s:";

async fn migrating_store(new: &RedisServer, old: &RedisServer) -> MultiRedisStore {
    MultiRedisStore::builder()
        .backend(Backend::url("new", new.url()).prefix(PREFIX))
        .backend(Backend::url("old", old.url()).prefix(PREFIX).modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap()
}

/// `n` sessions written into `server` as tower-sessions-redis-store would,
/// with expiries spread over the next hours.
async fn populate(server: &RedisServer, n: usize) -> Vec<Record> {
    let records: Vec<Record> = (0..n)
        .map(|i| {
            let mut rec = record(&format!("user{i}"));
            rec.expiry_date += time::Duration::seconds(i as i64 * 7);
            rec
        })
        .collect();
    write_all(server, &records).await;
    records
}

/// Writes `records` into `server` as tower-sessions-redis-store would.
async fn write_all(server: &RedisServer, records: &[Record]) {
    let mut pipe = redis::pipe();
    for rec in records {
        pipe.cmd("SET")
            .arg(format!("{PREFIX}{}", rec.id))
            .arg(codec::encode(rec).unwrap())
            .arg("PXAT")
            .arg(codec::expiry_millis(rec.expiry_date))
            .ignore();
    }
    let _: () = pipe.query_async(&mut conn(server).await).await.unwrap();
}

async fn key_count(server: &RedisServer) -> usize {
    crate::common::session_keys(server).await.len()
}

async fn assert_in(server: &RedisServer, rec: &Record) {
    let key = format!("{PREFIX}{}", rec.id);
    let bytes = raw_get(server, &key).await.unwrap_or_else(|| panic!("{key} missing"));
    assert_eq!(codec::decode(&bytes).unwrap().data, rec.data, "{key}: newest data");
    let want = (rec.expiry_date - time::OffsetDateTime::now_utc()).whole_milliseconds() as i64;
    let ttl = pttl(server, &key).await;
    assert!((ttl - want).abs() < 1_000, "{key}: ttl {ttl} vs {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_move_under_live_traffic_loses_nothing_and_resurrects_nothing() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let app = migrating_store(new, old).await;
    const OLD: usize = 3000;
    const NEW: usize = 600;
    // One slot per session; a client holds the slot's lock for one request,
    // so "newest data" is well defined. None = logged out (or not created yet).
    let mut slots: Vec<Arc<Mutex<Option<Record>>>> =
        populate(old, OLD).await.into_iter().map(|r| Arc::new(Mutex::new(Some(r)))).collect();
    slots.extend((0..NEW).map(|_| Arc::new(Mutex::new(None))));
    let slots = Arc::new(slots);
    let next_new = Arc::new(AtomicUsize::new(OLD));
    let migration_done = Arc::new(AtomicBool::new(false));

    let mut clients = tokio::task::JoinSet::new();
    for c in 0..16u64 {
        let (app, slots, next_new, done) = (app.clone(), slots.clone(), next_new.clone(), migration_done.clone());
        clients.spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c + 1));
            let mut ops = 0;
            while ops < 4000 && !(done.load(Ordering::Relaxed) && ops > 200) {
                ops += 1;
                let roll = rng.below(100);
                if roll < 8 {
                    // Log in: a new session.
                    let slot = next_new.fetch_add(1, Ordering::Relaxed);
                    if slot < slots.len() {
                        let mut state = slots[slot].lock().await;
                        let mut rec = record(&format!("new{slot}"));
                        app.create(&mut rec).await.unwrap();
                        *state = Some(rec);
                    }
                    continue;
                }
                let slot = rng.below(OLD);
                let mut state = slots[slot].lock().await;
                let loaded = app.load(&state.as_ref().map_or_else(Default::default, |r| r.id)).await.unwrap();
                match (&*state, loaded) {
                    (None, _) => {}
                    (Some(_), None) => panic!("session {slot} lost"),
                    (Some(expected), Some(got)) => {
                        assert_eq!(got.data, expected.data, "session {slot} stale")
                    }
                }
                let Some(rec) = state.as_mut() else { continue };
                if roll < 16 {
                    app.delete(&rec.id).await.unwrap();
                    *state = None;
                } else if roll < 70 {
                    let n = rec.data.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
                    rec.data.insert("n".into(), serde_json::json!(n + 1));
                    app.save(rec).await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        });
    }

    let migrator = Migrator::for_store(
        &app,
        migrate::Options::default().move_sessions(true).batch_size(50).rate_limit(Some(4000)),
    )
    .unwrap();
    assert_eq!((migrator.source(), migrator.targets()), ("old", vec!["new"]));
    let report = migrator.run(|_| {}, std::future::pending()).await.unwrap();
    migration_done.store(true, Ordering::Relaxed);
    while let Some(result) = clients.join_next().await {
        result.unwrap();
    }
    assert!(report.finished && report.is_clean(), "{report:?}");
    assert!(
        report.progress.copied > 0 && report.progress.already_present > 0,
        "traffic overlapped: {:?}",
        report.progress
    );

    let mut alive = 0;
    for (i, slot) in slots.iter().enumerate() {
        match &*slot.lock().await {
            Some(rec) => {
                alive += 1;
                assert_in(new, rec).await;
                assert_eq!(app.load(&rec.id).await.unwrap().map(|r| r.data), Some(rec.data.clone()), "slot {i}");
            }
            None => {
                if i < OLD {
                    // Logged out sessions exist nowhere (the id is only known for old slots).
                }
            }
        }
    }
    assert!(alive > OLD / 2, "{alive}");
    assert_eq!(key_count(old).await, 0, "nothing left in the source");
    assert_eq!(key_count(new).await, alive, "no deleted session anywhere");
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let app = migrating_store(new, old).await;
    let records = populate(old, 500).await;
    // 50 logged out by an instance that writes "new" only: a tombstone
    // there, the session still in "old". A run skips them (and a move
    // finishes their logout in "old"); so does a dry run's count.
    let new_only = MultiRedisStore::builder()
        .backend(Backend::url("new", new.url()).prefix(PREFIX))
        .announce(false)
        .build()
        .await
        .unwrap();
    for rec in &records[..50] {
        new_only.delete(&rec.id).await.unwrap();
    }
    let tombstones = key_count(new).await;
    let migrator = Migrator::for_store(&app, migrate::Options::default().dry_run(true).move_sessions(true)).unwrap();
    let report = migrator.run(|_| {}, std::future::pending()).await.unwrap();
    assert!(report.finished && report.dry_run);
    assert_eq!((report.progress.copied, report.progress.skipped), (450, 50), "would copy, would skip");
    assert_eq!(key_count(new).await, tombstones);
    assert_eq!(key_count(old).await, 500);
    for rec in &records {
        assert!(exists(old, &format!("{PREFIX}{}", rec.id)).await);
    }
    // The run does what the dry run counted.
    let migrator = Migrator::for_store(&app, migrate::Options::default().move_sessions(true)).unwrap();
    let report = migrator.run(|_| {}, std::future::pending()).await.unwrap();
    assert_eq!((report.progress.copied, report.progress.skipped), (450, 50));
    assert_eq!(report.progress.removed_from_source, 500);
}

/// Every key and value of a server.
async fn snapshot(server: &RedisServer) -> Vec<(String, Vec<u8>)> {
    let mut conn = conn(server).await;
    let mut keys = crate::common::session_keys(server).await;
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let value: Vec<u8> = conn.get(&key).await.unwrap();
        out.push((key, value));
    }
    out
}

#[tokio::test]
async fn an_interrupted_migration_resumed_from_its_cursor_ends_like_an_uninterrupted_one() {
    let servers = servers(4);
    let records = populate(&servers[1], 2000).await;
    // The same sessions in a second pair, for the uninterrupted run.
    let mut pipe = redis::pipe();
    for rec in &records {
        pipe.cmd("SET")
            .arg(format!("{PREFIX}{}", rec.id))
            .arg(codec::encode(rec).unwrap())
            .arg("PXAT")
            .arg(codec::expiry_millis(rec.expiry_date))
            .ignore();
    }
    let _: () = pipe.query_async(&mut conn(&servers[3]).await).await.unwrap();

    let options = || migrate::Options::default().move_sessions(true).batch_size(100);
    let interrupted_app = migrating_store(&servers[0], &servers[1]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let first = Migrator::for_store(&interrupted_app, options()).unwrap();
    let report = first
        .run(
            |p| stop.store(p.scanned >= 600, Ordering::Relaxed),
            std::future::poll_fn(|_| {
                if stop.load(Ordering::Relaxed) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
            }),
        )
        .await
        .unwrap();
    assert!(!report.finished && report.progress.cursor != 0, "{report:?}");
    let halfway = key_count(&servers[0]).await;
    assert!(halfway > 0 && halfway < 2000, "{halfway}");
    let resumed = Migrator::for_store(&interrupted_app, options().cursor(report.progress.cursor)).unwrap();
    let rest = resumed.run(|_| {}, std::future::pending()).await.unwrap();
    assert!(rest.finished && rest.is_clean());
    assert_eq!(report.progress.copied + rest.progress.copied, 2000);

    let straight_app = migrating_store(&servers[2], &servers[3]).await;
    let straight =
        Migrator::for_store(&straight_app, options()).unwrap().run(|_| {}, std::future::pending()).await.unwrap();
    assert!(straight.finished && straight.is_clean());
    assert_eq!(straight.progress.copied, 2000);

    assert_eq!(snapshot(&servers[0]).await, snapshot(&servers[2]).await, "same targets");
    assert_eq!(key_count(&servers[1]).await, 0);
    assert_eq!(key_count(&servers[3]).await, 0);
    for rec in &records {
        assert_in(&servers[0], rec).await;
    }
}

#[tokio::test]
async fn corrupt_values_are_reported_by_key_and_left_in_place() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let app = migrating_store(new, old).await;
    let good = populate(old, 100).await;
    let mut bad_keys = Vec::new();
    for i in 0..5 {
        let key = format!("{PREFIX}{}", record("x").id);
        crate::common::raw_set(old, &key, format!("garbage {i}").as_bytes()).await;
        bad_keys.push(key);
    }
    // A session id holding another type (a hash, a list): its GET is an
    // error reply, which must not fail the other sessions of its batch.
    for kind in ["HSET", "RPUSH"] {
        let key = format!("{PREFIX}{}", record("x").id);
        let mut cmd = redis::cmd(kind);
        cmd.arg(&key).arg("f");
        if kind == "HSET" {
            cmd.arg("v");
        }
        let _: () = cmd.query_async(&mut conn(old).await).await.unwrap();
        bad_keys.push(key);
    }
    // Not a session id at all: skipped, untouched.
    crate::common::raw_set(old, &format!("{PREFIX}not-a-session"), b"x").await;

    let migrator = Migrator::for_store(&app, migrate::Options::default().move_sessions(true)).unwrap();
    let report = migrator.run(|_| {}, std::future::pending()).await.unwrap();
    assert!(report.finished && !report.is_clean());
    assert_eq!(report.progress.corrupt, 7, "{report:?}");
    assert_eq!(report.progress.copied, 100);
    let mut listed = report.corrupt_keys.clone();
    listed.sort();
    bad_keys.sort();
    assert_eq!(listed, bad_keys);
    for key in &bad_keys {
        assert!(exists(old, key).await, "left in place");
        assert!(!exists(new, key).await, "never copied");
    }
    assert!(exists(old, &format!("{PREFIX}not-a-session")).await);
    for rec in &good {
        assert_in(new, rec).await;
    }
    assert_eq!(key_count(old).await, 8);
    // `verify` walks the source past them too (before: "GET failed").
    let app = migrating_store(new, old).await;
    let verified = Migrator::for_store(&app, migrate::Options::default()).unwrap().verify().await.unwrap();
    assert_eq!((verified.checked, verified.missing), (0, 0), "{verified:?}");
}

#[tokio::test]
async fn a_key_whose_name_is_not_utf8_is_passed_over_not_a_stop() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let app = migrating_store(new, old).await;
    let good = populate(old, 50).await;
    // A name no session has (ids are ASCII), under the prefix: before, the
    // whole SCAN page failed to parse, and every run stopped at its cursor.
    let odd: &[u8] = b"s:\xff\xfe";
    let _: () = redis::cmd("SET").arg(odd).arg("x").query_async(&mut conn(old).await).await.unwrap();

    let migrator = Migrator::for_store(&app, migrate::Options::default()).unwrap();
    let report = migrator.run(|_| {}, std::future::pending()).await.unwrap();
    assert!(report.finished, "{report:?}");
    assert_eq!(report.progress.copied, 50);
    let verified = migrator.verify().await.unwrap();
    assert_eq!((verified.checked, verified.missing), (50, 0), "{verified:?}");
    for rec in &good {
        assert_in(new, rec).await;
    }
    let still: bool = redis::cmd("EXISTS").arg(odd).query_async(&mut conn(old).await).await.unwrap();
    assert!(still, "left alone");
}

/// A `SCAN` cursor means nothing to another server process: a source that
/// fails over mid-run (here a proxy switches the same connection to a
/// second server holding the same sessions) is walked again from its
/// start, so no session is passed over. Before, the walk went on from the
/// first server's cursor, and the run reported clean with sessions left
/// behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_fails_over_mid_run_is_walked_again_from_its_start() {
    let servers = servers(3);
    let (new, first, second) = (&servers[0], &servers[1], &servers[2]);
    let records = populate(first, 3000).await;
    write_all(second, &records).await;
    let proxy = crate::common::proxy::SwitchingProxy::start(first.port(), second.port()).await;
    let app = MultiRedisStore::builder()
        .backend(Backend::url("new", new.url()).prefix(PREFIX))
        .backend(Backend::url("old", proxy.url()).prefix(PREFIX).modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    let migrator = Migrator::for_store(&app, migrate::Options::default().batch_size(100)).unwrap();
    let mut batches = 0;
    let report = migrator
        .run(
            |_| {
                batches += 1;
                if batches == 8 {
                    proxy.switch();
                }
            },
            std::future::pending(),
        )
        .await
        .unwrap();
    assert!(report.finished && report.is_clean(), "{report:?}");
    assert_eq!(report.progress.scan_restarts, 1, "{report:?}");
    let verified = migrator.verify().await.unwrap();
    assert_eq!((verified.checked, verified.missing), (3000, 0), "{verified:?}");
}

/// A slow rate delays the *read* of each batch, not its copies: a copy must
/// land within half the tombstone's lifetime after its read (before, the
/// batch read ahead waited out the rate and every copy was refused as too
/// late, run after run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_rate_never_makes_copies_too_late() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let records = populate(old, 20).await;
    let timeout = Duration::from_millis(200);
    let app = MultiRedisStore::builder()
        .backend(Backend::url("new", new.url()).prefix(PREFIX).socket_timeout(timeout))
        .backend(Backend::url("old", old.url()).prefix(PREFIX).modes(Modes::READ_DELETE).socket_timeout(timeout))
        // Copies must land within 500 ms of their read; a batch is due every 625 ms.
        .tombstone_ttl(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let options = migrate::Options::default().batch_size(5).rate_limit(Some(8));
    let report = Migrator::for_store(&app, options).unwrap().run(|_| {}, std::future::pending()).await.unwrap();
    assert!(report.finished && report.is_clean(), "{report:?}");
    assert_eq!(report.progress.copied, 20, "{report:?}");
    for rec in &records {
        assert_in(new, rec).await;
    }
}

/// A shutdown ends a rate limit's wait at once, with the cursor of the
/// batch not read yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_a_rate_limits_wait() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    populate(old, 20).await;
    let app = migrating_store(new, old).await;
    // One session a second: the second batch is due 5 s after the first.
    let options = migrate::Options::default().batch_size(5).rate_limit(Some(1));
    let started = std::time::Instant::now();
    let stop = tokio::time::sleep(Duration::from_millis(300));
    let report = Migrator::for_store(&app, options).unwrap().run(|_| {}, stop).await.unwrap();
    assert!(!report.finished && report.progress.cursor != 0, "{report:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
    let resumed = migrate::Options::default().cursor(report.progress.cursor);
    let rest = Migrator::for_store(&app, resumed).unwrap().run(|_| {}, std::future::pending()).await.unwrap();
    assert_eq!(report.progress.copied + rest.progress.copied, 20, "{report:?} {rest:?}");
}

/// A store dropped (an instance shut down, or replaced in a rolling
/// deploy) withdraws its announcement at once: `status` no longer counts it
/// (before, it did for up to the announcement's 15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_store_withdraws_its_announcement_at_once() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let before = MultiRedisStore::builder()
        .backend(Backend::url("new", new.url()).prefix(PREFIX))
        .backend(Backend::url("old", old.url()).prefix(PREFIX))
        .build()
        .await
        .unwrap();
    let app = migrating_store(new, old).await;
    let live = async |want: usize| {
        for _ in 0..50 {
            if app.live_configurations().await.unwrap().len() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(live(2).await, "both announced");
    drop(before);
    assert!(live(1).await, "withdrawn within a second, not after 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_the_migrator_makes_after_a_logout_is_undone() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let proxy = crate::common::proxy::DelayProxy::start(new.port(), Duration::from_millis(200)).await;
    for move_sessions in [true, false] {
        let app = migrating_store(new, old).await;
        // The migrator reaches "new" over a slow path.
        let slow = MultiRedisStore::builder()
            .backend(Backend::url("new", proxy.url()).prefix(PREFIX))
            .backend(Backend::url("old", old.url()).prefix(PREFIX).modes(Modes::READ_DELETE))
            .build()
            .await
            .unwrap();
        let records = populate(old, 3).await;
        let migrator = Migrator::for_store(&slow, migrate::Options::default().move_sessions(move_sessions)).unwrap();
        let run = tokio::spawn(async move { migrator.run(|_| {}, std::future::pending()).await });
        // The copies are on their way to "new"; meanwhile the users log out.
        tokio::time::sleep(Duration::from_millis(80)).await;
        for rec in &records {
            app.delete(&rec.id).await.unwrap();
        }
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.progress.copied, 0, "{report:?}");
        tokio::time::sleep(Duration::from_millis(300)).await; // undo travels the slow path
        for rec in &records {
            assert!(!exists(new, &format!("{PREFIX}{}", rec.id)).await, "move={move_sessions}: resurrected");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_move_still_finds_the_session() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let proxy = crate::common::proxy::DelayProxy::start(old.port(), Duration::from_millis(250)).await;
    // The app reaches "old" over a slow path; the migrator directly.
    let app = MultiRedisStore::builder()
        .backend(Backend::url("new", new.url()).prefix(PREFIX))
        .backend(Backend::url("old", proxy.url()).prefix(PREFIX).modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    app.load(&Id::default()).await.unwrap(); // connected
    let migrating = migrating_store(new, old).await;
    let records = populate(old, 1).await;
    let id = records[0].id;
    // GET "new" misses at once; GET "old" reaches it 250 ms later...
    let load = tokio::spawn({
        let app = app.clone();
        async move { app.load(&id).await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    // ...after the session was moved from "old" to "new".
    let report = Migrator::for_store(&migrating, migrate::Options::default().move_sessions(true))
        .unwrap()
        .run(|_| {}, std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.progress.removed_from_source, 1);
    assert_eq!(load.await.unwrap().unwrap().map(|r| r.data), Some(records[0].data.clone()), "not logged out");
}

/// A target that cannot take writes now (here a replica: `READONLY`, as a
/// demoted primary answers) fails each copy on its own, and its health says
/// so: error replies that mean "cannot serve" mark the backend down, as a
/// failed command does, where those that are the key's own (`WRONGTYPE`) do
/// not. Before, a batch whose every reply was `READONLY` left it up.
#[tokio::test]
async fn a_read_only_target_fails_each_copy_and_is_reported_down() {
    let old = RedisServer::start().unwrap();
    let port = old.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    crate::common::wait_for_replica(&old.url()).await;
    let app = migrating_store(&replica, &old).await;
    populate(&old, 10).await;
    let migrator = Migrator::for_store(&app, migrate::Options::default().move_sessions(true)).unwrap();
    let report = migrator.run(|_| {}, std::future::pending()).await.unwrap();
    assert_eq!((report.progress.copied, report.progress.failed, report.progress.removed_from_source), (0, 10, 0));
    assert!(report.failures.iter().all(|f| f.reason.contains("READONLY")), "{report:?}");
    let health = &app.health()[0];
    assert!(!health.up && health.last_error.as_deref().is_some_and(|e| e.contains("read only replica")), "{health:?}");
    assert_eq!(key_count(&old).await, 10, "nothing removed");
}
