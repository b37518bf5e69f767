//! Forced interleavings, one per way a write of unknown outcome (timed out,
//! reply lost, held up in the network) used to bring back a logout, revert a
//! save or lose a session. Each holds one command in a proxy in front of one
//! server, for one app instance, while another instance goes on.
//!
//! * a copy-on-read whose copy times out and lands after a logout returned;
//! * a `Move` whose `DEL` on the source loses its reply (and the migrator's);
//! * a copy whose check against the source fails while another instance saves;
//! * a save that times out and lands after a later save through another instance;
//! * a logout whose `DEL` on the source fails, leaving the source's older copy;
//! * the migrator copying while logouts finish first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::proxy::DelayProxy;
use crate::common::{exists, plant, raw_get, raw_set, record, servers};
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::Record;
use tower_sessions_multi_redis_store::migrate::{self, Migrator};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, CopyOnRead, Modes, MultiRedisStore, codec};

const SHORT: Duration = Duration::from_millis(200);
const HELD: Duration = Duration::from_millis(500);

/// An app instance: `new: read+write`, `old: read+delete`, at these URLs.
async fn instance(new: String, old: String, policy: CopyOnRead, timeout: Duration) -> MultiRedisStore {
    MultiRedisStore::builder()
        .backend(Backend::url("new", new).socket_timeout(timeout))
        .backend(Backend::url("old", old).modes(Modes::READ_DELETE).socket_timeout(timeout))
        .copy_on_read(policy)
        .build()
        .await
        .unwrap()
}

/// `rec`, only in "old", as tower-sessions-redis-store wrote it.
async fn in_old(old: &RedisServer, rec: &Record) {
    plant(old, "", rec).await;
}

/// Watches `key` on `server` until `stop`: whether it ever appeared.
fn watch(server: &RedisServer, key: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<bool> {
    let client = server.client().unwrap();
    tokio::spawn(async move {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        while !stop.load(Ordering::Relaxed) {
            let there: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
            if there {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        false
    })
}

fn version(record: &Record) -> Option<i64> {
    record.data.get("v").and_then(serde_json::Value::as_i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_times_out_and_lands_after_the_logout_never_shows() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    for policy in [CopyOnRead::Copy, CopyOnRead::Move] {
        // Instance A's writes to "new" are held in the network past its timeout.
        let proxy = DelayProxy::holding(new.port(), &[b"EVAL", b"$2\r\nNX\r\n"], HELD).await;
        let a = instance(proxy.url(), old.url(), policy, SHORT).await;
        let b = instance(new.url(), old.url(), policy, Duration::from_secs(2)).await;
        let rec = record("ada");
        in_old(old, &rec).await;
        let key = rec.id.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = watch(new, key.clone(), stop.clone());

        proxy.hold(true);
        // A finds the session in "old"; its copy into "new" times out (A
        // cannot tell whether it ran; it fails closed).
        let _ = a.load(&rec.id).await;
        // B logs the user out, entirely, while A's copy is still on its way.
        b.delete(&rec.id).await.unwrap();
        assert_eq!(b.load(&rec.id).await.unwrap(), None);
        // The copy reaches "new" now: refused by the logout's tombstone.
        tokio::time::sleep(HELD + SHORT).await;
        stop.store(true, Ordering::Relaxed);
        assert!(!seen.await.unwrap(), "{policy:?}: the late copy showed in new");
        assert!(!exists(new, &key).await && !exists(old, &key).await, "{policy:?}: resurrected");
        assert_eq!(b.load(&rec.id).await.unwrap(), None, "{policy:?}");
        assert_eq!(a.load(&rec.id).await.unwrap(), None, "{policy:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_source_del_loses_its_reply_loses_nothing() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    // Instance A's `DEL` on "old" is held past its timeout.
    let proxy = DelayProxy::holding(old.port(), &[b"$3\r\nDEL\r\n"], HELD).await;
    let a = instance(new.url(), proxy.url(), CopyOnRead::Move, SHORT).await;
    let b = instance(new.url(), old.url(), CopyOnRead::Move, Duration::from_secs(2)).await;
    let rec = record("ada");
    in_old(old, &rec).await;
    proxy.hold(true);
    assert_eq!(a.load(&rec.id).await.unwrap(), Some(rec.clone()), "served while the DEL is held");
    tokio::time::sleep(HELD + SHORT).await;
    let key = rec.id.to_string();
    assert!(!exists(old, &key).await, "the held DEL ran");
    assert_eq!(b.load(&rec.id).await.unwrap(), Some(rec.clone()), "moved, not lost");
    assert_eq!(a.load(&rec.id).await.unwrap(), Some(rec.clone()));

    // The migrator's DEL batch, the same way: reported as failed, nothing lost.
    proxy.hold(false);
    let records: Vec<Record> = (0..20).map(|i| record(&format!("user{i}"))).collect();
    for rec in &records {
        in_old(old, rec).await;
    }
    let m = instance(new.url(), proxy.url(), CopyOnRead::Copy, SHORT).await;
    m.load(&records[0].id).await.unwrap(); // connected
    proxy.hold(true);
    let report = Migrator::for_store(&m, migrate::Options::default().move_sessions(true))
        .unwrap()
        .run(|_| {}, std::future::pending())
        .await
        .unwrap();
    assert!(report.progress.failed > 0, "the DEL batch timed out: {:?}", report.progress);
    tokio::time::sleep(HELD + SHORT).await;
    proxy.hold(false);
    for rec in &records {
        assert_eq!(b.load(&rec.id).await.unwrap().as_ref(), Some(rec), "lost");
        assert!(exists(new, &rec.id.to_string()).await);
    }
    let again = Migrator::for_store(&m, migrate::Options::default().move_sessions(true))
        .unwrap()
        .run(|_| {}, std::future::pending())
        .await
        .unwrap();
    assert!(again.finished && again.is_clean(), "{again:?}");
    assert!(crate::common::session_keys(old).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_source_cannot_answer_never_deletes_a_newer_save() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    // Instance A's reads of "old" are slow after its first one: once a
    // copy-on-read used to check the source after copying, and undo the copy
    // (with whatever was saved over it) when the check failed.
    let proxy = DelayProxy::holding(old.port(), &[b"$6\r\nEXISTS\r\n"], HELD).await;
    let a = instance(new.url(), proxy.url(), CopyOnRead::Copy, SHORT).await;
    let b = instance(new.url(), old.url(), CopyOnRead::Copy, Duration::from_secs(2)).await;
    let mut rec = record("ada");
    rec.data.insert("v".into(), serde_json::json!(1));
    in_old(old, &rec).await;
    proxy.hold(true);
    let load = tokio::spawn({
        let a = a.clone();
        async move { a.load(&rec.id).await }
    });
    // As soon as the copy is in "new", B saves v2 over it.
    let key = rec.id.to_string();
    while !exists(new, &key).await {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut v2 = rec.clone();
    v2.data.insert("v".into(), serde_json::json!(2));
    b.save(&v2).await.unwrap();
    let _ = load.await.unwrap();
    tokio::time::sleep(HELD + SHORT).await;
    let loaded = b.load(&rec.id).await.unwrap().expect("still logged in");
    assert_eq!(version(&loaded), Some(2), "the acknowledged save was undone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_that_times_out_never_lands_over_a_later_save() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let proxy = DelayProxy::holding(new.port(), &[b"EVAL", b"$2\r\nXX\r\n"], HELD).await;
    let a = instance(proxy.url(), old.url(), CopyOnRead::Copy, SHORT).await;
    let b = instance(new.url(), old.url(), CopyOnRead::Copy, Duration::from_secs(2)).await;
    let mut rec = record("ada");
    rec.data.insert("v".into(), serde_json::json!(1));
    // A's very first save is the one held: A learns the server's clock
    // (`TIME`, not held) before it sends a save.
    a.create(&mut rec).await.unwrap();

    // A's save of v2 is held past A's timeout: A reports an error.
    proxy.hold(true);
    let mut v2 = rec.clone();
    v2.data.insert("v".into(), serde_json::json!(2));
    assert!(a.save(&v2).await.is_err(), "timed out");
    // The user goes on, through B: v3 is acknowledged.
    let mut v3 = rec.clone();
    v3.data.insert("v".into(), serde_json::json!(3));
    b.save(&v3).await.unwrap();
    // v2 reaches the server now, after its deadline: refused.
    tokio::time::sleep(HELD + SHORT).await;
    let loaded = b.load(&rec.id).await.unwrap().expect("logged in");
    assert_eq!(version(&loaded), Some(3), "a save that timed out landed over a later one");
    assert_eq!(raw_get(new, &rec.id.to_string()).await, Some(codec::encode(&v3).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_that_fails_on_the_source_never_serves_the_sources_older_copy() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    // Instance A's logout reaches "new", but its `DEL` on "old" times out.
    let proxy = DelayProxy::holding(old.port(), &[b"EVAL", b"$3\r\nDEL\r\n"], HELD).await;
    for policy in [CopyOnRead::Copy, CopyOnRead::Off] {
        let a = instance(new.url(), proxy.url(), policy, SHORT).await;
        let b = instance(new.url(), old.url(), policy, Duration::from_secs(2)).await;
        let mut rec = record("ada");
        rec.data.insert("v".into(), serde_json::json!(0));
        in_old(old, &rec).await;
        // Saved (v1) into "new"; "old" keeps v0 until the migration.
        let mut v1 = rec.clone();
        v1.data.insert("v".into(), serde_json::json!(1));
        b.save(&v1).await.unwrap();
        assert_eq!(b.load(&rec.id).await.unwrap().as_ref().and_then(version), Some(1));

        proxy.hold(true);
        assert!(a.delete(&rec.id).await.is_err(), "{policy:?}: the logout did not finish");
        proxy.hold(false);
        // The session is half logged out: gone from "new", v0 still in "old"
        // until the held DEL lands. It must not come back as v0.
        let loaded = b.load(&rec.id).await.unwrap();
        assert_eq!(loaded, None, "{policy:?}: served the source's older copy");
        tokio::time::sleep(HELD + SHORT).await;
        assert_eq!(b.load(&rec.id).await.unwrap(), None, "{policy:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrators_late_copies_never_bring_back_a_logout() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    // The migrator's copies reach "new" late (within its timeout), and its
    // `DEL`s on "old" later still (past it: the batch fails).
    let to_new = DelayProxy::holding(new.port(), &[b"EVAL", b"$2\r\nNX\r\n"], Duration::from_millis(300)).await;
    let to_old = DelayProxy::holding(old.port(), &[b"$3\r\nDEL\r\n"], HELD).await;
    let m = instance(to_new.url(), to_old.url(), CopyOnRead::Copy, Duration::from_millis(400)).await;
    let b = instance(new.url(), old.url(), CopyOnRead::Copy, Duration::from_secs(2)).await;
    let records: Vec<Record> = (0..40).map(|i| record(&format!("user{i}"))).collect();
    for rec in &records {
        in_old(old, rec).await;
    }
    to_new.hold(true);
    to_old.hold(true);
    let migrate = |m: MultiRedisStore| async move {
        Migrator::for_store(&m, migrate::Options::default().move_sessions(true))
            .unwrap()
            .run(|_| {}, std::future::pending())
            .await
            .unwrap()
    };
    let run = tokio::spawn(migrate(m.clone()));
    // The copies were read from "old" and are on their way: half the users
    // log out, and their logouts finish first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for rec in &records[..20] {
        b.delete(&rec.id).await.unwrap();
    }
    let report = run.await.unwrap();
    assert!(report.progress.failed > 0, "the DEL batch timed out: {:?}", report.progress);
    tokio::time::sleep(HELD).await;
    to_new.hold(false);
    to_old.hold(false);
    let again = migrate(m).await;
    assert!(again.finished && again.is_clean(), "{again:?}");
    for rec in &records[..20] {
        assert_eq!(b.load(&rec.id).await.unwrap(), None, "resurrected by the migrator");
        assert!(!exists(new, &rec.id.to_string()).await);
    }
    for rec in &records[20..] {
        assert_eq!(b.load(&rec.id).await.unwrap().as_ref(), Some(rec));
    }
    assert!(crate::common::session_keys(old).await.is_empty(), "the move left sessions in old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_listed_first_never_hides_a_newer_save() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    for policy in [CopyOnRead::Copy, CopyOnRead::Off] {
        // The source first: every load finds the session there, where it never
        // changes; "new" holds the saves, and is what must be served.
        let store = MultiRedisStore::builder()
            .backend(Backend::url("old", old.url()).modes(Modes::READ_DELETE))
            .backend(Backend::url("new", new.url()))
            .copy_on_read(policy)
            .build()
            .await
            .unwrap();
        let mut rec = record("ada");
        rec.data.insert("v".into(), serde_json::json!(1));
        in_old(old, &rec).await;
        assert_eq!(store.load(&rec.id).await.unwrap().as_ref().and_then(version), Some(1));
        let mut v2 = rec.clone();
        v2.data.insert("v".into(), serde_json::json!(2));
        store.save(&v2).await.unwrap();
        let loaded = store.load(&rec.id).await.unwrap();
        assert_eq!(loaded.as_ref().and_then(version), Some(2), "{policy:?}: the save was hidden");
    }
}

#[tokio::test]
async fn write_policy_any_still_needs_the_first_backend_that_reads_and_writes() {
    let server = &servers(1)[0];
    let store = |first: String, second: String| async move {
        MultiRedisStore::builder()
            .backend(Backend::url("first", first).socket_timeout(SHORT))
            .backend(Backend::url("second", second).socket_timeout(SHORT))
            .write_policy(tower_sessions_multi_redis_store::WritePolicy::Any)
            .build()
            .await
            .unwrap()
    };
    let down = "redis://127.0.0.1:1".to_owned();
    // The second down: fine, loads ask the first.
    let mut rec = record("ada");
    let ok = store(server.url(), down.clone()).await;
    ok.create(&mut rec).await.unwrap();
    ok.save(&rec).await.unwrap();
    assert_eq!(ok.load(&rec.id).await.unwrap(), Some(rec));
    // The first down: a create or save that only the second took would be
    // "not found" (or an older copy) for the next load.
    let mut rec = record("bob");
    let err = store(down, server.url()).await.create(&mut rec).await.unwrap_err().to_string();
    assert!(err.contains("backend `first`"), "{err}");
}

#[tokio::test]
async fn a_move_needs_every_write_backend_as_a_target_and_a_source_not_written() {
    let servers = servers(3);
    let store = MultiRedisStore::builder()
        .backend(Backend::url("new", servers[0].url()))
        .backend(Backend::url("shadow", servers[1].url()).modes(Modes::WRITE))
        .backend(Backend::url("old", servers[2].url()).modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    let moving = migrate::Options::default().move_sessions(true);
    let err = Migrator::new(&store, Some("old"), &["new"], moving.clone()).unwrap_err().to_string();
    assert!(err.contains("backend `shadow`, field `to`"), "{err}");
    let err = Migrator::new(&store, Some("new"), &["shadow"], moving.clone()).unwrap_err().to_string();
    assert!(err.contains("backend `new`, field `from`"), "{err}");
    assert!(Migrator::new(&store, Some("old"), &["new", "shadow"], moving).is_ok());
    // Copying without a move may pick any targets.
    assert!(Migrator::new(&store, Some("old"), &["new"], migrate::Options::default()).is_ok());
}

/// A copy that reaches its server later than half a tombstone's life after
/// the session was read is refused, tombstone or not: no copy can outlive
/// the tombstone of a logout that followed its read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_arriving_past_its_deadline_writes_nothing() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let proxy = DelayProxy::holding(new.port(), &[b"EVAL"], Duration::from_millis(700)).await;
    // The shortest tombstone life allowed: four socket timeouts (copies: 200 ms).
    let a = MultiRedisStore::builder()
        .backend(Backend::url("new", proxy.url()).socket_timeout(Duration::from_millis(100)))
        .backend(Backend::url("old", old.url()).modes(Modes::READ_DELETE).socket_timeout(Duration::from_millis(100)))
        .tombstone_ttl(Duration::from_millis(400))
        .build()
        .await
        .unwrap();
    let (warm, rec) = (record("warm"), record("ada"));
    in_old(old, &warm).await;
    in_old(old, &rec).await;
    // Connected, the server's clock known, the copy script loaded there (a
    // late EVALSHA of an unknown script would be refused for that reason).
    assert_eq!(a.load(&warm.id).await.unwrap(), Some(warm.clone()));
    assert!(exists(new, &warm.id.to_string()).await);
    proxy.hold(true);
    assert!(a.load(&rec.id).await.is_err(), "the copy timed out: fail closed");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!exists(new, &rec.id.to_string()).await, "a copy past its deadline was written");
    assert!(exists(old, &rec.id.to_string()).await, "the source keeps it");
}

/// After `SCRIPT FLUSH` (or a restart, a failover), the first call of each
/// script is answered `NOSCRIPT` and sent again with its body: nothing fails,
/// and the backend's health shows no error.
#[tokio::test]
async fn scripts_flushed_from_the_server_are_sent_again() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let store = instance(new.url(), old.url(), CopyOnRead::Copy, Duration::from_secs(2)).await;
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    store.save(&rec).await.unwrap();
    let before = store.health()[0].counters.errors;
    for server in [new, old] {
        let _: () =
            redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut crate::common::conn(server).await).await.unwrap();
    }
    let moved = record("bob");
    in_old(old, &moved).await;
    store.save(&rec).await.unwrap();
    assert_eq!(store.load(&moved.id).await.unwrap(), Some(moved.clone()), "copied");
    store.delete(&rec.id).await.unwrap();
    assert_eq!(store.load(&rec.id).await.unwrap(), None);
    assert_eq!(store.health()[0].counters.errors, before, "NOSCRIPT is not a failure");
}

/// A rolling deploy between plan steps 03 (`new: rw`, `old: rw`) and 04
/// (`new: rw`, `old: read+delete`): 04 wrote the latest saves to `new` only,
/// so `old` holds an older copy; a logout then reached `new` (its tombstone
/// there) but not `old` (the connection was killed before `old` read it).
/// A step-03 instance that misses `new` must not serve `old`'s older copy:
/// it checks `new` for the tombstone first (the model test's seed
/// 1796238489914775815 found this: "loaded v10, older than acknowledged v12").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_backend_that_missed_is_checked_for_a_logout_before_a_later_one_answers() {
    let [new, old] = <[RedisServer; 2]>::try_from(servers(2)).ok().unwrap();
    let step_03 = MultiRedisStore::builder()
        .backend(Backend::url("new", new.url()))
        .backend(Backend::url("old", old.url()))
        .build()
        .await
        .unwrap();
    let rec = record("ada");
    plant(&old, "", &rec).await;
    let tombstone = format!("{}:tombstone", rec.id);
    raw_set(&new, &tombstone, b"1").await;
    assert_eq!(step_03.load(&rec.id).await.unwrap(), None, "the logout that reached `new` holds");
    assert!(!exists(&new, &rec.id.to_string()).await, "and nothing was copied over its tombstone");

    // Without a tombstone, `old`'s copy is served, and copied into `new`.
    let other = record("grace");
    plant(&old, "", &other).await;
    assert_eq!(step_03.load(&other.id).await.unwrap().as_ref(), Some(&other));
    assert!(exists(&new, &other.id.to_string()).await);
}
